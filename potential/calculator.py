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


class So3kratesPotential(nn.Module):
    """Energy, forces, stress and atomic energies of one structure.

    ``forward(positions [N,3] Å, atomic_numbers [N] int, cell [3,3] Å (rows a, b, c; zeros for
    open), pbc [3] bool, total_charge e, num_unpaired_electrons, compute_forces, compute_stress)``
    returns ``{"energy": [] eV, "forces": [N,3] eV/Å, "stress": [3,3] eV/Å³ (only with
    compute_stress), "atomic_energies": [N] eV}`` plus the model's other per-atom outputs
    (e.g. ``partial_charges`` in e, ``hirshfeld_ratios``). Inputs are converted to the model's
    dtype; outputs are in the model's dtype. In training mode (``.train()``) forces and stress
    keep their graph (``create_graph=True``) so that a force loss can be back-propagated.

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

        pos = positions.to(dtype)
        if (compute_forces or compute_stress) and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        strain = torch.zeros(3, 3, dtype=dtype, device=device)
        if compute_stress:
            strain.requires_grad_(True)

        # neighbour lists on the unstrained geometry (indices and integer shifts only)
        idx_i, idx_j, shifts = neighbor_list(pos.detach(), self.cutoff, cell_m.detach(), pbc_b)
        if self.long_range and self.cutoff_lr > 0.0:
            idx_i_lr, idx_j_lr, shifts_lr = neighbor_list(pos.detach(), self.cutoff_lr,
                                                          cell_m.detach(), pbc_b)
        elif self.long_range:
            if not open_sys:
                raise ValueError("this model has no long-range cutoff (cutoff_lr = None: "
                                 "long-range terms over all pairs), which only works for open "
                                 "systems; use pbc=False / a zero cell, or a model configured "
                                 "with a finite cutoff_lr (e.g. 12 Å) for periodic systems")
            ar = torch.arange(n, device=device)
            idx_i_lr = ar.repeat_interleave(n)
            idx_j_lr = ar.repeat(n)
            keep = idx_i_lr != idx_j_lr
            idx_i_lr = idx_i_lr[keep]
            idx_j_lr = idx_j_lr[keep]
            shifts_lr = torch.zeros(idx_i_lr.shape[0], 3, dtype=dtype, device=device)
        else:
            idx_i_lr = torch.zeros(0, dtype=torch.long, device=device)
            idx_j_lr = torch.zeros(0, dtype=torch.long, device=device)
            shifts_lr = torch.zeros(0, 3, dtype=dtype, device=device)

        with torch.no_grad():
            check_min_distance(pos[idx_j] - pos[idx_i] + shifts @ cell_m, idx_i, idx_j, shifts,
                               self.min_distance)

        result: Dict[str, Tensor] = {}
        # forces need autograd even when the caller runs under torch.no_grad()
        # (torch.enable_grad() is not scriptable; the previous mode is restored below)
        grad_was_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        if compute_stress:
            deform = torch.eye(3, dtype=dtype, device=device) + 0.5 * (strain + strain.t())
            pos_s = pos @ deform
            cell_s = cell_m @ deform
        else:
            pos_s = pos
            cell_s = cell_m
        edge_vectors = pos_s[idx_j] - pos_s[idx_i] + shifts @ cell_s
        edge_vectors_lr = pos_s[idx_j_lr] - pos_s[idx_i_lr] + shifts_lr @ cell_s
        batch = torch.zeros(n, dtype=torch.long, device=device)
        out = self.model(pos_s, z, edge_vectors, idx_i, idx_j, edge_vectors_lr, idx_i_lr,
                         idx_j_lr, batch, 1,
                         torch.full((1,), total_charge, dtype=dtype, device=device),
                         torch.full((1,), num_unpaired_electrons, dtype=dtype, device=device),
                         cell_s.unsqueeze(0), pbc_b.unsqueeze(0))
        atomic_energies = out["atomic_energies"]
        energy = atomic_energies.sum()
        for key, value in out.items():
            if key != "atomic_energies":
                result[key] = value
        result["atomic_energies"] = atomic_energies
        result["energy"] = energy
        if compute_forces or compute_stress:
            inputs: List[Tensor] = [pos]
            if compute_stress:
                inputs.append(strain)
            grads: List[Optional[Tensor]] = [None, None]
            if energy.requires_grad:
                grad_out: List[Optional[Tensor]] = [torch.ones_like(energy)]
                grads = torch.autograd.grad([energy], inputs, grad_outputs=grad_out,
                                            create_graph=self.training, allow_unused=True)
            if compute_forces:
                g = grads[0]
                if g is None:
                    result["forces"] = torch.zeros(n, 3, dtype=dtype, device=device)
                else:
                    result["forces"] = -g
            if compute_stress:
                g = grads[1]
                volume = torch.linalg.det(cell_m).abs()
                if g is None:
                    result["stress"] = torch.zeros(3, 3, dtype=dtype, device=device)
                else:
                    result["stress"] = g / volume
        torch.set_grad_enabled(grad_was_enabled)
        return result
