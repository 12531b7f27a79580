"""Build capped poly-alanine peptides (Ace-Ala_n-Nme) with nothing but OpenMM.

Heavy atoms are placed from ideal internal coordinates (Engh & Huber bond lengths and angles,
trans peptide bonds, chosen phi/psi) with the NeRF construction, written as PDB text, read with
``openmm.app.PDBFile`` (which creates the bonds from its residue templates) and protonated with
``Modeller.addHydrogens``. Used by ``run_peptide.py`` and by ``tests/test_openmm.py``.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

# Ideal geometry (Å, degrees)
_B = {"N-CA": 1.458, "CA-C": 1.525, "C-N": 1.329, "C-O": 1.231, "CH3-C": 1.520, "N-CH3": 1.458}
_A = {"N-CA-C": 111.2, "CA-C-N": 116.2, "C-N-CA": 121.7, "N-C-O": 123.0}

CONFORMATIONS = {"helix": (-57.0, -47.0), "ppii": (-75.0, 145.0), "extended": (-150.0, 150.0),
                 "c7eq": (-83.0, 73.0)}


def _place(a, b, c, bond, angle, torsion):
    """Position of d with |cd| = bond, angle(b,c,d) = angle, dihedral(a,b,c,d) = torsion (deg)."""
    angle, torsion = math.radians(angle), math.radians(torsion)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array([-bond * math.cos(angle), bond * math.sin(angle) * math.cos(torsion),
                   bond * math.sin(angle) * math.sin(torsion)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def _cbeta(n, ca, c):
    """Ideal C-beta of an L-amino acid from N, CA, C."""
    b = ca - n
    cc = c - ca
    a = np.cross(b, cc)
    return -0.58273431 * a + 0.56802827 * b - 0.54067466 * cc + ca


def heavy_atom_pdb(n_ala: int = 3, phi: float = -75.0, psi: float = 145.0) -> str:
    """PDB text with the heavy atoms of Ace-(Ala)n-Nme."""
    chain = []  # backbone chain in bonding order: (resindex, name, element)
    chain.append((0, "CH3", "C"))
    chain.append((0, "C", "C"))
    for k in range(1, n_ala + 1):
        chain += [(k, "N", "N"), (k, "CA", "C"), (k, "C", "C")]
    chain += [(n_ala + 1, "N", "N"), (n_ala + 1, "C", "C")]  # NME methyl is "C" in PDB v3 names

    xyz = [np.array([0.0, 0.0, 0.0]), np.array([_B["CH3-C"], 0.0, 0.0])]
    xyz.append(_place(np.array([0.0, 1.0, 0.0]), xyz[0], xyz[1], _B["C-N"], _A["CA-C-N"], 180.0))
    for i in range(3, len(chain)):
        prev_name, name = chain[i - 1][1], chain[i][1]
        res = chain[i][0]
        if name == "CA":
            bond, angle, tors = _B["N-CA"], _A["C-N-CA"], 180.0  # omega
        elif name == "C" and res <= n_ala:
            bond, angle, tors = _B["CA-C"], _A["N-CA-C"], phi
        elif name == "N":
            bond, angle, tors = _B["C-N"], _A["CA-C-N"], psi
        else:  # NME methyl after N
            bond, angle, tors = _B["N-CH3"], _A["C-N-CA"], 180.0
        assert prev_name in ("N", "CA", "C")
        xyz.append(_place(xyz[i - 3], xyz[i - 2], xyz[i - 1], bond, angle, tors))

    atoms = []  # (resindex, name, element, xyz)
    for (res, name, el), x in zip(chain, xyz):
        atoms.append((res, name, el, x))
    # carbonyl oxygens: O_i cis to CA_{i+1} (dihedral CA_{i+1}-N_{i+1}-C_i-O_i = 0)
    index = {(r, nm): i for i, (r, nm, _) in enumerate(chain)}
    for res in range(0, n_ala + 1):
        c = xyz[index[(res, "C")]]
        nn = xyz[index[(res + 1, "N")]]
        nxt = xyz[index[(res + 1, "CA")]] if res + 1 <= n_ala else xyz[index[(res + 1, "C")]]
        atoms.append((res, "O", "O", _place(nxt, nn, c, _B["C-O"], _A["N-C-O"], 0.0)))
    for res in range(1, n_ala + 1):
        cb = _cbeta(xyz[index[(res, "N")]], xyz[index[(res, "CA")]], xyz[index[(res, "C")]])
        atoms.append((res, "CB", "C", cb))

    resnames = ["ACE"] + ["ALA"] * n_ala + ["NME"]
    order = {"N": 0, "CA": 1, "CH3": 1, "C": 2, "O": 3, "CB": 4}
    atoms.sort(key=lambda a: (a[0], order[a[1]] if not (resnames[a[0]] == "NME" and a[1] == "C") else 5))
    lines = []
    for serial, (res, name, el, x) in enumerate(atoms, start=1):
        pdbname = f" {name:<3s}" if len(name) < 4 else name
        lines.append(f"ATOM  {serial:5d} {pdbname:4s} {resnames[res]:3s} A{res + 1:4d}    "
                     f"{x[0]:8.3f}{x[1]:8.3f}{x[2]:8.3f}  1.00  0.00          {el:>2s}")
    lines += ["TER", "END"]
    return "\n".join(lines) + "\n"


def build_peptide(n_ala: int = 3, conformation: str = "ppii", forcefield: app.ForceField | None = None,
                  seed: int = 0):
    """Return (topology, positions) of Ace-(Ala)n-Nme with hydrogens (amber14 names).

    ``Modeller.addHydrogens`` starts some hydrogens at random positions (Python's ``random``);
    ``seed`` makes the result reproducible (the global random state is restored afterwards)."""
    phi, psi = CONFORMATIONS[conformation]
    pdb = app.PDBFile(io.StringIO(heavy_atom_pdb(n_ala, phi, psi)))
    if forcefield is None:
        forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    modeller = app.Modeller(pdb.topology, pdb.positions)
    saved = random.getstate()
    random.seed(seed)
    try:
        modeller.addHydrogens(forcefield, platform=openmm.Platform.getPlatformByName("Reference"))
    finally:
        random.setstate(saved)
    return modeller.topology, modeller.positions


def solvate(topology, positions, forcefield: app.ForceField | None = None, padding_nm: float = 0.8,
            box_nm: float | None = None):
    """Add TIP3P water (and nothing else: Ace-Ala_n-Nme is neutral) with Modeller.addSolvent."""
    if forcefield is None:
        forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    modeller = app.Modeller(topology, positions)
    if box_nm is not None:
        modeller.addSolvent(forcefield, model="tip3p", boxSize=unit.Quantity((box_nm,) * 3, unit.nanometer))
    else:
        modeller.addSolvent(forcefield, model="tip3p", padding=padding_nm * unit.nanometer)
    return modeller.topology, modeller.positions
