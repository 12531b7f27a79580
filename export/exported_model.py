"""The module that ``so3krates export`` scripts: one model, entry points for every engine.

All methods take and return Å, eV, eV/Å, e.

Generic entry point (ASE, OpenMM)
---------------------------------
``forward(positions[N,3], atomic_numbers[N], cell[3,3], pbc[3], total_charge, num_unpaired_electrons,
compute_forces, compute_stress) -> {"energy": [], "forces": [N,3], "stress": [3,3], "atomic_energies": [N]}``
builds its own pair lists (open or periodic, triclinic) and runs the memory-lean pass.

Engine entry points (LAMMPS: the engine owns the atoms, pair lists and domain decomposition)
--------------------------------------------------------------------------------------------
The model's stages (``so3krates.potential.model``), each with its explicit backward, behind four
methods with uniform signatures, so an engine can wrap every stage in one autograd function and put
its own communication between them (the pair style: ``plugins/lammps/so3krates_model.cpp``):

* ``engine_atoms(stage, k, inputs) -> outputs`` and ``engine_atoms_vjp(stage, k, inputs, grads) ->
  grads of the inputs`` (per-atom stages; ``k`` the layer);
* ``engine_pairs(stage, k, z_i, z_j, a_i, a_j, vectors) -> [b_1 .. b_n, c_1 .. c_n]`` (what each pair
  adds to the rows of its first atom, as n column blocks [P, w_1] .. [P, w_n] in column order, then the same
  blocks for its second atom) and ``engine_pairs_vjp(..., g_i [P, w], g_j [P, w]) -> [g_vectors, blocks of
  g_a_i, blocks of g_a_j]`` (g_i / g_j: the gradient rows of the two atoms; the table gradients as column
  blocks in column order, or none when the stage's table needs no gradient). Pair stages are called on
  chunks of pairs; a_i / a_j are the rows of a per-atom table at the two atoms. Blocks, not one
  concatenated row: the engine adds each block into a column view of its accumulator, so no [P, w]
  concatenation is ever formed (format 3; format 2 returned stacked [P, 2, w] rows).

A rank holds ``nlocal`` owned atoms first, then ghost images; a *feature row* h = [x | ev] has
``engine_layout()["feature_width"]`` = F + m_tot values. Per step (``engine_layout`` gives the sizes):

===================  ========================================  ==========================================
stage (kind)         inputs                                    outputs
===================  ========================================  ==========================================
check (atoms)        positions [n,3], atomic_numbers [n]       — (raises ValueError for bad input)
embedding_sums       z_owned [nl], charge [1], spin [1]        [2] (sum over all ranks: ``embedding_sums``)
embed                z [n], charge, spin, sums [2]             h0 [n, W_h] (no gradient)
project (k)          h [n, W_h]                                table [n, 5F + m_tot]
messages (k, pairs)  table rows of both atoms                  x, ev blocks of both atoms' attention sums
efa_sums (k)         h_owned, positions_owned, cell [3,3], pbc  key-value sums (sum over all ranks)
update (k)           h_owned, sums_owned [nl, W_h], positions_owned, cell, pbc, efa_sums (empty if no EFA)
                                                               h_owned [nl, W_h]
readout              h_owned, z_owned                          energy [nl], lr_raw [nl, W], sums [K]
long_range_values    lr_raw, sums (all ranks) [K], charge      lr [nl, W] (charges, Hirshfeld ratios)
zbl (pairs)          (empty table)                             [P, 1] each: half the pair energy
long_range (pairs)   lr rows of both atoms                     [P, 1] each: half the pair energy
===================  ========================================  ==========================================

Between layers the engine copies the owned rows of h to their ghost images (forward communication)
and, after ``messages``, adds the ghost rows of the attention sums to their owners (reverse
communication); ``lr`` goes to the ghost images before the pair terms. In the backward pass each of
these runs the other way. Pair lists: every pair within ``cutoff`` (``messages``, ``zbl``) or
``cutoff_lr`` (``long_range``) with at least one owned atom, once over all ranks (LAMMPS' half list
with newton on). The energy of a rank is the sum of its owned atoms' readout energies and of all
its pair-stage rows (ghost rows included: they belong to the pairs this rank holds).

``cell`` (rows = lattice vectors, Å) and ``pbc`` matter only for EFA: fully periodic boxes use the
reciprocal-lattice EFA, fully open ones the Lebedev variant; mixed boundaries are refused.
"""

from typing import Dict, List

import torch
from torch import Tensor, nn

from so3krates.potential.validate import check_species


