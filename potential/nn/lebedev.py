"""Lebedev quadrature grids on the unit sphere for Euclidean fast attention (EFA).

A Lebedev grid of (algebraic) degree ``D`` is a set of ``M`` directions ``u_m`` (unit vectors)
with weights ``w_m`` (here normalised to ``sum_m w_m = 1``) such that

    sum_m w_m p(u_m) == (1/4π) ∫_{S²} p(u) dΩ         for every polynomial p of degree <= D.

The grids have octahedral symmetry (including inversion), so every odd polynomial is integrated
exactly (to zero) at any degree; the first non-trivial failure is at degree ``D + 1``.

How the grids are made
----------------------
The points and weights are computed here (no tabulated data is shipped): the Lebedev–Laikov
construction is evaluated by ``scipy.integrate.lebedev_rule`` (SciPy >= 1.15, a dependency of
this module at *model construction* time only — the grid is stored in the module as a buffer, so
TorchScript files exported from a model do not need SciPy). ``tests/test_efa.py`` checks every
grid against the exact sphere integrals of all monomials ``x^a y^b z^c`` with ``a+b+c <= D``.

Frequency limit (EFA)
---------------------
EFA rotates query/key channel pairs by ``ω · (u_m · r)``; the attention kernel between two atoms
at distance ``r`` is then the quadrature of ``exp(i ω u·r_ij)`` whose exact sphere average is
``sin(ω r)/(ω r)``. Expanding ``exp(i ω u·r) = Σ_l (2l+1) i^l j_l(ω r) P_l(u·r̂)``, a degree-D
grid integrates every term with ``l <= D`` exactly; the error is governed by the spherical Bessel
functions ``j_l(ω r)`` with ``l > D``, which are negligible when ``ω r`` is well below ``D``.
The reference implementation (Frank et al., arXiv 2412.08541, Tab. S3, code ``rope.py``) fixes a
dimensionless frequency limit ``b_max`` per grid, see :data:`LEBEDEV_MAX_FREQUENCY`, and the EFA
angular frequencies are ``ω_f = linspace(0, max_frequency, n) / max_length`` (1/Å). A grid with
limit ``b_max`` gives a rotation-invariant kernel (to the accuracy in
:func:`kernel_quadrature_error`) for all channels ``ω_f <= b_max / max_length`` and all pair
distances ``r <= max_length`` (Å), i.e. as long as ``ω r <= b_max``.
"""
from __future__ import annotations

import functools
import math
from typing import Dict, Tuple

import numpy as np

# Number of points -> algebraic degree of the Lebedev–Laikov grid.
LEBEDEV_DEGREE: Dict[int, int] = {
    6: 3, 14: 5, 26: 7, 38: 9, 50: 11, 74: 13, 86: 15, 110: 17, 146: 19, 170: 21, 194: 23,
    230: 25, 266: 27, 302: 29, 350: 31, 434: 35, 590: 41, 770: 47, 974: 53,
}

# Number of points -> maximal dimensionless frequency b_max = ω_max · max_length that the
# reference EFA code (``LEBEDEV_FREQUENCY_LOOKUP`` in rope.py / Tab. S3 of the paper) allows.
LEBEDEV_MAX_FREQUENCY: Dict[int, float] = {
    50: math.pi, 86: 2.0 * math.pi, 110: 2.5 * math.pi, 146: 3.0 * math.pi, 194: 4.0 * math.pi,
    230: 4.5 * math.pi, 266: 5.0 * math.pi, 302: 5.5 * math.pi, 350: 6.5 * math.pi,
    434: 7.5 * math.pi, 590: 9.0 * math.pi, 770: 11.0 * math.pi, 974: 12.5 * math.pi,
}

SUPPORTED_GRIDS = tuple(sorted(LEBEDEV_DEGREE))


def lebedev_degree(num_points: int) -> int:
    """Maximal polynomial degree integrated exactly by the ``num_points`` grid."""
    _check_num_points(num_points)
    return LEBEDEV_DEGREE[num_points]


def max_frequency(num_points: int) -> float:
    """Dimensionless frequency limit ``b_max`` (= ω_max · max_length) of the reference code."""
    if num_points not in LEBEDEV_MAX_FREQUENCY:
        raise ValueError(
            f"no EFA frequency limit is defined for a {num_points}-point Lebedev grid; "
            f"use one of {sorted(LEBEDEV_MAX_FREQUENCY)}")
    return LEBEDEV_MAX_FREQUENCY[num_points]


