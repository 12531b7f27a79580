"""Basic properties of the So3krates model: spherical-harmonic normalisation, equivariance of the
Euclidean variables, invariance of the energy (rotation, translation, permutation) with the converted
SO3LR weights, float32 vs float64, batching, charge conservation, config round trips, TorchScript."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from so3krates.potential.nn.basis import RadialBasis, CutoffFunction, spherical_harmonics
from so3krates.potential.config import So3kratesConfig
from so3krates.potential.convert import config_from_hyperparameters, load_so3lr
from so3krates.potential.model import So3krates

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "so3lr"


def _nl(pos: torch.Tensor, cutoff: float):
    """Every pair (i < j) closer than cutoff of an open molecule, once (small systems only)."""
    n = pos.shape[0]
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    keep = (i < j) & ((pos[j] - pos[i]).norm(dim=-1) < cutoff)
    return i[keep], j[keep]


def _run(model, pos, z, charge=0.0, lr_cutoff=12.0, spin=0.0):
    """Energy (eV) and autograd forces (eV/Å) of one open molecule; returns the model outputs too."""
    pos = pos.detach().clone().requires_grad_(True)
    ii, jj = _nl(pos.detach(), model.cutoff)
    il, jl = _nl(pos.detach(), lr_cutoff)
    n = z.shape[0]
    dt = pos.dtype
    out = model(pos, z, pos[jj] - pos[ii], ii, jj, pos[jl] - pos[il], il, jl,
                torch.zeros(n, dtype=torch.long), 1, torch.tensor([charge], dtype=dt),
                torch.tensor([spin], dtype=dt), torch.zeros(1, 3, 3, dtype=dt), torch.zeros(1, 3, dtype=torch.bool))
    e = out["atomic_energies"].sum()
    g = torch.autograd.grad(e, pos, allow_unused=True)[0]
    return e.detach(), -g if g is not None else torch.zeros_like(pos), out


def _random_rotation(seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@pytest.fixture(scope="module")
def molecule():
    from ase.build import molecule as ase_molecule
    atoms = ase_molecule("CH3CH2OH")  # ethanol, H C O
    atoms += ase_molecule("H2O")
    atoms.positions[-3:] += np.array([2.6, 1.2, 0.8])
    return torch.tensor(atoms.positions, dtype=torch.float64), torch.tensor(atoms.numbers, dtype=torch.long)


@pytest.fixture(scope="module")
def so3lr(so3lr_model):
    return so3lr_model


# ------------------------------------------------------------------------------------------ basis
def test_spherical_harmonics_orthonormal():
    # Gauss-Legendre in cos(theta) x uniform phi: exact for the degree <= 8 products here
    ct, wt = np.polynomial.legendre.leggauss(12)
    phi = np.arange(24) * 2 * np.pi / 24
    c, p = np.meshgrid(ct, phi, indexing="ij")
    s = np.sqrt(1 - c ** 2)
    u = torch.tensor(np.stack([s * np.cos(p), s * np.sin(p), c], -1).reshape(-1, 3))
    w = torch.tensor((wt[:, None] * np.full(24, 2 * np.pi / 24)[None, :]).reshape(-1))
    y = spherical_harmonics(u, [0, 1, 2, 3, 4])  # [M, 25]
    gram = torch.einsum("m,ma,mb->ab", w, y, y)
    torch.testing.assert_close(gram, torch.eye(25, dtype=torch.float64), atol=1e-12, rtol=0)
    # mlff ordering and sign convention: l=1 is sqrt(3/4pi) (y, z, x)
    v = torch.tensor([[0.48, -0.6, 0.64]], dtype=torch.float64)
    torch.testing.assert_close(spherical_harmonics(v, [1])[0], math.sqrt(3 / (4 * math.pi)) * v[0, [1, 2, 0]])


def test_radial_basis_and_cutoff():
    r = torch.linspace(0.0, 5.0, 51, dtype=torch.float64)
    b = RadialBasis("bernstein", 32, 4.5)(r)
    assert b.shape == (51, 32) and torch.isfinite(b).all() and (b[0] == 0).all()
    x = torch.exp(-0.9448630629184640 * r[10])  # Bernstein polynomials sum to 1
    assert abs(b[10].sum().item() - 1.0) < 1e-12 and x < 1
    for name in ("phys", "cosine", "exponential", "polynomial"):
        f = CutoffFunction(name, 4.5)(r)
        assert abs(f[0].item() - 1.0) < 1e-12 and (f[r >= 4.5] == 0).all() and (f >= 0).all()
    rr = torch.tensor([0.0, 1.0, 4.5], dtype=torch.float64, requires_grad=True)
    RadialBasis("bernstein", 32, 4.5)(rr).sum().backward()
    assert torch.isfinite(rr.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_radial_basis_has_no_denormal_values(dtype):
    """SO3LR's 32 Bernstein functions reach k log x ~ -700 near the cutoff: computed, those values are
    denormal floats in float32, which make the exp and the filter product that reads them several times
    slower (docs/model.md, "Denormal numbers"). Values below exp(-60) are exactly zero; the rest is unchanged."""
    r = torch.linspace(0.01, 12.0, 4001, dtype=dtype)
    b = RadialBasis("bernstein", 32, 4.5)(r)
    tiny = torch.finfo(dtype).tiny
    assert not ((b != 0) & (b.abs() < tiny)).any()
    assert not ((b != 0) & (b.abs() < math.exp(-60.0) * 0.999)).any()
    # above the threshold: the plain formula exp(log C(n-1, k) + k log x + (n-1-k) log(1-x))
    x = torch.exp(-RadialBasis("bernstein", 32, 4.5).gamma * r.double()).unsqueeze(1)
    k = torch.arange(32, dtype=torch.float64)
    logc = torch.lgamma(torch.tensor(32.0, dtype=torch.float64)) - torch.lgamma(k + 1) - torch.lgamma(32 - k)
    ref = torch.exp(logc + k * torch.log(x) + (31 - k) * torch.log1p(-x))
    big = ref > 1e-20
    torch.testing.assert_close(b.double()[big], ref[big], rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=0)
    assert big.any() and (~big).any()


# ------------------------------------------------------------------------------------ symmetries
def _wigner_from_harmonics(rot: torch.Tensor, l: int) -> torch.Tensor:
    """D_l(R) with Y_l(R u) = D_l Y_l(u), fitted on random directions."""
    g = torch.Generator().manual_seed(l)
    u = torch.nn.functional.normalize(torch.randn(200, 3, generator=g, dtype=torch.float64), dim=-1)
    a = spherical_harmonics(u, [l])
    b = spherical_harmonics(u @ rot.T, [l])
    return torch.linalg.lstsq(a, b).solution.T


def test_euclidean_variables_equivariant(so3lr, molecule):
    pos, z = molecule
    rot = _random_rotation(1)

    def rep(p):
        """The features after the last layer (the model's own stages)."""
        ii, jj = _nl(p, so3lr.cutoff)
        n = z.shape[0]
        b = torch.zeros(n, dtype=torch.long)
        zero = torch.zeros(1, dtype=p.dtype)
        x = so3lr.embed(z, zero, zero, b, 1, None)
        ev = torch.zeros(n, so3lr.m_tot, dtype=p.dtype)
        for k in range(so3lr.num_layers):
            att = so3lr.messages(k, x, ev, p[jj] - p[ii], ii, jj, 0)
            x, ev = so3lr.update(k, x, ev, att[0], att[1], p, b, 1, torch.zeros(1, 3, 3, dtype=p.dtype),
                                 torch.zeros(1, 3, dtype=torch.bool), None)
        return x, ev

    with torch.no_grad():
        x0, ev0 = rep(pos)
        x1, ev1 = rep(pos @ rot.T + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(x1, x0, atol=1e-9, rtol=1e-9)
    o = 0
    for l in so3lr.degrees:
        d = _wigner_from_harmonics(rot, l)
        torch.testing.assert_close(d @ d.T, torch.eye(2 * l + 1, dtype=torch.float64), atol=1e-10, rtol=0)
        torch.testing.assert_close(ev1[:, o:o + 2 * l + 1], ev0[:, o:o + 2 * l + 1] @ d.T, atol=1e-9, rtol=1e-9)
        o += 2 * l + 1
    assert ev0.abs().max() > 1e-3  # non-trivial


def test_energy_invariance_and_force_equivariance(so3lr, molecule):
    pos, z = molecule
    e0, f0, _ = _run(so3lr, pos, z)
    rot = _random_rotation(7)
    e1, f1, _ = _run(so3lr, pos @ rot.T + torch.tensor([10.0, -3.0, 5.5], dtype=torch.float64), z)
    assert abs(e1 - e0) < 1e-9
    torch.testing.assert_close(f1, f0 @ rot.T, atol=1e-9, rtol=0)
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(3))
    e2, f2, _ = _run(so3lr, pos[perm], z[perm])
    assert abs(e2 - e0) < 1e-9
    torch.testing.assert_close(f2, f0[perm], atol=1e-9, rtol=0)
    assert f0.abs().sum(0).max() > 1e-3 and f0.sum(0).abs().max() < 1e-9  # non-trivial, momentum conserved


def test_float32_close_to_float64(molecule):
    pos, z = molecule
    m64 = load_so3lr(REF / "params.pkl", dtype=torch.float64)
    m32 = load_so3lr(REF / "params.pkl", dtype=torch.float32)
    e64, f64, _ = _run(m64, pos, z)
    e32, f32, _ = _run(m32, pos.float(), z)
    assert e32.dtype == torch.float32 and f32.dtype == torch.float32
    # measured: |dE| ~ 1.3e-7 |E|, max |dF| ~ 6e-7 max |F| (ethanol + water, E = -16.5 eV)
    assert abs(e32.item() - e64.item()) <= 1e-6 * abs(e64.item())
    assert float((f32.double() - f64).abs().max()) <= 1e-5 * float(f64.abs().max()) + 3e-5


@pytest.mark.parametrize("system", ["molecule", "molecule_far", "water_box"])
def test_float32_potential_close_to_float64(molecule, system):
    """So3kratesPotential (eval: memory-lean pass, float64 edge vectors when positions come in float64):
    float32 within ~1e-6 relative in energy and ~1e-5 of max |F| (+ a small absolute floor from the
    float32 sums over ~700 long-range pairs per atom) of float64, also 1000 Å from the origin."""
    from so3krates.potential.potential import So3kratesPotential
    if system == "water_box":
        pos, z, cell = _water(3)
        pbc = torch.ones(3, dtype=torch.bool)
    else:
        pos, z = molecule
        if system == "molecule_far":
            pos = pos + 1000.0  # float32 coordinates would lose ~6e-5 Å here; edge vectors are formed in float64
        cell = torch.zeros(3, 3, dtype=torch.float64)
        pbc = torch.zeros(3, dtype=torch.bool)
    out = {}
    for dt in (torch.float64, torch.float32):
        pot = So3kratesPotential(load_so3lr(REF / "params.pkl", dtype=dt)).eval()
        out[dt] = pot(pos, z, cell, pbc, compute_stress=system == "water_box")
    a, b = out[torch.float64], out[torch.float32]
    assert b["energy"].dtype == torch.float32 and b["forces"].dtype == torch.float32
    e = float(a["energy"])
    # measured: molecule 1.3e-7 |E| and 9e-6 eV/Å (max |F| 9.9); water 3.6e-7 |E|, 1.2e-5 eV/Å
    assert abs(float(b["energy"]) - e) <= 1e-6 * abs(e)
    f_err = float((b["forces"].double() - a["forces"]).abs().max())
    assert f_err <= 1e-5 * float(a["forces"].abs().max()) + 3e-5, f_err
    if system == "water_box":
        assert float((b["stress"].double() - a["stress"]).abs().max()) <= 1e-5 * float(a["stress"].abs().max()) + 1e-6


def test_dtype_round_trip_keeps_constants_exact(molecule):
    """float32 -> float64 (train in float32, evaluate in float64) gives the same model as one built in
    float64: the basis/grid constants are rebuilt from float64 originals, not up-cast from float32."""
    torch.manual_seed(0)
    pos, z = molecule
    cfg = So3kratesConfig(num_features=32, num_layers=2, num_heads=2, degrees=[1, 2], num_radial_basis_fn=8,
                          efa_layers=[False, True])
    model = So3krates(cfg)
    direct = So3krates(cfg).double()
    direct.load_state_dict(model.state_dict())
    round_trip = model.float().double()
    for (name, a), (_, b) in zip(direct.named_buffers(), round_trip.named_buffers()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    e_a, f_a, _ = _run(direct, pos, z)
    e_b, f_b, _ = _run(round_trip, pos, z)
    assert e_a.item() == e_b.item()
    assert torch.equal(f_a, f_b)
    scripted = torch.jit.script(round_trip)  # the float64 originals stay out of the TorchScript file
    assert not hasattr(scripted, "_exact_constants")


def test_batch_equals_separate_and_charge_conservation(so3lr, molecule):
    pos, z = molecule
    n = z.shape[0]
    e_a, _, out_a = _run(so3lr, pos, z, charge=1.0)
    e_b, _, _ = _run(so3lr, pos[:4], z[:4], charge=0.0)
    assert abs(out_a["partial_charges"].sum().item() - 1.0) < 1e-10
    e_neutral, _, _ = _run(so3lr, pos, z, charge=0.0)
    assert abs(e_a - e_neutral) > 1e-3  # the charge embedding acts
    # both graphs in one batch (second shifted far away)
    p2 = torch.cat([pos, pos[:4] + 100.0])
    z2 = torch.cat([z, z[:4]])
    batch = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(4, dtype=torch.long)])
    ii, jj = _nl(p2, so3lr.cutoff)
    il, jl = _nl(p2, 12.0)
    out = so3lr(p2, z2, p2[jj] - p2[ii], ii, jj, p2[jl] - p2[il], il, jl, batch, 2,
                torch.tensor([1.0, 0.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                torch.zeros(2, 3, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.bool))
    e = torch.zeros(2, dtype=torch.float64).index_add(0, batch, out["atomic_energies"].detach())
    assert abs(e[0] - e_a) < 1e-9 and abs(e[1] - e_b) < 1e-9
    q = torch.zeros(2, dtype=torch.float64).index_add(0, batch, out["partial_charges"].detach())
    torch.testing.assert_close(q, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------------- config / misc
def test_config_roundtrip_and_presets():
    for cfg in (So3kratesConfig.so3lr(), So3kratesConfig.nature_comms(), So3kratesConfig()):
        again = So3kratesConfig.from_dict(cfg.to_dict())
        assert again == cfg
    c = So3kratesConfig.so3lr()
    assert (c.num_features, c.num_layers, c.num_heads, c.degrees, c.cutoff, c.cutoff_fn) == \
        (128, 3, 4, [1, 2, 3, 4], 4.5, "phys")
    assert c.cutoff_lr == 12.0 and c.dispersion_energy_cutoff_lr_damping == 2.0
    nc = So3kratesConfig.nature_comms()
    assert (nc.num_features, nc.num_layers, nc.degrees, nc.cutoff_fn, nc.cutoff) == (132, 3, [1, 2, 3], "cosine", 5.0)
    with pytest.raises(ValueError, match="unknown So3kratesConfig keys"):
        So3kratesConfig.from_dict({"num_featurez": 3})
    with pytest.raises(ValueError, match="avg_num_neighbors"):
        So3kratesConfig(message_normalization="avg_num_neighbors")


def test_so3lr_preset_matches_published_hyperparameters():
    assert (REF / "hyperparameters.yaml").is_file()
    from_file = config_from_hyperparameters(REF / "hyperparameters.yaml", cutoff_lr=12.0, dispersion_damping=2.0)
    assert from_file == So3kratesConfig.so3lr()


def test_nature_comms_model_scripts_and_is_invariant(molecule):
    torch.manual_seed(0)
    pos, z = molecule
    model = So3krates(So3kratesConfig.nature_comms()).double()
    scripted = torch.jit.script(model)
    e0, f0, _ = _run(scripted, pos, z)
    e1, f1, _ = _run(model, pos @ _random_rotation(2).T, z)
    assert abs(e0 - e1) < 1e-9
    assert torch.isfinite(f0).all()


def test_efa_layer_option_runs(molecule):
    torch.manual_seed(0)
    pos, z = molecule
    cfg = So3kratesConfig(num_features=32, num_layers=2, num_heads=2, degrees=[1, 2], num_radial_basis_fn=8,
                          efa_layers=[False, True])
    model = So3krates(cfg).double()
    e, f, _ = _run(torch.jit.script(model), pos, z)
    assert torch.isfinite(f).all()
    assert So3kratesConfig.from_dict(cfg.to_dict()) == cfg


def test_single_atom_without_edges():
    model = So3krates(So3kratesConfig(num_features=16, num_layers=1, num_heads=2, degrees=[1, 2],
                                      num_radial_basis_fn=8)).double()
    e, f, _ = _run(model, torch.zeros(1, 3, dtype=torch.float64), torch.tensor([8]))
    assert torch.isfinite(e) and (f == 0).all()


# ------------------------------------------------------------------ memory-lean inference pass
def _water(n_side=2, seed=0):
    """Small periodic water box (3 n³ atoms), positions Å, cell Å."""
    rng = np.random.default_rng(seed)
    a = (18.015 / 0.60221) ** (1.0 / 3.0)
    mol = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * a
    pos = []
    for g in grid:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        pos.append(g + 0.25 * a + mol @ q.T)
    pos = np.concatenate(pos)
    return torch.tensor(pos), torch.tensor(np.tile([8, 1, 1], len(grid))), torch.eye(3, dtype=torch.float64) * a * n_side


def _graphs(model, pos, cell, pbc):
    from so3krates.potential.graph.neighbors import neighbor_list
    ii, jj, sh = neighbor_list(pos, model.cutoff, cell, pbc, True)
    il, jl, shl = neighbor_list(pos, 12.0, cell, pbc, True) if model.long_range else (ii[:0], jj[:0], sh[:0])
    return ii, jj, sh, il, jl, shl


@pytest.mark.parametrize("which", ["so3lr", "efa_periodic", "efa_open"])
def test_energy_and_gradients_equal_autograd(which, so3lr):
    """So3krates.energy_and_gradients (the stages' explicit backward: layer-wise recomputation in chunks,
    analytic long-range derivatives; with ``keep_bytes`` the filter state of some or all chunks kept from
    the forward) = forward + autograd: energies, charges, forces, cell gradient."""
    pos, z, cell = _water(2)
    pbc = torch.ones(3, dtype=torch.bool)
    if which == "so3lr":
        model = so3lr
    else:
        torch.manual_seed(0)
        cfg = So3kratesConfig(num_features=32, num_layers=2, num_heads=2, degrees=[1, 2], num_radial_basis_fn=8,
                              efa_layers=[True, True])
        model = So3krates(cfg).double().eval()
        if which == "efa_open":
            cell = torch.zeros(3, 3, dtype=torch.float64)
            pbc = torch.zeros(3, dtype=torch.bool)
    n = len(z)
    dt = torch.float64
    args0 = (torch.zeros(n, dtype=torch.long), 1, torch.zeros(1, dtype=dt), torch.zeros(1, dtype=dt))
    ref = None
    for mode in ("autograd", "lean", "lean_script", "lean_keep_geo3", "lean_keep_some", "lean_keep_all_script"):
        ii, jj, sh, il, jl, shl = _graphs(model, pos, cell, pbc)
        p = pos.clone().requires_grad_(True)
        c = cell.clone().requires_grad_(True)
        ev = p[jj] - p[ii] + sh @ c
        evl = p[jl] - p[il] + shl @ c
        args = (p, z, ev, ii, jj, evl, il, jl, *args0, c[None], pbc[None])
        if mode == "autograd":
            out = model(*args)
            e = out["atomic_energies"].sum()
            g = torch.autograd.grad(e, [p, c], allow_unused=True)
            res = (out["atomic_energies"].detach(), g[0], g[1])
            ref = res
            charges = out.get("partial_charges")
            continue
        m = torch.jit.script(model) if mode.endswith("_script") else model
        # chunks of 50 pairs (~10 here); "keep_geo3": the geometry of 3 chunks shared by all layers, the rest
        # recomputed; "keep_some": the geometry of all chunks and the filter state of a few in layer 0 (kept
        # and recomputed chunks mixed in one layer's backward); "keep_all": everything kept
        geo_bytes = 50 * (model.radial_basis.num_basis + model.m_tot + 1) * 8
        keep = {"lean_keep_geo3": 3 * geo_bytes + 1, "lean_keep_some": 5 * 50 * (9 * model.num_features // 2) * 8,
                "lean_keep_all_script": 1 << 40}
        out, grads = m.energy_and_gradients(*args, 50, keep.get(mode, 0))
        assert not out["atomic_energies"].requires_grad
        g = torch.autograd.grad([ev, evl, p, c], [p, c], grad_outputs=[grads[0], grads[1], grads[2], grads[3][0]],
                                allow_unused=True)
        res = (out["atomic_energies"], g[0], g[1])
        if charges is not None:
            torch.testing.assert_close(out["partial_charges"], charges.detach(), rtol=1e-12, atol=1e-13)
        for a, b, what in zip(ref, res, ("atomic energies", "dE/dpositions", "dE/dcell")):
            if a is None:
                assert b is None or float(b.abs().max()) < 1e-12, what
                continue
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-11 * max(1.0, float(a.abs().max())), msg=what)
    assert float(ref[1].abs().max()) > 1e-3


@pytest.mark.parametrize("pairs", [0, 7])
def test_segment_sums_match_the_segment_matrix(pairs):
    """The attention's per-head sums (a reshape and an inner sum) and their transpose (a broadcast product)
    equal the products with the [S * size, S] 0/1 segment matrix they replace, also without pairs."""
    from potential.nn.attention import segment_expand_mul, segment_sum
    torch.manual_seed(0)
    nseg, size, scale = 4, 5, 0.3
    seg = torch.zeros(nseg * size, nseg, dtype=torch.float64)
    for s in range(nseg):
        seg[s * size:(s + 1) * size, s] = scale
    x = torch.randn(pairs, nseg * size, dtype=torch.float64)
    g = torch.randn(pairs, nseg, dtype=torch.float64)
    torch.testing.assert_close(segment_sum(x, nseg, scale), x @ seg, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(segment_expand_mul(g, x, scale), (g @ seg.t()) * x, rtol=1e-14, atol=1e-14)
    assert segment_sum(x, nseg, scale).shape == (pairs, nseg)
