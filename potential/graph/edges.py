"""Pair vectors of a neighbour list, formed in one place: ``r_ij = r_j - r_i + shift · cell`` (Å).

``shifts`` are integer cell offsets (stored as floats), ``cell`` rows are the lattice vectors;
``batch`` (the graph of every atom) selects the cell of each pair in a batch of graphs.
"""
from typing import Optional

import torch
from torch import Tensor

def pair_vectors(positions: Tensor, cell: Tensor, idx_i: Tensor, idx_j: Tensor, shifts: Tensor,
                 batch: Optional[Tensor] = None) -> Tensor:
    """r_ij [P, 3] (differentiable w.r.t. positions and cell). cell [3,3], or [B,3,3] with ``batch``."""
    vec = positions.index_select(0, idx_j) - positions.index_select(0, idx_i)
    if shifts.shape[0] == 0:
        return vec
    if batch is None:
        return vec + shifts.to(positions.dtype) @ cell.reshape(3, 3)
    c = cell.index_select(0, batch.index_select(0, idx_i))  # [P, 3, 3]
    return vec + torch.einsum("pk,pkl->pl", shifts.to(positions.dtype), c)


def pair_vectors_no_grad(positions: Tensor, cell: Tensor, idx_i: Tensor, idx_j: Tensor, shifts: Tensor,
                         dtype: torch.dtype, chunk: int = 1048576) -> Tensor:
    """r_ij [P, 3] of one graph without a graph, in chunks, formed in the positions' precision (float64
    positions: differences of large coordinates lose no digits) and returned in ``dtype``."""
    out = torch.empty(idx_i.shape[0], 3, dtype=dtype, device=positions.device)
    for a in range(0, idx_i.shape[0], chunk):
        b = min(idx_i.shape[0], a + chunk)
        out[a:b] = pair_vectors(positions, cell, idx_i[a:b], idx_j[a:b], shifts[a:b]).detach().to(dtype)
    return out


def pair_virial(positions: Tensor, cell: Tensor, idx_i: Tensor, idx_j: Tensor, shifts: Tensor, grad: Tensor,
                chunk: int = 1048576) -> Tensor:
    """Σ_p r_p ⊗ g_p [3, 3] of one graph (r_p recomputed in the positions' precision, in chunks of ``chunk`` pairs)."""
    m = torch.zeros(3, 3, dtype=positions.dtype, device=positions.device)
    for a in range(0, idx_i.shape[0], chunk):
        b = min(idx_i.shape[0], a + chunk)
        v = pair_vectors(positions, cell, idx_i[a:b], idx_j[a:b], shifts[a:b]).detach()
        m = m + v.t() @ grad[a:b].to(positions.dtype)
    return m
