#!/usr/bin/env python
"""LAMMPS speed of ``pair_style so3krates``: timesteps/s and atom-steps/s vs atoms and MPI ranks,
the ghost/local atom ratio, the pruning speed-up and the overhead over the bare exported module.

    python benchmarks/lammps_speed.py            # water boxes of ~300, 1000, 3000 atoms; 1 and 2 ranks
    python benchmarks/lammps_speed.py --quick    # ~300 and 1000 atoms, fewer steps
    python benchmarks/lammps_speed.py --model so3lr.pt --sizes 300 --ranks 1 2
    python benchmarks/lammps_speed.py --random-features 16 --sizes 1000 3000 --ranks 1   # pruning at 1k-3k

For every box: the bare exported module (``forward`` on the periodic box, its own neighbour list,
energy + forces, one process, one thread) and real ``lmp`` under ``mpirun -np R`` (NVE, units metal,
``pair_style so3krates threads 1``, one warm-up step, then ``--steps`` timed steps; LAMMPS' loop
time), with pruning (default) and, on one rank, with ``prune no``. Reported: s/step, timesteps/s,
atom-steps/s, LAMMPS' Nlocal/Nghost averages (ghost/local ratio), atoms whose features layer 1
computes (rank 0), the pruning speed-up (prune no / prune yes) and the overhead of LAMMPS
(1 rank, pruned) over the bare module (time per step / time per call - 1).

Memory guard: every measurement runs in its own process tree whose resident memory (summed over
the tree) is polled; a run that exceeds ``--max-mem-gb`` (default 3.5 GB) is killed and reported as
skipped, and larger boxes are not tried for that configuration.

Default model: the project's shipped demo checkpoint (examples/models/so3krates_demo.ckpt: 2 layers x
5 Å, receptive field 10 Å), exported here in float32 with this version's exporter (``--model FILE``
takes an exported file instead). Units: Å, eV, ps; times in s. Writes a table to stdout and
``benchmarks/results/lammps_speed.json`` (``lammps_speed_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
VENV_BIN = Path(sys.executable).parent
DEFAULT_CHECKPOINT = ROOT / "examples" / "models" / "so3krates_demo.ckpt"


# ----------------------------------------------------------------------------- memory-guarded runs
def _tree_rss(pid: int) -> int:
    """Resident memory (bytes) of ``pid`` and all its descendants (Linux /proc)."""
    children: Dict[int, List[int]] = {}
    rss: Dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ppid = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            children.setdefault(ppid, []).append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def guarded_run(cmd: List[str], cwd: Path, limit_bytes: float, timeout: float) -> Dict:
    """Run ``cmd``; kill its process group when its tree's RSS exceeds ``limit_bytes``.
    Returns returncode, stdout, stderr, peak_rss_gb, killed (None / 'memory' / 'timeout')."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    state = {"peak": 0, "killed": None}

    def watch():
        t0 = time.time()
        while proc.poll() is None:
            r = _tree_rss(proc.pid)
            state["peak"] = max(state["peak"], r)
            if r > limit_bytes or time.time() - t0 > timeout:
                state["killed"] = "memory" if r > limit_bytes else "timeout"
                try:
                    os.killpg(proc.pid, 9)
                except ProcessLookupError:
                    pass
                return
            time.sleep(0.2)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    return {"returncode": proc.returncode, "stdout": out, "stderr": err, "peak_rss_gb": state["peak"] / 2**30,
            "killed": state["killed"]}


