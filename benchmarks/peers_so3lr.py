"""SO3LR side by side: ours (TorchScript export) vs the original JAX SO3LR (JAX-MD) vs So3krates-torch.

    python benchmarks/peers_so3lr.py                      # 1.5k, 5k, 12k atoms, all entries
    python benchmarks/peers_so3lr.py --quick              # 1536 atoms only
    python benchmarks/peers_so3lr.py --sizes 1536 5184 --entries ours-f32 jax-md-f32
    python benchmarks/peers_so3lr.py --setup all          # build the two peer venvs (downloads)

Systems: the periodic 192-atom water box of ``../shared/reference/so3lr/tests/water_64.xyz``
(12.4 Å) replicated n x n x n; a requested size (atoms) picks the nearest n, so 1500/1536 -> 2x2x2
(1536 atoms, 24.8 Å), 5000 -> 3x3x3 (5184), 12000 -> 4x4x4 (12288). n = 1 is refused: JAX SO3LR is
wrong in boxes shorter than twice its 12 Å long-range cutoff (../shared/peers.md).

Entries (each in a fresh process pinned to one core with ``taskset -c <core>``, OMP/MKL threads 1,
XLA single-thread flags for JAX; one at a time):
  ours-fused-f32, ours-fused-f64  the same, exported with ``--fused-kernels`` (the attention logits and
                                their backward as so3krates' fused C++ CPU kernels)
  ours-pt2-f32, ours-pt2-f64    the same weights as a .pt2 package (``so3krates export --format pt2``;
                                compiled ~10 min at run time unless --ours-pt2-f32-model gives one)
  ours-f32, ours-f64            our exported TorchScript file, made with the public CLI
                                (``so3krates convert params.pkl --lr-cutoff 12 --dispersion-damping 2``,
                                ``so3krates export --dtype ...``), loaded with torch.jit.load and called
                                as module(positions, atomic_numbers, cell, pbc, 0., 0., True, False); a
                                call = neighbour search + energy + forces (the time with the pair lists
                                reused, ``potential.neighbor_skin = 1`` — an MD step between searches,
                                JAX-MD's E+F-only counterpart — is reported too; the faster is used)
  jax-md-f32, jax-md-f64        original SO3LR (mlff + so3lr.to_jax_md), same params.pkl, energy+forces
                                jitted; a call = neighbour-list update + energy + forces (the E+F-only
                                time is reported too; the faster of the two is used for the ratios)
  so3krates-torch-f32/-f64      So3krates-torch 0.2.1 SO3LRCalculator(r_max_lr=12,
                                dispersion_energy_cutoff_lr_damping=2) with its shipped weights
All use lr cutoff 12 Å and dispersion damping 2 Å, as the reference outputs.

Energies: SO3LR's reference (mlff, add_shift=False) has no per-element energy shift; So3krates-torch
adds one (its output head's ``energy_shifts``, -163.618 eV per atom for every element). Its worker
sets that parameter to zero, which is exactly add_shift=False at the same cost (the shift's sum is
reported as ``energy_shift_removed_eV``). ``--torch-keep-shift`` instead runs it as shipped and
subtracts the float64 sum afterwards; its float32 total then carries the rounding of a -1.6e2
eV/atom sum (3 eV = 6e-4 eV/atom at 5184 atoms). Every entry's energy per atom is then checked against the reference
entry (ours-f64 when run, else the first entry) to ``--tolerance`` (1e-3 eV/atom) and max |ΔF| is
printed.

Per entry: warm-up (load + first call: TorchScript profiling / JAX JIT), median of ``--repeats``
(3) energy+forces calls after ``--warmup`` (2) untimed ones, s/atom, µs/atom, peak RSS of the child
(wait4 ru_maxrss), energy and energy per atom. A child whose RSS passes ``--max-rss-gb`` is killed
and reported as such. Results: table on stdout + ``benchmarks/results/peers_so3lr.json``
(``peers_so3lr_quick.json`` with --quick).

Peer venvs (git-ignored ``benchmarks/.peer_venvs/``): ``so3krates-torch`` (pip) and ``so3lr-jax``
(from source, the recipe of ../shared/peers.md). ``--setup torch|jax|all`` builds them; nothing is
downloaded otherwise. A missing venv skips its column with a message (``--jax-python`` /
``--torch-python`` point elsewhere).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference" / "so3lr"
WATER = REFERENCE / "tests" / "water_64.xyz"
WORKER = HERE / "_so3lr_peer_worker.py"
RESULTS = HERE / "results"
PEER_VENVS = HERE / ".peer_venvs"
TORCH_VENV = PEER_VENVS / "so3krates-torch"
JAX_VENV = PEER_VENVS / "so3lr-jax"
TORCH_CPU_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")

LR_CUTOFF = 12.0
DISPERSION_DAMPING = 2.0
DEFAULT_SIZES = [1536, 5184, 12288]
ENTRIES = {  # name: (worker backend, dtype, which python)
    "ours-f32": ("ours", "float32", "ours"),
    "ours-f64": ("ours", "float64", "ours"),
    "ours-fused-f32": ("ours", "float32", "ours"),  # TorchScript exported with --fused-kernels
    "ours-fused-f64": ("ours", "float64", "ours"),
    "ours-pt2-f32": ("ours", "float32", "ours"),   # the same weights as a .pt2 package (AOTInductor)
    "ours-pt2-f64": ("ours", "float64", "ours"),
    "jax-md-f32": ("jax-md", "float32", "jax"),
    "jax-md-f64": ("jax-md", "float64", "jax"),
    "so3krates-torch-f32": ("so3krates-torch", "float32", "torch"),
    "so3krates-torch-f64": ("so3krates-torch", "float64", "torch"),
}
PEER_LABEL = {"ours": "ours", "jax-md": "JAX-MD SO3LR", "so3krates-torch": "So3krates-torch"}
XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

# ---------------------------------------------------------------------------------- peer setup
# The original JAX SO3LR: public GitHub sources, pinned as in ../shared/peers.md (verified there).
JAX_SOURCES = {  # dir name: (GitHub repository, ref named in peers.md, commit it resolved to)
    "so3lr": ("general-molecular-simulations/so3lr", "6c919f5", "6c919f53b0750889fb099a38d70a1f17ec419a2b"),
    "mlff": ("thorben-frank/mlff", "v1.0-lrs-gems", "6587d2937974e9bf838c425b5a2901a25e3033a2"),
    "jax-md": ("kabylda/jax-md", "main", "952f02b5ef355499278a836a3d8dc6d8174951bf"),
    "glp": ("kabylda/glp", "electrostatics_neighbourlist", "fe84e24e29430feb58bea245434577c58169dd67"),
    "jraph": ("kabylda/jraph", "master", "bcaa8f014bb046299aa77e73ed5a0b46724d3c47"),
    "comms": ("sirmarcel/comms", "HEAD", "496034fd9bbb58d3b82dbe1affd11b33a7537c42"),
}
JAX_PIP_STEPS = [
    ["-U", "pip", "wheel", "setuptools<81"],
    ["jax==0.5.3", "jaxlib==0.5.3", "flax==0.10.4", "e3x==1.0.2", "optax==0.2.4", "orbax-checkpoint==0.11.13",
     "ml_collections", "clu==0.0.9", "jaxopt", "ase", "h5py", "pyyaml", "tqdm", "pandas", "scikit-learn",
     "portpicker", "specable", "einops", "frozendict", "absl-py", "numpy<2.3"],
    ["click", "dm-haiku", "e3nn-jax", "wandb", "jax==0.5.3", "jaxlib==0.5.3", "flax==0.10.4"],
]
JAX_PROBE = "import jax, flax, e3x, jax_md, mlff, so3lr; from mlff.mdx.potential import MLFFPotentialSparse; print(jax.__version__)"
TORCH_PROBE = ("import torch, ase; from so3krates_torch.calculator.so3 import SO3LRCalculator; "
               "print(torch.__version__)")


def _python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if not found:
        raise SystemExit("setup needs python3.11 (both peers are verified with it; so3lr declares >=3.12 "
                         "but works on 3.11 with --ignore-requires-python)")
    return found


def _run(cmd: List[str], **kw) -> None:
    print("  $ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def _probe(python: Path, code: str) -> Optional[str]:
    """None when `python -c code` runs, else the last line of its error."""
    if not python.exists():
        return f"{python} does not exist"
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1", JAX_PLATFORMS="cpu"))
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or ["?"])[-1][-300:]


def setup_torch(venv: Path = TORCH_VENV) -> None:
    """So3krates-torch 0.2.1 from the registry on the CPU torch 2.13 wheel (ships SO3LR weights)."""
    if _probe(venv / "bin" / "python", TORCH_PROBE) is None:
        print(f"[setup] {venv}: ok, nothing to do")
        return
    print(f"[setup] creating {venv} (pip; ~1 GB download, minutes)")
    if venv.exists():
        shutil.rmtree(venv)
    _run([_python311(), "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check"]
    _run(pip + ["-U", "pip", "wheel"])
    _run(pip + [TORCH_CPU_WHEEL if TORCH_CPU_WHEEL.exists() else "torch==2.13.0"])
    _run(pip + ["so3krates-torch==0.2.1"])
    err = _probe(venv / "bin" / "python", TORCH_PROBE)
    if err:
        raise SystemExit(f"[setup] {venv} installed but unusable: {err}")
    print(f"[setup] {venv}: ok")


def _ensure_jax_sources(src: Path) -> None:
    src.mkdir(parents=True, exist_ok=True)
    for name, (repo, ref, commit) in JAX_SOURCES.items():
        d = src / name
        if (d / "pyproject.toml").exists() or (d / "setup.py").exists():
            continue
        print(f"[setup] {d} missing: cloning https://github.com/{repo} at {ref} ({commit[:10]})")
        _run(["git", "clone", "--quiet", f"https://github.com/{repo}.git", d])
        _run(["git", "-C", d, "checkout", "--quiet", commit])
    # mlff's sph_ops/u_matrix.pickle is absent from some snapshots; only the So3kratACE layer reads it
    # (SO3LR never does) but mlff loads it at import: an empty pickle lets it import (peers.md).
    u = src / "mlff" / "mlff" / "sph_ops" / "u_matrix.pickle"
    if not u.exists():
        print(f"[setup] {u} missing: writing an empty pickle in its place (unused by SO3LR)")
        with open(u, "wb") as f:
            pickle.dump({}, f)


def setup_jax(venv: Path = JAX_VENV, src: Path = Path("/tmp/so3lr_src")) -> None:
    """The original JAX SO3LR from source, exactly the recipe of ../shared/peers.md.

    ``src`` must hold (or receives, by git clone) so3lr@6c919f5, mlff@v1.0-lrs-gems,
    jax-md@main, glp@electrostatics_neighbourlist, jraph@master and comms@HEAD (see JAX_SOURCES
    for the commits). Keep it outside this repository: no peer code is copied in here.
    """
    py = venv / "bin" / "python"
    if _probe(py, JAX_PROBE) is None:
        print(f"[setup] {venv}: ok, nothing to do")
        return
    src = src.resolve()
    if REPO in src.parents or src == REPO:
        raise SystemExit(f"--jax-src {src} lies inside the repository; put the peer sources elsewhere")
    _ensure_jax_sources(src)
    print(f"[setup] creating {venv} (pip; ~1 GB download, minutes)")
    if venv.exists():
        shutil.rmtree(venv)
    _run([_python311(), "-m", "venv", venv])
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    for step in JAX_PIP_STEPS:
        _run(pip + step)
    _run(pip + ["--no-deps"] + [f"./{n}" for n in ("comms", "jraph", "glp", "jax-md", "mlff")], cwd=src)
    _run(pip + ["--no-deps", "--ignore-requires-python", "./so3lr"], cwd=src)  # declares python>=3.12
    err = _probe(py, JAX_PROBE)
    if err:
        raise SystemExit(f"[setup] {venv} installed but unusable: {err}")
    print(f"[setup] {venv}: ok")


# --------------------------------------------------------------------------------------- systems
def water_box(atoms_wanted: int, workdir: Path) -> Dict:
    import ase.io
    base = ase.io.read(str(WATER))
    if len(base) != 192:
        raise SystemExit(f"{WATER}: expected the 192-atom water box, found {len(base)} atoms")
    n = max(1, int(round((atoms_wanted / len(base)) ** (1.0 / 3.0))))
    if n < 2:
        raise SystemExit(f"size {atoms_wanted}: the 1x1x1 box (12.4 Å) is shorter than twice the 12 Å "
                         "long-range cutoff, where JAX SO3LR is wrong; use >= 1536 atoms (2x2x2)")
    atoms = base.repeat((n, n, n))
    path = workdir / f"water_{n}x{n}x{n}.npz"
    np.savez(path, numbers=atoms.numbers.astype(np.int64), positions=atoms.positions.astype(np.float64),
             cell=np.array(atoms.cell, dtype=np.float64), pbc=np.array(atoms.pbc, dtype=bool))
    return {"atoms": len(atoms), "replication": f"{n}x{n}x{n}", "box_A": float(atoms.cell.lengths()[0]),
            "path": path}


def _model_key(entry: str) -> str:
    """'ts-float32', 'fused-float32', 'pt2-float64', ... for one of our entries."""
    kind = "pt2-" if "-pt2-" in entry else "fused-" if "-fused-" in entry else "ts-"
    return kind + ENTRIES[entry][1]


def prepare_ours(so3krates_cli: Path, keys: List[str], workdir: Path,
                 given: Dict[str, Optional[Path]]) -> Dict[str, Path]:
    """Our model through the public CLI only: convert the published params, export per format and dtype
    (``ts-float32``, ``fused-float32`` ... ``pt2-float64``) unless a ready file is given (--ours-f32-model, --ours-pt2-f32-model,
    ...). A .pt2 export compiles for ~10 min (SO3LR, 2 cores) and checks itself against the eager model."""
    out = {k: Path(given[k]) for k in keys if given.get(k)}
    for k, path in out.items():
        if not path.exists():
            raise SystemExit(f"the ready {k} file {path}: no such file")
    todo = [k for k in keys if k not in out]
    if not todo:
        return out
    ckpt = workdir / "so3lr.ckpt"
    try:
        _run([so3krates_cli, "convert", REFERENCE / "params.pkl", "-o", ckpt, "--lr-cutoff", LR_CUTOFF,
              "--dispersion-damping", DISPERSION_DAMPING], stdout=sys.stderr)
        for key in todo:
            fmt, dtype = key.split("-")
            path = workdir / f"so3lr_{dtype}.{'pt2' if fmt == 'pt2' else 'pt'}"
            if fmt == "pt2":
                print(f"[setup] compiling our {dtype} .pt2 package (~10 min) ...", flush=True)
            if fmt == "fused":
                path = workdir / f"so3lr_{dtype}_fused.pt"
            _run([so3krates_cli, "export", ckpt, "-o", path, "--dtype", dtype]
                 + (["--format", "pt2"] if fmt == "pt2" else []) + (["--fused-kernels"] if fmt == "fused" else []),
                 stdout=sys.stderr)
            out[key] = path
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"making our model with `{so3krates_cli} convert/export` failed ({exc}); fix the "
                         "package, or pass ready exported files with --ours-f32-model / --ours-pt2-f32-model ...")
    return out


# ------------------------------------------------------------------------------------ one entry
def _rss_gb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0 ** 2
    except OSError:
        pass
    return 0.0


def run_entry(name: str, python: Path, system: Dict, args, model: Optional[Path], workdir: Path) -> Dict:
    backend, dtype, _ = ENTRIES[name]
    out = workdir / f"{name}_{system['atoms']}.json"
    cmd = ["taskset", "-c", str(args.core), str(python), str(WORKER), "--backend", backend, "--dtype", dtype,
           "--system", str(system["path"]), "--out", str(out), "--warmup", str(args.warmup),
           "--repeats", str(args.repeats)]
    if model is not None:
        cmd += ["--model", str(model)]
    if backend == "jax-md":
        cmd += ["--reference-dir", str(REFERENCE)]
    if backend == "so3krates-torch" and args.torch_keep_shift:
        cmd += ["--keep-shift"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               NUMEXPR_NUM_THREADS="1", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    if backend == "jax-md":
        env.update(XLA_FLAGS=XLA_FLAGS, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1" if dtype == "float64" else "0")
    env.pop("PYTHONPATH", None)
    record = {"entry": name, "backend": backend, "dtype": dtype, "atoms": system["atoms"],
              "replication": system["replication"], "command": " ".join(cmd)}
    print(f"[run] {name} @ {system['atoms']} atoms ...", flush=True)
    log = open(workdir / f"{name}_{system['atoms']}.log", "w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    killed = {}

    def guard():
        while proc.poll() is None:
            rss = _rss_gb(proc.pid)
            if rss > args.max_rss_gb:
                killed["why"] = f"killed: RSS {rss:.1f} GB passed --max-rss-gb {args.max_rss_gb:g}"
                proc.kill()
                return
            if time.perf_counter() - t0 > args.timeout:
                killed["why"] = f"killed: ran past --timeout {args.timeout:g} s"
                proc.kill()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=guard, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    watcher.join()
    record["wall_s"] = time.perf_counter() - t0
    record["peak_rss_gb"] = usage.ru_maxrss / 1024.0 ** 2  # the child's own peak (KiB on Linux)
    log.seek(0)
    text = log.read()
    log.close()
    if proc.returncode == 0 and out.exists():
        record.update(json.loads(out.read_text()))
        record["peak_rss_gb"] = usage.ru_maxrss / 1024.0 ** 2
        record["forces_file"] = str(out) + ".forces.npy"
        record["status"] = "ok"
        print(f"[run] {name} @ {system['atoms']}: {record['median_s']:.3f} s/call, "
              f"{record['us_per_atom']:.0f} µs/atom, E {record['energy_eV']:.4f} eV, "
              f"RSS {record['peak_rss_gb']:.2f} GB", flush=True)
    else:
        lines = [l for l in text.strip().splitlines() if l.strip() and not l.startswith("WARNING")]
        why = killed.get("why") or f"exit status {proc.returncode}"
        if proc.returncode in (-9, 137) and not killed:
            why += " (SIGKILL: likely out of memory)"
        detail = next((l.strip() for l in reversed(lines)
                       if "Error" in l or "error" in l or "Killed" in l or "out of memory" in l.lower()),
                      lines[-1].strip() if lines else "")
        if "Out of memory allocating" in detail:  # XLA: name the size it asked for
            try:
                n = int(detail.split("Out of memory allocating")[1].split()[0])
                why += f": XLA out of memory allocating {n / 1e9:.1f} GB"
                detail = ""
            except (ValueError, IndexError):
                pass
        record.update(status="failed", error=why + (f": {detail[-160:]}" if detail else ""), log_tail=lines[-8:])
        print(f"[run] {name} @ {system['atoms']}: FAILED ({record['error']})\n      " + "\n      ".join(lines[-4:]),
              flush=True)
    return record


# ------------------------------------------------------------------------------- checks, output
def best_time(r: Dict) -> float:
    """An entry's most favourable per-call time: with or without the neighbour update (JAX-MD: its lists
    reused as allocated; ours: the pair lists reused with a 1 Å skin — an MD step between searches)."""
    return min(r["median_s"], r.get("energy_forces_only_median_s", float("inf")))


def _published_output() -> Optional[Dict[str, np.ndarray]]:
    path = REFERENCE / "tests" / "water_ase.npz"
    if not path.exists():
        return None
    data = np.load(path)
    return {"energy": np.asarray(data["energy"]), "forces": np.asarray(data["forces"])}


REF_OUTPUT = _published_output()


def check_energies(results: List[Dict], tol: float) -> List[Dict]:
    checks = []
    for atoms in sorted({r["atoms"] for r in results}):
        ok = [r for r in results if r["atoms"] == atoms and r["status"] == "ok"]
        if not ok:
            continue
        ref = next((r for r in ok if r["entry"] == "ours-f64"), ok[0])
        f_ref = np.load(ref["forces_file"])
        for r in ok:
            de = abs(r["energy_per_atom_eV"] - ref["energy_per_atom_eV"])
            df = float(np.abs(np.load(r["forces_file"]) - f_ref).max())
            r["dE_per_atom_vs_ref_eV"] = de
            r["max_dF_vs_ref_eV_A"] = df
            r["energy_reference_entry"] = ref["entry"]
            check = {"atoms": atoms, "entry": r["entry"], "reference": ref["entry"],
                     "dE_total_eV": abs(r["energy_eV"] - ref["energy_eV"]), "dE_per_atom_eV": de,
                     "max_dF_eV_A": df, "tolerance_eV_per_atom": tol, "ok": bool(de <= tol)}
            if REF_OUTPUT is not None and atoms == len(REF_OUTPUT["forces"]):
                # the 2x2x2 box has published outputs of the original JAX code (float64, float32-rounded)
                check["vs_published_dE_eV"] = abs(r["energy_eV"] - float(REF_OUTPUT["energy"]))
                check["vs_published_max_dF_eV_A"] = float(np.abs(np.load(r["forces_file"]) - REF_OUTPUT["forces"]).max())
                r["vs_published_dE_eV"] = check["vs_published_dE_eV"]
                r["vs_published_max_dF_eV_A"] = check["vs_published_max_dF_eV_A"]
            checks.append(check)
    return checks


def compare(results: List[Dict]) -> List[Dict]:
    """Per size, dtype and each of our entries (TorchScript, .pt2): the fastest peer's time / ours."""
    out = []
    for atoms in sorted({r["atoms"] for r in results}):
        for dtype, need in (("float32", 2.0), ("float64", 1.0)):
            ok = [r for r in results if r["atoms"] == atoms and r["dtype"] == dtype and r["status"] == "ok"]
            peers = [r for r in ok if r["backend"] != "ours"]
            for ours in [r for r in ok if r["backend"] == "ours"]:
                row = {"atoms": atoms, "dtype": dtype, "entry": ours["entry"], "ours_s": best_time(ours),
                       "ours_search_s": ours["median_s"]}
                if not peers:
                    failed = [r for r in results if r["atoms"] == atoms and r["dtype"] == dtype
                              and r["backend"] != "ours"]
                    if failed:
                        out.append(dict(row, fastest_peer=None, goal=need, meets_goal=True, per_peer={},
                                        note="no peer finished: " + "; ".join(f"{r['entry']} {r.get('error', '')}"
                                                                              for r in failed)))
                    continue
                fastest = min(peers, key=best_time)
                ratio = best_time(fastest) / best_time(ours)
                out.append(dict(row, fastest_peer=fastest["entry"], fastest_peer_s=best_time(fastest),
                                speedup=ratio, goal=need, meets_goal=bool(ratio >= need),
                                speedup_both_searching=fastest["median_s"] / ours["median_s"],
                                per_peer={p["entry"]: best_time(p) / best_time(ours) for p in peers}))
    return out