def max_angular_frequency(num_points: int, max_length: float) -> float:
    """Largest EFA angular frequency (1/Å) the grid supports for pair distances <= max_length (Å)."""
    return max_frequency(num_points) / float(max_length)


def grid_for_frequency(b: float) -> int:
    """Smallest grid (number of points) whose frequency limit ``b_max`` is >= ``b``."""
    for n in sorted(LEBEDEV_MAX_FREQUENCY):
        if LEBEDEV_MAX_FREQUENCY[n] >= b * (1.0 - 1e-12):
            return n
    raise ValueError(f"max_frequency {b:.4g} exceeds the largest supported grid "
                     f"(b_max = {max(LEBEDEV_MAX_FREQUENCY.values()):.4g}); lower it or raise max_length")


def _check_num_points(num_points: int) -> None:
    if num_points not in LEBEDEV_DEGREE:
        raise ValueError(f"unsupported Lebedev grid size {num_points}; use one of {list(SUPPORTED_GRIDS)}")


@functools.lru_cache(maxsize=None)
def _grid_cached(num_points: int) -> Tuple[np.ndarray, np.ndarray]:
    _check_num_points(num_points)
    try:
        from scipy.integrate import lebedev_rule  # SciPy >= 1.15
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Lebedev grids for EFA need SciPy >= 1.15 (scipy.integrate.lebedev_rule) when a model is "
            "built; install it with `pip install 'scipy>=1.15'`. Exported TorchScript files do not "
            "need SciPy.") from err
    x, w = lebedev_rule(LEBEDEV_DEGREE[num_points])
    u = np.ascontiguousarray(np.asarray(x, dtype=np.float64).T)
    w = np.asarray(w, dtype=np.float64)
    if u.shape != (num_points, 3):
        raise RuntimeError(f"lebedev_rule returned {u.shape[0]} points for the {num_points}-point grid")
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    w = w / w.sum()
    u.setflags(write=False)
    w.setflags(write=False)
    return u, w


def lebedev_grid(num_points: int) -> Tuple[np.ndarray, np.ndarray]:
    """Lebedev grid with ``num_points`` points.

    Returns ``(u, w)``: ``u`` float64 ``[M, 3]`` unit vectors, ``w`` float64 ``[M]`` weights with
    ``w.sum() == 1`` (so ``Σ w_m f(u_m)`` approximates the sphere *average* of f).
    """
    u, w = _grid_cached(int(num_points))
    return u.copy(), w.copy()


def sphere_monomial_average(a: int, b: int, c: int) -> float:
    """Exact average of ``x^a y^b z^c`` over the unit sphere (zero if any exponent is odd)."""
    if a % 2 or b % 2 or c % 2:
        return 0.0
    al, be, ga = (a + 1) / 2.0, (b + 1) / 2.0, (c + 1) / 2.0
    log = (math.lgamma(al) + math.lgamma(be) + math.lgamma(ga) - math.lgamma(al + be + ga))
    return 2.0 * math.exp(log) / (4.0 * math.pi)


def monomial_quadrature_error(num_points: int, degree: int) -> float:
    """Largest |quadrature − exact| over all monomials of total degree <= ``degree``."""
    u, w = lebedev_grid(num_points)
    err = 0.0
    for a in range(degree + 1):
        for b in range(degree + 1 - a):
            for c in range(degree + 1 - a - b):
                q = float(np.sum(w * u[:, 0] ** a * u[:, 1] ** b * u[:, 2] ** c))
                err = max(err, abs(q - sphere_monomial_average(a, b, c)))
    return err


def kernel_quadrature_error(num_points: int, b: float, num_samples: int = 2000, seed: int = 0) -> float:
    """Largest error of the quadrature of the EFA kernel ``cos(ω u·r)`` against ``sin(ωr)/(ωr)``.

    Sampled over random directions r̂ and over ``ω r`` in ``[0, b]`` (``b`` dimensionless, e.g.
    ``max_frequency(num_points)``). Used to state the rotational accuracy of a grid.
    """
    u, w = lebedev_grid(num_points)
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(num_samples, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    x = np.linspace(0.0, b, num_samples)[:, None]
    quad = np.cos(x * (d @ u.T)) @ w
    exact = np.sinc(x[:, 0] / np.pi)
    return float(np.max(np.abs(quad - exact)))
