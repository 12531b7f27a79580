"""``So3kratesPotential``: neighbour lists + autograd around a So3krates-style model.

Units: positions and cell in Å, energy in eV, forces in eV/Å, stress in eV/Å³ (ASE sign
convention: stress = (1/V) dE/dε, negative when the structure is under compression).

The wrapped model must have the ``So3krates.forward`` signature of docs/internals.md and the
attributes ``cutoff`` (Å), ``cutoff_lr`` (Å) and ``species`` (list of the atomic numbers it
knows), optionally ``long_range`` (bool: the model uses the long-range pair graph; default
``cutoff_lr > 0``). Long-range graph: all pairs within ``cutoff_lr`` when ``cutoff_lr > 0``;
all pairs of the structure when ``cutoff_lr <= 0`` (no long-range cutoff; open systems only);
empty when ``long_range`` is False. The module is TorchScript-able; the exporter scripts it.
"""
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from .neighbors import neighbor_list
from .validate import check_cell, check_min_distance, check_species, check_structure, is_open


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    for b in model.buffers():
        if b.is_floating_point():
            return b.dtype
    return torch.get_default_dtype()


def _edge_vectors(pos: Tensor, cell: Tensor, idx_i: Tensor, idx_j: Tensor, shifts: Tensor,
                  dtype: torch.dtype, chunk: int = 1048576) -> Tensor:
    """r_e = pos[j] - pos[i] + shift @ cell (Å) in the positions' precision, returned in ``dtype``;
    no graph, in chunks (bounded temporaries)."""
    out = torch.empty(idx_i.shape[0], 3, dtype=dtype, device=pos.device)
    for a in range(0, idx_i.shape[0], chunk):
        b = min(idx_i.shape[0], a + chunk)
        v = pos.index_select(0, idx_j[a:b]) - pos.index_select(0, idx_i[a:b]) + shifts[a:b].to(pos.dtype) @ cell
        out[a:b] = v.to(dtype)
    return out


def _virial(pos: Tensor, cell: Tensor, idx_i: Tensor, idx_j: Tensor, shifts: Tensor, g: Tensor,
            chunk: int = 1048576) -> Tensor:
    """sum_e r_e^T g_e [3,3] (r_e recomputed in the positions' precision, in chunks)."""
    m = torch.zeros(3, 3, dtype=pos.dtype, device=pos.device)
    for a in range(0, idx_i.shape[0], chunk):
        b = min(idx_i.shape[0], a + chunk)
        v = pos.index_select(0, idx_j[a:b]) - pos.index_select(0, idx_i[a:b]) + shifts[a:b].to(pos.dtype) @ cell
        m = m + v.t() @ g[a:b]
    return m


