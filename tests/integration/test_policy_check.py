"""`python -m securecore.policy.check`: roles/securecore's check of securecore_policy on the
controller, before any host gets it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "securecore.policy.check"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_policy_the_service_takes_passes() -> None:
    policy = {
        "acl": {
            "allow": ["10.0.0.0/8"],
            "windows": [{"days": ["mon"], "start": "08:00", "end": "18:00"}],
        },
        "client_limit": {"rate": 100, "burst": 200},
    }
    proc = check(json.dumps(policy))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ({"acl": {"allow": ["10.0.0.0/33"]}}, "acl.allow"),
        (
            {"acl": {"windows": [{"days": ["someday"], "start": "08:00", "end": "18:00"}]}},
            "acl.windows[0].days",
        ),
        ({"client_limit": {"rate": "fast"}}, "client_limit.rate: a positive number"),
        ({"client_limit": {"rate": 0}}, "client_limit.rate: a positive number"),
        ({"plugin_limit": {"burst": float("nan")}}, "plugin_limit.burst: a positive number"),
        ({"acls": {"deny": ["10.0.0.0/8"]}}, "unknown acls"),
        ({"acl": {"denny": ["10.0.0.0/8"]}}, "acl: unknown denny"),
        ({"acl": {"allowed_regions": "eu"}}, "acl.allowed_regions: a list is wanted"),
        (["client_limit"], "a mapping (acl, client_limit, plugin_limit) is wanted"),
    ],
)
def test_a_policy_the_service_would_refuse_is_named(policy: object, named: str) -> None:
    proc = check(json.dumps(policy))
    assert proc.returncode == 1
    assert proc.stderr.startswith("securecore_policy: ") and named in proc.stderr, proc.stderr
