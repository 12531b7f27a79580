"""``so3krates export``: script a trained model into one self-describing TorchScript file.

The file contains the neighbour list, the network (with EFA and long-range terms) and the
engine entry points of :class:`so3krates.export.exported_model.ExportedPotential`; its metadata
(``so3krates/metadata.json``) says cutoff, receptive field, species, units, dtype and version.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import torch

from so3krates import __version__
from so3krates.export.metadata import ENTRY_POINTS, FORMAT_VERSION, METADATA_NAME

_SYMBOLS = None


def chemical_symbol(z: int) -> str:
    global _SYMBOLS
    if _SYMBOLS is None:
        from ase.data import chemical_symbols
        _SYMBOLS = chemical_symbols
    return _SYMBOLS[int(z)]


def potential_from_checkpoint(path: str, dtype: str = "float64"):
    """Eager :class:`So3kratesPotential` from a training/conversion checkpoint, in ``dtype``."""
    from so3krates.potential.checkpoint import model_from_checkpoint
    from so3krates.potential.calculator import So3kratesPotential
    model = model_from_checkpoint(path)
    return So3kratesPotential(model).to(getattr(torch, dtype)).eval()


def build_metadata(potential, dtype: Optional[str] = None) -> Dict[str, Any]:
    """Metadata for an eager potential (what the exported file will say about itself)."""
    from so3krates.export.exported_model import ExportedPotential
    model = potential.model
    cfg = model.config
    cutoff = float(cfg.cutoff)
    cutoff_lr = float(cfg.cutoff_lr or 0.0) if _has_long_range(cfg) else 0.0
    if dtype is None:
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    species = [int(z) for z in model.species]
    return {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "model": "so3krates",
        "cutoff": cutoff,
        "cutoff_lr": cutoff_lr,
        "num_layers": int(cfg.num_layers),
        # Engines that hand the model local + ghost atoms must provide this ghost shell (Å):
        # layers x cutoff for the message passing, plus the long-range pair cutoff whose partner
        # charges/Hirshfeld ratios need the full receptive field themselves.
        "receptive_field": ExportedPotential.receptive_field_of(cfg),
        # The ghost shell (Å) the staged engine entry points need: the long-range partners' charges and
        # Hirshfeld ratios come from their owners by communication, so max(layers x cutoff, cutoff_lr).
        "ghost_shell": max(float(cfg.num_layers) * cutoff, cutoff_lr),
        "species": species,
        "symbols": [chemical_symbol(z) for z in species],
        "num_globals": int(ExportedPotential.num_globals_of(cfg)),
        "efa": bool(any(cfg.efa_layers)),
        "efa_periodic": bool(any(cfg.efa_layers)) and cfg.efa_periodic_kcut is not None,
        "long_range": {
            "electrostatics": bool(getattr(cfg, "electrostatic_energy_bool", False)),
            "dispersion": bool(getattr(cfg, "dispersion_energy_bool", False)),
            "zbl": bool(getattr(cfg, "zbl_repulsion_bool", False)),
            "cutoff_lr": cutoff_lr,
            "dispersion_damping": float(getattr(cfg, "dispersion_energy_cutoff_lr_damping", 0.0) or 0.0),
        },
        "dtype": dtype,
        "units": {"length": "Angstrom", "energy": "eV", "forces": "eV/Angstrom",
                  "stress": "eV/Angstrom^3", "charge": "e"},
        "entry_points": list(ENTRY_POINTS),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "config": cfg.to_dict(),
    }


def _has_long_range(cfg) -> bool:
    return bool(getattr(cfg, "electrostatic_energy_bool", False) or getattr(cfg, "dispersion_energy_bool", False))


def export_potential(potential, output: str | os.PathLike, dtype: str = "float64", device: str = "cpu",
                     extra_metadata: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Script ``potential`` (an eager So3kratesPotential) and save it with metadata to ``output``.

    Returns the metadata written. ``dtype`` is ``float32`` (production) or ``float64`` (reference).
    """
    from so3krates.export.exported_model import ExportedPotential
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got '{dtype}'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is visible; export on a GPU machine or use --device cpu")
    potential = potential.to(getattr(torch, dtype)).to(device).eval()
    meta = build_metadata(potential, dtype)
    meta["device"] = device
    meta["format"] = "torchscript"
    if extra_metadata:
        meta.update(extra_metadata)
    scripted = torch.jit.script(ExportedPotential(potential))
    output = os.fspath(output)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    torch.jit.save(scripted, output, _extra_files={METADATA_NAME: json.dumps(meta, indent=1)})
    return meta


def export_checkpoint(checkpoint: str, output: str, dtype: str = "float64", device: str = "cpu",
                      fmt: str = "torchscript") -> Dict[str, Any]:
    """Export a checkpoint (``.ckpt`` from ``so3krates train`` or ``so3krates convert``).

    ``fmt``: ``"torchscript"`` (default; what OpenMM's TorchForce and the LAMMPS pair style load) or
    ``"pt2"`` (torch.export + AOTInductor package, see :mod:`so3krates.export.pt2`)."""
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint '{checkpoint}' does not exist")
    if fmt not in ("torchscript", "pt2"):
        raise ValueError(f"unknown export format '{fmt}'; use torchscript or pt2")
    extra = {"source_checkpoint": os.path.basename(checkpoint)}
    potential = potential_from_checkpoint(checkpoint, dtype)
    if fmt == "pt2":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda requested but no CUDA device is visible; export on a GPU machine or "
                             "use --device cpu")
        from so3krates.export.pt2 import export_pt2
        return export_pt2(potential, output, dtype=dtype, device=device, metadata=extra)
    return export_potential(potential, output, dtype=dtype, device=device, extra_metadata=extra)
