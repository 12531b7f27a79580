"""Tests for Euclidean fast attention (potential/efa.py) and the Lebedev grids (potential/lebedev.py).

Tolerances
----------
* Lebedev grids: every monomial of degree <= D is integrated to <= 1e-13 (float64 rounding); the
  first even degree above D is not (> 1e-12), so D is the maximal degree.
* Rotation invariance (open systems): with the EFA kernel error ε = kernel_quadrature_error(grid,
  b_max) (≈ 5e-7 … 4e-6, see ``test_kernel_accuracy``), the kernel of a pair with ω r <= b_max
  deviates from its exact (rotation-invariant) sphere average by at most ε·|q_i||k_j| (the sine
  part vanishes exactly by the grid's inversion symmetry). The invariant output's tolerance is
  this bound propagated through ``out`` and the readout MLP (``_rotation_bound``).
* Everything that is exact in exact arithmetic (translations, permutations, wrapping, cell origin,
  periodic rotations, O(N²) vs linear form) is checked at 1e-10 in float64.
"""
import io
import math

import pytest
import torch

from so3krates.potential import lebedev
from so3krates.potential.efa import EFABlock, EuclideanFastAttention, PeriodicEuclideanFastAttention

GRIDS = [50, 86, 110, 146, 194, 302]
F64 = torch.float64


