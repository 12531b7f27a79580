"""TorchScript kernel fusion off in the Python hosts of an exported model (ASE, OpenMM PythonForce, evaluate).

TorchScript's profiling executor hands the graphs of a loaded module to its CPU fuser (NNC), which
compiles a fused kernel for every specialisation of shapes it sees. For the memory-lean pass of SO3LR
(1536-atom water box, float32, one thread, ``load_exported``) that cost ~1.5 GB of resident memory
(peak RSS 2.8 vs 1.3 GB) and several seconds of warm-up (second call 6.2 vs 1.5 s), for no gain in the
steady state (1.5-1.8 s per call with and without it in interleaved runs; the work is matrix products
and memory-bound gathers, which it does not fuse).

``no_jit_fusion()`` sets ``torch.jit.set_fusion_strategy`` to no static and no dynamic fusion, once per
process, unless ``SO3KRATES_JIT_FUSION=on`` asks to keep torch's default. The setting is global to the
process (other TorchScript modules run without fusion too); results are the same to rounding.
"""
from __future__ import annotations

import logging
import os

import torch

_state: dict = {}
log = logging.getLogger("so3krates")


def no_jit_fusion() -> str:
    """Turn TorchScript's fusion off once; returns 'off' or 'on' (``SO3KRATES_JIT_FUSION=on``: left as is)."""
    if "result" not in _state:
        choice = os.environ.get("SO3KRATES_JIT_FUSION", "off").strip().lower()
        if choice not in ("on", "off"):
            raise ValueError(f"SO3KRATES_JIT_FUSION={choice!r}: use 'off' (the default: TorchScript kernel fusion "
                             "off, less memory, same speed) or 'on' (torch's default fusion)")
        if choice == "off":
            torch.jit.set_fusion_strategy([("STATIC", 0), ("DYNAMIC", 0)])
        _state["result"] = choice
        log.info("so3krates: TorchScript fusion %s", choice)
    return _state["result"]
