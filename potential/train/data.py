"""Datasets, splits, neighbour-list precomputation and batching for training and evaluation.

Units: positions and cells in Å, energies in eV, forces in eV/Å, stress in eV/Å³ (ASE sign
convention, ``σ = (1/V) ∂E/∂ε``), charges in e.

Reading
    :func:`read_frames` reads anything ASE reads (extxyz, traj, db, ...) and npz files in the EFA
    paper's format (keys ``positions`` [M,N,3], ``atomic_numbers`` [M,N] or [N], ``energy`` [M],
    ``forces`` [M,N,3], optional ``node_mask`` [M,N] for padded atoms, optional ``cell`` [M,3,3] /
    ``pbc`` [M,3], ``total_charge`` [M], ``num_unpaired_electrons`` [M], ``stress`` [M,3,3]).
    ASE frames: energy from ``atoms.info['energy']`` or the attached calculator, forces from
    ``atoms.arrays['forces']`` or the calculator, stress from ``info['stress']`` or the
    calculator (optional), total charge from ``info['total_charge']`` (or ``info['charge']``),
    unpaired electrons from ``info['num_unpaired_electrons']`` (or ``info['multiplicity'] - 1``).

Splitting
    :func:`split_indices` — seeded random split by fractions or counts, or index files.
    :func:`split_by_trajectory` — held-out time blocks: the last part of every trajectory (by the
    ``frame_id`` labels of the project's data) is the test set, with a gap to the training frames.

Neighbour lists
    :func:`attach_neighbors` precomputes the local (``cutoff``) and, if needed, long-range
    (``cutoff_lr``) pair lists of every frame, periodic frames included: each pair once, with the
    convention of ``so3krates.potential.graph``: ``r_ij = positions[j] - positions[i] + shifts @ cell``.

Batching
    :func:`collate` joins frames of different sizes (open and periodic mixed) into one disjoint
    graph (:class:`Batch`), with ``idx_i``/``idx_j`` offset per graph, a ``batch`` vector and
    per-graph ``cell``/``pbc``/``total_charge``. :meth:`Batch.edge_vectors` builds the edge vectors
    from (possibly strained, gradient-carrying) positions and cells, and
    :meth:`Batch.model_inputs` returns the keyword arguments of ``So3krates.forward``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..graph.edges import pair_vectors
from ..graph.neighbors import neighbor_list

__all__ = [
    "Frame",
    "Batch",
    "read_frames",
    "frames_from_atoms",
    "frames_to_atoms",
    "read_npz",
    "split_indices",
    "split_by_trajectory",
    "attach_neighbors",
    "frame_neighbors",
    "collate",
    "BatchLoader",
    "composition_matrix",
]


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------
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
    # precomputed graphs (see attach_neighbors)
    idx_i: Optional[np.ndarray] = None
    idx_j: Optional[np.ndarray] = None
    shifts: Optional[np.ndarray] = None
    idx_i_lr: Optional[np.ndarray] = None
    idx_j_lr: Optional[np.ndarray] = None
    shifts_lr: Optional[np.ndarray] = None

    @property
    def num_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])


def _voigt_to_3x3(s) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if s.size == 9:
        return s.reshape(3, 3)
    if s.size == 6:  # ASE Voigt order xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise ValueError(f"stress has {s.size} components; expected 6 (Voigt) or 9 (3x3)")


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
        energy = atoms.info.get(energy_key)
        if energy is None:
            energy = results.get(energy_key, results.get("energy") if energy_key == "energy" else None)
        forces = atoms.arrays.get(forces_key)
        if forces is None:
            forces = results.get(forces_key, results.get("forces") if forces_key == "forces" else None)
        stress = atoms.info.get(stress_key)
        if stress is None:
            stress = results.get(stress_key, results.get("stress") if stress_key == "stress" else None)
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
        if frame.forces is not None and frame.forces.shape[0] != frame.num_atoms:
            raise ValueError(f"frame {k}: forces have {frame.forces.shape[0]} rows for {frame.num_atoms} atoms")
        if not np.all(np.isfinite(frame.positions)):
            raise ValueError(f"frame {k}: positions contain NaN/inf; clean the data set")
        if pbc.all() and abs(np.linalg.det(frame.cell)) < 1e-9 or any(
            pbc[d] and np.linalg.norm(frame.cell[d]) < 1e-9 for d in range(3)
        ):
            raise ValueError(f"frame {k}: periodic direction with a zero cell vector (zero-volume cell); "
                             "set atoms.cell or pbc=False")
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
    energy = np.asarray(d["energy"], dtype=np.float64).reshape(m, -1)[:, 0] if "energy" in d.files else None
    forces = np.asarray(d["forces"], dtype=np.float64).reshape(m, n, 3) if "forces" in d.files else None
    cell = np.asarray(d["cell"], dtype=np.float64).reshape(-1, 3, 3) if "cell" in d.files else None
    pbc = np.asarray(d["pbc"], dtype=bool).reshape(-1, 3) if "pbc" in d.files else None
    stress = np.asarray(d["stress"], dtype=np.float64).reshape(m, -1) if "stress" in d.files else None
    charge = np.asarray(d["total_charge"], dtype=np.float64).reshape(-1) if "total_charge" in d.files else None
    unp = (
        np.asarray(d["num_unpaired_electrons"], dtype=np.float64).reshape(-1)
        if "num_unpaired_electrons" in d.files
        else None
    )

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
    import ase.io

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
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

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
            s = f.stress
            res["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        if res:
            a.calc = SinglePointCalculator(a, **res)
        out.append(a)
    return out


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
def _read_index_file(path: Union[str, Path]) -> np.ndarray:
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path).astype(np.int64).reshape(-1)
    if path.suffix == ".json":
        return np.asarray(json.loads(path.read_text()), dtype=np.int64).reshape(-1)
    return np.loadtxt(path, dtype=np.int64, ndmin=1).reshape(-1)


def split_indices(
    num_frames: int,
    train: Union[float, int, None] = 0.8,
    valid: Union[float, int, None] = 0.1,
    test: Union[float, int, None] = None,
    seed: int = 0,
    index_files: Optional[Dict[str, Union[str, Path]]] = None,
) -> Dict[str, np.ndarray]:
    """Split ``range(num_frames)`` into train/valid/test index arrays.

    ``train``/``valid``/``test`` are fractions (float ≤ 1) or counts (int); ``test=None`` takes
    the rest. The permutation is ``numpy.random.default_rng(seed)``. ``index_files`` maps split
    names to ``.txt``/``.npy``/``.json`` index files and overrides the random split for those keys.
    """
    index_files = dict(index_files or {})
    out: Dict[str, np.ndarray] = {}
    if index_files:
        for key, p in index_files.items():
            if p is None:
                continue
            idx = _read_index_file(p)
            if idx.size and (idx.min() < 0 or idx.max() >= num_frames):
                raise ValueError(f"index file {p} has indices outside [0, {num_frames})")
            out[key] = idx
        if "train" in out:
            for key in ("valid", "test"):
                out.setdefault(key, np.zeros(0, dtype=np.int64))
            return out

    def count(x) -> int:
        if x is None:
            return 0
        if isinstance(x, float) and x <= 1.0:
            return int(math.floor(x * num_frames + 1e-9))
        return int(x)

    perm = np.random.default_rng(seed).permutation(num_frames)
    n_train, n_valid = count(train), count(valid)
    n_test = num_frames - n_train - n_valid if test is None else count(test)
    if n_train <= 0:
        raise ValueError(f"training split is empty ({num_frames} frames, train={train}); use more data or a larger fraction")
    if n_train + n_valid + n_test > num_frames:
        raise ValueError(
            f"split train={n_train} + valid={n_valid} + test={n_test} exceeds the {num_frames} frames; reduce the fractions"
        )
    out["train"] = perm[:n_train]
    out["valid"] = perm[n_train : n_train + n_valid]
    out["test"] = perm[n_train + n_valid : n_train + n_valid + n_test]
    return out


_TIME_POINT = re.compile(r"^[fs]\d+$")


def split_by_trajectory(
    frame_ids: Sequence[str], valid: float = 0.05, test: float = 0.10, gap: int = 1, min_points: int = 8
) -> Dict[str, np.ndarray]:
    """Train/valid/test indices that hold out the *end of every trajectory* instead of random frames.

    Frames 50 fs apart in one MD trajectory are nearly copies of each other, so a random split
    measures interpolation between neighbours. Here every ``frame_id`` ``a/b/.../<time point>`` is
    read as a series (everything before the last component that looks like ``f00012`` — an MD frame —
    or ``s003`` — a snapshot whose cut-outs ``c...`` share one time point) and a time point. In each
    series with at least ``min_points`` time points, the last ``test`` fraction of the time points
    (at least one) goes to test, the ``valid`` fraction before it to validation, and ``gap`` time
    points before each held-out block are dropped; all the rest is training. Frames whose id has no
    time point, and short series, are training frames. Returns ``{"train", "valid", "test", "dropped"}``
    index arrays into ``frame_ids``.
    """
    series: Dict[str, Dict[str, List[int]]] = {}
    loose: List[int] = []
    for k, fid in enumerate(frame_ids):
        parts = str(fid).split("/")
        pos = [i for i, p in enumerate(parts) if _TIME_POINT.match(p)]
        if not pos:
            loose.append(k)
            continue
        key, time_point = "/".join(parts[: pos[-1]]), parts[pos[-1]]
        series.setdefault(key, {}).setdefault(time_point, []).append(k)
    out: Dict[str, List[int]] = {"train": list(loose), "valid": [], "test": [], "dropped": []}
    for key in sorted(series):
        points = [series[key][tp] for tp in sorted(series[key])]
        n = len(points)
        if n < min_points:
            out["train"] += [i for p in points for i in p]
            continue
        n_test = max(1, int(round(test * n)))
        n_valid = max(1, int(round(valid * n))) if valid > 0 else 0
        end_train = n - n_test - n_valid - (2 * gap if n_valid else gap)
        if end_train < 1:
            raise ValueError(f"series {key!r} has {n} time points: too few for valid={valid}, test={test}, gap={gap}")
        labels = ["train"] * end_train + ["dropped"] * gap
        if n_valid:
            labels += ["valid"] * n_valid + ["dropped"] * gap
        labels += ["test"] * n_test
        for lab, p in zip(labels, points):
            out[lab] += p
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# Neighbour lists
# --------------------------------------------------------------------------------------------
def _all_pairs(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Every pair i < j of n atoms once."""
    i, j = np.triu_indices(n, 1)
    return i.astype(np.int64), j.astype(np.int64)


