"""Labelled structures (:class:`Frame`) and the readers that make them.

Units: positions and cells in Å, energies in eV, forces in eV/Å, stress in eV/Å³ (ASE sign
convention, ``σ = (1/V) ∂E/∂ε``), charges in e.

:func:`read_frames` reads anything ASE reads (extxyz, traj, db, ...) and npz files in the EFA
paper's format (keys ``positions`` [M,N,3], ``atomic_numbers`` [M,N] or [N], ``energy`` [M],
``forces`` [M,N,3], optional ``node_mask`` [M,N] for padded atoms, optional ``cell`` [M,3,3] /
``pbc`` [M,3], ``total_charge`` [M], ``num_unpaired_electrons`` [M], ``stress`` [M,3,3]).
ASE frames: energy from ``atoms.info['energy']`` or the attached calculator, forces from
``atoms.arrays['forces']`` or the calculator, stress from ``info['stress']`` or the calculator
(optional), total charge from ``info['total_charge']`` (or ``info['charge']``), unpaired
electrons from ``info['num_unpaired_electrons']`` (or ``info['multiplicity'] - 1``).
:func:`frames_to_atoms` goes back to ASE ``Atoms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

__all__ = ["Frame", "read_frames", "read_npz", "frames_from_atoms", "frames_to_atoms", "element_species",
           "stress_to_voigt"]


@dataclass
class Frame:
    """One labelled structure (numpy arrays; Å, eV, eV/Å, eV/Å³, e)."""

    positions: np.ndarray  # [N,3] float64
    atomic_numbers: np.ndarray  # [N] int64
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))  # rows a, b, c
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: Optional[float] = None
    forces: Optional[np.ndarray] = None  # [N,3]
    stress: Optional[np.ndarray] = None  # [3,3]
    total_charge: float = 0.0
    num_unpaired_electrons: float = 0.0
    # precomputed graphs (see neighbor_lists.attach_neighbors)
    idx_i: Optional[np.ndarray] = None
    idx_j: Optional[np.ndarray] = None
    shifts: Optional[np.ndarray] = None
    idx_i_lr: Optional[np.ndarray] = None
    idx_j_lr: Optional[np.ndarray] = None
    shifts_lr: Optional[np.ndarray] = None

    @property
    def num_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])


def element_species(frames: Sequence[Frame]) -> List[int]:
    """Sorted atomic numbers that occur in ``frames``."""
    zs = set()
    for f in frames:
        zs.update(int(z) for z in np.unique(f.atomic_numbers))
    return sorted(zs)


def _voigt_to_3x3(s) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if s.size == 9:
        return s.reshape(3, 3)
    if s.size == 6:  # ASE Voigt order xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise ValueError(f"stress has {s.size} components; expected 6 (Voigt) or 9 (3x3)")


def stress_to_voigt(s: np.ndarray) -> np.ndarray:
    """3×3 stress → ASE Voigt order ``xx yy zz yz xz xy``."""
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def _label(store, results, key: str):
    """A label from ``atoms.info``/``atoms.arrays`` (``store``), else from the calculator's results."""
    value = store.get(key)
    return results.get(key) if value is None else value


def _check_frame(k: int, frame: Frame) -> None:
    if frame.forces is not None and frame.forces.shape[0] != frame.num_atoms:
        raise ValueError(f"frame {k}: forces have {frame.forces.shape[0]} rows for {frame.num_atoms} atoms")
    if not np.all(np.isfinite(frame.positions)):
        raise ValueError(f"frame {k}: positions contain NaN/inf; clean the data set")
    pbc = frame.pbc
    if pbc.all() and abs(np.linalg.det(frame.cell)) < 1e-9 or any(
        pbc[d] and np.linalg.norm(frame.cell[d]) < 1e-9 for d in range(3)
    ):
        raise ValueError(f"frame {k}: periodic direction with a zero cell vector (zero-volume cell); "
                         "set atoms.cell or pbc=False")


def frames_from_atoms(
    images: Sequence,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
    charge_key: str = "total_charge",
) -> List[Frame]:
    """Convert ASE ``Atoms`` objects into :class:`Frame` objects (labels optional)."""
    frames = []
    for k, atoms in enumerate(images):
        calc = atoms.calc
        results = getattr(calc, "results", {}) if calc is not None else {}
        energy = _label(atoms.info, results, energy_key)
        forces = _label(atoms.arrays, results, forces_key)
        stress = _label(atoms.info, results, stress_key)
        charge = atoms.info.get(charge_key, atoms.info.get("charge", 0.0))
        if "num_unpaired_electrons" in atoms.info:
            unpaired = float(atoms.info["num_unpaired_electrons"])
        elif "multiplicity" in atoms.info:
            unpaired = float(atoms.info["multiplicity"]) - 1.0
        else:
            unpaired = 0.0
        pbc = np.asarray(atoms.get_pbc(), dtype=bool)
        frame = Frame(
            positions=np.asarray(atoms.get_positions(), dtype=np.float64),
            atomic_numbers=np.asarray(atoms.get_atomic_numbers(), dtype=np.int64),
            cell=np.asarray(atoms.get_cell().array, dtype=np.float64) if pbc.any() else np.zeros((3, 3)),
            pbc=pbc,
            energy=None if energy is None else float(np.asarray(energy).reshape(-1)[0]),
            forces=None if forces is None else np.asarray(forces, dtype=np.float64).reshape(-1, 3),
            stress=None if stress is None else _voigt_to_3x3(stress),
            total_charge=float(charge),
            num_unpaired_electrons=unpaired,
        )
        _check_frame(k, frame)
        frames.append(frame)
    return frames


