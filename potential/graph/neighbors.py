"""Radius graphs (neighbour lists) for open, periodic and mixed boundary conditions.

Units: positions, cell and cutoff in Å. Cell rows are the lattice vectors a, b, c.

``neighbor_list(positions, cutoff, cell, pbc) -> (idx_i, idx_j, shifts)``

    Edge vector ``r_ij = positions[idx_j] - positions[idx_i] + shifts @ cell``. All pairs with
    ``|r_ij| < cutoff`` (strict) are returned, in both directions; a self pair (i == j) is
    returned only with a non-zero shift (an atom seeing its own periodic image). With pbc, every
    periodic image within the cutoff is included, also when the cell is smaller than 2·cutoff.
    ``shifts`` are integer cell offsets stored in the positions' dtype. Pairs come grouped by
    ``idx_i`` in increasing order.

``batched_neighbor_list(positions, cutoff, cell[B,3,3], pbc[B,3], batch[N], num_graphs)``

    The same for several independent graphs; indices are global atom indices, edges never
    connect atoms of different graphs.

Boundary conditions: a graph is open when its cell is all zeros or its pbc is all False. A
non-periodic direction may have a zero lattice vector (e.g. a slab with c = 0); it is replaced
internally by a perpendicular unit vector. A periodic cell whose lattice vectors are linearly
dependent (zero volume) raises ``ValueError``. Left-handed cells (negative determinant) are
accepted.

Algorithm: sort-based cell list, O(N), no Python loop over atoms. Atoms are binned in
fractional coordinates into bins whose perpendicular thickness is at least ``cutoff / m``
(m = 1, 2 or 3 bins per cutoff, chosen from the atom density so long cutoffs scan less
volume; periodic directions divide the cell into an integer number of bins, one bin and
several images when the cell is thinner than the cutoff) and sorted by bin id. Each atom
queries the bins within ``ceil(cutoff / thickness)`` bins of its own, with the periodic image
shift that the wrap implies, skipping bin offsets whose distance lower bound
(λ_min of the bin-edge Gram matrix times the gap) reaches the cutoff; bin starts come from a
dense bin table, or binary search when the bins are sparse (extended open systems). Candidates
are filtered by distance. Binning and distances are computed in float64 whatever the input
dtype; no cap on the number of neighbours. Atoms are processed in blocks and candidates in
chunks, so the temporary memory stays bounded. A cell so thin that more than 10^6 image
offsets would be needed raises ``ValueError``. TorchScript-able (``torch.jit.script``).
"""
from typing import List, Tuple

import torch
from torch import Tensor



def no_pairs(device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
    """An empty pair list: (idx_i [0] long, idx_j [0] long, shifts [0,3] in ``dtype``)."""
    return (torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, dtype=torch.long, device=device),
            torch.zeros(0, 3, dtype=dtype, device=device))


def _exclusive_cumsum(x: Tensor) -> Tensor:
    out = torch.zeros_like(x)
    if x.numel() > 1:
        out[1:] = torch.cumsum(x[:-1], dim=0)
    return out


def _ranges(counts: Tensor) -> Tuple[Tensor, Tensor]:
    """For counts c_q: (q repeated c_q times, 0..c_q-1 for each q)."""
    nq = counts.shape[0]
    owner = torch.repeat_interleave(torch.arange(nq, device=counts.device), counts)
    local = torch.arange(owner.shape[0], device=counts.device) - _exclusive_cumsum(counts)[owner]
    return owner, local


def _complete_one(c: Tensor, periodic: Tensor, zero: Tensor) -> Tensor:
    """Replace zero lattice vectors of non-periodic directions by perpendicular unit vectors."""
    c = c.clone()
    nz = int((~zero).sum())
    if nz == 2:
        d = int(torch.nonzero(zero)[0, 0])
        n = torch.linalg.cross(c[(d + 1) % 3], c[(d + 2) % 3])
        nrm = torch.linalg.norm(n)
        if float(nrm) > 0.0:
            c[d] = n / nrm
    elif nz == 1:
        a = int(torch.nonzero(~zero)[0, 0])
        v = c[a] / torch.linalg.norm(c[a])
        axis = torch.zeros_like(v)
        axis[int(torch.argmin(v.abs()))] = 1.0
        u1 = torch.linalg.cross(v, axis)
        u1 = u1 / torch.linalg.norm(u1)
        u2 = torch.linalg.cross(v, u1)
        u2 = u2 / torch.linalg.norm(u2)
        zi = torch.nonzero(zero)[:, 0]
        d1 = int(zi[0])
        d2 = int(zi[1])
        # keep a right-handed cell when possible
        if (a + 1) % 3 == d1:
            c[d1] = u1
            c[d2] = u2
        else:
            c[d2] = u1
            c[d1] = u2
    return c


