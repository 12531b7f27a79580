#!/usr/bin/env python
"""A crambin-sized protein in water at GEMS scale (~24k atoms).

Crambin's sequence (TTCCPSIVARSNFNVCRLPGTPEAICATYTGCIIIPGATCPGDYAN, 46 residues) built as an
ideal alpha helix with PeptideBuilder (a size-matched stand-in, NOT the native 1CRN fold, no
disulfides), protonated with Modeller.addHydrogens (642 atoms), aligned with x and solvated
with Modeller.addSolvent in an 86 x 54 x 54 Å box. Contains S (Cys, Met-free).

    python examples/gems/crambin.py --engine both --steps 20 --model examples/models/so3krates_demo.pt
"""
import _gems
from so3krates import systems


def extra(p):
    p.add_argument("--box", type=float, nargs=3, default=[86.0, 54.0, 54.0], metavar=("X", "Y", "Z"),
                   help="orthorhombic box in Å (default 86 54 54, ~24k atoms)")


if __name__ == "__main__":
    _gems.main("crambin", __doc__, lambda a: systems.crambin(box=a.box), extra)
