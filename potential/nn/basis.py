"""Radial bases, cutoff functions and real spherical harmonics (l = 0..4).

Conventions follow mlff (So3krates / SO3LR) exactly:
- distances `r` in Å; radial bases take `r` with shape [E] and return [E, K];
- cutoff functions return 1 at r = 0 and 0 for r >= cutoff;
- spherical harmonics take unit vectors [E, 3] (x, y, z) and return the orthonormal real
  harmonics, order m = -l..l, concatenated over the requested degrees ([E, sum(2l+1)]).
All functions are TorchScript-able and keep gradients finite at the masked boundaries.
"""
from __future__ import annotations

import math
from typing import List

import numpy as np
import torch
from torch import Tensor, nn

from .exact import ExactConstants

# mlff stores the Bernstein decay rate as float32 even in float64 runs; keep that value.
BERNSTEIN_GAMMA = float(np.float32(0.9448630629184640))
# Basis values below exp(-60) ~ 9e-27 are set to exactly zero: computed, they are denormal floats in
# float32 (below 1.2e-38; k log x reaches -700 at the cutoff), and denormal operands make the exp and the
# filter matrix product that reads them several times slower on x86 CPUs (no effect on the energy
# beyond 1e-26 relative; measured in docs/model.md, "Denormal numbers").
LOG_NEGLIGIBLE = -60.0


# ----------------------------------------------------------------------------- cutoff functions
def cutoff_phys(r: Tensor, cutoff: float) -> Tensor:
    """PhysNet polynomial cutoff 1 - 6x^5 + 15x^4 - 10x^3, x = r / cutoff; 0 beyond the cutoff."""
    mask = r < cutoff
    x = torch.where(mask, r, torch.zeros_like(r)) / cutoff
    x3 = x * x * x
    f = 1.0 - 6.0 * x3 * x * x + 15.0 * x3 * x - 10.0 * x3
    return torch.where(mask, f, torch.zeros_like(r))


def cutoff_cosine(r: Tensor, cutoff: float) -> Tensor:
    """Behler cosine cutoff 0.5 (cos(pi r / cutoff) + 1); 0 beyond the cutoff."""
    mask = r < cutoff
    x = torch.where(mask, r, torch.zeros_like(r))
    f = 0.5 * (torch.cos(x * math.pi / cutoff) + 1.0)
    return torch.where(mask, f, torch.zeros_like(r))


def cutoff_exponential(r: Tensor, cutoff: float) -> Tensor:
    """SpookyNet cutoff exp(-r^2 / ((rc - r)(rc + r))); 0 beyond the cutoff."""
    mask = r < cutoff
    x = torch.where(mask, r, torch.zeros_like(r))
    f = torch.exp(-x * x / ((cutoff - x) * (cutoff + x)))
    return torch.where(mask, f, torch.zeros_like(r))


def cutoff_polynomial(r: Tensor, cutoff: float, p: int) -> Tensor:
    """Polynomial envelope of order p (DimeNet); 0 beyond the cutoff."""
    mask = r < cutoff
    x = torch.where(mask, r, torch.zeros_like(r)) / cutoff
    f = (1.0 - 0.5 * (p + 1) * (p + 2) * torch.pow(x, p) + p * (p + 2) * torch.pow(x, p + 1)
         - 0.5 * p * (p + 1) * torch.pow(x, p + 2))
    return torch.where(mask, f, torch.zeros_like(r))


class CutoffFunction(nn.Module):
    """Cutoff function selected by name ('phys', 'cosine', 'exponential', 'polynomial')."""

    def __init__(self, name: str, cutoff: float, p: int = 6):
        super().__init__()
        if name not in ("phys", "cosine", "exponential", "polynomial"):
            raise ValueError(f"unknown cutoff function {name!r}; use phys, cosine, exponential or polynomial")
        self.name = name
        self.cutoff = float(cutoff)
        self.p = int(p)

    def forward(self, r: Tensor) -> Tensor:
        if self.name == "phys":
            return cutoff_phys(r, self.cutoff)
        if self.name == "cosine":
            return cutoff_cosine(r, self.cutoff)
        if self.name == "exponential":
            return cutoff_exponential(r, self.cutoff)
        return cutoff_polynomial(r, self.cutoff, self.p)


