#!/usr/bin/env bash
# The whole test suite, in the order a failure is cheapest to find: lint, the
# tests that need no lab (unit tests, local SoftHSM/PostgreSQL/TLS integration
# tests), then the lab (every molecule scenario, then the lab manager's own
# tests). A cheap failure stops the run before the lab starts.
# Called by `scripts/run test` with the virtualenv on PATH; arguments go to
# both pytest runs (e.g. -x, -k EXPR).
#
# Each stage prints its duration, and the run ends with a table of them
# (also when a stage fails), so a stage that grows is seen the day it grows.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

stages=()
started=$(date +%s)
current="" begin=$started

table() {
  local status=$?
  echo
  echo "==> stage durations"
  printf '%-44s %8s\n' "stage" "seconds"
  local row
  for row in "${stages[@]}"; do
    printf '%-44s %8s\n' "${row%%|*}" "${row##*|}"
  done
  ((status == 0)) || printf '%-44s %8s\n' "$current (failed: exit $status)" "$(($(date +%s) - begin))"
  printf '%-44s %8s\n' "total" "$(($(date +%s) - started))"
}
trap table EXIT

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

stage "ruff" ruff check .
stage "ruff format" ruff format --check .
stage "ansible-lint (production profile)" ansible-lint --offline --profile production
stage "pytest: no lab (unit, SoftHSM, PostgreSQL, TLS)" pytest -m "not lab" "$@"
stage "molecule test --all (the lab hosts)" molecule test --all
stage "pytest: the lab manager (podman)" pytest -m lab "$@"
