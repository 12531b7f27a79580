"""Ziegler–Biersack–Littmark nuclear repulsion with learnable coefficients (mlff ``ZBLRepulsionSparse``)."""
import math
from typing import Dict

import torch
from torch import Tensor, nn

from .switch import smooth_switch
from .units import BOHR, KE

#: raw parameter names, in the order of SO3LR's params.pkl ``observables_0/zbl_repulsion``
ZBL_PARAMETERS = ("a1", "a2", "a3", "a4", "c1", "c2", "c3", "c4", "p", "d")


def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x), as jax.nn.softplus (logaddexp(x, 0))."""
    return torch.logaddexp(x, torch.zeros_like(x))


def softplus_inverse(y: float) -> float:
    """Inverse of softplus: y + log(-expm1(-y)) (mlff ``softplus_inverse``)."""
    return y + math.log(-math.expm1(-y))


class ZBLRepulsion(nn.Module):
    """Screened nuclear repulsion of a pair at distance d (Å) inside the local cutoff:

        E_ij = w(d) · f_cut(d) · KE · Z_i Z_j / d · Σ_k c_k exp(-a_k · d · (Z_i^p + Z_j^p) · dd)   (eV)

    ``a_k, c_k, p, dd`` are softplus of raw parameters (c_k normalised to Σ c_k = 1; ``dd`` is
    1/(0.8854 a0) at initialisation, in 1/Å), ``w(d) = smooth_switch(d, 0, 1.5 Å)`` (the term vanishes
    for d >= 1.5 Å), ``f_cut`` the model's local cutoff function on that pair, KE = 14.3996 eV·Å/e².
    Raw parameters a1..a4, c1..c4, p, d ([1] each) start at the reference's values
    (a = 3.2, 0.9423, 0.4028, 0.2016; c = 0.1818, 0.5099, 0.2802, 0.02817; p = 0.23).
    """

    def __init__(self):
        super().__init__()
        self.ke = KE
        self.switch_off = 1.5
        init = {"a1": 3.20000, "a2": 0.94230, "a3": 0.40280, "a4": 0.20160,
                "c1": 0.18180, "c2": 0.50990, "c3": 0.28020, "c4": 0.02817,
                "p": 0.23, "d": 1.0 / (0.8854 * BOHR)}
        for k in ZBL_PARAMETERS:
            self.register_parameter(k, nn.Parameter(torch.tensor([softplus_inverse(init[k])], dtype=torch.float32)))

    def coefficients(self) -> Dict[str, Tensor]:
        """Effective (softplus'd, c normalised) coefficients a1..a4, c1..c4, p, d as [1] tensors."""
        c = [softplus(self.c1), softplus(self.c2), softplus(self.c3), softplus(self.c4)]
        cs = c[0] + c[1] + c[2] + c[3]
        return {"a1": softplus(self.a1), "a2": softplus(self.a2), "a3": softplus(self.a3), "a4": softplus(self.a4),
                "c1": c[0] / cs, "c2": c[1] / cs, "c3": c[2] / cs, "c4": c[3] / cs,
                "p": softplus(self.p), "d": softplus(self.d)}

    @torch.jit.export
    def pair_energy(self, z_i: Tensor, z_j: Tensor, distances: Tensor, cutoff_values: Tensor) -> Tensor:
        """E_ij [P] (eV) of pairs with atomic numbers z_i, z_j [P] at ``distances`` [P] (Å);
        ``cutoff_values`` [P]: the model's local cutoff function on each pair."""
        dtype = distances.dtype
        co = self.coefficients()
        zi = z_i.to(dtype)
        zj = z_j.to(dtype)
        nonzero = distances != 0
        d_safe = torch.where(nonzero, distances, torch.ones_like(distances))
        coulomb = torch.where(nonzero, zi * zj / d_safe, torch.zeros_like(distances))
        p = co["p"].to(dtype)
        rzd = distances * (torch.pow(zi, p) + torch.pow(zj, p)) * co["d"].to(dtype)
        y = (co["c1"].to(dtype) * torch.exp(-co["a1"].to(dtype) * rzd)
             + co["c2"].to(dtype) * torch.exp(-co["a2"].to(dtype) * rzd)
             + co["c3"].to(dtype) * torch.exp(-co["a3"].to(dtype) * rzd)
             + co["c4"].to(dtype) * torch.exp(-co["a4"].to(dtype) * rzd))
        w = smooth_switch(distances, 0.0, self.switch_off)
        return w * self.ke * cutoff_values.to(dtype) * coulomb * y
