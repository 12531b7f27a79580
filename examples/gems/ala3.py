#!/usr/bin/env python
"""Ac-Ala3-NHMe in TIP3P water (~2.6k atoms): OpenMM and/or LAMMPS NVT with a so3krates model.

The peptide is built from ideal internal coordinates (PPII backbone), protonated with
Modeller.addHydrogens (amber14 templates, ACE/ALA/NME) and solvated with Modeller.addSolvent.

    python examples/gems/ala3.py --engine both --steps 200 --model examples/models/so3krates_demo.pt
    python examples/gems/ala3.py --padding 0.5 --steps 5        # small box (CI-sized)
"""
import _gems
from so3krates import systems


def extra(p):
    p.add_argument("--padding", type=float, default=1.5, help="water padding around the peptide, nm (default 1.5)")


if __name__ == "__main__":
    _gems.main("ala3", __doc__, lambda a: systems.ala3(padding_nm=a.padding), extra)
