#!/usr/bin/env bash
# The main job on a fresh machine: set up, then `bestmatch demo` end to end. Extra arguments go to
# `bestmatch demo` (try --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
exec uv run --frozen bestmatch demo "$@"
