#!/usr/bin/env python
"""LAMMPS vs the bare exported module vs OpenMM, side by side, and LAMMPS strong scaling 1 → 2 ranks.

    python benchmarks/lammps_speed.py            # water boxes of ~1k, 3k, 9k, 25k atoms
    python benchmarks/lammps_speed.py --quick    # ~1k and 3k atoms, 2 timed steps
    python benchmarks/lammps_speed.py --sizes 3000 --ranks 1 2 4 --engines lammps
    python benchmarks/lammps_speed.py --model so3lr.pt --sizes 1000 --max-mem-gb 12

For every periodic TIP3P water box (``so3krates.systems.water_box``: tiled from OpenMM's
tip3p.pdb, 1 g/cm³), each measurement in its own process tree (``benchmarks/_engines.py``):

``module``  the exported module called from Python: energy + forces on the periodic box (its own
            neighbour list), one thread, parameters set up for inference; 2 untimed calls, then
            ``--steps`` timed calls (mean).
``lammps``  ``lmp`` with ``pair_style so3krates threads 1`` (units metal, newton on, NVE,
            ``neighbor --skin bin``), 1 rank, then every ``--ranks`` under ``mpirun -np R``:
            ``run 1`` untimed, then ``run --steps``; s/step = LAMMPS' loop time / steps.
``openmm``  MD with ``so3krates.openmm.torch_force`` (TorchForce) on OpenMM's CPU platform, one
            thread (VerletIntegrator, 0.5 fs): 2 untimed steps, then ``--steps`` timed steps.

Reported per box: s/step (call) in wall and in CPU time (LAMMPS: all ranks, from its "% CPU use";
less sensitive to other jobs on a shared machine), atom-steps/s and peak resident memory of each
process tree (all ranks for LAMMPS), memory per atom (peak / atoms, and the slope of peak vs atoms over the boxes);
the ratios LAMMPS-1-rank / module for time and memory (target ≤ 1.15 each); the speed-up of 2
(and more) ranks over 1; from the pair style's first-evaluation log line
(``so3krates: ghost cutoff ... | rank 0: N local + M ghost atoms | features computed for the local
atoms only (1.00 per local atom); layer inputs projected for K atoms (x per local atom, at most y on
any rank) | ... | ghost atoms per local atom: a here, at most b``) the features, projected rows and
ghost atoms per local atom at every rank count.

Memory guard: a process tree whose resident memory exceeds ``--max-mem-gb`` (default 20 GB) is
killed and reported as skipped, and larger boxes are not tried for that engine / rank count.

Model: the shipped demo checkpoint (examples/models/so3krates_demo.ckpt), exported here in
float32 with ``so3krates export``; ``--model FILE`` takes an exported file instead. Units: Å, eV,
ps; times in s; GB = 2^30 bytes. Prints tables and writes ``benchmarks/results/lammps_speed.json``
(``lammps_speed_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import _engines
import _measure

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "examples" / "models" / "so3krates_demo.ckpt"
FULL_SIZES = [1000, 3000, 9000, 25000]
QUICK_SIZES = [1000, 3000]
TARGET_RATIO = 1.15


def export_model(checkpoint: str, out: Path) -> str:
    """``so3krates export CHECKPOINT -o out --dtype float32`` (the CLI, as a user runs it)."""
    cli = _measure.VENV_BIN / "so3krates"
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "so3krates.cli"]
    subprocess.run(cmd + ["export", checkpoint, "-o", str(out), "--dtype", "float32"], check=True,
                   env=_measure.worker_env(1), stdout=subprocess.DEVNULL)
    return str(out)


def _rate(atoms: int, s_per_step: Optional[float]) -> Optional[float]:
    return atoms / s_per_step if s_per_step else None


def measure_box(n: int, args, model: str, work: Path, blocked: set) -> Dict[str, Any]:
    from so3krates import systems

    system = systems.water_box(n)
    prep = _engines.prepare(system, work / f"water{n}")
    natoms = system.n_atoms
    row: Dict[str, Any] = {"atoms_requested": n, "atoms": natoms, "box_A": prep["box_A"][0],
                           "system": system.description, "lammps": []}
    guard = dict(max_rss_gb=args.max_mem_gb, timeout_s=args.timeout)

    def skipped(key):
        return {"status": "skipped", "error": f"a smaller box hit the {args.max_mem_gb:g} GB memory guard"} \
            if key in blocked else None

    def note(key, res):
        if res["status"] == "skipped":
            blocked.add(key)
        if res["status"] == "ok":
            res["atom_steps_per_s"] = _rate(natoms, res.get("s_per_step") or res.get("s_per_call"))
            res["peak_mb_per_atom"] = res["peak_rss_gb"] * 1024 / natoms
        what = key if isinstance(key, str) else f"lammps {key[1]} rank(s)"
        t = res.get("s_per_step") or res.get("s_per_call")
        print(f"  {natoms} atoms, {what}: " + (f"{t:.3f} s/step, peak {res['peak_rss_gb']:.2f} GB"
                                              if res["status"] == "ok" else f"{res['status']}: {res['error']}"),
              flush=True)
        return res

    if "module" in args.engines:
        row["module"] = skipped("module") or note("module", _engines.run_worker(
            "module", dict(model=model, npz=prep["npz"], calls=args.steps, warmup=2, threads=1,
                           as_loaded=args.module_as_loaded), **guard))
    ranks = sorted(set(args.ranks) | ({1} if "lammps" in args.engines else set()))
    for r in ranks if "lammps" in args.engines else []:
        key = ("lammps", r)
        res = skipped(key) or _engines.run_lammps(prep, model, r, args.steps, warmup=1, threads=1, skin=args.skin,
                                                  **guard)
        row["lammps"].append(note(key, dict(res, ranks=r)))
    if "openmm" in args.engines:
        row["openmm"] = skipped("openmm") or note("openmm", _engines.run_worker(
            "openmm", dict(model=model, npz=prep["npz"], steps=args.steps, warmup=2, threads=1), **guard))
    row["ratios"] = ratios(row)
    shutil.rmtree(prep["dir"], ignore_errors=True)
    return row


def ratios(row: Dict[str, Any]) -> Dict[str, Any]:
    """LAMMPS-1-rank / module (time, memory), OpenMM / module, speed-up of R ranks over 1."""
    ok = lambda r: r is not None and r.get("status") == "ok"  # noqa: E731
    mod, omm = row.get("module"), row.get("openmm")
    lmp = {r["ranks"]: r for r in row["lammps"] if ok(r)}
    out: Dict[str, Any] = {}
    if ok(mod) and 1 in lmp:
        out["lammps1_over_module_time"] = lmp[1]["s_per_step"] / mod["s_per_call"]
        out["lammps1_over_module_memory"] = lmp[1]["peak_rss_gb"] / mod["peak_rss_gb"]
        if lmp[1].get("cpu_s_per_step"):
            out["lammps1_over_module_cpu_time"] = lmp[1]["cpu_s_per_step"] / mod["cpu_s_per_call"]
        out["within_target"] = (out["lammps1_over_module_time"] <= TARGET_RATIO
                                and out["lammps1_over_module_memory"] <= TARGET_RATIO)
    if ok(mod) and ok(omm):
        out["openmm_over_module_time"] = omm["s_per_step"] / mod["s_per_call"]
        out["openmm_over_module_cpu_time"] = omm["cpu_s_per_step"] / mod["cpu_s_per_call"]
        out["openmm_over_module_memory"] = omm["peak_rss_gb"] / mod["peak_rss_gb"]
    for r, res in lmp.items():
        if r > 1 and 1 in lmp:
            out[f"speedup_{r}_ranks"] = lmp[1]["s_per_step"] / res["s_per_step"]
            out[f"efficiency_{r}_ranks"] = out[f"speedup_{r}_ranks"] / r
    return out


def memory_slopes(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per engine: least-squares peak memory = base + slope × atoms over the boxes (kB per atom, MB)."""
    series: Dict[str, List] = {}
    for row in rows:
        for name, res in [("module", row.get("module")), ("openmm", row.get("openmm"))] + \
                         [(f"lammps_np{r['ranks']}", r) for r in row["lammps"]]:
            if res and res.get("status") == "ok":
                series.setdefault(name, []).append((row["atoms"], res["peak_rss_gb"] * 1024))
    out = {}
    for name, pts in series.items():
        slope, base = _measure.linear_fit([a for a, _ in pts], [m for _, m in pts])
        if slope == slope:  # not nan
            out[name] = {"kb_per_atom": slope * 1024, "base_mb": base, "boxes": len(pts)}
    return out


