"""The So3krates network (Frank et al. 2024) with the optional SO3LR physical terms (Kabylda et al. 2024).

A model evaluation is a sequence of *stages*; every way of running the model composes the same
stage methods of :class:`So3krates`:

1. ``embed`` (atom types, total charge and spin; its normalisation ``embedding_weight_sums`` is a
   sum over the whole system),
2. per layer ``k``: ``messages`` (attention sums over the pairs of the local graph, built from
   ``project`` and ``pair_messages``), then ``update`` (per atom: EFA, residual MLPs, exchange
   block; EFA's key-value sums ``efa_sums`` run over the whole system),
3. ``readout`` (per-atom energy, raw partial charges and Hirshfeld ratios, and the per-graph sums
   of the charge constraint), ``long_range_values`` (charges corrected to the total charge),
4. pair terms ``zbl_pair_energy`` (local pairs) and ``long_range_pair_energy`` (electrostatics +
   dispersion, long-range pairs), each credited half to each atom of the pair.

:meth:`So3krates.forward` chains them with autograd (training, Hessians); the memory-lean inference
pass (``energy_and_gradients``, :mod:`so3krates.potential.backward`) chains them with their
explicit backward methods; the engines (``so3krates.export``, the LAMMPS pair style) call them
stage by stage with MPI communication in between. Units: Å, eV, e.

Graphs are *pair lists*: every unordered pair {i, j} of atoms within the cutoff appears once, as
``idx_i``, ``idx_j`` with the vector ``r_j - r_i (+ shift · cell)``; messages flow both ways.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .backward import StageGradients
from .config import So3kratesConfig
from .graph.segments import graph_sums
from .nn.basis import CutoffFunction, RadialBasis, safe_norm, spherical_harmonics
from .nn.efa_block import EFABlock
from .nn.embedding import AtomTypeEmbedding, ChargeSpinEmbedding
from .nn.layer import So3kratesLayer
from .nn.readout import EnergyHead, HirshfeldHead, PartialChargesHead
from .physics.dispersion import DispersionEnergy
from .physics.electrostatics import ElectrostaticEnergy
from .physics.zbl import ZBLRepulsion

#: pairs per chunk of the chunked stages is CHUNK_ELEMENTS / num_features (bounded temporaries)
CHUNK_ELEMENTS = 2097152


class So3krates(StageGradients):
    """So3krates / SO3LR model; see the module docstring for the stages.

    forward(positions [N,3] Å, atomic_numbers [N] long, edge_vectors [P,3] Å, idx_i [P], idx_j [P],
            edge_vectors_lr [P',3] Å, idx_i_lr [P'], idx_j_lr [P'], batch [N] long, num_graphs,
            total_charge [B] e, num_unpaired_electrons [B], cell [B,3,3] Å, pbc [B,3] bool) -> Dict
      "atomic_energies" [N] eV (network + ZBL + electrostatics + dispersion, as configured),
      "partial_charges" [N] e (with electrostatics), "hirshfeld_ratios" [N] (with dispersion).
    The local pair list holds every pair within ``config.cutoff`` once; the long-range list every
    pair within ``config.cutoff_lr`` once (all pairs when cutoff_lr is None).
    """

    def __init__(self, config: So3kratesConfig):
        super().__init__()
        config.validate()
        self.config = config  # not used by the stages (TorchScript ignores non-tensor Python objects)
        self.cutoff: float = float(config.cutoff)
        # long-range pair cutoff in Å; -1.0 = no cutoff (all pairs; open systems only)
        self.cutoff_lr: float = float(config.cutoff_lr) if config.cutoff_lr is not None else -1.0
        self.long_range: bool = bool(config.long_range)  # needs the long-range pair list
        self.degrees: List[int] = [int(d) for d in config.degrees]
        self.m_tot: int = sum(2 * l + 1 for l in self.degrees)
        self.num_layers: int = int(config.num_layers)
        self.num_features: int = int(config.num_features)
        self.num_heads: int = int(config.num_heads)
        self.chunk_elements: int = CHUNK_ELEMENTS
        self.efa_layers: List[bool] = [bool(config.efa_layers[k]) if k < len(config.efa_layers) else False
                                       for k in range(self.num_layers)]
        self.has_efa: bool = any(self.efa_layers)
        # direction-dependent EFA queries/keys (degrees 1..L of the layer's input ev); 0 = off
        self.efa_qk_degrees: int = int(config.efa_qk_degrees) if self.has_efa else 0
        # forward forms each EFA layer's key-value sums first (efa_sums) and updates from them, as the
        # engines do; one graph only. Set by ahead-of-time compilation (so3krates.export.pt2): that
        # path has no data-dependent shapes. Same values as the default path up to rounding.
        self.efa_global_sums: bool = False
        # the periodic EFA's mode is 'simplex' (shapes independent of the cell with the per-pair layout)
        self.efa_simplex: bool = str(config.efa_periodic_mode) == "simplex"
        self.species: List[int] = [int(z) for z in config.species] if config.species is not None \
            else list(range(1, config.zmax + 1))
        # per-atom long-range values: [partial charge (e)] with electrostatics, [Hirshfeld ratio] with dispersion
        self.exchange_width: int = int(config.electrostatic_energy_bool) + int(config.dispersion_energy_bool)
        # per-graph sums of the readout: [sum of raw charges (e), number of atoms] with electrostatics
        self.num_readout_sums: int = 2 if config.electrostatic_energy_bool else 0
        f = config.num_features

        self.radial_basis = RadialBasis(config.radial_basis_fn, config.num_radial_basis_fn, config.cutoff)
        self.cutoff_fn = CutoffFunction(config.cutoff_fn, config.cutoff, config.cutoff_fn_p)
        self.atom_embedding = AtomTypeEmbedding(f, config.zmax)
        self.charge_embedding = ChargeSpinEmbedding(f, config.zmax, "silu") if config.use_charge_embed else None
        self.spin_embedding = ChargeSpinEmbedding(f, config.zmax, "silu") if config.use_spin_embed else None
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
                                      config.energy_learn_atomic_type_scales, config.energy_learn_atomic_type_shifts)
        self.charges_head = PartialChargesHead(f, config.energy_regression_dim, config.energy_activation_fn) \
            if config.electrostatic_energy_bool else None
        self.hirshfeld_head = HirshfeldHead(f, config.energy_regression_dim, config.energy_activation_fn) \
            if config.dispersion_energy_bool else None
        self.zbl = ZBLRepulsion() if config.zbl_repulsion_bool else None
        self.electrostatics = ElectrostaticEnergy(config.electrostatic_energy_scale, config.cutoff_lr) \
            if config.electrostatic_energy_bool else None
        self.dispersion = DispersionEnergy(config.dispersion_energy_scale, config.cutoff_lr,
                                           config.dispersion_energy_cutoff_lr_damping) \
            if config.dispersion_energy_bool else None

    @torch.jit.export
    def chunk(self, chunk_size: int) -> int:
        """Pairs per chunk: ``chunk_size`` if positive, else CHUNK_ELEMENTS / num_features."""
        return chunk_size if chunk_size > 0 else max(1024, self.chunk_elements // self.num_features)

    @torch.jit.export
    def chunk_bounds(self, num_pairs: int, chunk_size: int) -> List[int]:
        """Start of every chunk of pairs, then ``num_pairs``; ``chunk_size`` < 0: one chunk (autograd
        through everything anyway; keeps the number of pairs symbolic for torch.export)."""
        if chunk_size < 0:
            return [0, num_pairs]
        bounds = list(range(0, num_pairs, self.chunk(chunk_size)))
        bounds.append(num_pairs)
        return bounds

    @torch.jit.export
    def chunk_bounds_lr(self, num_pairs: int, chunk_size: int) -> List[int]:
        """``chunk_bounds`` for the long-range pairs: their terms are ~80 elementwise operations on [P]
        arrays, cheap per pair, so the default chunk is CHUNK_ELEMENTS / 32 pairs (4x the local chunk of
        SO3LR: a quarter of the operator calls, ~20 % less time per long-range pass)."""
        if chunk_size != 0:
            return self.chunk_bounds(num_pairs, chunk_size)
        return self.chunk_bounds(num_pairs, max(self.chunk(0), self.chunk_elements // 32))

    @torch.jit.export
    def geometry(self, edge_vectors: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Pair lengths d [P] Å, radial basis [P, K], cutoff values [P] and Y_l(r_ij/|r_ij|) [P, m_tot]."""
        d = safe_norm(edge_vectors)
        d_pos = d > 0.0
        unit = edge_vectors / torch.where(d_pos, d, torch.ones_like(d)).unsqueeze(-1)
        unit = torch.where(d_pos.unsqueeze(-1), unit, torch.zeros_like(unit))
        return d, self.radial_basis(d), self.cutoff_fn(d), spherical_harmonics(unit, self.degrees)

    # ------------------------------------------------------------------------ stage 1: embedding
    @torch.jit.export
    def embedding_weight_sums(self, atomic_numbers: Tensor, total_charge: Tensor, num_unpaired_electrons: Tensor,
                              batch: Tensor, num_graphs: int) -> Tensor:
        """[B, 2]: per graph the sums of the charge- and spin-embedding weights over the given atoms
        (zeros for an embedding the model does not have): the normalisation of :meth:`embed`."""
        out = torch.zeros(num_graphs, 2, dtype=self.atom_embedding.embedding.weight.dtype,
                          device=atomic_numbers.device)
        ce = self.charge_embedding
        if ce is not None:
            out[:, 0] = ce.weight_sums(atomic_numbers, total_charge, batch, num_graphs)
        se = self.spin_embedding
        if se is not None:
            out[:, 1] = se.weight_sums(atomic_numbers, num_unpaired_electrons, batch, num_graphs)
        return out

    @torch.jit.export
    def embed(self, atomic_numbers: Tensor, total_charge: Tensor, num_unpaired_electrons: Tensor, batch: Tensor,
              num_graphs: int, weight_sums: Optional[Tensor] = None) -> Tensor:
        """Initial invariant features [N, F]; ``weight_sums`` [B, 2] from ``embedding_weight_sums`` over
        the whole system (engines), None to normalise over the given atoms."""
        x = self.atom_embedding(atomic_numbers)
        ce = self.charge_embedding
        if ce is not None:
            x = x + ce(atomic_numbers, total_charge, batch, num_graphs,
                       None if weight_sums is None else weight_sums[:, 0])
        se = self.spin_embedding
        if se is not None:
            x = x + se(atomic_numbers, num_unpaired_electrons, batch, num_graphs,
                       None if weight_sums is None else weight_sums[:, 1])
        return x / math.sqrt(float(self.num_embeddings))

    # ------------------------------------------------------------------------ stage 2: layers
    @torch.jit.export
    def project(self, k: int, x: Tensor) -> List[Tensor]:
        """Queries, keys and values of layer ``k`` per atom: [q1, q2, k1, k2, v1], each [N, F]."""
        out: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            if i == k:
                out = layer.attention_block.project(x)
        return out

    @torch.jit.export
    def pair_messages(self, k: int, p_i: List[Tensor], p_j: List[Tensor], ev_i: Tensor, ev_j: Tensor,
                      edge_vectors: Tensor, keep: bool = False) -> List[Tensor]:
        """Messages of layer ``k`` in both directions of P pairs: p_i / p_j the rows of ``project`` at
        the two atoms, ev_i / ev_j their Euclidean variables [P, m_tot], edge_vectors r_j - r_i [P, 3]
        -> [to i: [P, F], [P, m_tot], to j: [P, F], [P, m_tot]], with ``keep`` followed by the filter
        state for the backward (``AttentionBlock.filter_state``)."""
        d, rbf, cut, ylm = self.geometry(edge_vectors)
        return self.pair_messages_at(k, p_i, p_j, ev_i, ev_j, [rbf, cut, ylm], keep, None, None, None)

    @torch.jit.export
    def pair_messages_at(self, k: int, p_i: List[Tensor], p_j: List[Tensor], ev_i: Tensor, ev_j: Tensor,
                         geo: List[Tensor], keep: bool = False, tab: Optional[List[Tensor]] = None,
                         idx: Optional[List[Tensor]] = None, x_att: Optional[Tensor] = None) -> List[Tensor]:
        """``pair_messages`` from the pairs' geometry ``geo`` = [rbf [P, K], cut [P], ylm [P, m_tot]]
        (``geometry``; the same in every layer, so the lean pass forms it once per chunk); ``tab``, ``idx``,
        ``x_att``: see ``AttentionBlock.pair_messages`` (only when ``indexed_now``)."""
        out: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            if i == k:
                out = layer.attention_block.pair_messages(p_i, p_j, ev_j - ev_i, geo[0], geo[2], geo[1], keep, tab,
                                                          idx, x_att)
        return out

    def indexed_now(self, k: int, x: Tensor) -> bool:
        """``AttentionBlock.indexed_now`` of layer ``k``: its logits may read q and k through the pair indices."""
        out = False
        for i, layer in enumerate(self.layers):
            if i == k:
                out = layer.attention_block.indexed_now(x)
        return out

    def gather_projections(self, p: List[Tensor], index: Tensor, indexed: bool) -> List[Tensor]:
        """The rows ``index`` of the five ``project`` tables; none with ``indexed`` (``indexed_now``: the
        fused kernels read them through the indices), five empty tensors."""
        if indexed:
            none = torch.empty(0, dtype=p[4].dtype, device=p[4].device)
            return [none, none, none, none, none]
        return [t.index_select(0, index) for t in p]

    @torch.jit.export
    def messages(self, k: int, x: Tensor, ev: Tensor, edge_vectors: Tensor, idx_i: Tensor, idx_j: Tensor,
                 chunk_size: int = 0) -> Tuple[Tensor, Tensor]:
        """Attention sums of layer ``k`` over the local pairs, x_att [N, F] and ev_att [N, m_tot], formed
        in chunks of pairs (``chunk_bounds``; differentiable; without a graph only one chunk's
        temporaries live)."""
        return self.messages_keep(k, x, ev, edge_vectors, idx_i, idx_j, chunk_size, [], 0, [])

    @torch.jit.export
    def messages_keep(self, k: int, x: Tensor, ev: Tensor, edge_vectors: Tensor, idx_i: Tensor, idx_j: Tensor,
                      chunk_size: int, kept: List[List[Tensor]], keep_chunks: int,
                      geo: List[List[Tensor]]) -> Tuple[Tensor, Tensor]:
        """``messages``, appending to ``kept`` the filter state and attention logits of its first ``keep_chunks``
        chunks, one entry per chunk, for ``messages_keep_vjp`` (a memory-for-speed trade of the lean pass:
        ~4.5 F numbers per pair), and taking the geometry of the first ``len(geo)`` chunks from ``geo`` (``chunk_geometry``)."""
        p = self.project(k, x)
        x_att = torch.zeros_like(x)
        ev_att = torch.zeros_like(ev)
        b = self.chunk_bounds(idx_i.shape[0], chunk_size)
        indexed = self.indexed_now(k, x)
        tab: Optional[List[Tensor]] = p if indexed else None
        acc: Optional[Tensor] = x_att if indexed else None  # indexed: invariant messages added here in place
        for c in range(len(b) - 1):
            ii = idx_i[b[c]:b[c + 1]]
            jj = idx_j[b[c]:b[c + 1]]
            keep = c < keep_chunks
            p_i = self.gather_projections(p, ii, indexed)
            p_j = self.gather_projections(p, jj, indexed)
            ij: Optional[List[Tensor]] = [ii, jj] if indexed else None
            if c < len(geo):
                m = self.pair_messages_at(k, p_i, p_j, ev.index_select(0, ii), ev.index_select(0, jj), geo[c], keep,
                                          tab, ij, acc)
            else:
                d, rbf, cut, ylm = self.geometry(edge_vectors[b[c]:b[c + 1]])
                m = self.pair_messages_at(k, p_i, p_j, ev.index_select(0, ii), ev.index_select(0, jj),
                                          [rbf, cut, ylm], keep, tab, ij, acc)
            if keep:
                kept.append(m[4:])
            if not indexed:
                x_att = x_att.index_add(0, ii, m[0]).index_add(0, jj, m[2])
            ev_att = ev_att.index_add(0, ii, m[1]).index_add(0, jj, m[3])
        return x_att, ev_att

    @torch.jit.export
    def chunk_geometry(self, edge_vectors: Tensor, chunk_size: int, max_chunks: int) -> List[List[Tensor]]:
        """[rbf, cut, ylm] (``geometry``, no graph) of the first ``max_chunks`` chunks of pairs: formed once
        and shared by all layers of the lean pass (~K + m_tot + 1 numbers per pair)."""
        b = self.chunk_bounds(edge_vectors.shape[0], chunk_size)
        out: List[List[Tensor]] = []
        for c in range(min(len(b) - 1, max_chunks)):
            d, rbf, cut, ylm = self.geometry(edge_vectors[b[c]:b[c + 1]])
            out.append([rbf, cut, ylm])
        return out

    @torch.jit.export
    def efa_settings(self) -> List[int]:
        """[efa_global_sums, then per layer: the EFA block's boundary, its simplex layout (-1: no EFA)]: the
        switches that make the EFA free of data-dependent shapes (``static_efa_settings``)."""
        out: List[int] = [int(self.efa_global_sums)]
        for layer in self.layers:
            block = layer.efa
            attn = block.efa
            out.append(block.boundary)
            out.append(attn.simplex_layout if attn is not None else -1)
        return out

    @torch.jit.export
    def static_efa_settings(self) -> List[int]:
        """``efa_settings`` for fully periodic boxes without a read-back to the host (capturable steps, as
        ahead-of-time compilation sets them): key-value sums first, boundary fixed to periodic, the per-pair
        simplex layout (shapes independent of the cell). Same values up to rounding."""
        out: List[int] = [1]
        for layer in self.layers:
            out.append(2)
            out.append(2 if layer.efa.efa is not None else -1)
        return out

    @torch.jit.export
    def set_efa_settings(self, settings: List[int]):
        """Apply ``efa_settings`` (as returned by it or ``static_efa_settings``)."""
        self.efa_global_sums = settings[0] != 0
        k = 1
        for layer in self.layers:
            block = layer.efa
            block.boundary = settings[k]
            attn = block.efa
            if attn is not None:
                attn.simplex_layout = settings[k + 1]
            k += 2

    @torch.jit.export
    def efa_sums(self, k: int, x: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor) -> Tensor:
        """Key-value sums of layer ``k``'s Euclidean fast attention over the given atoms (one graph;
        empty without EFA in that layer). Engines sum them over all ranks and pass the total to ``update``.
        Models with ``efa_qk_degrees`` > 0 need the atoms' Euclidean variables: :meth:`efa_sums_ev`
        (this method raises ValueError for them)."""
        out = torch.zeros(0, dtype=x.dtype, device=x.device)
        for i, layer in enumerate(self.layers):
            if i == k:
                out = layer.efa.global_sums(x, positions, cell, pbc)
        return out

    @torch.jit.export
    def efa_sums_ev(self, k: int, x: Tensor, ev: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor) -> Tensor:
        """:meth:`efa_sums` with the atoms' Euclidean variables ``ev`` [N, m_tot] at the layer's input, which
        direction-dependent queries/keys (``efa_qk_degrees`` > 0) read: the keys ``k_j(u_m)`` are still
        per-atom, so the sums still add over ranks (an engine passes the ev part of its feature rows).
        Equals :meth:`efa_sums` for models without them."""
        out = torch.zeros(0, dtype=x.dtype, device=x.device)
        for i, layer in enumerate(self.layers):
            if i == k:
                out = layer.efa.global_sums(x, positions, cell, pbc, ev)
        return out

    @torch.jit.export
    def update(self, k: int, x: Tensor, ev: Tensor, x_att: Tensor, ev_att: Tensor, positions: Tensor, batch: Tensor,
               num_graphs: int, cell: Tensor, pbc: Tensor, efa_sums: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Per-atom update of layer ``k`` (see ``So3kratesLayer.forward``); ``efa_sums``: the system's
        EFA key-value sums (engines), None to form them from the given atoms."""
        out = (x, ev)
        for i, layer in enumerate(self.layers):
            if i == k:
                out = layer(x, ev, x_att, ev_att, positions, batch, num_graphs, cell, pbc, efa_sums)
        return out

    # ------------------------------------------------------------------------ stage 3: readout
    @torch.jit.export
    def readout(self, x: Tensor, atomic_numbers: Tensor, batch: Tensor, num_graphs: int
                ) -> Tuple[Tensor, Tensor, Tensor]:
        """Per-atom energies [N] (eV), raw long-range values [N, W] (uncorrected partial charges in e,
        Hirshfeld ratios) and per-graph sums [B, K] of the charge constraint (sum of raw charges,
        number of atoms; K = 0 without electrostatics)."""
        e = self.energy_head(x, atomic_numbers)
        cols: List[Tensor] = []
        sums = torch.zeros(num_graphs, 0, dtype=x.dtype, device=x.device)
        ch = self.charges_head
        if ch is not None:
            raw = ch.raw(x, atomic_numbers)
            cols.append(raw)
            sums = graph_sums(torch.stack([raw, torch.ones_like(raw)], 1), batch, num_graphs)
        hh = self.hirshfeld_head
        if hh is not None:
            cols.append(hh(x, atomic_numbers))
        lr = torch.stack(cols, 1) if len(cols) > 0 else torch.zeros(x.shape[0], 0, dtype=x.dtype, device=x.device)
        return e, lr, sums

    @torch.jit.export
    def long_range_values(self, lr_raw: Tensor, sums: Tensor, total_charge: Tensor, batch: Tensor) -> Tensor:
        """[N, W]: partial charges corrected to the total charge of their graph, q_i = q~_i + (Q - Σq~)/n
        (e), and the Hirshfeld ratios as they are; ``sums`` [B, 2] over the whole system."""
        ch = self.charges_head
        if ch is None:
            return lr_raw
        q = ch.correct(lr_raw[:, 0], batch, total_charge, sums[:, 0], sums[:, 1])
        return torch.cat([q.unsqueeze(1), lr_raw[:, 1:]], 1)

    # ------------------------------------------------------------------------ stage 4: pair terms
    @torch.jit.export
    def zbl_pair_energy(self, z_i: Tensor, z_j: Tensor, edge_vectors: Tensor) -> Tensor:
        """ZBL repulsion of local pairs [P] (eV); zeros without ZBL."""
        zbl = self.zbl
        if zbl is None:
            return torch.zeros(edge_vectors.shape[0], dtype=edge_vectors.dtype, device=edge_vectors.device)
        d = safe_norm(edge_vectors)
        return zbl.pair_energy(z_i, z_j, d, self.cutoff_fn(d))

    @torch.jit.export
    def long_range_pair_energy(self, z_i: Tensor, z_j: Tensor, lr_i: Tensor, lr_j: Tensor,
                               edge_vectors: Tensor) -> Tensor:
        """Electrostatics + dispersion of long-range pairs [P] (eV); lr_i / lr_j the two atoms' rows of
        ``long_range_values``."""
        d = safe_norm(edge_vectors)
        e = torch.zeros_like(d)
        col = 0
        es = self.electrostatics
        if es is not None:
            e = e + es.pair_energy(lr_i[:, 0], lr_j[:, 0], d)
            col = 1
        disp = self.dispersion
        if disp is not None:
            e = e + disp.pair_energy(lr_i[:, col], lr_j[:, col], z_i, z_j, d)
        return e

    @torch.jit.export
    def pair_energies(self, atomic_numbers: Tensor, lr: Tensor, edge_vectors: Tensor, idx_i: Tensor, idx_j: Tensor,
                      edge_vectors_lr: Tensor, idx_i_lr: Tensor, idx_j_lr: Tensor, chunk_size: int = 0) -> Tensor:
        """Per-atom pair energies [N] (eV): ZBL on the local pairs and the long-range terms on the
        long-range pairs, half of each pair energy credited to each of its atoms."""
        z = atomic_numbers
        e = torch.zeros(z.shape[0], dtype=edge_vectors.dtype, device=edge_vectors.device)
        if self.zbl is not None:
            b = self.chunk_bounds(idx_i.shape[0], chunk_size)
            for c in range(len(b) - 1):
                ii = idx_i[b[c]:b[c + 1]]
                jj = idx_j[b[c]:b[c + 1]]
                h = 0.5 * self.zbl_pair_energy(z.index_select(0, ii), z.index_select(0, jj),
                                               edge_vectors[b[c]:b[c + 1]])
                e = e.index_add(0, ii, h).index_add(0, jj, h)
        if self.exchange_width > 0:
            b = self.chunk_bounds_lr(idx_i_lr.shape[0], chunk_size)
            for c in range(len(b) - 1):
                ii = idx_i_lr[b[c]:b[c + 1]]
                jj = idx_j_lr[b[c]:b[c + 1]]
                h = 0.5 * self.long_range_pair_energy(z.index_select(0, ii), z.index_select(0, jj),
                                                      lr.index_select(0, ii), lr.index_select(0, jj),
                                                      edge_vectors_lr[b[c]:b[c + 1]])
                e = e.index_add(0, ii, h).index_add(0, jj, h)
        return e

    # ------------------------------------------------------------------------ all stages, with autograd
    def forward(self, positions: Tensor, atomic_numbers: Tensor, edge_vectors: Tensor,
                idx_i: Tensor, idx_j: Tensor, edge_vectors_lr: Tensor, idx_i_lr: Tensor, idx_j_lr: Tensor,
                batch: Tensor, num_graphs: int, total_charge: Tensor, num_unpaired_electrons: Tensor,
                cell: Tensor, pbc: Tensor) -> Dict[str, Tensor]:
        """See the class docstring."""
        z = atomic_numbers
        x = self.embed(z, total_charge, num_unpaired_electrons, batch, num_graphs, None)
        ev = torch.zeros(z.shape[0], self.m_tot, dtype=x.dtype, device=x.device)
        for k in range(self.num_layers):
            x_att, ev_att = self.messages(k, x, ev, edge_vectors, idx_i, idx_j, -1)
            sums: Optional[Tensor] = None
            if self.efa_global_sums and num_graphs == 1 and self.efa_layers[k]:
                if self.efa_qk_degrees > 0:
                    sums = self.efa_sums_ev(k, x, ev, positions, cell, pbc)
                else:
                    sums = self.efa_sums(k, x, positions, cell, pbc)
            x, ev = self.update(k, x, ev, x_att, ev_att, positions, batch, num_graphs, cell, pbc, sums)
        energy, lr_raw, sums = self.readout(x, z, batch, num_graphs)
        lr = self.long_range_values(lr_raw, sums, total_charge, batch)
        energy = energy + self.pair_energies(z, lr, edge_vectors, idx_i, idx_j, edge_vectors_lr, idx_i_lr, idx_j_lr,
                                             -1)
        return self.outputs(energy, lr)

    @torch.jit.export
    def outputs(self, atomic_energies: Tensor, lr: Tensor) -> Dict[str, Tensor]:
        """The output dictionary from the per-atom energies and long-range values."""
        out: Dict[str, Tensor] = {"atomic_energies": atomic_energies}
        col = 0
        if self.charges_head is not None:
            out["partial_charges"] = lr[:, 0]
            col = 1
        if self.hirshfeld_head is not None:
            out["hirshfeld_ratios"] = lr[:, col]
        return out
