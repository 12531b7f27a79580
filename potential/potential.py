"""``So3kratesPotential``: energy, forces and stress of one structure (neighbour lists inside).

Units: positions and cell in Å, energy in eV, forces in eV/Å, stress in eV/Å³ (ASE sign
convention: stress = (1/V) dE/dε, negative when the structure is under compression).
TorchScript-able; ``so3krates export`` scripts it into the exported file's ``forward``.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .forces import autograd_gradients, lean_gradients, strain
from .graph.edges import pair_vectors, pair_vectors_no_grad
from .graph.neighbors import neighbor_list, no_pairs
from .graph.pair_cache import lists_still_valid, select_within, split_candidates
from .graph.static_pairs import plan_static_pairs, static_pairs
from .model import So3krates
from .validate import check_inputs, check_min_distance, check_shapes, known_elements


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of a model's floating-point parameters (or buffers)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    for b in model.buffers():
        if b.is_floating_point():
            return b.dtype
    return torch.get_default_dtype()


class So3kratesPotential(nn.Module):
    """Energy, forces, stress and atomic energies of one structure.

    ``forward(positions [N,3] Å, atomic_numbers [N] int, cell [3,3] Å (rows a, b, c; zeros for
    open), pbc [3] bool, total_charge e, num_unpaired_electrons, compute_forces, compute_stress)``
    returns ``{"energy": [] eV, "forces": [N,3] eV/Å, "stress": [3,3] eV/Å³ (only with
    compute_stress), "atomic_energies": [N] eV}`` plus the model's other per-atom outputs
    (``partial_charges`` in e, ``hirshfeld_ratios``). Inputs are converted to the model's dtype.

    Eval mode: forces and stress come from the model's memory-lean pass (``energy_and_gradients``:
    memory O(N) + one chunk of pairs; ``chunk_size`` attribute, 0 = the model's default — plus up to
    ``filter_memory_mb`` MiB, default 1024, of filter state kept from the forward so that the backward
    need not recompute it: ~2.3 kB per local pair and layer in float32, so systems up to ~5k SO3LR atoms
    keep all of it; 0 = recompute everything, the leanest) and carry no graph. Training mode
    (``.train()``): autograd with ``create_graph=True``, so that a force loss can be back-propagated.

    ``neighbor_skin`` (Å, default 0): with a skin the pair lists of one search (cutoff + skin) are reused
    by later calls — MD steps — until an atom has moved skin/2 or the cell changed; each call selects
    the pairs within the cutoffs by distance (same pairs as a new search; ``graph/pair_cache.py``).
    ``neighbor_list_builds`` counts the searches.

    ``capturable`` (default False): a step with fixed shapes and no read-back to the host, which a CUDA
    graph can capture (openmm-torch ``useCUDAGraphs``; docs/gpu.md). Fully periodic boxes with a fixed cell
    (NVT/NVE), eval mode, EFA layers in the ``simplex`` mode (run with ``So3krates.static_efa_settings``).
    The first call (outside the graph) checks the structure as usual (raising) and makes a plan
    (``graph/static_pairs.py``: bins and pair slots with room to spare); every call then searches the pairs
    with the plan's shapes. What a captured step cannot raise it reports: the output ``status`` (int, 0 =
    fine; ``status_message``) and NaN energy, forces and stress when it is not 0
    (1 positions not finite or an unknown element, 2 the cell is not the plan's, 4 / 8 the local /
    long-range pair slots or bins overflowed, 16 atoms closer than ``min_distance``). ``reset_static_plan``
    makes the next call plan anew (another box, another cell). The skin is not used in this mode.

    Raises ``ValueError`` naming the problem and the fix for NaN/inf positions, unknown elements,
    atoms closer than ``min_distance`` (0.1 Å), a periodic cell of zero volume, stress requested
    without a periodic cell, and wrong shapes or dtypes.
    """

    pair_cache: List[Tensor]  # (class annotation: TorchScript cannot infer the type of an empty list)
    static_plan: List[Tensor]
    static_plan_ints: List[int]

    def __init__(self, model: So3krates, min_distance: float = 0.1):
        super().__init__()
        self.model = model
        self.cutoff = float(model.cutoff)
        self.cutoff_lr = float(model.cutoff_lr)
        self.long_range = bool(model.long_range)
        self.species: List[int] = [int(z) for z in model.species]
        self.min_distance = float(min_distance)
        self.chunk_size: int = 0
        # memory-for-speed trade of the lean pass: MiB of filter state kept between its forward and backward
        # (So3krates.energy_and_gradients ``keep_bytes``; 0 = recompute it, the leanest)
        self.filter_memory_mb: int = 1024
        # pair lists reused across calls (MD steps): built with cutoff + neighbor_skin Å, rebuilt once an atom
        # moved neighbor_skin / 2 or the cell changed (graph/pair_cache.py); 0 = a new search every call
        self.neighbor_skin: float = 0.0
        self.neighbor_list_builds: int = 0  # searches so far (a diagnostic: calls - builds = reuses)
        self.pair_cache: List[Tensor] = []  # [positions, cell, pbc, the six lists] of the last build with a skin
        self.pair_cache_skin: float = 0.0
        # capturable steps (CUDA graphs): pair lists with the fixed shapes of a plan, checks reported as a status
        self.capturable: bool = False
        self.static_plan: List[Tensor] = []  # the local plan's six tensors, then the long-range plan's
        self.static_plan_ints: List[int] = []  # the local plan's five ints, then the long-range plan's
        if len(self.species) == 0:
            raise ValueError("the model lists no species (model.species is empty)")
        known = torch.zeros(max(self.species) + 1, dtype=torch.bool)
        known[torch.tensor(self.species, dtype=torch.long)] = True
        self.register_buffer("known_species", known, persistent=False)
        self.register_buffer("dtype_ref", torch.zeros(0, dtype=model_dtype(model)), persistent=False)

    def pair_lists(self, positions: Tensor, cell: Tensor, pbc: Tensor, open_sys: bool
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Local and long-range pair lists (each pair once): idx_i, idx_j, shifts, idx_i_lr, idx_j_lr, shifts_lr.
        With ``neighbor_skin`` > 0 Å the lists of the last search (cutoff + skin) are reused while they cover
        the structure (``graph/pair_cache.py``), the pairs within the cutoffs selected by distance."""
        skin = float(self.neighbor_skin)
        if skin < 0.0 or skin != skin:
            raise ValueError("neighbor_skin must be >= 0 Å (0 = a new neighbour search every call); got " + str(skin))
        if skin == 0.0:
            self.neighbor_list_builds += 1
            return self.search_pair_lists(positions, cell, pbc, open_sys, 0.0)
        long_range = self.long_range and self.cutoff_lr > 0.0
        if not (self.pair_cache_skin == skin and lists_still_valid(self.pair_cache, positions, cell, pbc, skin)):
            lists = self.search_pair_lists(positions, cell, pbc, open_sys, skin)
            lr = split_candidates(positions, cell, lists[3], lists[4], lists[5], self.cutoff_lr, skin) \
                if long_range else [lists[3], lists[4], lists[5]]
            self.pair_cache = [positions.clone(), cell.clone(), pbc.clone()] + \
                split_candidates(positions, cell, lists[0], lists[1], lists[2], self.cutoff, skin) + lr
            self.pair_cache_skin = skin
            self.neighbor_list_builds += 1
        c = self.pair_cache
        idx_i, idx_j, shifts = select_within(positions, cell, c[3:9], self.cutoff)
        if long_range:
            idx_i_lr, idx_j_lr, shifts_lr = select_within(positions, cell, c[9:15], self.cutoff_lr)
            return idx_i, idx_j, shifts, idx_i_lr, idx_j_lr, shifts_lr
        return idx_i, idx_j, shifts, c[9], c[10], c[11]  # all pairs of an open system, or none

    def search_pair_lists(self, positions: Tensor, cell: Tensor, pbc: Tensor, open_sys: bool, skin: float
                          ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``pair_lists`` by a new cell-list search, with every cutoff enlarged by ``skin`` Å."""
        idx_i, idx_j, shifts = neighbor_list(positions, self.cutoff + skin, cell, pbc, True)
        device = positions.device
        if self.long_range and self.cutoff_lr > 0.0:
            idx_i_lr, idx_j_lr, shifts_lr = neighbor_list(positions, self.cutoff_lr + skin, cell, pbc, True)
        elif self.long_range:
            if not open_sys:
                raise ValueError("this model has no long-range cutoff (cutoff_lr = None: long-range terms over "
                                 "all pairs), which only works for open systems; use pbc=False / a zero cell, or "
                                 "a model configured with a finite cutoff_lr (e.g. 12 Å) for periodic systems")
            n = positions.shape[0]
            pairs = torch.triu_indices(n, n, 1, device=device)
            idx_i_lr = pairs[0]
            idx_j_lr = pairs[1]
            shifts_lr = torch.zeros(idx_i_lr.shape[0], 3, dtype=positions.dtype, device=device)
        else:
            idx_i_lr, idx_j_lr, shifts_lr = no_pairs(device, positions.dtype)
        return idx_i, idx_j, shifts, idx_i_lr, idx_j_lr, shifts_lr

    def forward(self, positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor,
                total_charge: float = 0.0, num_unpaired_electrons: float = 0.0,
                compute_forces: bool = True, compute_stress: bool = False) -> Dict[str, Tensor]:
        if self.capturable:
            return self.capturable_forward(positions, atomic_numbers, cell, pbc, total_charge, num_unpaired_electrons,
                                           compute_forces, compute_stress)
        open_sys = check_inputs(positions, atomic_numbers, cell, pbc, self.known_species, self.species)
        dtype = self.dtype_ref.dtype
        device = positions.device
        z = atomic_numbers.to(torch.long)
        n = positions.shape[0]
        # pair vectors are formed in float64 when the positions come in float64 (then cast to the
        # model's dtype): differences of large coordinates lose no digits in a float32 model
        gdt = torch.float64 if positions.dtype == torch.float64 else dtype
        # the inputs without their graph (.data: torch.jit.freeze, which openmm-torch applies, drops
        # .detach(), and OpenMM's positions require grad)
        pos_g = positions.data.to(gdt)
        if open_sys:
            cell_g = torch.zeros(3, 3, dtype=gdt, device=device)
            pbc_b = torch.zeros(3, dtype=torch.bool, device=device)
        else:
            cell_g = cell.data.to(gdt)
            pbc_b = pbc.to(torch.bool)
        if compute_stress and (open_sys or abs(float(torch.linalg.det(cell_g.to(torch.float64)))) == 0.0):
            raise ValueError("stress needs a periodic cell with non-zero volume; this structure is open (or its "
                             "cell volume is zero). Call with compute_stress=False or give a periodic cell")
        idx_i, idx_j, shifts, idx_i_lr, idx_j_lr, shifts_lr = self.pair_lists(pos_g, cell_g, pbc_b, open_sys)
        vec_g = pair_vectors_no_grad(pos_g, cell_g, idx_i, idx_j, shifts, gdt)
        check_min_distance(vec_g, idx_i, idx_j, shifts, self.min_distance)

        batch = torch.zeros(n, dtype=torch.long, device=device)
        q_tot = torch.full((1,), total_charge, dtype=dtype, device=device)
        s_tot = torch.full((1,), num_unpaired_electrons, dtype=dtype, device=device)
        grad_was_enabled = torch.is_grad_enabled()
        g_pos: Optional[Tensor] = None
        g_strain: Optional[Tensor] = None
        if (compute_forces or compute_stress) and not self.training:
            # memory-lean pass: explicit gradients w.r.t. the pair vectors, no graph
            out, g_pos, g_strain = self.lean_pass(pos_g, z, cell_g, pbc_b, idx_i, idx_j, shifts, vec_g, idx_i_lr,
                                                  idx_j_lr, shifts_lr, q_tot, s_tot, compute_stress, None, None)
        else:
            # autograd (training: graph kept for a force loss), or energy only without a graph
            torch.set_grad_enabled(self.training or compute_forces or compute_stress or positions.requires_grad)
            pos = positions.to(gdt) if positions.requires_grad else pos_g.requires_grad_(compute_forces)
            pos_s, cell_s, eps = strain(pos, cell_g.unsqueeze(0), batch, 1, compute_stress)
            vec = pair_vectors(pos_s, cell_s[0], idx_i, idx_j, shifts).to(dtype)
            vec_lr = pair_vectors(pos_s, cell_s[0], idx_i_lr, idx_j_lr, shifts_lr).to(dtype)
            out = self.model(pos_s.to(dtype), z, vec, idx_i, idx_j, vec_lr, idx_i_lr, idx_j_lr, batch, 1, q_tot, s_tot,
                             cell_s.to(dtype), pbc_b.unsqueeze(0))
            g_pos, g_eps = autograd_gradients(out["atomic_energies"].sum(), pos, eps, compute_forces, compute_stress,
                                              self.training)
            if g_eps is not None:
                g_strain = g_eps[0]
        torch.set_grad_enabled(grad_was_enabled)
        return self.results(out, g_pos, g_strain, cell_g, n, compute_forces, compute_stress)

    def results(self, out: Dict[str, Tensor], g_pos: Optional[Tensor], g_strain: Optional[Tensor], cell: Tensor,
                n: int, compute_forces: bool, compute_stress: bool) -> Dict[str, Tensor]:
        """The output dict: the model's per-atom outputs, energy (eV), forces (eV/Å), stress (eV/Å³)."""
        dtype = self.dtype_ref.dtype
        device = cell.device
        result: Dict[str, Tensor] = {}
        for key, value in out.items():
            result[key] = value
        result["energy"] = out["atomic_energies"].sum()
        if compute_forces:
            result["forces"] = -g_pos.to(dtype) if g_pos is not None else torch.zeros(n, 3, dtype=dtype, device=device)
        if compute_stress:
            volume = torch.linalg.det(cell).abs()
            result["stress"] = (g_strain / volume).to(dtype) if g_strain is not None \
                else torch.zeros(3, 3, dtype=dtype, device=device)
        return result

    def lean_pass(self, pos_g: Tensor, z: Tensor, cell_g: Tensor, pbc_b: Tensor, idx_i: Tensor, idx_j: Tensor,
                  shifts: Tensor, vec_g: Tensor, idx_i_lr: Tensor, idx_j_lr: Tensor, shifts_lr: Tensor, q_tot: Tensor,
                  s_tot: Tensor, compute_stress: bool, valid: Optional[Tensor], valid_lr: Optional[Tensor]
                  ) -> Tuple[Dict[str, Tensor], Optional[Tensor], Optional[Tensor]]:
        """The memory-lean pass (``So3krates.energy_and_gradients``) and the chain rule to dE/d positions and
        dE/d strain. ``valid`` / ``valid_lr``: the real pairs of padded lists (capturable steps); the gradients
        of the padding are set to exactly zero."""
        dtype = self.dtype_ref.dtype
        batch = torch.zeros(pos_g.shape[0], dtype=torch.long, device=pos_g.device)
        vec_lr = pair_vectors_no_grad(pos_g, cell_g, idx_i_lr, idx_j_lr, shifts_lr, dtype)
        out, g = self.model.energy_and_gradients(pos_g.to(dtype), z, vec_g.to(dtype), idx_i, idx_j, vec_lr,
                                                 idx_i_lr, idx_j_lr, batch, 1, q_tot, s_tot,
                                                 cell_g.to(dtype).unsqueeze(0), pbc_b.unsqueeze(0),
                                                 self.chunk_size, self.filter_memory_mb * 1048576)
        if valid is not None:
            g[0] = torch.where(valid.unsqueeze(1), g[0], torch.zeros_like(g[0]))
        if valid_lr is not None:
            g[1] = torch.where(valid_lr.unsqueeze(1), g[1], torch.zeros_like(g[1]))
        g_pos, g_strain = lean_gradients(pos_g, cell_g, idx_i, idx_j, shifts, idx_i_lr, idx_j_lr, shifts_lr, g,
                                         compute_stress)
        return out, g_pos, g_strain

    @torch.jit.export
    def reset_static_plan(self):
        """Make the next capturable call plan its pair lists anew (another structure or cell)."""
        empty_plan: List[Tensor] = []
        empty_ints: List[int] = []
        self.static_plan = empty_plan
        self.static_plan_ints = empty_ints

    @torch.jit.export
    def capturable_problem(self) -> str:
        """Why this model cannot run capturable steps ("" when it can)."""
        if self.long_range and self.cutoff_lr <= 0.0:
            return ("capturable steps need a model with a finite long-range cutoff (cutoff_lr) or none: this one sums "
                    "its long-range terms over all pairs (open systems only)")
        if self.model.has_efa and (self.model.efa_qk_degrees > 0 or not self.model.efa_simplex):
            return ("capturable steps cover EFA layers in the periodic 'simplex' mode without direction-dependent "
                    "queries/keys only: this model's EFA ('kshell' mode, or efa_qk_degrees > 0) forms a number of "
                    "k vectors that depends on the cell (host read-backs). Run it with capturable = False")
        return ""

    def make_static_plan(self, pos_g: Tensor, cell_g: Tensor, pbc_b: Tensor):
        """Plan the capturable pair lists (local, then long-range) from this structure (host reads allowed)."""
        problem = self.capturable_problem()
        if problem != "":
            raise ValueError(problem)
        ints, plan = plan_static_pairs(pos_g, cell_g, pbc_b, self.cutoff)
        if self.long_range:
            ints_lr, plan_lr = plan_static_pairs(pos_g, cell_g, pbc_b, self.cutoff_lr)
            ints = ints + ints_lr
            plan = plan + plan_lr
        self.static_plan = plan
        self.static_plan_ints = ints
        self.neighbor_list_builds += 1

    def capturable_forward(self, positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor,
                           total_charge: float, num_unpaired_electrons: float, compute_forces: bool,
                           compute_stress: bool) -> Dict[str, Tensor]:
        """``forward`` with ``capturable``: no host read-back after the planning call (see the class doc)."""
        if self.training:
            raise ValueError("capturable steps run the memory-lean pass of eval mode: call .eval() first (training "
                             "needs the autograd graph and the ordinary pair lists)")
        check_shapes(positions, atomic_numbers, cell, pbc)
        dtype = self.dtype_ref.dtype
        device = positions.device
        n = positions.shape[0]
        gdt = torch.float64 if positions.dtype == torch.float64 else dtype
        pos_g = positions.data.to(gdt)
        cell_g = cell.data.to(gdt)
        pbc_b = pbc.to(torch.bool)
        planning = len(self.static_plan_ints) == 0 or self.static_plan_ints[4] != n \
            or self.static_plan[0].device != device
        if planning:  # outside the graph: the ordinary checks, raising with their messages
            if check_inputs(positions, atomic_numbers, cell, pbc, self.known_species, self.species):
                raise ValueError("capturable steps need a fully periodic box (pbc all True, a cell in Å): this "
                                 "structure is open. Use capturable = False (the ordinary search) for it")
            self.make_static_plan(pos_g, cell_g, pbc_b)
        plan = self.static_plan
        ints = self.static_plan_ints
        z = atomic_numbers.to(torch.long)
        known = known_elements(z, self.known_species)
        inputs_ok = torch.isfinite(positions).all() & known.all()
        # keep what a bad input would break out of the model (the outputs are poisoned below)
        z = torch.where(known, z, torch.full_like(z, self.species[0]))
        pos_g = torch.where(torch.isfinite(pos_g), pos_g, torch.zeros_like(pos_g))
        same_cell = (cell_g.to(torch.float64) == plan[0]).all()
        idx_i, idx_j, shifts, valid, ok = static_pairs(pos_g, ints[0:5], plan[0:6], self.cutoff, gdt)
        if self.long_range:
            idx_i_lr, idx_j_lr, shifts_lr, valid_lr, ok_lr = static_pairs(pos_g, ints[5:10], plan[6:12],
                                                                          self.cutoff_lr, gdt)
        else:
            idx_i_lr, idx_j_lr, shifts_lr = no_pairs(device, gdt)
            valid_lr = torch.zeros(0, dtype=torch.bool, device=device)
            ok_lr = torch.ones((), dtype=torch.bool, device=device)
        vec_g = pair_vectors_no_grad(pos_g, cell_g, idx_i, idx_j, shifts, gdt)
        if planning:
            keep = torch.nonzero(valid).squeeze(1)
            check_min_distance(vec_g.index_select(0, keep), idx_i.index_select(0, keep), idx_j.index_select(0, keep),
                               shifts.index_select(0, keep), self.min_distance)
        dist = torch.linalg.norm(vec_g, dim=1)
        close = (valid & (dist < self.min_distance)).any()
        q_tot = torch.full((1,), total_charge, dtype=dtype, device=device)
        s_tot = torch.full((1,), num_unpaired_electrons, dtype=dtype, device=device)
        # the EFA without data-dependent shapes (as ahead-of-time compilation sets it), for this call only
        efa_settings = self.model.efa_settings()
        self.model.set_efa_settings(self.model.static_efa_settings())
        out, g_pos, g_strain = self.lean_pass(pos_g, z, cell_g, pbc_b, idx_i, idx_j, shifts, vec_g, idx_i_lr,
                                              idx_j_lr, shifts_lr, q_tot, s_tot, compute_stress, valid, valid_lr)
        self.model.set_efa_settings(efa_settings)
        result = self.results(out, g_pos, g_strain, cell_g, n, compute_forces, compute_stress)
        # the bits of ``status`` (so3krates.export.loader.STATUS_BITS says what each means)
        status = (~inputs_ok).to(torch.long) + 2 * (~same_cell).to(torch.long) + 4 * (~ok).to(torch.long) \
            + 8 * (~ok_lr).to(torch.long) + 16 * close.to(torch.long)
        bad = status != 0
        for key in list(result.keys()):
            value = result[key]
            if value.is_floating_point():
                result[key] = torch.where(bad, torch.full_like(value, float("nan")), value)
        result["status"] = status
        return result
