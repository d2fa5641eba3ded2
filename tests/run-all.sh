#!/usr/bin/env bash
# The whole test suite, in the order a failure is cheapest to find:
# lint, unit tests, then the lab (molecule scenario and lab integration tests).
# Called by `scripts/run test` with the virtualenv on PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "==> ruff"
ruff check .
ruff format --check .
echo "==> ansible-lint (production profile)"
ansible-lint --offline --profile production
echo "==> molecule test (every scenario, on the lab hosts)"
molecule test --all
echo "==> pytest"
pytest "$@"
