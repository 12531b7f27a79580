"""So3kratesPotential: the memory-lean pass against the model's autograd forward on an independent
brute-force pair list, forces and stress against finite differences, invariances, errors.

Uses a small random So3krates with ZBL, electrostatics and dispersion (tests/helpers.small_model).
"""
import itertools

import numpy as np
import pytest
import torch

from helpers import small_model
from so3krates.potential.potential import So3kratesPotential


def brute_pairs(pos, cell, pbc, cutoff):
    """Every unordered pair within ``cutoff`` (Å) once, periodic images by brute force (numpy):
    (i, j, shift) with i < j, or i == j and a lexicographically positive shift."""
    pbc = np.asarray(pbc)
    rng = [0, 0, 0]
    if pbc.any():
        heights = abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        rng = [int(np.ceil(cutoff / h)) + 1 if p else 0 for h, p in zip(heights, pbc)]
    out = []
    for s in itertools.product(*[range(-m, m + 1) for m in rng]):
        s = np.array(s, dtype=float)
        vec = pos[None, :, :] - pos[:, None, :] + s @ (cell if pbc.any() else np.zeros((3, 3)))
        r = np.linalg.norm(vec, axis=-1)
        for i, j in zip(*np.nonzero(r < cutoff)):
            if i < j or (i == j and tuple(s) > (0.0, 0.0, 0.0)):
                out.append((i, j, *s))
    a = np.array(out).reshape(-1, 5)
    return torch.tensor(a[:, 0], dtype=torch.long), torch.tensor(a[:, 1], dtype=torch.long), torch.tensor(a[:, 2:])


def reference_energy(model, pos, z, cell, pbc):
    """Total energy (eV) of ``So3krates.forward`` on brute-force pair lists."""
    p, c = torch.tensor(pos), torch.tensor(cell if np.any(pbc) else np.zeros((3, 3)))
    ii, jj, ss = brute_pairs(pos, cell, pbc, model.cutoff)
    if model.cutoff_lr > 0:
        il, jl, sl = brute_pairs(pos, cell, pbc, model.cutoff_lr)
    else:
        il, jl = (torch.as_tensor(a) for a in np.triu_indices(len(pos), 1))
        sl = torch.zeros(len(il), 3, dtype=torch.float64)
    with torch.no_grad():
        out = model(p, torch.tensor(z), p[jj] - p[ii] + ss @ c, ii, jj, p[jl] - p[il] + sl @ c, il, jl,
                    torch.zeros(len(z), dtype=torch.long), 1, torch.zeros(1, dtype=torch.float64),
                    torch.zeros(1, dtype=torch.float64), c[None], torch.tensor([bool(np.all(pbc))] * 3)[None])
    return float(out["atomic_energies"].sum())


CELL = np.array([[6.0, 0.0, 0.0], [1.5, 5.5, 0.0], [-1.0, 0.8, 6.2]])


def structure(n=24, seed=0, cell=CELL):
    """Random structure without close contacts (rejection sampling), fractional -> Cartesian."""
    rng = np.random.default_rng(seed)
    pts = []
    while len(pts) < n:
        p = rng.uniform(0, 1, 3) @ cell
        ok = True
        for q in pts:
            for s in np.ndindex(3, 3, 3):
                if np.linalg.norm(p - q + (np.array(s) - 1) @ cell) < 1.2:
                    ok = False
        if ok:
            pts.append(p)
    z = rng.choice([1, 6, 8], size=n)
    return np.array(pts), z


def calc(potential, pos, z, cell, pbc, **kw):
    return potential(torch.tensor(pos), torch.tensor(z), torch.tensor(cell),
                     torch.tensor(pbc), **kw)


def _model(cutoff=4.0, cutoff_lr=9.0, long_range=True):
    """Small random So3krates; cutoff_lr None: long-range terms over all pairs (open systems only)."""
    kw = dict(cutoff=cutoff)
    if long_range:
        kw.update(cutoff_lr=cutoff_lr, dispersion_energy_cutoff_lr_damping=1.0 if cutoff_lr else None)
    return small_model(long_range=long_range, **kw)


@pytest.fixture(params=["eager", "script"])
def make_potential(request):
    def make(**kw):
        p = So3kratesPotential(_model(**kw)).double().eval()
        return torch.jit.script(p) if request.param == "script" else p
    return make


