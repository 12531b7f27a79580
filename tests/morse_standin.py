"""A small TorchScript stand-in with the exported-file interface (docs/internals.md).

Used by the OpenMM tests, example and benchmark when no real exported So3krates model is at
hand. It is NOT a physical model: a smooth pairwise Morse potential (element-dependent r0 from
covalent radii) with a cosine cutoff, brute-force O(N^2) pairs, periodic minimum image (valid
for cutoff < half the shortest box height), plus constant terms that depend on the total charge
and number of unpaired electrons so that their pass-through can be tested.

Its file has exactly the layout of ``so3krates export`` output: ``forward(positions Å,
atomic_numbers, cell Å, pbc, total_charge, num_unpaired_electrons, compute_forces,
compute_stress) -> {"energy" eV, "forces" eV/Å, "stress" eV/Å³, "atomic_energies" eV}`` and the
extra file ``so3krates/metadata.json``.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Sequence

import torch
from torch import Tensor, nn

# Covalent radii (Å) for the elements the stand-in knows by default (ase.data.covalent_radii).
_COVALENT = {1: 0.31, 6: 0.76, 7: 0.71, 8: 0.66, 9: 0.57, 11: 1.66, 15: 1.07, 16: 1.05, 17: 1.02}
_SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F", 11: "Na", 15: "P", 16: "S", 17: "Cl"}


class MorseStandIn(nn.Module):
    """E = Σ_{i<j} D [(1 - exp(-a (r - r0_ij)))² - 1] f_c(r) + q_E·Q + s_E·S."""

    def __init__(self, species: Sequence[int], cutoff: float = 5.0, depth: float = 1.0,
                 alpha: float = 2.0):
        super().__init__()
        index = torch.full((119,), -1, dtype=torch.long)
        radii = torch.zeros(len(species), dtype=torch.float64)
        for k, z in enumerate(species):
            index[int(z)] = k
            radii[k] = _COVALENT.get(int(z), 1.0)
        self.register_buffer("species_index", index)
        self.register_buffer("radii", radii)
        self.cutoff = float(cutoff)
        self.depth = float(depth)
        self.alpha = float(alpha)

    def forward(self, positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor,
                total_charge: float = 0.0, num_unpaired_electrons: float = 0.0,
                compute_forces: bool = True, compute_stress: bool = False) -> Dict[str, Tensor]:
        dtype = self.radii.dtype
        pos = positions.detach().to(dtype)
        cell = cell.detach().to(dtype)
        n = pos.shape[0]
        kind = self.species_index[atomic_numbers]
        if bool((kind < 0).any()):
            raise ValueError("stand-in model: unknown element in atomic_numbers")
        strain = torch.zeros((3, 3), dtype=dtype, device=pos.device)
        if compute_stress:
            strain.requires_grad_(True)
        if compute_forces:
            pos.requires_grad_(True)
        deform = torch.eye(3, dtype=dtype, device=pos.device) + 0.5 * (strain + strain.t())
        x = pos @ deform
        c = cell @ deform
        rij = x.unsqueeze(0) - x.unsqueeze(1)  # [N, N, 3]: r_j - r_i
        periodic = bool(pbc.any())
        if periodic:
            frac = rij @ torch.linalg.inv(c)
            frac = frac - torch.round(frac) * pbc.to(dtype)
            rij = frac @ c
        eye = torch.eye(n, dtype=torch.bool, device=pos.device)
        d2 = (rij * rij).sum(-1)
        d2 = torch.where(eye, torch.full_like(d2, 4.0 * self.cutoff * self.cutoff), d2)
        r = torch.sqrt(d2)
        rad = self.radii[kind]
        r0 = rad.unsqueeze(0) + rad.unsqueeze(1)
        e = torch.exp(-self.alpha * (r - r0))
        morse = self.depth * ((1.0 - e) ** 2 - 1.0)
        inside = r < self.cutoff
        fc = 0.5 * (torch.cos(torch.pi * r / self.cutoff) + 1.0)
        pair = torch.where(inside, morse * fc, torch.zeros_like(r))
        atomic = 0.5 * pair.sum(1) + (0.1 * total_charge + 0.05 * num_unpaired_electrons) / max(n, 1)
        energy = atomic.sum()
        out: Dict[str, Tensor] = {"energy": energy.detach(), "atomic_energies": atomic.detach()}
        inputs = []
        if compute_forces:
            inputs.append(pos)
        if compute_stress:
            inputs.append(strain)
        if len(inputs) > 0:
            grads = torch.autograd.grad([energy], inputs, allow_unused=True)
            k = 0
            if compute_forces:
                g = grads[k]
                assert g is not None
                out["forces"] = -g
                k += 1
            if compute_stress:
                g = grads[k]
                assert g is not None
                volume = torch.abs(torch.linalg.det(cell))
                if periodic:
                    out["stress"] = g / volume
                else:
                    out["stress"] = torch.zeros((3, 3), dtype=dtype, device=pos.device)
        return out


def make_standin_model(path: str | os.PathLike, species: Sequence[int] = (1, 6, 7, 8),
                       cutoff: float = 5.0, dtype: str = "float64", depth: float = 1.0,
                       alpha: float = 2.0) -> str:
    """Write a stand-in model file with the exported-file layout; returns the path."""
    module = MorseStandIn(species, cutoff=cutoff, depth=depth, alpha=alpha)
    module = module.to(getattr(torch, dtype))
    scripted = torch.jit.script(module)
    metadata = {
        "format_version": 1,
        "package_version": "stand-in",
        "model": "morse-standin",
        "stand_in": True,
        "cutoff": float(cutoff),
        "num_layers": 1,
        "receptive_field": float(cutoff),
        "species": [int(z) for z in species],
        "symbols": [_SYMBOLS.get(int(z), str(z)) for z in species],
        "cutoff_lr": 0.0,
        "num_globals": 0,
        "dtype": dtype,
        "units": {"length": "Å", "energy": "eV"},
        "entry_points": ["forward"],
    }
    path = os.fspath(path)
    torch.jit.save(scripted, path, _extra_files={"so3krates/metadata.json": json.dumps(metadata)})
    return path
