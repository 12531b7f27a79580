"""A Python reference of the engine driver: the exported stages on simulated MPI ranks.

It does what the LAMMPS pair style (plugins/lammps/so3krates_model.cpp) does — one autograd function
per stage calling ``engine_atoms`` / ``engine_pairs`` forward and their ``*_vjp`` backward, halo
exchanges between the layers, sums over ranks — but with every rank in one process, so the
communication is plain indexing (whose autograd adjoint is exactly the reverse communication). Tests
compare it with the model's own ``forward`` to check the stage protocol independently of LAMMPS;
``so3krates export --format pt2`` records the stages' example inputs with it and checks the compiled
stages (:class:`so3krates.export.pt2_engine.PT2Engine`) against the eager ones.

Decomposition: atoms are owned by the rank of their slab along the first lattice vector (fractional
coordinate); each rank also holds every periodic image within ``shell`` Å of one of its atoms (ghosts);
every pair (within the cutoff / long-range cutoff) is held once, by the owner of its first atom.
Units: Å, eV.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from so3krates.potential.graph.neighbors import neighbor_list


class _Stage(torch.autograd.Function):
    """One per-atom stage: forward ``engine_atoms``, backward ``engine_atoms_vjp``."""

    @staticmethod
    def forward(ctx, module, stage: str, k: int, *inputs: Tensor):
        ctx.module, ctx.stage, ctx.k = module, stage, k
        ctx.save_for_backward(*inputs)
        return tuple(module.engine_atoms(stage, k, [t.detach() for t in inputs]))

    @staticmethod
    def backward(ctx, *grads):
        inputs = ctx.saved_tensors
        g = ctx.module.engine_atoms_vjp(ctx.stage, ctx.k, list(inputs), list(grads))
        return (None, None, None) + tuple(gi if t.is_floating_point() else None for gi, t in zip(g, inputs))


class _Pairs(torch.autograd.Function):
    """One pair stage over all pairs (in chunks): what each pair adds to its two atoms' rows, added block by
    block into column views of the accumulator (the stage returns column blocks, see exported_model.py)."""

    @staticmethod
    def forward(ctx, module, stage: str, k: int, z: Tensor, ii: Tensor, jj: Tensor, table: Tensor,
                vectors: Tensor, chunk: int):
        ctx.module, ctx.stage, ctx.k, ctx.chunk = module, stage, k, chunk
        ctx.save_for_backward(z, ii, jj, table, vectors)
        acc: Optional[Tensor] = None
        for a in range(0, max(1, ii.shape[0]), chunk):
            i, j = ii[a:a + chunk], jj[a:a + chunk]
            out = module.engine_pairs(stage, k, z[i], z[j], table[i], table[j], vectors[a:a + chunk])
            if acc is None:
                acc = torch.zeros(table.shape[0], sum(b.shape[1] for b in out[:len(out) // 2]), dtype=vectors.dtype)
            add_blocks(acc, i, j, out)
        return acc

    @staticmethod
    def backward(ctx, g):
        z, ii, jj, table, vectors = ctx.saved_tensors
        g_table = torch.zeros_like(table)
        g_vec = torch.zeros_like(vectors)
        for a in range(0, ii.shape[0], ctx.chunk):
            i, j = ii[a:a + ctx.chunk], jj[a:a + ctx.chunk]
            r = ctx.module.engine_pairs_vjp(ctx.stage, ctx.k, z[i], z[j], table[i], table[j], vectors[a:a + ctx.chunk],
                                            g[i], g[j])
            g_vec[a:a + ctx.chunk] = r[0]
            add_blocks(g_table, i, j, r[1:])
        return None, None, None, None, None, None, g_table, g_vec, None


def add_blocks(acc: Tensor, i: Tensor, j: Tensor, blocks: List[Tensor]) -> None:
    """Add a pair stage's column blocks (n for the first atoms ``i``, then n for the second ``j``) into
    ``acc``'s column views; no blocks: nothing to add (a table that needs no gradient)."""
    n = len(blocks) // 2
    off = 0
    for b_i, b_j in zip(blocks[:n], blocks[n:]):
        view = acc[:, off:off + b_i.shape[1]]
        view.index_add_(0, i, b_i).index_add_(0, j, b_j)
        off += b_i.shape[1]
    if n and off != acc.shape[1]:
        raise RuntimeError(f"pair stage returned blocks {off} columns wide for a table of {acc.shape[1]}: the "
                           "model file and this engine disagree on the stage protocol; re-export the model")