@pytest.mark.parametrize("pbc", [[True] * 3, [False] * 3, [True, True, False]])
def test_energy_matches_bruteforce_and_forces_match_finite_differences(make_potential, pbc):
    pot = make_potential(cutoff=4.0, cutoff_lr=9.0)
    model = _model(cutoff=4.0, cutoff_lr=9.0)
    pos, z = structure()
    cell = CELL if any(pbc) else np.zeros((3, 3))
    out = calc(pot, pos, z, cell, pbc)
    assert out["energy"].shape == () and out["forces"].shape == (len(pos), 3)
    assert out["atomic_energies"].shape == (len(pos),)
    assert torch.allclose(out["atomic_energies"].sum(), out["energy"])
    assert "partial_charges" in out and "hirshfeld_ratios" in out
    e_ref = reference_energy(model, pos, z, cell, pbc)
    assert abs(float(out["energy"]) - e_ref) < 1e-9 * max(1.0, abs(e_ref))
    h = 1e-5
    forces = out["forces"].numpy()
    for a in (0, 5, 17):
        for d in range(3):
            p1, p2 = pos.copy(), pos.copy()
            p1[a, d] += h
            p2[a, d] -= h
            e1 = float(calc(pot, p1, z, cell, pbc, compute_forces=False)["energy"])
            e2 = float(calc(pot, p2, z, cell, pbc, compute_forces=False)["energy"])
            assert abs(-(e1 - e2) / (2 * h) - forces[a, d]) < 1e-6 * max(1.0, abs(forces[a, d]))


def test_long_range_all_pairs_without_cutoff(make_potential):
    pot = make_potential(cutoff=4.0, cutoff_lr=None)
    model = _model(cutoff=4.0, cutoff_lr=None)
    pos, z = structure(n=10, seed=8, cell=CELL * 2)
    out = calc(pot, pos, z, np.zeros((3, 3)), [False] * 3)
    e_ref = reference_energy(model, pos, z, np.zeros((3, 3)), [False] * 3)
    assert abs(float(out["energy"]) - e_ref) < 1e-9 * max(1.0, abs(e_ref))
    with pytest.raises((ValueError, torch.jit.Error), match="no long-range cutoff"):
        calc(pot, pos, z, CELL * 2, [True] * 3)
    # a purely local model has no long-range pairs
    local = _model(cutoff=4.0, long_range=False)
    out = calc(So3kratesPotential(local).eval(), pos, z, CELL * 2, [True] * 3)
    e_ref = reference_energy(local, pos, z, CELL * 2, [True] * 3)
    assert abs(float(out["energy"]) - e_ref) < 1e-9 * max(1.0, abs(e_ref))


@pytest.mark.parametrize("cell", [CELL, np.diag([3.0, 3.2, 3.5])])
def test_stress_matches_finite_differences(make_potential, cell):
    pot = make_potential(cutoff=4.0, cutoff_lr=7.0)
    pos, z = structure(n=12 if cell is CELL else 4, seed=1, cell=cell)
    pbc = [True] * 3
    out = calc(pot, pos, z, cell, pbc, compute_stress=True)
    stress = out["stress"].numpy()
    assert stress.shape == (3, 3)
    assert np.allclose(stress, stress.T, atol=1e-12)
    vol = abs(np.linalg.det(cell))
    h = 1e-6
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = h
            es = []
            for sign in (1, -1):
                deform = np.eye(3) + sign * eps
                es.append(float(calc(pot, pos @ deform, z, cell @ deform, pbc,
                                     compute_forces=False)["energy"]))
            assert abs((es[0] - es[1]) / (2 * h) / vol - stress[a, b]) < 1e-7 * max(1.0, abs(stress[a, b]))


def test_stress_sign_ase_convention(make_potential):
    # compressed crystal (ZBL repulsion of the self-images at 0.9 Å): the energy decreases on
    # expansion -> negative stress (ASE)
    pot = make_potential(cutoff=4.0)
    cell = np.eye(3) * 0.9
    out = calc(pot, np.zeros((1, 3)), np.array([6]), cell, [True] * 3, compute_stress=True)
    assert float(torch.trace(out["stress"])) < 0


def test_wrapping_invariance(make_potential):
    pot = make_potential(cutoff=4.0, cutoff_lr=8.0)
    pos, z = structure(seed=2)
    out = calc(pot, pos, z, CELL, [True] * 3, compute_stress=True)
    moved = pos.copy()
    moved[3] += CELL[0] - 2 * CELL[2]
    moved[7] -= CELL[1]
    out2 = calc(pot, moved, z, CELL, [True] * 3, compute_stress=True)
    for key in ("energy", "forces", "stress", "atomic_energies"):
        assert torch.allclose(out[key], out2[key], atol=1e-10), key


