"""Erf-damped Coulomb energy of predicted partial charges (mlff ``ElectrostaticEnergySparse``)."""
import math
from typing import List, Optional

import torch
from torch import Tensor, nn

from .switch import smooth_switch, switch_and_derivative
from .units import KE


class ElectrostaticEnergy(nn.Module):
    """Energy of a pair of partial charges q_i, q_j (e) at distance r (Å), with σ = ``scale`` (Å;
    SO3LR: 4.0) and V(r) = erf(r/σ)/r:

    * ``cutoff_lr`` = None ("coulomb_erf"):  E_ij = KE · q_i q_j · V(r)
    * ``cutoff_lr`` = r_c ("coulomb_erf_shifted_force_smooth"), r_on = 0.45 r_c:
      E_ij = KE · q_i q_j · [V(r) − V(r_c) − (1 − f(r)) · V'(r_c) · (r − r_c)] for r < r_c, else 0,
      with f = smooth_switch(r, r_on, r_c): the shifted potential for r <= r_on blended into the
      shifted-force potential. SO3LR's calculators use r_c = 12 Å.

    KE = 14.3996 eV·Å/e². No learnable parameters.
    """

    def __init__(self, scale: float = 1.0, cutoff_lr: Optional[float] = None, cuton_factor: float = 0.45):
        super().__init__()
        self.ke = KE
        self.scale = float(scale)
        self.use_cutoff = cutoff_lr is not None
        self.cutoff_lr = float(cutoff_lr) if cutoff_lr is not None else 0.0
        self.cuton_factor = float(cuton_factor)

    def _shifts(self) -> List[float]:
        """[V(r_c), V'(r_c)] (eV·Å/e² without KE; 1/Å, 1/Å²)."""
        rc = self.cutoff_lr
        s = self.scale
        v = math.erf(rc / s) / rc
        dv = (2.0 * rc * math.exp(-(rc / s) ** 2) / (math.sqrt(math.pi) * s) - math.erf(rc / s)) / (rc * rc)
        return [v, dv]

    def potential(self, r: Tensor) -> Tensor:
        """The (shifted) pair potential without KE q_i q_j, [P] (1/Å); differentiable."""
        pot = torch.erf(r / self.scale) / r
        if not self.use_cutoff:
            return pot
        rc = self.cutoff_lr
        sh = self._shifts()
        f = smooth_switch(r, self.cuton_factor * rc, rc)
        shifted = pot - sh[0]
        pair = f * shifted + (1.0 - f) * (shifted - sh[1] * (r - rc))
        return torch.where(r < rc, pair, torch.zeros_like(r))

    def potential_and_derivative(self, r: Tensor) -> List[Tensor]:
        """[potential(r), d potential / dr] without a graph (analytic)."""
        s = self.scale
        pot = torch.erf(r / s) / r
        dpot = (2.0 / (math.sqrt(math.pi) * s)) * torch.exp(-(r / s) ** 2) / r - pot / r
        if not self.use_cutoff:
            return [pot, dpot]
        rc = self.cutoff_lr
        sh = self._shifts()
        sw = switch_and_derivative(r, self.cuton_factor * rc, rc)
        f = sw[0]
        inside = r < rc
        shifted = pot - sh[0]
        pair = torch.where(inside, f * shifted + (1.0 - f) * (shifted - sh[1] * (r - rc)), torch.zeros_like(r))
        dpair = torch.where(inside, dpot + sw[1] * sh[1] * (r - rc) - (1.0 - f) * sh[1], torch.zeros_like(r))
        return [pair, dpair]

    @torch.jit.export
    def pair_energy(self, q_i: Tensor, q_j: Tensor, r: Tensor) -> Tensor:
        """E_ij [P] (eV) of pairs with charges q_i, q_j [P] (e) at distances r [P] (Å); differentiable."""
        return self.ke * q_i * q_j * self.potential(r)

    @torch.jit.export
    def pair_energy_and_derivatives(self, q_i: Tensor, q_j: Tensor, r: Tensor) -> List[Tensor]:
        """[E_ij, dE/dr (eV/Å), dE/dq_i, dE/dq_j (eV/e)], each [P], analytic (no graph)."""
        pd = self.potential_and_derivative(r)
        kq = self.ke * pd[0]
        return [kq * q_i * q_j, self.ke * q_i * q_j * pd[1], kq * q_j, kq * q_i]
