#!/usr/bin/env python
"""Sample GEMS-style fragments: capped amino acids and top-down cut-outs of villin in water.

Subsets (``info['subset']``):

* ``capped_aa``      Ace-X-Nme for each residue X in ``--residues`` (default covers all 20
                     amino acids but Ala, which ``sample_peptides.py`` covers; Cys and Met
                     bring S). Vacuum Langevin MD (amber14, no constraints, 0.5 fs) at
                     temperatures drawn from ``--temperatures`` (300-600 K). Asp/Glu are -1,
                     Lys/Arg +1 (amber14 protonation at pH 7; His is neutral).
* ``villin_cutout``  top-down fragments of the villin headpiece in TIP3P water
                     (``openmm/app/data/test.pdb``, 582 protein atoms, 2761 waters): short MD of
                     the whole periodic box (flexible water, 0.5 fs), then around a random
                     residue, whole residues and waters within a random radius (2.5-4 Å), at
                     most ``--max-atoms`` atoms; every cut covalent bond is capped with a hydrogen
                     placed along the bond (C-H 1.09, N-H 1.01, O-H 0.96, S-H 1.34 Å). Only
                     fragments whose charged residues all have the same sign and whose net
                     charge is at most ``--max-abs-charge`` (1) in magnitude are kept
                     (opposite-charge pairs converge badly in vacuum GFN2-xTB, multiply charged
                     ions are unsafe there); chloride ions are never included.

Output: unlabelled extxyz frames, positions in Å, ``info`` keys ``frame_id``, ``subset``,
``total_charge`` (e, from the amber14 residue charges), ``temperature`` (K) and subset details.
Label them with ``label_xtb.py`` (energy eV under ``energy``, forces eV/Å under ``forces``).

Resumable: frame ids already in the output are skipped.

Example::

    OMP_NUM_THREADS=1 python examples/data/sample_fragments.py -o build/data/fragments.extxyz \\
        --n-per-residue 40 --n-snapshots 12 --n-per-snapshot 40
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

ONE_TO_THREE = {"G": "GLY", "A": "ALA", "S": "SER", "C": "CYS", "M": "MET", "T": "THR",
                "N": "ASN", "Q": "GLN", "V": "VAL", "L": "LEU", "I": "ILE", "F": "PHE",
                "Y": "TYR", "W": "TRP", "H": "HIS", "P": "PRO", "D": "ASP", "E": "GLU",
                "K": "LYS", "R": "ARG"}
BASINS = [(-80.0, 70.0), (-75.0, 145.0), (-60.0, -45.0), (60.0, 45.0), (-135.0, 135.0)]
CAP_LENGTH = {"C": 1.09, "N": 1.01, "O": 0.96, "S": 1.34}


def seed_for(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode()) % (2**31 - 1)


def split(n: int, parts: int) -> list[int]:
    parts = max(1, min(parts, n)) if n > 0 else 0
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# ------------------------------------------------------------------------------------------
# capped amino acids
# ------------------------------------------------------------------------------------------

def capped_ids(res3: str, traj: int, n: int) -> list[str]:
    return [f"capped_aa/{res3}/t{traj:02d}/f{k:05d}" for k in range(n)]


def run_capped(letter, traj, n_frames, args, done, pbar):
    from openmm import app, unit

    res3 = ONE_TO_THREE[letter]
    ids = capped_ids(res3, traj, n_frames)
    if all(i in done for i in ids):
        return
    seed = seed_for(args.seed, "capped", res3, traj)
    rng = np.random.default_rng(seed)
    temperature = float(rng.choice(args.temperatures))
    phi, psi = BASINS[(traj + seed) % len(BASINS)]
    if letter == "P":
        phi = -65.0
    phi += rng.normal(0, 10)
    psi += rng.normal(0, 10)
    top, pos = C.build_capped_peptide(letter, [phi], [psi])
    system = C.forcefield().createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None)
    charge = sum(C.residue_charges(system, top))
    symbols = C.elements_of(top)
    ctx, integ = C.equilibrated_langevin(system, pos, temperature, 1.0, args.timestep, seed, args.gas_platform,
                                         args.equil_steps)
    for fid in ids:
        integ.step(args.stride)
        if fid in done:
            continue
        xyz = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        info = {"frame_id": fid, "subset": "capped_aa", "total_charge": int(charge),
                "temperature": temperature, "residue": res3}
        C.append_frames(args.output, [C.format_frame(symbols, xyz - xyz.mean(0), info)])
        done.add(fid)
        pbar.update(1)


# ------------------------------------------------------------------------------------------
# villin cut-outs
# ------------------------------------------------------------------------------------------

def villin_pdb_path() -> str:
    from openmm import app
    return os.path.join(os.path.dirname(app.__file__), "data", "test.pdb")


def cutout_ids(snap: int, n: int) -> list[str]:
    return [f"villin_cutout/s{snap:03d}/c{k:03d}" for k in range(n)]


class Cutter:
    """Cuts capped fragments out of one protein-in-water snapshot (positions in Å)."""

    def __init__(self, topology, charges, max_abs_charge=1):
        self.max_abs_charge = max_abs_charge
        self.residues = list(topology.residues())
        self.charges = charges
        self.protein = [i for i, r in enumerate(self.residues) if r.name not in ("HOH", "Cl", "CL", "Na", "NA")]
        self.waters = [i for i, r in enumerate(self.residues) if r.name == "HOH"]
        self.atoms = [np.array([a.index for a in r.atoms()]) for r in self.residues]
        self.symbols = np.array([a.element.symbol for a in topology.atoms()])
        self.numbers = np.array([a.element.atomic_number for a in topology.atoms()])
        self.res_of_atom = np.empty(topology.getNumAtoms(), dtype=int)
        for i, r in enumerate(self.residues):
            self.res_of_atom[self.atoms[i]] = i
        self.bonds = [(b[0].index, b[1].index) for b in topology.bonds()
                      if b[0].residue.index != b[1].residue.index]  # inter-residue bonds

    def cut(self, xyz, box, rng, max_atoms):
        """One fragment: (symbols, positions Å, charge, info) or None if this draw is unusable."""
        centre = int(rng.choice(self.protein))
        radius = float(rng.uniform(2.5, 4.0))
        limit = int(rng.integers(max(25, max_atoms // 2), max_atoms + 1))
        c_xyz = xyz[self.atoms[centre]]
        ref = c_xyz.mean(0)
        cands = []
        for i in self.protein + self.waters:
            if i == centre:
                continue
            p = xyz[self.atoms[i]]
            shift = -box * np.round((p[0] - ref) / box) if i in self._water_set else np.zeros(3)
            d = np.linalg.norm((p + shift)[:, None] - c_xyz[None], axis=-1).min()
            if d < radius:
                cands.append((d, i, shift))
        cands.sort(key=lambda t: t[0])
        chosen = {centre: np.zeros(3)}
        signs = {np.sign(self.charges[centre])} - {0}
        q = self.charges[centre]
        if self._size(chosen) > limit or abs(q) > self.max_abs_charge:
            return None
        for d, i, shift in cands:
            s = np.sign(self.charges[i])
            if s != 0 and ((signs and s not in signs) or abs(q + self.charges[i]) > self.max_abs_charge):
                continue
            trial = dict(chosen)
            trial[i] = shift
            if self._size(trial) > limit:
                continue
            chosen = trial
            q += self.charges[i]
            if s != 0:
                signs.add(s)
        idx = np.concatenate([self.atoms[i] for i in chosen])
        pos = np.concatenate([xyz[self.atoms[i]] + chosen[i] for i in chosen])
        sym = list(self.symbols[idx])
        caps = []
        inside = set(idx.tolist())
        for a, b in self.bonds:
            for x, y in ((a, b), (b, a)):
                if x in inside and y not in inside:
                    v = xyz[y] - xyz[x]
                    caps.append(xyz[x] + CAP_LENGTH[self.symbols[x]] * v / np.linalg.norm(v))
        if caps:
            pos = np.concatenate([pos, np.array(caps)])
            sym += ["H"] * len(caps)
        charge = int(sum(self.charges[i] for i in chosen))
        numbers = np.concatenate([self.numbers[idx], np.ones(len(caps), dtype=int)])
        if C.check_fragment(numbers, pos, charge) is not None:
            return None
        n_w = sum(1 for i in chosen if i in self._water_set)
        r = self.residues[centre]
        info = {"total_charge": charge, "center": f"{r.name}{r.id}", "n_residues": len(chosen) - n_w,
                "n_waters": n_w, "n_caps": len(caps)}
        return sym, pos - pos.mean(0), charge, info

    @property
    def _water_set(self):
        if not hasattr(self, "_ws"):
            self._ws = set(self.waters)
        return self._ws

    def _size(self, chosen):
        inside = set(np.concatenate([self.atoms[i] for i in chosen]).tolist())
        n_caps = sum((a in inside) != (b in inside) for a, b in self.bonds)
        return len(inside) + n_caps


def run_villin(args, done, pbar):
    from openmm import app, unit

    all_ids = [cutout_ids(s, args.n_per_snapshot) for s in range(args.n_snapshots)]
    if all(i in done for ids in all_ids for i in ids):
        return
    pdb = app.PDBFile(villin_pdb_path())
    top = pdb.topology
    system = C.forcefield().createSystem(top, nonbondedMethod=app.PME,
                                         nonbondedCutoff=0.9 * unit.nanometer,
                                         constraints=None, rigidWater=False)
    cutter = Cutter(top, C.residue_charges(system, top), args.max_abs_charge)
    seed = seed_for(args.seed, "villin")
    ctx, integ = C.equilibrated_langevin(system, pdb.positions, args.villin_temperature, 1.0, args.timestep, seed,
                                         args.platform, args.villin_equil_steps, args.villin_min_iter)
    for snap, ids in enumerate(all_ids):
        if all(i in done for ids2 in all_ids[snap:] for i in ids2):
            return
        integ.step(args.villin_stride)
        st = ctx.getState(getPositions=True, enforcePeriodicBox=False)
        xyz = st.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        box = np.diag(st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom))
        for fid in ids:
            if fid in done:
                continue
            rng = np.random.default_rng(seed_for(args.seed, fid))
            out = None
            for _ in range(50):
                out = cutter.cut(xyz, box, rng, args.max_atoms)
                if out is not None:
                    break
            if out is None:
                continue
            sym, pos, charge, extra = out
            info = {"frame_id": fid, "subset": "villin_cutout", "temperature": args.villin_temperature}
            info.update(extra)
            C.append_frames(args.output, [C.format_frame(sym, pos, info)])
            done.add(fid)
            pbar.update(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="extxyz file to append frames to")
    p.add_argument("--residues", default="GSCMTNQVLIFYWHPDEKR",
                   help="one-letter codes of the capped amino acids")
    p.add_argument("--n-per-residue", type=int, default=40, help="capped_aa frames per residue")
    p.add_argument("--n-traj", type=int, default=2, help="trajectories per capped residue")
    p.add_argument("--temperatures", type=float, nargs="+", default=[300, 400, 500, 600], help="K")
    p.add_argument("--n-snapshots", type=int, default=12, help="villin MD snapshots")
    p.add_argument("--n-per-snapshot", type=int, default=40, help="cut-outs per villin snapshot")
    p.add_argument("--max-atoms", type=int, default=60, help="largest cut-out (atoms incl. caps)")
    p.add_argument("--max-abs-charge", type=int, default=1,
                   help="largest |net charge| of a cut-out (multiply charged fragments are unsafe "
                        "in vacuum GFN2-xTB)")
    p.add_argument("--villin-temperature", type=float, default=350.0, help="K")
    p.add_argument("--villin-stride", type=int, default=200, help="MD steps between snapshots")
    p.add_argument("--villin-equil-steps", type=int, default=400)
    p.add_argument("--villin-min-iter", type=int, default=100, help="energy minimisation before MD")
    p.add_argument("--stride", type=int, default=100, help="MD steps between capped_aa frames")
    p.add_argument("--equil-steps", type=int, default=2000)
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--platform", default="CPU", help="OpenMM platform for the villin box")
    p.add_argument("--gas-platform", default="Reference", help="OpenMM platform in vacuum")
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args(argv)
    unknown = set(args.residues) - set(ONE_TO_THREE)
    if unknown:
        p.error(f"unknown residue letters {sorted(unknown)}")

    plan = [(r, t, n) for r in args.residues for t, n in enumerate(split(args.n_per_residue, args.n_traj))]
    wanted = {i for r, t, n in plan for i in capped_ids(ONE_TO_THREE[r], t, n)}
    wanted |= {i for s in range(args.n_snapshots) for i in cutout_ids(s, args.n_per_snapshot)}
    done = set(C.scan_frame_ids(args.output))
    with tqdm(total=len(wanted), initial=len(wanted & done), desc="sample_fragments", unit="frame") as pbar:
        for r, t, n in plan:
            pbar.set_postfix_str(f"capped {ONE_TO_THREE[r]} t{t}")
            run_capped(r, t, n, args, done, pbar)
        if args.n_snapshots and args.n_per_snapshot:
            pbar.set_postfix_str("villin")
            run_villin(args, done, pbar)
    print(f"[sample_fragments] {len(wanted & done)} of {len(wanted)} frames in {args.output}")


if __name__ == "__main__":
    main()
