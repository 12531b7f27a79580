#!/usr/bin/env python
"""Villin headpiece in water (OpenMM's test.pdb: 582 protein atoms, 2 Cl-, 2761 TIP3P; 8,867 atoms).

The real folded protein. It contains S (Met) and Cl (the two Cl- counter-ions): a model that
does not know Cl stops with a clear error; --drop-ions removes the ions (net charge +2).
--box 6.4 re-solvates it in a 6.4 nm cube (~25k atoms).

    python examples/gems/villin.py --engine both --steps 100 --model so3lr.pt
    python examples/gems/villin.py --drop-ions --model examples/models/so3krates_demo.pt
"""
import _gems
from so3krates import systems


def extra(p):
    p.add_argument("--drop-ions", action="store_true", help="remove the 2 Cl- (models without Cl)")
    p.add_argument("--box", type=float, default=None, help="re-solvate in a cubic box of this edge (nm)")


if __name__ == "__main__":
    _gems.main("villin", __doc__, lambda a: systems.villin(box_nm=a.box, drop_ions=a.drop_ions), extra,
               element_hint=", or rerun with --drop-ions to remove the two Cl- counter-ions")
