"""Optimisation: the optimizer, the learning-rate schedule and the EMA of the weights.

:func:`make_optimizer` (``training.optimizer``: amsgrad | adam | adamw), :func:`make_lr_lambda`
(warm-up, then exponential or cosine decay; cosine can follow a time budget) and :class:`EMA`
(the weights used for validation, ``best.ckpt`` and export).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

import torch

__all__ = ["EMA", "make_lr_lambda", "make_optimizer"]


class EMA:
    """Exponential moving average of a model's floating-point parameters.

    ``decay_t = min(decay, (1 + t) / (10 + t))`` (the usual warm-up), ``shadow ← decay_t·shadow +
    (1 − decay_t)·param`` after every optimizer step."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        for k, p in model.named_parameters():
            self.shadow[k].mul_(d).add_(p.detach(), alpha=1.0 - d)

    def model_state_dict(self, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
        """The model's state_dict with EMA parameters in place of the raw ones."""
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for k, v in self.shadow.items():
            sd[k] = v.detach().clone()
        return sd

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: v.detach().cpu().clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def make_lr_lambda(t: Dict[str, Any], total_steps: int,
                   time_fraction: Optional[Callable[[], float]] = None) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    ``time_fraction`` (used with ``training.time_budget_s``) returns the fraction of the time budget
    used so far; the cosine decay then progresses by ``max(step fraction, time fraction)``, so it
    reaches its floor when the budget runs out even if ``total_steps`` is never reached."""
    warm = int(t.get("warmup_steps") or 0)
    kind = t.get("lr_decay") or "none"
    rate = float(t.get("lr_decay_rate", 0.5))
    dsteps = max(1, int(t.get("lr_decay_steps", 10000)))
    min_ratio = float(t.get("min_lr_ratio", 0.0))
    total = max(1, int(total_steps))

    def f(step: int) -> float:
        w = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        s = max(0, step - warm)
        if kind == "exponential":
            d = rate ** (s / dsteps)
        elif kind == "cosine":
            span = max(1, total - warm)
            prog = s / span
            if time_fraction is not None and s > 0:
                prog = max(prog, float(time_fraction()))
            d = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
        else:
            d = 1.0
        return w * d

    return f


def make_optimizer(model: torch.nn.Module, t: Dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer of the ``training`` section over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    betas = tuple(float(b) for b in t.get("betas", (0.9, 0.999)))
    lr, wd = float(t["lr"]), float(t.get("weight_decay") or 0.0)
    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=wd, amsgrad=t["optimizer"] == "amsgrad")
