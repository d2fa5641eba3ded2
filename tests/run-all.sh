#!/usr/bin/env bash
# The whole test suite, one stage after the other: lint, type check and unit
# tests first (a cheap failure stops the run before anything slow starts), then
# ansible-lint and the local integration tests (SoftHSM, PostgreSQL, TLS on
# loopback), then the lab: one molecule scenario builds it once, converges
# site.yml, runs every lab check against it (the lab manager's own tests last)
# and removes it.
#
# No stage runs beside another. On the two CPUs of the CI machine every stage
# is CPU-bound (the integration tests keep four workers busy; a converge keeps
# the controller and its hosts busy), and measured, stages side by side each
# took three to four times longer than alone, so that the run took longer than
# the same stages in turn (3,900 s against about 2,300 s), and the lab's timing
# checks (failover deadlines, rotation under load) failed under the load.
#
# Called by `scripts/run test` with the virtualenv on PATH; arguments go to
# the two pytest runs that need no lab (e.g. -x, -k EXPR).
#
# Each stage prints its duration, and the run ends with a table of them
# (also when a stage fails), so a stage that grows is seen the day it grows;
# the total is the wall-clock time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

stages=()
started=$(date +%s)
current="" begin=$started
# scripts/run passes the time its set-up (scripts/bootstrap.sh) took.
if [[ -n ${SETUP_SECONDS:-} ]]; then
  stages+=("set-up (scripts/bootstrap.sh)|$SETUP_SECONDS")
  started=$((started - SETUP_SECONDS))
fi

table() {
  local status=${table_status:-$?}
  echo
  echo "==> stage durations"
  printf '%-66s %8s\n' "stage" "seconds"
  local row
  for row in "${stages[@]}"; do
    printf '%-66s %8s\n' "${row%%|*}" "${row##*|}"
  done
  ((status == 0)) || printf '%-66s %8s\n' "$current (failed: exit $status)" "$(($(date +%s) - begin))"
  printf '%-66s %8s\n' "total" "$(($(date +%s) - started))"
}

cleanup() {
  table_status=$? table
}
trap cleanup EXIT

stage() {
  local name=$1
  shift
  echo "==> $name"
  current=$name
  begin=$(date +%s)
  "$@"
  local took=$(($(date +%s) - begin))
  stages+=("$name|$took")
  echo "==> $name: ${took} s"
}

# The type check: mypy with pyproject.toml's [tool.mypy] (the packages, every
# function annotated); mypy and the stubs come with the dev extra. A virtualenv
# made before they were added skips the stage and says so.
type_check() {
  if grep -q '^\[tool\.mypy\]' pyproject.toml && command -v mypy >/dev/null; then
    mypy
  else
    echo "no [tool.mypy] in pyproject.toml (or mypy not installed): type check skipped"
  fi
}

# Integration tests run in parallel: each waits on servers, subprocesses and
# PostgreSQL in turn, so four workers keep two CPUs busy (measured: 86 %), and
# each test has its own ports (free ones, asked of the kernel), directories,
# SoftHSM token and database. A module
# stays on one worker (--dist loadfile): many share one server among their
# tests, which run in the order they are written and build on each other.
# PYTEST_WORKERS overrides the number of workers (0: all in this one process).
workers=${PYTEST_WORKERS:-4}

stage "ruff" ruff check .
stage "ruff format" ruff format --check .
stage "type check" type_check
stage "pytest: unit" pytest tests/unit "$@"
stage "ansible-lint (production profile)" ansible-lint --offline --profile production
stage "pytest: integration (SoftHSM, PostgreSQL, TLS)" \
  pytest -m "not lab" -n "$workers" --dist loadfile --durations=25 tests/integration "$@"
stage "molecule: the lab (site.yml once, every lab check)" molecule test