def _prepare_cells(cell: Tensor, pbc: Tensor) -> Tuple[Tensor, Tensor]:
    """Returns (complete float64 cells [B,3,3], periodic mask [B,3]); checks the volume."""
    B = cell.shape[0]
    c = cell.to(torch.float64)
    norms = torch.linalg.norm(c, dim=2)  # [B,3]
    zero = norms <= 0.0
    open_graph = zero.all(dim=1) | ~pbc.any(dim=1)
    periodic = pbc & ~open_graph.unsqueeze(1)
    eye = torch.eye(3, dtype=torch.float64, device=cell.device).expand(B, 3, 3)
    c = torch.where(open_graph.view(B, 1, 1), eye, c)
    zero = zero & ~open_graph.unsqueeze(1)
    bad_zero = zero & periodic
    if bool(bad_zero.any()):
        g = int(torch.nonzero(bad_zero)[0, 0])
        d = int(torch.nonzero(bad_zero)[0, 1])
        raise ValueError(
            "periodic cell has a zero lattice vector (graph {}, vector {}): the cell volume is "
            "zero. Give all three lattice vectors of the periodic directions (rows of the cell, "
            "in Å) or set pbc to False in that direction.".format(g, ["a", "b", "c"][d]))
    need = zero.any(dim=1)
    if bool(need.any()):
        todo: List[int] = torch.nonzero(need)[:, 0].tolist()
        for gi in todo:
            c[gi] = _complete_one(c[gi], periodic[gi], zero[gi])
    det = torch.linalg.det(c)
    scale = torch.linalg.norm(c, dim=2).prod(dim=1)
    degenerate = det.abs() <= 1e-10 * scale
    if bool(degenerate.any()):
        g = int(torch.nonzero(degenerate)[0, 0])
        raise ValueError(
            "periodic cell of graph {} has zero volume (|det| < 1e-10 |a||b||c|): its lattice "
            "vectors are linearly dependent. Give three independent lattice vectors (rows of "
            "the cell, in Å), or use a zero cell / pbc=False for an open system.".format(g))
    return c, periodic