def test_float32_model():
    model = _model(cutoff=4.0)
    pot = So3kratesPotential(model).float().eval()
    pos, z = structure(seed=3)
    out = pot(torch.tensor(pos), torch.tensor(z), torch.tensor(CELL), torch.tensor([True] * 3))
    assert out["energy"].dtype == torch.float32 and out["forces"].dtype == torch.float32
    ref = So3kratesPotential(_model(cutoff=4.0)).double().eval()(
        torch.tensor(pos), torch.tensor(z), torch.tensor(CELL), torch.tensor([True] * 3))
    assert torch.allclose(out["forces"].double(), ref["forces"], atol=1e-4 * float(ref["forces"].abs().max()))


def test_training_mode_keeps_graph():
    pot = So3kratesPotential(_model(cutoff=4.0)).double().train()
    pos, z = structure(seed=4)
    out = calc(pot, pos, z, CELL, [True] * 3)
    loss = (out["forces"] ** 2).sum()
    loss.backward()
    w = pot.model.layers[0].attention_block.radial_filter1_layer_1.weight
    assert w.grad is not None and float(w.grad.abs().max()) > 0


def test_no_grad_context():
    pot = So3kratesPotential(_model(cutoff=4.0)).double().eval()
    pos, z = structure(seed=4)
    with torch.no_grad():
        out = calc(pot, pos, z, CELL, [True] * 3, compute_stress=True)
    assert torch.isfinite(out["forces"]).all() and float(out["forces"].abs().max()) > 0


def _raises(pot, match, pos, z, cell, pbc, **kw):
    with pytest.raises((ValueError, torch.jit.Error), match=match):
        pot(pos, z, cell, pbc, **kw)


def test_error_messages(make_potential):
    pot = make_potential(cutoff=4.0)
    pos, z = structure(n=6, seed=5)
    P, Z, C = torch.tensor(pos), torch.tensor(z), torch.tensor(CELL)
    T = torch.tensor([True] * 3)
    bad = P.clone()
    bad[4, 1] = float("nan")
    _raises(pot, r"NaN or inf .* first at index 4.*check the input", bad, Z, C, T)
    bad = P.clone()
    bad[2, 0] = float("inf")
    _raises(pot, "NaN or inf", bad, Z, C, T)
    zz = Z.clone()
    zz[3] = 17
    _raises(pot, r"unknown element Cl \(atomic number 17\) at atom index 3.*only knows H, C, O",
            P, zz, C, T)
    zz[3] = 200
    _raises(pot, "unknown element", P, zz, C, T)
    close = P.clone()
    close[5] = close[2] + torch.tensor([0.05, 0.0, 0.0], dtype=torch.float64)
    _raises(pot, r"atoms (2 and 5|5 and 2) are 0\.0500 Å apart, closer than 0\.10 Å", close, Z, C, T)
    # close through a periodic image
    img = P.clone()
    img[5] = img[2] + C[0] + torch.tensor([0.0, 0.03, 0.0], dtype=torch.float64)
    _raises(pot, r"atoms (2 and 5|5 and 2) \(periodic image .*\) are 0\.0300 Å apart", img, Z, C, T)
    flat = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [3.0, 3.0, 0]], dtype=torch.float64)
    _raises(pot, "zero volume.*independent lattice vectors", P, Z, flat, T)
    _raises(pot, r"zero lattice vector c", P, Z, torch.diag(torch.tensor([3.0, 3.0, 0.0],
                                                                         dtype=torch.float64)), T)
    _raises(pot, r"positions must have shape \[N, 3\]", P[:, :2], Z, C, T)
    _raises(pot, r"atomic_numbers must have shape \[N\]", P, Z[:3], C, T)
    _raises(pot, "atomic_numbers must be an integer tensor", P, Z.double(), C, T)
    _raises(pot, r"cell must have shape \[3, 3\]", P, Z, C[:2], T)
    _raises(pot, r"pbc must have shape \[3\]", P, Z, C, T[:2])
    _raises(pot, "positions must be a floating-point", P.long(), Z, C, T)
    _raises(pot, "stress needs a periodic cell", P, Z, torch.zeros(3, 3, dtype=torch.float64),
            torch.tensor([False] * 3), compute_stress=True)


def test_open_cell_zero_with_pbc_true_is_open(make_potential):
    pot = make_potential(cutoff=4.0)
    pos, z = structure(n=8, seed=6)
    a = calc(pot, pos, z, np.zeros((3, 3)), [True] * 3)
    b = calc(pot, pos, z, np.zeros((3, 3)), [False] * 3)
    assert torch.allclose(a["energy"], b["energy"])


