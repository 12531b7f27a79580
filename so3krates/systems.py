"""Benchmark and example systems: water boxes, solvated peptides, villin, a crambin stand-in.

Shared by ``examples/gems/*.py``, ``examples/lammps/build.py`` and every benchmark in
``benchmarks/`` (import it as ``from so3krates import systems``). Built offline from structures that
ship with OpenMM (or the SO3LR reference folder):

==================  ===============================================================  ===========
builder             what                                                              atoms
==================  ===============================================================  ===========
``water_box``       TIP3P water box of any size (tiles ``openmm/app/data/tip3p.pdb``)  any
``solvent_box``     cubic TIP3P box from ``Modeller.addSolvent`` (edge in nm)          any
``water_lattice``   3 n³ atoms: waters on a cubic lattice, random orientations (numpy  3 n³
                    only; no OpenMM needed)
``ala3``            Ac-Ala3-NHMe (internal coordinates, PPII) + ``Modeller.addSolvent``  ~2.6k
``ala15``           15-residue alanine helix (``ala15_folded.xyz``) + tiled TIP3P      ~4.6k
``villin``          villin headpiece in water, ``openmm/app/data/test.pdb`` (2 Cl-)   8,867
``crambin``         crambin sequence built as an alpha helix (PeptideBuilder) + water   ~24k
==================  ===============================================================  ===========

Each builder but ``water_lattice`` returns a :class:`MolSystem` (OpenMM topology, positions in Å,
orthorhombic cell in Å, element symbols, net charge). Writers: :func:`write_lammps_data`
(``atom_style atomic``), :func:`write_pdb`, :func:`save_arrays` (npz that needs numpy only to read
back, :func:`load_arrays`). Units: Å here; the OpenMM writers convert to nm.

OpenMM (``pip install so3krates[openmm]``), scipy and, for ``crambin``, PeptideBuilder
(``so3krates[data]``) are imported when a builder needs them, never at import time.
"""

from __future__ import annotations

import io
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