def print_tables(result: Dict[str, Any]) -> str:
    def f(v, spec):
        return "—" if v is None else format(v, spec)

    rows = []
    for row in result["rows"]:
        runs = [("module", row.get("module"))] + [(f"lammps {r['ranks']} rank" + ("s" if r["ranks"] > 1 else ""), r)
                                                    for r in row["lammps"]] + [("openmm", row.get("openmm"))]
        for name, res in runs:
            if res is None:
                continue
            if res.get("status") != "ok":
                rows.append([row["atoms"], name, res["status"], "", "", "", "", "", "", ""])
                continue
            st = res.get("so3krates", {})
            t = res.get("s_per_step") or res.get("s_per_call")
            cpu = res.get("cpu_s_per_step") or res.get("cpu_s_per_call")
            rows.append([row["atoms"], name, f"{t:.3f}", f(cpu, ".3f"), f(res.get("atom_steps_per_s"), ",.0f"),
                         f"{res['peak_rss_gb']:.2f}", f"{res['peak_mb_per_atom'] * 1024:.0f}",
                         f(st.get("features_per_local"), ".2f"),
                         f(st.get("projected_per_local"), ".2f") + (f" ({st['projected_per_local_max']:.2f})"
                                                                   if "projected_per_local_max" in st else ""),
                         f(st.get("ghost_per_local"), ".2f") + (f" ({st['ghost_per_local_max']:.2f})"
                                                               if "ghost_per_local_max" in st else "")])
    text = [_measure.format_table(["atoms", "engine", "s/step", "CPU s/step", "atom-steps/s", "peak GB", "kB/atom",
                                   "features/local", "projected/local (max)", "ghost/local (max)"], rows)]
    summary = []
    for row in result["rows"]:
        r = row["ratios"]
        speed = "  ".join(f"x{r[k]:.2f} ({k.split('_')[1]} ranks)" for k in sorted(r) if k.startswith("speedup_"))
        summary.append([row["atoms"], f(r.get("lammps1_over_module_time"), ".2f"),
                        f(r.get("lammps1_over_module_cpu_time"), ".2f"), f(r.get("lammps1_over_module_memory"), ".2f"),
                        {True: "yes", False: "no"}.get(r.get("within_target"), "—"),
                        f(r.get("openmm_over_module_time"), ".2f"), speed or "—"])
    text.append(_measure.format_table(["atoms", "LAMMPS-1/module time", "(CPU time)", "LAMMPS-1/module memory",
                                       f"both <= {TARGET_RATIO}", "OpenMM/module time", "LAMMPS speed-up"],
                                      summary))
    slopes = result.get("memory_per_atom_fit", {})
    if slopes:
        text.append("peak memory vs atoms (least squares over the boxes): " + "; ".join(
            f"{k} {v['kb_per_atom']:.0f} kB/atom + {v['base_mb']:.0f} MB" for k, v in slopes.items()))
    out = "\n\n".join(text)
    print("\n" + out)
    return out


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~1k and 3k atoms, 2 timed steps")
    p.add_argument("--model", default=None, help="exported model file (default: export --checkpoint)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="checkpoint exported (float32) when --model is not given (default: the demo model)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="water box sizes, atoms (default 1000 3000 "
                                                                        "9000 25000; quick 1000 3000)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="MPI ranks of LAMMPS (default 1 2)")
    p.add_argument("--engines", default="module,lammps,openmm", help="comma list of module, lammps, openmm")
    p.add_argument("--steps", type=int, default=None, help="timed steps / calls per run (default 5, quick 2)")
    p.add_argument("--skin", type=float, default=1.0, help="LAMMPS neighbour skin, Å (default 1)")
    p.add_argument("--max-mem-gb", type=float, default=20.0,
                   help="memory guard: kill a run whose process tree exceeds this many GB (default 20)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run (default 1800)")
    p.add_argument("--module-as-loaded", action="store_true",
                   help="time the module with its parameters as torch.jit.load leaves them (requires_grad)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/lammps_speed[_quick].json)")
    args = p.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(args.engines) - {"module", "lammps", "openmm"}
    if unknown:
        p.error(f"unknown engines {sorted(unknown)}: choose from module, lammps, openmm")
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    args.steps = args.steps or (2 if args.quick else 5)

    from so3krates.export.metadata import read_metadata
    from so3krates.lammps import plugin_path

    if "lammps" in args.engines:
        plugin_path()  # stops with the fix when the plugin was not built
    work = Path(tempfile.mkdtemp(prefix="lammps_speed_"))
    if args.model is None:
        model = export_model(args.checkpoint, work / "model.pt")
        source = os.path.relpath(os.path.abspath(args.checkpoint), ROOT) + " (exported float32 by this script)"
    else:
        model = os.path.abspath(args.model)
        source = os.path.relpath(model, ROOT) if model.startswith(str(ROOT)) else os.path.basename(model)
    meta = read_metadata(model)
    out_path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        "lammps_speed_quick.json" if args.quick else "lammps_speed.json")
    print(f"model {source}: {meta.get('num_layers')} layers, cutoff {meta.get('cutoff')} Å, long-range cutoff "
          f"{meta.get('cutoff_lr')}, {meta.get('dtype')}; sizes {sizes}; engines {', '.join(args.engines)}; "
          f"LAMMPS ranks {sorted(set(args.ranks) | {1})}; {args.steps} timed steps; memory guard "
          f"{args.max_mem_gb:g} GB; work dir {work}", flush=True)

    rows: List[Dict[str, Any]] = []
    blocked: set = set()
    result: Dict[str, Any] = {}
    for n in sizes:
        print(f"[{len(rows) + 1}/{len(sizes)}] water box of ~{n} atoms", flush=True)
        rows.append(measure_box(n, args, model, work, blocked))
        result = {
            "benchmark": "lammps_speed", "model": source,
            "model_info": {k: meta.get(k) for k in ("num_layers", "cutoff", "cutoff_lr", "receptive_field", "dtype",
                                                       "num_parameters", "species")},
            "quick": bool(args.quick), "steps": args.steps, "threads_per_process": 1, "skin_A": args.skin,
            "max_mem_gb": args.max_mem_gb, "target_ratio": TARGET_RATIO,
            "module_parameters": "as loaded (requires_grad)" if args.module_as_loaded else "set up for inference",
            "system": "periodic TIP3P water boxes (so3krates.systems.water_box)",
            "quantities": {
                "s_per_call / s_per_step": "module: mean of the timed calls; lammps: loop time / steps; "
                                           "openmm: wall time of the timed steps / steps",
                "cpu_s_per_call / cpu_s_per_step": "process CPU time per call/step (lammps: all ranks, from its "
                                                   "'% CPU use'); less sensitive to other jobs than wall time",
                "within_target": "wall-time and memory ratios LAMMPS-1-rank / module both <= target_ratio",
                "peak_rss_gb": "sum over the process tree (all ranks, mpirun) of each process's peak resident "
                               "memory (VmHWM; exact for one process)",
                "so3krates": "fields of the pair style's first-evaluation log line (rank 0; *_max: largest rank)",
                "memory_per_atom_fit": "least squares peak = base + slope x atoms over the boxes"},
            "machine": _measure.machine_info(), "rows": rows, "memory_per_atom_fit": memory_slopes(rows)}
        _measure.write_json(out_path, result)  # partial results survive an interruption
    result["table"] = print_tables(result)
    _measure.write_json(out_path, result)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
