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
    "smooth_switch", "smooth_switch_derivative", "cutoff_phys_local", "charge_equilibration",
    "attach_pair_gradients",
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


def smooth_switch_derivative(x: Tensor, x_on: float, x_off: float) -> Tensor:
    """d/dx of :func:`smooth_switch` (1/unit of x); 0 outside (x_on, x_off)."""
    return _switch_and_derivative(x, x_on, x_off)[1]


def _switch_and_derivative(x: Tensor, x_on: float, x_off: float) -> List[Tensor]:
    """[smooth_switch(x), its derivative] with the exponentials computed once."""
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


# Long-range pair lists are processed in chunks of this many directed pairs when the analytic
# derivatives are formed (bounds the temporary memory, ~40 arrays of this length).
PAIR_CHUNK: int = 262144


def attach_pair_gradients(energies: Tensor, distances: Tensor, de_dr: Tensor, values: Tensor,
                          de_dv_centre: Tensor, de_dv_neighbour: Tensor, idx_i: Tensor, idx_j: Tensor) -> Tensor:
    """Per-atom pair energies (no graph) with their exact first derivatives attached for autograd.

    ``energies`` [N] are E_i = sum over pairs e = (i -> j) of E_e(r_e, v_i, v_j), computed without
    a graph; ``de_dr`` [E] = dE_e/dr_e, ``de_dv_centre`` [N] = sum_{e at i} dE_e/dv_i and
    ``de_dv_neighbour`` [E] = dE_e/dv_j (v: per-atom charges or Hirshfeld ratios). Returns
    E_i + (zero-valued first-order terms): the same values, and autograd gives the exact first
    derivatives of every E_i w.r.t. ``distances`` and ``values`` while storing only the two [E]
    coefficient arrays (not the ~40 [E] intermediates of the pair formula). Second derivatives
    through these terms are not those of E (the coefficients are constants): for Hessians or
    force training use the modules in training mode (exact autograd formula).
    """
    dv = values - values.detach()
    t = de_dr * (distances - distances.detach()) + de_dv_neighbour * dv.index_select(0, idx_j)
    return energies + de_dv_centre * dv + torch.zeros_like(energies).index_add(0, idx_i, t)


