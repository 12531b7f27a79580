"""The So3krates network (Frank et al. 2024) with the optional SO3LR physical terms (Kabylda et al. 2024).

`So3krates(config).forward(...)` maps a graph to per-atom energies (eV) and, for SO3LR, partial
charges (e) and Hirshfeld ratios. Units: Å, eV, e. TorchScript-able; float32 and float64.
See docs/internals.md for the exact contract.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .basis import CutoffFunction, RadialBasis, safe_norm, spherical_harmonics
from .config import So3kratesConfig
from .efa import EFABlock
from .embedding import AtomTypeEmbedding, ChargeSpinEmbedding
from .layer import So3kratesLayer
from .readout import EnergyHead, HirshfeldHead, PartialChargesHead


def _or_zeros(g: Optional[Tensor], like: Tensor) -> Tensor:
    """A gradient from autograd.grad(..., allow_unused=True), zeros where the input was unused."""
    if g is None:
        return torch.zeros_like(like)
    return g


class So3krates(nn.Module):
    """So3krates / SO3LR model.

    forward(positions [N,3] Å, atomic_numbers [N] long, edge_vectors [E,3] Å (r_j - r_i + shift),
            idx_i [E], idx_j [E], edge_vectors_lr [E',3] Å, idx_i_lr [E'], idx_j_lr [E'],
            batch [N] long, num_graphs, total_charge [B] e, num_unpaired_electrons [B],
            cell [B,3,3] Å, pbc [B,3] bool) -> Dict[str, Tensor]
      "atomic_energies" [N] eV (local network + ZBL + electrostatics + dispersion, as configured),
      "partial_charges" [N] e (when electrostatics is on), "hirshfeld_ratios" [N] (when dispersion is on).
    The local graph must hold both directions of every pair within `config.cutoff`; the long-range
    graph (both directions) every pair within `config.cutoff_lr` (all pairs when cutoff_lr is None).
    """

    def __init__(self, config: So3kratesConfig):
        super().__init__()
        config.validate()
        self.config = config  # not used in forward (TorchScript ignores non-tensor Python objects)
        self.cutoff: float = float(config.cutoff)
        # long-range pair cutoff in Å; -1.0 = no cutoff (all pairs; open systems only)
        self.cutoff_lr: float = float(config.cutoff_lr) if config.cutoff_lr is not None else -1.0
        self.long_range: bool = bool(config.long_range)  # needs the long-range pair graph
        # number of system-wide sums needed in engine mode (see global_partials)
        self.num_globals: int = 2 if config.electrostatic_energy_bool else 0
        self.degrees: List[int] = [int(d) for d in config.degrees]
        self.m_tot: int = sum(2 * l + 1 for l in self.degrees)
        self.num_layers: int = int(config.num_layers)
        self.has_efa: bool = any(bool(b) for b in (config.efa_layers or []))
        self.species: List[int] = [int(z) for z in config.species] if config.species is not None \
            else list(range(1, config.zmax + 1))
        f = config.num_features

        self.radial_basis = RadialBasis(config.radial_basis_fn, config.num_radial_basis_fn, config.cutoff)
        self.cutoff_fn = CutoffFunction(config.cutoff_fn, config.cutoff, config.cutoff_fn_p)

        self.atom_embedding = AtomTypeEmbedding(f, config.zmax)
        self.charge_embedding = \
            ChargeSpinEmbedding(f, config.zmax, "silu") if config.use_charge_embed else None
        self.spin_embedding = \
            ChargeSpinEmbedding(f, config.zmax, "silu") if config.use_spin_embed else None
        self.num_embeddings: int = 1 + int(config.use_charge_embed) + int(config.use_spin_embed)

        avg = float(config.avg_num_neighbors) if config.avg_num_neighbors is not None else 1.0
        self.layers = nn.ModuleList([
            So3kratesLayer(f, config.num_heads, self.degrees, config.num_radial_basis_fn,
                           config.message_normalization, avg, config.activation_fn, config.qk_non_linearity,
                           config.residual_mlp_1, config.residual_mlp_2,
                           config.layer_normalization_1, config.layer_normalization_2,
                           EFABlock.from_config(config, k))
            for k in range(config.num_layers)])

        self.energy_head = EnergyHead(f, config.energy_regression_dim, config.energy_activation_fn, config.zmax,
                                      config.energy_learn_atomic_type_scales,
                                      config.energy_learn_atomic_type_shifts)
        self.charges_head = \
            PartialChargesHead(f, config.energy_regression_dim, config.energy_activation_fn) \
            if config.electrostatic_energy_bool else None
        self.hirshfeld_head = \
            HirshfeldHead(f, config.energy_regression_dim, config.energy_activation_fn) \
            if config.dispersion_energy_bool else None

        self.zbl = None
        self.electrostatics = None
        self.dispersion = None
        if config.zbl_repulsion_bool or config.electrostatic_energy_bool or config.dispersion_energy_bool:
            from . import longrange  # another part of the package; imported only when needed
            if config.zbl_repulsion_bool:
                self.zbl = longrange.ZBLRepulsion(cutoff=config.cutoff)
            if config.electrostatic_energy_bool:
                self.electrostatics = longrange.ElectrostaticEnergy(
                    scale=config.electrostatic_energy_scale, cutoff_lr=config.cutoff_lr)
            if config.dispersion_energy_bool:
                self.dispersion = longrange.DispersionEnergy(
                    scale=config.dispersion_energy_scale, cutoff_lr=config.cutoff_lr,
                    damping=config.dispersion_energy_cutoff_lr_damping)

    @torch.jit.export
    def geometry(self, edge_vectors: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Edge lengths d [E] Å, radial basis [E, K], cutoff values [E] and Y_l(r_ij/|r_ij|) [E, m_tot]."""
        d = safe_norm(edge_vectors)  # [E]
        rbf = self.radial_basis(d)  # [E, K]
        cut = self.cutoff_fn(d)  # [E]
        d_pos = d > 0.0
        unit = edge_vectors / torch.where(d_pos, d, torch.ones_like(d)).unsqueeze(-1)
        unit = torch.where(d_pos.unsqueeze(-1), unit, torch.zeros_like(unit))
        ylm = spherical_harmonics(unit, self.degrees)  # [E, m_tot]
        return d, rbf, cut, ylm

    @torch.jit.export
    def embed(self, atomic_numbers: Tensor, total_charge: Tensor, num_unpaired_electrons: Tensor, batch: Tensor,
              num_graphs: int, nlocal: int = -1) -> Tensor:
        """Initial invariant features [N, F]: atom-type (+ charge, spin) embeddings."""
        z = atomic_numbers
        x = self.atom_embedding(z)
        charge_embedding = self.charge_embedding
        if charge_embedding is not None:
            x = x + charge_embedding(z, total_charge, batch, num_graphs, nlocal)
        spin_embedding = self.spin_embedding
        if spin_embedding is not None:
            x = x + spin_embedding(z, num_unpaired_electrons, batch, num_graphs, nlocal)
        return x / math.sqrt(float(self.num_embeddings))

    @torch.jit.export
    def representation(self, positions: Tensor, atomic_numbers: Tensor, edge_vectors: Tensor, idx_i: Tensor,
                       idx_j: Tensor, batch: Tensor, num_graphs: int, total_charge: Tensor,
                       num_unpaired_electrons: Tensor, cell: Tensor, pbc: Tensor, nlocal: int = -1
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Embedding + message passing: invariant features x [N, F], Euclidean variables ev [N, m_tot]
        (degrees in `config.degrees`, m = -l..l each), edge lengths d [E] Å and cutoff values [E]."""
        d, rbf, cut, ylm = self.geometry(edge_vectors)
        x = self.embed(atomic_numbers, total_charge, num_unpaired_electrons, batch, num_graphs, nlocal)
        ev = torch.zeros(atomic_numbers.shape[0], self.m_tot, dtype=x.dtype, device=x.device)

        for layer in self.layers:
            x, ev = layer(x, ev, rbf, ylm, cut, idx_i, idx_j, positions, batch, num_graphs, cell, pbc)
        return x, ev, d, cut

    # ------------------------------------------------------------------------------------------
    def forward(self, positions: Tensor, atomic_numbers: Tensor, edge_vectors: Tensor,
                idx_i: Tensor, idx_j: Tensor, edge_vectors_lr: Tensor, idx_i_lr: Tensor, idx_j_lr: Tensor,
                batch: Tensor, num_graphs: int, total_charge: Tensor, num_unpaired_electrons: Tensor,
                cell: Tensor, pbc: Tensor, nlocal: int = -1,
                global_sums: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """See the class docstring. Engine mode (LAMMPS, `so3krates.export`): `nlocal` >= 0 marks atoms
        0..nlocal-1 as owned, the rest as ghosts; `global_sums` [B, num_globals] are the system-wide
        sums of `global_partials` (all ranks), used instead of per-graph sums over the given atoms."""
        z = atomic_numbers
        x, ev, d, cut = self.representation(positions, atomic_numbers, edge_vectors, idx_i, idx_j, batch,
                                            num_graphs, total_charge, num_unpaired_electrons, cell, pbc, nlocal)

        out: Dict[str, Tensor] = {}
        energy = self.energy_head(x, z)

        zbl = self.zbl
        if zbl is not None:
            energy = energy + zbl(z, d, idx_i, idx_j, cut)

        d_lr = safe_norm(edge_vectors_lr)
        charges_head = self.charges_head
        if charges_head is not None:
            if global_sums is None:
                q = charges_head(x, z, batch, num_graphs, total_charge)
            else:
                q = charges_head.correct(charges_head.raw(x, z), batch, total_charge,
                                         global_sums[:, 0].to(x.dtype), global_sums[:, 1].to(x.dtype))
            out["partial_charges"] = q
            electrostatics = self.electrostatics
            if electrostatics is not None:
                energy = energy + electrostatics(q, d_lr, idx_i_lr, idx_j_lr)
        hirshfeld_head = self.hirshfeld_head
        if hirshfeld_head is not None:
            v = hirshfeld_head(x, z)
            out["hirshfeld_ratios"] = v
            dispersion = self.dispersion
            if dispersion is not None:
                energy = energy + dispersion(v, z, d_lr, idx_i_lr, idx_j_lr)

        out["atomic_energies"] = energy
        return out

    @torch.jit.export
    def energy_and_gradients(self, positions: Tensor, atomic_numbers: Tensor, edge_vectors: Tensor,
                             idx_i: Tensor, idx_j: Tensor, edge_vectors_lr: Tensor, idx_i_lr: Tensor,
                             idx_j_lr: Tensor, batch: Tensor, num_graphs: int, total_charge: Tensor,
                             num_unpaired_electrons: Tensor, cell: Tensor, pbc: Tensor,
                             chunk_size: int = 0, half_pairs: bool = False) -> Tuple[Dict[str, Tensor], List[Tensor]]:
        """``forward``'s outputs (values, no graph) and the gradients of the total energy
        E = sum(atomic_energies) (eV) w.r.t. the inputs: [dE/d edge_vectors [E,3] eV/Å,
        dE/d edge_vectors_lr [E',3] eV/Å, dE/d positions [N,3] eV/Å (explicit dependence: EFA),
        dE/d cell [B,3,3] eV/Å (periodic EFA)]. Forces and stress follow by the chain rule through
        the edge vectors (``So3kratesPotential`` does this in eval mode).

        Same values as ``forward`` + autograd, with memory O(N·F·layers + chunk·F) instead of
        O(E·F·layers): the layers run once without a graph keeping only the per-atom features of each
        layer; the backward pass then recomputes each layer's edge messages in chunks of
        ``chunk_size`` edges (0: about 2^21 / num_features) and back-propagates through one chunk at a
        time; the long-range pair terms use their analytic derivatives. First derivatives only (no
        graph is returned: use ``forward`` + autograd for force training or Hessians).

        ``half_pairs``: both graphs list each unordered pair once (``neighbor_list(..., half=True)``):
        the edge j -> i with vector -r_ij is implied. The filters, geometry and long-range pair terms
        are then computed once per pair; the gradients refer to the listed vectors."""
        n = atomic_numbers.shape[0]
        z = atomic_numbers
        f = self.atom_embedding.embedding.weight.shape[1]
        chunk = chunk_size if chunk_size > 0 else max(1024, 2097152 // f)
        vec = edge_vectors.detach()
        vec_lr = edge_vectors_lr.detach()
        pos = positions.detach()
        cell_d = cell.detach()
        n_edges = vec.shape[0]
        bounds: List[int] = list(range(0, n_edges, chunk)) + [n_edges]
        grad_was_enabled = torch.is_grad_enabled()

        # 1. layers without a graph; keep the per-atom inputs and attention sums of every layer
        torch.set_grad_enabled(False)
        x = self.embed(z, total_charge, num_unpaired_electrons, batch, num_graphs, -1)
        ev = torch.zeros(n, self.m_tot, dtype=x.dtype, device=x.device)
        xs: List[Tensor] = []
        evs: List[Tensor] = []
        x_atts: List[Tensor] = []
        ev_atts: List[Tensor] = []
        for layer in self.layers:
            att = layer.attention_block
            p = att.project(x)
            x_att = torch.zeros_like(x)
            ev_att = torch.zeros_like(ev)
            for c in range(len(bounds) - 1):
                ii = idx_i[bounds[c]:bounds[c + 1]]
                jj = idx_j[bounds[c]:bounds[c + 1]]
                d, rbf, cut, ylm = self.geometry(vec[bounds[c]:bounds[c + 1]])
                dev = ev.index_select(0, jj) - ev.index_select(0, ii)
                if half_pairs:
                    m = att.pair_messages([t.index_select(0, ii) for t in p], [t.index_select(0, jj) for t in p],
                                          dev, rbf, ylm, cut)
                    x_att.index_add_(0, ii, m[0])
                    ev_att.index_add_(0, ii, m[1])
                    x_att.index_add_(0, jj, m[2])
                    ev_att.index_add_(0, jj, m[3])
                else:
                    msg, ev_msg = att.edge_messages(p[0].index_select(0, ii), p[1].index_select(0, ii),
                                                    p[2].index_select(0, jj), p[3].index_select(0, jj),
                                                    p[4].index_select(0, jj), dev, rbf, ylm, cut)
                    x_att.index_add_(0, ii, msg)
                    ev_att.index_add_(0, ii, ev_msg)
            xs.append(x)
            evs.append(ev)
            x_atts.append(x_att)
            ev_atts.append(ev_att)
            x, ev = layer.update(x, ev, x_att, ev_att, pos, batch, num_graphs, cell_d, pbc)
        torch.set_grad_enabled(True)

        # 2. readouts and physical terms; adjoint of the last features
        out: Dict[str, Tensor] = {}
        x_last = x.detach().requires_grad_(True)
        e_head = self.energy_head(x_last, z)
        atomic = e_head.detach()
        scalar = e_head.sum()  # its gradient w.r.t. x_last is the adjoint of the readouts
        g_vec = torch.zeros_like(vec)
        zbl = self.zbl
        if zbl is not None:
            e_zbl = torch.zeros_like(atomic)
            for c in range(len(bounds) - 1):
                ii = idx_i[bounds[c]:bounds[c + 1]]
                jj = idx_j[bounds[c]:bounds[c + 1]]
                v = vec[bounds[c]:bounds[c + 1]].requires_grad_(True)
                d = safe_norm(v)
                cut = self.cutoff_fn(d)
                if half_pairs:
                    e_c = zbl(z, torch.cat([d, d]), torch.cat([ii, jj]), torch.cat([jj, ii]), torch.cat([cut, cut]))
                else:
                    e_c = zbl(z, d, ii, jj, cut)
                g = torch.autograd.grad([e_c.sum()], [v], allow_unused=True)[0]
                if g is not None:
                    g_vec[bounds[c]:bounds[c + 1]] = g
                e_zbl = e_zbl + e_c.detach()
            atomic = atomic + e_zbl
        d_lr = safe_norm(vec_lr)
        de_dr_lr = torch.zeros_like(d_lr)
        charges_head = self.charges_head
        if charges_head is not None:
            q = charges_head(x_last, z, batch, num_graphs, total_charge)
            out["partial_charges"] = q.detach()
            electrostatics = self.electrostatics
            if electrostatics is not None:
                r = electrostatics.energies_and_derivatives(q, d_lr, idx_i_lr, idx_j_lr, electrostatics.use_cutoff,
                                                            electrostatics.cutoff_lr, half_pairs)
                atomic = atomic + r[0]
                de_dr_lr = de_dr_lr + r[1]
                de_dq = r[2].index_add(0, idx_j_lr, r[3])
                scalar = scalar + (de_dq * q).sum()
        hirshfeld_head = self.hirshfeld_head
        if hirshfeld_head is not None:
            h = hirshfeld_head(x_last, z)
            out["hirshfeld_ratios"] = h.detach()
            dispersion = self.dispersion
            if dispersion is not None:
                r = dispersion.energies_and_derivatives(h, z, d_lr, idx_i_lr, idx_j_lr, dispersion.use_cutoff,
                                                        dispersion.cutoff_lr, dispersion.damping, half_pairs)
                atomic = atomic + r[0]
                de_dr_lr = de_dr_lr + r[1]
                de_dh = r[2].index_add(0, idx_j_lr, r[3])
                scalar = scalar + (de_dh * h).sum()
        out["atomic_energies"] = atomic
        d_pos = d_lr > 0.0
        unit_lr = vec_lr / torch.where(d_pos, d_lr, torch.ones_like(d_lr)).unsqueeze(-1)
        g_vec_lr = torch.where(d_pos.unsqueeze(-1), unit_lr, torch.zeros_like(unit_lr)) * de_dr_lr.unsqueeze(-1)
        gx = torch.autograd.grad([scalar], [x_last], allow_unused=True)[0]
        if gx is None:
            gx = torch.zeros_like(x)
        gev = torch.zeros_like(ev)

        # 3. back through the layers, last to first (ModuleList: select by index inside the loop)
        g_pos = torch.zeros_like(pos)
        g_cell = torch.zeros_like(cell_d)
        num_layers = len(xs)
        for step in range(num_layers):
            k = num_layers - 1 - step
            for kk, blk in enumerate(self.layers):
                if kk == k:
                    inner = k > 0  # layer 0's inputs do not depend on the positions
                    x_in = xs[k].detach().requires_grad_(inner)
                    ev_in = evs[k].detach().requires_grad_(inner)
                    x_att = x_atts[k].detach().requires_grad_(True)
                    ev_att = ev_atts[k].detach().requires_grad_(True)
                    pos_l = pos.requires_grad_(True) if self.has_efa else pos
                    cell_l = cell_d.requires_grad_(True) if self.has_efa else cell_d
                    x_out, ev_out = blk.update(x_in, ev_in, x_att, ev_att, pos_l, batch, num_graphs, cell_l, pbc)
                    leaves = [x_att, ev_att]
                    if inner:
                        leaves = leaves + [x_in, ev_in]
                    if self.has_efa:
                        leaves = leaves + [pos_l, cell_l]
                    go: List[Optional[Tensor]] = [gx, gev]
                    gu = torch.autograd.grad([x_out, ev_out], leaves, grad_outputs=go, allow_unused=True)
                    g_xatt = _or_zeros(gu[0], x_att)
                    g_evatt = _or_zeros(gu[1], ev_att)
                    if self.has_efa:
                        g_pos = g_pos + _or_zeros(gu[len(gu) - 2], pos)
                        g_cell = g_cell + _or_zeros(gu[len(gu) - 1], cell_d)
                    # edge messages, one chunk at a time
                    attb = blk.attention_block
                    x_p = xs[k].detach().requires_grad_(inner)
                    p = attb.project(x_p)
                    pd: List[Tensor] = [t.detach() for t in p]
                    gp: List[Tensor] = [torch.zeros_like(t) for t in pd]
                    g_ev_edges = torch.zeros_like(ev)
                    ev_k = evs[k]
                    for c in range(len(bounds) - 1):
                        ii = idx_i[bounds[c]:bounds[c + 1]]
                        jj = idx_j[bounds[c]:bounds[c + 1]]
                        v = vec[bounds[c]:bounds[c + 1]].requires_grad_(True)
                        d, rbf, cut, ylm = self.geometry(v)
                        dev = (ev_k.index_select(0, jj) - ev_k.index_select(0, ii)).requires_grad_(inner)
                        if half_pairs:
                            p_i = [t.index_select(0, ii).requires_grad_(inner) for t in pd]
                            p_j = [t.index_select(0, jj).requires_grad_(inner) for t in pd]
                            m = attb.pair_messages(p_i, p_j, dev, rbf, ylm, cut)
                            ins = [v]
                            if inner:
                                ins = ins + p_i + p_j + [dev]
                            gm: List[Optional[Tensor]] = [g_xatt.index_select(0, ii), g_evatt.index_select(0, ii),
                                                          g_xatt.index_select(0, jj), g_evatt.index_select(0, jj)]
                            ge = torch.autograd.grad(m, ins, grad_outputs=gm, allow_unused=True)
                            g_vec[bounds[c]:bounds[c + 1]] += _or_zeros(ge[0], v)
                            if inner:
                                for t in range(5):
                                    gp[t].index_add_(0, ii, _or_zeros(ge[1 + t], p_i[t]))
                                    gp[t].index_add_(0, jj, _or_zeros(ge[6 + t], p_j[t]))
                                g_dev = _or_zeros(ge[11], dev)
                                g_ev_edges.index_add_(0, jj, g_dev)
                                g_ev_edges.index_add_(0, ii, -g_dev)
                        else:
                            q1 = pd[0].index_select(0, ii).requires_grad_(inner)
                            q2 = pd[1].index_select(0, ii).requires_grad_(inner)
                            k1 = pd[2].index_select(0, jj).requires_grad_(inner)
                            k2 = pd[3].index_select(0, jj).requires_grad_(inner)
                            v1 = pd[4].index_select(0, jj).requires_grad_(inner)
                            msg, ev_msg = attb.edge_messages(q1, q2, k1, k2, v1, dev, rbf, ylm, cut)
                            ins = [v]
                            if inner:
                                ins = ins + [q1, q2, k1, k2, v1, dev]
                            gm2: List[Optional[Tensor]] = [g_xatt.index_select(0, ii), g_evatt.index_select(0, ii)]
                            ge = torch.autograd.grad([msg, ev_msg], ins, grad_outputs=gm2, allow_unused=True)
                            g_vec[bounds[c]:bounds[c + 1]] += _or_zeros(ge[0], v)
                            if inner:
                                gp[0].index_add_(0, ii, _or_zeros(ge[1], q1))
                                gp[1].index_add_(0, ii, _or_zeros(ge[2], q2))
                                gp[2].index_add_(0, jj, _or_zeros(ge[3], k1))
                                gp[3].index_add_(0, jj, _or_zeros(ge[4], k2))
                                gp[4].index_add_(0, jj, _or_zeros(ge[5], v1))
                                g_dev = _or_zeros(ge[6], dev)
                                g_ev_edges.index_add_(0, jj, g_dev)
                                g_ev_edges.index_add_(0, ii, -g_dev)
                    if inner:
                        gpo: List[Optional[Tensor]] = [gp[0], gp[1], gp[2], gp[3], gp[4]]
                        g_proj = torch.autograd.grad(p, [x_p], grad_outputs=gpo, allow_unused=True)[0]
                        gx = _or_zeros(gu[2], x_in) + _or_zeros(g_proj, x_in)
                        gev = _or_zeros(gu[3], ev_in) + g_ev_edges
        torch.set_grad_enabled(grad_was_enabled)
        return out, [g_vec, g_vec_lr, g_pos, g_cell]

    @torch.jit.export
    def global_partials(self, positions: Tensor, atomic_numbers: Tensor, edge_vectors: Tensor, idx_i: Tensor,
                        idx_j: Tensor, batch: Tensor, num_graphs: int, total_charge: Tensor,
                        num_unpaired_electrons: Tensor, nlocal: int = -1) -> Tensor:
        """[B, num_globals] partial sums over the owned atoms (index < nlocal; all if nlocal < 0) of the
        quantities global terms need: [sum of raw partial charges (e), number of atoms] with
        electrostatics (SO3LR), nothing for local models. Summed over all ranks they are the
        `global_sums` of `forward`. Exact at any number of ranks when total charge and spin are zero;
        otherwise the charge/spin embedding normalisation is per rank (exact on one rank)."""
        charges_head = self.charges_head
        if charges_head is None:
            return torch.zeros(num_graphs, 0, dtype=positions.dtype, device=positions.device)
        cell = torch.zeros(num_graphs, 3, 3, dtype=positions.dtype, device=positions.device)
        pbc = torch.zeros(num_graphs, 3, dtype=torch.bool, device=positions.device)
        x, ev, d, cut = self.representation(positions, atomic_numbers, edge_vectors, idx_i, idx_j, batch,
                                            num_graphs, total_charge, num_unpaired_electrons, cell, pbc, nlocal)
        raw = charges_head.raw(x, atomic_numbers)
        ones = torch.ones_like(raw)
        if nlocal >= 0:
            owned = torch.arange(raw.shape[0], device=raw.device) < nlocal
            raw = torch.where(owned, raw, torch.zeros_like(raw))
            ones = torch.where(owned, ones, torch.zeros_like(ones))
        zeros = torch.zeros(num_graphs, dtype=raw.dtype, device=raw.device)
        return torch.stack([zeros.index_add(0, batch, raw), zeros.index_add(0, batch, ones)], dim=1)
