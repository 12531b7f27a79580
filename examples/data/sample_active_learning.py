#!/usr/bin/env python
"""Active-learning frames: whole-box MD of the solvated Ace-Ala3-Nme box driven by a so3krates model.

A model trained on clusters and a few classical boxes can slide into configurations it gets wrong
(too low in energy) when it drives the whole box; this samples exactly those configurations so that
GFN2-xTB labels of them (``label_xtb.py --periodic``) can be added to the training data.

The system is ``examples/openmm``'s: Ace-Ala3-Nme (PPII) in a ``--box`` nm cube of TIP3P water,
everything by the model (openmm-ml ``MLPotential('so3krates')``), LangevinMiddleIntegrator at
``--temperature`` K, 0.5 fs, ``--equil-steps`` at friction 10/ps, then 1/ps with a periodic frame
(positions Å, cell Å, pbc T T T) every ``--stride`` steps. ``info``: ``frame_id``
(``ala3_box_al/s<seed>/f<k>``), ``subset`` (``ala3_water_box_al``), ``total_charge``,
``temperature`` (instantaneous, K), ``n_waters``, ``box_nm``.

The committed ``water_boxes_al.extxyz`` is seeds 1 and 2, 20 frames each, driven by a model trained
on ``so3krates_demo.extxyz`` + ``water_boxes.extxyz`` (see docs/training.md)::

    for s in 1 2; do OMP_NUM_THREADS=1 python examples/data/sample_active_learning.py MODEL.pt \\
        -o build/data/al_raw_$s.extxyz --seed $s --frames 20; done
    python examples/data/label_xtb.py build/data/al_raw_*.extxyz -o examples/data/water_boxes_al.extxyz --periodic
"""

from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "openmm"))
import _datagen as C  # noqa: E402

BOLTZMANN_KJ_MOL_K = 0.0083144626


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="exported so3krates model (.pt)")
    p.add_argument("-o", "--output", required=True, help="extxyz file to append frames to")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--stride", type=int, default=100, help="MD steps between frames (0.5 fs each)")
    p.add_argument("--equil-steps", type=int, default=300, help="steps at friction 10/ps first")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--box", type=float, default=1.6, help="cubic box edge, nm")
    args = p.parse_args(argv)

    import so3krates.openmm  # noqa: F401  (torch before OpenMM's plugins)
    from openmm import app, unit
    from openmmml import MLPotential
    from peptide import build_peptide, solvate

    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    top, pos = build_peptide(3, "ppii", ff)
    top, pos = solvate(top, pos, ff, box_nm=args.box)
    system = MLPotential("so3krates", modelPath=args.model).createSystem(top)
    ctx, integ = C.equilibrated_langevin(system, pos, args.temperature, 10.0, 0.5, args.seed, "CPU",
                                         args.equil_steps, min_iterations=0)
    integ.setFriction(1 / unit.picosecond)
    symbols = [a.element.symbol for a in top.atoms()]
    n_waters = sum(1 for r in top.residues() if r.name == "HOH")
    done = set(C.scan_frame_ids(args.output))
    for k in tqdm(range(args.frames), desc="sample_active_learning", unit="frame"):
        integ.step(args.stride)
        fid = f"ala3_box_al/s{args.seed}/f{k:04d}"
        if fid in done:
            continue
        kinetic = ctx.getState(getEnergy=True).getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        temp = 2 * kinetic / ((3 * len(symbols) - 3) * BOLTZMANN_KJ_MOL_K)
        info = {"frame_id": fid, "subset": "ala3_water_box_al", "total_charge": 0, "temperature": round(temp, 1),
                "n_waters": n_waters, "box_nm": args.box}
        C.append_frames(args.output, [C.periodic_frame(ctx, symbols, info)])


if __name__ == "__main__":
    main()