def _neighbor_list_np(positions, cell, pbc, cutoff):
    """Pair list (each pair once) with the so3krates convention, as numpy arrays."""
    i, j, s = neighbor_list(
        torch.as_tensor(positions, dtype=torch.float64),
        float(cutoff),
        torch.as_tensor(cell, dtype=torch.float64),
        torch.as_tensor(pbc, dtype=torch.bool),
        True,
    )
    return i.numpy().astype(np.int64), j.numpy().astype(np.int64), s.numpy().astype(np.float64)


def frame_neighbors(frame: Frame, cutoff: float, cutoff_lr: Optional[float] = None, long_range: bool = False) -> Frame:
    """Fill ``frame.idx_i/idx_j/shifts`` (and the ``*_lr`` graph when ``long_range``).

    The long-range graph uses ``cutoff_lr``; with ``cutoff_lr=None`` (or inf) an open frame gets all
    pairs; a periodic frame then needs a finite ``cutoff_lr``.
    """
    frame.idx_i, frame.idx_j, frame.shifts = _neighbor_list_np(frame.positions, frame.cell, frame.pbc, cutoff)
    if long_range:
        if cutoff_lr is None or not math.isfinite(float(cutoff_lr)):
            if frame.pbc.any():
                raise ValueError(
                    "periodic frame with long-range terms needs a finite cutoff_lr; set model.cutoff_lr in the config"
                )
            frame.idx_i_lr, frame.idx_j_lr = _all_pairs(frame.num_atoms)
            frame.shifts_lr = np.zeros((frame.idx_i_lr.shape[0], 3))
        else:
            frame.idx_i_lr, frame.idx_j_lr, frame.shifts_lr = _neighbor_list_np(
                frame.positions, frame.cell, frame.pbc, float(cutoff_lr)
            )
    else:
        frame.idx_i_lr = np.zeros(0, dtype=np.int64)
        frame.idx_j_lr = np.zeros(0, dtype=np.int64)
        frame.shifts_lr = np.zeros((0, 3))
    return frame


