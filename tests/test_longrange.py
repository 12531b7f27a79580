"""Tests of the SO3LR physical terms (so3krates.potential.physics: pair energies of unordered pairs).

Independent straight numpy re-computations over unordered pairs (pairs by brute force), closed
forms (Coulomb limit, ZBL universal screening function), per-atom values produced by the
original JAX code (mlff v1.0-lrs-gems) for a fixed 6-atom system, TorchScript, float32 vs
float64, gradients.
"""
import copy
import math
import pathlib
import pickle

import numpy as np
import pytest
import torch

from so3krates.potential.convert import _load_zbl
from so3krates.potential.nn.readout import PartialChargesHead
from so3krates.potential.physics import units
from so3krates.potential.physics.dispersion import DispersionEnergy
from so3krates.potential.physics.electrostatics import ElectrostaticEnergy
from so3krates.potential.physics.switch import smooth_switch, switch_and_derivative
from so3krates.potential.physics.zbl import ZBL_PARAMETERS, ZBLRepulsion
from so3krates.potential.physics.dispersion_data import FREE_ATOM_ALPHA, FREE_ATOM_C6, FREE_ATOM_TABLE, MAX_Z

torch.set_num_threads(1)

PARAMS_PKL = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" / "so3lr" / "params.pkl"
KE = 14.399645351950548
BOHR = 0.5291772105638411
HARTREE = 27.211386024367243
ALPHA_FS = 0.007297352566206496


# ----------------------------------------------------------------------------- fixtures
def random_system(seed=0, n=14, box=14.0, n_close=4, species=(1, 6, 7, 8, 9, 15, 16, 17, 35, 53, 3, 11, 12)):
    rng = np.random.default_rng(seed)
    Z = rng.choice(np.array(species), n)
    pos = rng.uniform(0.0, box, (n, 3))
    for k in range(0, 2 * n_close, 2):  # a few short contacts for ZBL
        v = rng.normal(size=3)
        pos[k + 1] = pos[k] + v / np.linalg.norm(v) * rng.uniform(0.4, 1.7)
    q = rng.normal(0.0, 0.4, n)
    h = rng.uniform(0.5, 1.3, n)
    return Z, pos, q, h


def pairs(pos, cutoff):
    """Each unordered pair once (i < j), brute force."""
    n = len(pos)
    ii, jj = [], []
    for i in range(n):
        for j in range(i + 1, n):
            if np.linalg.norm(pos[j] - pos[i]) < cutoff:
                ii.append(i)
                jj.append(j)
    return np.array(ii, dtype=np.int64), np.array(jj, dtype=np.int64)


def per_atom(e_pair, ii, jj, n):
    """Half of every pair energy to each of its atoms (the model's convention), [n]."""
    h = 0.5 * e_pair
    return torch.zeros(n, dtype=e_pair.dtype).index_add(0, t(ii), h).index_add(0, t(jj), h)


def zbl_atoms(m, Z, pos, cutoff=4.5):
    """Per-atom ZBL energies with the PhysNet cutoff function (SO3LR's) on the local pairs."""
    ii, jj = pairs(pos, cutoff)
    d = t(dist(pos, ii, jj))
    cut = t([np_phys(r, cutoff) for r in d.numpy()])
    Zt = t(Z)
    return per_atom(m.pair_energy(Zt[t(ii)], Zt[t(jj)], d, cut), ii, jj, len(Z))


def elec_atoms(m, q, pos, cutoff=1e9):
    ii, jj = pairs(pos, cutoff)
    q = t(q)
    return per_atom(m.pair_energy(q[t(ii)], q[t(jj)], t(dist(pos, ii, jj))), ii, jj, len(q))


def disp_atoms(m, h, Z, pos, cutoff=1e9):
    ii, jj = pairs(pos, cutoff)
    h, Z = t(h), t(Z)
    return per_atom(m.pair_energy(h[t(ii)], h[t(jj)], Z[t(ii)], Z[t(jj)], t(dist(pos, ii, jj))), ii, jj, len(Z))


def dist(pos, ii, jj):
    return np.linalg.norm(pos[jj] - pos[ii], axis=-1)


def t(a, dtype=torch.float64):
    a = np.asarray(a)
    if a.dtype.kind in "iu":
        return torch.as_tensor(a, dtype=torch.long)
    return torch.as_tensor(a, dtype=dtype)


def softplus(x):
    return math.log1p(math.exp(x))


