"""Physical long-range (and short-range repulsive) energy terms of SO3LR, in PyTorch.

A port of the ``ZBLRepulsionSparse``, ``ElectrostaticEnergySparse``, ``DispersionEnergySparse``
modules and the total-charge correction of ``PartialChargesSparse`` of the JAX package mlff
(tag ``v1.0-lrs-gems``, ``mlff/nn/observable/observable_sparse.py``), the version SO3LR pinned
when its published reference energies/forces were made (Oct 2024; lr_cutoff 12 Å, dispersion
damping 2 Å). Verified against those JAX functions to ~1e-16 relative in float64 (values and
distance gradients), see tests/test_longrange.py.

Conventions shared by every module here
---------------------------------------
* Units: distances in Å, charges in e, energies in eV (per atom). Free-atom dispersion data
  are tabulated in atomic units (:mod:`so3krates.potential.dispersion_data`) and converted with
  the CODATA-2014 constants of ``ase.units`` that the reference uses (:data:`BOHR`,
  :data:`HARTREE`, :data:`FINE_STRUCTURE`; ``KE = HARTREE * BOHR`` is the Coulomb constant
  in eV·Å/e²).
* Pair lists are *sparse and symmetric*: every unordered pair {i, j} appears twice, as
  (i→j) and (j→i), exactly like the reference's ``'sparse'`` neighbour-list format. Each
  directed pair contributes half of the pair energy to atom ``idx_i``; the per-atom energies
  returned are therefore ``E_i = 1/2 Σ_j E_pair(i, j)`` and ``Σ_i E_i`` is the total. (The
  reference's ``'ordered_sparse'`` format — each pair once, factor 1 — gives the same total
  but an asymmetric per-atom split; it is not supported here.) Periodic images are simply
  more pairs (pass their distances); no self pair with zero distance may be present. The
  long-range list must hold at least every pair with r < cutoff_lr (pairs beyond it may be
  present and contribute exactly 0 when a cutoff is set).
* Segment sums use ``index_add``; nothing is N×N. All modules are TorchScript-able and work in
  float32 and float64 (the dtype of the distances / charges decides the compute dtype).
* Each module has ``load_flax_params(p)`` taking the sub-dict of SO3LR's ``params.pkl`` named
  in its docstring (passing the whole ``params.pkl`` dict, with or without the top-level
  ``'params'`` key, also works: the path is then followed).
"""
import math
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .constants import ExactConstants
from .dispersion_data import FREE_ATOM_ALPHA, FREE_ATOM_C6, MAX_Z

# CODATA-2014 values, identical to ase.units (ASE default) used by the reference code.
BOHR: float = 0.5291772105638411  # Å per Bohr (ase.units.Bohr)
HARTREE: float = 27.211386024367243  # eV per Hartree (ase.units.Hartree)
FINE_STRUCTURE: float = 0.007297352566206496  # ase.units.alpha
KE: float = 14.399645351950548  # Coulomb constant e²/(4π ε0) in eV·Å/e² (= HARTREE * BOHR)

__all__ = [
    "BOHR", "HARTREE", "FINE_STRUCTURE", "KE",
    "smooth_switch", "cutoff_phys_local", "charge_equilibration",
    "ZBLRepulsion", "ChargeEquilibration", "ElectrostaticEnergy", "DispersionEnergy",
]


# ----------------------------------------------------------------------------- helpers
def _bump(x: Tensor) -> Tensor:
    """exp(-1/x) for x > 0, 0 otherwise (gradient-safe: no inf/NaN in either branch)."""
    pos = x > 0
    safe = torch.where(pos, x, torch.ones_like(x))
    return torch.where(pos, torch.exp(-1.0 / safe), torch.zeros_like(x))


def smooth_switch(x: Tensor, x_on: float, x_off: float) -> Tensor:
    """C∞ switch: 1 for x <= x_on, 0 for x >= x_off, s(1-c)/(s(1-c)+s(c)) in between.

    c = (x - x_on)/(x_off - x_on), s(u) = exp(-1/u) for u > 0 else 0 (mlff ``switching_fn``).
    ``x`` and ``x_on``/``x_off`` in the same unit (Å here).
    """
    c = (x - x_on) / (x_off - x_on)
    a = _bump(1.0 - c)
    b = _bump(c)
    return a / (a + b)


