"""Pairwise vdW-QDO dispersion with Hirshfeld-scaled free-atom data (mlff ``DispersionEnergySparse``)."""
from typing import List, Optional

import torch
from torch import Tensor

from ..nn.exact import ExactConstants
from .dispersion_data import FREE_ATOM_ALPHA, FREE_ATOM_C6, MAX_Z
from .switch import smooth_switch, switch_and_derivative
from .units import BOHR, FINE_STRUCTURE, HARTREE

# cubic fit s(R_vdW) of the QDO parameters: s = B3 R³ + B2 R² + B1 R + B0
QDO_FIT = (-0.00433008, 0.24428889, 0.04125273, -0.00078893)


class DispersionEnergy(ExactConstants):
    """Dispersion energy of a pair of atoms (Z, Hirshfeld ratio h) at distance r (Å):

        α_i = α0[Z_i]·h_i (Bohr³),  C6_i = C6_0[Z_i]·h_i² (Ha·Bohr⁶)   (free-atom data: dispersion_data)
        α_ij = (α_i + α_j)/2,   C6_ij = 2 C6_i C6_j α_i α_j / (α_i² C6_j + α_j² C6_i)
        R_vdW = FINE_STRUCTURE^(-4/21) α_ij^(1/7),  s = B3 R³ + B2 R² + B1 R + B0,  γ = 1/(2 s²)
        C8 = 5 C6_ij/γ,  C10 = 245/8 · C6_ij/γ²,  ρ = scale · 2 · 2.54 · α_ij^(1/7),  R = r / self.bohr
        E_ij = HARTREE · w(r) · [ -C6/(R⁶+ρ⁶) - C8/(R⁸+ρ⁸) - C10/(R¹⁰+ρ¹⁰) ]   (eV)

    with w(r) = smooth_switch(r, r_c - damping, r_c) when a cutoff is set (0 for r >= r_c), else 1.
    ``scale``: the reference's ``dispersion_energy_scale`` (1.2 for SO3LR); SO3LR's calculators use
    r_c = 12 Å, damping 2 Å. Valid for 1 <= Z <= 102. No learnable parameters.
    """

    def __init__(self, scale: float = 1.0, cutoff_lr: Optional[float] = None, damping: Optional[float] = None):
        super().__init__()
        if cutoff_lr is not None and (damping is None or damping <= 0.0):
            raise ValueError("DispersionEnergy: cutoff_lr is set but the damping width is missing or not positive; "
                             "pass damping in Å, e.g. 2.0 as SO3LR does")
        self.scale = float(scale)
        self.use_cutoff = cutoff_lr is not None
        self.cutoff_lr = float(cutoff_lr) if cutoff_lr is not None else 0.0
        self.damping = float(damping) if damping is not None else 0.0
        self.register_constant("alpha0", torch.tensor(FREE_ATOM_ALPHA, dtype=torch.float64))
        self.register_constant("c6_0", torch.tensor(FREE_ATOM_C6, dtype=torch.float64))
        self.max_z = MAX_Z
        self.bohr = BOHR
        self.hartree = HARTREE
        self.r_vdw_factor = FINE_STRUCTURE ** (-4.0 / 21.0)
        self.b0, self.b1, self.b2, self.b3 = QDO_FIT

    def _qdo(self, h_i: Tensor, h_j: Tensor, z_i: Tensor, z_j: Tensor) -> List[Tensor]:
        """Pair quantities [alpha_ij, C6_ij, C8_ij, C10_ij, rho_ij, s, R_vdW] (atomic units)."""
        alpha0 = self.alpha0.to(h_i.dtype)
        c60 = self.c6_0.to(h_i.dtype)
        a_i = alpha0[z_i] * h_i
        a_j = alpha0[z_j] * h_j
        c_i = c60[z_i] * h_i * h_i
        c_j = c60[z_j] * h_j * h_j
        alpha_ij = (a_i + a_j) / 2.0
        c6 = 2.0 * c_i * c_j * a_j * a_i / (a_i * a_i * c_j + a_j * a_j * c_i)
        a17 = torch.pow(alpha_ij, 1.0 / 7.0)
        r_vdw = self.r_vdw_factor * a17
        s = self.b3 * r_vdw ** 3 + self.b2 * r_vdw ** 2 + self.b1 * r_vdw + self.b0
        gamma = 0.5 / (s * s)
        c8 = 5.0 / gamma * c6
        c10 = 245.0 / 8.0 / gamma ** 2 * c6
        rho = self.scale * 2.0 * 2.54 * a17
        return [alpha_ij, c6, c8, c10, rho, s, r_vdw]

    @torch.jit.export
    def pair_energy(self, h_i: Tensor, h_j: Tensor, z_i: Tensor, z_j: Tensor, r: Tensor) -> Tensor:
        """E_ij [P] (eV) of pairs with Hirshfeld ratios h_i, h_j, atomic numbers z_i, z_j at distances
        r [P] (Å); differentiable."""
        co = self._qdo(h_i, h_j, z_i, z_j)
        R = r / self.bohr
        R2 = R * R
        R6 = R2 * R2 * R2
        R8 = R6 * R2
        R10 = R8 * R2
        rho2 = co[4] * co[4]
        rho6 = rho2 * rho2 * rho2
        rho8 = rho6 * rho2
        v = -co[1] / (R6 + rho6) - co[2] / (R8 + rho8) - co[3] / (R10 + rho8 * rho2)
        e = v * self.hartree
        if self.use_cutoff:
            w = smooth_switch(r, self.cutoff_lr - self.damping, self.cutoff_lr)
            e = e * torch.where(r > 0, w, torch.zeros_like(w))
        return e

    @torch.jit.export
    def pair_energy_and_derivatives(self, h_i: Tensor, h_j: Tensor, z_i: Tensor, z_j: Tensor,
                                    r: Tensor) -> List[Tensor]:
        """[E_ij (eV), dE/dr (eV/Å), dE/dh_i, dE/dh_j (eV)], each [P], analytic (no graph): C6_ij is
        bilinear in h_i h_j; C8, C10 and ρ depend on α_ij = (α_i + α_j) / 2."""
        co = self._qdo(h_i, h_j, z_i, z_j)
        alpha, c6, c8, c10, rho, sfit, rv = co[0], co[1], co[2], co[3], co[4], co[5], co[6]
        R = r / self.bohr
        R2 = R * R
        R5 = R2 * R2 * R
        R7 = R5 * R2
        R9 = R7 * R2
        rho2 = rho * rho
        rho5 = rho2 * rho2 * rho
        rho7 = rho5 * rho2
        rho9 = rho7 * rho2
        i6 = 1.0 / (R5 * R + rho5 * rho)
        i8 = 1.0 / (R7 * R + rho7 * rho)
        i10 = 1.0 / (R9 * R + rho9 * rho)
        v = -c6 * i6 - c8 * i8 - c10 * i10
        dv_dR = 6.0 * c6 * R5 * i6 * i6 + 8.0 * c8 * R7 * i8 * i8 + 10.0 * c10 * R9 * i10 * i10
        dv_drho = 6.0 * c6 * rho5 * i6 * i6 + 8.0 * c8 * rho7 * i8 * i8 + 10.0 * c10 * rho9 * i10 * i10
        # C8 = 10 C6 s², C10 = 122.5 C6 s⁴ (s: cubic fit of α^(1/7)); ρ ~ α^(1/7)
        dv_dc6 = -(i6 + 10.0 * sfit * sfit * i8 + 122.5 * sfit ** 4 * i10)
        ds_dalpha = (3.0 * self.b3 * rv * rv + 2.0 * self.b2 * rv + self.b1) * rv / (7.0 * alpha)
        dv_dalpha = -(20.0 * c6 * sfit * i8 + 490.0 * c6 * sfit ** 3 * i10) * ds_dalpha + dv_drho * rho / (7.0 * alpha)
        # C6_ij = K_ij h_i h_j
        alpha0 = self.alpha0.to(h_i.dtype)
        c60 = self.c6_0.to(h_i.dtype)
        a0i = alpha0[z_i]
        a0j = alpha0[z_j]
        c0i = c60[z_i]
        c0j = c60[z_j]
        k6 = 2.0 * c0i * c0j * a0i * a0j / (a0i * a0i * c0j + a0j * a0j * c0i)
        dv_dhi = dv_dc6 * k6 * h_j + dv_dalpha * 0.5 * a0i
        dv_dhj = dv_dc6 * k6 * h_i + dv_dalpha * 0.5 * a0j
        if self.use_cutoff:
            sw = switch_and_derivative(r, self.cutoff_lr - self.damping, self.cutoff_lr)
            pos = r > 0
            w = torch.where(pos, sw[0], torch.zeros_like(r))
            dw = torch.where(pos, sw[1], torch.zeros_like(r))
        else:
            w = torch.ones_like(r)
            dw = torch.zeros_like(r)
        h = self.hartree
        return [h * w * v, h * (dw * v + w * dv_dR / self.bohr), h * w * dv_dhi, h * w * dv_dhj]