def _chunks(n: int, size: int) -> List[int]:
    bounds: List[int] = []
    a = 0
    while a < n:
        bounds.append(a)
        a += size
    bounds.append(n)
    return bounds


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
        self.chunk_size: int = PAIR_CHUNK  # pairs per chunk in energies_and_derivatives

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
        q = charges.to(distances_lr.dtype)
        use_cut = self.use_cutoff
        rc = self.cutoff_lr
        if cutoff_lr is not None:
            use_cut = True
            rc = cutoff_lr
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or distances_lr.requires_grad)
        if self.training or not needs_grad:
            e = self.pair_energies(q.index_select(0, idx_i_lr), q.index_select(0, idx_j_lr), distances_lr,
                                   use_cut, rc)
            return _segment_sum(e, idx_i_lr, q.shape[0])
        # inference with gradients: exact values and first derivatives, O(E) scalars stored
        d = self.energies_and_derivatives(q, distances_lr, idx_i_lr, idx_j_lr, use_cut, rc)
        return attach_pair_gradients(d[0], distances_lr, d[1], q, d[2], d[3], idx_i_lr, idx_j_lr)

    def pair_energies(self, q_i: Tensor, q_j: Tensor, r: Tensor, use_cut: bool, rc: float) -> Tensor:
        """E_ij [E] (eV) of directed pairs with charges q_i, q_j (e) at distances r (Å); 0 for r >= rc."""
        sigma = self.scale
        qq = q_i * q_j
        pot = torch.erf(r / sigma) / r
        if use_cut:
            rc_t = torch.full_like(r, rc)
            shift = torch.erf(rc_t / sigma) / rc_t
            force_shift = (2.0 * rc_t * torch.exp(-(rc_t / sigma) ** 2) / (math.sqrt(math.pi) * sigma)
                           - torch.erf(rc_t / sigma)) / rc_t ** 2
            f = smooth_switch(r, self.cuton_factor * rc, rc)
            shifted = pot - shift
            shifted_force = shifted - force_shift * (r - rc)
            pair = f * shifted + (1.0 - f) * shifted_force
            return torch.where(r < rc, 0.5 * self.ke * qq * pair, torch.zeros_like(r))
        return 0.5 * self.ke * qq * pot

    def energies_and_derivatives(self, charges: Tensor, distances_lr: Tensor, idx_i_lr: Tensor,
                                 idx_j_lr: Tensor, use_cut: bool, rc: float, half: bool = False) -> List[Tensor]:
        """Without a graph, in chunks of ``chunk_size`` pairs: [E_i [N] eV, dE/dr_e [E] eV/Å,
        sum_{e at i} dE/dq_i [N] eV/e, dE/dq_j [E] eV/e] (E_e: energy of directed pair e = (i -> j),
        credited to atom i). Same values as ``forward``; the derivatives are analytic.
        ``half``: the list holds each unordered pair once (e stands for i -> j and j -> i: its energy
        is credited to both atoms and the derivatives are those of both directions)."""
        with torch.no_grad():
            q = charges.detach().to(distances_lr.dtype)
            r_all = distances_lr.detach()
            n = q.shape[0]
            energies = torch.zeros_like(q)
            g_centre = torch.zeros_like(q)
            de_dr = torch.empty_like(r_all)
            de_dqj = torch.empty_like(r_all)
            sigma = self.scale
            b = _chunks(r_all.shape[0], self.chunk_size)
            for k in range(len(b) - 1):
                ii = idx_i_lr[b[k]:b[k + 1]]
                jj = idx_j_lr[b[k]:b[k + 1]]
                r = r_all[b[k]:b[k + 1]]
                qi = q.index_select(0, ii)
                qj = q.index_select(0, jj)
                pot = torch.erf(r / sigma) / r
                dpot = (2.0 / (math.sqrt(math.pi) * sigma)) * torch.exp(-(r / sigma) ** 2) / r - pot / r
                if use_cut:
                    shift = math.erf(rc / sigma) / rc
                    force_shift = (2.0 * rc * math.exp(-(rc / sigma) ** 2) / (math.sqrt(math.pi) * sigma)
                                   - math.erf(rc / sigma)) / rc ** 2
                    sw = _switch_and_derivative(r, self.cuton_factor * rc, rc)
                    f = sw[0]
                    inside = r < rc
                    shifted = pot - shift
                    pair = f * shifted + (1.0 - f) * (shifted - force_shift * (r - rc))  # as pair_energies
                    pair = torch.where(inside, pair, torch.zeros_like(r))
                    dpair = torch.where(inside, dpot + sw[1] * force_shift * (r - rc) - (1.0 - f) * force_shift,
                                        torch.zeros_like(r))
                else:
                    pair = pot
                    dpair = dpot
                e = 0.5 * self.ke * (qi * qj) * pair
                pref = self.ke if half else 0.5 * self.ke
                energies.index_add_(0, ii, e)
                if half:
                    energies.index_add_(0, jj, e)
                de_dr[b[k]:b[k + 1]] = pref * qi * qj * dpair
                g_centre.index_add_(0, ii, pref * qj * pair)
                de_dqj[b[k]:b[k + 1]] = pref * qi * pair
        return [energies, de_dr, g_centre, de_dqj]

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
        self.chunk_size: int = PAIR_CHUNK  # pairs per chunk in energies_and_derivatives
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
        h = hirshfeld_ratios.to(distances_lr.dtype)
        use_cut = self.use_cutoff
        rc = self.cutoff_lr
        dmp = self.damping
        if cutoff_lr is not None:
            use_cut = True
            rc = cutoff_lr
        if damping is not None:
            dmp = damping
        if use_cut and dmp <= 0.0:
            raise ValueError("DispersionEnergy: a cutoff needs a positive damping width (Å)")
        needs_grad = torch.is_grad_enabled() and (h.requires_grad or distances_lr.requires_grad)
        if self.training or not needs_grad:
            e = self.pair_energies(h.index_select(0, idx_i_lr), h.index_select(0, idx_j_lr),
                                   atomic_numbers.index_select(0, idx_i_lr), atomic_numbers.index_select(0, idx_j_lr),
                                   distances_lr, use_cut, rc, dmp)
            return _segment_sum(e, idx_i_lr, atomic_numbers.shape[0])
        # inference with gradients: exact values and first derivatives, O(E) scalars stored
        d = self.energies_and_derivatives(h, atomic_numbers, distances_lr, idx_i_lr, idx_j_lr, use_cut, rc, dmp)
        return attach_pair_gradients(d[0], distances_lr, d[1], h, d[2], d[3], idx_i_lr, idx_j_lr)

    def _qdo(self, h_i: Tensor, h_j: Tensor, z_i: Tensor, z_j: Tensor) -> List[Tensor]:
        """Pair quantities [alpha_ij, C6_ij, C8_ij, C10_ij, rho_ij, s] (atomic units; s: the cubic fit)."""
        dtype = h_i.dtype
        alpha0 = self.alpha0.to(dtype)
        c60 = self.c6_0.to(dtype)
        a_i = alpha0[z_i] * h_i
        a_j = alpha0[z_j] * h_j
        c_i = c60[z_i] * h_i * h_i
        c_j = c60[z_j] * h_j * h_j
        alpha_ij = (a_i + a_j) / 2.0
        c6 = 2.0 * c_i * c_j * a_j * a_i / (a_i * a_i * c_j + a_j * a_j * c_i)
        # gamma from the cubic fit of the QDO parameters
        a17 = torch.pow(alpha_ij, 1.0 / 7.0)
        r_vdw = (self.fine_structure ** (-4.0 / 21.0)) * a17
        s = (-0.00078893 * r_vdw ** 3 + 0.04125273 * r_vdw ** 2 + 0.24428889 * r_vdw - 0.00433008)
        gamma = 0.5 / (s * s)
        c8 = 5.0 / gamma * c6
        c10 = 245.0 / 8.0 / gamma ** 2 * c6
        rho = self.scale * 2.0 * 2.54 * a17
        return [alpha_ij, c6, c8, c10, rho, s, r_vdw]

    def pair_energies(self, h_i: Tensor, h_j: Tensor, z_i: Tensor, z_j: Tensor, r: Tensor, use_cut: bool,
                      rc: float, dmp: float) -> Tensor:
        """E_ij [E] (eV) of directed pairs with Hirshfeld ratios h_i, h_j, atomic numbers z_i, z_j at
        distances r (Å)."""
        co = self._qdo(h_i, h_j, z_i, z_j)
        c6 = co[1]
        c8 = co[2]
        c10 = co[3]
        rho = co[4]
        R = r / self.bohr
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
        if use_cut:
            w = smooth_switch(r, rc - dmp, rc)
            w = torch.where(r > 0, w, torch.zeros_like(w))
            e = e * w
        return e

    def energies_and_derivatives(self, hirshfeld_ratios: Tensor, atomic_numbers: Tensor, distances_lr: Tensor,
                                 idx_i_lr: Tensor, idx_j_lr: Tensor, use_cut: bool, rc: float,
                                 dmp: float, half: bool = False) -> List[Tensor]:
        """Without a graph, in chunks of ``chunk_size`` pairs: [E_i [N] eV, dE_e/dr_e [E] eV/Å,
        sum_{e at i} dE_e/dh_i [N] eV, dE_e/dh_j [E] eV] (E_e: energy of directed pair e = (i -> j),
        credited to atom i; h: Hirshfeld ratios). Same values as ``forward``; analytic derivatives
        (C6_ij is bilinear in h_i h_j; C8, C10, rho depend on alpha_ij = (alpha_i + alpha_j) / 2).
        ``half``: each unordered pair once, as in ``ElectrostaticEnergy.energies_and_derivatives``."""
        with torch.no_grad():
            h = hirshfeld_ratios.detach().to(distances_lr.dtype)
            r_all = distances_lr.detach()
            dtype = h.dtype
            alpha0 = self.alpha0.to(dtype)
            c60 = self.c6_0.to(dtype)
            energies = torch.zeros_like(h)
            g_centre = torch.zeros_like(h)
            de_dr = torch.empty_like(r_all)
            de_dhj = torch.empty_like(r_all)
            b = _chunks(r_all.shape[0], self.chunk_size)
            for k in range(len(b) - 1):
                ii = idx_i_lr[b[k]:b[k + 1]]
                jj = idx_j_lr[b[k]:b[k + 1]]
                r = r_all[b[k]:b[k + 1]]
                hi = h.index_select(0, ii)
                hj = h.index_select(0, jj)
                zi = atomic_numbers.index_select(0, ii)
                zj = atomic_numbers.index_select(0, jj)
                co = self._qdo(hi, hj, zi, zj)
                alpha = co[0]
                c6 = co[1]
                c8 = co[2]
                c10 = co[3]
                rho = co[4]
                sfit = co[5]
                R = r / self.bohr
                R2 = R * R
                R6 = R2 * R2 * R2
                R8 = R6 * R2
                R10 = R8 * R2
                rho2 = rho * rho
                rho6 = rho2 * rho2 * rho2
                rho8 = rho6 * rho2
                rho10 = rho8 * rho2
                d6 = R6 + rho6
                d8 = R8 + rho8
                d10 = R10 + rho10
                v = -c6 / d6 - c8 / d8 - c10 / d10  # as pair_energies
                i6 = 1.0 / d6
                i8 = 1.0 / d8
                i10 = 1.0 / d10
                R5 = R2 * R2 * R
                R7 = R5 * R2
                R9 = R7 * R2
                rho5 = rho2 * rho2 * rho
                rho7 = rho5 * rho2
                rho9 = rho7 * rho2
                dv_dR = (6.0 * c6 * R5 * i6 * i6 + 8.0 * c8 * R7 * i8 * i8 + 10.0 * c10 * R9 * i10 * i10)
                dv_drho = (6.0 * c6 * rho5 * i6 * i6 + 8.0 * c8 * rho7 * i8 * i8 + 10.0 * c10 * rho9 * i10 * i10)
                # C8 = 10 C6 s^2, C10 = 122.5 C6 s^4 (s: cubic fit of alpha^(1/7)); rho ~ alpha^(1/7)
                dv_dc6 = -(i6 + 10.0 * sfit * sfit * i8 + 122.5 * sfit ** 4 * i10)
                rv = co[6]
                ds_dalpha = (-3.0 * 0.00078893 * rv * rv + 2.0 * 0.04125273 * rv + 0.24428889) * rv / (7.0 * alpha)
                dv_dalpha = -(20.0 * c6 * sfit * i8 + 490.0 * c6 * sfit ** 3 * i10) * ds_dalpha \
                    + dv_drho * rho / (7.0 * alpha)
                # C6_ij = K_ij h_i h_j
                a0i = alpha0[zi]
                a0j = alpha0[zj]
                c0i = c60[zi]
                c0j = c60[zj]
                k6 = 2.0 * c0i * c0j * a0i * a0j / (a0i * a0i * c0j + a0j * a0j * c0i)
                dv_dhi = dv_dc6 * k6 * hj + dv_dalpha * 0.5 * a0i
                dv_dhj = dv_dc6 * k6 * hi + dv_dalpha * 0.5 * a0j
                pref = self.hartree if half else 0.5 * self.hartree
                e = 0.5 * v * self.hartree
                if use_cut:
                    sw = _switch_and_derivative(r, rc - dmp, rc)
                    w = sw[0]
                    dw = sw[1]
                    pos = r > 0
                    w = torch.where(pos, w, torch.zeros_like(w))
                    dw = torch.where(pos, dw, torch.zeros_like(dw))
                    e = e * w
                    dedr = pref * (dw * v + w * dv_dR / self.bohr)
                else:
                    w = torch.ones_like(r)
                    dedr = pref * dv_dR / self.bohr
                energies.index_add_(0, ii, e)
                if half:
                    energies.index_add_(0, jj, e)
                de_dr[b[k]:b[k + 1]] = dedr
                g_centre.index_add_(0, ii, pref * w * dv_dhi)
                de_dhj[b[k]:b[k + 1]] = pref * w * dv_dhj
        return [energies, de_dr, g_centre, de_dhj]

    @torch.jit.unused
    def load_flax_params(self, p: Dict) -> None:
        """No learnable parameters (SO3LR's params.pkl has no ``dispersion_energy`` entry; the
        Hirshfeld head lives in ``params['params']['observables_2']`` and is loaded by the readout).
        Accepts any dict (e.g. ``{}``) and does nothing. ``scale`` comes from hyperparameters
        (``model.dispersion_energy_scale``)."""
        return None
