#!/usr/bin/env bash
# Create (or reuse) one of the project's two environments at the repository root.
#
#   bash scripts/setup.sh                  # .venv/         the pinned env (default): requirements.lock.txt
#   bash scripts/setup.sh --env current    # .venv-current/ the current env: requirements-current.lock.txt
#
# pinned  (.venv):         torch 2.9.0 (PyPI, CUDA 12.8 build) + openmm 8.5.2 + openmmtorch 1.5 + openmmml 1.7:
#                          OpenMM through openmmtorch.TorchForce; ~4 GB download the first time.
# current (.venv-current): torch 2.13.0+cpu (the CPU wheel in /opt/wheels) + openmm 8.6.1 + openmmml 1.8,
#                          no openmmtorch: OpenMM through openmm.PythonForce; ~0.3 GB download.
# Both: lammps 2025.7.22.4.0 + mpich, then the so3krates package itself (editable), which compiles the
# LAMMPS pair-style plugin with CMake against that environment's torch. Which one to pick: docs/install.md.
# Idempotent: a complete environment (stamp = hash of its lock file, pyproject.toml, CMakeLists.txt and the
# plugin sources) is reused in seconds. Needs only python3.11 and the package registries.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"

ENV_NAME=pinned
while [ "$#" -gt 0 ]; do
  case "$1" in
    --env) ENV_NAME="${2:-}"; shift 2 ;;
    --env=*) ENV_NAME="${1#--env=}"; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "[setup] error: unknown argument '$1' (use --env pinned|current)" >&2; exit 2 ;;
  esac
done
case "$ENV_NAME" in
  pinned|default)
    VENV="$ROOT/.venv"; LOCK=requirements.lock.txt
    CHECK="import so3krates.lammps as l, torch, openmm, openmmtorch, lammps; l.plugin_path(); from so3krates.potential.nn import fused_ops; assert fused_ops.load()"
    # scikit-build-core's build dir from pyproject.toml (build/{wheel_tag})
    BUILD_ARGS=() ;;
  current)
    VENV="$ROOT/.venv-current"; LOCK=requirements-current.lock.txt
    CHECK="import so3krates.lammps as l, torch, openmm, openmmml, lammps; l.plugin_path(); openmm.PythonForce; from so3krates.potential.nn import fused_ops; assert fused_ops.load()"
    # its own CMake build dir: the default one (build/{wheel_tag}) caches the .venv's Python and torch
    BUILD_ARGS=(-C "build-dir=build/current-{wheel_tag}") ;;
  *) echo "[setup] error: --env must be 'pinned' (.venv, default) or 'current' (.venv-current), got '$ENV_NAME'" >&2
     exit 2 ;;
esac
STAMP="$VENV/.so3krates-setup-stamp"
NAME="$(basename "$VENV")"

# Everything that changes what must be installed or built goes into the stamp.
stamp_now() {
  cat "$LOCK" pyproject.toml CMakeLists.txt \
      $(find plugins/lammps plugins/ops -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.txt' \) 2>/dev/null | sort) \
    | sha256sum | cut -d' ' -f1
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_now)" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
  echo "[setup] $NAME is complete (stamp matches); reusing it."
  exit 0
fi

if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c "import sys" 2>/dev/null; then
  echo "[setup] $NAME is broken (its python does not start); recreating it"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PY" >/dev/null || { echo "[setup] error: $PY not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2; exit 1; }
  echo "[setup] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
fi
echo "[setup] installing the pins of $LOCK into $NAME"
"$VENV/bin/pip" install -q --progress-bar off -r "$LOCK" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, openmm, lammps" || {
  echo "[setup] error: the packages of $LOCK did not install (or torch does not import) in $NAME;" \
       "rerun: $VENV/bin/pip install -r $LOCK" >&2; exit 1; }
echo "[setup] building and installing so3krates into $NAME (editable; compiles the LAMMPS plugin)"
"$VENV/bin/pip" install -q --no-build-isolation --no-deps -C cmake.define.SO3KRATES_REQUIRE_LAMMPS=ON \
  ${BUILD_ARGS[@]+"${BUILD_ARGS[@]}"} -e . 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "$CHECK" || { echo "[setup] error: so3krates did not install in $NAME; rerun:" \
  "$VENV/bin/pip install --no-build-isolation --no-deps ${BUILD_ARGS[*]+${BUILD_ARGS[*]}} -e . -v" >&2; exit 1; }
stamp_now > "$STAMP"
echo "[setup] done: $VENV"
