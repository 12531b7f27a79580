#!/usr/bin/env python
"""Sample periodic boxes with OpenMM (amber14, flexible TIP3P): bulk water and a solvated peptide.

Subsets (names are written to ``info['subset']``):

* ``water_box``       pure water in small cubic boxes (edges ``--water-edges``, nm), the bulk
                      liquid that the cluster subsets of sample_peptides/sample_fragments lack;
* ``ala3_water_box``  Ace-Ala3-Nme in a ``--peptide-edge`` nm cube of water (~300 atoms): the
                      whole solvated peptide as the main job and examples/openmm run it.

Frames are **periodic**: they keep the box (``Lattice``, pbc T T T) and are labelled with
periodic GFN2-xTB (``label_xtb.py --periodic``). Each subset is split into independent Langevin
trajectories (no constraints, flexible water, 0.5 fs step, PME) at temperatures cycled through
``--temperatures``; frames are ``--stride`` steps apart after ``--equil-steps``.

Output: unlabelled extxyz frames (positions in Å, cell in Å) with ``info`` keys ``frame_id``,
``subset``, ``total_charge`` (e), ``temperature`` (K), ``n_waters``, ``box_nm``.

Resumable: frame ids already in the output are skipped.

Example::

    OMP_NUM_THREADS=1 python examples/data/sample_water_boxes.py -o build/data/boxes.extxyz \\
        --n-water-box 60 --n-ala3-water-box 40
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _datagen as C  # noqa: E402
from sample_peptides import BASINS, frame_ids, seed_for, split  # noqa: E402


def build_box(subset: str, edge_nm: float, seed: int, rng):
    """(topology, positions) of the subset's system in a cubic box of ``edge_nm``."""
    from openmm import Vec3, app, unit

    ff = C.forcefield()
    if subset == "water_box":
        mod = app.Modeller(app.Topology(), [])
    else:
        basin = list(BASINS)[seed % len(BASINS)]
        phi0, psi0 = BASINS[basin]
        top, pos = C.build_capped_peptide("AAA", list(phi0 + rng.normal(0, 10, 3)),
                                          list(psi0 + rng.normal(0, 10, 3)))
        mod = app.Modeller(top, pos)
    with C.seeded_python_random(f"{seed}/solvent"):
        mod.addSolvent(ff, model="tip3p", boxSize=Vec3(edge_nm, edge_nm, edge_nm) * unit.nanometer)
    return ff, mod.topology, mod.positions


def run_trajectory(subset, traj, n_frames, temperature, edge_nm, args, done, pbar):
    from openmm import app, unit

    ids = frame_ids(subset, traj, n_frames)
    if all(i in done for i in ids):
        return
    seed = seed_for(args.seed, subset, traj)
    rng = np.random.default_rng(seed)
    ff, top, pos = build_box(subset, edge_nm, seed, rng)
    cutoff = min(0.9, 0.5 * edge_nm - 0.05)
    system = ff.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=cutoff * unit.nanometer,
                             constraints=None, rigidWater=False)
    charge = int(round(sum(q for q in C.residue_charges(system, top))))
    n_waters = sum(1 for r in top.residues() if r.name == "HOH")
    symbols = np.array(C.elements_of(top))
    ctx, integ = C.equilibrated_langevin(system, pos, temperature, args.friction, args.timestep, seed, args.platform,
                                         args.equil_steps)
    for fid in ids:
        integ.step(args.stride)
        if fid in done:
            continue
        info = {"frame_id": fid, "subset": subset, "total_charge": charge, "temperature": float(temperature),
                "n_waters": n_waters, "box_nm": float(edge_nm)}
        C.append_frames(args.output, [C.periodic_frame(ctx, symbols, info)])
        done.add(fid)
        pbar.update(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="extxyz file to append frames to")
    p.add_argument("--n-water-box", type=int, default=60)
    p.add_argument("--n-ala3-water-box", type=int, default=40)
    p.add_argument("--water-edges", type=float, nargs="+", default=[1.0, 1.1, 1.2],
                   help="nm, cycled over the water_box trajectories (one trajectory per edge)")
    p.add_argument("--peptide-edge", type=float, default=1.6, help="nm, the ala3_water_box cube")
    p.add_argument("--n-traj-peptide", type=int, default=2, help="ala3_water_box trajectories")
    p.add_argument("--temperatures", type=float, nargs="+", default=[300, 375, 450],
                   help="K, cycled over the trajectories of each subset")
    p.add_argument("--stride", type=int, default=100, help="MD steps between frames")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--equil-steps", type=int, default=2000, help="before the first frame")
    p.add_argument("--platform", default="CPU", help="OpenMM platform")
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args(argv)

    plan = []  # (subset, traj, n, T, edge)
    for t, n in enumerate(split(args.n_water_box, len(args.water_edges))):
        plan.append(("water_box", t, n, args.temperatures[t % len(args.temperatures)], args.water_edges[t]))
    for t, n in enumerate(split(args.n_ala3_water_box, args.n_traj_peptide)):
        plan.append(("ala3_water_box", t, n, args.temperatures[t % len(args.temperatures)], args.peptide_edge))
    done = set(C.scan_frame_ids(args.output))
    wanted = {i for s, t, n, _, _ in plan for i in frame_ids(s, t, n)}
    with tqdm(total=len(wanted), initial=len(wanted & done), desc="sample_water_boxes", unit="frame") as pbar:
        for subset, traj, n, temp, edge in plan:
            pbar.set_postfix_str(f"{subset} t{traj} {temp:.0f}K {edge:.2f}nm")
            run_trajectory(subset, traj, n, temp, edge, args, done, pbar)
    print(f"[sample_water_boxes] {len(wanted)} frames in {args.output}")


if __name__ == "__main__":
    main()
