#!/usr/bin/env python
"""All speed benchmarks in one command: the bare exported module, OpenMM and LAMMPS, vs system size.

    python benchmarks/run_all.py                       # full: 1k, 3k, 9k, 25k atoms (~20 min)
    python benchmarks/run_all.py --quick               # CI-sized: 300 and 1000 atoms, few steps
    python benchmarks/run_all.py --model examples/models/so3krates_demo.pt --stages module,lammps
    python benchmarks/run_all.py --peers               # + nequip/Allegro, TorchMD-Net, MACE (own venvs)

Systems: TIP3P water boxes (periodic, 1 g/cm³, tiled from OpenMM's tip3p.pdb;
``so3krates.systems.water_box``) of about the requested number of atoms.

Stages (each point is its own process tree, run by ``benchmarks/_engines.py``; its peak memory is
that of the whole tree, all ranks for LAMMPS):

``module``   the exported TorchScript module called from Python: energy + forces per call
             (neighbour list included; parameters set up for inference), float32, 1 thread, every
             size → ms/call, atom-steps/s, peak RSS, scaling exponent (slope of log time vs log atoms).
``variants`` at one size (3k; 1k with --quick): float32 vs float64, 1 vs 2 threads, EFA off vs on
             (random-weight models of the same architecture with/without an EFA block).
``openmm``   MD with ``so3krates.openmm.torch_force`` (TorchForce, LangevinMiddleIntegrator,
             CPU platform) → ms/step.
``lammps``   MD with ``pair_style so3krates`` (``fix langevin`` + ``fix nve``, skin 1 Å) with 1 and 2
             MPI ranks (``mpirun -np``) → ms/step from LAMMPS' loop time after a warm-up run; peak
             RSS of all ranks; the pair style's decomposition line (``so3krates``: ghost and
             projected atoms per local atom). LAMMPS against the module side by side, with strong
             scaling: ``benchmarks/lammps_speed.py``.
``peers``    (``--peers`` only) other MLIPs on the same water boxes in their own venvs.

Model: ``--model`` (default ``examples/models/so3krates_demo.pt`` when it exists, otherwise a
random-weight model with the architecture of examples/models/config_shipped.yaml — speed does
not depend on the weight values). Memory guards: a point whose peak memory, extrapolated
linearly in N from the smaller sizes, exceeds ``--mem-fraction`` of MemAvailable is skipped
(recorded with the prediction), and a point whose process tree exceeds ``--max-mem-gb`` (20) is
killed and recorded as skipped. Results: ``benchmarks/results/run_all.json``, ``summary.md`` and
``time_vs_atoms.png`` (``*_quick.*`` with --quick). Set OMP_NUM_THREADS=1 (done for the workers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import _engines
import _measure

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DEMO_MODEL = ROOT / "examples" / "models" / "so3krates_demo.pt"
LAMMPS_SKIN = 1.0  # Å

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


# ============================================================================ models and points
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


def run_point(p: dict, prep: dict, timeout: float, max_mem_gb: float) -> dict:
    """One point in its own process tree (benchmarks/_engines.py), in this file's row format."""
    t0 = time.perf_counter()
    guard = dict(max_rss_gb=max_mem_gb, timeout_s=timeout)
    if p["stage"] == "module":
        r = _engines.run_worker("module", dict(model=p["model"], npz=prep["npz"], calls=p["calls"], warmup=2,
                                               threads=p["threads"], dtype=p["dtype"]), threads=p["threads"], **guard)
        row = dict(atoms=r.get("atoms"), ms_per_step=1000 * r.get("s_min", 0), ms_median=1000 * r.get("s_median", 0),
                   cpu_ms_per_step=1000 * r.get("cpu_s_per_call", 0), first_call_ms=1000 * (r.get("first_call_s") or 0),
                   calls=r.get("calls"), energy_eV=r.get("energy_eV"))
    elif p["stage"] == "openmm":
        r = _engines.run_worker("openmm", dict(model=p["model"], npz=prep["npz"], steps=p["steps"], warmup=2,
                                               threads=p["threads"], dtype=p["dtype"], integrator="langevin"),
                                threads=p["threads"], **guard)
        row = dict(atoms=r.get("atoms"), ms_per_step=1000 * r.get("s_per_step", 0),
                   first_call_ms=1000 * (r.get("first_step_s") or 0), steps=p["steps"],
                   cpu_ms_per_step=1000 * r.get("cpu_s_per_step", 0))
    else:
        r = _engines.run_lammps(prep, p["model"], p["ranks"], p["steps"], warmup=1, threads=p["threads"],
                                skin=LAMMPS_SKIN, langevin=True, **guard)
        row = dict(atoms=prep["atoms"], ms_per_step=1000 * r.get("s_per_step", 0), steps=p["steps"],
                   total_s=r.get("total_s"), cpu_use_percent=r.get("cpu_use_percent"),
                   ghost_atoms_per_rank=r.get("nghost_ave"), so3krates=r.get("so3krates"),
                   peak_rss_note="whole process tree (all ranks and mpirun)")
    if r["status"] != "ok":
        return dict(p, status=r["status"], error=r["error"], peak_rss_mb=r["peak_rss_gb"] * 1024)
    if p["stage"] != "module":
        row["ns_per_day"] = _engines.TIMESTEP_FS * 1e-6 * 86400 * 1000 / row["ms_per_step"]
    return dict(p, status="ok", **row, peak_rss_mb=r["peak_rss_gb"] * 1024, point_wall_s=time.perf_counter() - t0)


