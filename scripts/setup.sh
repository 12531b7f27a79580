#!/usr/bin/env bash
# Create (or reuse) the project environment in .venv/ at the repository root.
#
#   bash scripts/setup.sh          # idempotent: a complete .venv is reused in seconds
#
# Installs the exact pins of requirements.lock.txt (torch 2.9.0 + openmm 8.5.2 + openmmtorch 1.5 +
# openmmml 1.7 + lammps 2025.7.22.4.0 + mpich ...; why these versions: docs/install.md), then the
# so3krates package itself (editable), which compiles the LAMMPS pair-style plugin with CMake.
# Needs only python3.11 and the package registries. ~4 GB download the first time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
VENV="$ROOT/.venv"
STAMP="$VENV/.so3krates-setup-stamp"

# Everything that changes what must be installed or built goes into the stamp.
stamp_now() {
  cat requirements.lock.txt pyproject.toml CMakeLists.txt \
      $(find plugins/lammps -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.txt' \) 2>/dev/null | sort) \
    | sha256sum | cut -d' ' -f1
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_now)" ] && "$VENV/bin/python" -c "import so3krates.lammps as l, torch, openmm, openmmtorch, lammps; l.plugin_path()" 2>/dev/null; then
  echo "[setup] .venv is complete (stamp matches); reusing it."
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PY" >/dev/null || { echo "[setup] error: $PY not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2; exit 1; }
  echo "[setup] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
fi
echo "[setup] installing pinned dependencies (requirements.lock.txt; first time ~4 GB, a few minutes)"
"$VENV/bin/pip" install -q --progress-bar off -r requirements.lock.txt 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, openmm, openmmtorch, lammps" || { echo "[setup] error: pinned packages did not install" >&2; exit 1; }
echo "[setup] building and installing so3krates (editable; compiles the LAMMPS plugin)"
"$VENV/bin/pip" install -q --no-build-isolation --no-deps -C cmake.define.SO3KRATES_REQUIRE_LAMMPS=ON -e . 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import so3krates.lammps as l; l.plugin_path()" || { echo "[setup] error: so3krates did not install; rerun: $VENV/bin/pip install --no-build-isolation --no-deps -e . -v" >&2; exit 1; }
stamp_now > "$STAMP"
echo "[setup] done: $VENV"