# ----------------------------------------------------------------------------- numpy references
def np_switch(x, on, off):
    c = (x - on) / (off - on)
    s = lambda u: math.exp(-1.0 / u) if u > 0 else 0.0
    return s(1 - c) / (s(1 - c) + s(c))


def np_phys(r, rc):
    if r >= rc:
        return 0.0
    x = r / rc
    return 1 - 6 * x ** 5 + 15 * x ** 4 - 10 * x ** 3


def np_zbl(Z, pos, rc_local, coef):
    a = [coef["a1"], coef["a2"], coef["a3"], coef["a4"]]
    c = np.array([coef["c1"], coef["c2"], coef["c3"], coef["c4"]])
    c = c / c.sum()
    e = np.zeros(len(Z))
    for i in range(len(Z)):
        for j in range(i + 1, len(Z)):
            r = np.linalg.norm(pos[i] - pos[j])
            if r >= rc_local:
                continue
            x = r * (Z[i] ** coef["p"] + Z[j] ** coef["p"]) * coef["d"]
            phi = sum(ck * math.exp(-ak * x) for ak, ck in zip(a, c))
            pair = np_switch(r, 0.0, 1.5) * np_phys(r, rc_local) * KE * Z[i] * Z[j] / r * phi
            e[i] += pair / 2
            e[j] += pair / 2
    return e


def np_coulomb(q, pos, sigma, rc=None, pair_cut=None):
    n = len(q)
    e = np.zeros(n)
    for i in range(n):
        for j in range(i + 1, n):
            r = np.linalg.norm(pos[i] - pos[j])
            if pair_cut is not None and r >= pair_cut:
                continue
            V = lambda s: math.erf(s / sigma) / s
            if rc is None:
                pair = KE * q[i] * q[j] * V(r)
            elif r >= rc:
                pair = 0.0
            else:
                dV = (2 * rc * math.exp(-(rc / sigma) ** 2) / (math.sqrt(math.pi) * sigma) - math.erf(rc / sigma)) / rc ** 2
                f = np_switch(r, 0.45 * rc, rc)
                pair = KE * q[i] * q[j] * (f * (V(r) - V(rc)) + (1 - f) * (V(r) - V(rc) - dV * (r - rc)))
            e[i] += pair / 2
            e[j] += pair / 2
    return e


def np_disp(Z, h, pos, scale, rc=None, damping=None, pair_cut=None):
    n = len(Z)
    e = np.zeros(n)
    for i in range(n):
        for j in range(i + 1, n):
            r = np.linalg.norm(pos[i] - pos[j])
            if pair_cut is not None and r >= pair_cut:
                continue
            ai, aj = FREE_ATOM_ALPHA[Z[i]] * h[i], FREE_ATOM_ALPHA[Z[j]] * h[j]
            ci, cj = FREE_ATOM_C6[Z[i]] * h[i] ** 2, FREE_ATOM_C6[Z[j]] * h[j] ** 2
            a = 0.5 * (ai + aj)
            c6 = 2 * ci * cj * ai * aj / (ai ** 2 * cj + aj ** 2 * ci)
            rv = ALPHA_FS ** (-4 / 21) * a ** (1 / 7)
            sig = -0.00078893 * rv ** 3 + 0.04125273 * rv ** 2 + 0.24428889 * rv - 0.00433008
            g = 1 / (2 * sig ** 2)
            c8, c10 = 5 * c6 / g, 245 / 8 * c6 / g ** 2
            rho = scale * 2 * 2.54 * a ** (1 / 7)
            R = r / BOHR
            v = -c6 / (R ** 6 + rho ** 6) - c8 / (R ** 8 + rho ** 8) - c10 / (R ** 10 + rho ** 10)
            w = 1.0 if rc is None else np_switch(r, rc - damping, rc)
            pair = v * HARTREE * w
            e[i] += pair / 2
            e[j] += pair / 2
    return e


def default_zbl_coef():
    m = ZBLRepulsion()
    return {k: softplus(getattr(m, k).item()) for k in ["a1", "a2", "a3", "a4", "c1", "c2", "c3", "c4", "p", "d"]}


# ----------------------------------------------------------------------------- data / constants
def test_constants_equal_ase_units():
    import ase.units as u
    assert units.BOHR == u.Bohr and units.HARTREE == u.Hartree and units.FINE_STRUCTURE == u.alpha
    assert units.KE == pytest.approx(u.Hartree * u.Bohr, rel=1e-15)


