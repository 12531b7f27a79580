#!/usr/bin/env bash
# One prepared check for a borrowed GPU machine (docs/gpu.md); also runs on a CPU machine (CI).
#
#   bash benchmarks/gpu_check.sh --prepare [--quick] [--carry DIR]     # here, with .venv: fills build/gpu_carry
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--carry DIR] [--out DIR] [--total-s S]
#
# --prepare writes the git-ignored carry folder (default build/gpu_carry): systems/*.npz, models/*.pt
# (float32 TorchScript exports of the demo model and SO3LR), manifest.json and, without --quick,
# wheels/ (numpy, openmm 8.6.1 + its CUDA 13 platform plugin, cp312 manylinux) for an image that has
# python 3.12 + torch but no openmm; it fails when the folder is over 60 MiB. The device run
# (default --device cuda, --out "$OUT" or build/gpu_check) makes an importable so3krates layout in a
# temporary folder (so3krates/, potential/ -> so3krates/potential, export/ -> so3krates/export,
# plugins/openmm -> so3krates/openmm, as pyproject.toml maps them), installs the carried wheels that
# the image lacks into it, prints the GPU / torch / CUDA versions and runs benchmarks/gpu_bench.py;
# then prints the table and writes gpu_check.json (+ gpu_check.log, parts.tsv) into --out.
# Every part has its own time limit; a failing part is recorded and the rest still runs. The whole
# run stays under --total-s (default 450 s). Exit status: 0 when gpu_check.json was written.
# LAMMPS is not carried: liblammps.so alone is ~43 MB, which does not fit beside the OpenMM wheels.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE=run
DEVICE=cuda
QUICK=0
OUTDIR=""
CARRY="$ROOT/build/gpu_carry"
TOTAL_S=450
MAX_CARRY_MIB=60
OPENMM_VERSION=8.6.1
NUMPY_VERSION=2.3.5

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) MODE=prepare ;;
    --device) DEVICE="$2"; shift ;;
    --quick) QUICK=1 ;;
    --out) OUTDIR="$2"; shift ;;
    --carry) CARRY="$2"; shift ;;
    --total-s) TOTAL_S="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$CARRY"
CARRY="$(cd "$CARRY" && pwd)"

# ============================================================================ --prepare (here)
if [ "$MODE" = prepare ]; then
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
  fi
  case "$CARRY/" in
    "$ROOT"/*)  # inside the repository: it must be git-ignored (it is carried as an ignored path)
      if ! git -C "$ROOT" check-ignore -q "$CARRY/manifest.json"; then
        echo "gpu_check.sh: $CARRY is not git-ignored; put the carry folder under build/" >&2; exit 1
      fi ;;
  esac
  echo "== preparing $CARRY (quick=$QUICK) with $PY"
  rm -rf "$CARRY/systems" "$CARRY/models" "$CARRY/wheels" "$CARRY/manifest.json"
  "$PY" benchmarks/gpu_bench.py prepare --carry "$CARRY" $([ "$QUICK" = 1 ] && echo --quick)
  if [ "$QUICK" = 0 ]; then
    # The image (python 3.12, torch 2.11+cu130) lacks openmm and may lack numpy. openmm 8.6.1's wheels
    # are manylinux_2_34 (glibc >= 2.34 on the image); openmm-cuda-13 is OpenMM's CUDA 13 platform
    # plugin (its CUDA libraries, libnvrtc.so.13 and libcufft.so.12, come from the image's torch).
    # ase, pyyaml, tqdm, scipy: not needed to load an exported file or for the PythonForce route
    # (imported lazily: training, conversion, EFA model building, ASE calculator), so not carried.
    echo "== downloading wheels for the image (cp312, manylinux x86_64)"
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 \
      -d "$CARRY/wheels" "numpy==$NUMPY_VERSION" "openmm==$OPENMM_VERSION" "openmm-cuda-13==$OPENMM_VERSION"
  fi
  echo "LAMMPS: not carried (liblammps.so ~43 MB + MPICH do not fit beside the OpenMM wheels in the"
  echo "        64 MiB carry; the pair style would also have to be compiled against the image's torch)"
  echo "== contents of $CARRY"
  (cd "$CARRY" && find . -type f -printf '%10s  %p\n' | sort -k2)
  bytes=$(du -sb "$CARRY" | cut -f1)
  mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
  echo "total: $bytes bytes = $mib MiB (limit $MAX_CARRY_MIB MiB; the device tool carries at most 64 MiB)"
  if [ "$bytes" -gt $((MAX_CARRY_MIB * 1048576)) ]; then
    echo "gpu_check.sh: FAILED: $CARRY is $mib MiB, over $MAX_CARRY_MIB MiB" >&2
    exit 1
  fi
  echo "device run: the run tool with command 'bash benchmarks/gpu_check.sh' and carry ['${CARRY#$ROOT/}']"
  exit 0
fi

# ============================================================================ device run
START=$SECONDS
OUTDIR="${OUTDIR:-${OUT:-$ROOT/build/gpu_check}}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
PARTS="$OUTDIR/parts.tsv"
: > "$PARTS"
exec > >(tee "$OUTDIR/gpu_check.log") 2>&1
TMP="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
SITE="$TMP/site"
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" >/dev/null 2>&1 && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; fi
HAVE_TIMEOUT=0
command -v timeout >/dev/null 2>&1 && HAVE_TIMEOUT=1
export ROOT CARRY SITE PY DEVICE
unset OPENMM_PLUGIN_DIR || true

# part NAME LIMIT_S COMMAND...: run with a time limit, record ok / failed / timeout in parts.tsv, never abort.
part() {
  local name="$1" limit="$2" t0=$SECONDS rc=0 status=ok
  shift 2
  echo "== $name (limit ${limit} s)"
  if [ "$HAVE_TIMEOUT" = 1 ]; then
    timeout --kill-after=10 "$limit" "$@" || rc=$?
  else
    "$@" || rc=$?
  fi
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout; elif [ "$rc" != 0 ]; then status=failed; fi
  [ "$status" = ok ] || echo "!! part $name: $status (exit $rc)"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "exit $rc" >> "$PARTS"
  return 0
}

versions() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi || true
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  else
    echo "nvidia-smi: not found"
  fi
  ldd --version 2>/dev/null | head -1 || true
  "$PY" - <<'EOF'
import platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cudnn", torch.backends.cudnn.version(),
      "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}", "| count", torch.cuda.device_count())
try:
    import numpy
    print("numpy", numpy.__version__)
except ImportError:
    print("numpy: not in the image (carried wheel)")
EOF
}

layout() {  # the package map of pyproject.toml, as copies
  set -e
  mkdir -p "$SITE"
  cp -r "$ROOT/so3krates" "$SITE/so3krates"
  cp -r "$ROOT/potential" "$SITE/so3krates/potential"
  cp -r "$ROOT/export" "$SITE/so3krates/export"
  cp -r "$ROOT/plugins/openmm" "$SITE/so3krates/openmm"
  find "$SITE" -name __pycache__ -prune -exec rm -rf {} +
  echo "so3krates layout in $SITE"
}

install_wheels() {  # the carried wheels whose module the image cannot import
  set -e
  shopt -s nullglob
  local wheels=("$CARRY"/wheels/*.whl) todo=() w base dist mod
  if [ ${#wheels[@]} = 0 ]; then echo "no carried wheels"; return 0; fi
  local have_openmm=0
  "$PY" -c "import openmm" >/dev/null 2>&1 && have_openmm=1
  for w in "${wheels[@]}"; do
    base="$(basename "$w")"
    dist="${base%%-*}"
    dist="${dist,,}"
    case "$dist" in
      openmm_cuda_*) mod=""; [ "$have_openmm" = 1 ] && mod=openmm ;;  # plugin: only with our openmm
      pyyaml) mod=yaml ;;
      *) mod="$dist" ;;
    esac
    if [ -n "$mod" ] && "$PY" -c "import $mod" >/dev/null 2>&1; then
      echo "skip $base ($mod is importable)"
    else
      todo+=("$w")
    fi
  done
  [ ${#todo[@]} = 0 ] && return 0
  echo "installing ${todo[*]##*/}"
  if "$PY" -m pip --version >/dev/null 2>&1 && \
     "$PY" -m pip install --no-index --no-deps --no-compile --disable-pip-version-check --target "$SITE" "${todo[@]}"; then
    return 0
  fi
  echo "pip is missing or refused the wheels: unpacking them (zip) into $SITE"
  for w in "${todo[@]}"; do "$PY" -m zipfile -e "$w" "$SITE"; done
}

