#!/usr/bin/env python
"""Make the committed demo dataset ``examples/data/so3krates_demo.extxyz`` in one command.

Runs ``sample_peptides.py`` and ``sample_fragments.py`` (OpenMM, amber14/TIP3P) into a work
folder, then labels all frames with GFN2-xTB through ``label_xtb.py``. ``--boxes`` also runs
``sample_water_boxes.py`` (periodic bulk water and a solvated Ace-Ala3-Nme box, labelled with
periodic GFN2-xTB: the committed ``water_boxes.extxyz`` is these 100 frames alone). Units: positions Å,
energy eV (``info['energy']``), forces eV/Å (``arrays['forces']``), net charge e
(``info['total_charge']``); ``info['subset']`` says where a frame comes from.

Every step resumes: run the same command again after an interruption and only the missing
frames are sampled or labelled. ``--scale`` multiplies all frame counts (e.g. 0.1 for a
quick look). 2790 frames, 5.6 MB (+100 periodic frames with ``--boxes``, 4–20 s each to label);
README.md says what is in it and how long it took.

    OMP_NUM_THREADS=1 python examples/data/make_dataset.py
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _datagen as C  # noqa: E402
import label_xtb  # noqa: E402
import sample_fragments  # noqa: E402
import sample_peptides  # noqa: E402
import sample_water_boxes  # noqa: E402

# frames at --scale 1
COUNTS = {
    "dipeptide_gas": 800,
    "ala3_gas": 300,
    "dipeptide_water": 300,
    "ala3_water": 150,
    "capped_aa_per_residue": 40,   # x 19 residues
    "villin_snapshots": 12,
    "villin_per_snapshot": 40,
    "water_box": 60,         # --boxes only
    "ala3_water_box": 40,    # --boxes only
}


def summarize(path: str) -> dict:
    import ase.io
    import numpy as np
    frames = ase.io.read(path, index=":")
    per = collections.Counter(a.info.get("subset", "?") for a in frames)
    atoms = collections.Counter()
    elements = set()
    charges = collections.Counter()
    fmax = 0.0
    for a in frames:
        atoms[a.info.get("subset", "?")] += len(a)
        elements.update(a.get_chemical_symbols())
        charges[int(a.info.get("total_charge", 0))] += 1
        fmax = max(fmax, float(np.abs(C.energy_forces(a)[1]).max()))
    return {"frames": len(frames), "per_subset": dict(per),
            "mean_atoms": {k: atoms[k] / per[k] for k in per},
            "elements": sorted(elements), "charges": dict(charges),
            "max_force_eV_per_A": fmax, "bytes": os.path.getsize(path)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", default=os.path.join(HERE, "so3krates_demo.extxyz"))
    p.add_argument("--workdir", default=os.path.normpath(os.path.join(HERE, "..", "..", "build", "data")),
                   help="unlabelled frames go here (default: build/data, git-ignored)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply all frame counts")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--boxes", action="store_true",
                   help="also the periodic water / solvated-peptide boxes (sample_water_boxes.py)")
    args = p.parse_args(argv)

    def n(key):
        return max(1, int(round(COUNTS[key] * args.scale)))

    os.makedirs(args.workdir, exist_ok=True)
    pep = os.path.join(args.workdir, "peptides_raw.extxyz")
    frag = os.path.join(args.workdir, "fragments_raw.extxyz")
    boxes = os.path.join(args.workdir, "boxes_raw.extxyz")
    times = {}
    t = time.time()
    sample_peptides.main(["-o", pep, "--seed", str(args.seed),
                          "--n-dipeptide-gas", str(n("dipeptide_gas")), "--n-ala3-gas", str(n("ala3_gas")),
                          "--n-dipeptide-water", str(n("dipeptide_water")),
                          "--n-ala3-water", str(n("ala3_water"))])
    times["sample_peptides"] = time.time() - t
    t = time.time()
    sample_fragments.main(["-o", frag, "--seed", str(args.seed),
                           "--n-per-residue", str(n("capped_aa_per_residue")),
                           "--n-snapshots", str(n("villin_snapshots")),
                           "--n-per-snapshot", str(n("villin_per_snapshot"))])
    times["sample_fragments"] = time.time() - t
    t = time.time()
    inputs = [pep, frag]
    if args.boxes:
        sample_water_boxes.main(["-o", boxes, "--seed", str(args.seed), "--n-water-box", str(n("water_box")),
                                 "--n-ala3-water-box", str(n("ala3_water_box"))])
        times["sample_water_boxes"] = time.time() - t
        inputs.append(boxes)
        t = time.time()
    label_xtb.main(inputs + ["-o", args.output, "--periodic"])
    times["label_xtb"] = time.time() - t
    s = summarize(args.output)
    print(f"\n[make_dataset] {args.output}: {s['frames']} frames, {s['bytes'] / 1e6:.1f} MB, "
          f"elements {' '.join(s['elements'])}, charges {s['charges']}, "
          f"max |F| {s['max_force_eV_per_A']:.1f} eV/A")
    for k, v in sorted(s["per_subset"].items()):
        print(f"  {k:16s} {v:5d} frames, {s['mean_atoms'][k]:5.1f} atoms on average")
    print("  time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + f" (total {sum(times.values()) / 60:.1f} min; steps already done are skipped)")


if __name__ == "__main__":
    main()