def _so3lr_dir() -> Path:
    """The SO3LR reference folder: $SO3KRATES_SO3LR_DIR, else ../shared/reference/so3lr next to
    the repository (a source checkout)."""
    env = os.environ.get("SO3KRATES_SO3LR_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "reference" / "so3lr"


SO3LR_DIR = _so3lr_dir()
CRAMBIN_SEQUENCE = "TTCCPSIVARSNFNVCRLPGTPEAICATYTGCIIIPGATCPGDYAN"
WATER_A3 = 29.91  # Å^3 per TIP3P water at 1 g/cm^3 (18.015 g/mol)

MASSES = {"H": 1.008, "C": 12.011, "N": 14.007, "O": 15.999, "F": 18.998, "P": 30.974,
          "S": 32.06, "Cl": 35.45, "Na": 22.990, "K": 39.098}


@dataclass
class MolSystem:
    name: str
    topology: "object"            # openmm.app.Topology (periodic box set)
    positions: np.ndarray         # [N,3] Å
    cell: np.ndarray              # [3,3] Å, rows a, b, c (orthorhombic)
    description: str = ""
    charge: float = 0.0           # net charge (e) of the whole system

    @property
    def n_atoms(self) -> int:
        return len(self.positions)

    @property
    def symbols(self) -> List[str]:
        return [a.element.symbol for a in self.topology.atoms()]

    @property
    def atomic_numbers(self) -> List[int]:
        return [a.element.atomic_number for a in self.topology.atoms()]

    def elements(self) -> List[str]:
        """Distinct element symbols, in order of atomic number (the LAMMPS type order)."""
        import openmm.app as app
        zs = sorted(set(self.atomic_numbers))
        return [app.Element.getByAtomicNumber(z).symbol for z in zs]


# ----------------------------------------------------------------------------- helpers
def _openmm():
    import openmm
    import openmm.app as app
    import openmm.unit as unit
    return openmm, app, unit


def _forcefield():
    _, app, _ = _openmm()
    return app.ForceField("amber14-all.xml", "amber14/tip3p.xml")


def _from_modeller(name, modeller, description="") -> MolSystem:
    openmm, app, unit = _openmm()
    pos = np.array(modeller.positions.value_in_unit(unit.angstrom))
    box = modeller.topology.getPeriodicBoxVectors()
    cell = np.array([[v.value_in_unit(unit.angstrom) for v in (vec[0], vec[1], vec[2])] for vec in box])
    pos = wrap(pos, cell)
    return MolSystem(name, modeller.topology, pos, cell, description)


def wrap(pos: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Wrap positions into an orthorhombic cell [0, L)."""
    lengths = np.diag(cell)
    return pos - np.floor(pos / lengths) * lengths


def tip3p_template():
    """(O,H,H positions [895,3,3] Å, box edge Å) of OpenMM's equilibrated TIP3P box."""
    openmm, app, unit = _openmm()
    path = os.path.join(os.path.dirname(app.__file__), "data", "tip3p.pdb")
    pdb = app.PDBFile(path)
    xyz = np.array(pdb.positions.value_in_unit(unit.angstrom)).reshape(-1, 3, 3)
    box = pdb.topology.getPeriodicBoxVectors()[0][0].value_in_unit(unit.angstrom)
    # make every molecule whole and put its oxygen inside the box
    xyz[:, 1:] -= np.round((xyz[:, 1:] - xyz[:, :1]) / box) * box
    xyz -= (np.floor(xyz[:, :1] / box) * box)
    return xyz, float(box)


def tile_water(lengths: Sequence[float], solute: Optional[np.ndarray] = None, min_dist: float = 2.4,
               water_min_dist: float = 2.3) -> np.ndarray:
    """Waters [M,3,3] (O,H,H, Å) filling an orthorhombic box by tiling tip3p.pdb.

    Waters whose atoms come closer than ``min_dist`` to a solute atom are removed, and at the
    cut faces (periodic images) waters with O–O closer than ``water_min_dist`` are thinned.
    """
    from scipy.spatial import cKDTree
    tmpl, b = tip3p_template()
    lengths = np.asarray(lengths, dtype=float)
    reps = np.ceil(lengths / b).astype(int)
    shifts = np.stack(np.meshgrid(*[np.arange(r) for r in reps], indexing="ij"), -1).reshape(-1, 3) * b
    waters = (tmpl[None, :, :, :] + shifts[:, None, None, :]).reshape(-1, 3, 3)
    waters = waters[np.all(waters[:, 0] < lengths, axis=1)]
    # thin overlaps across the periodic cut faces
    ox = wrap(waters[:, 0], np.diag(lengths))
    tree = cKDTree(ox, boxsize=lengths)
    drop = set()
    for i, j in sorted(tree.query_pairs(water_min_dist)):
        if i not in drop and j not in drop:
            drop.add(j)
    keep = np.array([k for k in range(len(waters)) if k not in drop], dtype=int)
    waters = waters[keep]
    if solute is not None and len(solute):
        st = cKDTree(wrap(solute, np.diag(lengths)), boxsize=lengths)
        flat = wrap(waters.reshape(-1, 3), np.diag(lengths))
        d, _ = st.query(flat, k=1)
        bad = (d.reshape(-1, 3) < min_dist).any(axis=1)
        waters = waters[~bad]
    return waters


def _add_waters(topology, positions_A: List[np.ndarray], waters: np.ndarray):
    _, app, _ = _openmm()
    chain = topology.addChain()
    O, H = app.element.oxygen, app.element.hydrogen
    for w in waters:
        res = topology.addResidue("HOH", chain)
        ao = topology.addAtom("O", O, res)
        a1 = topology.addAtom("H1", H, res)
        a2 = topology.addAtom("H2", H, res)
        topology.addBond(ao, a1)
        topology.addBond(ao, a2)
        positions_A.extend(list(w))


def _set_box(topology, lengths):
    openmm, app, unit = _openmm()
    lx, ly, lz = (float(x) / 10.0 for x in lengths)
    topology.setPeriodicBoxVectors([openmm.Vec3(lx, 0, 0), openmm.Vec3(0, ly, 0), openmm.Vec3(0, 0, lz)] * unit.nanometer)


# ----------------------------------------------------------------------------- systems
def water_box(n_atoms: int = 3000) -> MolSystem:
    """Cubic TIP3P box with about ``n_atoms`` atoms (1 g/cm^3, tiled from OpenMM's tip3p.pdb)."""
    _, app, _ = _openmm()
    edge = (max(n_atoms, 30) / 3.0 * WATER_A3) ** (1.0 / 3.0)
    waters = tile_water([edge] * 3)
    for _ in range(3):  # the cut faces are thinned: correct the edge towards n_atoms
        if abs(3 * len(waters) - n_atoms) <= 0.02 * n_atoms:
            break
        edge *= (n_atoms / (3.0 * len(waters))) ** (1.0 / 3.0)
        waters = tile_water([edge] * 3)
    top = app.Topology()
    pos: List[np.ndarray] = []
    _add_waters(top, pos, waters)
    _set_box(top, [edge] * 3)
    cell = np.diag([edge] * 3)
    return MolSystem(f"water{len(pos)}", top, wrap(np.array(pos), cell), cell,
                     f"TIP3P water box, {len(waters)} molecules, {edge:.1f} Å")


def solvent_box(edge_nm: float) -> MolSystem:
    """Cubic TIP3P box of edge ``edge_nm`` (nm) filled by OpenMM's ``Modeller.addSolvent``."""
    openmm, app, unit = _openmm()
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(_forcefield(), model="tip3p", boxSize=openmm.Vec3(edge_nm, edge_nm, edge_nm) * unit.nanometer)
    system = _from_modeller(f"solvent{edge_nm:g}nm", modeller, f"TIP3P box from Modeller.addSolvent, {edge_nm:g} nm")
    return system


def water_lattice(n_side: int, seed: int = 0):
    """``n_side``³ waters on a cubic lattice at 1 g/cm³ with random orientations, periodic.

    Returns (positions [3 n³, 3] Å, cell [3, 3] Å, atomic numbers [3 n³]) as numpy arrays (O H H per
    molecule). Needs numpy only: for model-level benchmarks whose workers should not load OpenMM."""
    rng = np.random.default_rng(seed)
    a = (18.015 / 0.60221) ** (1.0 / 3.0)  # Å per molecule at 1 g/cm³ (18.015 g/mol)
    mol = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])  # O H H
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * a
    q = rng.normal(size=(len(grid), 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    rot = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                    2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                    2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
                   -1).reshape(-1, 3, 3)
    pos = (grid[:, None, :] + 0.25 * a + np.einsum("mij,aj->mai", rot, mol)).reshape(-1, 3)
    numbers = np.tile([8, 1, 1], len(grid))
    return pos, np.eye(3) * a * n_side, numbers


def peptide_heavy_pdb(n_ala: int = 3, phi: float = -75.0, psi: float = 145.0) -> str:
    """PDB text of the heavy atoms of Ace-(Ala)n-Nme from ideal internal coordinates (Engh & Huber
    bond lengths and angles, trans peptide bonds, backbone angles ``phi``/``psi`` in degrees; NeRF).
    ``openmm.app.PDBFile`` reads it and creates the bonds from its residue templates."""
    bonds = {"N-CA": 1.458, "CA-C": 1.525, "C-N": 1.329, "C-O": 1.231, "CH3-C": 1.520, "N-CH3": 1.458}
    angles = {"N-CA-C": 111.2, "CA-C-N": 116.2, "C-N-CA": 121.7, "N-C-O": 123.0}

    def place(a, b, c, bond, angle, torsion):
        angle, torsion = math.radians(angle), math.radians(torsion)
        bc = (c - b) / np.linalg.norm(c - b)
        n = np.cross(b - a, bc)
        n /= np.linalg.norm(n)
        m = np.cross(n, bc)
        d = np.array([-bond * math.cos(angle), bond * math.sin(angle) * math.cos(torsion),
                      bond * math.sin(angle) * math.sin(torsion)])
        return c + d[0] * bc + d[1] * m + d[2] * n

    chain = [(0, "CH3"), (0, "C")]
    for k in range(1, n_ala + 1):
        chain += [(k, "N"), (k, "CA"), (k, "C")]
    chain += [(n_ala + 1, "N"), (n_ala + 1, "C")]
    xyz = [np.zeros(3), np.array([bonds["CH3-C"], 0, 0])]
    xyz.append(place(np.array([0.0, 1.0, 0.0]), xyz[0], xyz[1], bonds["C-N"], angles["CA-C-N"], 180.0))
    for i in range(3, len(chain)):
        res, name = chain[i]
        if name == "CA":
            args = (bonds["N-CA"], angles["C-N-CA"], 180.0)
        elif name == "C" and res <= n_ala:
            args = (bonds["CA-C"], angles["N-CA-C"], phi)
        elif name == "N":
            args = (bonds["C-N"], angles["CA-C-N"], psi)
        else:
            args = (bonds["N-CH3"], angles["C-N-CA"], 180.0)
        xyz.append(place(xyz[i - 3], xyz[i - 2], xyz[i - 1], *args))
    index = {key: i for i, key in enumerate(chain)}
    atoms = [(r, nm, nm[0] if nm != "CH3" else "C", x) for (r, nm), x in zip(chain, xyz)]
    for res in range(0, n_ala + 1):
        nxt = xyz[index[(res + 1, "CA")]] if res + 1 <= n_ala else xyz[index[(res + 1, "C")]]
        atoms.append((res, "O", "O", place(nxt, xyz[index[(res + 1, "N")]], xyz[index[(res, "C")]],
                                           bonds["C-O"], angles["N-C-O"], 0.0)))
    for res in range(1, n_ala + 1):
        n, ca, c = (xyz[index[(res, k)]] for k in ("N", "CA", "C"))
        b, cc = ca - n, c - ca
        atoms.append((res, "CB", "C", -0.58273431 * np.cross(b, cc) + 0.56802827 * b - 0.54067466 * cc + ca))
    names = ["ACE"] + ["ALA"] * n_ala + ["NME"]
    atoms.sort(key=lambda a: a[0])
    lines = []
    for serial, (res, name, el, x) in enumerate(atoms, start=1):
        lines.append(f"ATOM  {serial:5d} {(' ' + name):<4s} {names[res]:>3s} A{res + 1:4d}    "
                     f"{x[0]:8.3f}{x[1]:8.3f}{x[2]:8.3f}  1.00  0.00          {el:>2s}")
    return "\n".join(lines + ["TER", "END"]) + "\n"


def protonate(pdb_text: str, seed: int = 0, forcefield=None):
    """``Modeller`` of a PDB text with hydrogens added (amber14 templates unless ``forcefield``).
    ``addHydrogens`` starts some hydrogens at random positions (Python's ``random``): ``seed`` makes
    the result reproducible (the global random state is restored afterwards)."""
    openmm, app, unit = _openmm()
    pdb = app.PDBFile(io.StringIO(pdb_text))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    state = random.getstate()
    random.seed(seed)
    try:
        modeller.addHydrogens(forcefield or _forcefield(), platform=openmm.Platform.getPlatformByName("Reference"))
    finally:
        random.setstate(state)
    return modeller


def ala3(padding_nm: float = 1.5, seed: int = 0) -> MolSystem:
    """Ac-Ala3-NHMe (PPII backbone, ideal geometry, amber14 hydrogens) solvated with
    ``Modeller.addSolvent`` (TIP3P, cubic box, ``padding_nm`` around the peptide)."""
    openmm, app, unit = _openmm()
    modeller = protonate(peptide_heavy_pdb(3, -75.0, 145.0), seed)
    modeller.addSolvent(_forcefield(), model="tip3p", padding=padding_nm * unit.nanometer, neutralize=False)
    return _from_modeller("ala3", modeller, f"Ac-Ala3-NHMe in TIP3P (padding {padding_nm} nm)")


def ala15(padding: float = 10.0, xyz_path: Optional[str] = None) -> MolSystem:
    """The folded 15-residue alanine helix of the SO3LR paper (``ala15_folded.xyz``, read with ASE)
    centred in an orthorhombic box (``padding`` Å each side) filled with tiled TIP3P water."""
    import ase.io
    _, app, _ = _openmm()
    path = Path(xyz_path) if xyz_path else SO3LR_DIR / "ala15_folded.xyz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --xyz PATH to the ala15_folded.xyz of the SO3LR reference")
    mol = ase.io.read(str(path))
    xyz = mol.get_positions()
    lengths = (xyz.max(0) - xyz.min(0)) + 2 * padding
    xyz = xyz - xyz.min(0) + padding
    top = app.Topology()
    chain = top.addChain()
    res = top.addResidue("A15", chain)
    counts = {}
    for s in mol.get_chemical_symbols():
        counts[s] = counts.get(s, 0) + 1
        top.addAtom(f"{s}{counts[s]}", app.Element.getBySymbol(s), res)
    pos = list(xyz)
    waters = tile_water(lengths, solute=xyz)
    _add_waters(top, pos, waters)
    _set_box(top, lengths)
    cell = np.diag(lengths)
    return MolSystem("ala15", top, wrap(np.array(pos), cell), cell,
                     f"Ala15 helix (SO3LR ala15_folded.xyz, {len(xyz)} atoms) + {len(waters)} TIP3P")


