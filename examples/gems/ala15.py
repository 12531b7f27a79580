#!/usr/bin/env python
"""The folded 15-residue alanine helix (SO3LR's ala15_folded.xyz) in TIP3P water (~4.6k atoms).

The xyz is read with ASE and centred in an orthorhombic box; TIP3P water from OpenMM's
tip3p.pdb is tiled into the box and waters closer than 2.4 Å to the peptide are removed.

    python examples/gems/ala15.py --engine both --steps 200 --model examples/models/so3krates_demo.pt
"""
import _gems
from so3krates import systems


def extra(p):
    p.add_argument("--padding", type=float, default=10.0, help="water padding around the helix, Å (default 10)")
    p.add_argument("--xyz", default=None, help="helix xyz (default ../shared/reference/so3lr/ala15_folded.xyz)")


if __name__ == "__main__":
    _gems.main("ala15", __doc__, lambda a: systems.ala15(padding=a.padding, xyz_path=a.xyz), extra)