def test_free_atom_table_vs_ase():
    from ase.calculators.vdwcorrection import vdWDB_alphaC6
    from ase.data import chemical_symbols
    assert MAX_Z == 102 and len(FREE_ATOM_ALPHA) == len(FREE_ATOM_C6) == 103
    assert [row[0] for row in FREE_ATOM_TABLE] == list(range(1, 103))
    for z, sym, _, _ in FREE_ATOM_TABLE:
        assert chemical_symbols[z] == sym
    for sym in ["H", "C", "N", "O", "S", "P", "F", "Cl", "Br", "I", "B", "Si"]:
        z = chemical_symbols.index(sym)
        assert (FREE_ATOM_ALPHA[z], FREE_ATOM_C6[z]) == tuple(float(v) for v in vdWDB_alphaC6[sym]), sym


# ----------------------------------------------------------------------------- JAX reference values
# Per-atom energies (eV) computed by the original mlff v1.0-lrs-gems functions (float64) for the
# system below: ZBL with its initial coefficients (raw values rounded to float32 as flax stores
# them), cut = PhysNet(4.5 Å); sigma = 4.0 Å, scale_disp = 1.2, r_c = 12 Å, damping 2 Å.
FIX_Z = np.array([8, 1, 1, 6, 7, 17])
FIX_POS = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0],
                    [11.0, 0.0, 0.0], [11.0, 1.2, 0.0], [0.0, 0.0, 12.5]])
FIX_Q = np.array([-0.8, 0.4, 0.4, 0.3, -0.5, 0.2])
FIX_H = np.array([0.9, 0.6, 0.62, 0.85, 0.95, 1.05])
FIX_REF = {
    "zbl": [1.15501980564795, 0.5786868817392066, 0.5763329239087435, 0.09056557138784942,
            0.09056557138784942, 0.0],
    "elec_cut": [-0.8908511810016053, -0.2334752224569147, -0.23187782980459173, -0.2028806703968679,
                 -0.21020976373525121, 0.0],
    "disp_cut": [-0.0011735197193392393, -0.0009289343896145691, -0.0009382357143233397,
                 -0.001490100334752342, -0.001488889734412259, 0.0],
    "elec_nocut": [-1.264301345025967, -0.3380474665746692, -0.3331622170839732, -0.2642639957463217,
                   -0.3490652282372956, -0.017454820831854304],
    "disp_nocut": [-0.001179749480567663, -0.0009301620365002577, -0.000941381945512803,
                   -0.0014937449019133539, -0.0014919510969207315, -6.920739774756866e-06],
}


def test_matches_reference_jax_values():
    got = {
        "zbl": zbl_atoms(ZBLRepulsion().double(), FIX_Z, FIX_POS),
        "elec_cut": elec_atoms(ElectrostaticEnergy(4.0, 12.0), FIX_Q, FIX_POS),
        "elec_nocut": elec_atoms(ElectrostaticEnergy(4.0), FIX_Q, FIX_POS),
        "disp_cut": disp_atoms(DispersionEnergy(1.2, 12.0, 2.0), FIX_H, FIX_Z, FIX_POS),
        "disp_nocut": disp_atoms(DispersionEnergy(1.2), FIX_H, FIX_Z, FIX_POS),
    }
    for k, ref in FIX_REF.items():
        np.testing.assert_allclose(got[k].detach().numpy(), ref, rtol=1e-12, atol=1e-14, err_msg=k)


# ----------------------------------------------------------------------------- ZBL
@pytest.mark.parametrize("perturb", [False, True])
def test_zbl_vs_numpy(perturb):
    Z, pos, _, _ = random_system(1)
    m = ZBLRepulsion().double()
    if perturb:
        with torch.no_grad():
            for n, (_, p) in enumerate(m.named_parameters()):
                p.add_(0.1 * (n % 7 - 3))
    coef = {k: softplus(getattr(m, k).item()) for k in ZBL_PARAMETERS}
    ii, jj = pairs(pos, 4.5)
    assert (dist(pos, ii, jj) < 1.5).sum() >= 2
    got = zbl_atoms(m, Z, pos)
    np.testing.assert_allclose(got.detach().numpy(), np_zbl(Z, pos, 4.5, coef), rtol=1e-12, atol=1e-13)


