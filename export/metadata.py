"""Metadata stored inside exported so3krates files, and safe loading of such files.

An exported model is a TorchScript archive (``torch.jit.save``) with one extra file,
``so3krates/metadata.json``. Engines (OpenMM, LAMMPS, ASE) read it to learn the cutoff, the
receptive field (ghost shell), the species and units without importing this package.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Dict, Tuple

import torch

METADATA_NAME = "so3krates/metadata.json"
PT2_METADATA_NAME = "so3krates_metadata.json"  # extra file of a --format pt2 package (so3krates.export.pt2)
FORMAT_VERSION = 1
# TorchScript methods of an exported file (export/exported_model.py): the generic entry point, the
# staged engine entry points (LAMMPS) and the legacy engine methods kept for older callers
ENTRY_POINTS = ("forward", "engine_num_stages", "engine_stage_names", "engine_stage_kinds", "engine_exchange_width",
                "engine_ghost_shell", "engine_begin", "engine_continue", "atomic_energies_from_edges",
                "global_partials")


class ModelFileError(ValueError):
    """An exported model file is missing, corrupt, foreign or from a newer format."""


def _check_path(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"model file '{path}' does not exist; pass the path of a file written by `so3krates export`")
    if os.path.isdir(path):
        raise ModelFileError(f"model file '{path}' is a directory; pass the .pt file written by `so3krates export`")
    return path


def read_metadata(path: str | os.PathLike) -> Dict[str, Any]:
    """Read the metadata of an exported file without loading its code.

    Raises ModelFileError with the problem and the fix when the file is not a TorchScript
    archive, carries no so3krates metadata (a foreign TorchScript model), or has a newer format.
    """
    path = _check_path(path)
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"'{path}' is not a TorchScript archive (not a zip file): it is corrupt or not a model; "
            "re-export it with `so3krates export CHECKPOINT -o model.pt`")
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith("extra/" + METADATA_NAME)]
        if not names:  # a torch.export/AOTInductor package (so3krates export --format pt2)?
            names = [n for n in zf.namelist() if n.endswith("extra/" + PT2_METADATA_NAME)]
        if not names:
            raise ModelFileError(
                f"'{path}' is a TorchScript/PyTorch file but not a so3krates model (no {METADATA_NAME}); "
                "export the model with `so3krates export` (foreign TorchScript files cannot be used)")
        meta = json.loads(zf.read(names[0]).decode("utf-8"))
        meta.setdefault("format", "torchscript")
    check_format(meta, path)
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


def load_exported(path: str | os.PathLike, device: str | torch.device = "cpu") -> Tuple[torch.jit.ScriptModule, Dict[str, Any]]:
    """Load an exported model and its metadata (validated). Returns (module, metadata).

    A TorchScript file gives the scripted module; a ``--format pt2`` package gives a
    :class:`so3krates.export.pt2.So3kratesPT2` with the same call signature."""
    meta = read_metadata(path)
    if meta.get("format") == "pt2":
        from so3krates.export.pt2 import So3kratesPT2
        return So3kratesPT2(path, device=str(device)), meta
    extra = {METADATA_NAME: ""}
    try:
        module = torch.jit.load(os.fspath(path), map_location=device, _extra_files=extra)
    except RuntimeError as exc:  # corrupt archive or incompatible torch
        raise ModelFileError(f"could not load '{path}' with torch {torch.__version__}: {exc}".splitlines()[0]
                             + "; re-export the model with this torch version") from None
    module.eval()
    return module, meta


def summary_line(meta: Dict[str, Any]) -> str:
    """One line describing an exported model."""
    lr = meta.get("cutoff_lr") or 0.0
    efa = "EFA" if meta.get("efa") else "no EFA"
    parts = [
        f"so3krates model: {meta.get('num_layers')} layers",
        f"cutoff {meta.get('cutoff')} Å" + (f", long-range {lr} Å" if lr else ""),
        f"receptive field {meta.get('receptive_field')} Å",
        efa,
        f"elements {' '.join(meta.get('symbols', []))}",
        f"{meta.get('dtype')}",
        f"{meta.get('num_parameters', '?')} parameters",
    ]
    return ", ".join(parts)