# ----------------------------------------------------------------------------- radial bases
class RadialBasis(ExactConstants):
    """Radial basis expansion [E] -> [E, K]: 'bernstein' (SO3LR), 'physnet', 'fourier'."""

    def __init__(self, name: str, num_basis: int, cutoff: float):
        super().__init__()
        if name not in ("bernstein", "physnet", "fourier"):
            raise ValueError(f"unknown radial basis {name!r}; use bernstein, physnet or fourier")
        self.name = name
        self.num_basis = int(num_basis)
        self.cutoff = float(cutoff)
        self.gamma = BERNSTEIN_GAMMA
        self.log_negligible = LOG_NEGLIGIBLE
        n = self.num_basis
        # log binomial(n-1, k) from sums of logs in float64, as mlff
        logb = np.array([np.sum(np.log(np.arange(1, n))) - np.sum(np.log(np.arange(1, k + 1)))
                         - np.sum(np.log(np.arange(1, n - k))) for k in range(n)], dtype=np.float64)
        self.register_constant("log_binom", logb)
        self.register_constant("k", torch.arange(n, dtype=torch.float64))
        self.register_constant("k_rev", torch.arange(n - 1, -1, -1, dtype=torch.float64))
        offsets = np.linspace(np.exp(-self.cutoff), 1.0, n)
        self.register_constant("physnet_offsets", offsets)
        self.physnet_coeff = float(abs(((2.0 / n) * (1.0 - math.exp(-self.cutoff))) ** (-2)))

    def forward(self, r: Tensor) -> Tensor:
        r = r.unsqueeze(-1)  # [E, 1]
        if self.name == "bernstein":
            x = torch.exp(-self.gamma * r)  # [E, 1]
            mask = (x != 0.0) & (x != 1.0)
            xs = torch.where(mask, x, torch.full_like(x, 0.5))
            one = torch.ones_like(xs)
            k = self.k.to(r.dtype)
            k_rev = self.k_rev.to(r.dtype)
            k_x = k * torch.log(torch.where(k != 0.0, xs, one))
            kk_x = k_rev * torch.log(torch.where(k_rev != 0.0, 1.0 - xs, one))
            arg = self.log_binom.to(r.dtype) + k_x + kk_x  # [E, K]
            b = torch.exp(torch.clamp(arg, min=self.log_negligible))
            return torch.where(mask & (arg > self.log_negligible), b, torch.zeros_like(b))
        if self.name == "physnet":
            off = self.physnet_offsets.to(r.dtype)
            return torch.exp(-self.physnet_coeff * (torch.exp(-r) - off) ** 2)
        # fourier (sin(pi n r / rc) / r), 0 at r = 0
        n = self.k.to(r.dtype)
        mask = r != 0.0
        rs = torch.where(mask, r, torch.ones_like(r))
        f = torch.sin(math.pi / self.cutoff * n * rs) / rs
        return torch.where(mask, f, torch.zeros_like(f))


