"""Energy + forces speed of the SO3LR configuration on periodic water boxes (CPU).

    python benchmarks/model_speed.py            # ~300 .. ~30,000 atoms, 1 and 2 threads
    python benchmarks/model_speed.py --quick    # up to ~3,000 atoms, 1 thread
    python benchmarks/model_speed.py --model demo --before 09ed271 --sides 7 10 --threads 1
                                                # before/after: an older revision's code vs this checkout

Model: `So3krates(So3kratesConfig.so3lr())` with random weights (speed does not depend on the
values), wrapped in `So3kratesPotential` in eval mode (the memory-lean inference pass; neighbour
lists for the 4.5 Å local and the 12 Å long-range graph are included in the timing), float32.
Water boxes: `so3krates.systems.water_lattice` (a 3-atom water replicated on a cubic lattice at
1 g/cm³ with random orientations, periodic). Each (size, threads) point runs in its own subprocess
so its peak RSS (VmHWM) is the peak memory of that size alone; sizes whose peak memory,
extrapolated linearly from the two largest sizes done, exceeds the limit (--max-memory-mb, default
half of MemAvailable) are skipped, and a point that grows past 1.2 x the limit is killed.

Prints a table (ms per atom for one energy+forces call: wall clock and process CPU time, which is
less sensitive to other jobs on a shared machine; peak RSS) and the fitted scaling exponent
(slope of log time vs log atoms), and writes JSON to benchmarks/results/model_speed.json
(model_speed_quick.json with --quick). --omp-passive sets OMP_WAIT_POLICY=PASSIVE in the workers
(on a machine shared with other jobs, spinning OpenMP threads make 2-thread runs several times
slower). --malloc-trim sets MALLOC_TRIM_THRESHOLD_ (and a fixed
32 MB MALLOC_MMAP_THRESHOLD_) in the workers: glibc then keeps freed memory for reuse instead of
returning it to the OS and faulting it in again for the next tensor.

--before REV checks out REV into a temporary git worktree, imports so3krates from it in the "before"
workers (the package map of pyproject.toml, bypassing the editable install) and runs each point for
REV and for this checkout in turn, so both see the same machine load; the table gives the CPU-time and
wall-time speed-ups, peak memory and the energy difference (zero up to float32 rounding for the demo
model and the published SO3LR weights: the same model, other code). Results go to
benchmarks/results/model_speed_<model>_before_after.json.
"""
import argparse
import json
import os
import platform
import sys
import time

from _measure import (extrapolate, guarded_run, mem_available_mb, peak_rss_mb as maxrss_mb, power_law_exponent,
                      write_json)

HERE = os.path.dirname(os.path.abspath(__file__))
SO3LR_PARAMS = os.path.join(os.path.dirname(HERE), "..", "shared", "reference", "so3lr", "params.pkl")
DEMO_CKPT = os.path.join(os.path.dirname(HERE), "examples", "models", "so3krates_demo.ckpt")
FULL_SIDES = [5, 7, 10, 14, 18, 22]      # 375, 1029, 3000, 8232, 17496, 31944 atoms
QUICK_SIDES = [5, 7, 10]                 # 375, 1029, 3000 atoms