def _stage(module, stage: str, k: int, *inputs: Tensor) -> List[Tensor]:
    return list(_Stage.apply(module, stage, k, *inputs))


class Rank:
    """One simulated rank: atoms (owned first, then ghosts) as (global atom, lattice shift)."""

    def __init__(self, atom: np.ndarray, shift: np.ndarray, nlocal: int):
        self.atom = torch.as_tensor(atom, dtype=torch.long)
        self.shift = torch.as_tensor(shift, dtype=torch.float64)
        self.nlocal = nlocal
        self.pairs: Tuple[Tensor, Tensor] = (torch.zeros(0, dtype=torch.long),) * 2
        self.pairs_lr: Tuple[Tensor, Tensor] = (torch.zeros(0, dtype=torch.long),) * 2


def decompose(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, nranks: int, shell: float,
              cutoff: float, cutoff_lr: float) -> List[Rank]:
    """Ranks with owned atoms, ghosts within ``shell`` Å and their pairs (each pair once overall)."""
    n = len(positions)
    periodic = bool(np.any(pbc))
    frac = positions @ np.linalg.inv(cell) if periodic else (positions - positions.min(0)) / \
        max(1e-9, float(np.ptp(positions[:, 0]))) @ np.eye(3)
    owner = np.minimum((np.mod(frac[:, 0], 1.0) * nranks).astype(int), nranks - 1) if periodic else \
        np.minimum((frac[:, 0] * nranks).astype(int), nranks - 1)
    reach = int(np.ceil(shell / np.min(np.linalg.norm(cell, axis=1)))) + 1 if periodic else 0
    rng = range(-reach, reach + 1)
    shifts = np.array([(a, b, c) for a in rng for b in rng for c in rng
                       if all(pbc[d] or (a, b, c)[d] == 0 for d in range(3))], dtype=float)
    pos_t = torch.as_tensor(positions)
    cell_t = torch.as_tensor(cell)
    pbc_t = torch.as_tensor(pbc)
    ranks: List[Rank] = []
    for r in range(nranks):
        own = np.nonzero(owner == r)[0]
        atom, shift = list(own), [np.zeros(3)] * len(own)
        for s in shifts:
            img = positions + s @ cell
            d = np.linalg.norm(img[:, None, :] - positions[own][None, :, :], axis=2).min(1) if len(own) else \
                np.full(n, np.inf)
            for a in np.nonzero(d < shell)[0]:
                if not (owner[a] == r and not s.any()):
                    atom.append(a)
                    shift.append(s)
        ranks.append(Rank(np.array(atom, dtype=int), np.array(shift).reshape(-1, 3), len(own)))
    for cut, attr in ((cutoff, "pairs"), (cutoff_lr, "pairs_lr")):
        if cut <= 0:
            continue
        gi, gj, gs = neighbor_list(pos_t, cut, cell_t if periodic else torch.zeros(3, 3), pbc_t, True)
        for rank in ranks:
            key = {(int(a), tuple(np.round(s).astype(int))): idx for idx, (a, s) in
                   enumerate(zip(rank.atom.tolist(), rank.shift.numpy()))}
            sel = np.nonzero(owner[gi.numpy()] == ranks.index(rank))[0]
            ii = [key[(int(gi[p]), (0, 0, 0))] for p in sel]
            jj = [key[(int(gj[p]), tuple(np.round(gs[p].numpy()).astype(int)))] for p in sel]
            setattr(rank, attr, (torch.tensor(ii, dtype=torch.long), torch.tensor(jj, dtype=torch.long)))
    return ranks