def cutoff_phys_local(r: Tensor, cutoff: float) -> Tensor:
    """PhysNet cutoff 1 - 6x^5 + 15x^4 - 10x^3 (x = r/cutoff), 0 for r >= cutoff; r, cutoff in Å.

    Only used by :class:`ZBLRepulsion` when the caller does not pass the local cutoff values.
    """
    mask = r < cutoff
    x = torch.where(mask, r, torch.zeros_like(r)) / cutoff
    x3 = x * x * x
    f = 1.0 - 6.0 * x3 * x * x + 15.0 * x3 * x - 10.0 * x3
    return torch.where(mask, f, torch.zeros_like(r))


def _segment_sum(values: Tensor, index: Tensor, num_segments: int) -> Tensor:
    out = torch.zeros(num_segments, dtype=values.dtype, device=values.device)
    return out.index_add(0, index, values)


def _softplus(x: Tensor) -> Tensor:
    """log(1 + e^x), as jax.nn.softplus (logaddexp(x, 0))."""
    return torch.logaddexp(x, torch.zeros_like(x))


def _softplus_inverse(y: float) -> float:
    """Inverse of softplus: y + log(-expm1(-y)) (mlff ``softplus_inverse``)."""
    return y + math.log(-math.expm1(-y))


def _follow(p: Dict, path: List[str]) -> Dict:
    """Return the sub-dict at ``path`` if ``p`` is (a parent of) it, else ``p`` itself.

    Lets ``load_flax_params`` take either the module's own sub-dict or the full params tree.
    """
    d = p
    if "params" in d and isinstance(d["params"], dict) and path[0] not in d:
        d = d["params"]
    if path[0] not in d:
        return p
    for k in path:
        if k not in d:
            raise KeyError("params tree has no key '" + "/".join(path) + "' (missing '" + k + "')")
        d = d[k]
    return d