echo "gpu_check: device $DEVICE, quick $QUICK, carry $CARRY, out $OUTDIR, python $PY, total limit ${TOTAL_S} s"
if [ -f "$CARRY/manifest.json" ]; then
  (cd "$CARRY" && find . -type f -printf '%10s  %p\n' | sort -k2)
else
  echo "!! no $CARRY/manifest.json: run 'bash benchmarks/gpu_check.sh --prepare' here and carry build/gpu_carry"
fi
export -f versions layout install_wheels
part versions 60 bash -c versions
part layout 30 bash -c layout
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export GPU_CHECK_SITE="$SITE"
part wheels 90 bash -c install_wheels
# OpenMM's CUDA plugin looks for libnvrtc.so.13 / libcufft.so.12 in <site>/nvidia/cu13/lib: use the image's (torch's)
NVLIB="$("$PY" - <<'EOF' 2>/dev/null || true
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
dirs = {os.path.dirname(f) for r in roots for pat in ("libnvrtc.so*", "libcufft.so*")
        for f in glob.glob(os.path.join(r, "*", "lib", pat)) + glob.glob(os.path.join(r, "*", "*", "lib", pat))}
print(":".join(sorted(dirs)))
EOF
)"
if [ -n "$NVLIB" ]; then
  export LD_LIBRARY_PATH="$NVLIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "LD_LIBRARY_PATH += $NVLIB"
fi
echo "LAMMPS: skipped (not carried: liblammps.so ~43 MB does not fit beside the OpenMM wheels in 64 MiB)"

LEFT=$((TOTAL_S - (SECONDS - START) - 30))
if [ "$LEFT" -ge 40 ]; then
  part bench "$LEFT" "$PY" benchmarks/gpu_bench.py run --carry "$CARRY" --device "$DEVICE" --out "$OUTDIR" \
    --budget-s "$((LEFT - 15))" $([ "$QUICK" = 1 ] && echo --quick)
else
  printf 'bench\tskipped\t0\tonly %s s left\n' "$LEFT" >> "$PARTS"
fi
part finalize 25 "$PY" benchmarks/gpu_bench.py finalize --out "$OUTDIR" --parts "$PARTS"
echo "gpu_check: done in $((SECONDS - START)) s; results in $OUTDIR"
[ -f "$OUTDIR/gpu_check.json" ]