def _block_pairs(a_lo: int, a_hi: int, batch: Tensor, cbin: Tensor, n_off: Tensor,
                 off_first: Tensor, off_table: Tensor, nb: Tensor, periodic: Tensor,
                 goff: Tensor, dense: bool, bin_first: Tensor, bin_count: Tensor,
                 sorted_id: Tensor, pos_w: Tensor, C: Tensor, px: Tensor, py: Tensor,
                 pz: Tensor, order: Tensor, wrap_l: Tensor, cutoff: float, chunk_size: int,
                 half: bool, dtype: torch.dtype,
                 out_i: List[Tensor], out_j: List[Tensor], out_s: List[Tensor]) -> None:
    """Pairs (i, j, shift) of the atoms a_lo..a_hi-1 (appended to out_*)."""
    device = pos_w.device
    # queries: every atom of the block against every kept bin offset of its graph
    q_atom, q = _ranges(n_off.index_select(0, batch[a_lo:a_hi]))
    q_atom = q_atom + a_lo
    g = batch.index_select(0, q_atom)
    # [Q,3] unwrapped target bin
    off = off_table.index_select(0, off_first.index_select(0, g) + q)
    u = cbin.index_select(0, q_atom) + off
    nbg = nb.index_select(0, g)
    perg = periodic.index_select(0, g)
    tb = torch.where(perg, torch.remainder(u, nbg), u)
    sh = torch.where(perg, torch.div(u, nbg, rounding_mode="floor"), torch.zeros_like(u))
    valid = (((u >= 0) & (u < nbg)) | perg).all(dim=1)
    tid = goff.index_select(0, g) + (tb[:, 0] * nbg[:, 1] + tb[:, 1]) * nbg[:, 2] + tb[:, 2]
    if dense:
        tid = torch.where(valid, tid, torch.zeros_like(tid))
        start = bin_first.index_select(0, tid)
        cnt = bin_count.index_select(0, tid)
    else:
        start = torch.searchsorted(sorted_id, tid)
        cnt = torch.searchsorted(sorted_id, tid, right=True) - start
    cnt = torch.where(valid, cnt, torch.zeros_like(cnt))
    keep = torch.nonzero(cnt > 0).squeeze(1)
    # half lists: the bin offsets are one of each pair +-o; offset 0 (same bin, same image) gives
    # both directions of its pairs, keep i < j there
    zero_off = (off.index_select(0, keep) == 0).all(dim=1)
    q_atom = q_atom.index_select(0, keep)
    start = start.index_select(0, keep)
    cnt = cnt.index_select(0, keep)
    sh = sh.index_select(0, keep)
    g = g.index_select(0, keep)
    # position of atom i minus the image displacement, per query (one 1-D array per axis:
    # gathers from 1-D arrays are the fastest on CPU)
    base = pos_w.index_select(0, q_atom) - torch.bmm(sh.to(torch.float64).unsqueeze(1),
                                                     C.index_select(0, g)).squeeze(1)
    bx = base[:, 0].contiguous()
    by = base[:, 1].contiguous()
    bz = base[:, 2].contiguous()

    # expand the candidates chunk by chunk
    cut2 = float(cutoff) * float(cutoff)
    csum = torch.cumsum(cnt, dim=0)
    total = int(csum[-1]) if csum.shape[0] > 0 else 0
    n_chunks = (total + chunk_size - 1) // chunk_size
    bounds: List[int] = [0]
    if n_chunks > 1:
        marks = torch.arange(1, n_chunks, device=device) * chunk_size
        inner: List[int] = torch.searchsorted(csum, marks, right=True).tolist()
        bounds = bounds + inner
    bounds.append(cnt.shape[0])
    for c in range(len(bounds) - 1):
        a0 = bounds[c]
        a1 = bounds[c + 1]
        if a1 <= a0:
            continue
        cnt_c = cnt[a0:a1]
        m_c = int(csum[a1 - 1]) - (int(csum[a0 - 1]) if a0 > 0 else 0)
        # query (chunk-local index) of every candidate
        owner = torch.repeat_interleave(cnt_c, output_size=m_c)
        # index into the sorted atoms: start of the query's bin + running index inside it
        delta = start[a0:a1] - _exclusive_cumsum(cnt_c)
        slot = torch.arange(m_c, device=device) + delta.index_select(0, owner)
        dx = px.index_select(0, slot) - bx[a0:a1].index_select(0, owner)
        dy = py.index_select(0, slot) - by[a0:a1].index_select(0, owner)
        dz = pz.index_select(0, slot) - bz[a0:a1].index_select(0, owner)
        d2 = dx * dx + dy * dy + dz * dz
        sel = torch.nonzero(d2 < cut2).squeeze(1)
        owner = owner.index_select(0, sel) + a0
        j = order.index_select(0, slot.index_select(0, sel))
        i = q_atom.index_select(0, owner)
        shp = sh.index_select(0, owner)
        notself = torch.nonzero((i != j) | (shp != 0).any(dim=1)).squeeze(1)
        i = i.index_select(0, notself)
        j = j.index_select(0, notself)
        shp = shp.index_select(0, notself) - wrap_l.index_select(0, j) + wrap_l.index_select(0, i)
        if half:
            zo = zero_off.index_select(0, owner.index_select(0, notself))
            keep2 = torch.nonzero((i < j) | ~zo).squeeze(1)
            i = i.index_select(0, keep2)
            j = j.index_select(0, keep2)
            shp = shp.index_select(0, keep2)
        out_i.append(i)
        out_j.append(j)
        out_s.append(shp.to(dtype))  # small integers: exact in any float dtype