def villin(box_nm: Optional[float] = None, drop_ions: bool = False) -> MolSystem:
    """Villin headpiece in water from ``openmm/app/data/test.pdb`` (8,867 atoms, 2 Cl-).

    ``box_nm``: remove the shipped water and re-solvate in a cubic box of this edge (e.g. 6.4 nm
    gives ~25k atoms). ``drop_ions``: delete the two Cl- (for models without Cl; net charge +2)."""
    openmm, app, unit = _openmm()
    pdb = app.PDBFile(os.path.join(os.path.dirname(app.__file__), "data", "test.pdb"))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    if box_nm is not None:
        modeller.deleteWater()
        ions = [] if not drop_ions else [r for r in modeller.topology.residues() if r.name in ("CL", "Cl", "NA", "Na")]
        if ions:
            modeller.delete(ions)
        modeller.addSolvent(_forcefield(), model="tip3p", boxSize=openmm.Vec3(box_nm, box_nm, box_nm) * unit.nanometer,
                            neutralize=not drop_ions)
    elif drop_ions:
        modeller.delete([r for r in modeller.topology.residues() if r.name in ("CL", "Cl", "NA", "Na")])
    desc = "villin headpiece (openmm test.pdb)" + (f" re-solvated in a {box_nm} nm box" if box_nm else "") + \
        (", ions removed" if drop_ions else "")
    system = _from_modeller("villin", modeller, desc)
    system.charge = 2.0 if drop_ions else 0.0   # villin HP36 is +2; the shipped 2 Cl- neutralise it
    return system