def attach_neighbors(
    frames: Sequence[Frame],
    cutoff: float,
    cutoff_lr: Optional[float] = None,
    long_range: bool = False,
    progress: bool = True,
    desc: str = "neighbour lists",
) -> List[Frame]:
    """Precompute the neighbour lists of all frames (in place; returns the list)."""
    from tqdm.auto import tqdm

    for f in tqdm(frames, desc=desc, disable=not progress, leave=False, mininterval=1.0):
        frame_neighbors(f, cutoff, cutoff_lr, long_range)
    return list(frames)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """A disjoint union of frames. Per-atom tensors have length N = Σ N_b, per-edge E, per-graph B.

    Labels: ``energy`` [B], ``forces`` [N,3], ``stress`` [B,3,3]; ``has_energy``/``has_forces``/
    ``has_stress`` [B] bool say which frames carry which label (missing labels are zeros).
    """

    positions: torch.Tensor
    atomic_numbers: torch.Tensor
    batch: torch.Tensor
    num_graphs: int
    num_atoms: torch.Tensor  # [B] long
    cell: torch.Tensor
    pbc: torch.Tensor
    total_charge: torch.Tensor
    num_unpaired_electrons: torch.Tensor
    idx_i: torch.Tensor
    idx_j: torch.Tensor
    shifts: torch.Tensor
    idx_i_lr: torch.Tensor
    idx_j_lr: torch.Tensor
    shifts_lr: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor
    has_energy: torch.Tensor
    has_forces: torch.Tensor
    has_stress: torch.Tensor

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "Batch":
        """Move to ``device``; floating tensors (except integer shifts' semantics) cast to ``dtype``."""
        kw = {}
        for name, v in self.__dict__.items():
            if isinstance(v, torch.Tensor):
                if v.is_floating_point() and dtype is not None:
                    v = v.to(device=device, dtype=dtype)
                else:
                    v = v.to(device=device)
            kw[name] = v
        return Batch(**kw)

    def edge_vectors(
        self, positions: torch.Tensor, cell: torch.Tensor, long_range: bool = False
    ) -> torch.Tensor:
        """``r_ij = positions[j] - positions[i] + shifts @ cell[graph(i)]`` for the local (or lr) graph."""
        if long_range:
            return pair_vectors(positions, cell, self.idx_i_lr, self.idx_j_lr, self.shifts_lr, self.batch)
        return pair_vectors(positions, cell, self.idx_i, self.idx_j, self.shifts, self.batch)

    def model_inputs(
        self, positions: Optional[torch.Tensor] = None, cell: Optional[torch.Tensor] = None
    ) -> Dict[str, object]:
        """Keyword arguments for ``So3krates.forward`` (positions/cell may be strained copies)."""
        positions = self.positions if positions is None else positions
        cell = self.cell if cell is None else cell
        return dict(
            positions=positions,
            atomic_numbers=self.atomic_numbers,
            edge_vectors=self.edge_vectors(positions, cell),
            idx_i=self.idx_i,
            idx_j=self.idx_j,
            edge_vectors_lr=self.edge_vectors(positions, cell, long_range=True),
            idx_i_lr=self.idx_i_lr,
            idx_j_lr=self.idx_j_lr,
            batch=self.batch,
            num_graphs=self.num_graphs,
            total_charge=self.total_charge,
            num_unpaired_electrons=self.num_unpaired_electrons,
            cell=cell,
            pbc=self.pbc,
        )