def _check_inputs(positions: Tensor, cutoff: float, cell: Tensor, pbc: Tensor, batch: Tensor,
                  num_graphs: int) -> None:
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError("positions must have shape [N, 3] (Å); got {}".format(positions.shape))
    if not positions.is_floating_point():
        raise ValueError("positions must be a floating-point tensor (Å)")
    if not cutoff > 0.0:
        raise ValueError("cutoff must be positive (Å); got {}".format(cutoff))
    if cell.dim() != 3 or cell.shape[0] != num_graphs or cell.shape[1] != 3 or cell.shape[2] != 3:
        raise ValueError("cell must have shape [num_graphs, 3, 3]; got {}".format(cell.shape))
    if pbc.dim() != 2 or pbc.shape[0] != num_graphs or pbc.shape[1] != 3:
        raise ValueError("pbc must have shape [num_graphs, 3]; got {}".format(pbc.shape))
    if batch.dim() != 1 or batch.shape[0] != positions.shape[0]:
        raise ValueError("batch must have shape [N] matching positions")
    if positions.shape[0] > 0 and not bool(torch.isfinite(positions).all()):
        bad = int(torch.nonzero(~torch.isfinite(positions).all(dim=1))[0, 0])
        raise ValueError("positions contain NaN or inf (first at atom {}): check the input "
                         "structure or the simulation for an explosion".format(bad))
    if not bool(torch.isfinite(cell).all()):
        raise ValueError("cell contains NaN or inf: give finite lattice vectors (Å)")