def crambin(box: Sequence[float] = (86.0, 54.0, 54.0), seed: int = 0) -> MolSystem:
    """Crambin's sequence built as an ideal alpha helix with PeptideBuilder (a size-matched
    stand-in, not the native 1CRN fold; no disulfides), protonated by ``Modeller.addHydrogens``
    and solvated with ``Modeller.addSolvent`` in an orthorhombic box (Å; default ≈ 25k atoms)."""
    openmm, app, unit = _openmm()
    try:
        import PeptideBuilder
        from Bio.PDB import PDBIO
    except ImportError as exc:
        raise ImportError("crambin needs PeptideBuilder (pip install PeptideBuilder); or use "
                          "`villin.py --box 6.4` for a ~25k-atom system") from exc
    n = len(CRAMBIN_SEQUENCE)
    structure = PeptideBuilder.make_structure(CRAMBIN_SEQUENCE, [-57.0] * (n - 1), [-47.0] * (n - 1))
    PeptideBuilder.add_terminal_OXT(structure)
    buf = io.StringIO()
    io_ = PDBIO()
    io_.set_structure(structure)
    io_.save(buf)
    modeller = protonate(buf.getvalue(), seed)
    # align the helix axis with x and centre it
    pos = np.array(modeller.positions.value_in_unit(unit.angstrom))
    centred = pos - pos.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    rot = vt if np.linalg.det(vt) > 0 else -vt
    aligned = centred @ rot.T + np.asarray(box) / 2.0
    modeller = app.Modeller(modeller.topology, [openmm.Vec3(*p) for p in aligned / 10.0] * unit.nanometer)
    modeller.addSolvent(_forcefield(), model="tip3p",
                        boxSize=openmm.Vec3(*(np.asarray(box) / 10.0)) * unit.nanometer, neutralize=True)
    return _from_modeller("crambin", modeller, f"crambin sequence as an alpha helix in TIP3P ({box[0]:.0f}x{box[1]:.0f}x{box[2]:.0f} Å)")


