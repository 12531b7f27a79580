"""Keep freed memory in the process, for the Python hosts of an exported model (ASE, OpenMM, evaluate).

A call of a model allocates and frees hundreds of MB of tensors. glibc's malloc returns the large blocks
to the system when they are freed (mmap/munmap, heap trimming), and the next call faults them in again
page by page: on the 1536-atom SO3LR water box (float32, one thread) 105,000 minor page faults and 0.3 s
of system time per 2.2 s call, also in a long-running process. With the settings below the same call
faults nothing after the first one. The LAMMPS pair style does the same (``malloc keep``, its default).

``keep_freed_memory()`` applies them once per process (glibc only; a no-op elsewhere) unless the
environment already sets glibc's malloc (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``GLIBC_TUNABLES``: they win) or ``SO3KRATES_MALLOC=system`` asks for glibc's defaults. Results are the
same bit for bit; resident memory grows by the freed blocks that stay mapped for reuse (~5 %).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

MMAP_THRESHOLD_BYTES = 1 << 30  # blocks below 1 GiB come from the heap, not from their own mmap
TRIM_THRESHOLD_BYTES = 2**31 - 1  # never give the top of the heap back
TOP_PAD_BYTES = 256 << 20  # grow the heap in 256 MiB steps
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters
ENV_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_state: dict = {}
log = logging.getLogger("so3krates")


def keep_freed_memory() -> str:
    """Apply the settings once; returns what was done: 'keep', 'system' (SO3KRATES_MALLOC=system),
    'environment' (glibc settings in the environment win), 'unsupported' (not glibc) or 'failed'."""
    if "result" not in _state:
        _state["result"] = _apply()
        log.info("so3krates: malloc %s", _state["result"])
    return _state["result"]


def _apply() -> str:
    choice = os.environ.get("SO3KRATES_MALLOC", "keep").strip().lower()
    if choice not in ("keep", "system"):
        raise ValueError(f"SO3KRATES_MALLOC={choice!r}: use 'keep' (default: freed memory stays in the process "
                         "for reuse) or 'system' (glibc's defaults)")
    if choice == "system":
        return "system"
    if any(os.environ.get(name) for name in ENV_SETTINGS):
        return "environment"
    if not sys.platform.startswith("linux"):
        return "unsupported"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return "unsupported"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
          and mallopt(_M_TOP_PAD, TOP_PAD_BYTES) == 1)
    return "keep" if ok else "failed"