def collate(frames: Sequence[Frame], dtype: torch.dtype = torch.float64) -> Batch:
    """Join frames (with precomputed neighbour lists) into one :class:`Batch` on the CPU."""
    if len(frames) == 0:
        raise ValueError("collate() needs at least one frame")
    for f in frames:
        if f.idx_i is None:
            raise ValueError("frames have no neighbour lists; call attach_neighbors(frames, cutoff) first")
    n = np.array([f.num_atoms for f in frames], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n)[:-1]])

    def cat_edges(attr_i, attr_j, attr_s):
        ii = [getattr(f, attr_i) + o for f, o in zip(frames, offsets)]
        jj = [getattr(f, attr_j) + o for f, o in zip(frames, offsets)]
        ss = [getattr(f, attr_s) for f in frames]
        return (
            torch.from_numpy(np.concatenate(ii).astype(np.int64)),
            torch.from_numpy(np.concatenate(jj).astype(np.int64)),
            torch.from_numpy(np.concatenate(ss).reshape(-1, 3)).to(dtype),
        )

    idx_i, idx_j, shifts = cat_edges("idx_i", "idx_j", "shifts")
    idx_i_lr, idx_j_lr, shifts_lr = cat_edges("idx_i_lr", "idx_j_lr", "shifts_lr")
    forces = np.concatenate(
        [f.forces if f.forces is not None else np.zeros((f.num_atoms, 3)) for f in frames]
    )
    return Batch(
        positions=torch.from_numpy(np.concatenate([f.positions for f in frames])).to(dtype),
        atomic_numbers=torch.from_numpy(np.concatenate([f.atomic_numbers for f in frames]).astype(np.int64)),
        batch=torch.from_numpy(np.repeat(np.arange(len(frames)), n)),
        num_graphs=len(frames),
        num_atoms=torch.from_numpy(n),
        cell=torch.from_numpy(np.stack([f.cell for f in frames])).to(dtype),
        pbc=torch.from_numpy(np.stack([np.asarray(f.pbc, dtype=bool) for f in frames])),
        total_charge=torch.tensor([f.total_charge for f in frames], dtype=dtype),
        num_unpaired_electrons=torch.tensor([f.num_unpaired_electrons for f in frames], dtype=dtype),
        idx_i=idx_i,
        idx_j=idx_j,
        shifts=shifts,
        idx_i_lr=idx_i_lr,
        idx_j_lr=idx_j_lr,
        shifts_lr=shifts_lr,
        energy=torch.tensor([f.energy if f.energy is not None else 0.0 for f in frames], dtype=dtype),
        forces=torch.from_numpy(forces).to(dtype),
        stress=torch.from_numpy(
            np.stack([f.stress if f.stress is not None else np.zeros((3, 3)) for f in frames])
        ).to(dtype),
        has_energy=torch.tensor([f.energy is not None for f in frames]),
        has_forces=torch.tensor([f.forces is not None for f in frames]),
        has_stress=torch.tensor([f.stress is not None for f in frames]),
    )


