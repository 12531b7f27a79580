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
    def representation(self, positions: Tensor, atomic_numbers: Tensor, edge_vectors: Tensor, idx_i: Tensor,
                       idx_j: Tensor, batch: Tensor, num_graphs: int, total_charge: Tensor,
                       num_unpaired_electrons: Tensor, cell: Tensor, pbc: Tensor, nlocal: int = -1
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Embedding + message passing: invariant features x [N, F], Euclidean variables ev [N, m_tot]
        (degrees in `config.degrees`, m = -l..l each), edge lengths d [E] Å and cutoff values [E]."""
        n = atomic_numbers.shape[0]
        z = atomic_numbers

        # geometry
        d = safe_norm(edge_vectors)  # [E]
        rbf = self.radial_basis(d)  # [E, K]
        cut = self.cutoff_fn(d)  # [E]
        d_pos = d > 0.0
        unit = edge_vectors / torch.where(d_pos, d, torch.ones_like(d)).unsqueeze(-1)
        unit = torch.where(d_pos.unsqueeze(-1), unit, torch.zeros_like(unit))
        ylm = spherical_harmonics(unit, self.degrees)  # [E, m_tot]

        # embeddings
        x = self.atom_embedding(z)
        charge_embedding = self.charge_embedding
        if charge_embedding is not None:
            x = x + charge_embedding(z, total_charge, batch, num_graphs, nlocal)
        spin_embedding = self.spin_embedding
        if spin_embedding is not None:
            x = x + spin_embedding(z, num_unpaired_electrons, batch, num_graphs, nlocal)
        x = x / math.sqrt(float(self.num_embeddings))
        ev = torch.zeros(n, self.m_tot, dtype=x.dtype, device=x.device)

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
