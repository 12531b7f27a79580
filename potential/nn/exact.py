"""Constant buffers that stay exact through dtype casts.

``module.to(torch.float32)`` rounds every floating buffer; a later ``.double()`` cannot undo it, so
a model trained in float32 and evaluated in float64 would carry float32-rounded basis constants
(binomial coefficients, Lebedev grids, free-atom polarisabilities, ...). Modules that derive from
:class:`ExactConstants` keep a float64 original of each constant registered with
:meth:`~ExactConstants.register_constant` and rebuild the buffer from it on every ``.to()``,
``.double()``, ``.float()``, ``.cuda()`` and after ``load_state_dict``: the buffer always equals the
float64 value cast once to the module's current dtype and device.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from torch import nn


class ExactConstants(nn.Module):
    """``nn.Module`` whose registered constants are recomputed from float64 originals on casts."""

    # the float64 originals live only in Python (eager); a scripted module holds the cast buffers
    __jit_ignored_attributes__ = ["_exact_constants"]

    def register_constant(self, name: str, value, persistent: bool = False) -> None:
        """Register buffer ``name`` from ``value`` (array-like); floating values are kept in float64."""
        t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
        if t.is_floating_point():
            t = t.to(torch.float64)
        store: Dict[str, torch.Tensor] = self.__dict__.setdefault("_exact_constants", {})
        store[name] = t.detach().clone()
        self.register_buffer(name, t.detach().clone(), persistent=persistent)

    def _restore_constants(self) -> None:
        for name, exact in self.__dict__.get("_exact_constants", {}).items():
            cur = self._buffers.get(name)
            if cur is not None:
                self._buffers[name] = exact.to(device=cur.device, dtype=cur.dtype)

    def _apply(self, fn, recurse=True):  # noqa: D401 - torch's hook for .to()/.double()/.cuda()
        out = super()._apply(fn, recurse)
        self._restore_constants()
        return out

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._restore_constants()  # a checkpoint saved in float32 holds rounded copies of persistent constants
