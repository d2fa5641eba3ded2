"""The SQLite state backend opened by many processes at once, as workers do at start."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from securecore.storage.state_db import StateDatabase

OPENERS = 12


def _open(path: str, start: multiprocessing.synchronize.Barrier, results) -> None:
    start.wait()  # all at the same moment, on a database nobody has made yet
    try:
        database = StateDatabase.sqlite(path)
        database.create("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        database.execute("INSERT INTO t VALUES (1)")
        mode = database.execute("PRAGMA journal_mode").fetchone()[0]
        database.close()
        results.put(mode)
    except Exception as error:  # reported to the test, which names it
        results.put(f"{type(error).__name__}: {error}")


def test_processes_opening_a_new_database_together_all_succeed(tmp_path: Path) -> None:
    # Workers starting together each switch the new database to WAL; one of them
    # used to fail with "database is locked" (the switch does not wait).
    spawn = multiprocessing.get_context("fork")
    for attempt in range(20):
        start, results = spawn.Barrier(OPENERS), spawn.Queue()
        path = str(tmp_path / f"state-{attempt}.db")
        processes = [
            spawn.Process(target=_open, args=(path, start, results)) for _ in range(OPENERS)
        ]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=30) for _ in processes]
        for process in processes:
            process.join(10)
        assert outcomes == ["wal"] * OPENERS, outcomes
