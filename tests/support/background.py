"""Lab checks whose work only reads the hosts and takes minutes (a Lynis scan of every
host, site.yml in check mode) start with the session and run beside the read-only checks;
their tests, placed after the read-only checks, wait for the result.

A lab check module opts in by naming its work `BACKGROUND` (a callable of no argument);
molecule/default/tests/conftest.py starts it once the session's checks are collected, and
only if one of the module's checks was selected. Its test asks for the result with
`result()`, which also starts the work when nothing started it (a module run alone).
The checks that change the hosts come after these tests, so the work never sees a host
in the middle of a failover or a restart.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="lab-background")
_started: dict[str, concurrent.futures.Future[Any]] = {}
_lock = threading.Lock()


def start(name: str, work: Callable[[], Any]) -> concurrent.futures.Future[Any]:
    """Start `work` under `name` unless it has started already."""
    with _lock:
        if name not in _started:
            _started[name] = _pool.submit(work)
        return _started[name]


def result(name: str, work: Callable[[], Any], timeout: float) -> Any:
    """What `work` returned (or raised), started now if it was not; at most `timeout`
    seconds of waiting."""
    return start(name, work).result(timeout=timeout)