def test_zbl_analytic_universal_form():
    """Initial coefficients = ZBL universal screening: a = 0.8854 a0 / (Z1^0.23 + Z2^0.23)."""
    m = ZBLRepulsion().double()
    co = m.coefficients()
    for k, v in dict(a1=3.2, a2=0.9423, a3=0.4028, a4=0.2016, p=0.23, d=1 / (0.8854 * BOHR)).items():
        assert co[k].item() == pytest.approx(v, rel=1e-6)
    csum = 0.1818 + 0.5099 + 0.2802 + 0.02817
    for z1, z2, r in [(1, 1, 0.3), (6, 8, 0.7), (8, 17, 1.1), (7, 35, 1.45), (1, 6, 1.6), (6, 6, 3.0)]:
        a = 0.8854 * BOHR / (z1 ** 0.23 + z2 ** 0.23)
        x = r / a
        phi = (0.1818 * math.exp(-3.2 * x) + 0.5099 * math.exp(-0.9423 * x) + 0.2802 * math.exp(-0.4028 * x)
               + 0.02817 * math.exp(-0.2016 * x)) / csum
        expected = KE * z1 * z2 / r * phi * np_switch(r, 0.0, 1.5) * np_phys(r, 4.5)
        e = m.pair_energy(t([z1]), t([z2]), t([r]), t([np_phys(r, 4.5)])).detach()
        assert float(e[0]) == pytest.approx(expected, rel=1e-6, abs=1e-12)
        if r >= 1.5:
            assert float(e[0]) == 0.0


# ----------------------------------------------------------------------------- charges
def test_charge_correction():
    rng = np.random.default_rng(3)
    batch = np.array([1, 0, 0, 2, 1, 1, 0, 2, 2, 2])  # unsorted on purpose
    raw = t(rng.normal(size=len(batch)))
    Q = t(np.array([0.0, -1.0, 2.0, 1.0]))  # graph 3 has no atoms
    b = t(batch)
    sums = torch.zeros(4, dtype=torch.float64).index_add(0, b, raw)
    counts = torch.zeros(4, dtype=torch.float64).index_add(0, b, torch.ones_like(raw))
    got = PartialChargesHead(4, None, "silu").double().correct(raw, b, Q, sums, counts).numpy()
    for g in range(3):
        sel = batch == g
        np.testing.assert_allclose(got[sel].sum(), float(Q[g]), atol=1e-12)
        np.testing.assert_allclose(got[sel] - raw.numpy()[sel], (float(Q[g]) - raw.numpy()[sel].sum()) / sel.sum(),
                                   atol=1e-12)


# ----------------------------------------------------------------------------- electrostatics
@pytest.mark.parametrize("rc", [None, 12.0, 7.0])
def test_electrostatics_vs_numpy(rc):
    Z, pos, q, _ = random_system(2, n=16, box=16.0)
    assert rc is None or (dist(pos, *pairs(pos, 15.0)) > rc).any()  # pairs beyond r_c must give 0
    got = elec_atoms(ElectrostaticEnergy(scale=4.0, cutoff_lr=rc), q, pos, 15.0).numpy()
    np.testing.assert_allclose(got, np_coulomb(q, pos, 4.0, rc, pair_cut=15.0), rtol=1e-11, atol=1e-13)


def test_electrostatics_coulomb_limits():
    q_i, q_j = t([0.7]), t([-0.3])
    # no cutoff: erf(r/sigma)/r -> 1/r far away
    for r in [40.0, 80.0]:
        e = ElectrostaticEnergy(4.0).pair_energy(q_i, q_j, t([r]))
        assert float(e[0]) == pytest.approx(KE * 0.7 * -0.3 / r, rel=1e-13)
    # tiny sigma: bare Coulomb at chemical distances
    e = ElectrostaticEnergy(0.01).pair_energy(q_i, q_j, t([2.0]))
    assert float(e[0]) == pytest.approx(KE * 0.7 * -0.3 / 2.0, rel=1e-13)
    # with cutoff, below r_on = 0.45 r_c: the shifted potential, exactly
    rc, s = 12.0, 4.0
    for r in [1.0, 3.0, 5.0]:
        e = ElectrostaticEnergy(s, rc).pair_energy(q_i, q_j, t([r]))
        assert float(e[0]) == pytest.approx(KE * 0.7 * -0.3 * (math.erf(r / s) / r - math.erf(rc / s) / rc), rel=1e-12)
    # energy and force go to zero continuously at r_c; zero beyond
    r = t([rc - 1e-4]).requires_grad_()
    e = ElectrostaticEnergy(s, rc).pair_energy(q_i, q_j, r).sum()
    (g,) = torch.autograd.grad(e, r)
    assert abs(e.item()) < 1e-8 and g.abs().max().item() < 1e-4
    e = ElectrostaticEnergy(s, rc).pair_energy(t([0.7, 0.7]), t([-0.3, -0.3]), t([rc, 13.0]))
    assert float(e.abs().sum()) == 0.0