def print_table(results: List[Dict], checks: List[Dict], ratios: List[Dict], tol: float) -> str:
    lines = []
    hdr = (f"{'atoms':>6} {'entry':<20} {'warm-up s':>9} {'s/call':>8} {'µs/atom':>8} {'RSS GB':>7} "
           f"{'energy eV':>16} {'E/atom eV':>12} {'|ΔE|/atom':>9} {'max|ΔF|':>8}")
    lines += [hdr, "-" * len(hdr)]
    for r in sorted(results, key=lambda r: (r["atoms"], list(ENTRIES).index(r["entry"]))):
        if r["status"] != "ok":
            lines.append(f"{r['atoms']:>6} {r['entry']:<20} {r.get('error', r['status'])}")
            continue
        extra = ""
        if "energy_forces_only_median_s" in r:
            what = "pair lists reused" if r["backend"] == "ours" else "without neighbour update"
            extra = f"   (E+F {what} {r['energy_forces_only_median_s']:.3f} s)"
        lines.append(f"{r['atoms']:>6} {r['entry']:<20} {r['warmup_s']:>9.1f} {r['median_s']:>8.3f} "
                     f"{r['us_per_atom']:>8.0f} {r['peak_rss_gb']:>7.2f} {r['energy_eV']:>16.5f} "
                     f"{r['energy_per_atom_eV']:>12.7f} {r.get('dE_per_atom_vs_ref_eV', float('nan')):>9.1e} "
                     f"{r.get('max_dF_vs_ref_eV_A', float('nan')):>8.1e}{extra}")
    lines.append("")
    lines.append(f"energy check (|ΔE|/atom vs the reference entry, tolerance {tol:g} eV/atom):")
    for c in checks:
        if c["entry"] == c["reference"]:
            continue
        lines.append(f"  {c['atoms']:>6} {c['entry']:<20} vs {c['reference']:<9} |ΔE| {c['dE_total_eV']:.2e} eV "
                     f"= {c['dE_per_atom_eV']:.2e} eV/atom, max|ΔF| {c['max_dF_eV_A']:.1e} eV/Å  "
                     f"{'OK' if c['ok'] else 'FAIL'}")
    pub = [c for c in checks if "vs_published_dE_eV" in c]
    if pub:
        lines.append("  published outputs of the original JAX code for the 1536-atom box (tests/water_ase.npz, "
                     "float64, float32-rounded):")
        for c in pub:
            lines.append(f"  {c['atoms']:>6} {c['entry']:<20} |ΔE| {c['vs_published_dE_eV']:.2e} eV, "
                         f"max|ΔF| {c['vs_published_max_dF_eV_A']:.1e} eV/Å")
    lines.append("")
    lines.append("speed (fastest peer time / ours; goal: >= 2x in float32, >= 1x in float64):")
    for q in ratios:
        if q.get("fastest_peer") is None:
            lines.append(f"  {q['atoms']:>6} {q['dtype']}: {q.get('entry', 'ours')} {q['ours_s']:.3f} s; {q['note'][:200]}")
            continue
        per = ", ".join(f"{k} {v:.2f}x" for k, v in q["per_peer"].items())
        lines.append(f"  {q['atoms']:>6} {q['dtype']}: {q.get('entry', 'ours')} {q['ours_s']:.3f} s, fastest peer {q['fastest_peer']} "
                     f"{q['fastest_peer_s']:.3f} s -> {q['speedup']:.2f}x  "
                     f"{'meets' if q['meets_goal'] else 'MISSES'} {q['goal']:g}x   [{per}]; both searching "
                     f"neighbours every call: {q['speedup_both_searching']:.2f}x")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


