"""Basic properties of the So3krates model: spherical-harmonic normalisation, equivariance of the
Euclidean variables, invariance of the energy (rotation, translation, permutation) with the converted
SO3LR weights, float32 vs float64, batching, charge conservation, config round trips, TorchScript."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from so3krates.potential.basis import RadialBasis, CutoffFunction, spherical_harmonics
from so3krates.potential.config import So3kratesConfig
from so3krates.potential.convert import config_from_hyperparameters, load_so3lr
from so3krates.potential.model import So3krates

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "so3lr"


def _nl(pos: torch.Tensor, cutoff: float):
    """All ordered pairs (i != j) closer than cutoff of an open molecule (small systems only)."""
    n = pos.shape[0]
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    keep = (i != j) & ((pos[j] - pos[i]).norm(dim=-1) < cutoff)
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
    f = -torch.autograd.grad(e, pos)[0]
    return e.detach(), f, out


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
def so3lr():
    assert (REF / "params.pkl").is_file(), f"SO3LR reference weights missing: {REF / 'params.pkl'}"
    return load_so3lr(REF / "params.pkl", dtype=torch.float64)


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
        ii, jj = _nl(p, so3lr.cutoff)
        n = z.shape[0]
        x, ev, _, _ = so3lr.representation(p, z, p[jj] - p[ii], ii, jj, torch.zeros(n, dtype=torch.long), 1,
                                           torch.zeros(1, dtype=p.dtype), torch.zeros(1, dtype=p.dtype),
                                           torch.zeros(1, 3, 3, dtype=p.dtype), torch.zeros(1, 3, dtype=torch.bool))
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
    assert abs(e32.item() - e64.item()) < 1e-6 * abs(e64.item()) + 1e-4
    torch.testing.assert_close(f32.double(), f64, atol=1e-3, rtol=0)


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


def test_engine_mode_global_sums_two_ranks(so3lr, molecule):
    """Owned/ghost split as LAMMPS does it: per-rank partial sums, combined, give the exact energy."""
    pos, z = molecule
    n = z.shape[0]
    e_ref, _, out_ref = _run(so3lr, pos, z)
    owned_sets = [torch.arange(0, 5), torch.arange(5, n)]
    dt = pos.dtype

    def rank_inputs(owned):
        ghosts = torch.tensor([k for k in range(n) if k not in set(owned.tolist())], dtype=torch.long)
        order = torch.cat([owned, ghosts])
        p, zz = pos[order], z[order]
        ii, jj = _nl(p, 12.0)
        return p, zz, ii, jj, len(owned)

    def args(p, zz, ii, jj):
        vec = p[jj] - p[ii]
        loc = vec.norm(dim=-1) < so3lr.cutoff
        return vec[loc], ii[loc], jj[loc], vec, ii, jj

    zero1 = torch.zeros(1, dtype=dt)
    partials = []
    for owned in owned_sets:
        p, zz, ii, jj, nloc = rank_inputs(owned)
        v, i, j, _, _, _ = args(p, zz, ii, jj)
        partials.append(so3lr.global_partials(p, zz, v, i, j, torch.zeros(len(zz), dtype=torch.long), 1,
                                              zero1, zero1, nloc))
    sums = partials[0] + partials[1]
    assert sums.shape == (1, so3lr.num_globals) and abs(sums[0, 1].item() - n) < 1e-12
    e_total = 0.0
    for owned in owned_sets:
        p, zz, ii, jj, nloc = rank_inputs(owned)
        with torch.no_grad():
            out = so3lr(p, zz, *args(p, zz, ii, jj), torch.zeros(len(zz), dtype=torch.long), 1, zero1, zero1,
                        torch.zeros(1, 3, 3, dtype=dt), torch.zeros(1, 3, dtype=torch.bool), nloc, sums)
        e_total += out["atomic_energies"][:nloc].sum().item()
    assert abs(e_total - e_ref.item()) < 1e-9