# ----------------------------------------------------------------------------- dispersion
@pytest.mark.parametrize("rc", [None, 12.0])
def test_dispersion_vs_numpy(rc):
    Z, pos, _, h = random_system(4, n=16, box=16.0, species=(1, 3, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 19, 20, 35, 53))
    damping = 2.0 if rc is not None else None
    got = disp_atoms(DispersionEnergy(scale=1.2, cutoff_lr=rc, damping=damping), h, Z, pos, 15.0).numpy()
    np.testing.assert_allclose(got, np_disp(Z, h, pos, 1.2, rc, damping, pair_cut=15.0), rtol=1e-11, atol=1e-15)
    assert (got < 0).all()


def test_dispersion_limits_and_mixing():
    m = DispersionEnergy(1.2).double()
    # homonuclear, h = 1: free-atom values come back from the mixing rules
    co = m._qdo(t([1.0]), t([1.0]), t([6]), t([6]))
    assert float(co[0][0]) == FREE_ATOM_ALPHA[6] and float(co[1][0]) == pytest.approx(FREE_ATOM_C6[6], rel=1e-14)
    # far away the C6 term dominates: E -> -C6_ij / R^6 (Hartree)
    h_i, h_j, z_i, z_j = t([0.8]), t([1.1]), t([8]), t([17])
    c6 = float(m._qdo(h_i, h_j, z_i, z_j)[1][0])
    r = 80.0
    assert float(m.pair_energy(h_i, h_j, z_i, z_j, t([r]))[0]) == pytest.approx(-c6 / (r / BOHR) ** 6 * HARTREE, rel=2e-3)
    # switching: untouched below r_c - damping, zero at/after r_c
    mc = DispersionEnergy(1.2, 12.0, 2.0).double()
    for r, same in [(5.0, True), (9.99, True), (12.0, False), (14.0, False)]:
        e0 = float(m.pair_energy(h_i, h_j, z_i, z_j, t([r]))[0])
        e1 = float(mc.pair_energy(h_i, h_j, z_i, z_j, t([r]))[0])
        assert (e1 == pytest.approx(e0, rel=1e-14)) if same else (e1 == 0.0)
    with pytest.raises(ValueError, match="damping"):
        DispersionEnergy(1.2, 12.0, None)


# ----------------------------------------------------------------------------- generic properties
MODULES = [
    ("zbl", lambda: ZBLRepulsion()),
    ("elec", lambda: ElectrostaticEnergy(4.0, 12.0)),
    ("elec_nocut", lambda: ElectrostaticEnergy(4.0)),
    ("disp", lambda: DispersionEnergy(1.2, 12.0, 2.0)),
    ("disp_nocut", lambda: DispersionEnergy(1.2)),
]


def _energy(name, m, Z, pos, vals):
    """Total energy from positions (tensor) and per-atom charges/Hirshfeld ratios (tensor)."""
    ii, jj = (t(a) for a in pairs(pos.detach().numpy(), 4.5 if name == "zbl" else 15.0))
    d = (pos[jj] - pos[ii]).norm(dim=-1)
    z = t(Z)
    if name == "zbl":
        return m.pair_energy(z[ii], z[jj], d, 0.5 * (torch.cos(math.pi * d / 4.5) + 1.0)).sum()
    if name.startswith("elec"):
        return m.pair_energy(vals[ii], vals[jj], d).sum()
    return m.pair_energy(vals[ii], vals[jj], z[ii], z[jj], d).sum()


