#!/usr/bin/env bash
# The whole test suite: lint, type check and unit tests first (a cheap failure
# stops the run before the lab starts), then the lab: one molecule scenario
# builds it once, converges site.yml, checks idempotence, runs every lab check
# against it (the lab manager's own tests last) and removes it. ansible-lint and
# the local integration tests (SoftHSM, PostgreSQL, TLS on loopback) need no lab
# and run beside it: the lab's own minutes are mostly spent waiting on its hosts.
# Called by `scripts/run test` with the virtualenv on PATH; arguments go to
# the two pytest runs that need no lab (e.g. -x, -k EXPR).
#
# Each stage prints its duration, and the run ends with a table of them
# (also when a stage fails), so a stage that grows is seen the day it grows; a
# stage run beside the lab is marked so, and the total is the wall-clock time.
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

# Stages beside the lab: each writes its output to a log of its own, printed when
# the lab is done (or has failed), and its status and duration to a file.
beside_dir=$(mktemp -d)
beside=()
beside_pids=()
start_beside() {
  local name=$1 slot=${#beside[@]}
  shift
  echo "==> $name: started beside the lab"
  beside+=("$name")
  # A process group of its own (job control on for this one start), so that
  # stopping the stage stops whatever it started.
  set -m
  (
    begin=$(date +%s)
    status=0
    "$@" >"$beside_dir/$slot.log" 2>&1 || status=$?
    echo "$status $(($(date +%s) - begin))" >"$beside_dir/$slot.status"
  ) &
  beside_pids+=($!)
  set +m
}
# Wait for every stage beside the lab and print its output; each is a row of the
# table. Returns non-zero if one failed.
finish_beside() {
  local slot status took failed=0
  for slot in "${!beside[@]}"; do
    wait "${beside_pids[$slot]}" || true
    echo "==> ${beside[$slot]} (beside the lab)"
    cat "$beside_dir/$slot.log"
    read -r status took <"$beside_dir/$slot.status"
    if ((status == 0)); then
      stages+=("${beside[$slot]} (beside the lab)|$took")
    else
      stages+=("${beside[$slot]} (beside the lab, failed: exit $status)|$took")
      failed=1
    fi
    echo "==> ${beside[$slot]}: ${took} s (exit $status)"
  done
  beside=() beside_pids=()
  return "$failed"
}
cleanup() {
  local status=$?
  # A failed lab stage leaves the stages beside it: stop them, show what they said.
  if ((${#beside_pids[@]} > 0)); then
    for pid in "${beside_pids[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
    for slot in "${!beside[@]}"; do
      echo "==> ${beside[$slot]} (beside the lab, stopped)"
      cat "$beside_dir/$slot.log" 2>/dev/null || true
    done
  fi
  rm -rf "$beside_dir"
  table_status=$status table
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

# Integration tests run in parallel: they wait on servers, subprocesses and
# PostgreSQL far more than they compute, and each test has its own ports (free
# ones, asked of the kernel), directories, SoftHSM token and database. A module
# stays on one worker (--dist loadfile): many share one server among their
# tests, which run in the order they are written and build on each other.
# PYTEST_WORKERS overrides the number of workers (0: all in this one process).
workers=${PYTEST_WORKERS:-4}

stage "ruff" ruff check .
stage "ruff format" ruff format --check .
stage "type check" type_check
stage "pytest: unit" pytest tests/unit "$@"
start_beside "ansible-lint (production profile)" ansible-lint --offline --profile production
start_beside "pytest: integration (SoftHSM, PostgreSQL, TLS)" \
  pytest -m "not lab" -n "$workers" --dist loadfile --durations=25 tests/integration "$@"
stage "molecule: the lab (site.yml once, every lab check)" molecule test
current="the stages beside the lab"
begin=$(date +%s)
finish_beside
