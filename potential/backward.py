"""Explicit backward passes (vector-Jacobian products) of the model's stages, and the memory-lean
inference pass built from them.

Every ``*_vjp`` method takes a stage's inputs and the gradient of a scalar (the energy) with respect
to the stage's outputs, recomputes the stage with autograd (in chunks of pairs where the stage runs
over pairs) or uses analytic derivatives (long-range pair terms), and returns the gradients with
respect to the stage's inputs. Nothing is kept between calls, so a caller that stores only per-atom
features between stages needs memory O(N · F · layers) + one chunk of pairs, instead of the
O(pairs · F · layers) of autograd through the whole model. The same methods serve
:meth:`StageGradients.energy_and_gradients` (one process) and the engines (the LAMMPS pair style
wraps each stage and its ``*_vjp`` in an autograd function, with MPI communication in between).

Units: gradients of the energy (eV) w.r.t. positions / pair vectors in eV/Å, w.r.t. features in eV.
First derivatives only: Hessians and force training use ``So3krates.forward`` with autograd.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .nn.basis import safe_norm


def _or_zeros(g: Optional[Tensor], like: Tensor) -> Tensor:
    """A gradient from autograd.grad(..., allow_unused=True), zeros where the input was unused."""
    if g is None:
        return torch.zeros_like(like)
    return g


def _leaf(t: Tensor, needs_grad: bool) -> Tensor:
    """``t`` without its graph, a leaf for autograd if ``needs_grad``. (Never requires_grad_(False): under
    torch.jit.freeze .detach() can vanish, and the flag of a tensor with a graph cannot be changed.)"""
    if needs_grad:
        return t.detach().requires_grad_(True)
    return t.detach()


class StageGradients(nn.Module):
    """Mixin of :class:`so3krates.potential.model.So3krates`: the ``*_vjp`` methods of its stages."""

    # -------------------------------------------------------------------- layers: messages
    @torch.jit.export
    def project_vjp(self, k: int, x: Tensor, g_p: List[Tensor]) -> Tensor:
        """d/dx of Σ g_p · project(k, x): [N, F]."""
        grad_was = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        x_l = _leaf(x, True)
        p = self.project(k, x_l)
        go: List[Optional[Tensor]] = [g_p[0], g_p[1], g_p[2], g_p[3], g_p[4]]
        g = torch.autograd.grad(p, [x_l], grad_outputs=go, allow_unused=True)[0]
        torch.set_grad_enabled(grad_was)
        return _or_zeros(g, x)

    @torch.jit.export
    def pair_messages_vjp(self, k: int, p_i: List[Tensor], p_j: List[Tensor], ev_i: Tensor, ev_j: Tensor,
                          edge_vectors: Tensor, g_m: List[Tensor], inputs_grad: bool = True,
                          kept: Optional[List[Tensor]] = None) -> List[Tensor]:
        """Backward of ``pair_messages`` for one chunk of pairs: g_m = gradients of its four outputs ->
        [g_p_i (5 tensors), g_p_j (5 tensors), g_ev_i, g_ev_j, g_edge_vectors] (the per-atom inputs'
        gradients are not computed — empty tensors — when ``inputs_grad`` is False: layer 0, whose inputs do
        not depend on positions). The attention and filters have an explicit backward (AttentionBlock.
        pair_messages_backward; ``kept``: the chunk's filter state from ``messages_keep``, else
        recomputed); the geometry (radial basis, cutoff, spherical harmonics) uses autograd."""
        grad_was = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        v = _leaf(edge_vectors, True)
        d, rbf, cut, ylm = self.geometry(v)
        torch.set_grad_enabled(False)
        r = self.pair_messages_backward_at(k, p_i, p_j, ev_i, ev_j, [rbf.detach(), cut.detach(), ylm.detach()], g_m,
                                           inputs_grad, kept, None, None, None)
        torch.set_grad_enabled(True)
        go: List[Optional[Tensor]] = [r[11], r[13], r[12]]
        g_vec = torch.autograd.grad([rbf, cut, ylm], [v], grad_outputs=go, allow_unused=True)[0]
        torch.set_grad_enabled(grad_was)
        out = r[:10] + [-r[10], r[10]] if inputs_grad else r[:12]  # empty tensors: not computed
        out.append(_or_zeros(g_vec, edge_vectors))
        return out

    @torch.jit.export
    def pair_messages_backward_at(self, k: int, p_i: List[Tensor], p_j: List[Tensor], ev_i: Tensor, ev_j: Tensor,
                                  geo: List[Tensor], g_m: List[Tensor], inputs_grad: bool,
                                  kept: Optional[List[Tensor]], tab: Optional[List[Tensor]] = None,
                                  idx: Optional[List[Tensor]] = None,
                                  g_tab: Optional[List[Tensor]] = None) -> List[Tensor]:
        """``AttentionBlock.pair_messages_backward`` of layer ``k`` at the pairs' geometry ``geo`` = [rbf, cut,
        ylm] (no graph) -> [g_p_i (5), g_p_j (5), g_dev, g_rbf, g_ylm, g_cut] (``tab``, ``idx``, ``g_tab``: the
        indexed logits, see there)."""
        r: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            if i == k:
                r = layer.attention_block.pair_messages_backward(p_i, p_j, ev_j - ev_i, geo[0], geo[2], geo[1], g_m,
                                                                 inputs_grad, kept, tab, idx, g_tab)
        return r

    @torch.jit.export
    def geometry_vjp(self, edge_vectors: Tensor, g_geo: List[Tensor]) -> Tensor:
        """d/d(edge_vectors) [P, 3] of Σ g_geo · [rbf, cut, ylm] (``geometry``), by autograd."""
        grad_was = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        v = _leaf(edge_vectors, True)
        d, rbf, cut, ylm = self.geometry(v)
        go: List[Optional[Tensor]] = [g_geo[0], g_geo[1], g_geo[2]]
        g_vec = torch.autograd.grad([rbf, cut, ylm], [v], grad_outputs=go, allow_unused=True)[0]
        torch.set_grad_enabled(grad_was)
        return _or_zeros(g_vec, edge_vectors)

    @torch.jit.export
    def messages_vjp(self, k: int, x: Tensor, ev: Tensor, edge_vectors: Tensor, idx_i: Tensor, idx_j: Tensor,
                     g_x_att: Tensor, g_ev_att: Tensor, chunk_size: int = 0,
                     inputs_grad: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        """Backward of ``messages``: -> (g_x [N, F], g_ev [N, m_tot], g_edge_vectors [P, 3]), recomputing
        the messages one chunk of pairs at a time."""
        return self.messages_keep_vjp(k, x, ev, edge_vectors, idx_i, idx_j, g_x_att, g_ev_att, chunk_size,
                                      inputs_grad, [], [], [])

    @torch.jit.export
    def messages_keep_vjp(self, k: int, x: Tensor, ev: Tensor, edge_vectors: Tensor, idx_i: Tensor, idx_j: Tensor,
                          g_x_att: Tensor, g_ev_att: Tensor, chunk_size: int, inputs_grad: bool,
                          kept: List[List[Tensor]], geo: List[List[Tensor]],
                          g_geo: List[List[Tensor]]) -> Tuple[Tensor, Tensor, Tensor]:
        """``messages_vjp`` with the filter state of the first ``len(kept)`` chunks from ``kept`` (filled by
        ``messages_keep``) instead of recomputed, and for the first ``len(geo)`` chunks the geometry from
        ``geo`` (``chunk_geometry``): their gradients w.r.t. [rbf, cut, ylm] are added to ``g_geo`` (one entry
        per chunk, appended at the first layer) and their rows of g_edge_vectors left zero — ``geometry_vjp``
        forms them once for all layers."""
        grad_was = torch.is_grad_enabled()  # (no `with torch.no_grad()`: it crashes frozen TorchScript modules)
        torch.set_grad_enabled(False)
        p = self.project(k, x)
        indexed = self.indexed_now(k, x)  # for the chunks of ``geo`` (explicit backward without a graph)
        torch.set_grad_enabled(grad_was)
        gp = [torch.zeros_like(t) for t in p]
        g_ev = torch.zeros_like(ev)
        g_vec = torch.zeros_like(edge_vectors)
        b = self.chunk_bounds(idx_i.shape[0], chunk_size)
        for c in range(len(b) - 1):
            ii = idx_i[b[c]:b[c + 1]]
            jj = idx_j[b[c]:b[c + 1]]
            ix = indexed and c < len(geo)  # the tables read and their gradients added through ii, jj
            gx_i = torch.empty(0, dtype=g_x_att.dtype, device=g_x_att.device) if ix else g_x_att.index_select(0, ii)
            gx_j = torch.empty(0, dtype=g_x_att.dtype, device=g_x_att.device) if ix else g_x_att.index_select(0, jj)
            gm = [gx_i, g_ev_att.index_select(0, ii), gx_j, g_ev_att.index_select(0, jj)]
            kc: Optional[List[Tensor]] = None
            if c < len(kept):
                kc = kept[c]
            p_i = self.gather_projections(p, ii, ix)
            p_j = self.gather_projections(p, jj, ix)
            if c < len(geo):
                torch.set_grad_enabled(False)
                tab: Optional[List[Tensor]] = p if ix else None
                ij: Optional[List[Tensor]] = [ii, jj] if ix else None
                g_tab: Optional[List[Tensor]] = gp + [g_x_att] if ix else None
                r = self.pair_messages_backward_at(k, p_i, p_j, ev.index_select(0, ii), ev.index_select(0, jj),
                                                   geo[c], gm, inputs_grad, kc, tab, ij, g_tab)
                torch.set_grad_enabled(grad_was)
                ge = r[:10] + [-r[10], r[10]] if inputs_grad else r[:12]
                gg = [r[11], r[13], r[12]]
                if c < len(g_geo):
                    g_geo[c] = [g_geo[c][0] + gg[0], g_geo[c][1] + gg[1], g_geo[c][2] + gg[2]]
                else:
                    g_geo.append(gg)
            else:
                ge = self.pair_messages_vjp(k, p_i, p_j, ev.index_select(0, ii), ev.index_select(0, jj),
                                            edge_vectors[b[c]:b[c + 1]], gm, inputs_grad, kc)
                g_vec[b[c]:b[c + 1]] = ge[12]
            if inputs_grad:
                if not ix:  # (indexed: added by the kernels)
                    for t in range(5):
                        gp[t].index_add_(0, ii, ge[t])
                        gp[t].index_add_(0, jj, ge[5 + t])
                g_ev.index_add_(0, ii, ge[10])
                g_ev.index_add_(0, jj, ge[11])
        g_x = self.project_vjp(k, x, gp) if inputs_grad else torch.zeros_like(x)
        return g_x, g_ev, g_vec

    # -------------------------------------------------------------------- layers: per-atom update
    @torch.jit.export
    def update_vjp(self, k: int, x: Tensor, ev: Tensor, x_att: Tensor, ev_att: Tensor, positions: Tensor,
                   batch: Tensor, num_graphs: int, cell: Tensor, pbc: Tensor, efa_sums: Optional[Tensor],
                   g_x: Tensor, g_ev: Tensor, inputs_grad: bool = True) -> List[Tensor]:
        """Backward of ``update`` -> [g_x, g_ev, g_x_att, g_ev_att, g_positions, g_cell, g_efa_sums]
        (g_positions / g_cell: the explicit dependence through EFA; zeros without EFA in layer k)."""
        efa = self.efa_layers[k]
        grad_was = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        x_l = _leaf(x, inputs_grad)
        ev_l = _leaf(ev, inputs_grad)
        xa = _leaf(x_att, True)
        eva = _leaf(ev_att, True)
        pos = _leaf(positions, efa)
        cel = _leaf(cell, efa)
        sums: Optional[Tensor] = None
        if efa_sums is not None:
            sums = _leaf(efa_sums, efa)
        out = self.update(k, x_l, ev_l, xa, eva, pos, batch, num_graphs, cel, pbc, sums)
        leaves = [xa, eva]
        if inputs_grad:
            leaves = leaves + [x_l, ev_l]
        if efa:
            leaves = leaves + [pos, cel]
            if sums is not None:
                leaves.append(sums)
        go: List[Optional[Tensor]] = [g_x, g_ev]
        g = torch.autograd.grad([out[0], out[1]], leaves, grad_outputs=go, allow_unused=True)
        torch.set_grad_enabled(grad_was)
        res = [torch.zeros_like(x), torch.zeros_like(ev), _or_zeros(g[0], x_att), _or_zeros(g[1], ev_att),
               torch.zeros_like(positions), torch.zeros_like(cell), torch.zeros(0, dtype=x.dtype, device=x.device)]
        n = 2
        if inputs_grad:
            res[0] = _or_zeros(g[2], x)
            res[1] = _or_zeros(g[3], ev)
            n = 4
        if efa:
            res[4] = _or_zeros(g[n], positions)
            res[5] = _or_zeros(g[n + 1], cell)
            if sums is not None:
                res[6] = _or_zeros(g[n + 2], sums)
        return res

    @torch.jit.export
    def efa_sums_vjp(self, k: int, x: Tensor, ev: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor,
                     g_sums: Tensor) -> List[Tensor]:
        """Backward of ``efa_sums_ev`` (the Euclidean variables ``ev`` enter only with ``efa_qk_degrees`` > 0;
        their gradient is zero otherwise) -> [g_x, g_ev, g_positions, g_cell]."""
        grad_was = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        x_l = _leaf(x, True)
        ev_l = _leaf(ev, True)
        pos = _leaf(positions, True)
        cel = _leaf(cell, True)
        s = self.efa_sums_ev(k, x_l, ev_l, pos, cel, pbc)
        go: List[Optional[Tensor]] = [g_sums]
        g = torch.autograd.grad([s], [x_l, ev_l, pos, cel], grad_outputs=go, allow_unused=True)
        torch.set_grad_enabled(grad_was)
        return [_or_zeros(g[0], x), _or_zeros(g[1], ev), _or_zeros(g[2], positions), _or_zeros(g[3], cell)]

    # -------------------------------------------------------------------- readout
    @torch.jit.export
    def readout_vjp(self, x: Tensor, atomic_numbers: Tensor, batch: Tensor, num_graphs: int, g_energy: Tensor,
                    g_lr: Tensor, g_sums: Tensor) -> Tensor:
        """Backward of ``readout`` -> g_x [N, F]."""
        grad_was = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        x_l = _leaf(x, True)
        e, lr, sums = self.readout(x_l, atomic_numbers, batch, num_graphs)
        outs = [e]
        go: List[Optional[Tensor]] = [g_energy]
        if lr.shape[1] > 0:
            outs.append(lr)
            go.append(g_lr)
        if sums.shape[1] > 0:
            outs.append(sums)
            go.append(g_sums)
        g = torch.autograd.grad(outs, [x_l], grad_outputs=go, allow_unused=True)[0]
        torch.set_grad_enabled(grad_was)
        return _or_zeros(g, x)

    @torch.jit.export
    def long_range_values_vjp(self, lr_raw: Tensor, sums: Tensor, total_charge: Tensor, batch: Tensor,
                              g_lr: Tensor) -> List[Tensor]:
        """Backward of ``long_range_values`` -> [g_lr_raw [N, W], g_sums [B, K]]."""
        if self.charges_head is None:
            return [g_lr, torch.zeros_like(sums)]
        grad_was = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        raw = _leaf(lr_raw, True)
        s = _leaf(sums, True)
        lr = self.long_range_values(raw, s, total_charge, batch)
        go: List[Optional[Tensor]] = [g_lr]
        g = torch.autograd.grad([lr], [raw, s], grad_outputs=go, allow_unused=True)
        torch.set_grad_enabled(grad_was)
        return [_or_zeros(g[0], lr_raw), _or_zeros(g[1], sums)]

    # -------------------------------------------------------------------- pair terms
    @torch.jit.export
    def zbl_pair_vjp(self, z_i: Tensor, z_j: Tensor, edge_vectors: Tensor, g_pair: Tensor) -> Tensor:
        """d/d(edge_vectors) of Σ g_pair · zbl_pair_energy: [P, 3]."""
        grad_was = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        v = _leaf(edge_vectors, True)
        e = self.zbl_pair_energy(z_i, z_j, v)
        go: List[Optional[Tensor]] = [g_pair]
        g = torch.autograd.grad([e], [v], grad_outputs=go, allow_unused=True)[0]
        torch.set_grad_enabled(grad_was)
        return _or_zeros(g, edge_vectors)

    @torch.jit.export
    def long_range_pair_vjp(self, z_i: Tensor, z_j: Tensor, lr_i: Tensor, lr_j: Tensor, edge_vectors: Tensor,
                            g_pair: Tensor) -> List[Tensor]:
        """Backward of ``long_range_pair_energy`` with analytic derivatives (no graph):
        -> [g_lr_i [P, W], g_lr_j [P, W], g_edge_vectors [P, 3], the pair energies [P] (eV) themselves]."""
        d = safe_norm(edge_vectors)
        de_dd = torch.zeros_like(d)
        e = torch.zeros_like(d)
        g_i: List[Tensor] = []
        g_j: List[Tensor] = []
        col = 0
        es = self.electrostatics
        if es is not None:
            r = es.pair_energy_and_derivatives(lr_i[:, 0], lr_j[:, 0], d)
            e = e + r[0]
            de_dd = de_dd + r[1]
            g_i.append(g_pair * r[2])
            g_j.append(g_pair * r[3])
            col = 1
        disp = self.dispersion
        if disp is not None:
            r = disp.pair_energy_and_derivatives(lr_i[:, col], lr_j[:, col], z_i, z_j, d)
            e = e + r[0]
            de_dd = de_dd + r[1]
            g_i.append(g_pair * r[2])
            g_j.append(g_pair * r[3])
        d_pos = d > 0.0
        unit = edge_vectors / torch.where(d_pos, d, torch.ones_like(d)).unsqueeze(-1)
        g_vec = torch.where(d_pos.unsqueeze(-1), unit, torch.zeros_like(unit)) * (g_pair * de_dd).unsqueeze(-1)
        empty = torch.zeros(d.shape[0], 0, dtype=d.dtype, device=d.device)
        gi = torch.stack(g_i, 1) if len(g_i) > 0 else empty
        gj = torch.stack(g_j, 1) if len(g_j) > 0 else empty
        return [gi, gj, g_vec, e]

    @torch.jit.export
    def pair_energies_vjp(self, atomic_numbers: Tensor, lr: Tensor, edge_vectors: Tensor, idx_i: Tensor,
                          idx_j: Tensor, edge_vectors_lr: Tensor, idx_i_lr: Tensor, idx_j_lr: Tensor,
                          g_energy: Tensor, chunk_size: int = 0, with_energies: bool = False) -> List[Tensor]:
        """Backward of ``pair_energies`` -> [g_edge_vectors [P, 3], g_edge_vectors_lr [P', 3], g_lr [N, W]],
        with ``with_energies`` followed by ``pair_energies`` itself ([N], eV; the long-range pair energies
        come from the same analytic pass, so the long-range pairs are visited once instead of twice)."""
        z = atomic_numbers
        g_vec = torch.zeros_like(edge_vectors)
        g_vec_lr = torch.zeros_like(edge_vectors_lr)
        g_lr = torch.zeros_like(lr)
        e_atoms = torch.zeros(z.shape[0], dtype=edge_vectors.dtype, device=edge_vectors.device)
        if self.zbl is not None:
            b = self.chunk_bounds(idx_i.shape[0], chunk_size)
            for c in range(len(b) - 1):
                ii = idx_i[b[c]:b[c + 1]]
                jj = idx_j[b[c]:b[c + 1]]
                gp = 0.5 * (g_energy.index_select(0, ii) + g_energy.index_select(0, jj))
                z_i = z.index_select(0, ii)
                z_j = z.index_select(0, jj)
                g_vec[b[c]:b[c + 1]] = self.zbl_pair_vjp(z_i, z_j, edge_vectors[b[c]:b[c + 1]], gp)
                if with_energies:
                    h = 0.5 * self.zbl_pair_energy(z_i, z_j, edge_vectors[b[c]:b[c + 1]])
                    e_atoms = e_atoms.index_add(0, ii, h).index_add(0, jj, h)
        if self.exchange_width > 0:
            b = self.chunk_bounds_lr(idx_i_lr.shape[0], chunk_size)
            for c in range(len(b) - 1):
                ii = idx_i_lr[b[c]:b[c + 1]]
                jj = idx_j_lr[b[c]:b[c + 1]]
                gp = 0.5 * (g_energy.index_select(0, ii) + g_energy.index_select(0, jj))
                r = self.long_range_pair_vjp(z.index_select(0, ii), z.index_select(0, jj), lr.index_select(0, ii),
                                             lr.index_select(0, jj), edge_vectors_lr[b[c]:b[c + 1]], gp)
                g_lr.index_add_(0, ii, r[0])
                g_lr.index_add_(0, jj, r[1])
                g_vec_lr[b[c]:b[c + 1]] = r[2]
                if with_energies:
                    h = 0.5 * r[3]
                    e_atoms = e_atoms.index_add(0, ii, h).index_add(0, jj, h)
        if with_energies:
            return [g_vec, g_vec_lr, g_lr, e_atoms]
        return [g_vec, g_vec_lr, g_lr]

    # -------------------------------------------------------------------- the memory-lean inference pass
    @torch.jit.export
    def energy_and_gradients(self, positions: Tensor, atomic_numbers: Tensor, edge_vectors: Tensor,
                             idx_i: Tensor, idx_j: Tensor, edge_vectors_lr: Tensor, idx_i_lr: Tensor,
                             idx_j_lr: Tensor, batch: Tensor, num_graphs: int, total_charge: Tensor,
                             num_unpaired_electrons: Tensor, cell: Tensor, pbc: Tensor,
                             chunk_size: int = 0, keep_bytes: int = 0) -> Tuple[Dict[str, Tensor], List[Tensor]]:
        """``forward``'s outputs (no graph) and the gradients of the total energy E = Σ atomic_energies
        (eV): [dE/d edge_vectors [P,3] eV/Å, dE/d edge_vectors_lr [P',3] eV/Å, dE/d positions [N,3] eV/Å
        (explicit dependence: EFA), dE/d cell [B,3,3] eV/Å (periodic EFA)]. Forces and stress follow by
        the chain rule through the pair vectors (:mod:`so3krates.potential.forces`).

        The stages run once without a graph, keeping only per-atom features; the backward pass calls the
        stages' ``*_vjp`` methods in reverse order (pairs recomputed in chunks of ``chunk_size``; 0: the
        model's default). Equals ``forward`` + autograd to rounding, with memory O(N·F·layers + chunk·F).
        ``keep_bytes`` > 0 trades memory for speed: up to that many bytes are kept from the forward for the
        backward instead of being recomputed — first the pairs' geometry (K + m_tot + 1 numbers per pair,
        shared by all layers, its backward run once), then per layer the filter MLPs' state and the attention
        logits (4.5·F + 2·(heads + degrees) numbers per pair; the filters' matrix products are ~1/3 of a
        layer's backward). The pair energies come from
        the pass that forms their gradients."""
        z = atomic_numbers
        step = self.chunk(chunk_size)  # the lean pass always works in chunks
        saved: List[List[Tensor]] = []
        kept: List[List[List[Tensor]]] = []
        chunk_pairs = max(1, min(step, idx_i.shape[0]))  # the largest chunk
        # kept per pair and layer: w1, w2, the activation's derivative (4.5 F) and the logits 2 (H + D)
        chunk_bytes = chunk_pairs * (9 * self.num_features // 2 + 2 * (self.num_heads + len(self.degrees))) \
            * edge_vectors.element_size()
        geo_bytes = chunk_pairs * (self.radial_basis.num_basis + self.m_tot + 1) * edge_vectors.element_size()
        num_chunks = len(self.chunk_bounds(idx_i.shape[0], step)) - 1
        budget = keep_bytes
        grad_was = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        # the pairs' geometry, the same in every layer: formed once per chunk when the budget allows
        geo = self.chunk_geometry(edge_vectors, step, budget // geo_bytes if budget > 0 else 0)
        budget -= len(geo) * geo_bytes
        g_geo: List[List[Tensor]] = []
        efa_sums: List[Optional[Tensor]] = []
        x = self.embed(z, total_charge, num_unpaired_electrons, batch, num_graphs, None)
        ev = torch.zeros(z.shape[0], self.m_tot, dtype=x.dtype, device=x.device)
        for k in range(self.num_layers):
            keep_chunks = min(num_chunks, budget // chunk_bytes) if budget > 0 else 0
            budget -= keep_chunks * chunk_bytes
            kept_k: List[List[Tensor]] = []
            x_att, ev_att = self.messages_keep(k, x, ev, edge_vectors, idx_i, idx_j, step, kept_k, keep_chunks, geo)
            kept.append(kept_k)
            saved.append([x, ev, x_att, ev_att])
            # efa_global_sums (capturable steps, as ahead-of-time compilation): the EFA key-value sums first
            sums_k: Optional[Tensor] = None
            if self.efa_global_sums and num_graphs == 1 and self.efa_layers[k]:
                sums_k = self.efa_sums_ev(k, x, ev, positions, cell, pbc)
            efa_sums.append(sums_k)
            x, ev = self.update(k, x, ev, x_att, ev_att, positions, batch, num_graphs, cell, pbc, sums_k)
        energy, lr_raw, sums = self.readout(x, z, batch, num_graphs)
        lr = self.long_range_values(lr_raw, sums, total_charge, batch)
        g_e = torch.ones_like(energy)
        gp = self.pair_energies_vjp(z, lr, edge_vectors, idx_i, idx_j, edge_vectors_lr, idx_i_lr, idx_j_lr, g_e,
                                    chunk_size, True)  # (without a graph: the ZBL part enables autograd where it needs it)
        torch.set_grad_enabled(grad_was)
        energy = energy + gp[3]
        g_vec = gp[0]
        gl = self.long_range_values_vjp(lr_raw, sums, total_charge, batch, gp[2])
        g_x = self.readout_vjp(x, z, batch, num_graphs, g_e, gl[0], gl[1])
        g_ev = torch.zeros_like(ev)
        g_pos = torch.zeros_like(positions)
        g_cell = torch.zeros_like(cell)
        for step_back in range(self.num_layers):
            k = self.num_layers - 1 - step_back
            s = saved[k]
            sums_k = efa_sums[k]
            gu = self.update_vjp(k, s[0], s[1], s[2], s[3], positions, batch, num_graphs, cell, pbc, sums_k,
                                 g_x, g_ev, k > 0)
            g_pos = g_pos + gu[4]
            g_cell = g_cell + gu[5]
            if sums_k is not None:  # the sums' own backward: to the layer's inputs, positions and cell
                ge = self.efa_sums_vjp(k, s[0], s[1], positions, cell, pbc, gu[6])
                gu[0] = gu[0] + ge[0]
                gu[1] = gu[1] + ge[1]
                g_pos = g_pos + ge[2]
                g_cell = g_cell + ge[3]
            gm = self.messages_keep_vjp(k, s[0], s[1], edge_vectors, idx_i, idx_j, gu[2], gu[3], step, k > 0,
                                        kept[k], geo, g_geo)
            kept[k].clear()  # this layer's filter state is no longer needed
            g_vec = g_vec + gm[2]
            g_x = gu[0] + gm[0]
            g_ev = gu[1] + gm[1]
        b = self.chunk_bounds(idx_i.shape[0], step)
        for c in range(len(g_geo)):  # the shared geometry's backward, once for all layers
            g_vec[b[c]:b[c + 1]] = g_vec[b[c]:b[c + 1]] + self.geometry_vjp(edge_vectors[b[c]:b[c + 1]], g_geo[c])
        return self.outputs(energy, lr), [g_vec, gp[1], g_pos, g_cell]
