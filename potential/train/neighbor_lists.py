"""Neighbour lists of frames, computed once before training or evaluation.

:func:`attach_neighbors` precomputes the local (``cutoff``) and, if needed, long-range
(``cutoff_lr``) pair lists of every frame, periodic frames included: each pair once, with the
convention of ``so3krates.potential.graph``: ``r_ij = positions[j] - positions[i] + shifts @ cell``.
:func:`attach_model_neighbors` takes the cutoffs from a model config. Å throughout.
"""

from __future__ import annotations

import math
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import So3kratesConfig
from ..graph.neighbors import neighbor_list
from .frames import Frame

__all__ = ["frame_neighbors", "attach_neighbors", "attach_model_neighbors", "avg_num_neighbors"]


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
    for f in tqdm(frames, desc=desc, disable=not progress, leave=False, mininterval=1.0):
        frame_neighbors(f, cutoff, cutoff_lr, long_range)
    return list(frames)


def attach_model_neighbors(frames: Sequence[Frame], model_config: Mapping[str, Any], progress: bool = True,
                           desc: str = "neighbour lists") -> List[Frame]:
    """:func:`attach_neighbors` with the graphs a model reads: ``cutoff``, and the ``cutoff_lr`` graph
    when the config (a ``So3kratesConfig`` dict) has electrostatics or dispersion."""
    cutoff = float(model_config.get("cutoff", So3kratesConfig.cutoff))
    long_range = bool(model_config.get("electrostatic_energy_bool") or model_config.get("dispersion_energy_bool"))
    return attach_neighbors(frames, cutoff, model_config.get("cutoff_lr"), long_range, progress, desc)


def avg_num_neighbors(frames: Sequence[Frame]) -> float:
    """Mean number of (local-graph) pairs per atom of frames with neighbour lists."""
    n_edges = sum(int(f.idx_i.shape[0]) for f in frames)
    n_atoms = sum(f.num_atoms for f in frames)
    return n_edges / max(1, n_atoms)