def _use_source(source: str) -> None:
    """Import so3krates from ``source`` (a layout made by :func:`source_layout`) instead of this checkout."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
    sys.path[:] = [source] + [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(HERE)]


def _import_potential():
    """So3kratesPotential and neighbor_list of the imported so3krates (module paths moved in 27000e5)."""
    try:
        from so3krates.potential.potential import So3kratesPotential
        from so3krates.potential.graph.neighbors import neighbor_list
    except ImportError:  # before the one-house layout
        from so3krates.potential.calculator import So3kratesPotential
        from so3krates.potential.neighbors import neighbor_list
    return So3kratesPotential, neighbor_list


def worker(args):
    """One size, one thread count; prints one JSON line."""
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    if args.source:
        _use_source(args.source)
    So3kratesPotential, neighbor_list = _import_potential()
    from so3krates.potential.config import So3kratesConfig
    from so3krates.potential.model import So3krates
    from so3krates.potential.checkpoint import model_from_checkpoint

    torch.manual_seed(0)
    if args.model == "so3lr":
        net = So3krates(So3kratesConfig.so3lr())
    elif args.model == "so3lr-published":
        from so3krates.potential.convert import load_so3lr
        net = load_so3lr(SO3LR_PARAMS, lr_cutoff=12.0, dispersion_damping=2.0, dtype=torch.float32)
    else:
        net = model_from_checkpoint(DEMO_CKPT)
    pot = So3kratesPotential(net).float().eval()
    if args.fused_kernels:  # the attention's fused C++ kernels in the lean pass (this checkout only)
        from so3krates.export.exporter import with_fused_kernels
        pot = with_fused_kernels(pot, True)
    if args.script:
        pot = torch.jit.script(pot)
    box = np.load(args.system)
    pos, cell, numbers = box["positions"], box["cell"], box["numbers"]
    P = torch.tensor(pos, dtype=torch.float32)
    C = torch.tensor(cell, dtype=torch.float32)
    Z = torch.tensor(numbers, dtype=torch.long)
    T = torch.tensor([True, True, True])
    rss_model = maxrss_mb()

    # neighbour lists alone (local and long-range graph)
    t = time.perf_counter()
    i, _, _ = neighbor_list(P, float(pot.cutoff), C, T)
    t_nl = time.perf_counter() - t
    t = time.perf_counter()
    i_lr, _, _ = neighbor_list(P, float(pot.cutoff_lr), C, T) if pot.cutoff_lr > 0 else (i[:0], 0, 0)
    t_nl_lr = time.perf_counter() - t
    n_edges, n_edges_lr = int(i.shape[0]), int(i_lr.shape[0])
    del i, i_lr

    t = time.perf_counter()
    out = pot(P, Z, C, T, compute_forces=True)  # warm-up (and TorchScript profiling runs)
    t_first = time.perf_counter() - t
    assert torch.isfinite(out["forces"]).all()
    times = []
    cpu_times = []
    t_start = time.perf_counter()
    while len(times) < args.repeats or (time.perf_counter() - t_start < args.min_time
                                        and len(times) < 20):
        t = time.perf_counter()
        c = time.process_time()
        out = pot(P, Z, C, T, compute_forces=True)
        cpu_times.append(time.process_time() - c)
        times.append(time.perf_counter() - t)
        if len(times) >= args.repeats and time.perf_counter() - t_start > 3 * args.min_time:
            break
    n = len(pos)
    print(json.dumps({
        "atoms": n, "threads": args.threads, "n_side": args.n_side,
        "box_A": float(cell[0, 0]), "edges_local": n_edges, "edges_lr": n_edges_lr,
        "time_s": min(times), "time_s_median": sorted(times)[len(times) // 2],
        "time_first_call_s": t_first, "calls": len(times),
        "ms_per_atom": 1e3 * min(times) / n, "cpu_time_s": min(cpu_times),
        "cpu_ms_per_atom": 1e3 * min(cpu_times) / n, "loadavg_1min": os.getloadavg()[0],
        "malloc_trim": bool(args.malloc_trim), "neighbor_list_local_s": t_nl,
        "neighbor_list_lr_s": t_nl_lr, "peak_rss_mb": maxrss_mb(),
        "rss_after_model_mb": rss_model, "energy_eV": float(out["energy"]),
        "code": args.source or "this checkout",
        "imported_from": os.path.realpath(sys.modules[So3kratesPotential.__module__].__file__),
    }), flush=True)


def source_layout(rev: str, workdir: str) -> str:
    """A git worktree of ``rev`` and an importable ``so3krates`` package made from it (the package map of
    pyproject.toml: so3krates/, potential/ -> so3krates.potential, export/ -> so3krates.export, plugins/openmm
    -> so3krates.openmm); returns the folder to put first on sys.path."""
    import subprocess
    root = os.path.dirname(HERE)
    tree = os.path.join(workdir, "tree")
    subprocess.run(["git", "-C", root, "worktree", "add", "--detach", tree, rev], check=True, capture_output=True)
    site = os.path.join(workdir, "site")
    pkg = os.path.join(site, "so3krates")
    os.makedirs(pkg)
    for name in os.listdir(os.path.join(tree, "so3krates")):
        os.symlink(os.path.join(tree, "so3krates", name), os.path.join(pkg, name))
    for sub, src in (("potential", "potential"), ("export", "export"), ("openmm", "plugins/openmm")):
        if os.path.isdir(os.path.join(tree, src)):
            os.symlink(os.path.join(tree, src), os.path.join(pkg, sub))
    return site


def remove_worktree(workdir: str) -> None:
    import subprocess
    subprocess.run(["git", "-C", os.path.dirname(HERE), "worktree", "remove", "--force",
                    os.path.join(workdir, "tree")], capture_output=True)


def _run_point(args, env, t, s, system, source, done_rows, label):
    """One (threads, size) point in its own process: the row, an {'error': ...} dict, or None (skipped)."""
    env["OMP_NUM_THREADS"] = str(t)
    env["MKL_NUM_THREADS"] = str(t)
    if args.omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if args.malloc_trim:
        env["MALLOC_TRIM_THRESHOLD_"] = str(4 << 30)
        env["MALLOC_MMAP_THRESHOLD_"] = str(32 << 20)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--n-side", str(s), "--system", system,
           "--model", args.model, "--threads", str(t), "--repeats", str(args.repeats), "--min-time",
           str(args.min_time)]
    cmd += ["--source", source] if source else []
    cmd += ["--script"] if args.script else []
    cmd += ["--fused-kernels"] if args.fused_kernels and not source else []
    cmd += ["--malloc-trim"] if args.malloc_trim else []
    print(f"{label} {3 * s ** 3} atoms, {t} thread(s) ...", end=" ", flush=True)
    done = [r for r in done_rows if r["threads"] == t] or done_rows
    need = extrapolate([(r["atoms"], r["peak_rss_mb"]) for r in done], 3 * s ** 3) or 0.0
    limit = args.max_memory_mb or 0.5 * mem_available_mb()
    if need > limit:
        msg = f"skipped: predicted peak {need:.0f} MB > {limit:.0f} MB allowed"
        print(msg, flush=True)
        return {"atoms": 3 * s ** 3, "threads": t, "error": msg}
    t0 = time.perf_counter()
    run = guarded_run(cmd, env=env, timeout_s=args.timeout, max_rss_gb=1.2 * limit / 1024)
    lines = [ln for ln in run["stdout"].splitlines() if ln.startswith("{")]
    if run["returncode"] != 0 or not lines:
        err = "timeout" if run["killed"] == "timeout" else run["killed_reason"] or \
            (run["stderr"].strip().splitlines() or ["exit code %d" % run["returncode"]])[-1]
        print(f"FAILED: {err}", flush=True)
        return {"atoms": 3 * s ** 3, "threads": t, "error": err}
    r = json.loads(lines[-1])
    print(f"{r['ms_per_atom']:.3f} ms/atom, cpu {r['cpu_ms_per_atom']:.3f} ({r['time_s']:.2f} s/call, nl "
          f"{r['neighbor_list_local_s']:.2f}+{r['neighbor_list_lr_s']:.2f} s, peak {r['peak_rss_mb']:.0f} MB) "
          f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    return r


def _before_after_table(before_rows, rows):
    """Ratios before / after per point (CPU time, wall time, peak memory) and the energies of both."""
    out = []
    for b in before_rows:
        a = next((r for r in rows if r["atoms"] == b["atoms"] and r["threads"] == b["threads"]), None)
        if a is None:
            continue
        out.append({"atoms": a["atoms"], "threads": a["threads"],
                    "before_cpu_ms_per_atom": b["cpu_ms_per_atom"], "after_cpu_ms_per_atom": a["cpu_ms_per_atom"],
                    "speedup_cpu": b["cpu_time_s"] / a["cpu_time_s"], "speedup_wall": b["time_s"] / a["time_s"],
                    "before_peak_mb": b["peak_rss_mb"], "after_peak_mb": a["peak_rss_mb"],
                    "memory_ratio": a["peak_rss_mb"] / b["peak_rss_mb"],
                    "energy_before_eV": b["energy_eV"], "energy_after_eV": a["energy_eV"]})
    if out:
        print("\nbefore / after (same machine, interleaved):")
        print(f"{'atoms':>7} {'thr':>3} {'before cpu ms/at':>16} {'after cpu ms/at':>15} {'speed-up cpu':>12} "
              f"{'speed-up wall':>13} {'peak MB before/after':>21} {'E before - after, eV':>20}")
        for c in out:
            print(f"{c['atoms']:>7} {c['threads']:>3} {c['before_cpu_ms_per_atom']:>16.3f} "
                  f"{c['after_cpu_ms_per_atom']:>15.3f} {c['speedup_cpu']:>12.2f} {c['speedup_wall']:>13.2f} "
                  f"{c['before_peak_mb']:>10.0f}/{c['after_peak_mb']:<10.0f} "
                  f"{c['energy_before_eV'] - c['energy_after_eV']:>20.3g}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sizes up to ~3000 atoms, 1 thread")
    ap.add_argument("--model", choices=["so3lr", "so3lr-published", "demo"], default="so3lr",
                    help="so3lr: So3kratesConfig.so3lr() with random weights (default); so3lr-published: the "
                         "published weights of ../shared/reference/so3lr (lr cutoff 12 Å, damping 2 Å); demo: "
                         "the shipped examples/models/so3krates_demo.ckpt")
    ap.add_argument("--before", metavar="REV",
                    help="also time the code of git revision REV (a temporary worktree), interleaved with this "
                         "checkout point by point, and print the before/after ratios")
    ap.add_argument("--sides", type=int, nargs="*", help="water lattice sides (3 n³ atoms)")
    ap.add_argument("--threads", type=int, nargs="*", help="torch thread counts (default 1 2)")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per point (minimum)")
    ap.add_argument("--min-time", type=float, default=5.0, help="time each point at least this long (s)")
    ap.add_argument("--script", action="store_true", help="time the TorchScript-compiled potential")
    ap.add_argument("--fused-kernels", action="store_true",
                    help="this checkout's potential with the fused CPU attention kernels (as `so3krates export "
                         "--fused-kernels` files run; not applied to the --before revision)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per point before giving up")
    ap.add_argument("--max-memory-mb", type=float, default=None,
                    help="skip sizes whose extrapolated peak memory exceeds this, kill a point above 1.2x "
                         "this (default: 50%% of MemAvailable at that moment; the machine may be shared)")
    ap.add_argument("--omp-passive", action="store_true",
                    help="OMP_WAIT_POLICY=PASSIVE in the workers (idle OpenMP threads sleep instead of "
                         "spinning: much faster with 2 threads on a machine shared with other jobs)")
    ap.add_argument("--malloc-trim", action="store_true",
                    help="workers keep freed memory (MALLOC_TRIM_THRESHOLD_=4 GiB, MALLOC_MMAP_THRESHOLD_=32 MiB)")
    ap.add_argument("--out", help="JSON output path")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n-side", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--system", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.threads = args.threads[0]
        worker(args)
        return

    import tempfile

    import numpy as np

    from so3krates.systems import water_lattice

    sides = args.sides or (QUICK_SIDES if args.quick else FULL_SIDES)
    threads = args.threads or ([1] if args.quick else [1, 2])
    tag = {"so3lr": "", "so3lr-published": "_so3lr_published", "demo": "_demo"}[args.model]
    tag += "_before_after" if args.before else ""
    out_path = args.out or os.path.join(
        HERE, "results", f"model_speed{tag}_quick.json" if args.quick else f"model_speed{tag}.json")
    env = dict(os.environ)
    rows, failures, before_rows = [], [], []
    points = [(t, s) for t in threads for s in sides]
    work = tempfile.mkdtemp(prefix="model_speed_")
    codes = [("after", None)]
    if args.before:
        codes.insert(0, ("before", source_layout(args.before, work)))
    what = {"so3lr": "SO3LR (random weights)", "so3lr-published": "SO3LR (published weights)",
            "demo": "the shipped demo model"}[args.model]
    print(f"{what} energy+forces on periodic water boxes, float32, {len(points)} points (each in its own "
          f"process){'; code of ' + args.before + ' vs this checkout, interleaved' if args.before else ''}",
          flush=True)
    try:
        for k, (t, s) in enumerate(points, 1):
            system = os.path.join(work, f"water_{s}.npz")
            if not os.path.exists(system):
                pos, cell, numbers = water_lattice(s)
                np.savez(system, positions=pos, cell=cell, numbers=numbers)
            for code, source in codes:
                r = _run_point(args, env, t, s, system, source, rows if code == "after" else before_rows,
                               f"[{k}/{len(points)}]{' ' + code if args.before else ''}")
                if isinstance(r, dict) and "error" in r:
                    failures.append(dict(r, code=code))
                elif r is not None:
                    (rows if code == "after" else before_rows).append(r)
    finally:
        if args.before:
            remove_worktree(work)

    print()
    hdr = (f"{'atoms':>7} {'thr':>3} {'edges':>9} {'edges_lr':>10} {'s/call':>8} {'ms/atom':>8} {'cpu ms/at':>9} "
           f"{'nl s':>6} {'nl_lr s':>7} {'peak MB':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['atoms']:>7} {r['threads']:>3} {r['edges_local']:>9} {r['edges_lr']:>10} "
              f"{r['time_s']:>8.2f} {r['ms_per_atom']:>8.3f} {r['cpu_ms_per_atom']:>9.3f} {r['neighbor_list_local_s']:>6.2f} "
              f"{r['neighbor_list_lr_s']:>7.2f} {r['peak_rss_mb']:>8.0f}")
    exponents = {}
    exponents_cpu = {}
    for t in threads:
        sel = [r for r in rows if r["threads"] == t]
        exponents[str(t)] = power_law_exponent([r["atoms"] for r in sel], [r["time_s"] for r in sel])
        exponents_cpu[str(t)] = power_law_exponent([r["atoms"] for r in sel], [r["cpu_time_s"] for r in sel])
        print(f"scaling exponent (time ~ atoms^x), {t} thread(s): x = {exponents[str(t)]:.2f} "
              f"(cpu time: {exponents_cpu[str(t)]:.2f}) over {len(sel)} sizes")
    for f in failures:
        print(f"failed: {f}")
    comparison = _before_after_table(before_rows, rows) if args.before else []

    import torch
    result = {
        "benchmark": "model_speed", "model": {"so3lr": "So3kratesConfig.so3lr() (random weights)",
                                              "so3lr-published": "SO3LR published weights (params.pkl)",
                                              "demo": "examples/models/so3krates_demo.ckpt"}[args.model],
        "before_revision": args.before, "results_before": before_rows, "before_after": comparison,
        "system": "periodic water box, 1 g/cm^3", "dtype": "float32", "quantity": "energy+forces",
        "path": "So3kratesPotential eval mode: So3krates.energy_and_gradients (half pair lists, "
                "layer-wise recomputation in edge chunks, analytic long-range derivatives)",
        "scripted": bool(args.script), "fused_kernels": bool(args.fused_kernels), "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": rows, "scaling_exponent": exponents, "scaling_exponent_cpu_time": exponents_cpu,
        "malloc_trim": bool(args.malloc_trim), "omp_wait_policy_passive": bool(args.omp_passive),
        "failures": failures,
    }
    write_json(out_path, result)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