def read_npz(path: Union[str, Path]) -> List[Frame]:
    """Read an npz data set in the EFA-paper layout (see module docstring)."""
    d = np.load(path, allow_pickle=False)
    if "positions" not in d.files or "atomic_numbers" not in d.files:
        raise ValueError(f"{path}: npz needs at least 'positions' and 'atomic_numbers' (has {d.files})")
    pos = np.asarray(d["positions"], dtype=np.float64)
    if pos.ndim == 2:
        pos = pos[None]
    m, n = pos.shape[:2]
    z = np.asarray(d["atomic_numbers"])
    z = np.broadcast_to(z.reshape((1, n)) if z.ndim == 1 else z, (m, n)).astype(np.int64)
    if "node_mask" in d.files:
        mask = np.broadcast_to(np.asarray(d["node_mask"]).astype(bool).reshape(-1, n), (m, n))
    else:
        mask = z > 0

    def column(key, dtype, shape):
        return np.asarray(d[key], dtype=dtype).reshape(shape) if key in d.files else None

    energy = column("energy", np.float64, (m, -1))
    energy = None if energy is None else energy[:, 0]
    forces = column("forces", np.float64, (m, n, 3))
    cell = column("cell", np.float64, (-1, 3, 3))
    pbc = column("pbc", bool, (-1, 3))
    stress = column("stress", np.float64, (m, -1))
    charge = column("total_charge", np.float64, (-1,))
    unp = column("num_unpaired_electrons", np.float64, (-1,))

    def pick(a, k):
        return a[k] if a.shape[0] == m else a[0]

    frames = []
    for k in range(m):
        sel = mask[k]
        p = pick(pbc, k) if pbc is not None else np.zeros(3, dtype=bool)
        frames.append(
            Frame(
                positions=pos[k][sel].copy(),
                atomic_numbers=z[k][sel].copy(),
                cell=pick(cell, k).copy() if (cell is not None and p.any()) else np.zeros((3, 3)),
                pbc=p.copy(),
                energy=None if energy is None else float(energy[k]),
                forces=None if forces is None else forces[k][sel].copy(),
                stress=None if stress is None else _voigt_to_3x3(stress[k]),
                total_charge=0.0 if charge is None else float(pick(charge, k)),
                num_unpaired_electrons=0.0 if unp is None else float(pick(unp, k)),
            )
        )
    return frames


def read_frames(path: Union[str, Path], index: str = ":", **keys) -> List[Frame]:
    """Read a data set: ``.npz`` (EFA layout) or any format ASE reads. ``keys`` are passed to
    :func:`frames_from_atoms` (``energy_key``, ``forces_key``, ``stress_key``, ``charge_key``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist; check data.path in the config")
    if path.suffix == ".npz":
        frames = read_npz(path)
        if index not in (":", None):
            frames = [frames[i] for i in _parse_index(index, len(frames))]
        return frames
    import ase.io  # slow to import (all of ASE's readers); npz files do not need it

    images = ase.io.read(str(path), index=index)
    if not isinstance(images, list):
        images = [images]
    return frames_from_atoms(images, **keys)


def _parse_index(index: str, n: int) -> List[int]:
    if ":" in index:
        parts = [int(p) if p.strip() else None for p in index.split(":")]
        return list(range(n))[slice(*parts)]
    return [int(index) % n]


def frames_to_atoms(frames: Sequence[Frame]):
    """Convert frames back to ASE ``Atoms`` (labels attached as a SinglePointCalculator)."""
    out = []
    for f in frames:
        a = Atoms(numbers=f.atomic_numbers, positions=f.positions, cell=f.cell, pbc=f.pbc)
        a.info["total_charge"] = f.total_charge
        if f.num_unpaired_electrons:
            a.info["num_unpaired_electrons"] = f.num_unpaired_electrons
        res = {}
        if f.energy is not None:
            res["energy"] = f.energy
        if f.forces is not None:
            res["forces"] = f.forces
        if f.stress is not None:
            res["stress"] = stress_to_voigt(f.stress)
        if res:
            a.calc = SinglePointCalculator(a, **res)
        out.append(a)
    return out
