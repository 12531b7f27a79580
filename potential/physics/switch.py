"""The C∞ switching function of mlff (``switching_fn``) and its derivative; distances in Å."""
from typing import List

import torch
from torch import Tensor


def _bump(x: Tensor) -> Tensor:
    """exp(-1/x) for x > 0, 0 otherwise (gradient-safe: no inf/NaN in either branch)."""
    pos = x > 0
    safe = torch.where(pos, x, torch.ones_like(x))
    return torch.where(pos, torch.exp(-1.0 / safe), torch.zeros_like(x))


def smooth_switch(x: Tensor, x_on: float, x_off: float) -> Tensor:
    """1 for x <= x_on, 0 for x >= x_off, s(1-c)/(s(1-c)+s(c)) in between, with
    c = (x - x_on)/(x_off - x_on) and s(u) = exp(-1/u) for u > 0 else 0."""
    c = (x - x_on) / (x_off - x_on)
    a = _bump(1.0 - c)
    b = _bump(c)
    return a / (a + b)


def switch_and_derivative(x: Tensor, x_on: float, x_off: float) -> List[Tensor]:
    """[smooth_switch(x), d/dx smooth_switch(x)] with the exponentials computed once (no graph needed)."""
    c = (x - x_on) / (x_off - x_on)
    inside = (c > 0) & (c < 1)
    cs = torch.where(inside, c, torch.full_like(c, 0.5))
    a = torch.exp(-1.0 / (1.0 - cs))
    b = torch.exp(-1.0 / cs)
    ab = a + b
    fa = a / ab
    d = -fa * (b / ab) * (1.0 / ((1.0 - cs) * (1.0 - cs)) + 1.0 / (cs * cs)) / (x_off - x_on)
    f = torch.where(inside, fa, torch.where(c <= 0, torch.ones_like(x), torch.zeros_like(x)))
    return [f, torch.where(inside, d, torch.zeros_like(x))]