def test_scripted_module_is_saveable(tmp_path):
    pot = torch.jit.script(So3kratesPotential(_model(cutoff=4.0, cutoff_lr=6.0)).double().eval())
    f = tmp_path / "m.pt"
    torch.jit.save(pot, str(f))
    loaded = torch.jit.load(str(f))
    pos, z = structure(n=8, seed=7)
    a = calc(loaded, pos, z, CELL, [True] * 3, compute_stress=True)
    b = calc(pot, pos, z, CELL, [True] * 3, compute_stress=True)
    assert torch.allclose(a["stress"], b["stress"])


# ------------------------------------------------------------------ SO3LR: long-range terms
def _so3lr_water(n_side=2, seed=1):
    """Periodic water box (3 n³ atoms) smaller than the 12 Å long-range cutoff: many images."""
    rng = np.random.default_rng(seed)
    a = (18.015 / 0.60221) ** (1.0 / 3.0)
    mol = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * a
    pos = np.concatenate([g + 0.25 * a + mol @ np.linalg.qr(rng.normal(size=(3, 3)))[0].T for g in grid])
    cell = np.eye(3) * a * n_side @ np.array([[1.0, 0.0, 0.0], [0.08, 1.0, 0.0], [-0.05, 0.1, 1.0]])
    return pos, np.tile([8, 1, 1], len(grid)), cell


def test_so3lr_stress_matches_finite_differences(so3lr_model):
    """Stress with ZBL, electrostatics and dispersion (12 Å, many periodic images) = (1/V) dE/dε by
    central differences of the energy; eval (memory-lean pass) and train (autograd) mode agree."""
    pos, z, cell = _so3lr_water()
    pot = So3kratesPotential(so3lr_model).eval()
    pbc = [True] * 3
    out = calc(pot, pos, z, cell, pbc, compute_stress=True)
    stress = out["stress"].numpy()
    assert np.allclose(stress, stress.T, atol=1e-12) and np.abs(stress).max() > 1e-4
    vol = abs(np.linalg.det(cell))
    h = 1e-5
    for a in range(3):
        for b in range(a, 3):
            eps = np.zeros((3, 3))
            eps[a, b] = eps[b, a] = h / 2 if a != b else h
            es = [float(calc(pot, pos @ (np.eye(3) + sgn * eps), z, cell @ (np.eye(3) + sgn * eps), pbc,
                             compute_forces=False)["energy"]) for sgn in (1, -1)]
            fd = (es[0] - es[1]) / (2 * h) / vol
            assert abs(fd - stress[a, b]) < 1e-8, (a, b, fd, stress[a, b])
    ref = calc(So3kratesPotential(so3lr_model).train(), pos, z, cell, pbc, compute_stress=True)
    for key in ("energy", "forces", "stress", "atomic_energies", "partial_charges", "hirshfeld_ratios"):
        torch.testing.assert_close(out[key], ref[key].detach(), rtol=1e-10, atol=1e-12, msg=key)


def test_so3lr_scripted_eval_equals_eager(so3lr_model):
    pos, z, cell = _so3lr_water(seed=2)
    eager = So3kratesPotential(so3lr_model).eval()
    scripted = torch.jit.script(So3kratesPotential(so3lr_model).eval())
    a = calc(eager, pos, z, cell, [True] * 3, compute_stress=True)
    b = calc(scripted, pos, z, cell, [True] * 3, compute_stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(b[key], a[key], rtol=1e-12, atol=1e-13)


def test_so3lr_force_training_with_long_range_terms(so3lr_model):
    """Training mode keeps the exact autograd path: the gradient of a force loss w.r.t. a weight that
    acts only through the partial charges (electrostatics) and the Hirshfeld ratios (dispersion)
    equals finite differences (double backward through the long-range terms)."""
    import copy
    pos, z, cell = _so3lr_water(seed=3)
    model = copy.deepcopy(so3lr_model)
    pot = So3kratesPotential(model).train()
    # (a uniform shift of the raw charges cancels in the total-charge correction: use a weight)
    weights = [model.charges_head.mlp.dense_final.weight, model.hirshfeld_head.mlp.dense_final.bias]

    def loss():
        out = calc(pot, pos, z, cell, [True] * 3)
        return (out["forces"] ** 2).sum()

    value = loss()
    grads = torch.autograd.grad(value, weights)
    for w, g in zip(weights, grads):
        k = int(g.abs().argmax())
        gk = float(g.reshape(-1)[k])
        assert abs(gk) > 1e-3
        h = 1e-5
        with torch.no_grad():
            w.view(-1)[k] += h
        up = float(loss())
        with torch.no_grad():
            w.view(-1)[k] -= 2 * h
        down = float(loss())
        with torch.no_grad():
            w.view(-1)[k] += h
        fd = (up - down) / (2 * h)
        assert abs(fd - gk) <= 1e-6 * max(1.0, abs(fd)), (fd, gk)
