"""Checkpoint files (``.ckpt``): what ``so3krates train`` and ``so3krates convert`` write.

A checkpoint is a ``torch.save`` dict:
``{"format": "so3krates-checkpoint", "version": 1, "config": So3kratesConfig.to_dict(),
"state_dict": model weights, "species": [atomic numbers], ...}``; the trainer adds optimizer,
EMA, scheduler and step state, conversion adds ``"source"``. Loading needs only this package.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from .config import So3kratesConfig
from .model import So3krates

CHECKPOINT_FORMAT = "so3krates-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, model, **extra: Any) -> None:
    """Write ``model`` (a So3krates) with its config and species, plus any ``extra`` entries."""
    payload: Dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "species": [int(z) for z in model.species],
    }
    payload.update(extra)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a half-written checkpoint


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """Read a checkpoint dict; clear errors for missing, corrupt or foreign files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise ValueError(f"'{path}' is not a readable checkpoint ({type(exc).__name__}: {exc}); "
                         "pass a .ckpt written by `so3krates train` or `so3krates convert`") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"'{path}' is not a so3krates checkpoint; pass a .ckpt written by "
                         "`so3krates train` or `so3krates convert` (exported .pt files are for engines)")
    if int(payload.get("version", 0)) > CHECKPOINT_VERSION:
        raise ValueError(f"'{path}' has checkpoint version {payload['version']}, newer than this package "
                         f"reads ({CHECKPOINT_VERSION}); upgrade so3krates")
    return payload


def model_from_checkpoint(path: str | os.PathLike, dtype: Optional[torch.dtype] = None,
                          use_ema: bool = True):
    """Build the So3krates model stored in a checkpoint (EMA weights when present and ``use_ema``)."""
    payload = load_checkpoint(path)
    model = So3krates(So3kratesConfig.from_dict(payload["config"]))
    state = payload.get("ema_state_dict") if use_ema and payload.get("ema_state_dict") else payload["state_dict"]
    stored = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    model = model.to(stored)  # load at the stored precision, then convert: float64 weights stay exact
    model.load_state_dict(state)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
