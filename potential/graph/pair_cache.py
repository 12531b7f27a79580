"""Reuse of pair lists across MD steps (a Verlet list): ``So3kratesPotential.neighbor_skin`` (Å).

The lists are built with ``cutoff + skin``. While every atom is less than ``skin / 2`` from where it
was at that build, in the same cell (same lattice vectors, same pbc, same number of atoms), a pair
closer than the cutoff now was closer than ``cutoff + skin`` then (each atom moved less than skin/2),
so the pairs within the cutoff are selected from the kept candidates by their current distance
instead of a new cell-list search: the same pairs as a fresh list, in the same orientation
(``r_ij = positions[idx_j] - positions[idx_i] + shifts @ cell`` with the same integer shifts, since
the positions are compared without wrapping: an atom the engine wraps into the box has moved by a
lattice vector and forces a rebuild). Distances are compared in float64, as the neighbour list does.

Units: positions, cell, cutoff and skin in Å. TorchScript-able.
"""
from typing import List, Tuple

import torch
from torch import Tensor

from .edges import pair_vectors_no_grad


def lists_still_valid(kept: List[Tensor], positions: Tensor, cell: Tensor, pbc: Tensor, skin: float) -> bool:
    """True when ``kept`` = [positions, cell, pbc, ...] of the last build still covers ``positions``: same
    atoms count, dtype and device, identical cell and pbc, and no atom moved ``skin / 2`` or more."""
    if len(kept) < 3 or skin <= 0.0:
        return False
    ref = kept[0]
    if ref.shape != positions.shape or ref.dtype != positions.dtype or ref.device != positions.device:
        return False
    if kept[1].shape != cell.shape or kept[2].shape != pbc.shape:
        return False
    same = (kept[1] == cell).all() & (kept[2] == pbc).all()  # one read-back (host synchronisation) below
    if positions.shape[0] > 0:
        moved2 = (positions.to(torch.float64) - ref.to(torch.float64)).square().sum(1).max()
        same = same & (moved2 < 0.25 * skin * skin)
    return bool(same)


def _distances2(positions: Tensor, cell: Tensor, idx_i: Tensor, idx_j: Tensor, shifts: Tensor) -> Tensor:
    """|r_ij|² [P] in float64 (Å²): the pair vectors of ``graph/edges.py`` (formed in chunks) in float64."""
    pos = positions.to(torch.float64)
    return pair_vectors_no_grad(pos, cell.to(torch.float64), idx_i, idx_j, shifts, torch.float64).square().sum(1)


def split_candidates(positions: Tensor, cell: Tensor, idx_i: Tensor, idx_j: Tensor, shifts: Tensor, cutoff: float,
                     skin: float) -> List[Tensor]:
    """The candidates of a search with ``cutoff + skin`` in two groups: [idx_i, idx_j, shifts] of the pairs
    closer than ``cutoff - skin`` — within the cutoff as long as the lists are valid (each atom moved less
    than skin/2, so a distance changed by less than skin) — then the same three for the shell in between,
    the only pairs ``select_within`` has to measure again."""
    inner = _distances2(positions, cell, idx_i, idx_j, shifts) < (cutoff - skin) ** 2 if cutoff > skin \
        else torch.zeros(idx_i.shape[0], dtype=torch.bool, device=idx_i.device)
    sure = torch.nonzero(inner).squeeze(1)
    shell = torch.nonzero(~inner).squeeze(1)
    return [idx_i.index_select(0, sure), idx_j.index_select(0, sure), shifts.index_select(0, sure),
            idx_i.index_select(0, shell), idx_j.index_select(0, shell), shifts.index_select(0, shell)]


def select_within(positions: Tensor, cell: Tensor, groups: List[Tensor], cutoff: float
                  ) -> Tuple[Tensor, Tensor, Tensor]:
    """The pairs closer than ``cutoff`` (strict, float64 distances) at ``positions`` from the two groups of
    ``split_candidates``: all of the first, those of the shell that are: (idx_i, idx_j, shifts)."""
    if groups[3].shape[0] == 0:
        return groups[0], groups[1], groups[2]
    sel = torch.nonzero(_distances2(positions, cell, groups[3], groups[4], groups[5]) < cutoff * cutoff).squeeze(1)
    return (torch.cat([groups[0], groups[3].index_select(0, sel)]), torch.cat([groups[1], groups[4].index_select(0, sel)]),
            torch.cat([groups[2], groups[5].index_select(0, sel)]))
