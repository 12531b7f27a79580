#!/usr/bin/env bash
# Set up everything (scripts/setup.sh) and run the test suite as CI does.
#   bash scripts/run_tests.sh            # fast suite (everything not marked slow)
#   bash scripts/run_tests.sh -m slow    # extra pytest arguments are passed through
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec "$ROOT/.venv/bin/python" -m pytest -q "$@"
