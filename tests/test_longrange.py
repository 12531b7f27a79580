"""Tests of the SO3LR physical terms (so3krates.potential.longrange).

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

from so3krates.potential import longrange as L
from so3krates.potential.dispersion_data import FREE_ATOM_ALPHA, FREE_ATOM_C6, FREE_ATOM_TABLE, MAX_Z

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
    """Both directions, brute force."""
    n = len(pos)
    ii, jj = [], []
    for i in range(n):
        for j in range(n):
            if i != j and np.linalg.norm(pos[j] - pos[i]) < cutoff:
                ii.append(i)
                jj.append(j)
    return np.array(ii, dtype=np.int64), np.array(jj, dtype=np.int64)


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
    m = L.ZBLRepulsion()
    return {k: softplus(getattr(m, k).item()) for k in ["a1", "a2", "a3", "a4", "c1", "c2", "c3", "c4", "p", "d"]}


# ----------------------------------------------------------------------------- data / constants
def test_constants_equal_ase_units():
    import ase.units as u
    assert L.BOHR == u.Bohr and L.HARTREE == u.Hartree and L.FINE_STRUCTURE == u.alpha
    assert L.KE == pytest.approx(u.Hartree * u.Bohr, rel=1e-15)


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
    Z, pos = t(FIX_Z), FIX_POS
    ii, jj = pairs(pos, 4.5)
    il, jl = pairs(pos, 1e9)
    d, dl = t(dist(pos, ii, jj)), t(dist(pos, il, jl))
    zbl = L.ZBLRepulsion(4.5).double()
    got = {
        "zbl": zbl(Z, d, t(ii), t(jj)),
        "elec_cut": L.ElectrostaticEnergy(4.0, 12.0)(t(FIX_Q), dl, t(il), t(jl)),
        "elec_nocut": L.ElectrostaticEnergy(4.0)(t(FIX_Q), dl, t(il), t(jl)),
        "disp_cut": L.DispersionEnergy(1.2, 12.0, 2.0)(t(FIX_H), Z, dl, t(il), t(jl)),
        "disp_nocut": L.DispersionEnergy(1.2)(t(FIX_H), Z, dl, t(il), t(jl)),
    }
    for k, ref in FIX_REF.items():
        np.testing.assert_allclose(got[k].detach().numpy(), ref, rtol=1e-12, atol=1e-14, err_msg=k)


# ----------------------------------------------------------------------------- ZBL
@pytest.mark.parametrize("perturb", [False, True])
def test_zbl_vs_numpy(perturb):
    Z, pos, _, _ = random_system(1)
    m = L.ZBLRepulsion(4.5).double()
    if perturb:
        with torch.no_grad():
            for n, (_, p) in enumerate(m.named_parameters()):
                p.add_(0.1 * (n % 7 - 3))
    coef = {k: softplus(getattr(m, k).item()) for k in ["a1", "a2", "a3", "a4", "c1", "c2", "c3", "c4", "p", "d"]}
    ii, jj = pairs(pos, 4.5)
    d = dist(pos, ii, jj)
    assert (d < 1.5).sum() >= 4
    ref = np_zbl(Z, pos, 4.5, coef)
    got = m(t(Z), t(d), t(ii), t(jj))
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-12, atol=1e-13)
    # explicit cutoff values give the same
    cut = t([np_phys(r, 4.5) for r in d])
    np.testing.assert_allclose(m(t(Z), t(d), t(ii), t(jj), cut).detach().numpy(), ref, rtol=1e-12, atol=1e-13)


def test_zbl_analytic_universal_form():
    """Initial coefficients = ZBL universal screening: a = 0.8854 a0 / (Z1^0.23 + Z2^0.23)."""
    m = L.ZBLRepulsion(4.5).double()
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
        e = m(t([z1, z2]), t([r, r]), t([0, 1]), t([1, 0])).detach()
        assert float(e.sum()) == pytest.approx(expected, rel=1e-6, abs=1e-12)
        assert float(e[0]) == pytest.approx(float(e[1]), rel=1e-12)
        if r >= 1.5:
            assert float(e.sum()) == 0.0


# ----------------------------------------------------------------------------- charges
def test_charge_equilibration():
    rng = np.random.default_rng(3)
    batch = np.array([1, 0, 0, 2, 1, 1, 0, 2, 2, 2])  # unsorted on purpose
    raw = rng.normal(size=len(batch))
    Q = np.array([0.0, -1.0, 2.0, 1.0])  # graph 3 has no atoms
    got = L.charge_equilibration(t(raw), t(batch), t(Q), 4).numpy()
    for b in range(3):
        sel = batch == b
        np.testing.assert_allclose(got[sel].sum(), Q[b], atol=1e-12)
        np.testing.assert_allclose(got[sel] - raw[sel], (Q[b] - raw[sel].sum()) / sel.sum(), atol=1e-12)
    sm = torch.jit.script(L.ChargeEquilibration())
    np.testing.assert_allclose(sm(t(raw), t(batch), t(Q), 4).numpy(), got, atol=0)


# ----------------------------------------------------------------------------- electrostatics
@pytest.mark.parametrize("rc", [None, 12.0, 7.0])
def test_electrostatics_vs_numpy(rc):
    Z, pos, q, _ = random_system(2, n=16, box=16.0)
    il, jl = pairs(pos, 15.0)  # list longer than the cutoff: pairs beyond r_c must give 0
    dl = dist(pos, il, jl)
    assert rc is None or (dl > rc).any()
    m = L.ElectrostaticEnergy(scale=4.0, cutoff_lr=rc)
    got = m(t(q), t(dl), t(il), t(jl)).numpy()
    ref = np_coulomb(q, pos, 4.0, rc, pair_cut=15.0)
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-13)
    if rc is not None:  # forward override gives the same as the constructor value
        got2 = L.ElectrostaticEnergy(scale=4.0)(t(q), t(dl), t(il), t(jl), rc).numpy()
        np.testing.assert_allclose(got2, got, rtol=0, atol=0)


def test_electrostatics_coulomb_limits():
    q = t([0.7, -0.3])
    i, j = t([0, 1]), t([1, 0])
    # no cutoff: erf(r/sigma)/r -> 1/r far away
    for r in [40.0, 80.0]:
        e = L.ElectrostaticEnergy(4.0)(q, t([r, r]), i, j)
        assert float(e.sum()) == pytest.approx(KE * 0.7 * -0.3 / r, rel=1e-13)
        assert float(e[0]) == pytest.approx(float(e[1]), rel=1e-14)
    # tiny sigma: bare Coulomb at chemical distances
    e = L.ElectrostaticEnergy(0.01)(q, t([2.0, 2.0]), i, j)
    assert float(e.sum()) == pytest.approx(KE * 0.7 * -0.3 / 2.0, rel=1e-13)
    # with cutoff, below r_on = 0.45 r_c: the shifted potential, exactly
    rc, s = 12.0, 4.0
    for r in [1.0, 3.0, 5.0]:
        e = L.ElectrostaticEnergy(s, rc)(q, t([r, r]), i, j)
        expected = KE * 0.7 * -0.3 * (math.erf(r / s) / r - math.erf(rc / s) / rc)
        assert float(e.sum()) == pytest.approx(expected, rel=1e-12)
    # energy and force go to zero continuously at r_c; zero beyond
    r = t([rc - 1e-4, rc - 1e-4]).requires_grad_()
    e = L.ElectrostaticEnergy(s, rc)(q, r, i, j).sum()
    (g,) = torch.autograd.grad(e, r)
    assert abs(e.item()) < 1e-8 and g.abs().max().item() < 1e-4
    e = L.ElectrostaticEnergy(s, rc)(q, t([rc, 13.0]), i, j)
    assert float(e.abs().sum()) == 0.0


# ----------------------------------------------------------------------------- dispersion
@pytest.mark.parametrize("rc", [None, 12.0])
def test_dispersion_vs_numpy(rc):
    Z, pos, _, h = random_system(4, n=16, box=16.0, species=(1, 3, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 19, 20, 35, 53))
    il, jl = pairs(pos, 15.0)
    dl = dist(pos, il, jl)
    damping = 2.0 if rc is not None else None
    m = L.DispersionEnergy(scale=1.2, cutoff_lr=rc, damping=damping)
    got = m(t(h), t(Z), t(dl), t(il), t(jl)).numpy()
    ref = np_disp(Z, h, pos, 1.2, rc, damping, pair_cut=15.0)
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-15)
    assert (got < 0).all()


def test_dispersion_limits_and_mixing():
    m = L.DispersionEnergy(1.2)
    i, j = t([0, 1]), t([1, 0])
    # homonuclear, h = 1: free-atom values come back from the mixing rules
    a, c6 = m.pair_coefficients(t([1.0, 1.0]), t([6, 6]), i, j)
    assert float(a[0]) == FREE_ATOM_ALPHA[6] and float(c6[0]) == pytest.approx(FREE_ATOM_C6[6], rel=1e-14)
    # far away the C6 term dominates: E -> -C6_ij / R^6 (Hartree)
    h = t([0.8, 1.1])
    a, c6 = m.pair_coefficients(h, t([8, 17]), i, j)
    r = 80.0
    e = m(h, t([8, 17]), t([r, r]), i, j)
    assert float(e.sum()) == pytest.approx(-float(c6[0]) / (r / BOHR) ** 6 * HARTREE, rel=2e-3)
    # switching: untouched below r_c - damping, zero at/after r_c
    mc = L.DispersionEnergy(1.2, 12.0, 2.0)
    for r, same in [(5.0, True), (9.99, True), (12.0, False), (14.0, False)]:
        e0 = float(m(h, t([8, 17]), t([r, r]), i, j).sum())
        e1 = float(mc(h, t([8, 17]), t([r, r]), i, j).sum())
        assert (e1 == pytest.approx(e0, rel=1e-14)) if same else (e1 == 0.0)
    with pytest.raises(ValueError):
        L.DispersionEnergy(1.2, 12.0, None)


# ----------------------------------------------------------------------------- generic properties
def _all_modules():
    return [
        ("zbl", L.ZBLRepulsion(4.5)),
        ("elec", L.ElectrostaticEnergy(4.0, 12.0)),
        ("elec_nocut", L.ElectrostaticEnergy(4.0)),
        ("disp", L.DispersionEnergy(1.2, 12.0, 2.0)),
    ]


def _call(name, m, Z, pos, q, h, dtype):
    """Energy from positions (so gradients flow to positions)."""
    pos = pos if torch.is_tensor(pos) else t(pos, dtype)
    cut = 4.5 if name == "zbl" else 15.0
    ii, jj = pairs(pos.detach().numpy(), cut)
    ii, jj = t(ii), t(jj)
    d = (pos[jj] - pos[ii]).norm(dim=-1)
    if name == "zbl":
        return m(t(Z), d, ii, jj)
    if name.startswith("elec"):
        return m(t(q, dtype), d, ii, jj)
    return m(t(h, dtype), t(Z), d, ii, jj)


@pytest.mark.parametrize("name,mod", _all_modules())
def test_torchscript_float32_and_gradients(name, mod):
    Z, pos, q, h = random_system(5, n=12, box=12.0)
    m64 = mod.double()
    s64 = torch.jit.script(m64)
    e_eager = _call(name, m64, Z, pos, q, h, torch.float64)
    e_script = _call(name, s64, Z, pos, q, h, torch.float64)
    np.testing.assert_allclose(e_script.detach().numpy(), e_eager.detach().numpy(), rtol=1e-14, atol=1e-15)
    # float32 ~ float64
    m32 = torch.jit.script(copy.deepcopy(mod).float())
    e32 = _call(name, m32, Z, pos, q, h, torch.float32)
    assert e32.dtype == torch.float32
    scale = e_eager.detach().abs().max().item()
    np.testing.assert_allclose(e32.detach().double().numpy(), e_eager.detach().numpy(), rtol=1e-5, atol=1e-6 * scale)
    # gradients w.r.t. positions: finite, and the same from the scripted module; double backward works
    p = t(pos).requires_grad_()
    e = _call(name, s64, Z, p, q, h, torch.float64).sum()
    (g,) = torch.autograd.grad(e, p, create_graph=True)
    assert torch.isfinite(g).all()
    (gg,) = torch.autograd.grad((g * g).sum(), p)
    assert torch.isfinite(gg).all()
    # finite-difference check of the gradient
    def energy(x):
        return _call(name, m64, Z, x, q, h, torch.float64).sum()
    assert torch.autograd.gradcheck(energy, (t(pos).requires_grad_(),), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_charge_and_ratio_gradients():
    Z, pos, q, h = random_system(6, n=10, box=12.0)
    il, jl = pairs(pos, 15.0)
    d = t(dist(pos, il, jl))
    qq = t(q).requires_grad_()
    hh = t(h).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: L.ElectrostaticEnergy(4.0, 12.0)(x, d, t(il), t(jl)).sum(), (qq,))
    assert torch.autograd.gradcheck(
        lambda x: L.DispersionEnergy(1.2, 12.0, 2.0)(x, t(Z), d, t(il), t(jl)).sum(), (hh,))


def test_empty_pair_lists():
    e0 = t(np.zeros(0))
    i0 = torch.zeros(0, dtype=torch.long)
    Z = t([1, 8])
    assert L.ZBLRepulsion().double()(Z, e0, i0, i0).abs().sum() == 0
    assert L.ElectrostaticEnergy(4.0, 12.0)(t([0.1, -0.1]), e0, i0, i0).abs().sum() == 0
    assert L.DispersionEnergy(1.2, 12.0, 2.0)(t([1.0, 1.0]), Z, e0, i0, i0).abs().sum() == 0


# ----------------------------------------------------------------------------- SO3LR weights
def test_load_flax_params_so3lr():
    assert PARAMS_PKL.exists(), f"SO3LR reference weights missing: {PARAMS_PKL} (CI provides ../shared)"
    with open(PARAMS_PKL, "rb") as f:
        p = pickle.load(f)
    sub = p["params"]["observables_0"]["zbl_repulsion"]
    for src in (sub, p, p["params"]):
        m = L.ZBLRepulsion().double()
        m.load_flax_params(src)
        for k in ["a1", "a2", "a3", "a4", "c1", "c2", "c3", "c4", "p", "d"]:
            assert getattr(m, k).item() == float(np.asarray(sub[k]).reshape(-1)[0])
    coef = {k: softplus(float(np.asarray(sub[k]).reshape(-1)[0])) for k in sub}
    Z, pos, _, _ = random_system(7)
    ii, jj = pairs(pos, 4.5)
    got = m(t(Z), t(dist(pos, ii, jj)), t(ii), t(jj)).detach().numpy()
    np.testing.assert_allclose(got, np_zbl(Z, pos, 4.5, coef), rtol=1e-12, atol=1e-13)
    # the other modules have no weights; their sub-dicts are accepted
    L.ElectrostaticEnergy(4.0, 12.0).load_flax_params(p["params"]["observables_0"]["electrostatic_energy"])
    L.ElectrostaticEnergy(4.0, 12.0).load_flax_params(p)
    L.DispersionEnergy(1.2, 12.0, 2.0).load_flax_params({})
    with pytest.raises(ValueError):
        L.ZBLRepulsion().load_flax_params({k: np.zeros(2) for k in sub})


# ----------------------------------------------------------------------------- inference path
_LR_MODULES = [
    ("elec", lambda: L.ElectrostaticEnergy(4.0, 12.0)),
    ("elec_nocut", lambda: L.ElectrostaticEnergy(4.0)),
    ("disp", lambda: L.DispersionEnergy(1.2, 12.0, 2.0)),
    ("disp_nocut", lambda: L.DispersionEnergy(1.2)),
]


def _lr_energies(name, mod, Z, P, V, il, jl):
    d = (P[t(jl)] - P[t(il)]).norm(dim=-1)
    if name.startswith("elec"):
        return mod(V, d, t(il), t(jl))
    return mod(V, t(Z), d, t(il), t(jl))


@pytest.mark.parametrize("name,make", _LR_MODULES)
@pytest.mark.parametrize("script", [False, True])
def test_eval_mode_analytic_first_derivatives(name, make, script):
    """Eval mode (grad enabled) attaches analytic first derivatives to graph-free pair energies: the same
    per-atom energies and the same gradients of any weighted sum of them (so per-atom attribution, as
    engines with ghost atoms need it) w.r.t. positions and charges/Hirshfeld ratios as the exact formula
    in training mode, which keeps full double-backward support."""
    Z, pos, q, h = random_system(11, n=30, box=16.0)
    vals = q if name.startswith("elec") else h
    il, jl = pairs(pos, 13.0)
    res = {}
    for mode in ("train", "eval"):
        mod = make().double().train(mode == "train")
        mod.chunk_size = 97  # several chunks
        if script:
            mod = torch.jit.script(mod)
        P = t(pos).requires_grad_()
        V = t(vals).requires_grad_()
        e = _lr_energies(name, mod, Z, P, V, il, jl)
        w = torch.linspace(0.3, 1.7, len(e), dtype=torch.float64)
        gp, gv = torch.autograd.grad((w * e).sum(), [P, V])
        res[mode] = (e.detach(), gp, gv)
    for a, b in zip(res["train"], res["eval"]):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14 * float(a.abs().max()))
    # without gradients both modes give the values only
    with torch.no_grad():
        e_ng = _lr_energies(name, make().double().eval(), Z, t(pos), t(vals), il, jl)
    torch.testing.assert_close(e_ng, res["train"][0], rtol=1e-14, atol=0.0)


@pytest.mark.parametrize("name,make", _LR_MODULES)
def test_half_pair_lists(name, make):
    """energies_and_derivatives on each pair once (half=True) = the full directed list."""
    Z, pos, q, h = random_system(12, n=25, box=15.0)
    il, jl = pairs(pos, 13.0)
    keep = il < jl
    d = t(dist(pos, il, jl))
    mod = make().double()
    if name.startswith("elec"):
        full = mod.energies_and_derivatives(t(q), d, t(il), t(jl), mod.use_cutoff, mod.cutoff_lr)
        half = mod.energies_and_derivatives(t(q), d[keep], t(il[keep]), t(jl[keep]), mod.use_cutoff,
                                            mod.cutoff_lr, True)
    else:
        args = (mod.use_cutoff, mod.cutoff_lr, mod.damping)
        full = mod.energies_and_derivatives(t(h), t(Z), d, t(il), t(jl), *args)
        half = mod.energies_and_derivatives(t(h), t(Z), d[keep], t(il[keep]), t(jl[keep]), *args, True)
    n = len(Z)
    torch.testing.assert_close(half[0], full[0], rtol=1e-12, atol=1e-15)
    # dE/dr of the pair = both directions; dE/dv per atom from centre + neighbour terms
    torch.testing.assert_close(half[1], 2 * full[1][keep], rtol=1e-12, atol=1e-15)
    g_full = full[2] + torch.zeros(n, dtype=torch.float64).index_add(0, t(jl), full[3])
    g_half = half[2] + torch.zeros(n, dtype=torch.float64).index_add(0, t(jl[keep]), half[3])
    torch.testing.assert_close(g_half, g_full, rtol=1e-12, atol=1e-15)


def test_switch_derivative():
    x = torch.linspace(-1.0, 14.0, 301, dtype=torch.float64, requires_grad=True)
    f = L.smooth_switch(x, 5.4, 12.0)
    (g,) = torch.autograd.grad(f.sum(), x)
    torch.testing.assert_close(L.smooth_switch_derivative(x.detach(), 5.4, 12.0), g, rtol=1e-12, atol=1e-15)
