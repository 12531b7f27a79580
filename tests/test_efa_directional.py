"""Direction-dependent EFA queries/keys (``efa_qk_degrees``, issue 17; docs/efa.md).

Without them the EFA kernel ``Σ_m w_m q_i(u_m)·k_j(u_m)`` depends on |r_j − r_i| only (q, k linear in
invariant features); with ``efa_qk_degrees = L`` the queries/keys get a term ``Σ_l s_i^l(u_m)·a^l(h_i)``,
``s_i^l(u) = Σ_μ ev_i^{lμ} Y_lμ(u)`` from the layer's input Euclidean variables, so the kernel also sees
the orientation of the two atoms' environments.

Tolerances: everything exact in exact arithmetic (translations, permutations, default-off identity,
TorchScript, staged evaluation) at 1e-10 in float64 or exactly; rotations at the Lebedev accuracy,
checked two ways: the 50-point kernel against a 974-point quadrature of the same sphere average
(``test_kernel_quadrature_accuracy``, ≤ 1e-8 relative), and the model energy/forces under rotations at 10·ε·|E| /
100·ε with ε = kernel_quadrature_error(50, π) ≈ 5e-7, as for the plain EFA in tests/test_efa.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from so3krates.potential.nn import lebedev

from test_efa import (F64, _efa_model, _energy_forces, _model_config, _open_structure, _potential,
                      _rotation, _without_efa)

L = 2  # efa_qk_degrees of the tests (model degrees [1, 2])


def _dir_model(seed=0, dtype=F64, **kw):
    return _efa_model(seed=seed, dtype=dtype, efa_qk_degrees=L, **kw)


def _graph(pos, cutoff=3.0):
    from so3krates.potential.graph.neighbors import neighbor_list
    i, j, _ = neighbor_list(pos, cutoff, torch.zeros(3, 3, dtype=pos.dtype), torch.zeros(3, dtype=torch.bool), True)
    return pos[j] - pos[i], i, j


def _layer1_inputs(model, pos, z):
    """Invariant features x and Euclidean variables ev at the input of layer 1 (after layer 0)."""
    n = pos.shape[0]
    b = torch.zeros(n, dtype=torch.long)
    vec, i, j = _graph(pos, model.cutoff)
    q0 = torch.zeros(1, dtype=pos.dtype)
    x = model.embed(z, q0, q0, b, 1, None)
    ev = torch.zeros(n, model.m_tot, dtype=pos.dtype)
    xa, eva = model.messages(0, x, ev, vec, i, j, -1)
    cell, pbc = torch.zeros(1, 3, 3, dtype=pos.dtype), torch.zeros(1, 3, dtype=torch.bool)
    return model.update(0, x, ev, xa, eva, pos, b, 1, cell, pbc, None)


def _cumulene(n_c=9, twist_deg=0.0):
    """H2C=(C=)n−2CH2 along z (C=C 1.30 Å, C–H 1.09 Å, H–C–H 117°); the last CH2 twisted about z."""
    cc, ch, half = 1.30, 1.09, math.radians(117.0 / 2)
    c = [[0.0, 0.0, k * cc] for k in range(n_c)]
    zmax = (n_c - 1) * cc
    t = math.radians(twist_deg)
    hs = []
    for s in (1, -1):
        hs.append([s * ch * math.sin(half), 0.0, -ch * math.cos(half)])
    for s in (1, -1):
        x = s * ch * math.sin(half)
        hs.append([x * math.cos(t), x * math.sin(t), zmax + ch * math.cos(half)])
    pos = torch.tensor(c + hs, dtype=F64)
    z = torch.tensor([6] * n_c + [1] * 4)
    return pos - pos.mean(0), z


# ------------------------------------------------------------------------------------ default off
def test_default_off_is_bit_identical():
    """efa_qk_degrees = 0 (the default): same parameters, same state dict, bit-identical energies and
    forces, and nothing directional created."""
    from so3krates.potential.config import So3kratesConfig
    from so3krates.potential.model import So3krates
    assert So3kratesConfig().efa_qk_degrees == 0
    cfg = _model_config()
    d = cfg.to_dict()
    d.pop("efa_qk_degrees")
    torch.manual_seed(0)
    a = So3krates(So3kratesConfig.from_dict(d)).double().eval()  # a config written before the key existed
    torch.manual_seed(0)
    b = So3krates(_model_config(efa_qk_degrees=0)).double().eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any("q_dir" in k or "k_dir" in k for k in sa)
    pos, z, cell, pbc = _open_structure()
    with torch.no_grad():
        for m in (a, b):
            for p in m.parameters():
                p.copy_(torch.sin(1e3 * torch.arange(p.numel(), dtype=F64)).reshape(p.shape) * 0.3)
    ra = _energy_forces(_potential(a), pos, z, cell, pbc)
    rb = _energy_forces(_potential(b), pos, z, cell, pbc)
    assert torch.equal(ra["energy"], rb["energy"]) and torch.equal(ra["forces"], rb["forces"])


def test_config_checks_and_periodic_refused():
    """efa_qk_degrees needs the model's degrees 1..L; periodic structures are refused with an error that
    names the option (the reciprocal-lattice EFA has no directional variant)."""
    from helpers import random_periodic
    with pytest.raises(ValueError, match="efa_qk_degrees"):
        _model_config(efa_qk_degrees=3)  # degrees [1, 2]
    with pytest.raises(ValueError, match="efa_qk_degrees"):
        _model_config(efa_qk_degrees=-1)
    model = _dir_model()
    assert model.layers[0].efa.efa.qk_degrees == 0 and model.layers[1].efa.efa.qk_degrees == L
    pos, z, cell = random_periodic(12, seed=2)
    # (enable_grad restores grad mode afterwards: the lean pass raises with grad mode switched off)
    with torch.enable_grad(), pytest.raises(ValueError, match="efa_qk_degrees"):
        _potential(model)(torch.tensor(pos), torch.tensor(z), torch.tensor(cell), torch.ones(3, dtype=torch.bool))
    assert torch.is_grad_enabled()


# ------------------------------------------------------------------------------------ symmetries
def test_kernel_quadrature_accuracy():
    """The 50-point kernel of layer 1 equals the 974-point quadrature of the same sphere average to
    ≤ 1e-8 of the kernel scale (measured 6e-10, plain EFA 1e-10: the directional terms raise the
    integrand's degree by ≤ 2L), and a joint rotation of positions and Euclidean variables leaves it
    unchanged to the same accuracy."""
    from so3krates.potential.nn.efa import EuclideanFastAttention
    model = _dir_model()
    pos, z, _, _ = _open_structure()
    x, ev = _layer1_inputs(model, pos, z)
    efa = model.layers[1].efa.efa
    fine = EuclideanFastAttention(efa.num_features, efa.num_heads, efa.num_heads * efa.d_qk, efa.num_heads * efa.d_v,
                                  grid=974, max_frequency=efa.max_frequency, max_length=efa.max_length,
                                  qk_activation=efa.qk_activation, qk_degrees=L, env_degrees=[1, 2]).double()
    fine.load_state_dict({k: v for k, v in efa.state_dict().items() if not k.startswith("grid_")}, strict=False)
    with torch.no_grad():
        k50 = efa.kernel_matrix(x, pos, ev)
        k974 = fine.kernel_matrix(x, pos, ev)
    scale = float(k974.abs().max())
    assert scale > 1e-3
    assert float((k50 - k974).abs().max()) <= 1e-8 * scale, float((k50 - k974).abs().max()) / scale
    # joint rotation: ev rotates with the structure (features recomputed from the rotated positions)
    r = _rotation(4)
    xr, evr = _layer1_inputs(model, pos @ r.T, z)
    with torch.no_grad():
        kr = efa.kernel_matrix(xr, pos @ r.T, evr)
    assert float((kr - k50).abs().max()) <= 1e-8 * scale


def test_model_invariances():
    """Rotations (Lebedev accuracy, as the plain EFA), translations and permutations (exact); the
    directional part contributes (energy differs from the same weights without it)."""
    model = _dir_model()
    pos, z, cell, pbc = _open_structure()
    pot = _potential(model)
    ref = _energy_forces(pot, pos, z, cell, pbc)
    e0, f0 = float(ref["energy"]), ref["forces"]
    plain = _efa_model()  # same seed: same weights except the directional ones
    plain.load_state_dict(model.state_dict(), strict=False)
    assert abs(float(_energy_forces(_potential(plain), pos, z, cell, pbc)["energy"]) - e0) > 1e-3
    eps = lebedev.kernel_quadrature_error(50, math.pi)
    for s in range(3):
        r = _rotation(s)
        out = _energy_forces(pot, pos @ r.T, z, cell, pbc)
        assert abs(float(out["energy"]) - e0) <= 10 * eps * max(1.0, abs(e0))
        assert float((out["forces"] - f0 @ r.T).abs().max()) <= 100 * eps
    out = _energy_forces(pot, pos + torch.tensor([3.1, -7.2, 0.4], dtype=F64), z, cell, pbc)
    assert abs(float(out["energy"]) - e0) < 1e-10 and float((out["forces"] - f0).abs().max()) < 1e-9
    perm = torch.randperm(pos.shape[0], generator=torch.Generator().manual_seed(7))
    out = _energy_forces(pot, pos[perm], z[perm], cell, pbc)
    assert abs(float(out["energy"]) - e0) < 1e-10 and float((out["forces"] - f0[perm]).abs().max()) < 1e-9


def test_forces_are_minus_energy_gradient():
    """float64 forces (memory-lean pass and autograd training path) against central differences."""
    model = _dir_model()
    pos, z, cell, pbc = _open_structure()
    pot = _potential(model)
    out = _energy_forces(pot, pos, z, cell, pbc)
    t = _potential(model).train()(pos, z, cell, pbc, compute_forces=True)
    assert float((t["forces"].detach() - out["forces"]).abs().max()) < 1e-10
    h = 1e-5
    energy = lambda p: float(pot(p, z, cell, pbc, compute_forces=False)["energy"].detach())
    g = torch.Generator().manual_seed(2)
    for i, d in zip(torch.randint(0, pos.shape[0], (6,), generator=g).tolist(), [0, 1, 2, 0, 1, 2]):
        dp = torch.zeros_like(pos)
        dp[i, d] = h
        fd = -(energy(pos + dp) - energy(pos - dp)) / (2 * h)
        assert abs(fd - float(out["forces"][i, d])) < 1e-7, (i, d, fd, float(out["forces"][i, d]))


# ------------------------------------------------------------------------------------ what it sees
def test_twisted_cumulene_end():
    """C9H4, 10.4 Å long: twisting one CH2 about the chain axis leaves every distance from the on-axis
    carbons unchanged. A local model (cutoff 3 Å, 2 layers: receptive field 6 Å) gives exactly the same
    energy; the plain EFA kernel between the two terminal carbons is exactly unchanged (it depends on
    their distance only); the directional kernel between them changes, and the energy changes far more
    than with the plain EFA (same weights otherwise)."""
    model = _dir_model()
    p0, z = _cumulene(9, 0.0)
    p1, _ = _cumulene(9, 90.0)
    cell, pbc = torch.zeros(3, 3, dtype=F64), torch.zeros(3, dtype=torch.bool)
    local = _without_efa(model)
    e = lambda m, p: float(_energy_forces(_potential(m), p, z, cell, pbc)["energy"])
    assert abs(e(local, p1) - e(local, p0)) < 1e-10  # the local part cannot see the twist
    plain = _efa_model()
    plain.load_state_dict(model.state_dict(), strict=False)
    # the plain EFA sees the twist only through the small change of the H···H distances (~1e-6 eV here);
    # the directional one through the orientation of the end groups (~60x more at these weights)
    d_dir, d_plain = abs(e(model, p1) - e(model, p0)), abs(e(plain, p1) - e(plain, p0))
    assert d_dir > 1e-5 and d_dir > 10 * d_plain, (d_dir, d_plain)
    a, b = 0, 8  # terminal carbons (on the axis, 10.4 Å apart)
    kern = {}
    for name, m in (("plain", plain), ("dir", model)):
        efa = m.layers[1].efa.efa
        with torch.no_grad():
            x0, ev0 = _layer1_inputs(m, p0, z)
            x1, ev1 = _layer1_inputs(m, p1, z)
            assert float((x1[:8] - x0[:8]).abs().max()) < 1e-10  # invariant inputs of the carbons unchanged
            kern[name] = (efa.kernel_matrix(x0, p0, ev0)[:, a, b], efa.kernel_matrix(x1, p1, ev1)[:, a, b])
    k0, k1 = kern["plain"]
    assert float((k1 - k0).abs().max()) < 1e-12
    k0, k1 = kern["dir"]
    assert float((k1 - k0).abs().max()) > 1e-3 * float(k0.abs().max())


# ------------------------------------------------------------------------------------ engines
def test_staged_sums_equal_forward():
    """The engines' two-stage form (per-atom key-value sums, added over ranks, then the update) gives
    the model's forward: model.efa_global_sums, and the EFA module with sums over 3 'ranks'. The stage
    without the Euclidean variables (efa_sums) refuses a directional model by name."""
    model = _dir_model()
    pos, z, cell, pbc = _open_structure()
    vec, i, j = _graph(pos, model.cutoff)
    n = pos.shape[0]
    b = torch.zeros(n, dtype=torch.long)
    args = (pos, z, vec, i, j, vec[:0], i[:0], j[:0], b, 1, torch.zeros(1, dtype=F64), torch.zeros(1, dtype=F64),
            cell.unsqueeze(0), pbc.unsqueeze(0))
    e_ref = model(*args)["atomic_energies"]
    model.efa_global_sums = True
    e_sums = model(*args)["atomic_energies"]
    model.efa_global_sums = False
    assert float((e_sums - e_ref).detach().abs().max()) < 1e-10
    x, ev = _layer1_inputs(model, pos, z)
    efa = model.layers[1].efa.efa
    owner = torch.arange(n) % 3
    kv = sum(efa.global_sums(x, pos, (owner == r).to(F64), None, ev) for r in range(3))
    ref = efa(x, pos, b, 1, cell.unsqueeze(0), pbc.unsqueeze(0), ev)
    assert float((efa.apply_global_sums(x, pos, kv, None, ev) - ref).abs().max()) < 1e-12
    with torch.enable_grad(), pytest.raises(ValueError, match="efa_qk_degrees"):
        model.efa_sums(1, x, pos, cell, pbc)


def test_torchscript_export_equals_eager(tmp_path):
    """The exported TorchScript file (export_potential) = the eager model (energy, forces)."""
    from test_export import _eval

    from so3krates.export.exporter import export_potential
    from so3krates.export.loader import load_exported
    from so3krates.potential.potential import So3kratesPotential
    model = _dir_model()
    pos, z, _, _ = _open_structure()
    pot = So3kratesPotential(model).eval()
    export_potential(pot, tmp_path / "m.pt", dtype="float64")
    module, meta = load_exported(tmp_path / "m.pt")
    a = _eval(pot, pos.numpy(), z.numpy())
    b = _eval(module, pos.numpy(), z.numpy())
    assert abs(float(a["energy"]) - float(b["energy"])) < 1e-12 * max(1.0, abs(float(a["energy"])))
    assert float((a["forces"] - b["forces"]).abs().max()) < 1e-12


def test_engine_stages_equal_forward(tmp_path):
    """The exported file's engine stages, driven as LAMMPS drives them (export/engine_reference.py:
    simulated ranks, halo exchange, EFA key-value sums added over ranks; the efa_sums stage reads the
    ev part of the feature rows, and its gradient flows back through ev) = the file's forward, on 1
    and 3 ranks. (LAMMPS itself: tests/test_lammps.py::test_efa_directional_open_box_matches_ase.)"""
    from so3krates.export import engine_reference
    from so3krates.export.exporter import export_potential
    from so3krates.export.loader import load_exported
    from so3krates.potential.potential import So3kratesPotential

    model = _dir_model()
    pos, z, _, _ = _open_structure(n=12, seed=5)
    export_potential(So3kratesPotential(model).eval(), tmp_path / "m.pt", dtype="float64")
    module, _ = load_exported(tmp_path / "m.pt")
    cell, pbc = np.zeros((3, 3)), np.array([False] * 3)
    ref = module(pos, z, torch.zeros(3, 3, dtype=F64), torch.zeros(3, dtype=torch.bool), 0.0, 0.0, True, False)
    for nranks in (1, 3):
        out = engine_reference.evaluate(module, pos.numpy(), z.numpy(), cell, pbc, nranks, chunk=11)
        assert abs(out["energy"] - float(ref["energy"])) <= 1e-10 * max(1.0, abs(float(ref["energy"])))
        assert np.abs(out["forces"] - ref["forces"].detach().numpy()).max() <= 1e-10
