"""An incident's forensic chain stays one line when collections end at the same moment:
each bundle names the one before it, whichever process wrote it (compliance.forensics)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from compliance.evidence import TrustAnchor, generate_key, load_signing_key, verify_bundles
from compliance.forensics import series_directory, write_forensic_bundle
from compliance.gather.runner import HostFacts

INCIDENT = "INC-2026-0007"
WRITERS = 6


def _write(root: str, key: str, start) -> None:
    start.wait()  # every writer reads the chain at the same moment
    facts = [HostFacts("plugin-01", [], {"processes": []})]
    write_forensic_bundle(
        series_directory(Path(root), INCIDENT), INCIDENT, facts, load_signing_key(Path(key))
    )


def test_concurrent_collections_make_one_chain(tmp_path: Path) -> None:
    key = tmp_path / "evidence.key"
    generate_key(key)
    start = multiprocessing.get_context("fork").Barrier(WRITERS)
    writers = [
        multiprocessing.get_context("fork").Process(
            target=_write, args=(str(tmp_path / "evidence"), str(key), start)
        )
        for _ in range(WRITERS)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [w.exitcode for w in writers] == [0] * WRITERS
    series = series_directory(tmp_path / "evidence", INCIDENT)
    bundles = sorted(p for p in series.iterdir())
    assert len(bundles) == WRITERS
    previous = [json.loads((b / "run.json").read_text())["previous"] for b in bundles]
    assert previous[0] is None
    assert [p["id"] for p in previous[1:]] == [b.name for b in bundles[:-1]]
    anchor = TrustAnchor.from_options([Path(str(key) + ".pub")])
    assert verify_bundles(series, anchor).problems == []
