"""What EFA costs: a So3krates model with and without EFA, energy + forces, 1k … 30k atoms.

    python benchmarks/efa_cost.py                 # model level, open + periodic, 1k … 30k atoms
    python benchmarks/efa_cost.py --quick         # model level, 1k and 2k atoms (a few minutes)
    python benchmarks/efa_cost.py --block         # the EFA block alone (open, simplex, kshell)

Model level (default; ``benchmarks/results/efa_cost.json``): the SO3LR network
(``So3kratesConfig.so3lr()``: F = 128, 3 layers, degrees 1–4, 4.5 Å cutoff) without its physical
long-range terms (ZBL, electrostatics, dispersion — they are not what is measured), random weights,
float32, wrapped in ``So3kratesPotential`` (neighbour list included, the same for every variant),
one energy + forces call, one thread. Three variants share everything but ``efa_layers``:

* ``local``    — no EFA;
* ``efa_one``  — EFA in the last layer;
* ``efa_all``  — EFA in every layer.

EFA settings (``--grid/--qk/--v/--heads/--max-length``): the EFA paper's for F = 128 — 50-point
Lebedev grid (b_max = π), 16 query/key and 32 value channels, 1 head, gelu, max_length 15 Å.
Systems: water at 1 g/cm³ (3 n³ atoms, random orientations) as an open cluster (pbc F F F,
Lebedev EFA) and as a periodic box (pbc T T T, EFA ``--periodic-mode``, default simplex; kshell
on request). Per (system, size) one subprocess times the three variants interleaved (after a
warm-up of each; round r calls every variant once; best of ``--repeats`` rounds), so that load
changes on a shared machine hit all variants alike, and one fresh subprocess per variant measures
the peak memory of one call (``ru_maxrss``); sizes whose extrapolated peak exceeds
``--max-memory-gb`` are skipped. Times: CPU seconds of the process (``time.process_time``; the
wall time is reported too, but on a shared machine it includes waiting for a core). Reported: time, peak memory, ratio EFA/local, and
the fitted scaling exponent x of time ∝ N^x per variant.

Block level (``--block``; ``benchmarks/results/efa_cost_block.json``): ``EFABlock`` forward +
backward to positions alone, F = 128, 4 heads, 86-point grid, max_length 10 Å (the settings of the
first cost study), open and periodic (simplex and kshell modes): shows the kshell mode's growth
with the box (K ∝ V) and the simplex mode's constant cost per atom.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from _measure import mem_available_gb, peak_rss_gb as _peak_gb, power_law_exponent as fit_exponent, rss_gb as _rss_gb

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FULL_SIDES = [7, 9, 12, 15, 19, 22]   # 1029, 2187, 5184, 10125, 20577, 31944 atoms
QUICK_SIDES = [7, 9]
VARIANTS = ("local", "efa_one", "efa_all")
DENSITY = 0.1  # atoms / Å³ (block level)


# ---------------------------------------------------------------------------------- workloads
def model_config(args, variant: str):
    from so3krates.potential.config import So3kratesConfig

    cfg = So3kratesConfig.so3lr().replace(
        zbl_repulsion_bool=False, electrostatic_energy_bool=False, dispersion_energy_bool=False,
        cutoff_lr=None, dispersion_energy_cutoff_lr_damping=None, species=[1, 8])
    layers = cfg.num_layers
    efa_layers = {"local": [], "efa_one": [False] * (layers - 1) + [True], "efa_all": [True] * layers}[variant]
    return cfg.replace(efa_layers=efa_layers, efa_grid=args.grid, efa_max_frequency=None,
                       efa_max_length=args.max_length, efa_num_heads=args.heads, efa_qk_features=args.qk,
                       efa_v_features=args.v, efa_qk_activation="gelu", efa_periodic_mode=args.periodic_mode)


def _model_workload(args, variant: str):
    import torch

    from so3krates.potential.potential import So3kratesPotential
    from so3krates.potential.model import So3krates
    from so3krates.systems import water_lattice as water_box

    torch.manual_seed(0)
    model = So3krates(model_config(args, variant))
    with torch.no_grad():  # make the EFA branches contribute (zero-initialised mlp2); cost is unchanged
        for layer in model.layers:
            if layer.efa.enabled:
                torch.nn.init.normal_(layer.efa.mlp2.weight, std=0.01)
    pot = So3kratesPotential(model).float().eval()
    pos, cell, numbers = water_box(args.n_side)
    P = torch.tensor(pos, dtype=torch.float32)
    Z = torch.tensor(numbers, dtype=torch.long)
    if args.system == "periodic":
        C = torch.tensor(cell, dtype=torch.float32)
        T = torch.ones(3, dtype=torch.bool)
    else:
        C = torch.zeros(3, 3, dtype=torch.float32)
        T = torch.zeros(3, dtype=torch.bool)
    params = int(sum(p.numel() for p in model.parameters()))

    def step():
        out = pot(P, Z, C, T, compute_forces=True)
        return float(out["energy"])

    return step, {"num_atoms": len(pos), "box_A": float(cell[0, 0]), "params": params}


def _block_workload(args):
    import torch

    from so3krates.potential.efa import EFABlock

    torch.manual_seed(0)
    n = args.n_atoms
    blk = EFABlock(128, enabled=True, num_heads=4, grid=86, max_length=10.0,
                   periodic_mode=args.periodic_mode).float()
    torch.nn.init.normal_(blk.mlp2.weight, std=0.01)
    side = (n / DENSITY) ** (1.0 / 3.0)
    h = torch.randn(n, 128)
    pos = torch.rand(n, 3) * side
    batch = torch.zeros(n, dtype=torch.long)
    periodic = args.system == "periodic"
    cell = (torch.eye(3) * side).unsqueeze(0) if periodic else torch.zeros(1, 3, 3)
    pbc = torch.full((1, 3), periodic, dtype=torch.bool)
    dx = torch.zeros_like(h)
    info: Dict[str, Any] = {"num_atoms": n, "box_A": side}
    if periodic and args.periodic_mode == "kshell":
        info["num_kvectors"] = int(blk.efa._kvectors(cell).shape[1])
    if periodic and args.periodic_mode == "simplex":
        cs, _, _ = blk.efa._simplex_phases(pos[:1].unsqueeze(0), cell, False)
        info["num_phases_per_pair"] = int(cs.shape[2])

    def step():
        p = pos.detach().requires_grad_(True)
        out = blk(h, dx, p, batch, 1, cell, pbc)
        (g,) = torch.autograd.grad(out.square().sum(), p)
        return float(g[0, 0])

    return step, info


def _time_calls(step, repeats: int) -> Dict[str, Any]:
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        step()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"cpu_s": min(cpu), "cpu_all_s": cpu, "wall_s": min(wall), "wall_all_s": wall}


def run_one(args) -> Dict[str, Any]:
    """Child process: build, warm up, time one point.

    Block level: one row. Model level: all ``--variants`` in this process, warmed up, then timed
    interleaved (round r times every variant once; best of the rounds), so that a change of the
    machine's load affects all variants alike; with ``--memory-only`` one variant and one call in
    a fresh process, whose peak RSS minus the RSS before the call is ``peak_increment_gb``."""
    import torch

    torch.set_num_threads(1)
    if args.block:
        step, info = _block_workload(args)
        base = _rss_gb()
        step()  # warm-up
        t = _time_calls(step, args.repeats)
        return {**info, "system": args.system, "variant": "block",
                "periodic_mode": args.periodic_mode if args.system == "periodic" else None, **t,
                "peak_memory_gb": _peak_gb(), "baseline_memory_gb": base,
                "peak_increment_gb": max(0.0, _peak_gb() - base)}
    variants = [v for v in args.variants]
    if args.memory_only:  # one variant, one call: the peak RSS of this process is its own
        step, info = _model_workload(args, variants[0])
        base = _rss_gb()
        step()
        return {"rows": [{**info, "system": args.system, "variant": variants[0], "peak_memory_gb": _peak_gb(),
                          "baseline_memory_gb": base, "peak_increment_gb": max(0.0, _peak_gb() - base)}]}
    steps, infos = {}, {}
    for v in variants:
        steps[v], infos[v] = _model_workload(args, v)
    for v in variants:  # warm-up of every variant first (one-time allocations, lazy initialisation)
        steps[v]()
    times: Dict[str, List[Any]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            times[v].append(_time_calls(steps[v], 1))
    rows = []
    for v in variants:
        cpu = [t["cpu_s"] for t in times[v]]
        wall = [t["wall_s"] for t in times[v]]
        rows.append({**infos[v], "system": args.system, "variant": v,
                     "periodic_mode": args.periodic_mode if args.system == "periodic" else None,
                     "cpu_s": min(cpu), "cpu_all_s": cpu, "wall_s": min(wall), "wall_all_s": wall})
    return {"rows": rows}


# ---------------------------------------------------------------------------------- driver
def _spawn(args, extra: List[str]) -> Dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--repeats", str(args.repeats),
           "--grid", str(args.grid), "--qk", str(args.qk), "--v", str(args.v), "--heads", str(args.heads),
           "--max-length", str(args.max_length)] + extra
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {args.timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        if proc.returncode in (-9, 137):
            err = "killed (out of memory?)"
        return {"error": err}
    return json.loads(lines[-1])


def _guard(rows: List[Dict[str, Any]], n: int, limit_gb: float) -> str:
    """'' if the extrapolated peak memory of an n-atom point fits, else the reason to skip it."""
    done = [r for r in rows if "error" not in r]
    if not done:
        return ""
    n_big = max(r["num_atoms"] for r in done)
    need = max(r["baseline_memory_gb"] + r["peak_increment_gb"] * n / n_big for r in done if r["num_atoms"] == n_big)
    limit = min(limit_gb, 0.8 * mem_available_gb())
    if need > limit:
        return f"skipped: extrapolated peak {need:.1f} GB > {limit:.1f} GB allowed"
    return ""


def _summary(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Ratios EFA/local per (system, size) and scaling exponents per (system, variant)."""
    out: Dict[str, Any] = {"ratio_over_local": [], "scaling_exponent_cpu": {}}
    ok = [r for r in rows if "error" not in r]
    for system in sorted({r["system"] for r in ok}):
        for n in sorted({r["num_atoms"] for r in ok if r["system"] == system}):
            pts = {r["variant"]: r for r in ok if r["system"] == system and r["num_atoms"] == n}
            if "local" not in pts:
                continue
            row: Dict[str, Any] = {"system": system, "num_atoms": n}
            for v in ("efa_one", "efa_all"):
                if v in pts:
                    row[f"{v}_time"] = pts[v]["cpu_s"] / pts["local"]["cpu_s"]
                    row[f"{v}_memory"] = pts[v]["peak_increment_gb"] / max(1e-9, pts["local"]["peak_increment_gb"])
            out["ratio_over_local"].append(row)
        for v in VARIANTS:
            sel = sorted((r for r in ok if r["system"] == system and r["variant"] == v), key=lambda r: r["num_atoms"])
            if len(sel) >= 2:
                out["scaling_exponent_cpu"][f"{system}/{v}"] = fit_exponent([r["num_atoms"] for r in sel],
                                                                             [r["cpu_s"] for r in sel])
    return out


