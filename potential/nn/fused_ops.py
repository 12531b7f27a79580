"""The fused CPU kernels of the attention (``libso3krates_ops.so``, built from plugins/ops/*.cpp).

``load()`` registers ``torch.ops.so3krates.attention_logits`` / ``attention_logits_backward`` /
``silu_and_derivative`` (``OPERATORS``) in this process (once; never raises) and says whether they are
there; ``require()`` raises with the reason and the fix. A model exported with fused kernels
(``so3krates export --fused-kernels``) calls them in its TorchScript code, so every process that loads
such a file needs the library: the Python loaders call ``require()``, the LAMMPS pair style links it.
``SO3KRATES_FUSED_OPS=off`` in the environment keeps it unloaded (for checks of that error path).
"""
from __future__ import annotations

import os
from typing import Dict

import torch

from so3krates import installed_files

LIBRARY = "libso3krates_ops.so"
_SUBDIR = "ops"
_state: Dict[str, str] = {}


#: every operator a file exported with fused kernels may call
OPERATORS = ("attention_logits", "attention_logits_backward", "attention_logits_indexed",
             "attention_logits_backward_indexed", "attention_values_indexed", "attention_values_backward_indexed",
             "silu_and_derivative")


def _registered() -> bool:
    try:
        for name in OPERATORS:
            getattr(torch.ops.so3krates, name)  # resolves the operator or raises
        return True
    except (AttributeError, RuntimeError):
        return False


def load() -> bool:
    """Register the fused kernels in this process if the library can be loaded; True when they are there."""
    if "reason" in _state:
        return not _state["reason"]
    reason = ""
    if os.environ.get("SO3KRATES_FUSED_OPS", "on").strip().lower() == "off":
        reason = "SO3KRATES_FUSED_OPS=off in the environment"
    elif not _registered():
        path, seen = installed_files.find(LIBRARY, _SUBDIR, "SO3KRATES_OPS_DIR")
        if path is None:
            reason = f"{LIBRARY} not found (searched: {installed_files.searched(seen)})"
        else:
            try:
                torch.ops.load_library(path)
            except (OSError, RuntimeError) as e:  # built for another torch, missing symbols
                reason = f"{path} does not load with torch {torch.__version__}: {e}"
        if not reason and not _registered():
            reason = f"{LIBRARY} loaded but lacks one of so3krates::{', so3krates::'.join(OPERATORS)} (an older build)"
    _state["reason"] = reason
    return not reason


def require(what: str) -> None:
    """Raise RuntimeError naming ``what`` (e.g. a model file), the reason and the fix when the kernels are missing."""
    if load():
        return
    raise RuntimeError(
        f"{what} uses so3krates' fused CPU attention kernels, which this process cannot load: {_state['reason']}. "
        "Fix: reinstall so3krates so that CMake builds them against the installed torch "
        "(pip install --no-build-isolation <so3krates source>), or re-export the model without them "
        "(so3krates export CHECKPOINT -o MODEL.pt, the default).")
