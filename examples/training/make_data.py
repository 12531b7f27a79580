"""Write the example training set ``molecules.extxyz`` (next to this script).

Small organic molecules from ASE's G2 collection, randomly rattled and rotated, labelled with
ASE's EMT calculator (energies eV, forces eV/Å). EMT is a toy for H/C/N/O — the point is a
dataset that anyone can regenerate offline in seconds, not chemistry. For real work, label with
DFT or GFN2-xTB (tblite) and point ``data.path`` at that file.

    python examples/training/make_data.py [--frames 400] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

MOLECULES = ["H2O", "NH3", "CH4", "CO2", "C2H6", "CH3OH", "HCOOH", "C2H4", "CH3CHO", "H2CO", "CH3CH2OH",
             "HCN", "N2H4", "CH3CN", "CH3CH2NH2", "C6H6", "CH3NO2", "H2CCO", "CH3COOH", "C5H5N"]


def make(frames: int = 400, seed: int = 0):
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    for k in range(frames):
        a = molecule(MOLECULES[k % len(MOLECULES)])
        a.rotate(float(rng.uniform(0, 360)), rng.normal(size=3), center="COM")
        a.positions += rng.normal(scale=0.08, size=a.positions.shape)
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        a.info["total_charge"] = 0.0
        out.append(a)
    return out


def main() -> None:
    import ase.io

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default=str(Path(__file__).with_name("molecules.extxyz")))
    args = p.parse_args()
    images = make(args.frames, args.seed)
    ase.io.write(args.output, images)
    print(f"wrote {len(images)} frames to {args.output}")


if __name__ == "__main__":
    main()
