"""ASE calculator for so3krates models (exported ``.pt`` files, ``--format pt2`` packages, or training
checkpoints ``.ckpt``).

Units: ASE's own (Å, eV, eV/Å, stress eV/Å³ in Voigt order xx yy zz yz xz xy).
Total charge and unpaired electrons come from ``atoms.info['charge']`` (or ``'total_charge'``) and
``atoms.info['num_unpaired_electrons']`` (or ``'spin'``), defaulting to the calculator's arguments.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from so3krates.export.exporter import potential_from_checkpoint
from so3krates.export.loader import load_exported, raise_for_status, set_neighbor_skin, user_message
from so3krates.export.metadata import build_metadata


def _load_model(path: str, dtype: Optional[str], device: str):
    """Return (callable module, metadata dict) for an exported file or a checkpoint."""
    if str(path).endswith((".ckpt", ".pth")) and os.path.exists(path):
        potential = potential_from_checkpoint(path, dtype=dtype or "float64").to(device)
        return potential, build_metadata(potential)
    module, meta = load_exported(path, device=device)
    if dtype is not None and dtype != meta.get("dtype") and meta.get("format") == "pt2":
        raise ValueError(f"'{path}' is a pt2 package compiled for {meta.get('dtype')}; it cannot run in {dtype}. "
                         f"Re-export with --format pt2 --dtype {dtype}, or drop the dtype argument")
    if dtype is not None and dtype != meta.get("dtype"):
        module = module.to(getattr(torch, dtype))
        meta = dict(meta, dtype=dtype)
    return module, meta


class So3kratesCalculator(Calculator):
    """ASE calculator: energy (eV), forces (eV/Å), stress (eV/Å³, periodic), per-atom energies (eV).

    Args:
        model: path of an exported model (``so3krates export``) or of a checkpoint (``.ckpt``).
        charge: default total charge in e when ``atoms.info`` has none.
        num_unpaired_electrons: default number of unpaired electrons.
        dtype: ``"float32"``/``"float64"`` to override the file's dtype (default: as exported).
        device: ``"cpu"`` or ``"cuda"``.
        neighbor_skin: Å (default 0: a new neighbour search every call). With a skin the pair lists are
            searched with cutoff + skin and reused by later calls until an atom has moved skin/2 or the
            cell changed — for MD (``1.0`` is a good value); the same pairs as a new search.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, model: str | os.PathLike, charge: float = 0.0, num_unpaired_electrons: float = 0.0,
                 dtype: Optional[str] = None, device: str = "cpu", neighbor_skin: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.module, self.metadata = _load_model(os.fspath(model), dtype, device)
        self.neighbor_skin = set_neighbor_skin(self.module, neighbor_skin)
        self.dtype = getattr(torch, self.metadata.get("dtype", "float64"))
        self.device = torch.device(device)
        self.default_charge = float(charge)
        self.default_unpaired = float(num_unpaired_electrons)

    def _charge_and_spin(self, atoms):
        info = atoms.info
        charge = info.get("charge", info.get("total_charge", self.default_charge))
        spin = info.get("num_unpaired_electrons", info.get("spin", self.default_unpaired))
        return float(charge), float(spin)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        charge, spin = self._charge_and_spin(atoms)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        want_stress = "stress" in properties and bool(pbc.all())
        pos = torch.tensor(atoms.get_positions(), dtype=self.dtype, device=self.device)
        z = torch.tensor(atoms.get_atomic_numbers(), dtype=torch.long, device=self.device)
        cell = torch.tensor(np.asarray(atoms.get_cell()), dtype=self.dtype, device=self.device)
        try:
            out = self.module(pos, z, cell, torch.tensor(pbc, device=self.device), charge, spin, True, want_stress)
        except torch.jit.Error as exc:  # the model's ValueError, without TorchScript's interpreter traceback
            raise ValueError(user_message(exc)) from None
        raise_for_status(out)
        energy = float(out["energy"].detach().cpu())
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = out["forces"].detach().cpu().numpy().astype(np.float64)
        self.results["energies"] = out["atomic_energies"].detach().cpu().numpy().astype(np.float64)
        if want_stress:
            s = out["stress"].detach().cpu().numpy().astype(np.float64)
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        elif "stress" in properties:
            from ase.calculators.calculator import PropertyNotImplementedError
            raise PropertyNotImplementedError("stress needs a periodic cell in all three directions (atoms.pbc all True)")
