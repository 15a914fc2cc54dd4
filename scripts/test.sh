#!/usr/bin/env bash
# The test suite on a fresh machine: set up, lint, type-check, then pytest (tests start their own
# Redis, Delta tables, MLflow store and servers). Extra arguments go to pytest:
#   ./scripts/test.sh             the full suite (what CI runs)
#   ./scripts/test.sh --quick     the pure and unit tests only, about a minute
#   ./scripts/test.sh tests/test_events.py -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
uv run --frozen ruff check .
uv run --frozen ruff format --check .
uv run --frozen mypy
exec uv run --frozen pytest "$@"