def _rotation(seed: int, dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def _system(n=20, f=32, box=5.5, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, f, generator=g, dtype=F64).to(dtype)
    pos = (torch.rand(n, 3, generator=g, dtype=F64) * box).to(dtype)
    return h, pos, torch.zeros(n, dtype=torch.long)


def _efa(grid=86, f=32, heads=2, max_length=10.0, seed=0, **kw):
    torch.manual_seed(seed)
    return EuclideanFastAttention(f, num_heads=heads, grid=grid, max_length=max_length, **kw).double()


# ------------------------------------------------------------------------------------ Lebedev
@pytest.mark.parametrize("num_points", GRIDS)
def test_lebedev_exact_to_degree(num_points):
    u, w = lebedev.lebedev_grid(num_points)
    assert u.shape == (num_points, 3) and w.shape == (num_points,)
    assert abs(w.sum() - 1.0) < 1e-14 and (w > 0).all()
    assert abs((u ** 2).sum(1) - 1.0).max() < 1e-14
    d = lebedev.lebedev_degree(num_points)
    assert lebedev.monomial_quadrature_error(num_points, d) < 1e-13
    # degree D+1 is odd (integrated by symmetry); D+1..D+2 must fail somewhere -> D is maximal
    assert lebedev.monomial_quadrature_error(num_points, d + 1) > 1e-12


@pytest.mark.parametrize("num_points", GRIDS)
def test_kernel_accuracy(num_points):
    """cos(ω u·r) averaged by the grid vs sin(ωr)/(ωr) for ω r <= b_max: error < 5e-6."""
    b = lebedev.max_frequency(num_points)
    err = lebedev.kernel_quadrature_error(num_points, b)
    assert err < 5e-6, err
    # beyond the limit the quadrature degrades (shows the limit is meaningful)
    assert lebedev.kernel_quadrature_error(num_points, 2.0 * b) > 10 * err


def test_grid_frequency_relation():
    assert lebedev.grid_for_frequency(math.pi) == 50
    assert lebedev.grid_for_frequency(2.1 * math.pi) == 110
    assert abs(lebedev.max_angular_frequency(86, 10.0) - 2 * math.pi / 10.0) < 1e-15
    with pytest.raises(ValueError):
        EuclideanFastAttention(16, grid=50, max_frequency=2 * math.pi)


# ------------------------------------------------------------------------------ brute force
def _brute_force(m: EuclideanFastAttention, h, pos, batch):
    """O(N²) evaluation of the same kernel, written independently with complex phases:
    pair (2f, 2f+1) as z = a + ib, rotation = z·exp(i ω_f u·r), pair dot = Re(conj(z_q) z_k)."""
    n = h.shape[0]
    H, d, dv = m.num_heads, m.d_qk, m.d_v
    q = (m.q(h) / math.sqrt(d)).reshape(n, H, d // 2, 2)
    k = m.k(h).reshape(n, H, d // 2, 2)
    v = m.v(h).reshape(n, H, dv)
    zq = torch.complex(q[..., 0], q[..., 1])
    zk = torch.complex(k[..., 0], k[..., 1])
    u, w, om = m.grid_u, m.grid_w, m.omega.double()
    y = torch.zeros(n, H, dv, dtype=h.dtype)
    for i in range(n):
        for j in range(n):
            if batch[i] != batch[j]:
                continue
            phase_i = torch.exp(1j * (u @ pos[i])[:, None] * om[None, :])  # [M,P]
            phase_j = torch.exp(1j * (u @ pos[j])[:, None] * om[None, :])
            a = torch.einsum("hp,mp,hp,mp,m->h", zq[i].conj(), phase_i.conj(), zk[j], phase_j,
                             w.to(torch.complex128)).real  # kernel A_h(i, j)
            y[i] += a[:, None] * v[j]
    return m.out(y.reshape(n, H * dv))


def test_linear_form_equals_brute_force():
    m = _efa(grid=50, f=16, heads=2)
    h, pos, _ = _system(n=9, f=16)
    batch = torch.tensor([1, 0, 1, 1, 0, 2, 2, 0, 1])  # three graphs, unsorted
    with torch.no_grad():
        fast = m(h, pos, batch, 3)
        slow = _brute_force(m, h, pos, batch)
    assert (fast - slow).abs().max() < 1e-10
    # and the dense kernel helper agrees on a single graph
    with torch.no_grad():
        a = m.kernel_matrix(h[:5], pos[:5])
        v = m.v(h[:5]).reshape(5, 2, 8)
        y = m.out(torch.einsum("hij,jhv->ihv", a, v).reshape(5, 16))
        assert (y - m(h[:5], pos[:5], torch.zeros(5, dtype=torch.long), 1)).abs().max() < 1e-12


def test_batch_equals_separate_graphs():
    m = _efa()
    h1, p1, _ = _system(n=7, seed=1)
    h2, p2, _ = _system(n=11, seed=2)
    with torch.no_grad():
        y = m(torch.cat([h1, h2]), torch.cat([p1, p2]), torch.tensor([0] * 7 + [1] * 11), 2)
        y1 = m(h1, p1, torch.zeros(7, dtype=torch.long), 1)
        y2 = m(h2, p2, torch.zeros(11, dtype=torch.long), 1)
    assert (y - torch.cat([y1, y2])).abs().max() < 1e-12


# ------------------------------------------------------------------------------ symmetries
def _readout(f, seed=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(f, f), torch.nn.SiLU(), torch.nn.Linear(f, 1)).double()


def _rotation_bound(m, mlp, h, pos, eps):
    """Bound on |E(R·pos) − E(pos)| from the kernel error ε (see module docstring)."""
    with torch.no_grad():
        n = h.shape[0]
        q = (m.q(h) / math.sqrt(m.d_qk)).reshape(n, m.num_heads, -1).norm(dim=-1)  # [N,H]
        k = m.k(h).reshape(n, m.num_heads, -1).norm(dim=-1)
        v = m.v(h).reshape(n, m.num_heads, -1).norm(dim=-1)
        dy = (q * (k * v).sum(0)).norm(dim=1)  # |δ y_i| <= ε · this, before `out`
        lip = (torch.linalg.matrix_norm(mlp[2].weight, 2) * 1.1 * torch.linalg.matrix_norm(mlp[0].weight, 2)
               * torch.linalg.matrix_norm(m.out.weight, 2))
        return float(2.0 * eps * lip * dy.sum())


@pytest.mark.parametrize("grid", GRIDS)
def test_rotation_invariance_open(grid):
    m = _efa(grid=grid, max_length=10.0)
    mlp = _readout(32)
    h, pos, b = _system(n=20, box=5.7)  # all pair distances <= 5.7·√3 < max_length
    eps = lebedev.kernel_quadrature_error(grid, lebedev.max_frequency(grid))
    tol = _rotation_bound(m, mlp, h, pos, eps)
    with torch.no_grad():
        e0 = float(mlp(m(h, pos, b, 1)).sum())
        for s in range(3):
            r = _rotation(s)
            e1 = float(mlp(m(h, pos @ r.T, b, 1)).sum())
            assert abs(e1 - e0) <= tol, (e1 - e0, tol)  # rigorous bound from ε
            assert abs(e1 - e0) <= 10 * eps * max(1.0, abs(e0)), (e1 - e0, eps)  # observed: ~1e-10


def test_rotation_noninvariance_beyond_max_length():
    """Control: pairs far beyond max_length break rotation invariance visibly."""
    m = _efa(grid=50, max_length=1.0)
    mlp = _readout(32)
    h, pos, b = _system(n=20, box=12.0)
    with torch.no_grad():
        e0 = float(mlp(m(h, pos, b, 1)).sum())
        e1 = float(mlp(m(h, pos @ _rotation(1).T, b, 1)).sum())
    assert abs(e1 - e0) > 1e-6


def test_translation_and_permutation():
    m = _efa(include_vectors=True)
    h, pos, b = _system(n=16)
    with torch.no_grad():
        y0, v0 = m.forward_vectors(h, pos, b, 1)
        y1, v1 = m.forward_vectors(h, pos + torch.tensor([3.1, -7.2, 0.4], dtype=F64), b, 1)
        assert (y1 - y0).abs().max() < 1e-10 and (v1 - v0).abs().max() < 1e-10
        perm = torch.randperm(16, generator=torch.Generator().manual_seed(5))
        y2, v2 = m.forward_vectors(h[perm], pos[perm], b, 1)
        assert (y2 - y0[perm]).abs().max() < 1e-12 and (v2 - v0[perm]).abs().max() < 1e-12


@pytest.mark.parametrize("grid", [86, 194])
def test_vector_outputs_rotate(grid):
    m = _efa(grid=grid, include_vectors=True, vector_input_features=4, num_vector_features=6)
    h, pos, b = _system(n=15)
    vec = torch.randn(15, 3, 4, generator=torch.Generator().manual_seed(7), dtype=F64)
    eps = lebedev.kernel_quadrature_error(grid, lebedev.max_frequency(grid))
    with torch.no_grad():
        s0, v0 = m.forward_vectors(h, pos, b, 1, vec)
        assert v0.shape == (15, 3, 6)
        for sd in range(3):
            r = _rotation(sd)
            s1, v1 = m.forward_vectors(h, pos @ r.T, b, 1, torch.einsum("ij,njc->nic", r, vec))
            rel = float((v1 - torch.einsum("ij,njc->nic", r, v0)).abs().max() / v0.abs().max())
            assert rel < 1e3 * eps, rel
            assert float((s1 - s0).abs().max() / s0.abs().max()) < 1e3 * eps


# ------------------------------------------------------------------------------ periodic
def _periodic(f=32, heads=2, seed=0, **kw):
    torch.manual_seed(seed)
    return PeriodicEuclideanFastAttention(f, num_heads=heads, grid=86, max_length=6.0, **kw).double()


CELL = torch.tensor([[7.0, 0.3, 0.0], [0.5, 8.0, 0.2], [-0.4, 0.1, 9.0]], dtype=F64)


def _periodic_system(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, 32, generator=g, dtype=F64)
    pos = torch.rand(n, 3, generator=g, dtype=F64) @ CELL
    return h, pos, torch.zeros(n, dtype=torch.long), CELL[None].clone(), torch.ones(1, 3, dtype=torch.bool)


def test_periodic_wrapping_origin_basis_rotation():
    m = _periodic(include_vectors=True)
    mlp = _readout(32)
    h, pos, b, cell, pbc = _periodic_system()
    E = lambda p, c: mlp(m(h, p, b, 1, c, pbc)).sum()
    with torch.no_grad():
        e0 = E(pos, cell)
        shifts = torch.randint(-3, 4, (24, 3), generator=torch.Generator().manual_seed(1)).to(F64)
        assert abs(float(E(pos + shifts @ CELL, cell) - e0)) < 1e-10          # wrapping
        assert abs(float(E(pos + torch.tensor([1.3, -2.0, 0.7], dtype=F64), cell) - e0)) < 1e-10  # origin
        c2 = CELL.clone()
        c2[0] = CELL[0] + CELL[1]
        c2[2] = CELL[2] - 2 * CELL[0]
        assert abs(float(E(pos, c2[None]) - e0)) < 1e-10                      # other basis, same lattice
        r = _rotation(2)
        assert abs(float(E(pos @ r.T, (CELL @ r.T)[None]) - e0)) < 1e-10       # rotation (exact)
        s0, v0 = m.forward_vectors(h, pos, b, 1, cell, pbc)
        s1, v1 = m.forward_vectors(h, pos @ r.T, b, 1, (CELL @ r.T)[None], pbc)
        assert (v1 - torch.einsum("ij,njc->nic", r, v0)).abs().max() < 1e-10
        # the open (Lebedev) variant is NOT invariant to wrapping: that is why the periodic one exists
        y_open = m._outputs(m._open(h, pos, b, 1, None, False), False)[0]
        y_open_w = m._outputs(m._open(h, pos + shifts @ CELL, b, 1, None, False), False)[0]
        assert (y_open - y_open_w).abs().max() > 1e-3


def test_periodic_mixed_batch_and_dispatch():
    m = _periodic()
    h, pos, b, cell, pbc = _periodic_system(n=10)
    h2, p2, _ = _system(n=6, seed=4)
    open_m = EuclideanFastAttention(32, num_heads=2, grid=86, max_length=6.0).double()
    open_m.load_state_dict(m.state_dict())
    with torch.no_grad():
        y = m(torch.cat([h, h2]), torch.cat([pos, p2]), torch.tensor([0] * 10 + [1] * 6), 2,
              torch.stack([CELL, torch.zeros(3, 3, dtype=F64)]),
              torch.tensor([[True] * 3, [False] * 3]))
        yp = m(h, pos, b, 1, cell, pbc)
        yo = open_m(h2, p2, torch.zeros(6, dtype=torch.long), 1)
    assert (y - torch.cat([yp, yo])).abs().max() < 1e-12
    with pytest.raises(Exception):
        m(h, pos, b, 1, cell, torch.tensor([[True, True, False]]))


def test_periodic_continuity_under_strain():
    """k vectors crossing kcut enter with zero weight: energy is continuous in the cell."""
    m = _periodic()
    mlp = _readout(32)
    h, pos, b, cell, pbc = _periodic_system(n=12)
    frac = pos @ torch.linalg.inv(CELL)
    es = []
    with torch.no_grad():
        for s in torch.linspace(0.9, 1.1, 81, dtype=F64):
            c = CELL * s
            es.append(float(mlp(m(h, frac @ c, b, 1, c[None], pbc)).sum()))
    jumps = [abs(a - b) for a, b in zip(es[1:], es[:-1])]
    assert max(jumps) < 0.05 * (max(es) - min(es)) + 1e-9


# ------------------------------------------------------------------------------ gradients, TS, dtype
def test_gradcheck_positions_open():
    m = _efa(grid=50, f=8, heads=1, include_vectors=True)
    h, pos, b = _system(n=6, f=8)
    pos.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: m(h, p, b, 1).pow(2).sum(), (pos,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda p: m.forward_vectors(h, p, b, 1)[1].sum(), (pos,), eps=1e-6, atol=1e-7)


def test_gradcheck_positions_and_cell_periodic():
    torch.manual_seed(0)
    m = PeriodicEuclideanFastAttention(8, grid=50, max_length=4.0).double()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 8, generator=g, dtype=F64)
    cell = (CELL * 0.6)[None].clone().requires_grad_(True)
    pos = (torch.rand(6, 3, generator=g, dtype=F64) @ (CELL * 0.6)).requires_grad_(True)
    b = torch.zeros(6, dtype=torch.long)
    pbc = torch.ones(1, 3, dtype=torch.bool)
    f = lambda p, c: m(h, p, b, 1, c, pbc).pow(2).sum()
    assert torch.autograd.gradcheck(f, (pos, cell), eps=1e-6, atol=1e-7)


def test_torchscript():
    h, pos, b = _system(n=12)
    m = _efa(include_vectors=True, vector_input_features=3)
    s = torch.jit.script(m)
    vec = torch.randn(12, 3, 3, dtype=F64)
    assert (s(h, pos, b, 1) - m(h, pos, b, 1)).abs().max() == 0
    assert (s.forward_vectors(h, pos, b, 1, vec)[1] - m.forward_vectors(h, pos, b, 1, vec)[1]).abs().max() == 0
    pm = _periodic()
    ph, ppos, pb, cell, pbc = _periodic_system(n=12)
    ps = torch.jit.script(pm)
    assert (ps(ph, ppos, pb, 1, cell, pbc) - pm(ph, ppos, pb, 1, cell, pbc)).abs().max() == 0
    buf = io.BytesIO()
    torch.jit.save(ps, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    assert (loaded(ph, ppos, pb, 1, cell, pbc) - pm(ph, ppos, pb, 1, cell, pbc)).abs().max() == 0
    for enabled in (True, False):
        torch.manual_seed(0)
        blk = EFABlock(32, enabled=enabled, num_heads=2).double()
        sb = torch.jit.script(blk)
        dx = torch.randn_like(ph)
        assert (sb(ph, dx, ppos, pb, 1, cell, pbc) - blk(ph, dx, ppos, pb, 1, cell, pbc)).abs().max() == 0


def test_float32_vs_float64():
    m64 = _efa(include_vectors=True)
    m32 = _efa(include_vectors=True).float()
    h, pos, b = _system(n=30)
    with torch.no_grad():
        y64, v64 = m64.forward_vectors(h, pos, b, 1)
        y32, v32 = m32.forward_vectors(h.float(), pos.float(), b, 1)
    assert y32.dtype == torch.float32
    assert float((y32.double() - y64).abs().max() / y64.abs().max()) < 1e-5
    assert float((v32.double() - v64).abs().max() / v64.abs().max()) < 1e-5
    p64 = _periodic()
    p32 = _periodic().float()
    ph, ppos, pb, cell, pbc = _periodic_system()
    with torch.no_grad():
        a = p64(ph, ppos, pb, 1, cell, pbc)
        c = p32(ph.float(), ppos.float(), pb, 1, cell.float(), pbc)
    assert float((c.double() - a).abs().max() / a.abs().max()) < 1e-5


def test_efa_block():
    h, pos, b = _system(n=10)
    dx = torch.randn_like(h)
    cell = torch.zeros(1, 3, 3, dtype=F64)
    pbc = torch.zeros(1, 3, dtype=torch.bool)
    off = EFABlock(32, enabled=False).double()
    assert len(list(off.parameters())) == 0
    assert (off(h, dx, pos, b, 1, cell, pbc) - (h + dx)).abs().max() == 0
    on = EFABlock(32, enabled=True).double()
    gate = torch.nn.functional.silu(torch.tensor(0.5, dtype=F64))
    # zero-initialised last layer: at init the global branch contributes nothing
    assert (on(h, dx, pos, b, 1, cell, pbc) - (h + gate * dx)).abs().max() < 1e-14
    torch.nn.init.normal_(on.mlp2.weight)
    out = on(h, dx, pos, b, 1, cell, pbc)
    out.sum().backward()
    assert on.c_switch.grad is not None and on.efa.q.weight.grad is not None

    class Cfg:
        num_features = 32
        efa_layers = [False, True]
        efa_grid = 110
        efa_max_length = 8.0

    assert not EFABlock.from_config(Cfg, 0).enabled
    blk = EFABlock.from_config(Cfg, 1)
    assert blk.enabled and blk.efa.grid_size == 110


def test_global_sums_staging():
    """Distributed evaluation: partial key-value sums over atom subsets add up to the full result."""
    m = _efa()
    h, pos, b = _system(n=14)
    owner = torch.arange(14) % 3  # three "ranks"
    with torch.no_grad():
        kv = sum(m.global_sums(h, pos, (owner == r).to(F64)) for r in range(3))
        assert (m.apply_global_sums(h, pos, kv) - m(h, pos, b, 1)).abs().max() < 1e-12
    pm = _periodic()
    ph, ppos, pb, cell, pbc = _periodic_system(n=14)
    with torch.no_grad():
        kv = sum(pm.global_sums(ph, ppos, (owner == r).to(F64), CELL) for r in range(3))
        assert (pm.apply_global_sums(ph, ppos, kv, CELL) - pm(ph, ppos, pb, 1, cell, pbc)).abs().max() < 1e-12
    s = torch.jit.script(pm)
    with torch.no_grad():
        assert (s.apply_global_sums(ph, ppos, s.global_sums(ph, ppos, torch.ones(14, dtype=F64), CELL), CELL)
                - pm(ph, ppos, pb, 1, cell, pbc)).abs().max() < 1e-12


def test_periodic_tends_to_open_kernel_in_large_box():
    """A small cluster in a 60 Å box with narrow k shells (σ = 0.03/Å) sees nearly the Lebedev kernel."""
    torch.manual_seed(0)
    m = PeriodicEuclideanFastAttention(32, num_heads=2, grid=86, max_length=6.0, k_width=0.03).double()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(10, 32, generator=g, dtype=F64)
    pos = torch.rand(10, 3, generator=g, dtype=F64) * 3.4 + 30.0
    b = torch.zeros(10, dtype=torch.long)
    with torch.no_grad():
        yo = m(h, pos, b, 1, torch.zeros(1, 3, 3, dtype=F64), torch.zeros(1, 3, dtype=torch.bool))
        yp = m(h, pos, b, 1, torch.eye(3, dtype=F64)[None] * 60.0, torch.ones(1, 3, dtype=torch.bool))
    assert float((yp - yo).abs().max() / yo.abs().max()) < 1e-2
