#!/usr/bin/env python
"""Sample capped alanine peptides with OpenMM (amber14, gas phase and in TIP3P water).

Subsets (names are written to ``info['subset']``):

* ``dipeptide_gas``   Ace-Ala-Nme in vacuum
* ``ala3_gas``        Ace-Ala3-Nme in vacuum
* ``dipeptide_water`` Ace-Ala-Nme with its nearest waters, cut from a periodic TIP3P box MD
* ``ala3_water``      Ace-Ala3-Nme with its nearest waters, cut likewise

Each subset is split into independent Langevin trajectories (no constraints, flexible water,
0.5 fs step) that start from different backbone basins (C7eq, PPII, alpha-R, alpha-L, beta,
C7ax) and run at temperatures cycled through ``--temperatures`` (300-600 K by default; the
water boxes use the lower half). Frames are ``--stride`` steps apart.

Output: unlabelled extxyz frames (positions in Å) with ``info`` keys ``frame_id``, ``subset``,
``total_charge`` (e), ``temperature`` (K), ``n_waters``. Label them with ``label_xtb.py``
(energy in eV under ``energy``, forces in eV/Å under ``forces``).

Resumable: frame ids already in the output are skipped (finished trajectories are not rerun;
an interrupted one is rerun from its seed and only the missing frames are appended).

Example::

    OMP_NUM_THREADS=1 python examples/data/sample_peptides.py -o build/data/peptides.extxyz \\
        --n-dipeptide-gas 800 --n-ala3-gas 300 --n-dipeptide-water 300 --n-ala3-water 150
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _datagen as C  # noqa: E402

# (phi, psi) in degrees
BASINS = {
    "C7eq": (-80.0, 70.0),
    "PPII": (-75.0, 145.0),
    "aR": (-60.0, -45.0),
    "aL": (60.0, 45.0),
    "beta": (-135.0, 135.0),
    "C7ax": (75.0, -65.0),
}

SUBSETS = {
    # name: (sequence, solvated, (min, max) waters)
    "dipeptide_gas": ("A", False, (0, 0)),
    "ala3_gas": ("AAA", False, (0, 0)),
    "dipeptide_water": ("A", True, (4, 14)),
    "ala3_water": ("AAA", True, (2, 8)),
}


def seed_for(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode()) % (2**31 - 1)


def frame_ids(subset: str, traj: int, n: int) -> list[str]:
    return [f"{subset}/t{traj:02d}/f{k:05d}" for k in range(n)]


def split(n: int, parts: int) -> list[int]:
    parts = max(1, min(parts, n)) if n > 0 else 0
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def nearest_waters(pos_a, solute, waters, box_a, n):
    """Indices of the n waters (rows of ``waters``) closest to the solute, imaged around it."""
    centre = pos_a[solute].mean(axis=0)
    ox = pos_a[waters[:, 0]]
    shift = -box_a * np.round((ox - centre) / box_a)
    ox = ox + shift
    d = np.linalg.norm(ox[:, None, :] - pos_a[solute][None], axis=-1).min(axis=1)
    order = np.argsort(d)[:n]
    return order, shift


def run_trajectory(subset, traj, n_frames, temperature, args, done, pbar):
    from openmm import app, unit

    sequence, solvated, (wmin, wmax) = SUBSETS[subset]
    ids = frame_ids(subset, traj, n_frames)
    todo = [i for i in ids if i not in done]
    if not todo:
        return
    seed = seed_for(args.seed, subset, traj)
    rng = np.random.default_rng(seed)
    basin = list(BASINS)[traj % len(BASINS)]
    phi0, psi0 = BASINS[basin]
    n = len(sequence)
    phi = list(phi0 + rng.normal(0, 10, n))
    psi = list(psi0 + rng.normal(0, 10, n))
    top, pos = C.build_capped_peptide(sequence, phi, psi)
    ff = C.forcefield()
    if solvated:
        mod = app.Modeller(top, pos)
        with C.seeded_python_random(f"{seed}/solvent"):
            mod.addSolvent(ff, model="tip3p", padding=args.padding * unit.nanometer)
        top, pos = mod.topology, mod.positions
        box = top.getUnitCellDimensions().value_in_unit(unit.nanometer)
        cutoff = min(0.9, 0.5 * min(box) - 0.05)
        system = ff.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=cutoff * unit.nanometer,
                                 constraints=None, rigidWater=False)
    else:
        system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None)
    charges = C.residue_charges(system, top)
    residues = list(top.residues())
    solute = np.array([a.index for r in residues if r.name != "HOH" for a in r.atoms()])
    q_solute = sum(q for r, q in zip(residues, charges) if r.name != "HOH")
    waters = np.array([[a.index for a in sorted(r.atoms(), key=lambda a: a.element.symbol != "O")]
                       for r in residues if r.name == "HOH"]).reshape(-1, 3)
    symbols = np.array(C.elements_of(top))

    ctx, integ = C.equilibrated_langevin(system, pos, temperature, args.friction, args.timestep, seed,
                                         args.platform if solvated else args.gas_platform,
                                         args.equil_steps_water if solvated else args.equil_steps)
    for fid in ids:
        integ.step(args.stride)
        if fid in done:
            continue
        st = ctx.getState(getPositions=True, enforcePeriodicBox=False)
        xyz = st.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        info = {"frame_id": fid, "subset": subset, "total_charge": int(q_solute),
                "temperature": float(temperature), "n_waters": 0, "start_basin": basin}
        if solvated:
            box_a = np.diag(st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom))
            frng = np.random.default_rng(seed_for(args.seed, fid))
            nw = int(frng.integers(wmin, wmax + 1))
            sel, shift = nearest_waters(xyz, solute, waters, box_a, nw)
            parts = [xyz[solute]] + [xyz[waters[i]] + shift[i] for i in sel]
            idx = np.concatenate([solute] + [waters[i] for i in sel])
            coords = np.concatenate(parts)
            info["n_waters"] = nw
        else:
            idx = solute
            coords = xyz[solute]
        coords = coords - coords.mean(axis=0)
        C.append_frames(args.output, [C.format_frame(symbols[idx], coords, info)])
        done.add(fid)
        pbar.update(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="extxyz file to append frames to")
    p.add_argument("--n-dipeptide-gas", type=int, default=800)
    p.add_argument("--n-ala3-gas", type=int, default=300)
    p.add_argument("--n-dipeptide-water", type=int, default=300)
    p.add_argument("--n-ala3-water", type=int, default=150)
    p.add_argument("--n-traj-gas", type=int, default=6, help="trajectories per gas-phase subset")
    p.add_argument("--n-traj-water", type=int, default=2, help="trajectories per water subset")
    p.add_argument("--temperatures", type=float, nargs="+", default=[300, 400, 500, 600],
                   help="K, cycled over gas-phase trajectories")
    p.add_argument("--water-temperatures", type=float, nargs="+", default=[300, 400],
                   help="K, cycled over solvated trajectories")
    p.add_argument("--stride", type=int, default=100, help="MD steps between frames")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--equil-steps", type=int, default=2000, help="gas phase, before the first frame")
    p.add_argument("--equil-steps-water", type=int, default=2000, help="water box, before the first frame")
    p.add_argument("--padding", type=float, default=0.7, help="nm of water around the peptide")
    p.add_argument("--platform", default="CPU", help="OpenMM platform for the water boxes")
    p.add_argument("--gas-platform", default="Reference", help="OpenMM platform in vacuum")
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args(argv)

    plan = []  # (subset, traj, n, T)
    for subset, n_total in [("dipeptide_gas", args.n_dipeptide_gas), ("ala3_gas", args.n_ala3_gas),
                            ("dipeptide_water", args.n_dipeptide_water),
                            ("ala3_water", args.n_ala3_water)]:
        solvated = SUBSETS[subset][1]
        temps = args.water_temperatures if solvated else args.temperatures
        for t, n in enumerate(split(n_total, args.n_traj_water if solvated else args.n_traj_gas)):
            plan.append((subset, t, n, temps[t % len(temps)]))
    done = set(C.scan_frame_ids(args.output))
    wanted = {i for s, t, n, _ in plan for i in frame_ids(s, t, n)}
    have = len(wanted & done)
    with tqdm(total=len(wanted), initial=have, desc="sample_peptides", unit="frame") as pbar:
        for subset, traj, n, temp in plan:
            pbar.set_postfix_str(f"{subset} t{traj} {temp:.0f}K")
            run_trajectory(subset, traj, n, temp, args, done, pbar)
    print(f"[sample_peptides] {len(wanted)} frames in {args.output}")


if __name__ == "__main__":
    main()
