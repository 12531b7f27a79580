"""``so3krates export``: script a trained model into one self-describing TorchScript file.

The file contains the neighbour list, the network (with EFA and long-range terms) and the
engine entry points of :class:`so3krates.export.exported_model.ExportedPotential`; its metadata
(``so3krates/metadata.json``) says cutoff, receptive field, species, units, dtype and version.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, Optional

import torch

from so3krates.export.exported_model import ExportedPotential
from so3krates.export.metadata import METADATA_NAME, build_metadata
from so3krates.export.pt2 import export_pt2
from so3krates.potential.checkpoint import model_from_checkpoint
from so3krates.potential.potential import So3kratesPotential

def potential_from_checkpoint(path: str, dtype: str = "float64") -> So3kratesPotential:
    """Eager :class:`So3kratesPotential` from a training/conversion checkpoint, in ``dtype``."""
    return So3kratesPotential(model_from_checkpoint(path)).to(getattr(torch, dtype)).eval()


def with_fused_kernels(potential, fused: bool):
    """A copy of ``potential`` whose attention blocks use the fused CPU kernels (``fused_ops``) in the lean
    pass when ``fused``; ``potential`` itself when not."""
    if not fused:
        return potential
    from so3krates.potential.nn import fused_ops
    fused_ops.require("an export with --fused-kernels")
    potential = copy.deepcopy(potential)
    for layer in potential.model.layers:
        layer.attention_block.fused_kernels = True
    return potential


def export_potential(potential, output: str | os.PathLike, dtype: str = "float64", device: str = "cpu",
                     extra_metadata: Optional[Dict[str, Any]] = None, fused_kernels: bool = False) -> Dict[str, Any]:
    """Script ``potential`` (an eager So3kratesPotential) and save it with metadata to ``output``.

    Returns the metadata written. ``dtype`` is ``float32`` (production) or ``float64`` (reference).
    ``fused_kernels``: the attention logits and their backward run as the fused CPU kernels of
    ``libso3krates_ops.so`` (faster on the CPU; every process loading the file needs that library, which
    the so3krates package and its LAMMPS plugin provide); CPU files only.
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got '{dtype}'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is visible; export on a GPU machine or use --device cpu")
    if fused_kernels and device != "cpu":
        raise ValueError("--fused-kernels are CPU kernels: export for --device cuda without them")
    potential = with_fused_kernels(potential.to(getattr(torch, dtype)).to(device).eval(), fused_kernels)
    meta = build_metadata(potential, dtype)
    meta["device"] = device
    meta["format"] = "torchscript"
    meta["fused_kernels"] = bool(fused_kernels)
    if extra_metadata:
        meta.update(extra_metadata)
    scripted = torch.jit.script(ExportedPotential(potential))
    output = os.fspath(output)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    torch.jit.save(scripted, output, _extra_files={METADATA_NAME: json.dumps(meta, indent=1)})
    return meta


def export_checkpoint(checkpoint: str, output: str, dtype: str = "float64", device: str = "cpu",
                      fmt: str = "torchscript", fused_kernels: bool = False) -> Dict[str, Any]:
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
        if fused_kernels:
            raise ValueError("--fused-kernels is for TorchScript files (a pt2 package compiles its own kernels)")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda requested but no CUDA device is visible; export on a GPU machine or "
                             "use --device cpu")
        return export_pt2(potential, output, dtype=dtype, device=device, metadata=extra)
    return export_potential(potential, output, dtype=dtype, device=device, extra_metadata=extra,
                            fused_kernels=fused_kernels)