def _table(rows: List[Dict[str, Any]], summary: Dict[str, Any]) -> str:
    lines = [f"{'system':<9} {'N':>6} {'variant':<8} {'cpu s':>8} {'wall s':>8} {'us/atom':>8} "
             f"{'peak GB':>8} {'incr GB':>8} {'x local':>8}"]
    lines.append("-" * len(lines[0]))
    ok = [r for r in rows if "error" not in r]
    for r in ok:
        loc = [x for x in ok if x["system"] == r["system"] and x["num_atoms"] == r["num_atoms"]
               and x["variant"] == "local"]
        ratio = f"{r['cpu_s'] / loc[0]['cpu_s']:.2f}" if loc and r["variant"] != "local" else "-"
        lines.append(f"{r['system']:<9} {r['num_atoms']:>6} {r['variant']:<8} {r['cpu_s']:>8.2f} {r['wall_s']:>8.2f} "
                     f"{1e6 * r['cpu_s'] / r['num_atoms']:>8.0f} {r['peak_memory_gb']:>8.2f} "
                     f"{r['peak_increment_gb']:>8.2f} {ratio:>8}")
    for r in rows:
        if "error" in r:
            lines.append(f"{r.get('system', '?'):<9} {r.get('num_atoms', '?'):>6} {r.get('variant', '?'):<8} {r['error']}")
    lines.append("scaling exponents (cpu time ∝ N^x): " + ", ".join(
        f"{k} {v:.2f}" for k, v in summary["scaling_exponent_cpu"].items()))
    return "\n".join(lines)


