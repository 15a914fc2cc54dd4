#!/usr/bin/env bash
# The test suite on a fresh machine: set up, lint, then pytest (tests start their own Redis,
# Delta tables, MLflow store and servers). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
uv run --frozen ruff check .
exec uv run --frozen pytest "$@"
