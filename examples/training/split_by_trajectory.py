#!/usr/bin/env python
"""Write train/valid/test index files that hold out the end of every trajectory.

    python examples/training/split_by_trajectory.py examples/data/so3krates_demo.extxyz -o runs/split_traj
    so3krates train examples/models/config_shipped.yaml --set run_dir=runs/shipped_traj \\
        --set data.index_files.train=runs/split_traj/train.txt \\
        --set data.index_files.valid=runs/split_traj/valid.txt \\
        --set data.index_files.test=runs/split_traj/test.txt

A random split of MD frames 50 fs apart tests interpolation between near-copies of training frames.
This split (``so3krates.potential.train.splits.split_by_trajectory``) reads ``info['frame_id']``
(``subset/.../t00/f00012`` for MD frames, ``villin_cutout/s003/c017`` for cut-outs of snapshot 3)
and puts the last ``--test`` fraction of the time points of every trajectory into the test set, the
``--valid`` fraction before it into validation, and drops ``--gap`` time points before each held-out
block, so no test frame has a training frame within ``gap`` time points (50 fs each for MD, 100 fs
for the villin snapshots). Index files are plain text, one frame index (0-based, file order) a line.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="extxyz whose frames carry info['frame_id']")
    ap.add_argument("-o", "--out", required=True, help="folder for train.txt, valid.txt, test.txt, split.json")
    ap.add_argument("--valid", type=float, default=0.05, help="fraction of each trajectory's time points (0.05)")
    ap.add_argument("--test", type=float, default=0.10, help="fraction of each trajectory's time points (0.10)")
    ap.add_argument("--gap", type=int, default=1, help="time points dropped before each held-out block (1)")
    args = ap.parse_args(argv)

    import ase.io

    from so3krates.potential.train.splits import split_by_trajectory

    images = ase.io.read(args.data, ":")
    ids = [a.info.get("frame_id") for a in images]
    missing = sum(i is None for i in ids)
    if missing:
        raise SystemExit(f"{args.data}: {missing} frames have no info['frame_id']; this split needs trajectory labels")
    split = split_by_trajectory(ids, valid=args.valid, test=args.test, gap=args.gap)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"data": str(args.data), "valid": args.valid, "test": args.test, "gap": args.gap, "counts": {},
               "per_subset": {}}
    for name, idx in split.items():
        np.savetxt(out / f"{name}.txt", idx, fmt="%d")
        summary["counts"][name] = int(len(idx))
        summary["per_subset"][name] = dict(collections.Counter(images[i].info.get("subset", "?") for i in idx))
    (out / "split.json").write_text(json.dumps(summary, indent=1))
    print(f"{args.data}: " + ", ".join(f"{k} {v}" for k, v in summary["counts"].items()) + f" frames -> {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
