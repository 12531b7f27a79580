"""Batches: frames with precomputed neighbour lists joined into one disjoint graph.

:func:`collate` joins frames of different sizes (open and periodic mixed) into one :class:`Batch`,
with ``idx_i``/``idx_j`` offset per graph, a ``batch`` vector and per-graph ``cell``/``pbc``/
``total_charge``. :meth:`Batch.edge_vectors` builds the edge vectors from (possibly strained,
gradient-carrying) positions and cells, and :meth:`Batch.model_inputs` returns the keyword
arguments of ``So3krates.forward``. :class:`BatchLoader` yields the batches of an epoch in a
seeded, resumable order. Units: Å, eV, eV/Å, eV/Å³, e.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ..graph.edges import pair_vectors
from .frames import Frame

__all__ = ["Batch", "collate", "BatchLoader"]


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