def _as_np(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


# ----------------------------------------------------------------------------- ZBL
class ZBLRepulsion(nn.Module):
    """Ziegler–Biersack–Littmark nuclear repulsion with learnable coefficients (mlff ``ZBLRepulsionSparse``).

    Per directed pair (i→j) of the *local* graph, with d = |r_ij| in Å:

        E_ij = 1/2 · w(d) · f_cut(d) · KE · Z_i Z_j / d · Σ_k c_k exp(-a_k · d · (Z_i^p + Z_j^p) · dd)

    where ``a_k, c_k, p, dd`` are softplus of the raw parameters (c_k normalised to Σ c_k = 1;
    ``dd`` is 1/(0.8854 a0) at initialisation, in 1/Å), ``w(d) = smooth_switch(d, 0, 1.5 Å)``
    (so the term vanishes for d >= 1.5 Å), ``f_cut`` is the model's local cutoff function
    value on that edge (PhysNet polynomial with the model cutoff, 4.5 Å for SO3LR) and
    KE = 14.399645351950548 eV·Å/e². Returns per-atom energies E_i = Σ_{j} E_ij  (eV).

    Parameters: ``a1..a4, c1..c4, p, d`` — raw (pre-softplus) scalars, shape [1], initialised as
    in the reference (a = 3.2, 0.9423, 0.4028, 0.2016; c = 0.1818, 0.5099, 0.2802, 0.02817;
    p = 0.23; d = 1/(0.8854·0.5291772105638411 Å)).

    Args:
        cutoff: local cutoff (Å) used to compute ``f_cut`` with the PhysNet polynomial when the
            caller does not pass ``cutoff_values`` (SO3LR: 4.5, ``cutoff_fn: phys``).
    """

    def __init__(self, cutoff: float = 4.5):
        super().__init__()
        self.a0 = BOHR
        self.ke = KE
        self.cutoff = float(cutoff)
        self.switch_off = 1.5
        init = {
            "a1": 3.20000, "a2": 0.94230, "a3": 0.40280, "a4": 0.20160,
            "c1": 0.18180, "c2": 0.50990, "c3": 0.28020, "c4": 0.02817,
            "p": 0.23, "d": 1.0 / (0.8854 * BOHR),
        }
        for k, v in init.items():
            self.register_parameter(k, nn.Parameter(torch.tensor([_softplus_inverse(v)], dtype=torch.float32)))

    def coefficients(self) -> Dict[str, Tensor]:
        """Effective (softplus'd, c normalised) coefficients a1..a4, c1..c4, p, d as [1] tensors."""
        c1 = _softplus(self.c1)
        c2 = _softplus(self.c2)
        c3 = _softplus(self.c3)
        c4 = _softplus(self.c4)
        cs = c1 + c2 + c3 + c4
        return {
            "a1": _softplus(self.a1), "a2": _softplus(self.a2),
            "a3": _softplus(self.a3), "a4": _softplus(self.a4),
            "c1": c1 / cs, "c2": c2 / cs, "c3": c3 / cs, "c4": c4 / cs,
            "p": _softplus(self.p), "d": _softplus(self.d),
        }

    def forward(self, atomic_numbers: Tensor, distances: Tensor, idx_i: Tensor, idx_j: Tensor,
                cutoff_values: Optional[Tensor] = None) -> Tensor:
        """Per-atom ZBL energy.

        Args:
            atomic_numbers: [N] long, Z of each atom.
            distances: [E] Å, |r_j - r_i (+ shift)| of the local graph (both directions).
            idx_i, idx_j: [E] long, centre and neighbour atom of each directed edge.
            cutoff_values: [E] dimensionless, the model's local cutoff function on each edge
                (the reference's ``inputs['cut']``); if None, the PhysNet polynomial with
                ``self.cutoff`` is used.
        Returns:
            [N] eV (dtype of ``distances``).
        """
        dtype = distances.dtype
        n = atomic_numbers.shape[0]
        if cutoff_values is None:
            cut = cutoff_phys_local(distances, self.cutoff)
        else:
            cut = cutoff_values.to(dtype)
        co = self.coefficients()
        a1 = co["a1"].to(dtype)
        a2 = co["a2"].to(dtype)
        a3 = co["a3"].to(dtype)
        a4 = co["a4"].to(dtype)
        c1 = co["c1"].to(dtype)
        c2 = co["c2"].to(dtype)
        c3 = co["c3"].to(dtype)
        c4 = co["c4"].to(dtype)
        p = co["p"].to(dtype)
        dd = co["d"].to(dtype)

        z = atomic_numbers.to(dtype)
        zi = z[idx_i]
        zj = z[idx_j]
        nonzero = distances != 0
        d_safe = torch.where(nonzero, distances, torch.ones_like(distances))
        coulomb = torch.where(nonzero, zi * zj / d_safe, torch.zeros_like(distances))
        x = self.ke * cut * coulomb
        rzd = distances * (torch.pow(zi, p) + torch.pow(zj, p)) * dd
        y = (c1 * torch.exp(-a1 * rzd) + c2 * torch.exp(-a2 * rzd)
             + c3 * torch.exp(-a3 * rzd) + c4 * torch.exp(-a4 * rzd))
        w = smooth_switch(distances, 0.0, self.switch_off)
        e_edge = w * x * y / 2.0
        return _segment_sum(e_edge, idx_i, n)

    @torch.jit.unused
    def load_flax_params(self, p: Dict) -> None:
        """Load the raw ZBL parameters.

        Expects ``params['params']['observables_0']['zbl_repulsion']`` of SO3LR's params.pkl:
        a dict with keys ``a1, a2, a3, a4, c1, c2, c3, c4, p, d``, each an array of shape (1,)
        holding the *raw* (pre-softplus) value.
        """
        sub = _follow(p, ["observables_0", "zbl_repulsion"])
        with torch.no_grad():
            for k in ["a1", "a2", "a3", "a4", "c1", "c2", "c3", "c4", "p", "d"]:
                param = getattr(self, k)
                v = torch.as_tensor(_as_np(sub[k]).reshape(-1), dtype=param.dtype, device=param.device)
                if v.shape != param.shape:
                    raise ValueError("zbl_repulsion/" + k + ": expected shape (1,), got " + str(tuple(v.shape)))
                param.copy_(v)


# ----------------------------------------------------------------------------- charges
def charge_equilibration(raw_charges: Tensor, batch: Tensor, total_charge: Tensor, num_graphs: int) -> Tensor:
    """Shift raw charges uniformly per graph so they sum to the graph's total charge.

    q_i = q̃_i + (Q_b - Σ_{k in b} q̃_k) / n_b,  b = batch[i], n_b = number of atoms of graph b
    (mlff ``PartialChargesSparse``). Charges and Q in e. Graphs without atoms are ignored.

    Args:
        raw_charges: [N] e, q̃ = MLP(x) + element bias.
        batch: [N] long, graph index of each atom (need not be sorted).
        total_charge: [B] e.
        num_graphs: B.
    Returns:
        [N] e, corrected partial charges.
    """
    dtype = raw_charges.dtype
    zeros = torch.zeros(num_graphs, dtype=dtype, device=raw_charges.device)
    predicted = zeros.index_add(0, batch, raw_charges)
    counts = zeros.index_add(0, batch, torch.ones_like(raw_charges))
    correction = (total_charge.to(dtype) - predicted) / torch.clamp(counts, min=1.0)
    return raw_charges + correction[batch]


class ChargeEquilibration(nn.Module):
    """Module wrapper of :func:`charge_equilibration` (no parameters).

    forward(raw_charges [N] e, batch [N] long, total_charge [B] e, num_graphs) -> [N] e.
    """

    def forward(self, raw_charges: Tensor, batch: Tensor, total_charge: Tensor, num_graphs: int) -> Tensor:
        return charge_equilibration(raw_charges, batch, total_charge, num_graphs)

    @torch.jit.unused
    def load_flax_params(self, p: Dict) -> None:
        """No parameters; accepts anything (the charge head's weights live in
        ``params['params']['observables_0']['electrostatic_energy']['partial_charges']`` and are
        loaded by the readout head)."""
        return None


# ----------------------------------------------------------------------------- electrostatics
class ElectrostaticEnergy(nn.Module):
    """Erf-damped Coulomb energy of predicted partial charges (mlff ``ElectrostaticEnergySparse``).

    With σ = ``scale`` (Å; SO3LR: ``electrostatic_energy_scale`` = 4.0 from hyperparameters.yaml)
    and V(r) = erf(r/σ)/r, per directed long-range pair (i→j), r in Å:

    * ``cutoff_lr`` = None ("coulomb_erf"):  E_ij = 1/2 · KE · q_i q_j · V(r)
    * ``cutoff_lr`` = r_c  ("coulomb_erf_shifted_force_smooth"), r_on = 0.45 r_c:

          E_ij = 1/2 · KE · q_i q_j · [ V(r) - V(r_c) - (1 - f(r)) · V'(r_c) · (r - r_c) ]  for r < r_c
          E_ij = 0                                                                         for r >= r_c

      with f = smooth_switch(r, r_on, r_c) and V'(r) = (2r/(√π σ) e^{-(r/σ)²} - erf(r/σ)) / r²;
      i.e. the shifted potential for r <= r_on blended into the shifted-force potential.
      SO3LR's calculators use r_c = 12 Å (``lr_cutoff``).

    KE = 14.399645351950548 eV·Å/e². No learnable parameters.
    Returns per-atom energies E_i = Σ_j E_ij (eV).
    """

    def __init__(self, scale: float = 1.0, cutoff_lr: Optional[float] = None, cuton_factor: float = 0.45):
        """
        Args:
            scale: erf damping length σ in Å (reference ``electrostatic_energy_scale``; 4.0 for SO3LR).
            cutoff_lr: long-range cutoff r_c in Å, or None for the plain erf-Coulomb sum over
                whatever pairs are given.
            cuton_factor: r_on = cuton_factor · r_c (reference: 0.45).
        """
        super().__init__()
        self.ke = KE
        self.scale = float(scale)
        self.use_cutoff = cutoff_lr is not None
        self.cutoff_lr = float(cutoff_lr) if cutoff_lr is not None else 0.0
        self.cuton_factor = float(cuton_factor)

    def forward(self, charges: Tensor, distances_lr: Tensor, idx_i_lr: Tensor, idx_j_lr: Tensor,
                cutoff_lr: Optional[float] = None) -> Tensor:
        """Per-atom electrostatic energy.

        Args:
            charges: [N] e, partial charges (already charge-equilibrated).
            distances_lr: [E'] Å, long-range pair distances (both directions; pairs beyond the
                cutoff are allowed and contribute 0 when a cutoff is set).
            idx_i_lr, idx_j_lr: [E'] long.
            cutoff_lr: optional override of the constructor's r_c (Å); None keeps the module's.
        Returns:
            [N] eV (dtype of ``charges``/``distances_lr``).
        """
        dtype = distances_lr.dtype
        n = charges.shape[0]
        q = charges.to(dtype)
        r = distances_lr
        sigma = self.scale
        qq = q[idx_i_lr] * q[idx_j_lr]
        pot = torch.erf(r / sigma) / r

        use_cut = self.use_cutoff
        rc = self.cutoff_lr
        if cutoff_lr is not None:
            use_cut = True
            rc = cutoff_lr

        if use_cut:
            rc_t = torch.full_like(r, rc)
            shift = torch.erf(rc_t / sigma) / rc_t
            force_shift = (2.0 * rc_t * torch.exp(-(rc_t / sigma) ** 2) / (math.sqrt(math.pi) * sigma)
                           - torch.erf(rc_t / sigma)) / rc_t ** 2
            f = smooth_switch(r, self.cuton_factor * rc, rc)
            shifted = pot - shift
            shifted_force = shifted - force_shift * (r - rc)
            pair = f * shifted + (1.0 - f) * shifted_force
            e = torch.where(r < rc, 0.5 * self.ke * qq * pair, torch.zeros_like(r))
        else:
            e = 0.5 * self.ke * qq * pot
        return _segment_sum(e, idx_i_lr, n)

    @torch.jit.unused
    def load_flax_params(self, p: Dict) -> None:
        """No learnable parameters. Accepts ``params['params']['observables_0']['electrostatic_energy']``
        (which only holds the ``partial_charges`` head, loaded by the readout) and checks it has
        nothing else. σ comes from hyperparameters (``model.electrostatic_energy_scale``)."""
        sub = _follow(p, ["observables_0", "electrostatic_energy"])
        extra = [k for k in sub.keys() if k != "partial_charges"]
        if extra:
            raise ValueError("electrostatic_energy: unexpected parameters " + str(extra))


# ----------------------------------------------------------------------------- dispersion
class DispersionEnergy(ExactConstants):
    """Pairwise vdW-QDO dispersion with Hirshfeld-scaled free-atom data (mlff ``DispersionEnergySparse``).

    Per atom (Z, Hirshfeld ratio h): α_i = α0[Z_i]·h_i (Bohr³), C6_i = C6_0[Z_i]·h_i² (Ha·Bohr⁶),
    free-atom data from :mod:`so3krates.potential.dispersion_data`. Per directed pair (i→j):

        α_ij = (α_i + α_j)/2,   C6_ij = 2 C6_i C6_j α_i α_j / (α_i² C6_j + α_j² C6_i)
        R_vdW = FINE_STRUCTURE^(-4/21) α_ij^(1/7),  s = b3 R³ + b2 R² + b1 R + b0,  γ = 1/(2 s²)
            (b0..b3 = -0.00433008, 0.24428889, 0.04125273, -0.00078893)
        C8 = 5 C6_ij/γ,  C10 = 245/8 · C6_ij/γ²,  ρ = scale · 2 · 2.54 · α_ij^(1/7)
        R = r / BOHR  (r in Å)
        E_ij = 1/2 · HARTREE · w(r) · [ -C6/(R⁶+ρ⁶) - C8/(R⁸+ρ⁸) - C10/(R¹⁰+ρ¹⁰) ]   (eV)

    with w(r) = smooth_switch(r, r_c - damping, r_c) when a cutoff is set (w = 0 for r <= 0 and
    for r >= r_c), else w = 1. ``scale`` is the reference's ``dispersion_energy_scale`` (1.2 for
    SO3LR, hyperparameters.yaml); SO3LR's calculators use r_c = 12 Å and damping = 2 Å.
    Valid for 1 <= Z <= 102. No learnable parameters. Returns E_i = Σ_j E_ij (eV).
    """

    def __init__(self, scale: float = 1.0, cutoff_lr: Optional[float] = None,
                 damping: Optional[float] = None):
        """
        Args:
            scale: damping-radius scale (reference ``dispersion_energy_scale``; 1.2 for SO3LR).
            cutoff_lr: r_c in Å or None (no switching).
            damping: width of the switching region in Å (reference
                ``dispersion_energy_cutoff_lr_damping``; 2.0 for SO3LR); required with a cutoff.
        """
        super().__init__()
        if cutoff_lr is not None and damping is None:
            raise ValueError("DispersionEnergy: cutoff_lr is set but damping is None; "
                             "pass damping (Å), e.g. 2.0 as SO3LR does")
        self.bohr = BOHR
        self.hartree = HARTREE
        self.fine_structure = FINE_STRUCTURE
        self.scale = float(scale)
        self.use_cutoff = cutoff_lr is not None
        self.cutoff_lr = float(cutoff_lr) if cutoff_lr is not None else 0.0
        self.damping = float(damping) if damping is not None else 0.0
        self.register_constant("alpha0", torch.tensor(FREE_ATOM_ALPHA, dtype=torch.float64))
        self.register_constant("c6_0", torch.tensor(FREE_ATOM_C6, dtype=torch.float64))
        self.max_z = MAX_Z

    def pair_coefficients(self, hirshfeld_ratios: Tensor, atomic_numbers: Tensor,
                          idx_i: Tensor, idx_j: Tensor) -> List[Tensor]:
        """[alpha_ij (Bohr³), C6_ij (Ha·Bohr⁶)] per directed pair, in the ratios' dtype."""
        dtype = hirshfeld_ratios.dtype
        alpha0 = self.alpha0.to(dtype)
        c60 = self.c6_0.to(dtype)
        hi = hirshfeld_ratios[idx_i]
        hj = hirshfeld_ratios[idx_j]
        zi = atomic_numbers[idx_i]
        zj = atomic_numbers[idx_j]
        a_i = alpha0[zi] * hi
        a_j = alpha0[zj] * hj
        c_i = c60[zi] * hi * hi
        c_j = c60[zj] * hj * hj
        alpha_ij = (a_i + a_j) / 2.0
        c6_ij = 2.0 * c_i * c_j * a_j * a_i / (a_i * a_i * c_j + a_j * a_j * c_i)
        return [alpha_ij, c6_ij]

    def forward(self, hirshfeld_ratios: Tensor, atomic_numbers: Tensor, distances_lr: Tensor,
                idx_i_lr: Tensor, idx_j_lr: Tensor, cutoff_lr: Optional[float] = None,
                damping: Optional[float] = None) -> Tensor:
        """Per-atom dispersion energy.

        Args:
            hirshfeld_ratios: [N] dimensionless (Hirshfeld volume ratios v_eff/v_free, > 0).
            atomic_numbers: [N] long, 1..102.
            distances_lr: [E'] Å, long-range pair distances (both directions).
            idx_i_lr, idx_j_lr: [E'] long.
            cutoff_lr, damping: optional overrides (Å) of the constructor values; giving
                ``cutoff_lr`` here turns switching on (damping must then be known).
        Returns:
            [N] eV (dtype of ``distances_lr``).
        """
        dtype = distances_lr.dtype
        n = atomic_numbers.shape[0]
        h = hirshfeld_ratios.to(dtype)
        coeffs = self.pair_coefficients(h, atomic_numbers, idx_i_lr, idx_j_lr)
        alpha_ij = coeffs[0]
        c6 = coeffs[1]

        # gamma from the cubic fit of the QDO parameters
        r_vdw = (self.fine_structure ** (-4.0 / 21.0)) * torch.pow(alpha_ij, 1.0 / 7.0)
        s = (-0.00078893 * r_vdw ** 3 + 0.04125273 * r_vdw ** 2 + 0.24428889 * r_vdw - 0.00433008)
        gamma = 0.5 / (s * s)

        c8 = 5.0 / gamma * c6
        c10 = 245.0 / 8.0 / gamma ** 2 * c6
        rho = self.scale * 2.0 * 2.54 * torch.pow(alpha_ij, 1.0 / 7.0)
        R = distances_lr / self.bohr
        R2 = R * R
        R6 = R2 * R2 * R2
        R8 = R6 * R2
        R10 = R8 * R2
        rho2 = rho * rho
        rho6 = rho2 * rho2 * rho2
        rho8 = rho6 * rho2
        rho10 = rho8 * rho2
        v = -c6 / (R6 + rho6) - c8 / (R8 + rho8) - c10 / (R10 + rho10)
        e = 0.5 * v * self.hartree

        use_cut = self.use_cutoff
        rc = self.cutoff_lr
        dmp = self.damping
        if cutoff_lr is not None:
            use_cut = True
            rc = cutoff_lr
        if damping is not None:
            dmp = damping
        if use_cut:
            if dmp <= 0.0:
                raise ValueError("DispersionEnergy: a cutoff needs a positive damping width (Å)")
            w = smooth_switch(distances_lr, rc - dmp, rc)
            w = torch.where(distances_lr > 0, w, torch.zeros_like(w))
            e = e * w
        return _segment_sum(e, idx_i_lr, n)

    @torch.jit.unused
    def load_flax_params(self, p: Dict) -> None:
        """No learnable parameters (SO3LR's params.pkl has no ``dispersion_energy`` entry; the
        Hirshfeld head lives in ``params['params']['observables_2']`` and is loaded by the readout).
        Accepts any dict (e.g. ``{}``) and does nothing. ``scale`` comes from hyperparameters
        (``model.dispersion_energy_scale``)."""
        return None