class So3kratesPotential(nn.Module):
    """Energy, forces, stress and atomic energies of one structure.

    ``forward(positions [N,3] Å, atomic_numbers [N] int, cell [3,3] Å (rows a, b, c; zeros for
    open), pbc [3] bool, total_charge e, num_unpaired_electrons, compute_forces, compute_stress)``
    returns ``{"energy": [] eV, "forces": [N,3] eV/Å, "stress": [3,3] eV/Å³ (only with
    compute_stress), "atomic_energies": [N] eV}`` plus the model's other per-atom outputs
    (e.g. ``partial_charges`` in e, ``hirshfeld_ratios``). Inputs are converted to the model's
    dtype; outputs are in the model's dtype. In training mode (``.train()``) forces and stress
    keep their graph (``create_graph=True``) so that a force loss can be back-propagated.
    In eval mode, models with an ``energy_and_gradients`` method (``So3krates``) compute forces
    and stress with it: the same values with memory O(N) + one chunk of edges instead of
    O(edges x features x layers); outputs then carry no graph (``chunk_size`` attribute: edges per
    chunk, 0 = the model's default).

    Raises ``ValueError`` naming the problem and the fix for NaN/inf positions, unknown
    elements, atoms closer than ``min_distance`` (0.1 Å), a periodic cell of zero volume,
    stress requested without a periodic cell, and wrong shapes or dtypes.
    """

    def __init__(self, model: nn.Module, min_distance: float = 0.1):
        super().__init__()
        self.model = model
        self.cutoff = float(model.cutoff)
        lr = getattr(model, "cutoff_lr", 0.0)
        self.cutoff_lr = float(lr) if lr is not None else -1.0
        self.long_range = bool(getattr(model, "long_range", self.cutoff_lr > 0.0))
        self.species: List[int] = [int(z) for z in model.species]
        self.min_distance = float(min_distance)
        # edges per chunk of the model's memory-lean inference pass (0: the model's default)
        self.chunk_size: int = 0
        if len(self.species) == 0:
            raise ValueError("the model lists no species (model.species is empty)")
        known = torch.zeros(max(self.species) + 1, dtype=torch.bool)
        known[torch.tensor(self.species, dtype=torch.long)] = True
        self.register_buffer("known_species", known, persistent=False)
        self.register_buffer("dtype_ref", torch.zeros(0, dtype=_model_dtype(model)),
                             persistent=False)

    def forward(self, positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor,
                total_charge: float = 0.0, num_unpaired_electrons: float = 0.0,
                compute_forces: bool = True, compute_stress: bool = False) -> Dict[str, Tensor]:
        check_structure(positions, atomic_numbers, cell, pbc)
        check_species(atomic_numbers, self.known_species, self.species)
        check_cell(cell, pbc)
        dtype = self.dtype_ref.dtype
        device = positions.device
        pbc_b = pbc.to(torch.bool)
        z = atomic_numbers.to(torch.long)
        n = positions.shape[0]
        open_sys = is_open(cell, pbc_b)
        if open_sys:
            cell_m = torch.zeros(3, 3, dtype=dtype, device=device)
            pbc_b = torch.zeros(3, dtype=torch.bool, device=device)
        else:
            cell_m = cell.to(dtype)
        if compute_stress:
            if open_sys or abs(float(torch.linalg.det(cell_m.detach().to(torch.float64)))) == 0.0:
                raise ValueError("stress needs a periodic cell with non-zero volume; this "
                                 "structure is open (or its cell volume is zero). Call with "
                                 "compute_stress=False or give a periodic cell")

        need_grads = compute_forces or compute_stress
        # inference with forces: the model's memory-lean pass on half neighbour lists (each pair once)
        lean = False
        if hasattr(self.model, "energy_and_gradients"):  # resolved when scripting
            lean = need_grads and not self.training
        # edge vectors are formed in float64 when the positions come in float64 (then cast to the
        # model's dtype): differences of large coordinates lose no digits in a float32 model
        gdt = torch.float64 if positions.dtype == torch.float64 else dtype
        pos_g = positions.detach().to(gdt)
        cell_g = cell.detach().to(gdt) if not open_sys else cell_m.to(gdt)

        # neighbour lists on the unstrained geometry (indices and integer shifts only)
        idx_i, idx_j, shifts = neighbor_list(pos_g, self.cutoff, cell_g, pbc_b, lean)
        if self.long_range and self.cutoff_lr > 0.0:
            idx_i_lr, idx_j_lr, shifts_lr = neighbor_list(pos_g, self.cutoff_lr, cell_g, pbc_b, lean)
        elif self.long_range:
            if not open_sys:
                raise ValueError("this model has no long-range cutoff (cutoff_lr = None: "
                                 "long-range terms over all pairs), which only works for open "
                                 "systems; use pbc=False / a zero cell, or a model configured "
                                 "with a finite cutoff_lr (e.g. 12 Å) for periodic systems")
            ar = torch.arange(n, device=device)
            idx_i_lr = ar.repeat_interleave(n)
            idx_j_lr = ar.repeat(n)
            keep = idx_i_lr < idx_j_lr if lean else idx_i_lr != idx_j_lr
            idx_i_lr = idx_i_lr[keep]
            idx_j_lr = idx_j_lr[keep]
            shifts_lr = torch.zeros(idx_i_lr.shape[0], 3, dtype=gdt, device=device)
        else:
            idx_i_lr = torch.zeros(0, dtype=torch.long, device=device)
            idx_j_lr = torch.zeros(0, dtype=torch.long, device=device)
            shifts_lr = torch.zeros(0, 3, dtype=gdt, device=device)

        with torch.no_grad():
            check_min_distance(pos_g[idx_j] - pos_g[idx_i] + shifts @ cell_g, idx_i, idx_j, shifts,
                               self.min_distance)

        result: Dict[str, Tensor] = {}
        batch = torch.zeros(n, dtype=torch.long, device=device)
        q_tot = torch.full((1,), total_charge, dtype=dtype, device=device)
        s_tot = torch.full((1,), num_unpaired_electrons, dtype=dtype, device=device)
        # forces need autograd even when the caller runs under torch.no_grad()
        # (torch.enable_grad() is not scriptable; the previous mode is restored below)
        grad_was_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        out: Dict[str, Tensor] = {}
        g_pos: Optional[Tensor] = None
        g_strain: Optional[Tensor] = None
        if hasattr(self.model, "energy_and_gradients"):  # resolved when scripting
            if lean:
                # energy gradients w.r.t. the edge vectors from the model's memory-lean pass
                # (layer-wise recomputation in chunks, each pair once); no graph on the edge lists.
                # r_e(ε) = r_e (1 + ε) for positions and cell deformed by the strain ε.
                vec = _edge_vectors(pos_g, cell_g, idx_i, idx_j, shifts, dtype)
                vec_lr = _edge_vectors(pos_g, cell_g, idx_i_lr, idx_j_lr, shifts_lr, dtype)
                out, g = self.model.energy_and_gradients(pos_g.to(dtype), z, vec, idx_i, idx_j, vec_lr,
                                                         idx_i_lr, idx_j_lr, batch, 1, q_tot, s_tot,
                                                         cell_g.to(dtype).unsqueeze(0), pbc_b.unsqueeze(0),
                                                         self.chunk_size, True)
                gv = g[0].to(gdt)
                gv_lr = g[1].to(gdt)
                gp = g[2].to(gdt)
                gpos = gp.index_add(0, idx_j, gv).index_add(0, idx_i, -gv)
                gpos = gpos.index_add(0, idx_j_lr, gv_lr).index_add(0, idx_i_lr, -gv_lr)
                g_pos = gpos
                if compute_stress:
                    m = pos_g.t() @ gp + cell_g.t() @ g[3][0].to(gdt)
                    m = m + _virial(pos_g, cell_g, idx_i, idx_j, shifts, gv)
                    m = m + _virial(pos_g, cell_g, idx_i_lr, idx_j_lr, shifts_lr, gv_lr)
                    g_strain = 0.5 * (m + m.t())
        if not lean:
            pos = pos_g
            if need_grads and not positions.requires_grad:
                pos = pos.requires_grad_(True)
            elif positions.requires_grad:
                pos = positions.to(gdt)
            strain = torch.zeros(3, 3, dtype=gdt, device=device)
            if compute_stress:
                strain.requires_grad_(True)
            if compute_stress:
                deform = torch.eye(3, dtype=gdt, device=device) + 0.5 * (strain + strain.t())
                pos_s = pos @ deform
                cell_s = cell_g @ deform
            else:
                pos_s = pos
                cell_s = cell_g
            edge_vectors = (pos_s[idx_j] - pos_s[idx_i] + shifts @ cell_s).to(dtype)
            edge_vectors_lr = (pos_s[idx_j_lr] - pos_s[idx_i_lr] + shifts_lr @ cell_s).to(dtype)
            if not need_grads and not self.training and not positions.requires_grad:
                torch.set_grad_enabled(False)  # energy only: no graph
            out = self.model(pos_s.to(dtype), z, edge_vectors, idx_i, idx_j, edge_vectors_lr, idx_i_lr,
                             idx_j_lr, batch, 1, q_tot, s_tot, cell_s.to(dtype).unsqueeze(0), pbc_b.unsqueeze(0))
            torch.set_grad_enabled(True)
            energy = out["atomic_energies"].sum()
            if need_grads and energy.requires_grad:
                inputs: List[Tensor] = [pos]
                if compute_stress:
                    inputs.append(strain)
                grad_out: List[Optional[Tensor]] = [torch.ones_like(energy)]
                grads = torch.autograd.grad([energy], inputs, grad_outputs=grad_out,
                                            create_graph=self.training, allow_unused=True)
                g_pos = grads[0]
                if compute_stress:
                    g_strain = grads[1]
        atomic_energies = out["atomic_energies"]
        for key, value in out.items():
            if key != "atomic_energies":
                result[key] = value
        result["atomic_energies"] = atomic_energies
        result["energy"] = atomic_energies.sum()
        if compute_forces:
            if g_pos is None:
                result["forces"] = torch.zeros(n, 3, dtype=dtype, device=device)
            else:
                result["forces"] = -g_pos.to(dtype)
        if compute_stress:
            volume = torch.linalg.det(cell_g).abs()
            if g_strain is None:
                result["stress"] = torch.zeros(3, 3, dtype=dtype, device=device)
            else:
                result["stress"] = (g_strain / volume).to(dtype)
        torch.set_grad_enabled(grad_was_enabled)
        return result
