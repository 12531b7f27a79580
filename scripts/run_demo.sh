#!/usr/bin/env bash
# Set up everything (scripts/setup.sh) and run the main job: the shipped pretrained model
# (examples/models/so3krates_demo.pt) computing a peptide's energy and forces, then driving MD of
# the solvated peptide in OpenMM and in LAMMPS (1 and 2 MPI ranks).
#   bash scripts/run_demo.sh                 # defaults
#   bash scripts/run_demo.sh --steps 1000    # extra arguments go to examples/main_job.py
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$ROOT/.venv/bin/python" examples/main_job.py "$@"