# ----------------------------------------------------------------------------- workers
def bare_worker(model: str, data: str, repeats: int) -> None:
    """Time the exported module's forward (energy + forces) on the periodic box of a data file."""
    import numpy as np
    import torch

    from so3krates.export.loader import load_exported

    torch.set_num_threads(1)
    module, meta = load_exported(model)
    dtype = getattr(torch, meta.get("dtype", "float32"))
    pos, z, cell = read_data(data)
    args = (torch.tensor(pos, dtype=dtype), torch.tensor(z), torch.tensor(cell, dtype=dtype),
            torch.tensor([True, True, True]), 0.0, 0.0, True, False)
    for _ in range(2):  # TorchScript profiling / optimisation runs
        module(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = module(*args)
        times.append(time.perf_counter() - t0)
    print("RESULT " + json.dumps({"s_per_call": float(np.median(times)), "energy": float(out["energy"])}))


def read_data(path: str):
    """Positions (Å), atomic numbers and cell of a data file written by _systems.write_lammps_data."""
    import numpy as np

    text = Path(path).read_text().splitlines()
    lengths, masses, atoms, section = [], {}, [], None
    for line in text:
        s = line.split("#")[0].strip()
        if s.endswith("xlo xhi") or s.endswith("ylo yhi") or s.endswith("zlo zhi"):
            lo, hi = map(float, s.split()[:2])
            lengths.append(hi - lo)
        elif s in ("Masses", "Atoms"):
            section = s
        elif s and section == "Masses":
            t, m = s.split()[:2]
            masses[int(t)] = float(m)
        elif s and section == "Atoms":
            v = s.split()
            atoms.append((int(v[1]), float(v[2]), float(v[3]), float(v[4])))
    z_of_mass = {1: 1, 12: 6, 14: 7, 16: 8, 32: 16}
    type_z = {t: z_of_mass[int(round(m))] for t, m in masses.items()}
    z = np.array([type_z[a[0]] for a in atoms])
    pos = np.array([a[1:] for a in atoms])
    return pos, z, np.diag(lengths)


LMP_INPUT = """
units metal
atom_style atomic
boundary p p p
newton on
read_data {data}
pair_style so3krates threads 1 prune {prune}
pair_coeff * * {model} {elements}
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
timestep 0.0005
velocity all create 300.0 4928 mom yes rot no
fix 1 all nve
thermo {steps}
run 1
run {steps}
"""


def parse_lammps(text: str) -> Dict:
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps", text)
    if not loops:
        raise RuntimeError("no 'Loop time' in the LAMMPS output:\n" + text[-2000:])
    loop, procs, steps = float(loops[-1][0]), int(loops[-1][1]), int(loops[-1][2])
    out = {"loop_s": loop, "steps": steps, "procs": procs}
    for key in ("Nlocal", "Nghost"):
        m = re.findall(rf"^{key}:\s+([0-9.eE+-]+) ave", text, re.M)
        if m:
            out[key.lower() + "_ave"] = float(m[-1])
    m = re.search(r"so3krates: rank 0 has (\d+) local \+ (\d+) ghost atoms; features computed for (\d+) atoms, "
                  r"layer updates on ([0-9/]+) atoms", text)
    if m:
        out["rank0_local"], out["rank0_ghost"], out["rank0_features"] = int(m.group(1)), int(m.group(2)), \
            int(m.group(3))
        out["rank0_layer_updates"] = [int(v) for v in m.group(4).split("/")]
    return out


# ----------------------------------------------------------------------------- driver
def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="~300 and 1000 atoms, 2 timed steps")
    p.add_argument("--model", default=None, help="exported model file (default: export --checkpoint)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="checkpoint exported (float32) when --model is not given (default: the demo model)")
    p.add_argument("--random-features", type=int, default=0, metavar="F",
                   help="instead: a random-weight local So3krates with F features (2 layers x 5 Å, receptive "
                        "field 10 Å, H O, float32) - small activations, so that 'prune no' fits in memory")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="water box sizes (atoms)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="MPI ranks (default 1 2)")
    p.add_argument("--steps", type=int, default=None, help="timed MD steps per run (default 4, quick 2)")
    p.add_argument("--no-unpruned", action="store_true", help="skip the 'prune no' runs")
    p.add_argument("--max-mem-gb", type=float, default=3.5, help="memory guard per run (GB, whole process tree)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/lammps_speed[_quick].json)")
    p.add_argument("--_bare", nargs=3, metavar=("MODEL", "DATA", "REPEATS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._bare:
        bare_worker(args._bare[0], args._bare[1], int(args._bare[2]))
        return {}

    import _systems

    from so3krates.export.metadata import read_metadata
    from so3krates.lammps import plugin_path

    plugin_path()  # stops with the fix when the plugin was not built
    work = Path(tempfile.mkdtemp(prefix="lammps_speed_"))
    if args.model is None and args.random_features > 0:
        import torch

        from so3krates.export.exporter import export_potential
        from so3krates.potential.potential import So3kratesPotential
        from so3krates.potential.config import So3kratesConfig
        from so3krates.potential.model import So3krates

        torch.manual_seed(0)
        f = args.random_features
        cfg = So3kratesConfig(cutoff=5.0, num_layers=2, num_features=f, num_heads=2,
                              degrees=[1, 2], num_radial_basis_fn=16, energy_regression_dim=f, species=[1, 8])
        args.model = str(work / "model.pt")
        export_potential(So3kratesPotential(So3krates(cfg).eval()), args.model, dtype="float32")
        source = f"random So3krates F={f}, 2 layers x 5 A (exported float32)"
    elif args.model is None:
        from so3krates.export.exporter import export_checkpoint

        args.model = str(work / "model.pt")
        export_checkpoint(args.checkpoint, args.model, dtype="float32")
        source = os.path.relpath(os.path.abspath(args.checkpoint), ROOT) + " (exported float32)"
    else:
        full = os.path.abspath(args.model)
        source = os.path.relpath(full, ROOT) if full.startswith(str(ROOT)) else os.path.basename(full)
    meta = read_metadata(args.model)
    sizes = args.sizes or ([300, 1000] if args.quick else [300, 1000, 3000])
    steps = args.steps or (2 if args.quick else 4)
    limit = args.max_mem_gb * 2**30
    out_path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        "lammps_speed_quick.json" if args.quick else "lammps_speed.json")
    rows: List[Dict] = []
    blocked = set()  # configurations that hit the memory guard: skip larger boxes
    print(f"model {args.model}: {meta.get('num_layers')} layers, cutoff {meta.get('cutoff')} Å, receptive field "
          f"{meta.get('receptive_field')} Å, {meta.get('dtype')}; sizes {sizes}; ranks {args.ranks}; "
          f"{steps} timed steps; memory guard {args.max_mem_gb} GB; work dir {work}", flush=True)
    for n in sizes:
        system = _systems.water_box(n)
        d = work / f"water{n}"
        d.mkdir()
        elements = _systems.write_lammps_data(system, d / "box.data")
        natoms = system.n_atoms
        row: Dict = {"atoms": natoms, "box_A": float(system.cell[0, 0]), "runs": []}
        key = "bare"
        if key not in blocked:
            r = guarded_run([sys.executable, __file__, "--_bare", args.model, str(d / "box.data"), "3"], d, limit,
                            args.timeout)
            m = re.search(r"^RESULT (.*)$", r["stdout"], re.M)
            if m and r["returncode"] == 0:
                row["bare"] = dict(json.loads(m.group(1)), peak_rss_gb=r["peak_rss_gb"])
            else:
                row["bare"] = {"skipped": r["killed"] or f"failed: {r['stderr'][-300:]}",
                               "peak_rss_gb": r["peak_rss_gb"]}
                if r["killed"] == "memory":
                    blocked.add(key)
            print(f"  {natoms} atoms bare module: {row['bare']}", flush=True)
        configs = [(ranks, "yes") for ranks in args.ranks]
        if not args.no_unpruned:
            configs.append((1, "no"))
        for ranks, prune in configs:
            key = (ranks, prune)
            if key in blocked:
                row["runs"].append({"ranks": ranks, "prune": prune, "skipped": "memory (smaller box hit the guard)"})
                continue
            (d / f"in.{ranks}.{prune}.lmp").write_text(LMP_INPUT.format(
                data="box.data", prune=prune, model=os.path.abspath(args.model), elements=" ".join(elements),
                steps=steps))
            cmd = [str(VENV_BIN / "lmp"), "-in", f"in.{ranks}.{prune}.lmp", "-log", "none", "-nocite"]
            if ranks > 1:
                cmd = [str(VENV_BIN / "mpirun"), "-np", str(ranks)] + cmd
            t0 = time.time()
            r = guarded_run(cmd, d, limit, args.timeout)
            res: Dict = {"ranks": ranks, "prune": prune, "peak_rss_gb": r["peak_rss_gb"], "wall_s": time.time() - t0}
            if r["returncode"] == 0:
                res.update(parse_lammps(r["stdout"]))
                res["s_per_step"] = res["loop_s"] / res["steps"]
                res["timesteps_per_s"] = res["steps"] / res["loop_s"]
                res["atom_steps_per_s"] = natoms * res["steps"] / res["loop_s"]
                if "nghost_ave" in res:
                    res["ghost_per_local"] = res["nghost_ave"] / max(res["nlocal_ave"], 1.0)
            else:
                res["skipped"] = r["killed"] or "failed: " + (r["stdout"] + r["stderr"])[-400:]
                if r["killed"] == "memory":
                    blocked.add(key)
            row["runs"].append(res)
            print(f"  {natoms} atoms, {ranks} rank(s), prune {prune}: "
                  + (f"{res['s_per_step']:.3f} s/step, ghost/local {res.get('ghost_per_local', 0):.1f}, "
                     f"peak {res['peak_rss_gb']:.2f} GB" if "s_per_step" in res else res["skipped"]), flush=True)
        by = {(x["ranks"], x["prune"]): x for x in row["runs"] if "s_per_step" in x}
        if (1, "yes") in by and (1, "no") in by:
            row["pruning_speedup_1rank"] = by[(1, "no")]["s_per_step"] / by[(1, "yes")]["s_per_step"]
        if (1, "yes") in by and "s_per_call" in row.get("bare", {}):
            row["lammps_overhead_1rank"] = by[(1, "yes")]["s_per_step"] / row["bare"]["s_per_call"] - 1.0
        rows.append(row)

    result = {"benchmark": "lammps_speed", "model": source,
              "model_info": {k: meta.get(k) for k in ("num_layers", "cutoff", "cutoff_lr", "receptive_field",
                                                         "dtype", "num_parameters")},
              "quick": bool(args.quick), "steps": steps, "threads_per_rank": 1, "max_mem_gb": args.max_mem_gb,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_at_end": list(os.getloadavg())},
              "note": "shared 2-core machine: absolute times are noisy; compare ratios", "rows": rows}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print_table(result)
    print(f"wrote {out_path}")
    return result


def print_table(result: Dict) -> None:
    print(f"\n{'atoms':>6} {'ranks':>5} {'prune':>5} {'s/step':>8} {'steps/s':>8} {'atom-steps/s':>12} "
          f"{'ghost/local':>11} {'L1 atoms':>8} {'peak GB':>7}")
    for row in result["rows"]:
        for r in row["runs"]:
            if "s_per_step" not in r:
                print(f"{row['atoms']:>6} {r['ranks']:>5} {r['prune']:>5} skipped: {r['skipped']}")
                continue
            l1 = r.get("rank0_layer_updates", [0])[0]
            print(f"{row['atoms']:>6} {r['ranks']:>5} {r['prune']:>5} {r['s_per_step']:>8.3f} "
                  f"{r['timesteps_per_s']:>8.3f} {r['atom_steps_per_s']:>12.0f} {r.get('ghost_per_local', 0):>11.1f} "
                  f"{l1:>8} {r['peak_rss_gb']:>7.2f}")
        bare = row.get("bare", {})
        extra = []
        if "s_per_call" in bare:
            extra.append(f"bare module {bare['s_per_call']:.3f} s/call")
        if "pruning_speedup_1rank" in row:
            extra.append(f"pruning speed-up x{row['pruning_speedup_1rank']:.2f}")
        if "lammps_overhead_1rank" in row:
            extra.append(f"LAMMPS overhead over bare module {100 * row['lammps_overhead_1rank']:+.0f}%")
        if extra:
            print(f"{'':>6} " + "; ".join(extra))


if __name__ == "__main__":
    main()
