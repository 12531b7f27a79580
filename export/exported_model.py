"""The module that ``so3krates export`` scripts: one model, entry points for every engine.

All methods take and return Å, eV, eV/Å, e. Shapes: N atoms, E directed edges.

Generic entry point (ASE, OpenMM)
---------------------------------
``forward(positions[N,3], atomic_numbers[N], cell[3,3], pbc[3], total_charge, num_unpaired_electrons,
compute_forces, compute_stress) -> {"energy": [], "forces": [N,3], "stress": [3,3], "atomic_energies": [N]}``
builds its own neighbour lists (open or periodic, triclinic).

Engine entry points (LAMMPS: the engine owns the neighbour list and the domain decomposition)
--------------------------------------------------------------------------------------------
Atoms ``0..nlocal-1`` are owned by the caller (an MPI rank), the rest are ghost images; edges
``i -> j`` have the vector ``positions[j] - positions[i]``. The caller must give every pair within
``cutoff`` for *every* atom (owned and ghost) and, for models with long-range terms, every pair
within ``cutoff_lr`` whose centre is owned (pairs beyond the cutoffs and long-range pairs with a
ghost centre may be present: they are filtered here). The ghost shell must be
``engine_ghost_shell()`` = max(``num_layers * cutoff``, ``cutoff_lr``) Å (plus the engine's skin).

A model evaluation is a sequence of *stages*; each stage ends with values of the owned atoms that
other ranks need before the evaluation can go on:

* ``engine_num_stages() -> int``, ``engine_stage_names()``, ``engine_stage_kinds() -> List[str]``:
  ``"embedding"`` (charge/spin embedding normalisation; models with charge or spin embeddings),
  ``"efa"`` (key-value sums of the Euclidean fast attention of one layer, one per EFA layer) and
  ``"charges"`` (sum of raw partial charges and number of atoms; electrostatics) are *sums*: flat
  vectors to be summed over all ranks (MPI_Allreduce). ``"exchange"`` (models with electrostatics
  or dispersion; ``engine_exchange_width()`` values per atom: partial charge and/or Hirshfeld ratio)
  is *per atom*: ``[nlocal, width]`` values of the owned atoms to be copied to all their ghost images
  (LAMMPS forward communication), giving ``[N, width]`` rows in the caller's atom order.
* ``engine_begin(positions[N,3], atomic_numbers[N], idx_i[E], idx_j[E], nlocal, total_charge,
  num_unpaired_electrons, cell[3,3], pbc[3]) -> (state, out)``: ``out`` is the output of stage 0 (or,
  without stages, the per-atom energies [N]).
* ``engine_continue(state, s, totals) -> (state, out)``: give the combined values of stage ``s - 1``
  (rank sum, or ``[N, width]`` per-atom rows); ``out`` is the output of stage ``s`` or, for
  ``s == engine_num_stages()``, the per-atom energies [N] (eV; entries ``>= nlocal`` are 0). The
  caller sums the first ``nlocal``.

Forces (exact on any number of ranks): with ``G_s`` the combined values (autograd leaves) and
``g_s`` the rank's own outputs, start from ``Λ = E_rank``; for ``s`` from the last stage down to 0
form ``A_s = ∂Λ/∂G_s`` and combine it like the stage's values in reverse: sum stages are
allreduced; exchange stages are reverse-communicated (ghost rows added to their owners' rows, the
owned rows kept); then ``Λ += Σ A_s · g_s``. Finally ``-∂Λ/∂positions`` are the forces on owned and
ghost atoms (ghost forces go back to their owners) and ``∂Λ/∂cell`` is the explicit box dependence
(periodic EFA) that the virial needs in addition to Σ r⊗f.

``cell`` (rows = lattice vectors, Å) and ``pbc`` matter only for EFA models: fully periodic boxes
use the reciprocal-lattice EFA with this cell, fully open boxes the Lebedev (open) variant, mixed
boundaries are refused.

Pruning (``prune`` attribute, default True): an L-layer model only needs layer-l features on atoms
within L - l hops (local graph) of the owned atoms (the long-range partners' charges and Hirshfeld
ratios come from their owners through the exchange stage). The engine path computes each layer on
those atoms only; ``prune = False`` evaluates every layer on every atom (same result to rounding,
for checks and benchmarks).

Legacy engine methods (files of format 1 before staging; kept for callers that use them):
``atomic_energies_from_edges(positions, atomic_numbers, idx_i, idx_j, nlocal, total_charge,
num_unpaired_electrons, global_sums[K]) -> [N]`` and ``global_partials(...same without
global_sums...) -> [K]`` with K = ``num_globals`` (2 with electrostatics: the charge stage). They
normalise the charge/spin embedding over the rank's own atoms (exact on one rank or for a neutral,
closed-shell system), refuse EFA models and compute the long-range partners' charges/Hirshfeld
ratios themselves, so they need the ghost shell ``receptive_field`` (metadata) =
``num_layers * cutoff + cutoff_lr`` and prune to the atoms within L - l hops of the owned atoms and
of every atom within ``cutoff_lr`` of one.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from so3krates.potential.basis import safe_norm, spherical_harmonics
from so3krates.potential.validate import check_species

# keys of the engine state (a Dict[str, Tensor] handed back and forth between stages)
#   x         invariant features of the current layer boundary [n_l, F]
#   ev        Euclidean variables [n_l, m_tot]
#   pos       kept atoms' positions, pruned order [n_keep, 3] (part of the autograd graph)
#   z         kept atoms' atomic numbers [n_keep]
#   rbf       local edges (sorted by centre in pruned order): radial basis [e, K]
#   ylm       spherical harmonics [e, m_tot]
#   cut       cutoff function values [e]
#   ii        centre index [e] (pruned order)
#   jj        neighbour index [e]
#   d         edge length [e] Å
#   il        long-range edges with an owned centre: centre [e_lr]
#   jl        neighbour [e_lr]
#   dl        length [e_lr] Å
#   cnt       cnt[k] = number of kept atoms with hop <= k, k = 0..L (long, CPU)
#   ecnt      ecnt[k] = number of edges with centre hop <= k, k = 0..L-1; ecnt[L] = owned centres
#   cell      cell [3,3] Å (model dtype; autograd leaf of the caller)
#   periodic  EFA variant: 1 periodic, 0 open (long, CPU)
#   charge    total charge [1] e
#   spin      number of unpaired electrons [1]
#   nlocal    owned atoms (long, CPU)
#   ntot      atoms given by the caller (long, CPU)
#   shape     shape of the last EFA partial sums (long, CPU)


class ExportedPotential(nn.Module):
    stage_kinds: List[str]
    stage_layers: List[int]
    stage_names: List[str]
    legacy_kinds: List[str]
    legacy_layers: List[int]

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
        self.num_layers: int = int(cfg.num_layers)
        self.prune: bool = True
        # per-atom long-range quantities exchanged with ghost atoms: [q (e)], [Hirshfeld ratio] or both
        self.exchange_width: int = int(bool(cfg.electrostatic_energy_bool)) + int(bool(cfg.dispersion_energy_bool))
        kinds: List[str] = []
        layers: List[int] = []
        if cfg.use_charge_embed or cfg.use_spin_embed:
            kinds.append("embedding")
            layers.append(0)
        legacy_kinds = list(kinds)
        legacy_layers = list(layers)
        efa = list(cfg.efa_layers or [])
        for k in range(self.num_layers):
            if k < len(efa) and bool(efa[k]):
                kinds.append("efa")
                layers.append(k)
        if cfg.electrostatic_energy_bool:
            for kk, ll in ((kinds, layers), (legacy_kinds, legacy_layers)):
                kk.append("charges")
                ll.append(self.num_layers)
        if self.exchange_width > 0:
            kinds.append("exchange")
            layers.append(self.num_layers)
        self.stage_kinds: List[str] = kinds
        self.stage_layers: List[int] = layers
        self.stage_names: List[str] = [k if k != "efa" else "efa" + str(l) for k, l in zip(kinds, layers)]
        self.legacy_kinds: List[str] = legacy_kinds
        self.legacy_layers: List[int] = legacy_layers
        # ghost shell (Å) the staged entry points need: the message passing of the owned atoms
        # (layers x cutoff) and the positions of their long-range partners (cutoff_lr), whose
        # charges/Hirshfeld ratios come from their owners through the "exchange" stage
        self.ghost_shell: float = max(self.num_layers * self.cutoff, self.cutoff_lr)

    # --------------------------------------------------------------- static facts about a config
    @staticmethod
    def num_globals_of(cfg) -> int:
        """Number of values of the legacy ``global_sums`` (the charge stage): 2 with electrostatics."""
        return 2 if cfg.electrostatic_energy_bool else 0

    @staticmethod
    def receptive_field_of(cfg) -> float:
        """Ghost shell (Å) that makes per-atom energies of owned atoms exact with engine neighbour lists:
        layers x cutoff, plus the long-range cutoff (partners' charges/Hirshfeld ratios need their
        own full receptive field). EFA adds nothing: its global sums are reduced over ranks."""
        rf = float(cfg.num_layers) * float(cfg.cutoff)
        if cfg.electrostatic_energy_bool or cfg.dispersion_energy_bool:
            if cfg.cutoff_lr is None:
                raise ValueError("models with electrostatics/dispersion need a finite long-range cutoff "
                                 "(config cutoff_lr, Å) to be used with engine neighbour lists")
            rf += float(cfg.cutoff_lr)
        return rf

    # --------------------------------------------------------------------------- generic entry point
    def forward(self, positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor,
                total_charge: float = 0.0, num_unpaired_electrons: float = 0.0,
                compute_forces: bool = True, compute_stress: bool = False) -> Dict[str, Tensor]:
        return self.potential(positions, atomic_numbers, cell, pbc, total_charge, num_unpaired_electrons,
                              compute_forces, compute_stress)

    # --------------------------------------------------------------------------- staged engine path
    @torch.jit.export
    def engine_num_stages(self) -> int:
        return len(self.stage_kinds)

    @torch.jit.export
    def engine_stage_names(self) -> List[str]:
        return self.stage_names

    @torch.jit.export
    def engine_stage_kinds(self) -> List[str]:
        """Per stage: "embedding", "efa", "charges" (sum over ranks) or "exchange" (per-atom values
        of the owned atoms copied to their ghost images; adjoints summed back to the owners)."""
        return self.stage_kinds

    @torch.jit.export
    def engine_exchange_width(self) -> int:
        """Values per atom of the "exchange" stage (partial charge and/or Hirshfeld ratio), 0 if none."""
        return self.exchange_width

    @torch.jit.export
    def engine_ghost_shell(self) -> float:
        """Ghost shell (Å, without skin) of the staged entry points: max(layers x cutoff, cutoff_lr)."""
        return self.ghost_shell

    @torch.jit.export
    def engine_begin(self, positions: Tensor, atomic_numbers: Tensor, idx_i: Tensor, idx_j: Tensor, nlocal: int,
                     total_charge: float, num_unpaired_electrons: float, cell: Tensor,
                     pbc: Tensor) -> Tuple[Dict[str, Tensor], Tensor]:
        """Prepare the graphs (pruned), run to the first stage; see the module docstring."""
        st = self._prepare(positions, atomic_numbers, idx_i, idx_j, nlocal, total_charge, num_unpaired_electrons,
                           cell, pbc, True)
        return self._advance(st, 0, None)

    @torch.jit.export
    def engine_continue(self, state: Dict[str, Tensor], stage: int, totals: Tensor) -> Tuple[Dict[str, Tensor], Tensor]:
        """Consume the rank-summed vector of stage ``stage - 1`` and run to stage ``stage`` (or to the
        per-atom energies when ``stage == engine_num_stages()``)."""
        if stage < 1 or stage > len(self.stage_kinds):
            raise ValueError("engine_continue: stage must be 1.." + str(len(self.stage_kinds)) + ", got "
                             + str(stage))
        if "ntot" not in state:
            raise ValueError("engine_continue: state is not from engine_begin of this model")
        return self._advance(state, stage, totals)

    # --------------------------------------------------------------------------- legacy engine path
    def _check_legacy(self):
        if self.has_efa:
            raise RuntimeError("this model uses Euclidean fast attention (EFA), whose global sums need the box and "
                               "one MPI reduction per EFA layer: use the staged entry points engine_begin / "
                               "engine_continue (pair_style so3krates does), not atomic_energies_from_edges")

    def _legacy(self, positions: Tensor, atomic_numbers: Tensor, idx_i: Tensor, idx_j: Tensor, nlocal: int,
                total_charge: float, num_unpaired_electrons: float, global_sums: Optional[Tensor]) -> Tensor:
        """Stages with local embedding normalisation; returns the charge-stage partials when
        ``global_sums`` is None and the model has that stage, else the per-atom energies."""
        self._check_legacy()
        cell = torch.zeros(3, 3, dtype=positions.dtype, device=positions.device)
        pbc = torch.zeros(3, dtype=torch.bool, device=positions.device)
        st = self._prepare(positions, atomic_numbers, idx_i, idx_j, nlocal, total_charge, num_unpaired_electrons,
                           cell, pbc, False)
        st, out = self._advance(st, 0, None)
        partials = torch.zeros(0, dtype=positions.dtype, device=positions.device)
        for s in range(len(self.legacy_kinds)):
            totals = out
            if self.legacy_kinds[s] == "charges":
                partials = out
                if global_sums is not None:
                    totals = global_sums.reshape(-1)
            if global_sums is not None or self.legacy_kinds[s] != "charges":
                st, out = self._advance(st, s + 1, totals)
        if global_sums is None:
            return partials
        return out

    @torch.jit.export
    def atomic_energies_from_edges(self, positions: Tensor, atomic_numbers: Tensor, idx_i: Tensor, idx_j: Tensor,
                                   nlocal: int, total_charge: float, num_unpaired_electrons: float,
                                   global_sums: Tensor) -> Tensor:
        return self._legacy(positions, atomic_numbers, idx_i, idx_j, nlocal, total_charge, num_unpaired_electrons,
                            global_sums)

    @torch.jit.export
    def global_partials(self, positions: Tensor, atomic_numbers: Tensor, idx_i: Tensor, idx_j: Tensor,
                        nlocal: int, total_charge: float, num_unpaired_electrons: float) -> Tensor:
        self._check_legacy()
        if self.num_globals == 0:
            return torch.zeros(0, dtype=positions.dtype, device=positions.device)
        return self._legacy(positions, atomic_numbers, idx_i, idx_j, nlocal, total_charge, num_unpaired_electrons,
                            None)

    # --------------------------------------------------------------------------- internals
    def _prepare(self, positions: Tensor, atomic_numbers: Tensor, idx_i: Tensor, idx_j: Tensor, nlocal: int,
                 total_charge: float, num_unpaired_electrons: float, cell: Tensor, pbc: Tensor,
                 staged: bool) -> Dict[str, Tensor]:
        """Graphs and pruning. ``staged``: the long-range partners' charges/Hirshfeld ratios come from
        the exchange stage (final features needed on owned atoms only); legacy: they are computed here
        (final features needed on owned atoms and on every atom within cutoff_lr of one)."""
        n = positions.shape[0]
        dev = positions.device
        cpu = torch.device("cpu")
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError("positions must have shape [N, 3] (Å)")
        if atomic_numbers.shape[0] != n:
            raise ValueError("atomic_numbers must have one entry per atom (" + str(n) + ")")
        if nlocal < 1 or nlocal > n:
            raise ValueError("nlocal must be in 1.." + str(n) + " (owned atoms come first), got " + str(nlocal))
        if idx_i.shape[0] != idx_j.shape[0]:
            raise ValueError("idx_i and idx_j must have the same length (directed edges i -> j)")
        if not bool(torch.isfinite(positions).all()):
            raise ValueError("positions contain NaN or inf (Å): the simulation has blown up or the input is corrupt; "
                             "check the time step, the starting structure and the units")
        check_species(atomic_numbers, self.potential.known_species, self.potential.species)
        periodic = 0
        if staged and self.has_efa:
            if cell.dim() != 2 or cell.shape[0] != 3 or cell.shape[1] != 3 or pbc.shape[0] != 3:
                raise ValueError("cell must be [3, 3] (Å, rows = lattice vectors) and pbc [3]")
            pb = pbc.to(torch.bool)
            if bool(pb.all()):
                periodic = 1
                vol = float(torch.linalg.det(cell.detach().to(torch.float64)))
                if abs(vol) <= 1e-12:
                    raise ValueError("this EFA model needs the periodic box (cell, Å) but the cell has zero volume")
            elif bool(pb.any()):
                raise ValueError("Euclidean fast attention supports fully periodic boxes (EFA on the reciprocal "
                                 "lattice) or fully open ones (Lebedev EFA), not mixed boundaries; use "
                                 "'boundary p p p' (with a vacuum gap for slabs) or 'boundary f f f'")
        L = self.num_layers
        ar = torch.arange(n, device=dev)
        pd = positions.detach()
        vec0 = pd.index_select(0, idx_j) - pd.index_select(0, idx_i)
        d2 = (vec0 * vec0).sum(-1)
        local = d2 < self.cutoff * self.cutoff
        li = idx_i[local]
        lj = idx_j[local]
        if self.uses_long_range_graph:
            lr = (d2 < self.cutoff_lr * self.cutoff_lr) & (idx_i < nlocal)
            ri = idx_i[lr]
            rj = idx_j[lr]
        else:
            ri = li[:0]
            rj = lj[:0]

        if self.prune:
            # hop[i] = smallest number of local-graph hops from i to an atom whose final features are needed
            target = ar < nlocal
            if self.uses_long_range_graph and not staged:
                target = target.index_fill(0, rj, True)
            hop = torch.full((n,), L + 1, dtype=torch.long, device=dev).masked_fill(target, 0)
            for k in range(1, L + 1):
                src = hop.index_select(0, li) <= k - 1
                reach = torch.zeros(n, dtype=torch.bool, device=dev).index_fill(0, lj[src], True)
                hop = torch.where(reach & (hop > k), torch.full_like(hop, k), hop)
            # owned atoms first (hop 0, original order), then ghosts by hop; hop > L is dropped
            key = hop * 2 + (ar >= nlocal).to(torch.long)
            order = torch.argsort(key, stable=True)
            cnt = torch.stack([(hop <= k).sum() for k in range(L + 1)]).to(cpu)
            order = order[:int(cnt[L])]
        else:
            order = ar
            cnt = torch.full((L + 1,), n, dtype=torch.long, device=cpu)
        nkeep = order.shape[0]
        inv = torch.full((n,), -1, dtype=torch.long, device=dev).index_copy(
            0, order, torch.arange(nkeep, device=dev))
        ni = inv.index_select(0, li)
        nj = inv.index_select(0, lj)
        if self.prune:
            ok = (ni >= 0) & (ni < int(cnt[L - 1]))
            ni = ni[ok]
            nj = nj[ok]
            srt = torch.sort(ni, stable=True)
            ni = srt[0]
            nj = nj.index_select(0, srt[1])
            ecl = [(ni < int(cnt[k])).sum() for k in range(L)]
            ecl.append((ni < nlocal).sum())
            ecnt = torch.stack(ecl).to(cpu)
        else:
            ecnt = torch.full((L + 1,), ni.shape[0], dtype=torch.long, device=cpu)

        pos = positions.index_select(0, order)
        z = atomic_numbers.index_select(0, order)
        vec = pos.index_select(0, nj) - pos.index_select(0, ni)
        m = self.model
        d = safe_norm(vec)
        rbf = m.radial_basis(d)
        cut = m.cutoff_fn(d)
        d_pos = d > 0.0
        unit = vec / torch.where(d_pos, d, torch.ones_like(d)).unsqueeze(-1)
        unit = torch.where(d_pos.unsqueeze(-1), unit, torch.zeros_like(unit))
        ylm = spherical_harmonics(unit, m.degrees)
        if staged:  # long-range pairs in the caller's atom order (partners need not be kept)
            il = ri
            jl = rj
            dl = safe_norm(positions.index_select(0, jl) - positions.index_select(0, il))
        else:
            il = inv.index_select(0, ri)
            jl = inv.index_select(0, rj)
            dl = safe_norm(pos.index_select(0, jl) - pos.index_select(0, il))

        st: Dict[str, Tensor] = {}
        st["pos"] = pos
        st["z"] = z
        st["rbf"] = rbf
        st["ylm"] = ylm
        st["cut"] = cut
        st["ii"] = ni
        st["jj"] = nj
        st["d"] = d
        st["il"] = il
        st["jl"] = jl
        st["dl"] = dl
        st["cnt"] = cnt
        st["ecnt"] = ecnt
        st["cell"] = cell.to(positions.dtype)
        st["periodic"] = torch.tensor(periodic, dtype=torch.long)
        st["charge"] = torch.full((1,), total_charge, dtype=positions.dtype, device=dev)
        st["spin"] = torch.full((1,), num_unpaired_electrons, dtype=positions.dtype, device=dev)
        st["nlocal"] = torch.tensor(nlocal, dtype=torch.long)
        st["ntot"] = torch.tensor(n, dtype=torch.long)
        st["shape"] = torch.zeros(0, dtype=torch.long)
        st["staged"] = torch.tensor(1 if staged else 0, dtype=torch.long)
        st["z_all"] = atomic_numbers
        return st

    def _advance(self, st: Dict[str, Tensor], stage: int, totals: Optional[Tensor]) -> Tuple[Dict[str, Tensor], Tensor]:
        """Consume the totals of stage ``stage - 1`` (if any) and run to stage point ``stage``: its partial
        sums / per-atom values, or the per-atom energies after the last stage."""
        staged = int(st["staged"]) == 1
        kinds = self.stage_kinds if staged else self.legacy_kinds
        lays = self.stage_layers if staged else self.legacy_layers
        ns = len(kinds)
        level = -1  # layers done (-1: embedding not computed yet)
        if stage > 0:
            if totals is None:
                raise ValueError("engine_continue needs the totals of the previous stage")
            kind = kinds[stage - 1]
            lay = lays[stage - 1]
            if kind == "embedding":
                self._embed(st, totals)
                level = 0
            elif kind == "efa":
                self._layers(st, lay, lay + 1, totals)
                level = lay + 1
            elif kind == "charges":
                st["charge_totals"] = totals.reshape(-1)
                level = self.num_layers
            else:
                if totals.dim() != 2 or totals.shape[0] != int(st["ntot"]) or totals.shape[1] != self.exchange_width:
                    raise ValueError("engine_continue: the exchange stage needs per-atom values ["
                                     + str(int(st["ntot"])) + ", " + str(self.exchange_width) + "] (owned rows as "
                                     "returned, ghost rows copied from their owners)")
                st["lr_values"] = totals
                level = self.num_layers
        if level < 0:
            if ns > 0 and kinds[0] == "embedding":
                return st, self._embedding_partials(st)
            self._embed(st, None)
            level = 0
        target = lays[stage] if stage < ns else self.num_layers
        self._layers(st, level, target, None)
        if stage < ns:
            kind = kinds[stage]
            if kind == "efa":
                return st, self._efa_partials(st, target)
            if kind == "charges":
                return st, self._charge_partials(st)
            return st, self._exchange_values(st)
        return st, self._energies(st)

    @staticmethod
    def _embedding_weights(q: Tensor, k: Tensor, num_features: int) -> Tensor:
        """y_i = softplus(q[Z_i] . k[sign psi] / sqrt(F)) of a ChargeSpinEmbedding."""
        qk = (q * k).sum(-1) / math.sqrt(float(num_features))
        return torch.logaddexp(qk, torch.zeros_like(qk))

    def _embedding_partials(self, st: Dict[str, Tensor]) -> Tensor:
        """[sum of charge-embedding weights y, sum of spin-embedding weights] over the owned atoms."""
        nl = int(st["nlocal"])
        z = st["z"][:nl]
        yq = torch.zeros((), dtype=st["pos"].dtype, device=z.device)
        ys = torch.zeros((), dtype=st["pos"].dtype, device=z.device)
        ce = self.model.charge_embedding
        if ce is not None:
            psi = st["charge"].to(ce.q.weight.dtype)
            yq = self._embedding_weights(ce.q(z), ce.k((psi < 0).long()), ce.num_features).sum().to(yq.dtype)
        se = self.model.spin_embedding
        if se is not None:
            psi = st["spin"].to(se.q.weight.dtype)
            ys = self._embedding_weights(se.q(z), se.k((psi < 0).long()), se.num_features).sum().to(ys.dtype)
        return torch.stack([yq, ys])

    def _embed(self, st: Dict[str, Tensor], totals: Optional[Tensor]) -> None:
        """x^0 on the kept atoms. With ``totals`` (rank-summed embedding weights) the charge/spin embedding
        is normalised over all atoms of the system; ChargeSpinEmbedding normalises over the atoms
        0..nlocal-1 it is given, so psi is rescaled by (rank's sum / system's sum)."""
        m = self.model
        nl = int(st["nlocal"])
        n_in = int(st["cnt"][self.num_layers])
        z = st["z"][:n_in]
        batch = torch.zeros(n_in, dtype=torch.long, device=z.device)
        x = m.atom_embedding(z)
        own: Optional[Tensor] = None
        if totals is not None:
            own = self._embedding_partials(st)
        ce = m.charge_embedding
        if ce is not None:
            psi = st["charge"]
            if totals is not None and own is not None:
                psi = psi * (own[0] / totals[0].to(own.dtype))
            x = x + ce(z, psi, batch, 1, nl)
        se = m.spin_embedding
        if se is not None:
            psi = st["spin"]
            if totals is not None and own is not None:
                psi = psi * (own[1] / totals[1].to(own.dtype))
            x = x + se(z, psi, batch, 1, nl)
        x = x / math.sqrt(float(m.num_embeddings))
        st["x"] = x
        st["ev"] = torch.zeros(n_in, m.m_tot, dtype=x.dtype, device=x.device)

    def _cell_or_none(self, st: Dict[str, Tensor]) -> Optional[Tensor]:
        if int(st["periodic"]) == 1:
            return st["cell"]
        return None

    def _layers(self, st: Dict[str, Tensor], start: int, stop: int, kv_total: Optional[Tensor]) -> None:
        """Run layers start..stop-1 on the pruned sets; an EFA layer must be ``start`` and get ``kv_total``."""
        L = self.num_layers
        x = st["x"]
        ev = st["ev"]
        pos = st["pos"]
        cnt = st["cnt"]
        ecnt = st["ecnt"]
        cell1 = torch.zeros(1, 3, 3, dtype=pos.dtype, device=pos.device)
        pbc1 = torch.zeros(1, 3, dtype=torch.bool, device=pos.device)
        for k, layer in enumerate(self.model.layers):
            if k >= start and k < stop:
                n_in = x.shape[0]
                n_c = int(cnt[L - k - 1])
                e_c = int(ecnt[L - k - 1])
                rbf = st["rbf"][:e_c]
                ylm = st["ylm"][:e_c]
                cut = st["cut"][:e_c]
                ii = st["ii"][:e_c]
                jj = st["jj"][:e_c]
                blk = layer.efa
                efa = blk.efa
                if efa is not None:
                    # So3kratesLayer.forward with EFABlock.forward, the EFA from the rank-summed key-value sums
                    if kv_total is None or k != start:
                        raise RuntimeError("internal: EFA layer " + str(k) + " reached without its global sums")
                    shape: List[int] = st["shape"].tolist()
                    kv = kv_total.to(x.dtype).reshape(shape)
                    x_att, ev_att = layer.attention_block(x, ev, rbf, ylm, cut, ii, jj)
                    xc = x[:n_c]
                    y = efa.apply_global_sums(xc, pos[:n_c], kv, self._cell_or_none(st))
                    x, ev = layer.finish(blk.blend(xc, x_att[:n_c], y), ev[:n_c] + ev_att[:n_c])
                else:
                    batch = torch.zeros(n_in, dtype=torch.long, device=pos.device)
                    x, ev = layer(x, ev, rbf, ylm, cut, ii, jj, pos[:n_in], batch, 1, cell1, pbc1)
                    x = x[:n_c]
                    ev = ev[:n_c]
        st["x"] = x
        st["ev"] = ev

    def _efa_partials(self, st: Dict[str, Tensor], layer_index: int) -> Tensor:
        """Key-value sums of the EFA of layer ``layer_index`` over the owned atoms (features x^{layer_index})."""
        nl = int(st["nlocal"])
        x = st["x"][:nl]
        pos = st["pos"][:nl]
        out = torch.zeros(0, dtype=x.dtype, device=x.device)
        for k, layer in enumerate(self.model.layers):
            if k == layer_index:
                efa = layer.efa.efa
                if efa is not None:
                    w = torch.ones(nl, dtype=x.dtype, device=x.device)
                    kv = efa.global_sums(x, pos, w, self._cell_or_none(st))
                    st["shape"] = torch.tensor(kv.shape, dtype=torch.long)
                    out = kv.reshape(-1)
        return out

    def _charge_partials(self, st: Dict[str, Tensor]) -> Tensor:
        """[sum of raw partial charges (e), number of atoms] over the owned atoms."""
        x = st["x"]
        nl = int(st["nlocal"])
        ch = self.model.charges_head
        if ch is None:
            raise RuntimeError("internal: charge stage without a charge head")
        raw = ch.raw(x, st["z"][:x.shape[0]])[:nl]
        return torch.stack([raw.sum(), torch.full_like(raw[0], float(nl))])

    def _lr_quantities(self, st: Dict[str, Tensor], n: int) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """Partial charges (e, corrected with the charge totals) and Hirshfeld ratios of kept atoms 0..n-1."""
        x = st["x"][:n]
        z = st["z"][:n]
        q: Optional[Tensor] = None
        v: Optional[Tensor] = None
        ch = self.model.charges_head
        if ch is not None:
            if "charge_totals" not in st:
                raise RuntimeError("internal: partial charges of an electrostatics model without the charge totals")
            raw = ch.raw(x, z)
            t = st["charge_totals"].to(raw.dtype)
            batch = torch.zeros(n, dtype=torch.long, device=x.device)
            q = ch.correct(raw, batch, st["charge"], t[0:1], t[1:2])
        hh = self.model.hirshfeld_head
        if hh is not None:
            v = hh(x, z)
        return q, v

    def _exchange_values(self, st: Dict[str, Tensor]) -> Tensor:
        """[nlocal, exchange_width]: the owned atoms' partial charges and/or Hirshfeld ratios."""
        nl = int(st["nlocal"])
        q, v = self._lr_quantities(st, nl)
        cols: List[Tensor] = []
        if q is not None:
            cols.append(q)
        if v is not None:
            cols.append(v)
        return torch.stack(cols, dim=1)

    def _energies(self, st: Dict[str, Tensor]) -> Tensor:
        """Per-atom energies [Ntot] (eV) of the owned atoms (0 for ghosts)."""
        m = self.model
        x = st["x"]
        n0 = x.shape[0]
        z = st["z"]
        nl = int(st["nlocal"])
        ntot = int(st["ntot"])
        energy = m.energy_head(x, z[:n0])
        zbl = m.zbl
        if zbl is not None:
            e_own = int(st["ecnt"][self.num_layers])
            energy = energy + zbl(z, st["d"][:e_own], st["ii"][:e_own], st["jj"][:e_own], st["cut"][:e_own])[:n0]
        energy = energy[:nl]
        q: Optional[Tensor] = None
        v: Optional[Tensor] = None
        z_lr = z[:n0]
        if int(st["staged"]) == 1:
            if self.exchange_width > 0:
                vals = st["lr_values"].to(x.dtype)
                k = 0
                if m.charges_head is not None:
                    q = vals[:, 0]
                    k = 1
                if m.hirshfeld_head is not None:
                    v = vals[:, k]
            z_lr = st["z_all"]
        else:
            q, v = self._lr_quantities(st, n0)
        es = m.electrostatics
        if es is not None and q is not None:
            energy = energy + es(q, st["dl"], st["il"], st["jl"])[:nl]
        disp = m.dispersion
        if disp is not None and v is not None:
            energy = energy + disp(v, z_lr, st["dl"], st["il"], st["jl"])[:nl]
        return torch.cat([energy, torch.zeros(ntot - nl, dtype=energy.dtype, device=energy.device)])