@pytest.mark.parametrize("name,make", MODULES)
def test_torchscript_float32_and_gradients(name, make):
    Z, pos, q, h = random_system(5, n=12, box=12.0)
    vals = q if name.startswith("elec") else h
    m64 = make().double()
    s64 = torch.jit.script(m64)
    e_eager = _energy(name, m64, Z, t(pos), t(vals))
    e_script = _energy(name, s64, Z, t(pos), t(vals))
    assert float(e_script) == pytest.approx(float(e_eager), rel=1e-14, abs=1e-15)
    e32 = _energy(name, torch.jit.script(make().float()), Z, t(pos, torch.float32), t(vals, torch.float32))
    assert e32.dtype == torch.float32
    assert float(e32) == pytest.approx(float(e_eager), rel=1e-5, abs=1e-6)
    # gradients w.r.t. positions and per-atom values: finite, double backward works, finite differences
    p = t(pos).requires_grad_()
    (g,) = torch.autograd.grad(_energy(name, s64, Z, p, t(vals)), p, create_graph=True)
    assert torch.isfinite(g).all()
    (gg,) = torch.autograd.grad((g * g).sum(), p)
    assert torch.isfinite(gg).all()
    assert torch.autograd.gradcheck(lambda x, v: _energy(name, m64, Z, x, v),
                                    (t(pos).requires_grad_(), t(vals).requires_grad_()), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,make", [m for m in MODULES if m[0] != "zbl"])
def test_analytic_derivatives_equal_autograd(name, make):
    """pair_energy_and_derivatives (the lean pass's backward) = pair_energy + autograd, in float64."""
    Z, pos, q, h = random_system(11, n=30, box=16.0)
    ii, jj = pairs(pos, 13.0)
    v = t(q if name.startswith("elec") else h)
    m = make().double()
    r = t(dist(pos, ii, jj)).requires_grad_()
    vi = v[t(ii)].clone().requires_grad_()
    vj = v[t(jj)].clone().requires_grad_()
    extra = () if name.startswith("elec") else (t(Z)[t(ii)], t(Z)[t(jj)])
    e = m.pair_energy(vi, vj, *extra, r)
    g = torch.autograd.grad(e.sum(), [r, vi, vj])
    a = m.pair_energy_and_derivatives(vi.detach(), vj.detach(), *extra, r.detach())
    torch.testing.assert_close(a[0], e.detach(), rtol=1e-13, atol=1e-16)
    for got, ref in zip(a[1:], g):
        torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-14 * float(ref.abs().max()))
    s = torch.jit.script(m)
    for got, ref in zip(s.pair_energy_and_derivatives(vi.detach(), vj.detach(), *extra, r.detach()), a):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_empty_pair_lists():
    e0 = t(np.zeros(0))
    i0 = torch.zeros(0, dtype=torch.long)
    assert ZBLRepulsion().double().pair_energy(i0, i0, e0, e0).shape == (0,)
    assert ElectrostaticEnergy(4.0, 12.0).pair_energy(e0, e0, e0).shape == (0,)
    assert DispersionEnergy(1.2, 12.0, 2.0).double().pair_energy(e0, e0, i0, i0, e0).shape == (0,)


# ----------------------------------------------------------------------------- SO3LR weights
def test_load_zbl_params_so3lr():
    assert PARAMS_PKL.exists(), f"SO3LR reference weights missing: {PARAMS_PKL} (CI provides ../shared)"
    with open(PARAMS_PKL, "rb") as f:
        p = pickle.load(f)
    sub = p["params"]["observables_0"]["zbl_repulsion"]
    m = ZBLRepulsion().double()
    _load_zbl(m, sub)
    for k in ZBL_PARAMETERS:
        assert getattr(m, k).item() == float(np.asarray(sub[k]).reshape(-1)[0])
    coef = {k: softplus(float(np.asarray(sub[k]).reshape(-1)[0])) for k in sub}
    Z, pos, _, _ = random_system(7)
    np.testing.assert_allclose(zbl_atoms(m, Z, pos).detach().numpy(), np_zbl(Z, pos, 4.5, coef), rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="shape"):
        _load_zbl(ZBLRepulsion(), {k: np.zeros(2) for k in sub})
    with pytest.raises(ValueError, match="zbl_repulsion"):
        _load_zbl(ZBLRepulsion(), None)


def test_switch_derivative():
    x = torch.linspace(-1.0, 14.0, 301, dtype=torch.float64, requires_grad=True)
    f = smooth_switch(x, 5.4, 12.0)
    (g,) = torch.autograd.grad(f.sum(), x)
    sw = switch_and_derivative(x.detach(), 5.4, 12.0)
    torch.testing.assert_close(sw[0], f.detach(), rtol=1e-14, atol=1e-16)
    torch.testing.assert_close(sw[1], g, rtol=1e-12, atol=1e-15)
