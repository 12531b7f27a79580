"""Build capped poly-alanine peptides (Ace-Ala_n-Nme) with nothing but OpenMM.

Heavy atoms are placed from ideal internal coordinates (Engh & Huber bond lengths and angles,
trans peptide bonds, chosen phi/psi) with the NeRF construction, written as PDB text, read with
``openmm.app.PDBFile`` (which creates the bonds from its residue templates) and protonated with
``Modeller.addHydrogens`` — the builders of ``so3krates.systems`` (``peptide_heavy_pdb``,
``protonate``), which the GEMS examples and the benchmarks use too. Used by ``run_peptide.py`` and
by ``tests/test_openmm.py``.
"""

from __future__ import annotations

import openmm.app as app
import openmm.unit as unit

from so3krates import systems

CONFORMATIONS = {"helix": (-57.0, -47.0), "ppii": (-75.0, 145.0), "extended": (-150.0, 150.0),
                 "c7eq": (-83.0, 73.0)}

heavy_atom_pdb = systems.peptide_heavy_pdb  # PDB text with the heavy atoms of Ace-(Ala)n-Nme


def build_peptide(n_ala: int = 3, conformation: str = "ppii", forcefield: app.ForceField | None = None,
                  seed: int = 0):
    """Return (topology, positions) of Ace-(Ala)n-Nme with hydrogens (amber14 names).

    ``Modeller.addHydrogens`` starts some hydrogens at random positions (Python's ``random``);
    ``seed`` makes the result reproducible (the global random state is restored afterwards)."""
    phi, psi = CONFORMATIONS[conformation]
    modeller = systems.protonate(heavy_atom_pdb(n_ala, phi, psi), seed, forcefield)
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
