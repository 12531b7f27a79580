"""A neighbour search with fixed shapes and no read-back to the host: the pair lists of a step that a CUDA graph
can capture (``So3kratesPotential.capturable``; docs/gpu.md).

The ordinary search (``neighbors.py``) sizes its arrays from the data (how many atoms a bin holds, how many
pairs are found), so every call reads values back to the host. Here those sizes are decided once, by a *plan*
made outside the captured steps from a first structure (``plan_static_pairs``, host reads allowed), and every
later call (``static_pairs``) runs with the plan's shapes:

* bins: the ordinary search's bins and bin offsets for this cell (fully periodic cells only: an open box has no
  fixed extent), each bin read through ``capacity`` slots (the fullest bin of the plan + 50 % + 2);
* candidates [atoms, offsets, capacity] are filtered by distance (float64, strict ``< cutoff``) and compacted
  into ``max_pairs`` slots (the plan's pair count + 10 % + 64) by a running count (cumsum + scatter, not
  ``nonzero``; only the candidates' ids are scattered, the pairs are formed for the slots), in the ordinary
  half list's order (grouped by ``idx_i``);
* the unused slots hold a *far pair*: atom 0 with its own image ``n·a`` beyond the cutoff (its vector is
  n·a whatever the positions), which every pair term of the model weighs by a cutoff function that is exactly
  0 there; ``valid`` marks the real pairs and the potential also masks their gradients;
* ``ok`` (a bool tensor, never read here) is False when a bin held more atoms than its capacity or more pairs
  than ``max_pairs`` were found: the lists are then incomplete and the potential poisons its outputs (NaN) and
  reports it (``status``). The plan holds for its cell only: the caller compares the cell with ``plan[0]``
  (the potential does, on the device) and makes a new plan for another one.

Units: positions, cell and cutoff in Å. TorchScript-able.
"""
import math
from typing import List, Tuple

import torch
from torch import Tensor

from .neighbors import _bins, _exclusive_cumsum, _offsets, _prepare_cells, _wrap, neighbor_list


def _bin_index(b: Tensor, nb: Tensor) -> Tensor:
    """The flat index of bins b [..., 3] (long, inside the grid) in a grid of nb [3] bins."""
    return (b[..., 0] * nb[1] + b[..., 1]) * nb[2] + b[..., 2]


