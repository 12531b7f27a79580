"""A/B of exported model files in one process: which of two (or more) exports of a model is faster.

    python benchmarks/files_ab.py A.pt B.pt [C.pt ...] [--replicate 2] [--rounds 10] [--skin 1.0]
                                  [--out benchmarks/results/files_ab.json]

This machine's speed drifts by 5-20 % between processes and minutes, more than the changes one wants to
see; so every file is loaded into the same process and the calls alternate file by file, round after
round (A B C A B C ...): drift hits all files alike. The system is the periodic water box of
``../shared/reference/so3lr/tests/water_64.xyz`` (192 atoms) repeated ``--replicate`` times along each
axis (2: 1536 atoms, 3: 5184). Each call is one energy + forces evaluation (seconds per call, one
thread); the pair lists are reused between calls with a skin of ``--skin`` Å (the MD case: positions do
not move here, so every timed call reuses them). Two untimed calls per file first. Energies and forces
are compared with the first file's (eV, eV/Å). Prints a table (min and median per file, and the median
ratio to the first file) and writes JSON.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _measure import format_table, machine_info, write_json

REPO = Path(__file__).resolve().parents[1]
WATER = REPO.parent / "shared" / "reference" / "so3lr" / "tests" / "water_64.xyz"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="exported model files (.pt), all of one dtype")
    p.add_argument("--replicate", type=int, default=2, help="copies of the 192-atom box per axis (2: 1536 atoms)")
    p.add_argument("--rounds", type=int, default=10, help="timed calls per file, interleaved")
    p.add_argument("--skin", type=float, default=1.0, help="pair-list skin in Å (lists reused between calls)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "files_ab.json"))
    args = p.parse_args(argv)
    if not WATER.is_file():
        raise SystemExit(f"{WATER} not found: this benchmark needs ../shared beside the repository")
    from ase.io import read

    from so3krates.export.loader import load_exported, set_neighbor_skin

    torch.set_num_threads(args.threads)
    atoms = read(WATER).repeat((args.replicate,) * 3)
    modules, dtypes = [], set()
    for f in args.files:
        module, meta = load_exported(f)
        set_neighbor_skin(module, args.skin)
        modules.append(module)
        dtypes.add(meta.get("dtype", "float32"))
    if len(dtypes) != 1:
        raise SystemExit(f"the files differ in dtype ({', '.join(sorted(dtypes))}): compare files of one dtype")
    dt = getattr(torch, dtypes.pop())
    pos = torch.tensor(atoms.positions, dtype=dt)
    z = torch.tensor(atoms.numbers)
    cell = torch.tensor(np.asarray(atoms.cell), dtype=dt)
    pbc = torch.tensor(atoms.pbc)

    def call(m):
        return m(pos, z, cell, pbc, 0.0, 0.0, True, False)

    outs = []
    for m in modules:
        call(m)
        outs.append(call(m))
    times = [[] for _ in modules]
    for r in range(args.rounds):
        for i, m in enumerate(modules):
            t = time.perf_counter()
            call(m)
            times[i].append(time.perf_counter() - t)
        print(f"[ab] round {r + 1}/{args.rounds}: " + "  ".join(f"{t[-1]:.3f}" for t in times), file=sys.stderr,
              flush=True)
    ref = statistics.median(times[0])
    rows, entries = [], []
    for f, t, o in zip(args.files, times, outs):
        de = float((o["energy"] - outs[0]["energy"]).abs().sum())
        df = float((o["forces"] - outs[0]["forces"]).abs().max())
        med = statistics.median(t)
        rows.append([f, f"{min(t):.3f}", f"{med:.3f}", f"{ref / med:.2f}", f"{de:.1e}", f"{df:.1e}"])
        entries.append({"file": f, "seconds": t, "min_s": min(t), "median_s": med, "speedup_vs_first": ref / med,
                        "abs_dE_eV": de, "max_abs_dF_eV_per_A": df})
    print(f"{len(atoms)} atoms, {args.rounds} interleaved rounds, skin {args.skin} Å, {args.threads} thread(s); "
          "s per energy + forces call")
    print(format_table(["file", "min s", "median s", "first/this", "|dE| eV", "max|dF| eV/Å"], rows))
    write_json(args.out, {"atoms": len(atoms), "rounds": args.rounds, "skin_A": args.skin, "threads": args.threads,
                          "dtype": str(dt).replace("torch.", ""), "entries": entries, "machine": machine_info()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
