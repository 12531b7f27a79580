"""Metadata stored inside exported so3krates files: what it says, how it is read and checked.

An exported model is a TorchScript archive (``torch.jit.save``) with one extra file,
``so3krates/metadata.json`` (a ``--format pt2`` package: ``extra/so3krates_metadata.json``). Engines
(OpenMM, LAMMPS, ASE) read it to learn the cutoffs, the ghost cutoff, the species and the units
without importing this package. Loading a file: :mod:`so3krates.export.loader`.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any, Dict, Optional, Union

import torch

from so3krates import __version__
from so3krates.potential.validate import chemical_symbol

METADATA_NAME = "so3krates/metadata.json"
PT2_METADATA_NAME = "so3krates_metadata.json"  # extra file of a --format pt2 package (so3krates.export.pt2)
# 3: the stage protocol of export/exported_model.py (per-layer halo exchange; pair stages return column
# blocks); 2: the same with stacked [P, 2, w] pair rows; 1: ghost-shell engine methods. ``forward`` (ASE,
# OpenMM) reads every version; the LAMMPS pair style reads 3 only.
FORMAT_VERSION = 3
# TorchScript methods of an exported file (export/exported_model.py): the generic entry point and the
# engine entry points (the model's stages, for engines that own the atoms: LAMMPS)
ENTRY_POINTS = ("forward", "engine_layout", "engine_atoms", "engine_atoms_vjp", "engine_pairs", "engine_pairs_vjp")


class ModelFileError(ValueError):
    """An exported model file is missing, corrupt, foreign or from a newer format."""


class MissingModelFile(ModelFileError, FileNotFoundError):
    """The model file does not exist."""


#: a model file: its path, or its bytes (a file read into memory, e.g. for OpenMM's serialisation)
ModelSource = Union[str, os.PathLike, bytes]


def source_name(source: ModelSource) -> str:
    return "<model bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source)


def _open_source(source: ModelSource):
    """A zip-readable file object of the model, after clear errors for missing paths and non-archives."""
    if isinstance(source, (bytes, bytearray)):
        f = io.BytesIO(bytes(source))
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise MissingModelFile(f"model file '{path}' does not exist; pass the path of a file written by "
                                   "`so3krates export`")
        if os.path.isdir(path):
            raise ModelFileError(f"model file '{path}' is a directory; pass the .pt file written by `so3krates export`")
        f = open(path, "rb")
    if not zipfile.is_zipfile(f):
        f.close()
        raise ModelFileError(
            f"'{source_name(source)}' is not a TorchScript archive (not a zip file): it is corrupt or not a model; "
            "re-export it with `so3krates export CHECKPOINT -o model.pt`")
    f.seek(0)
    return f


def read_metadata(source: ModelSource) -> Dict[str, Any]:
    """Read the metadata of an exported file (path or bytes) without loading its code.

    Raises ModelFileError with the problem and the fix when the file is not a TorchScript
    archive, carries no so3krates metadata (a foreign TorchScript model), or has a newer format.
    """
    with _open_source(source) as f, zipfile.ZipFile(f) as zf:
        names = [n for n in zf.namelist() if n.endswith("extra/" + METADATA_NAME)]
        if not names:  # a torch.export/AOTInductor package (so3krates export --format pt2)?
            names = [n for n in zf.namelist() if n.endswith("extra/" + PT2_METADATA_NAME)]
        if not names:
            raise ModelFileError(
                f"'{source_name(source)}' is a TorchScript/PyTorch file but not a so3krates model (no "
                f"{METADATA_NAME}); export the model with `so3krates export` (foreign TorchScript files cannot be used)")
        meta = json.loads(zf.read(names[0]).decode("utf-8"))
    meta.setdefault("format", "torchscript")
    check_format(meta, source_name(source))
    for key in ("species", "cutoff", "dtype"):
        if key not in meta:
            raise ModelFileError(f"'{source_name(source)}': metadata lacks {key!r}; re-export the model with "
                                 "`so3krates export`")
    return meta


def check_format(meta: Dict[str, Any], path: str = "<model>") -> None:
    version = int(meta.get("format_version", -1))
    if version < 1:
        raise ModelFileError(f"'{path}' has invalid so3krates metadata (format_version={version}); re-export it")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"'{path}' was written with so3krates file format {version} (package "
            f"{meta.get('package_version', '?')}), newer than this package reads ({FORMAT_VERSION}); "
            "upgrade so3krates (pip install -U so3krates) or re-export with this version")


def build_metadata(potential, dtype: Optional[str] = None) -> Dict[str, Any]:
    """What an exported file says about itself, from the eager ``So3kratesPotential`` it holds."""
    model = potential.model
    cfg = model.config
    cutoff = float(cfg.cutoff)
    cutoff_lr = float(cfg.cutoff_lr or 0.0) if model.long_range else 0.0
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
        # how far an atom's energy reaches (Å): the layers' message passing plus the long-range pairs
        "receptive_field": float(cfg.num_layers) * cutoff + cutoff_lr,
        # the ghost shell (Å, without skin) an engine with per-layer halo exchange needs
        "ghost_cutoff": max(cutoff, cutoff_lr),
        "species": species,
        "symbols": [chemical_symbol(z) for z in species],
        "efa": bool(model.has_efa),
        # direction-dependent EFA queries/keys (open systems only: periodic boxes are refused)
        "efa_qk_degrees": int(getattr(model, "efa_qk_degrees", 0)),
        "long_range": {
            "electrostatics": bool(cfg.electrostatic_energy_bool),
            "dispersion": bool(cfg.dispersion_energy_bool),
            "zbl": bool(cfg.zbl_repulsion_bool),
            "cutoff_lr": cutoff_lr,
            "dispersion_damping": float(cfg.dispersion_energy_cutoff_lr_damping or 0.0),
        },
        "dtype": dtype,
        "units": {"length": "Angstrom", "energy": "eV", "forces": "eV/Angstrom",
                  "stress": "eV/Angstrom^3", "charge": "e"},
        "entry_points": list(ENTRY_POINTS),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "config": cfg.to_dict(),
    }


def summary_line(meta: Dict[str, Any]) -> str:
    """One line describing an exported model."""
    lr = meta.get("cutoff_lr") or 0.0
    efa = "EFA" if meta.get("efa") else "no EFA"
    parts = [
        f"so3krates model: {meta.get('num_layers')} layers",
        f"cutoff {meta.get('cutoff')} Å" + (f", long-range {lr} Å" if lr else ""),
        f"receptive field {meta.get('receptive_field')} Å (ghost cutoff {meta.get('ghost_cutoff', '?')} Å)",
        efa,
        f"elements {' '.join(meta.get('symbols', []))}",
        f"{meta.get('dtype')}",
        f"{meta.get('num_parameters', '?')} parameters",
    ]
    if meta.get("fused_kernels"):
        parts.append("fused CPU kernels")
    return ", ".join(parts)