class BatchLoader:
    """Deterministic, resumable batching of a frame list.

    The order of epoch ``e`` is ``torch.randperm`` with a generator seeded by ``(seed, e)``, so a
    run can restart at any (epoch, batch) without saving loader state. ``shuffle=False`` keeps
    file order. ``drop_last`` is False: the last batch may be smaller.
    """

    def __init__(self, frames: Sequence[Frame], batch_size: int, shuffle: bool = True, seed: int = 0,
                 dtype: torch.dtype = torch.float64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.frames = list(frames)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.dtype = dtype

    def __len__(self) -> int:
        return (len(self.frames) + self.batch_size - 1) // self.batch_size

    def order(self, epoch: int) -> List[int]:
        if not self.shuffle:
            return list(range(len(self.frames)))
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + int(epoch))
        return torch.randperm(len(self.frames), generator=g).tolist()

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """Yield the batches of ``epoch`` starting at batch number ``start``."""
        order = self.order(epoch)
        for b in range(start, len(self)):
            sel = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield collate([self.frames[k] for k in sel], dtype=self.dtype)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)


def composition_matrix(frames: Sequence[Frame], species: Sequence[int]) -> np.ndarray:
    """[M, S] counts of each species (``species`` = sorted atomic numbers) per frame."""
    lookup = {int(z): k for k, z in enumerate(species)}
    a = np.zeros((len(frames), len(species)))
    for m, f in enumerate(frames):
        for z, c in zip(*np.unique(f.atomic_numbers, return_counts=True)):
            a[m, lookup[int(z)]] = c
    return a