SYSTEMS = {"water": water_box, "solvent": solvent_box, "ala3": ala3, "ala15": ala15, "villin": villin,
           "crambin": crambin}


def build(name: str, **kw) -> MolSystem:
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; choose from {sorted(SYSTEMS)}")
    return SYSTEMS[name](**kw)


# ----------------------------------------------------------------------------- writers
def write_lammps_data(system: MolSystem, path, elements: Optional[Sequence[str]] = None) -> List[str]:
    """LAMMPS data file (``atom_style atomic``, orthorhombic box from 0): one atom type per element
    in the order of ``elements`` (default: by atomic number). Returns the element list (the
    ``pair_coeff * * model.pt <elements>`` order)."""
    elements = list(elements) if elements else system.elements()
    type_of = {s: i + 1 for i, s in enumerate(elements)}
    symbols = system.symbols
    missing = sorted(set(symbols) - set(type_of))
    if missing:
        raise ValueError(f"elements {missing} are in the system but not in the type list {elements}")
    L = np.diag(system.cell)
    pos = wrap(system.positions, system.cell)
    lines = [f"# {system.name}: {system.description} (units metal, Å)", "",
             f"{len(symbols)} atoms", f"{len(elements)} atom types", "",
             f"0.0 {L[0]:.8f} xlo xhi", f"0.0 {L[1]:.8f} ylo yhi", f"0.0 {L[2]:.8f} zlo zhi", "", "Masses", ""]
    _, app, _ = _openmm()
    for s in elements:
        mass = MASSES.get(s) or app.Element.getBySymbol(s).mass._value
        lines.append(f"{type_of[s]} {mass:.4f}  # {s}")
    lines += ["", "Atoms # atomic", ""]
    lines += [f"{i + 1} {type_of[s]} {x:.8f} {y:.8f} {z:.8f}" for i, (s, (x, y, z)) in enumerate(zip(symbols, pos))]
    Path(path).write_text("\n".join(lines) + "\n")
    return elements


