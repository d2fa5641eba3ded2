"""The project's ansible.cfg names a strategy that loads, from any directory.

Every playbook run (site.yml, the operations playbooks, molecule) uses it, so a
strategy that is missing or fails to import stops them all; here it fails in a
second instead of at the lab's converge.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_configured_strategy_is_found_and_imports(tmp_path: Path) -> None:
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "ansible.cfg")
    strategy = config.get("defaults", "strategy")
    plugin = ROOT / config.get("defaults", "strategy_plugins") / f"{strategy}.py"
    assert plugin.is_file(), f"ansible.cfg names strategy {strategy!r}, {plugin} is missing"
    # Imported as Ansible loads it: a file of its own, outside any package.
    proc = subprocess.run(
        [sys.executable, "-c", f"import runpy; runpy.run_path({str(plugin)!r})['StrategyModule']"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # ansible-config resolves the plugin path against ansible.cfg, not the working directory.
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    dump = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-config"), "dump", "--only-changed"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"DEFAULT_STRATEGY_PLUGIN_PATH({ROOT / 'ansible.cfg'}) = ['{plugin.parent}']" in dump