def effective_atoms(p: dict, shell: float) -> float:
    """Atoms the model sees: N for the module/OpenMM; local + ghost atoms summed over the ranks for
    LAMMPS (ghost shell ``shell`` Å = max(cutoff, cutoff_lr) + skin; 2 ranks split x)."""
    if p["stage"] != "lammps":
        return float(p["atoms"])
    edge = (p["atoms"] / 3.0 * 29.91) ** (1.0 / 3.0)
    per_rank = (edge / p["ranks"] + 2 * shell) * (edge + 2 * shell) ** 2 * p["atoms"] / edge ** 3
    return per_rank * p["ranks"]


def cpu_ms(r: dict) -> Optional[float]:
    """Process CPU time per step (LAMMPS: wall x its '% CPU use' x ranks)."""
    if r.get("cpu_ms_per_step") is not None:
        return r["cpu_ms_per_step"]
    if r.get("cpu_use_percent"):
        return r["ms_per_step"] * r["cpu_use_percent"] / 100.0 * r.get("ranks", 1)
    return None


def fit_exponent(rows: List[dict], key: str = "wall") -> Optional[float]:
    """x of time ∝ atoms^x over the ok rows (wall or CPU time per step); None for < 2 sizes."""
    val = (lambda r: r["ms_per_step"]) if key == "wall" else cpu_ms
    pts = [(r["atoms"], val(r)) for r in rows if r.get("status") == "ok" and val(r)]
    x = _measure.power_law_exponent([n for n, _ in pts], [t for _, t in pts])
    return None if x != x else x


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
    ap.add_argument("--mem-fraction", type=float, default=0.8,
                    help="skip a point whose predicted peak exceeds this fraction of MemAvailable (0.8)")
    ap.add_argument("--max-mem-gb", type=float, default=20.0,
                    help="memory guard: kill a point whose process tree exceeds this many GB (default 20)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per point")
    ap.add_argument("--peers", action="store_true", help="also run the peers stage (venvs in benchmarks/.peer_venvs; see docs/gems.md)")
    ap.add_argument("--peer-sizes", default=None, help="sizes for --peers (default: the sizes up to 3000 atoms)")
    ap.add_argument("--out", default=None, help="output prefix (default benchmarks/results/run_all[_quick])")
    ap.add_argument("--report-only", default=None, metavar="JSON", help="re-write summary/plot from a results JSON")
    args = ap.parse_args(argv)
    if args.report_only:
        doc = json.loads(Path(args.report_only).read_text())
        write_reports(doc, Path(args.report_only))
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
    # LAMMPS ghost shell: one cutoff (max(cutoff, cutoff_lr)) + skin (per-layer halo exchange)
    shell = max(float(meta.get("cutoff") or 0.0), float(meta.get("cutoff_lr") or 0.0)) + LAMMPS_SKIN

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
    preps: Dict[int, dict] = {}  # atoms requested -> the box's files (built once, shared by every stage)
    t_start = time.perf_counter()
    for k, p in enumerate(plan, start=1):
        if p["model"] in ("@timing", "@timing_efa"):
            path = tmpdir / (p["model"][1:] + ".pt")
            if not path.exists():
                make_timing_model(str(path), efa=p["model"] == "@timing_efa")
            p["model"] = str(path)
        prev = [r for r in results if r["series"] == p["series"] and r.get("status") == "ok"]
        need = _measure.extrapolate([(r["atoms"], r["peak_rss_mb"]) for r in prev], p["atoms"]) if len(prev) > 1 \
            else None
        ref = [r for r in results if r["series"] == "module" and r.get("status") == "ok"]
        if len(ref) >= 2 and (need is None or p["stage"] == "lammps"):
            # per-atom memory of the bare module x atoms the engine evaluates (ghosts included)
            (n1, m1), (n2, m2) = sorted((r["atoms"], r["peak_rss_mb"]) for r in ref)[-2:]
            per_atom = max((m2 - m1) / max(n2 - n1, 1), 0.0)
            est = m1 + per_atom * (effective_atoms(p, shell) - n1)
            need = est if need is None else max(need, est)
        avail = _measure.mem_available_mb()
        p["atoms_requested"] = p["atoms"]
        if need is not None and need > args.mem_fraction * avail:
            r = dict(p, status="skipped", predicted_peak_rss_mb=need,
                     error=f"predicted peak {need / 1024:.1f} GB > {args.mem_fraction:.0%} of available "
                           f"{avail / 1024:.1f} GB")
        else:
            if p["atoms"] not in preps:
                from so3krates import systems
                preps[p["atoms"]] = _engines.prepare(systems.water_box(p["atoms"]), tmpdir / f"water{p['atoms']}")
            r = run_point(p, preps[p["atoms"]], args.timeout, args.max_mem_gb)
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
        for r in run_peers(peer_sizes, calls, tmpdir, args.timeout, args.max_mem_gb):
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
        system="TIP3P water boxes (so3krates.systems.water_box), periodic", quantity=
        "module: one energy+forces call (best of N; parameters set up for inference); openmm/lammps: one MD step "
        "(mean over N steps after a warm-up); peak_rss_mb: the point's whole process tree (all LAMMPS ranks)",
        max_mem_gb=args.max_mem_gb,
        torch=__import__("torch").__version__, python=platform.python_version(), cpu_count=os.cpu_count(),
        load_average=os.getloadavg(), date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        results=results, scaling_exponents=exponents, wall_s=time.perf_counter() - t_start)
    json_path = _measure.write_json(prefix.with_suffix(".json"), doc)
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


def run_peers(sizes: List[int], calls: int, tmpdir: Path, timeout: float, max_mem_gb: float) -> List[dict]:
    """Time energy+forces of peer MLIPs (random weights, ~so3krates-sized) on the same water boxes."""
    from so3krates import systems
    out = []
    boxes = {}
    for n in sizes:
        path = tmpdir / f"water_{n}.npz"
        systems.save_arrays(systems.water_box(n), path)
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
            run = _measure.guarded_run([py, worker, name, npz, calls], env=_measure.worker_env(1),
                                       max_rss_gb=max_mem_gb, timeout_s=timeout)
            res = _measure.parse_result(run["stdout"]) if run["returncode"] == 0 else None
            if res:
                out.append(dict(base, atoms_requested=n, status="ok", **dict(res, peak_rss_mb=run["peak_rss_gb"] * 1024)))
            else:
                status = {"memory": "skipped", "timeout": "timeout"}.get(run["killed"], "failed")
                out.append(dict(base, atoms=n, atoms_requested=n, status=status, error=_measure.failure_text(run, 300)))
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
    _measure.write_json(json_path, doc)
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
