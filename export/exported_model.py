"""The module that ``so3krates export`` scripts: one model, three entry points for the engines.

All methods take and return Å, eV, eV/Å, e. Shapes: N atoms, E directed edges.

* ``forward(positions[N,3], atomic_numbers[N], cell[3,3], pbc[3], total_charge, num_unpaired_electrons,
  compute_forces, compute_stress) -> {"energy": [], "forces": [N,3], "stress": [3,3], "atomic_energies": [N]}``
  builds its own neighbour lists (open or periodic, triclinic). Used by ASE and OpenMM.
* ``atomic_energies_from_edges(positions[Ntot,3], atomic_numbers[Ntot], idx_i[E], idx_j[E], nlocal,
  total_charge, num_unpaired_electrons, global_sums[K]) -> [Ntot]`` for engines that own the
  neighbour list (LAMMPS): atoms ``0..nlocal-1`` are owned by the caller, the rest are ghost
  images; edges ``i -> j`` with vector ``positions[j] - positions[i]`` may include pairs up to
  ``max(cutoff, cutoff_lr)`` plus any skin: they are filtered here. The caller sums the first
  ``nlocal`` energies and differentiates w.r.t. ``positions`` (forces on ghosts go back to owners).
* ``global_partials(...same inputs...) -> [K]``: the partial sums over owned atoms of the
  quantities global terms need (SO3LR: sum of raw partial charges and number of atoms, for the
  total-charge constraint). Under MPI, ``global_sums`` = Allreduce(SUM) of every rank's
  ``global_partials``; for forces, the caller Allreduces ``dE_rank/dglobal_sums`` and back-propagates
  it through its own ``global_partials`` (exact at any number of ranks). ``K == 0`` for local models
  (pass an empty tensor).
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from so3krates.potential.validate import check_species


class ExportedPotential(nn.Module):
    def __init__(self, potential):
        super().__init__()
        self.potential = potential
        self.model = potential.model
        cfg = potential.model.config
        self.cutoff: float = float(cfg.cutoff)
        self.cutoff_lr: float = float(cfg.cutoff_lr) if cfg.cutoff_lr is not None else -1.0
        self.num_globals: int = int(self.num_globals_of(cfg))
        self.uses_long_range_graph: bool = bool(cfg.electrostatic_energy_bool or cfg.dispersion_energy_bool)
        self.has_efa: bool = bool(any(cfg.efa_layers))

    # --------------------------------------------------------------- static facts about a config
    @staticmethod
    def num_globals_of(cfg) -> int:
        """Number of global sums (per system) the model needs: 2 for the total-charge constraint."""
        return 2 if cfg.electrostatic_energy_bool else 0

    @staticmethod
    def receptive_field_of(cfg) -> float:
        """Ghost shell (Å) that makes per-atom energies of owned atoms exact with engine neighbour lists."""
        rf = float(cfg.num_layers) * float(cfg.cutoff)
        if cfg.electrostatic_energy_bool or cfg.dispersion_energy_bool:
            if cfg.cutoff_lr is None:
                raise ValueError("models with electrostatics/dispersion need a finite long-range cutoff "
                                 "(config cutoff_lr, Å) to be used with engine neighbour lists")
            rf += float(cfg.cutoff_lr)
        return rf

    # --------------------------------------------------------------------------- entry points
    def forward(self, positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor,
                total_charge: float = 0.0, num_unpaired_electrons: float = 0.0,
                compute_forces: bool = True, compute_stress: bool = False) -> Dict[str, Tensor]:
        return self.potential(positions, atomic_numbers, cell, pbc, total_charge, num_unpaired_electrons,
                              compute_forces, compute_stress)

    def _check_engine_support(self):
        if self.has_efa:
            raise RuntimeError("this model uses Euclidean fast attention (EFA), whose global sums are not yet "
                               "supported with engine neighbour lists (LAMMPS); run it through the generic "
                               "entry point (ASE, OpenMM) or export a model without EFA")

    def _graphs(self, positions: Tensor, idx_i: Tensor, idx_j: Tensor):
        vec = positions.index_select(0, idx_j) - positions.index_select(0, idx_i)
        d2 = (vec * vec).sum(-1)
        local = d2 < self.cutoff * self.cutoff
        i_loc, j_loc = idx_i[local], idx_j[local]
        vec_loc = vec[local]
        if self.uses_long_range_graph:
            lr = d2 < self.cutoff_lr * self.cutoff_lr
            i_lr, j_lr, vec_lr = idx_i[lr], idx_j[lr], vec[lr]
        else:
            i_lr = idx_i[:0]
            j_lr = idx_j[:0]
            vec_lr = vec[:0]
        return vec_loc, i_loc, j_loc, vec_lr, i_lr, j_lr

    def _engine_inputs(self, positions: Tensor, atomic_numbers: Tensor, total_charge: float,
                       num_unpaired_electrons: float):
        n = positions.shape[0]
        batch = torch.zeros(n, dtype=torch.long, device=positions.device)
        q = torch.full((1,), total_charge, dtype=positions.dtype, device=positions.device)
        s = torch.full((1,), num_unpaired_electrons, dtype=positions.dtype, device=positions.device)
        cell = torch.zeros(1, 3, 3, dtype=positions.dtype, device=positions.device)
        pbc = torch.zeros(1, 3, dtype=torch.bool, device=positions.device)
        return batch, q, s, cell, pbc

    @torch.jit.export
    def atomic_energies_from_edges(self, positions: Tensor, atomic_numbers: Tensor, idx_i: Tensor, idx_j: Tensor,
                                   nlocal: int, total_charge: float, num_unpaired_electrons: float,
                                   global_sums: Tensor) -> Tensor:
        self._check_engine_support()
        if not bool(torch.isfinite(positions).all()):
            raise ValueError("positions contain NaN or inf (Å): the simulation has blown up or the input is corrupt; "
                             "check the time step, the starting structure and the units")
        check_species(atomic_numbers, self.potential.known_species, self.potential.species)
        vec, i, j, vec_lr, i_lr, j_lr = self._graphs(positions, idx_i, idx_j)
        batch, q, s, cell, pbc = self._engine_inputs(positions, atomic_numbers, total_charge, num_unpaired_electrons)
        sums = global_sums.reshape(1, -1) if self.num_globals > 0 else None
        out = self.model(positions, atomic_numbers, vec, i, j, vec_lr, i_lr, j_lr, batch, 1, q, s, cell, pbc,
                         nlocal, sums)
        return out["atomic_energies"]

    @torch.jit.export
    def global_partials(self, positions: Tensor, atomic_numbers: Tensor, idx_i: Tensor, idx_j: Tensor,
                        nlocal: int, total_charge: float, num_unpaired_electrons: float) -> Tensor:
        self._check_engine_support()
        if self.num_globals == 0:
            return torch.zeros(0, dtype=positions.dtype, device=positions.device)
        vec, i, j, vec_lr, i_lr, j_lr = self._graphs(positions, idx_i, idx_j)
        batch, q, s, cell, pbc = self._engine_inputs(positions, atomic_numbers, total_charge, num_unpaired_electrons)
        return self.model.global_partials(positions, atomic_numbers, vec, i, j, batch, 1, q, s, nlocal).reshape(-1)