# ----------------------------------------------------------------------------- spherical harmonics
def spherical_harmonics(u: Tensor, degrees: List[int]) -> Tensor:
    """Real spherical harmonics of the unit vectors `u` [E, 3] for each l in `degrees` (0..4),
    m = -l..l, concatenated: [E, sum(2l+1)]. Same normalisation and ordering as mlff."""
    x = u[:, 0:1]
    y = u[:, 1:2]
    z = u[:, 2:3]
    pi = math.pi
    out: List[Tensor] = []
    for l in degrees:
        if l == 0:
            out.append(torch.ones_like(x) * (0.5 * math.sqrt(1.0 / pi)))
        elif l == 1:
            c = math.sqrt(3.0 / (4.0 * pi))
            out.append(torch.cat([c * y, c * z, c * x], dim=-1))
        elif l == 2:
            c1 = 0.5 * math.sqrt(15.0 / pi)
            c0 = 0.25 * math.sqrt(5.0 / pi)
            c2 = 0.25 * math.sqrt(15.0 / pi)
            out.append(torch.cat([c1 * x * y, c1 * y * z, c0 * (3.0 * z * z - 1.0), c1 * x * z,
                                  c2 * (x * x - y * y)], dim=-1))
        elif l == 3:
            a = 0.25 * math.sqrt(35.0 / (2.0 * pi))
            b = 0.5 * math.sqrt(105.0 / pi)
            c = 0.25 * math.sqrt(21.0 / (2.0 * pi))
            d = 0.25 * math.sqrt(7.0 / pi)
            e = 0.25 * math.sqrt(105.0 / pi)
            zz = z * z
            out.append(torch.cat([
                a * y * (3.0 * x * x - y * y),
                b * x * y * z,
                c * y * (5.0 * zz - 1.0),
                d * (5.0 * zz * z - 3.0 * z),
                c * x * (5.0 * zz - 1.0),
                e * (x * x - y * y) * z,
                a * x * (x * x - 3.0 * y * y)], dim=-1))
        elif l == 4:
            a = 0.75 * math.sqrt(35.0 / pi)
            b = 0.75 * math.sqrt(35.0 / (2.0 * pi))
            c = 0.75 * math.sqrt(5.0 / pi)
            d = 0.75 * math.sqrt(5.0 / (2.0 * pi))
            e = 3.0 / 16.0 * math.sqrt(1.0 / pi)
            f = 3.0 / 8.0 * math.sqrt(5.0 / pi)
            g = 3.0 / 16.0 * math.sqrt(35.0 / pi)
            xx = x * x
            yy = y * y
            zz = z * z
            out.append(torch.cat([
                a * x * y * (xx - yy),
                b * y * (3.0 * xx - yy) * z,
                c * x * y * (7.0 * zz - 1.0),
                d * y * (7.0 * zz * z - 3.0 * z),
                e * (35.0 * zz * zz - 30.0 * zz + 3.0),
                d * x * (7.0 * zz * z - 3.0 * z),
                f * (xx - yy) * (7.0 * zz - 1.0),
                b * x * (xx - 3.0 * yy) * z,
                g * (xx * (xx - 3.0 * yy) - yy * (3.0 * xx - yy))], dim=-1))
        else:
            raise ValueError("spherical harmonics are implemented for l = 0..4")
    return torch.cat(out, dim=-1)


def safe_norm(v: Tensor) -> Tensor:
    """|v| along the last axis with a finite (zero) gradient at v = 0."""
    sq = (v * v).sum(-1)
    mask = sq > 0.0
    return torch.where(mask, torch.sqrt(torch.where(mask, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def l0_contraction_matrix(degrees: List[int]) -> Tensor:
    """[m_tot, n_degrees] matrix C with C[m, d] = 1/sqrt(2 l_d + 1) for the m belonging to degree d:
    (ev * ev) @ C is mlff's `make_l0_contraction_fn` (Clebsch-Gordan coupling l x l -> 0)."""
    m_tot = sum(2 * l + 1 for l in degrees)
    c = np.zeros((m_tot, len(degrees)), dtype=np.float64)
    o = 0
    for d, l in enumerate(degrees):
        c[o:o + 2 * l + 1, d] = 1.0 / math.sqrt(2 * l + 1)
        o += 2 * l + 1
    return torch.from_numpy(c)


def degree_repeat_index(degrees: List[int]) -> Tensor:
    """Index [m_tot] mapping each spherical component to its degree slot (for index_select)."""
    idx: List[int] = []
    for d, l in enumerate(degrees):
        idx += [d] * (2 * l + 1)
    return torch.tensor(idx, dtype=torch.long)