def plan_static_pairs(positions: Tensor, cell: Tensor, pbc: Tensor, cutoff: float, bin_margin: float = 0.5,
                      pair_margin: float = 0.1, candidates_per_block: int = 4194304) -> Tuple[List[int], List[Tensor]]:
    """The plan of ``static_pairs`` for ``cutoff`` (Å) from a first structure: positions [N,3] Å, cell [3,3] Å
    (rows a, b, c), pbc [3] (all True). Room to spare: bin capacity = fullest bin x (1 + ``bin_margin``) + 2,
    pair slots = pairs found x (1 + ``pair_margin``) + 64; ``candidates_per_block`` candidates [atoms, offsets,
    capacity] are handled at once (bounds the temporary memory: ~0.1 GB per array). Returns (ints [capacity,
    max_pairs, atoms per block, bins, atoms], tensors [cell, inverse cell, bin offsets [O,3], offset is zero [O],
    bins per direction [3], far shift [3]], float64 / long on the positions' device). Raises ValueError for a
    cell that is not fully periodic."""
    if not bool(pbc.to(torch.bool).all()) or bool((cell == 0).all()):
        raise ValueError("capturable (CUDA-graph) pair lists need a fully periodic cell (pbc all True, three lattice "
                         "vectors in Å): an open or partly periodic box has no fixed extent. Use the ordinary "
                         "search for it (capturable = False)")
    n = positions.shape[0]
    device = positions.device
    pos = positions.detach().to(torch.float64)
    c, periodic = _prepare_cells(cell.detach().unsqueeze(0), pbc.to(torch.bool).unsqueeze(0))
    batch = torch.zeros(n, dtype=torch.long, device=device)
    rc = float(cutoff) * (1.0 + 1e-6)
    s, _pos_w, _wrap_l, smin, smax, heights = _wrap(pos, c, periodic, batch, 1)
    cbin, nb, k, t_min = _bins(s, smin, smax, heights, periodic, batch, 1, rc, 0)
    _n_off, _first, offsets = _offsets(c, periodic, nb, k, heights, t_min, rc, cutoff, True)
    nb = nb[0]
    bins = int(nb.prod())
    bin_id = _bin_index(cbin, nb)
    fullest = int(torch.bincount(bin_id, minlength=bins).max()) if n > 0 else 0
    capacity = int(math.ceil(fullest * (1.0 + bin_margin))) + 2
    found = int(neighbor_list(pos, cutoff, cell.detach().to(torch.float64), pbc, True)[0].shape[0])
    max_pairs = int(math.ceil(found * (1.0 + pair_margin))) + 64
    block = max(1, candidates_per_block // max(1, offsets.shape[0] * capacity))
    # the far pair: atom 0 and its image n·a, |n·a| >= n·height_a > cutoff
    far = torch.zeros(3, dtype=torch.long, device=device)
    far[0] = int(float(cutoff) / float(heights[0, 0])) + 2
    zero_off = (offsets == 0).all(dim=1)
    return ([capacity, max_pairs, block, bins, n],
            [c[0], torch.linalg.inv(c[0]), offsets, zero_off, nb, far])


def static_pairs(positions: Tensor, ints: List[int], plan: List[Tensor], cutoff: float, dtype: torch.dtype
                 ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The half pair list within ``cutoff`` (Å) with the plan's fixed shapes and no host read-back:
    (idx_i [K] long, idx_j [K] long, shifts [K,3] in ``dtype``, valid [K] bool, ok [] bool), K = max_pairs;
    ``r_ij = positions[idx_j] - positions[idx_i] + shifts @ cell`` as in ``neighbor_list``, for the plan's cell
    (``plan[0]``; ``cell`` must equal it). ``ok`` False: a bin or the pair slots overflowed (lists incomplete)."""
    capacity = ints[0]
    max_pairs = ints[1]
    block = ints[2]
    bins = ints[3]
    c = plan[0]
    inv_c = plan[1]
    offsets = plan[2]
    zero_off = plan[3]
    nb = plan[4]
    far = plan[5]
    device = positions.device
    n = positions.shape[0]
    n_off = offsets.shape[0]
    pos = positions.detach().to(torch.float64)
    s = pos @ inv_c
    wrap = torch.floor(s)
    pos_w = pos - wrap @ c
    cbin = torch.minimum(torch.clamp(torch.floor((s - wrap) * nb.to(torch.float64)).to(torch.long), min=0), nb - 1)
    wrap_l = wrap.to(torch.long)
    bin_id = _bin_index(cbin, nb)
    order = torch.argsort(bin_id, stable=True)
    counts = torch.zeros(bins, dtype=torch.long, device=device).index_add_(0, bin_id, torch.ones_like(bin_id))
    first = _exclusive_cumsum(counts)
    ok = counts.max() <= capacity
    slots = torch.arange(capacity, device=device)
    cut2 = float(cutoff) * float(cutoff)
    per_atom = n_off * capacity
    # the kept candidates' ids (atom x offset x slot, flat) in pair order; slot max_pairs collects what is not
    # kept (and what overflows) and is dropped at the end
    kept = torch.zeros(max_pairs + 1, dtype=torch.long, device=device)
    total = torch.zeros((), dtype=torch.long, device=device)
    for a0 in range(0, n, block):
        a1 = min(n, a0 + block)
        b = a1 - a0
        u = cbin[a0:a1].unsqueeze(1) + offsets.unsqueeze(0)                     # [b, O, 3] target bin, unwrapped
        tid = _bin_index(torch.remainder(u, nb), nb)
        sh = torch.div(u, nb, rounding_mode="floor")                              # image of the target bin
        have = slots.view(1, 1, capacity) < counts[tid].unsqueeze(2)             # [b, O, cap]
        j = order[torch.where(have, first[tid].unsqueeze(2) + slots.view(1, 1, capacity),
                              torch.zeros_like(have, dtype=torch.long))]
        base = pos_w[a0:a1].unsqueeze(1) - sh.to(torch.float64) @ c               # [b, O, 3]
        d = pos_w[j] - base.unsqueeze(2)                                          # [b, O, cap, 3]
        i = torch.arange(a0, a1, device=device).view(b, 1, 1)
        keep = (have & ((d * d).sum(3) < cut2) & (~zero_off.view(1, n_off, 1) | (i < j))).reshape(-1)
        dest = total + torch.cumsum(keep.to(torch.long), 0) - 1
        dest = torch.where(keep, dest.clamp(max=max_pairs), torch.full_like(dest, max_pairs))
        kept.scatter_(0, dest, torch.arange(a0 * per_atom, a1 * per_atom, device=device))
        total = total + keep.sum()
    ok = ok & (total <= max_pairs)
    valid = torch.arange(max_pairs, device=device) < total
    # the pairs of the kept candidates, formed again for the max_pairs slots only; the unused slots (from
    # ``total`` on) become the far pair
    ids = torch.where(valid, kept[:max_pairs], torch.zeros_like(valid, dtype=torch.long))
    i = torch.div(ids, per_atom, rounding_mode="floor")
    o = torch.div(torch.remainder(ids, per_atom), capacity, rounding_mode="floor")
    u = cbin[i] + offsets[o]
    sh = torch.div(u, nb, rounding_mode="floor")
    j = order[first[_bin_index(torch.remainder(u, nb), nb)] + torch.remainder(ids, capacity)]
    idx_i = torch.where(valid, i, torch.zeros_like(i))
    idx_j = torch.where(valid, j, torch.zeros_like(j))
    shifts = torch.where(valid.unsqueeze(1), sh - wrap_l[j] + wrap_l[i], far.unsqueeze(0).expand(max_pairs, 3))
    return idx_i, idx_j, shifts.to(dtype), valid, ok