class ExportedPotential(nn.Module):
    """``forward`` = :class:`so3krates.potential.potential.So3kratesPotential`; ``engine_*`` = the stages."""

    def __init__(self, potential):
        super().__init__()
        self.potential = potential
        self.model = potential.model
        m = potential.model
        self.num_features: int = int(m.num_features)
        self.feature_width: int = int(m.num_features + m.m_tot)

    def forward(self, positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor,
                total_charge: float = 0.0, num_unpaired_electrons: float = 0.0,
                compute_forces: bool = True, compute_stress: bool = False) -> Dict[str, Tensor]:
        return self.potential(positions, atomic_numbers, cell, pbc, total_charge, num_unpaired_electrons,
                              compute_forces, compute_stress)

    @torch.jit.export
    def engine_layout(self) -> Dict[str, int]:
        """Sizes an engine needs: layers, feature width F + m_tot, exchange width W, readout sums K,
        whether the charge/spin embedding needs ``embedding_sums``, ``efa_qk_degrees`` (> 0: open boxes only) and
        one flag per layer with EFA."""
        m = self.model
        out: Dict[str, int] = {"num_layers": m.num_layers, "num_features": m.num_features,
                               "feature_width": self.feature_width, "table_width": 5 * m.num_features + m.m_tot,
                               "exchange_width": m.exchange_width, "readout_sums": m.num_readout_sums,
                               "embedding_sums": int(m.charge_embedding is not None or m.spin_embedding is not None),
                               "zbl": int(m.zbl is not None),
                               # direction-dependent EFA queries/keys: open boxes only
                               "efa_qk_degrees": m.efa_qk_degrees}
        for k in range(m.num_layers):
            out["efa" + str(k)] = int(m.efa_layers[k])
        return out

    # ------------------------------------------------------------------ per-atom stages
    def _split(self, h: Tensor) -> List[Tensor]:
        return [h[:, :self.num_features], h[:, self.num_features:]]

    @torch.jit.export
    def engine_atoms(self, stage: str, k: int, inputs: List[Tensor]) -> List[Tensor]:
        m = self.model
        n = inputs[0].shape[0]
        batch = torch.zeros(n, dtype=torch.long, device=inputs[0].device)
        if stage == "check":
            pos = inputs[0]
            if not bool(torch.isfinite(pos).all()):
                raise ValueError("positions contain NaN or inf (Å): the simulation has blown up or the input is "
                                 "corrupt; check the time step, the starting structure and the units")
            check_species(inputs[1], self.potential.known_species, self.potential.species)
            return []
        if stage == "embedding_sums":
            return [m.embedding_weight_sums(inputs[0], inputs[1], inputs[2], batch, 1)[0]]
        if stage == "embed":
            x = m.embed(inputs[0], inputs[1], inputs[2], batch, 1, inputs[3].reshape(1, 2))
            return [torch.cat([x, torch.zeros(n, m.m_tot, dtype=x.dtype, device=x.device)], 1)]
        if stage == "project":
            h = self._split(inputs[0])
            return [torch.cat(m.project(k, h[0]) + [h[1]], 1)]
        if stage == "efa_sums":
            h = self._split(inputs[0])  # ev: direction-dependent queries/keys (efa_qk_degrees > 0) read it
            return [m.efa_sums_ev(k, h[0], h[1], inputs[1], inputs[2], inputs[3])]
        if stage == "update":
            h = self._split(inputs[0])
            a = self._split(inputs[1])
            sums = inputs[5] if m.efa_layers[k] else None
            x, ev = m.update(k, h[0], h[1], a[0], a[1], inputs[2], batch, 1, inputs[3].unsqueeze(0),
                             inputs[4].unsqueeze(0), sums)
            return [torch.cat([x, ev], 1)]
        if stage == "readout":
            e, lr, sums = m.readout(self._split(inputs[0])[0], inputs[1], batch, 1)
            return [e, lr, sums[0]]
        if stage == "long_range_values":
            return [m.long_range_values(inputs[0], inputs[1].unsqueeze(0), inputs[2], batch)]
        raise ValueError("engine_atoms: unknown stage '" + stage + "'")

    @torch.jit.export
    def engine_atoms_vjp(self, stage: str, k: int, inputs: List[Tensor], grads: List[Tensor]) -> List[Tensor]:
        """Gradients w.r.t. ``inputs`` (one per input; zeros for integer inputs) from those of the outputs."""
        m = self.model
        n = inputs[0].shape[0]
        batch = torch.zeros(n, dtype=torch.long, device=inputs[0].device)
        if stage == "project":
            h = self._split(inputs[0])
            f = self.num_features
            gp = [grads[0][:, i * f:(i + 1) * f] for i in range(5)]
            return [torch.cat([m.project_vjp(k, h[0], gp), grads[0][:, 5 * f:]], 1)]
        if stage == "efa_sums":
            h = self._split(inputs[0])
            r = m.efa_sums_vjp(k, h[0], h[1], inputs[1], inputs[2], inputs[3], grads[0])
            return [torch.cat([r[0], r[1]], 1), r[2], r[3], torch.zeros_like(inputs[3], dtype=r[2].dtype)]
        if stage == "update":
            h = self._split(inputs[0])
            a = self._split(inputs[1])
            g = self._split(grads[0])
            efa = m.efa_layers[k]
            sums = inputs[5] if efa else None
            r = m.update_vjp(k, h[0], h[1], a[0], a[1], inputs[2], batch, 1, inputs[3].unsqueeze(0),
                             inputs[4].unsqueeze(0), sums, g[0], g[1], True)
            g_sums = r[6] if efa else torch.zeros_like(inputs[5])
            return [torch.cat([r[0], r[1]], 1), torch.cat([r[2], r[3]], 1), r[4], r[5][0],
                    torch.zeros_like(inputs[4], dtype=r[4].dtype), g_sums]
        if stage == "readout":
            h = self._split(inputs[0])
            g_x = m.readout_vjp(h[0], inputs[1], batch, 1, grads[0], grads[1], grads[2].unsqueeze(0))
            return [torch.cat([g_x, torch.zeros_like(h[1])], 1), torch.zeros_like(inputs[1], dtype=g_x.dtype)]
        if stage == "long_range_values":
            r = m.long_range_values_vjp(inputs[0], inputs[1].unsqueeze(0), inputs[2], batch, grads[0])
            return [r[0], r[1][0], torch.zeros_like(inputs[2])]
        raise ValueError("engine_atoms_vjp: stage '" + stage + "' has no gradient")

    # ------------------------------------------------------------------ pair stages
    def _table(self, a: Tensor) -> List[Tensor]:
        f = self.num_features
        return [a[:, i * f:(i + 1) * f] for i in range(5)] + [a[:, 5 * f:]]

    @torch.jit.export
    def engine_pairs(self, stage: str, k: int, z_i: Tensor, z_j: Tensor, a_i: Tensor, a_j: Tensor,
                     vectors: Tensor) -> List[Tensor]:
        m = self.model
        if stage == "messages":
            ti = self._table(a_i)
            tj = self._table(a_j)
            return m.pair_messages(k, ti[:5], tj[:5], ti[5], tj[5], vectors)  # x, ev to i; x, ev to j
        if stage == "zbl":
            e = 0.5 * m.zbl_pair_energy(z_i, z_j, vectors)
        elif stage == "long_range":
            e = 0.5 * m.long_range_pair_energy(z_i, z_j, a_i, a_j, vectors)
        else:
            raise ValueError("engine_pairs: unknown stage '" + stage + "'")
        e = e.unsqueeze(1)
        return [e, e.clone()]  # distinct outputs: compiled (.pt2) programs must not return one tensor twice

    @torch.jit.export
    def engine_pairs_vjp(self, stage: str, k: int, z_i: Tensor, z_j: Tensor, a_i: Tensor, a_j: Tensor,
                         vectors: Tensor, g_i: Tensor, g_j: Tensor) -> List[Tensor]:
        m = self.model
        if stage == "messages":
            ti = self._table(a_i)
            tj = self._table(a_j)
            w = self.num_features
            gm = [g_i[:, :w], g_i[:, w:], g_j[:, :w], g_j[:, w:]]
            # layer 0's feature rows come from the embedding (elements, total charge, spin), never from the
            # positions: their gradients are not needed and not computed (as in So3krates.energy_and_gradients)
            r = m.pair_messages_vjp(k, ti[:5], tj[:5], ti[5], tj[5], vectors, gm, k > 0)
            if k == 0:
                return [r[12]]
            return [r[12]] + r[0:5] + [r[10]] + r[5:10] + [r[11]]
        g_pair = 0.5 * (g_i[:, 0] + g_j[:, 0])
        if stage == "zbl":
            return [m.zbl_pair_vjp(z_i, z_j, vectors, g_pair)]
        if stage == "long_range":
            r = m.long_range_pair_vjp(z_i, z_j, a_i, a_j, vectors, g_pair)
            return [r[2], r[0], r[1]]
        raise ValueError("engine_pairs_vjp: unknown stage '" + stage + "'")