def _wrap(pos: Tensor, C: Tensor, periodic: Tensor, batch: Tensor, num_graphs: int
          ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fractional coordinates s (wrapped into [0, 1) along periodic directions), wrapped Cartesian
    positions, the integer wraps, each graph's fractional extent (smin, smax) and the perpendicular
    heights of the cells [B, 3] (Å)."""
    N = pos.shape[0]
    invC = torch.linalg.inv(C)                                   # [B,3,3]
    vol = torch.linalg.det(C).abs()                              # [B]
    cr = torch.stack([torch.linalg.cross(C[:, 1], C[:, 2]),
                      torch.linalg.cross(C[:, 2], C[:, 0]),
                      torch.linalg.cross(C[:, 0], C[:, 1])], dim=1)
    heights = vol.unsqueeze(1) / torch.linalg.norm(cr, dim=2)   # [B,3] perpendicular heights
    s = torch.bmm(pos.unsqueeze(1), invC[batch]).squeeze(1)     # [N,3]
    wrap = torch.where(periodic[batch], torch.floor(s), torch.zeros_like(s))
    s = s - wrap
    pos_w = pos - torch.bmm(wrap.unsqueeze(1), C[batch]).squeeze(1)
    smin = torch.zeros(num_graphs, 3, dtype=torch.float64, device=pos.device)
    smax = torch.zeros(num_graphs, 3, dtype=torch.float64, device=pos.device)
    idx3 = batch.unsqueeze(1).expand(N, 3)
    smin = smin.scatter_reduce(0, idx3, s, reduce="amin", include_self=False)
    smax = smax.scatter_reduce(0, idx3, s, reduce="amax", include_self=False)
    return s, pos_w, wrap.to(torch.long), smin, smax, heights


def _bins(s: Tensor, smin: Tensor, smax: Tensor, heights: Tensor, periodic: Tensor, batch: Tensor,
          num_graphs: int, rc: float, bins_per_cutoff: int) -> Tuple[Tensor, Tensor, Tensor, float]:
    """Bins of every atom: (cbin [N,3], bins per direction nb [B,3] (long, and float nb_f), bins to
    search K [B,3], thickness of an open bin t_min (Å)). m bins per cutoff: finer bins when a
    cutoff-sized bin would hold many atoms (long cutoffs); unreachable bin offsets are pruned later."""
    N = s.shape[0]
    m = bins_per_cutoff
    if m <= 0:
        # atom-weighted mean density of the graphs (volume: cell, or extent + cutoff if open)
        n_g = torch.zeros(num_graphs, dtype=torch.float64, device=s.device).index_add(
            0, batch, torch.ones(N, dtype=torch.float64, device=s.device))
        lengths = torch.where(periodic, heights, (smax - smin) * heights + rc)
        density = float((n_g * n_g / lengths.prod(dim=1)).sum()) / float(N)
        atoms_per_bin = density * rc ** 3
        m = 1 if atoms_per_bin < 16.0 else (2 if atoms_per_bin < 128.0 else 3)
    t_min = rc / float(m)
    n_per = torch.clamp(torch.floor(heights / t_min), min=1.0)
    n_open = torch.floor((smax - smin) * heights / t_min) + 1.0
    nb_f = torch.where(periodic, n_per, n_open)                 # [B,3] bins per direction
    if float(nb_f.prod(dim=1).sum()) > 4.0e18:
        raise ValueError("the atoms are spread over too large a region for the cell list "
                         "(positions far apart along an open direction); check for atoms "
                         "that flew away or wrap the positions into the cell")
    thick = torch.where(periodic, heights / nb_f, torch.full_like(heights, t_min))
    K = torch.ceil(rc / thick).to(torch.long)                   # [B,3] bins to search
    nb = nb_f.to(torch.long)
    frac_bins = torch.where(periodic[batch], s * nb_f[batch], (s - smin[batch]) * heights[batch] / t_min)
    cbin = torch.floor(frac_bins).to(torch.long)
    cbin = torch.minimum(torch.clamp(cbin, min=0), nb[batch] - 1)  # [N,3]
    return cbin, nb, K, t_min


def _offsets(C: Tensor, periodic: Tensor, nb: Tensor, K: Tensor, heights: Tensor, t_min: float, rc: float,
             cutoff: float, half: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Bin offsets to search per graph, pruned with a lower bound of the bin-to-bin distance
    (|sum_d y_d v_d|^2 >= lambda_min(V V^T) |y|^2 with |y_d| >= |k_d| - 1, v_d the bin edges):
    (offsets per graph [B], first offset of each graph [B], the offsets [sum, 3])."""
    device = C.device
    nb_f = nb.to(torch.float64)
    edges = C * torch.where(periodic, 1.0 / nb_f, t_min / heights).unsqueeze(2)  # [B,3,3]
    lam = torch.linalg.eigvalsh(torch.bmm(edges, edges.transpose(1, 2)))[:, 0]  # [B]
    Kmax = K.max(dim=0).values
    if float((2 * Kmax + 1).to(torch.float64).prod()) > 1.0e6:
        gb = int(torch.argmax((2 * K + 1).prod(dim=1)))
        raise ValueError("the periodic cell of graph {} is too thin for the cutoff: its "
                         "perpendicular heights {} Å against a cutoff of {} Å need more than "
                         "10^6 periodic images. Check the cell (Å, rows are lattice vectors)"
                         .format(gb, [float(heights[gb, 0]), float(heights[gb, 1]),
                                      float(heights[gb, 2])], cutoff))
    r0 = torch.arange(-int(Kmax[0]), int(Kmax[0]) + 1, device=device)
    r1 = torch.arange(-int(Kmax[1]), int(Kmax[1]) + 1, device=device)
    r2 = torch.arange(-int(Kmax[2]), int(Kmax[2]) + 1, device=device)
    grid = torch.stack(torch.meshgrid([r0, r1, r2], indexing="ij"), dim=-1).reshape(-1, 3)
    gap = torch.clamp(grid.abs() - 1, min=0).to(torch.float64)
    gap2 = (gap * gap).sum(dim=1)                                # [O]
    use = (grid.abs().unsqueeze(0) <= K.unsqueeze(1)).all(dim=2)  # [B,O]
    use = use & (lam.unsqueeze(1) * gap2.unsqueeze(0) < rc * rc)
    if half:
        # one of each pair of opposite offsets (lexicographically >= 0): each pair is found once
        g0 = grid[:, 0]
        g1 = grid[:, 1]
        g2 = grid[:, 2]
        use = use & ((g0 > 0) | ((g0 == 0) & ((g1 > 0) | ((g1 == 0) & (g2 >= 0))))).unsqueeze(0)
    n_off = use.sum(dim=1)                                        # [B]
    return n_off, _exclusive_cumsum(n_off), grid[torch.nonzero(use)[:, 1]]


def batched_neighbor_list(positions: Tensor, cutoff: float, cell: Tensor, pbc: Tensor,
                          batch: Tensor, num_graphs: int, bins_per_cutoff: int = 0,
                          chunk_size: int = 4194304, half: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Neighbour list of a batch of graphs (see module docstring).

    positions [N,3] Å, cutoff Å, cell [B,3,3] Å (rows a, b, c), pbc [B,3] bool,
    batch [N] long (graph of each atom, 0..B-1), num_graphs B.
    bins_per_cutoff: bins per cutoff length m (0: automatic).
    chunk_size: candidate pairs handled at once (bounds the temporary memory).
    half: return each pair once (one of its two directions; the other is (j, i, -shift)), found
    from half of the bin offsets (about half the work of the full list).
    Returns idx_i [E] long, idx_j [E] long, shifts [E,3] (integer cell offsets, positions' dtype).
    """
    device = positions.device
    dtype = positions.dtype
    _check_inputs(positions, cutoff, cell, pbc, batch, num_graphs)
    N = positions.shape[0]
    empty = no_pairs(device, dtype)
    if N == 0 or num_graphs == 0:
        return empty
    batch = batch.to(torch.long)
    C, periodic = _prepare_cells(cell.detach(), pbc.to(torch.bool))
    # bins slightly larger than the cutoff: a safety margin against rounding
    rc = float(cutoff) * (1.0 + 1e-6)
    s, pos_w, wrap_l, smin, smax, heights = _wrap(positions.detach().to(torch.float64), C, periodic, batch,
                                                  num_graphs)
    cbin, nb, K, t_min = _bins(s, smin, smax, heights, periodic, batch, num_graphs, rc, bins_per_cutoff)
    nprod = nb.prod(dim=1)
    goff = _exclusive_cumsum(nprod)                              # [B]
    bin_id = goff[batch] + (cbin[:, 0] * nb[batch, 1] + cbin[:, 1]) * nb[batch, 2] + cbin[:, 2]
    sorted_id, order = torch.sort(bin_id, stable=True)
    pos_sorted = pos_w[order]
    dense = int(nprod.sum()) <= 8 * N + 4096
    bin_count = torch.zeros(0, dtype=torch.long, device=device)
    bin_first = torch.zeros(0, dtype=torch.long, device=device)
    if dense:
        bin_count = torch.bincount(bin_id, minlength=int(nprod.sum()))
        bin_first = _exclusive_cumsum(bin_count)
    n_off, off_first, off_table = _offsets(C, periodic, nb, K, heights, t_min, rc, cutoff, half)
    px = pos_sorted[:, 0].contiguous()
    py = pos_sorted[:, 1].contiguous()
    pz = pos_sorted[:, 2].contiguous()
    out_i: List[Tensor] = []
    out_j: List[Tensor] = []
    out_s: List[Tensor] = []
    # blocks of atoms keep the per-query arrays small (cache-friendly, bounded memory)
    block = max(1, 262144 // max(1, int(n_off.max())))
    for a_lo in range(0, N, block):
        _block_pairs(a_lo, min(N, a_lo + block), batch, cbin, n_off, off_first, off_table, nb,
                     periodic, goff, dense, bin_first, bin_count, sorted_id, pos_w, C, px, py,
                     pz, order, wrap_l, float(cutoff), chunk_size, half, dtype, out_i, out_j, out_s)
    if len(out_i) == 0:
        return empty
    return torch.cat(out_i), torch.cat(out_j), torch.cat(out_s)


def neighbor_list(positions: Tensor, cutoff: float, cell: Tensor, pbc: Tensor, half: bool = False
                  ) -> Tuple[Tensor, Tensor, Tensor]:
    """Neighbour list of one structure (see module docstring).

    positions [N,3] Å, cutoff Å, cell [3,3] Å (rows a, b, c; zeros for an open system),
    pbc [3] bool. Returns idx_i [E] long, idx_j [E] long, shifts [E,3] (integer cell offsets in
    the positions' dtype) with ``r_ij = positions[idx_j] - positions[idx_i] + shifts @ cell``.
    ``half``: each pair once (see ``batched_neighbor_list``).
    """
    if cell.dim() != 2 or cell.shape[0] != 3 or cell.shape[1] != 3:
        raise ValueError("cell must have shape [3, 3] (Å, rows are lattice vectors); got {}"
                         .format(cell.shape))
    if pbc.dim() != 1 or pbc.shape[0] != 3:
        raise ValueError("pbc must have shape [3] (bool); got {}".format(pbc.shape))
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError("positions must have shape [N, 3] (Å); got {}".format(positions.shape))
    batch = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
    return batched_neighbor_list(positions, cutoff, cell.unsqueeze(0), pbc.unsqueeze(0),
                                 batch, 1, 0, 4194304, half)
