"""Cost of the EFA block (forward + backward to positions) versus system size.

    python benchmarks/efa_cost.py            # N = 1k … 30k atoms
    python benchmarks/efa_cost.py --quick    # N = 1k, 2k (smoke test, < 1 min on a laptop CPU)
    python benchmarks/efa_cost.py --periodic # reciprocal-lattice variant in a water-density box

Each size runs in a fresh subprocess so that the peak memory is its own: on CUDA
``torch.cuda.max_memory_allocated``, on CPU the peak resident set size minus the RSS before the
timed calls (after the inputs are built). Prints a table and writes ``benchmarks/results/efa_cost.json``.
Atoms are placed uniformly at liquid-water number density (0.1 Å⁻³), one graph.

The workload is built by ``build_workload(args, n)``; ``--model`` is reserved for the full-model
comparison with/without EFA once the block is integrated into So3krates (fill in
``_model_workload``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "efa_cost.json"
DENSITY = 0.1  # atoms / Å³


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9


def _efa_workload(args, n: int):
    import torch

    from so3krates.potential.efa import EFABlock

    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    dev = torch.device(args.device)
    torch.manual_seed(0)
    blk = EFABlock(args.features, enabled=True, num_heads=args.heads, grid=args.grid,
                   max_length=args.max_length).to(device=dev, dtype=dtype)
    torch.nn.init.normal_(blk.mlp2.weight, std=0.01)  # make the global branch contribute
    side = (n / DENSITY) ** (1.0 / 3.0)
    h = torch.randn(n, args.features, device=dev, dtype=dtype)
    pos = torch.rand(n, 3, device=dev, dtype=dtype) * side
    batch = torch.zeros(n, dtype=torch.long, device=dev)
    if args.periodic:
        cell = (torch.eye(3, device=dev, dtype=dtype) * side).unsqueeze(0)
        pbc = torch.ones(1, 3, dtype=torch.bool, device=dev)
    else:
        cell = torch.zeros(1, 3, 3, device=dev, dtype=dtype)
        pbc = torch.zeros(1, 3, dtype=torch.bool, device=dev)
    dx = torch.zeros_like(h)
    info = {"box_side_A": side}
    if args.periodic:
        info["num_kvectors"] = int(blk.efa._kvectors(cell).shape[1])

    def step():
        p = pos.detach().requires_grad_(True)
        out = blk(h, dx, p, batch, 1, cell, pbc)
        (g,) = torch.autograd.grad(out.square().sum(), p)
        return g

    return step, info


def _model_workload(args, n: int):  # pragma: no cover - filled in after integration
    raise SystemExit("--model needs the So3krates model with EFA integrated (potential/model.py); "
                     "implement _model_workload(args, n) to build it with/without efa_layers")


def build_workload(args, n: int):
    return _model_workload(args, n) if args.model else _efa_workload(args, n)


def run_one(args) -> dict:
    """Child process: time and measure one size."""
    import torch

    torch.set_num_threads(args.threads)
    n = args.one
    step, info = build_workload(args, n)
    cuda = args.device.startswith("cuda")
    base = torch.cuda.memory_allocated() / 1e9 if cuda else _rss_gb()  # inputs + parameters built
    step()  # warm-up (included in the CPU peak; CUDA peak is reset after it)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 1e9
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB
    return {"num_atoms": n, "time_s": min(times), "time_all_s": times, "peak_memory_gb": peak,
            "baseline_memory_gb": base, "peak_increment_gb": max(0.0, peak - base), **info}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sizes 1k, 2k only")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--features", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--grid", type=int, default=86)
    ap.add_argument("--max-length", type=float, default=10.0)
    ap.add_argument("--periodic", action="store_true", help="reciprocal-lattice EFA in a cubic box")
    ap.add_argument("--model", action="store_true", help="full So3krates model with/without EFA (after integration)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.one is not None:
        print(json.dumps(run_one(args)))
        return
    sizes = args.sizes or ([1000, 2000] if args.quick else [1000, 2000, 5000, 10000, 20000, 30000])
    rows = []
    print(f"EFA block fwd+bwd, F={args.features}, heads={args.heads}, grid={args.grid}, "
          f"{'periodic' if args.periodic else 'open'}, {args.dtype}, {args.device}, threads={args.threads}")
    print(f"{'N':>7} {'time [s]':>10} {'us/atom':>9} {'peak [GB]':>10} {'incr [GB]':>10} {'K':>6}")
    for n in sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--features", str(args.features), "--heads",
               str(args.heads), "--grid", str(args.grid), "--max-length", str(args.max_length),
               "--dtype", args.dtype, "--device", args.device, "--repeats", str(args.repeats),
               "--threads", str(args.threads)] + (["--periodic"] if args.periodic else []) + \
              (["--model"] if args.model else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            msg = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            print(f"{n:>7} failed: {msg}")
            rows.append({"num_atoms": n, "error": msg})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{n:>7} {r['time_s']:>10.3f} {1e6 * r['time_s'] / n:>9.1f} {r['peak_memory_gb']:>10.3f} "
              f"{r['peak_increment_gb']:>10.3f} {r.get('num_kvectors', '-'):>6}")
    out = {"benchmark": "efa_cost", "what": "EFABlock forward + backward w.r.t. positions",
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "one"},
           "host": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(),
                    "loadavg": os.getloadavg()},
           "results": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