def evaluate(module, positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
             nranks: int, charge: float = 0.0, spin: float = 0.0, chunk: int = 7,
             dtype: torch.dtype = torch.float64) -> Dict[str, object]:
    """Energy (eV), forces (eV/Å) and per-atom energies of the exported ``module`` (parameters in
    ``dtype``) on ``nranks`` ranks; positions and cell are float64 leaves, cast for the stages."""
    lay = module.engine_layout()
    src = module.potential if hasattr(module, "potential") else module  # TorchScript file | pt2 engine
    cutoff, cutoff_lr = float(src.cutoff), float(src.cutoff_lr)
    long_range = lay["exchange_width"] > 0
    ranks = decompose(positions, cell, pbc, nranks, max(cutoff, cutoff_lr if long_range else 0.0) + 0.5, cutoff,
                      cutoff_lr if long_range else 0.0)
    dt = dtype
    pos0 = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    cell0 = torch.tensor(cell, dtype=torch.float64, requires_grad=True)
    cell_t = cell0.to(dt)
    pbc_t = torch.tensor(pbc, dtype=torch.bool)
    z_all = torch.tensor(numbers, dtype=torch.long)
    q = torch.tensor([charge], dtype=dt)
    s = torch.tensor([spin], dtype=dt)
    n = len(numbers)
    # global row of every owned atom in the concatenation of the ranks' owned rows
    order = torch.cat([rk.atom[:rk.nlocal] for rk in ranks])
    row_of = torch.empty(n, dtype=torch.long)
    row_of[order] = torch.arange(n)
    pos = [(pos0[rk.atom] + rk.shift.to(torch.float64) @ cell0).to(dt) for rk in ranks]
    z = [z_all[rk.atom] for rk in ranks]
    for rk, p, zz in zip(ranks, pos, z):
        module.engine_atoms("check", 0, [p.detach(), zz])
    sums_e = torch.zeros(2, dtype=dt)
    if lay["embedding_sums"]:
        sums_e = sum(module.engine_atoms("embedding_sums", 0, [zz[:rk.nlocal], q, s])[0] for rk, zz in zip(ranks, z))
    h = [module.engine_atoms("embed", 0, [zz, q, s, sums_e])[0] for zz in z]
    vec = [p[rk.pairs[1]] - p[rk.pairs[0]] for rk, p in zip(ranks, pos)]
    L = lay["num_layers"]
    for k in range(L):
        att = [_Pairs.apply(module, "messages", k, zz, rk.pairs[0], rk.pairs[1], _stage(module, "project", k, hh)[0],
                            v, chunk) for rk, zz, hh, v in zip(ranks, z, h, vec)]
        # reverse communication: every row (owned or ghost) adds to its atom's owned row
        att_own = torch.zeros(n, att[0].shape[1], dtype=dt).index_add(0, torch.cat([row_of[rk.atom] for rk in ranks]),
                                                                        torch.cat(att))
        kv = torch.zeros(0, dtype=dt)
        if lay["efa" + str(k)]:
            kv = sum(_stage(module, "efa_sums", k, hh[:rk.nlocal], p[:rk.nlocal], cell_t, pbc_t)[0]
                     for rk, hh, p in zip(ranks, h, pos))
        h_own = [_stage(module, "update", k, hh[:rk.nlocal], att_own[row_of[rk.atom[:rk.nlocal]]], p[:rk.nlocal],
                        cell_t, pbc_t, kv)[0] for rk, hh, p in zip(ranks, h, pos)]
        h_glob = torch.cat(h_own)
        h = [h_glob[row_of[rk.atom]] for rk in ranks]  # forward communication to the ghost images
    energies = torch.zeros(n, dtype=dt)
    rd = [_stage(module, "readout", 0, hh[:rk.nlocal], zz[:rk.nlocal]) for rk, hh, zz in zip(ranks, h, z)]
    for rk, r in zip(ranks, rd):
        energies = energies.index_add(0, rk.atom[:rk.nlocal], r[0])
    if lay["zbl"]:
        for rk, zz, v in zip(ranks, z, vec):
            e = _Pairs.apply(module, "zbl", 0, zz, rk.pairs[0], rk.pairs[1], torch.zeros(len(zz), 0, dtype=dt), v, chunk)
            energies = energies.index_add(0, rk.atom, e[:, 0])
    if long_range:
        sums = sum(r[2] for r in rd)
        lr_own = torch.cat([_stage(module, "long_range_values", 0, r[1], sums, q)[0] for r in rd])
        for rk, zz, p in zip(ranks, z, pos):
            v_lr = p[rk.pairs_lr[1]] - p[rk.pairs_lr[0]]
            e = _Pairs.apply(module, "long_range", 0, zz, rk.pairs_lr[0], rk.pairs_lr[1], lr_own[row_of[rk.atom]],
                             v_lr, chunk)
            energies = energies.index_add(0, rk.atom, e[:, 0])
    energy = energies.sum()
    g_pos, g_cell = torch.autograd.grad(energy, [pos0, cell0], allow_unused=True)
    return {"energy": float(energy.detach()), "forces": -g_pos.numpy(), "atomic_energies": energies.detach().numpy(),
            "dE_dcell": None if g_cell is None else g_cell.numpy()}
