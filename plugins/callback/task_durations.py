"""Callback plugin: the slowest tasks of a run, printed after the recap.

The test suite turns it on for the lab's site runs (molecule/default/molecule.yml:
converge, idempotence, check), so that where a run's minutes go is in every CI
log - the CI budget is spent there, and a task that grows is seen the day it
grows. A task's time is wall-clock from its start to the next task's start (or
the play's end), over all its hosts at once: what the run waited for it.
Ansible's own profile_tasks lives in a collection this project cannot install
(no Galaxy here), hence these few lines.

Settings: ANSIBLE_CALLBACKS_ENABLED=task_durations (with callback_plugins
pointing here), TASK_DURATIONS_COUNT (default 20).
"""

from __future__ import annotations

import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: task_durations
type: aggregate
short_description: the slowest tasks of a run, after the recap
description:
  - Prints the tasks that took longest (wall-clock, over all their hosts) at the end of a run.
requirements:
  - enabled in callbacks_enabled
options:
  count:
    description: How many tasks to print.
    type: int
    default: 20
    env:
      - name: TASK_DURATIONS_COUNT
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_durations"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._started = time.monotonic()
        self._current: tuple[str, float] | None = None
        self._durations: dict[str, float] = {}

    def _close_current(self) -> None:
        if self._current is not None:
            name, started = self._current
            self._durations[name] = self._durations.get(name, 0.0) + time.monotonic() - started
            self._current = None

    def _start(self, task) -> None:  # type: ignore[no-untyped-def]
        self._close_current()
        # get_name() names the role too. Tasks of an include run more than once share
        # a name: their times add up under it.
        self._current = (task.get_name().strip(), time.monotonic())

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:  # type: ignore[no-untyped-def]
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task) -> None:  # type: ignore[no-untyped-def]
        self._start(task)

    def v2_playbook_on_play_start(self, play) -> None:  # type: ignore[no-untyped-def]
        self._close_current()

    def v2_playbook_on_stats(self, stats) -> None:  # type: ignore[no-untyped-def]
        self._close_current()
        count = int(os.environ.get("TASK_DURATIONS_COUNT", "20"))
        total = time.monotonic() - self._started
        slowest = sorted(self._durations.items(), key=lambda item: -item[1])[:count]
        self._display.display(
            f"\nSLOWEST TASKS (of {len(self._durations)}; the run took {total:.0f} s)"
        )
        for name, seconds in slowest:
            self._display.display(f"{seconds:8.1f} s  {name}")
