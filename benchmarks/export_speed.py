"""First-call (warm-up) and steady-state time of exported models (TorchScript, pt2) vs the eager model.

    python benchmarks/export_speed.py [--quick] [--no-pt2] [--no-lammps] [--checkpoint examples/models/so3krates_demo.ckpt]

For each system size (periodic water boxes) and dtype, a fresh subprocess loads the model and
times energy+forces calls: the first call (TorchScript profiling/optimisation happens here), the
next few (profiling executor warm-up), and the steady state (median of the last calls). Eager =
the So3kratesPotential from the checkpoint; exported = the TorchScript file of `so3krates export`;
pt2 = the torch.export/AOTInductor package of `so3krates export --format pt2` (compiled once per
dtype before the timings; local models only). Steady state = median of the second half of the
calls, reported with the min and max of that half (the spread on this noisy machine).
LAMMPS: MD steps of ``pair_style so3krates`` (1 rank, 1 thread) with the TorchScript file and with
the pt2 package on the same water box (``benchmarks/_engines.py run_lammps``: ``run 1`` untimed, then
``run N``; s/step from LAMMPS' loop time).
Prints a table and writes benchmarks/results/export_speed.json. One thread (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import write_json
import _engines

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = ROOT / "examples" / "models" / "so3krates_demo.ckpt"


def water_box(n_side: int, seed: int = 0):
    """n_side³ randomly oriented waters on a cubic lattice at 1 g/cm³, periodic, as ASE Atoms (Å)."""
    from ase import Atoms

    from so3krates.systems import water_lattice
    pos, cell, numbers = water_lattice(n_side, seed)
    return Atoms(numbers=numbers, positions=pos, cell=cell, pbc=True)


def worker(args) -> dict:
    """Runs in a fresh process: load, then time calls."""
    import torch
    torch.set_num_threads(1)
    from so3krates.export.loader import load_exported
    from so3krates.export.exporter import potential_from_checkpoint
    atoms = water_box(args.n_side)
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    if args.kind == "eager":
        module = potential_from_checkpoint(args.checkpoint, dtype=args.dtype)
    else:
        module, _ = load_exported(args.model)
    load_s = time.perf_counter() - t0
    pos = torch.tensor(atoms.positions, dtype=dtype)
    z = torch.tensor(atoms.numbers)
    cell = torch.tensor(atoms.cell.array, dtype=dtype)
    pbc = torch.tensor(atoms.pbc)
    times = []
    for k in range(args.calls):
        p = pos.clone()
        p[0, 0] += 1e-4 * k
        t0 = time.perf_counter()
        out = module(p, z, cell, pbc, 0.0, 0.0, True, False)
        out["forces"].sum().item()
        times.append(time.perf_counter() - t0)
    tail = times[-max(1, args.calls // 2):]
    return {"kind": args.kind, "dtype": args.dtype, "atoms": len(atoms), "load_s": load_s,
            "first_s": times[0], "second_s": times[1], "third_s": times[2],
            "steady_s": statistics.median(tail), "steady_min_s": min(tail), "steady_max_s": max(tail),
            "calls": args.calls}


def _lammps_rows(files, sizes, dtypes, kinds, tmp, steps) -> list:
    """MD steps in LAMMPS (1 rank) with the TorchScript file and the pt2 package, same boxes."""
    from so3krates import systems
    rows = []
    for n in sizes:
        system = systems.water_box(3 * n ** 3)  # TIP3P-geometry water at 1 g/cm³ (OpenMM topology)
        prep = _engines.prepare(system, os.path.join(tmp, f"lammps_{n}"))
        for dt in dtypes:
            for kind, fmt in (("exported", "torchscript"), ("pt2", "pt2")):
                if kind not in kinds:
                    continue
                print(f"LAMMPS {fmt} {dt} {3 * n ** 3} atoms ...", flush=True)
                res = _engines.run_lammps(prep, files[(kind, dt)], 1, steps, tag=f"_{fmt}_{dt}")
                rows.append({"format": fmt, "dtype": dt, "size": n, "atoms": system.n_atoms, "steps": steps,
                             "s_per_step": res.get("s_per_step"), "status": res.get("status")})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    p.add_argument("--quick", action="store_true", help="one small system, float32 only")
    p.add_argument("--calls", type=int, default=16, help="energy+forces calls per run (default 16)")
    p.add_argument("--no-pt2", action="store_true", help="skip the pt2 (AOTInductor) package (compiling takes minutes)")
    p.add_argument("--no-lammps", action="store_true", help="skip the LAMMPS rows (TorchScript vs pt2 in the pair style)")
    p.add_argument("--lammps-steps", type=int, default=10, help="timed MD steps per LAMMPS run (default 10)")
    p.add_argument("--exported", help="reuse this TorchScript file of --checkpoint instead of exporting (its dtype "
                                      "becomes the only dtype)")
    p.add_argument("--pt2", help="reuse this pt2 package of --checkpoint (same dtype as --exported) instead of "
                                 "compiling one, e.g. SO3LR's (~10 min to compile)")
    p.add_argument("--sizes", type=int, nargs="*", help="water lattice sides (3 n³ atoms; default 6 10, quick 6)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "export_speed.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", default="exported", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--n-side", type=int, default=6, help=argparse.SUPPRESS)
    p.add_argument("--model", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    from so3krates.export.exporter import export_checkpoint
    sizes = args.sizes or ([6] if args.quick else [6, 10])          # 648 and 3000 atoms
    dtypes = ["float32"] if args.quick else ["float32", "float64"]
    if args.exported:
        from so3krates.export.metadata import read_metadata
        dtypes = [read_metadata(args.exported)["dtype"]]
        if args.pt2 and read_metadata(args.pt2)["dtype"] != dtypes[0]:
            raise SystemExit(f"--pt2 {args.pt2} is not {dtypes[0]} like --exported {args.exported}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        kinds = ["eager", "exported"] + ([] if args.no_pt2 else ["pt2"])
        for dt in dtypes:
            files[("eager", dt)] = ""
            if args.exported:
                files[("exported", dt)] = os.path.abspath(args.exported)
            else:
                files[("exported", dt)] = os.path.join(tmp, f"model_{dt}.pt")
                export_checkpoint(args.checkpoint, files[("exported", dt)], dtype=dt)
            if "pt2" in kinds and args.pt2:
                files[("pt2", dt)] = os.path.abspath(args.pt2)
            elif "pt2" in kinds:
                print(f"compiling the pt2 package ({dt}) ...", flush=True)
                t0 = time.perf_counter()
                files[("pt2", dt)] = os.path.join(tmp, f"model_{dt}.pt2")
                export_checkpoint(args.checkpoint, files[("pt2", dt)], dtype=dt, fmt="pt2")
                print(f"  compiled in {time.perf_counter() - t0:.0f} s", flush=True)
        jobs = [(n, dt, kind) for n in sizes for dt in dtypes for kind in kinds]
        for k, (n, dt, kind) in enumerate(jobs, 1):
            print(f"[{k}/{len(jobs)}] {kind} {dt} {3 * n ** 3} atoms ...", flush=True)
            cmd = [sys.executable, __file__, "--worker", "--kind", kind, "--dtype", dt, "--n-side", str(n),
                   "--checkpoint", args.checkpoint, "--model", files[(kind, dt)], "--calls", str(args.calls)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        lammps_rows = [] if args.no_lammps else _lammps_rows(files, sizes, dtypes, kinds, tmp, args.lammps_steps)
    print(f"\n{'model':9s} {'dtype':8s} {'atoms':>6s} {'load s':>7s} {'1st call s':>10s} {'2nd s':>7s} "
          f"{'3rd s':>7s} {'steady s':>9s} {'(min-max)':>13s} {'1st/steady':>10s}")
    for r in rows:
        print(f"{r['kind']:9s} {r['dtype']:8s} {r['atoms']:6d} {r['load_s']:7.2f} {r['first_s']:10.3f} "
              f"{r['second_s']:7.3f} {r['third_s']:7.3f} {r['steady_s']:9.3f} "
              f"{r['steady_min_s']:6.3f}-{r['steady_max_s']:<6.3f} {r['first_s'] / r['steady_s']:10.2f}")
    ratios = {}
    for n in sizes:
        for dt in dtypes:
            e = next(r for r in rows if r["kind"] == "eager" and r["dtype"] == dt and r["atoms"] == 3 * n ** 3)
            for kind in kinds[1:]:
                x = next(r for r in rows if r["kind"] == kind and r["dtype"] == dt and r["atoms"] == 3 * n ** 3)
                key = f"{kind}_{dt}_{3 * n ** 3}"
                ratios[key] = x["steady_s"] / e["steady_s"]
                print(f"{kind}/eager steady-state time, {dt}, {3 * n ** 3} atoms: {ratios[key]:.2f}")
    for r in lammps_rows:
        print(f"LAMMPS 1 rank {r['format']:11s} {r['dtype']:8s} {r['atoms']:6d} atoms: "
              + (f"{r['s_per_step']:.3f} s/step" if r.get("s_per_step") else f"failed: {r.get('status')}"))
    lammps_ratio = {}
    for n in sizes:
        for dt in dtypes:
            pair = {r["format"]: r for r in lammps_rows if r["dtype"] == dt and r["size"] == n}
            if pair.get("pt2", {}).get("s_per_step") and pair.get("torchscript", {}).get("s_per_step"):
                key = f"{dt}_{pair['pt2']['atoms']}"
                lammps_ratio[key] = pair["pt2"]["s_per_step"] / pair["torchscript"]["s_per_step"]
                print(f"LAMMPS pt2/TorchScript s/step, {dt}, {pair['pt2']['atoms']} atoms: {lammps_ratio[key]:.2f}")
    write_json(args.output, {"benchmark": "export_speed", "checkpoint": args.checkpoint, "threads": 1, "rows": rows,
                             "over_eager": ratios, "lammps_rows": lammps_rows, "lammps_pt2_over_torchscript": lammps_ratio,
                             "load_average": os.getloadavg()})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