def _block_main(args) -> Dict[str, Any]:
    sizes = args.sizes or ([1000, 2000] if args.quick else [1000, 2000, 5000, 10000, 20000, 30000])
    rows: List[Dict[str, Any]] = []
    print("EFABlock fwd+bwd (F=128, 4 heads, grid 86, max_length 10 Å), float32, 1 thread", flush=True)
    for system, mode in (("open", "simplex"), ("periodic", "simplex"), ("periodic", "kshell")):
        sub: List[Dict[str, Any]] = []
        for n in sizes:
            skip = _guard(sub, n, args.max_memory_gb)
            if not skip and system == "periodic" and mode == "kshell" and n > args.kshell_max_atoms:
                skip = f"skipped: kshell cost grows as N² (--kshell-max-atoms {args.kshell_max_atoms})"
            label = f"{system}{'/' + mode if system == 'periodic' else ''}"
            if skip:
                r = {"num_atoms": n, "system": system, "periodic_mode": mode, "variant": "block", "error": skip}
            else:
                r = _spawn(args, ["--block", "--n-atoms", str(n), "--system", system, "--periodic-mode", mode])
                r.setdefault("num_atoms", n)
                r.setdefault("system", system)
                r["periodic_mode"] = mode if system == "periodic" else None
            print(f"  {label:<17} N={n:>6}: " + (r["error"] if "error" in r else
                  f"{r['cpu_s']:.3f} s cpu, peak {r['peak_memory_gb']:.2f} GB, K={r.get('num_kvectors', '-')}, "
                  f"J={r.get('num_phases_per_pair', '-')}"), flush=True)
            sub.append(r)
        rows += sub
    exps = {}
    for system, mode in (("open", None), ("periodic", "simplex"), ("periodic", "kshell")):
        sel = [r for r in rows if "error" not in r and r["system"] == system and r["periodic_mode"] == mode]
        exps[f"{system}{'/' + mode if mode else ''}"] = fit_exponent([r["num_atoms"] for r in sel],
                                                                      [r["cpu_s"] for r in sel])
    print("scaling exponents (cpu time ∝ N^x): " + ", ".join(f"{k} {v:.2f}" for k, v in exps.items()))
    return {"benchmark": "efa_cost_block", "what": "EFABlock forward + backward w.r.t. positions",
            "results": rows, "scaling_exponent_cpu": exps}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two sizes only")
    ap.add_argument("--block", action="store_true", help="the EFA block alone")
    ap.add_argument("--sides", type=int, nargs="*", default=None, help="model level: water lattice sides (3 n³ atoms)")
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="block level: numbers of atoms")
    ap.add_argument("--systems", nargs="*", default=["open", "periodic"], choices=["open", "periodic"])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--periodic-mode", default="simplex", choices=["simplex", "kshell"])
    ap.add_argument("--grid", type=int, default=50)
    ap.add_argument("--qk", type=int, default=16)
    ap.add_argument("--v", type=int, default=32)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--max-length", type=float, default=15.0, help="Å")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-memory-gb", type=float, default=4.0,
                    help="skip points whose extrapolated peak memory exceeds this (and 80%% of MemAvailable)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per point")
    ap.add_argument("--kshell-max-atoms", type=int, default=10000, help="block level: largest kshell size")
    ap.add_argument("--output", type=Path, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n-side", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n-atoms", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--system", default="open", help=argparse.SUPPRESS)
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args)), flush=True)
        return
    import torch

    t0 = time.perf_counter()
    host = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "loadavg_start": list(os.getloadavg())}
    if args.block:
        out = _block_main(args)
        path = args.output or RESULTS / "efa_cost_block.json"
    else:
        sides = args.sides or (QUICK_SIDES if args.quick else FULL_SIDES)
        rows: List[Dict[str, Any]] = []
        print(f"So3krates (SO3LR network, no physical terms) energy+forces, float32, 1 thread; EFA grid {args.grid}, "
              f"qk {args.qk}, v {args.v}, heads {args.heads}, max_length {args.max_length} Å, periodic mode "
              f"{args.periodic_mode}", flush=True)
        for system in args.systems:
            for s in sides:
                n = 3 * s ** 3
                prev = [r for r in rows if r["system"] == system]
                skip = _guard(prev, n, args.max_memory_gb)
                if skip:
                    got = [{"num_atoms": n, "system": system, "variant": v, "error": skip} for v in args.variants]
                else:
                    common = ["--n-side", str(s), "--system", system, "--periodic-mode", args.periodic_mode]
                    res = _spawn(args, common + ["--variants"] + list(args.variants))
                    got = res["rows"] if "rows" in res else \
                        [{"num_atoms": n, "system": system, "variant": v, "error": res["error"]} for v in args.variants]
                    for r in got:
                        if "error" in r:
                            continue
                        m = _spawn(args, common + ["--memory-only", "--variants", r["variant"]])
                        if "rows" in m:
                            r.update({k: m["rows"][0][k] for k in ("peak_memory_gb", "baseline_memory_gb",
                                                                   "peak_increment_gb")})
                        else:
                            r["error"] = "memory run: " + m["error"]
                for r in got:
                    print(f"  {system:<8} N={n:>6} {r['variant']:<8}: " + (r["error"] if "error" in r else
                          f"{r['cpu_s']:.2f} s cpu ({r['wall_s']:.2f} s wall), peak {r['peak_memory_gb']:.2f} GB"),
                          flush=True)
                rows += got
        summary = _summary(rows)
        print()
        print(_table(rows, summary))
        cfg = model_config(args, "efa_all")
        out = {"benchmark": "efa_cost", "what": "So3kratesPotential energy + forces, SO3LR network without "
               "physical terms, with/without EFA", "model": {k: v for k, v in cfg.to_dict().items()
                                                           if k.startswith("efa_") or k in
                                                           ("num_features", "num_layers", "degrees", "cutoff")},
               "dtype": "float32", "threads": 1, "time": "process CPU seconds, best of --repeats after a warm-up",
               "results": rows, **summary}
        path = args.output or (RESULTS / ("efa_cost_quick.json" if args.quick else "efa_cost.json"))
    out["host"] = {**host, "loadavg_end": list(os.getloadavg())}
    out["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                       if k not in ("child", "n_side", "n_atoms", "system", "memory_only")}
    out["total_wall_s"] = round(time.perf_counter() - t0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