def write_pdb(system: MolSystem, path) -> None:
    _, app, unit = _openmm()
    with open(path, "w") as fh:
        app.PDBFile.writeFile(system.topology, system.positions * 0.1 * unit.nanometer, fh, keepIds=False)


def save_arrays(system: MolSystem, path) -> None:
    """npz with ``positions`` (Å), ``numbers``, ``cell`` (Å), ``charge`` (e): readable with numpy
    alone (:func:`load_arrays`), e.g. by a worker process that should not import OpenMM."""
    np.savez(path, positions=system.positions, numbers=np.asarray(system.atomic_numbers), cell=system.cell,
             charge=np.asarray(system.charge))


def load_arrays(path) -> dict:
    """The arrays of :func:`save_arrays`: ``positions``, ``numbers``, ``cell``, ``charge`` (float)."""
    with np.load(path) as d:
        return {"positions": d["positions"], "numbers": d["numbers"], "cell": d["cell"],
                "charge": float(d["charge"]) if "charge" in d else 0.0}


def openmm_system(arrays: dict):
    """(openmm.System with the atoms' masses and periodic box, Topology) for the arrays of :func:`load_arrays`
    (``numbers``, ``cell`` in Å): the particles an ML force is added to. No forces yet."""
    openmm, app, unit = _openmm()
    top = topology_from_numbers(arrays["numbers"], arrays["cell"])
    system = openmm.System()
    for z in arrays["numbers"]:
        el = app.Element.getByAtomicNumber(int(z))
        system.addParticle(MASSES.get(el.symbol, el.mass.value_in_unit(unit.dalton)))
    system.setDefaultPeriodicBoxVectors(*top.getPeriodicBoxVectors())
    return system, top


def topology_from_numbers(numbers: Sequence[int], cell: Optional[np.ndarray] = None):
    """A minimal OpenMM Topology (one residue per atom, no bonds) with these elements and, when
    ``cell`` (Å, orthorhombic) is given, its periodic box: what ``so3krates.openmm.torch_force``
    needs to know about a system."""
    openmm, app, unit = _openmm()
    top = app.Topology()
    chain = top.addChain()
    for z in numbers:
        el = app.Element.getByAtomicNumber(int(z))
        top.addAtom(el.symbol, el, top.addResidue(el.symbol, chain))
    if cell is not None:
        _set_box(top, np.diag(np.asarray(cell)))
    return top
