#!/usr/bin/env bash
# Set up everything (scripts/setup.sh) and run the test suite as CI does.
#   bash scripts/run_tests.sh            # CI: both environments (docs/install.md, "Which environment"):
#                                        #  1. .venv-current (setup.sh --env current): the fast subset marked
#                                        #     current_env (tests/test_current_env.py: torch 2.13 CPU, OpenMM
#                                        #     PythonForce, LAMMPS, the README main job), ~1-2 min + its setup
#                                        #  2. .venv (pinned): the main suite, everything not marked slow
#   bash scripts/run_tests.sh -m slow    # extra pytest arguments: the main suite in .venv only
#   SO3KRATES_SKIP_CURRENT=1 bash scripts/run_tests.sh   # CI form without the .venv-current part
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
rc_current=0
if [ "$#" -eq 0 ]; then
  if [ "${SO3KRATES_SKIP_CURRENT:-0}" != "1" ]; then
    t0=$(date +%s)
    bash "$ROOT/scripts/setup.sh" --env current
    t1=$(date +%s)
    echo '[run_tests] current environment (.venv-current): fast subset (-m "current_env and not slow")'
    set +e
    "$ROOT/.venv-current/bin/python" -m pytest -q -m "current_env and not slow" tests/test_current_env.py
    rc_current=$?
    set -e
    t2=$(date +%s)
    echo "[run_tests] .venv-current: setup $((t1 - t0)) s, tests $((t2 - t1)) s, pytest exit $rc_current"
  fi
  set -- -m "not slow and not current_env"
fi
echo "[run_tests] pinned environment (.venv): pytest $*"
set +e
"$ROOT/.venv/bin/python" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 0 ] && [ "$rc_current" -ne 0 ]; then
  echo "[run_tests] FAILED: the .venv-current subset (pytest exit $rc_current; see above)" >&2
  exit "$rc_current"
fi
exit "$rc"