# ------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__[len(__doc__.split("\n\n")[0]):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=None,
                   help="atom counts; each picks the nearest n x n x n copy of the 192-atom water box "
                        f"(default {' '.join(map(str, DEFAULT_SIZES))})")
    p.add_argument("--entries", nargs="+", choices=list(ENTRIES), default=list(ENTRIES),
                   help="entries to run (default: all)")
    p.add_argument("--quick", action="store_true", help="1536 atoms only (unless --sizes is given)")
    p.add_argument("--ours-python", type=Path, default=None,
                   help="python that runs our TorchScript file (default: .venv/bin/python, else this one)")
    p.add_argument("--so3krates", type=Path, default=None,
                   help="the `so3krates` CLI (default: next to --ours-python)")
    p.add_argument("--ours-f32-model", type=Path, default=None,
                   help="use this exported float32 file (`so3krates export --dtype float32`) instead of "
                        "converting + exporting params.pkl with the CLI at run time")
    p.add_argument("--ours-f64-model", type=Path, default=None, help="likewise for float64")
    p.add_argument("--ours-fused-f32-model", type=Path, default=None,
                   help="use this float32 file exported with --fused-kernels for ours-fused-f32")
    p.add_argument("--ours-fused-f64-model", type=Path, default=None, help="likewise for float64")
    p.add_argument("--ours-pt2-f32-model", type=Path, default=None,
                   help="use this float32 .pt2 package (`so3krates export --format pt2 --dtype float32`) for "
                        "ours-pt2-f32 instead of compiling one at run time (~10 min)")
    p.add_argument("--ours-pt2-f64-model", type=Path, default=None, help="likewise for float64")
    p.add_argument("--jax-python", type=Path, default=JAX_VENV / "bin" / "python",
                   help="python of the prepared JAX SO3LR venv (default: %(default)s)")
    p.add_argument("--torch-python", type=Path, default=TORCH_VENV / "bin" / "python",
                   help="python of the So3krates-torch venv (default: %(default)s)")
    p.add_argument("--torch-keep-shift", action="store_true",
                   help="run So3krates-torch with its shipped per-atom energy shift and subtract the sum "
                        "afterwards (default: shift parameter zeroed, as SO3LR's add_shift=False)")
    p.add_argument("--core", type=int, default=0, help="core every entry is pinned to (taskset -c)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (first = warm-up time)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported")
    p.add_argument("--tolerance", type=float, default=1e-3, help="energy agreement, eV/atom")
    p.add_argument("--max-rss-gb", type=float, default=18.0, help="kill an entry whose RSS passes this")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per entry")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON (default benchmarks/results/peers_so3lr.json, _quick with --quick)")
    p.add_argument("--report", type=Path, default=None, metavar="JSON",
                   help="print the table of an earlier run's JSON and exit (runs nothing)")
    p.add_argument("--setup", choices=["torch", "jax", "all"], default=None,
                   help="build peer venv(s) (downloads from the registry; JAX also clones GitHub sources "
                        "into --jax-src when absent) and exit")
    p.add_argument("--jax-src", type=Path, default=Path("/tmp/so3lr_src"),
                   help="checkouts of so3lr/mlff/jax-md/glp/jraph/comms for --setup jax (default: %(default)s)")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [1536] if args.quick else list(DEFAULT_SIZES)
    if args.out is None:
        args.out = RESULTS / ("peers_so3lr_quick.json" if args.quick else "peers_so3lr.json")
    if args.ours_python is None:
        venv_py = REPO / ".venv" / "bin" / "python"
        args.ours_python = venv_py if venv_py.exists() else Path(sys.executable)
    if args.so3krates is None:
        args.so3krates = args.ours_python.parent / "so3krates"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        doc = json.loads(args.report.read_text())
        meta = doc.get("meta", {})
        print(f"{args.report}: {meta.get('date')} on {meta.get('cpu')}, core {meta.get('pinned_core')}"
              + (" (PARTIAL)" if meta.get("partial") else ""))
        for e, msg in meta.get("skipped", {}).items():
            print(f"[skip] {e}: {msg}")
        tol = next((c["tolerance_eV_per_atom"] for c in doc.get("energy_checks", [])), 1e-3)
        print_table(doc["results"], doc.get("energy_checks", []), compare(doc["results"]), tol)
        return 0
    if args.setup:
        if args.setup in ("torch", "all"):
            setup_torch(args.torch_python.parent.parent)
        if args.setup in ("jax", "all"):
            setup_jax(args.jax_python.parent.parent, args.jax_src)
        return 0
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed to pin every entry to one core")

    pythons = {"ours": args.ours_python, "torch": args.torch_python, "jax": args.jax_python}
    probes = {"ours": "import torch, numpy", "torch": TORCH_PROBE, "jax": JAX_PROBE}
    fixes = {"ours": "pass --ours-python", "torch": "python benchmarks/peers_so3lr.py --setup torch",
             "jax": "python benchmarks/peers_so3lr.py --setup jax (recipe: ../shared/peers.md)"}
    skipped = {}
    usable = {}
    for key in sorted({ENTRIES[e][2] for e in args.entries}):
        err = _probe(pythons[key], probes[key])
        usable[key] = err is None
        if err:
            names = [e for e in args.entries if ENTRIES[e][2] == key]
            msg = f"{pythons[key]} is not usable ({err}); create it with `{fixes[key]}`"
            print(f"[skip] {', '.join(names)}: {msg}", flush=True)
            for e in names:
                skipped[e] = msg
    entries = [e for e in args.entries if usable[ENTRIES[e][2]]]
    if not entries:
        raise SystemExit("nothing to run")

    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="peers_so3lr_"))
    try:
        ours_keys = sorted({_model_key(e) for e in entries if ENTRIES[e][0] == "ours"})
        models = prepare_ours(args.so3krates, ours_keys, workdir,
                              {"ts-float32": args.ours_f32_model, "ts-float64": args.ours_f64_model,
                               "fused-float32": args.ours_fused_f32_model, "fused-float64": args.ours_fused_f64_model,
                               "pt2-float32": args.ours_pt2_f32_model, "pt2-float64": args.ours_pt2_f64_model}
                              ) if ours_keys else {}
        systems = []
        for size in args.sizes:
            s = water_box(size, workdir)
            if s["atoms"] not in [x["atoms"] for x in systems]:
                systems.append(s)
        meta = {
            "benchmark": "benchmarks/peers_so3lr.py", "argv": sys.argv[1:],
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": platform.node(), "cpu": _cpu_name(), "pinned_core": args.core,
            "system": "periodic water, n x n x n copies of reference/so3lr/tests/water_64.xyz (192 atoms, 12.4 Å)",
            "settings": {"lr_cutoff_A": LR_CUTOFF, "dispersion_damping_A": DISPERSION_DAMPING,
                         "warmup_calls": args.warmup, "repeats": args.repeats, "statistic": "median",
                         "threads": "taskset -c core, OMP/MKL/OPENBLAS_NUM_THREADS=1, XLA_FLAGS=" + XLA_FLAGS},
            "energy_convention": "no per-element energy shift (SO3LR reference, mlff add_shift=False); "
                                 + ("So3krates-torch run with its shift, float64 sum subtracted" if args.torch_keep_shift
                                    else "So3krates-torch's energy_shifts parameter set to 0"),
            "jax_sources": {k: {"repo": v[0], "ref": v[1], "commit": v[2]} for k, v in JAX_SOURCES.items()},
            "skipped": skipped,
        }
        results: List[Dict] = []
        for s in systems:
            for e in entries:
                model = models.get(_model_key(e)) if ENTRIES[e][0] == "ours" else None
                results.append(run_entry(e, pythons[ENTRIES[e][2]], s, args, model, workdir))
                _write(args.out, meta, systems, results, [], [], partial=True)
        checks = check_energies(results, args.tolerance)
        ratios = compare(results)
        print()
        for e, msg in skipped.items():
            print(f"[skip] {e}: {msg}")
        print_table(results, checks, ratios, args.tolerance)
        _write(args.out, meta, systems, results, checks, ratios, partial=False)
        print(f"\nwrote {args.out}")
        failed_checks = [c for c in checks if not c["ok"]]
        return 1 if failed_checks else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _write(path: Path, meta, systems, results, checks, ratios, partial: bool) -> None:
    clean = [{k: v for k, v in r.items() if k != "forces_file"} for r in results]
    doc = {"meta": dict(meta, partial=partial),
           "systems": [{k: v for k, v in s.items() if k != "path"} for s in systems],
           "results": clean, "energy_checks": checks, "speed_ratios": ratios}
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    if partial:
        return
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
