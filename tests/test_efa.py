"""Tests for Euclidean fast attention (potential/nn/efa.py) and the Lebedev grids (potential/nn/lebedev.py).

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

from so3krates.potential.nn import lebedev
from so3krates.potential.nn.efa import EuclideanFastAttention
from so3krates.potential.nn.efa_block import EFABlock
from so3krates.potential.nn.efa_periodic import PeriodicEuclideanFastAttention

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


@pytest.mark.parametrize("order", ["linear", "dense"])
def test_linear_form_equals_brute_force(order):
    """Both evaluation orders of ``_attend`` (linear key-value sums; dense n×n kernel for small
    graphs) equal the independent O(N²) complex-phase evaluation."""
    m = _efa(grid=50, f=16, heads=2, include_vectors=True)
    m.dense_max_atoms = 0 if order == "linear" else 1000
    h, pos, _ = _system(n=9, f=16)
    batch = torch.tensor([1, 0, 1, 1, 0, 2, 2, 0, 1])  # three graphs, unsorted
    with torch.no_grad():
        fast = m(h, pos, batch, 3)
        slow = _brute_force(m, h, pos, batch)
        s_vec, v_vec = m.forward_vectors(h, pos, batch, 3)
        m.dense_max_atoms = 1000 if order == "linear" else 0
        s_other, v_other = m.forward_vectors(h, pos, batch, 3)
    assert (fast - slow).abs().max() < 1e-10
    assert (s_vec - fast).abs().max() < 1e-12
    assert (v_vec - v_other).abs().max() < 1e-12 and (s_vec - s_other).abs().max() < 1e-12
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
MODES = ["simplex", "kshell"]


def _periodic(f=32, heads=2, seed=0, mode="simplex", **kw):
    torch.manual_seed(seed)
    return PeriodicEuclideanFastAttention(f, num_heads=heads, grid=86, max_length=6.0, periodic_mode=mode,
                                          **kw).double()


CELL = torch.tensor([[7.0, 0.3, 0.0], [0.5, 8.0, 0.2], [-0.4, 0.1, 9.0]], dtype=F64)


def _periodic_system(n=24, seed=0, cell=CELL):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, 32, generator=g, dtype=F64)
    pos = torch.rand(n, 3, generator=g, dtype=F64) @ cell
    return h, pos, torch.zeros(n, dtype=torch.long), cell[None].clone(), torch.ones(1, 3, dtype=torch.bool)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [1.0, 3.0])  # simplex: shared-phase layout (small cell) / per-pair layout
def test_periodic_wrapping_origin_rotation(mode, scale):
    """Exact in both modes: wrapping atoms by lattice vectors, shifting the cell origin, rotating cell
    and atoms together (energy invariant, vector outputs rotate). kshell also: another basis of the
    same lattice (the simplex triangulation depends on the basis; see test_simplex_isotropy_vs_box_size)."""
    m = _periodic(include_vectors=True, mode=mode)
    mlp = _readout(32)
    cell0 = CELL * scale
    h, pos, b, cell, pbc = _periodic_system(n=40, cell=cell0)  # n > dense_max_atoms: linear order
    E = lambda p, c: mlp(m(h, p, b, 1, c, pbc)).sum()
    with torch.no_grad():
        e0 = E(pos, cell)
        shifts = torch.randint(-3, 4, (40, 3), generator=torch.Generator().manual_seed(1)).to(F64)
        assert abs(float(E(pos + shifts @ cell0, cell) - e0)) < 1e-10          # wrapping
        assert abs(float(E(pos + torch.tensor([1.3, -2.0, 0.7], dtype=F64), cell) - e0)) < 1e-10  # origin
        r = _rotation(2)
        assert abs(float(E(pos @ r.T, (cell0 @ r.T)[None]) - e0)) < 1e-10       # joint rotation
        s0, v0 = m.forward_vectors(h, pos, b, 1, cell, pbc)
        s1, v1 = m.forward_vectors(h, pos @ r.T, b, 1, (cell0 @ r.T)[None], pbc)
        assert (v1 - torch.einsum("ij,njc->nic", r, v0)).abs().max() < 1e-10
        assert (s1 - s0).abs().max() < 1e-10
        c2 = cell0.clone()
        c2[0] = cell0[0] + cell0[1]
        c2[2] = cell0[2] - 2 * cell0[0]
        d_basis = abs(float(E(pos, c2[None]) - e0))
        if mode == "kshell":
            assert d_basis < 1e-10                                              # other basis, same lattice
        # the open (Lebedev) variant is NOT invariant to wrapping: that is why the periodic one exists
        y_open = m._outputs(m._open(h, pos, b, 1, None, False), False)[0]
        y_open_w = m._outputs(m._open(h, pos + shifts @ cell0, b, 1, None, False), False)[0]
        assert (y_open - y_open_w).abs().max() > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_periodic_mixed_batch_and_dispatch(mode):
    m = _periodic(mode=mode)
    h, pos, b, cell, pbc = _periodic_system(n=10)
    h2, p2, _ = _system(n=6, seed=4)
    h3, p3, _, _, _ = _periodic_system(n=7, seed=5, cell=CELL * 2.5)
    open_m = EuclideanFastAttention(32, num_heads=2, grid=86, max_length=6.0).double()
    open_m.load_state_dict(m.state_dict())
    with torch.no_grad():
        y = m(torch.cat([h, h2, h3]), torch.cat([pos, p2, p3]), torch.tensor([0] * 10 + [1] * 6 + [2] * 7), 3,
              torch.stack([CELL, torch.zeros(3, 3, dtype=F64), CELL * 2.5]),
              torch.tensor([[True] * 3, [False] * 3, [True] * 3]))
        yp = m(h, pos, b, 1, cell, pbc)
        yo = open_m(h2, p2, torch.zeros(6, dtype=torch.long), 1)
        yp3 = m(h3, p3, torch.zeros(7, dtype=torch.long), 1, (CELL * 2.5)[None], pbc)
    assert (y - torch.cat([yp, yo, yp3])).abs().max() < 1e-12
    with pytest.raises(ValueError, match="fully periodic"):
        m(h, pos, b, 1, cell, torch.tensor([[True, True, False]]))
    with pytest.raises(ValueError, match="periodic_mode"):
        PeriodicEuclideanFastAttention(32, periodic_mode="ewald")


def _strain_path(num: int):
    """Cells along a path mixing stretch and shear (the simplex faces and the k cutoff are crossed)."""
    d = torch.tensor([[0.6, 0.5, -0.2], [0.1, -0.4, 0.7], [-0.3, 0.2, 0.9]], dtype=F64)
    return [CELL @ (torch.eye(3, dtype=F64) + float(s) * d) for s in torch.linspace(-0.12, 0.12, num, dtype=F64)]


@pytest.mark.parametrize("mode", MODES)
def test_periodic_continuity_under_strain(mode):
    """The energy is continuous along a strain path (NPT): refining the step by 8 shrinks the largest
    step-to-step change by ~8 (a jump would not shrink). Both modes change their discrete structure
    along the path (simplex: the vertex sets of the frequency vectors; kshell: the k set), with zero
    weight at the switch."""
    m = _periodic(mode=mode)
    mlp = _readout(32)
    h, pos, b, cell, pbc = _periodic_system(n=12)
    frac = pos @ torch.linalg.inv(CELL)
    cells = _strain_path(481)
    es, structure = [], []
    with torch.no_grad():
        for c in cells:
            es.append(float(mlp(m(h, frac @ c, b, 1, c[None], pbc)).sum()))
            if mode == "simplex":
                structure.append(m._simplex_vertices(c[None])[0].to(torch.long).reshape(-1).tolist())
            else:
                structure.append(int(m._kvectors(c[None]).shape[1]))
    changes = sum(1 for x, y in zip(structure[1:], structure[:-1]) if x != y)
    assert changes >= (50 if mode == "simplex" else 1), changes
    fine = max(abs(x - y) for x, y in zip(es[1:], es[:-1]))
    coarse = max(abs(x - y) for x, y in zip(es[8::8], es[:-8:8]))
    assert fine < 0.25 * coarse, (fine, coarse)
    assert max(es) - min(es) > 1e-6  # the energy does change along the path


@pytest.mark.parametrize("layout", [1, 2])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_simplex_layouts_agree(layout, scale):
    """The two evaluation orders of the simplex mode give the same values and gradients."""
    m = _periodic(include_vectors=True, mode="simplex")
    h, pos, b, cell, pbc = _periodic_system(n=40, cell=CELL * scale)
    cell = cell.requires_grad_(True)
    pos = pos.requires_grad_(True)

    def run(lay):
        m.simplex_layout = lay
        s, v = m.forward_vectors(h, pos, b, 1, cell, pbc)
        gp, gc = torch.autograd.grad(s.pow(2).sum() + v.pow(2).sum(), (pos, cell))
        return s, v, gp, gc

    auto = run(0)
    forced = run(layout)
    for x, y in zip(auto, forced):
        assert float((x - y).abs().max()) < 1e-11 * max(1.0, float(x.detach().abs().max()))


def test_simplex_isotropy_vs_box_size():
    """Simplex mode, accuracy statement: a molecule of diameter d in a box of side L (vacuum around it)
    sees the open (Lebedev) kernel up to the interpolation error O((2π d / L)²). Measured with this
    model (d = 4.8 Å; L = 20/40/80/160 Å): orientation dependence, difference from the open result
    and basis dependence 0.02–0.04·(2πd/L)² (relative to max|y_open|: 5–7 % at 20 Å, 0.3–0.5 % at
    80 Å); asserted with the bound 0.1·(2πd/L)² and convergence by ≥ 3× per doubling of L."""
    torch.manual_seed(0)
    m = PeriodicEuclideanFastAttention(32, num_heads=1, qk_features=16, v_features=32, grid=50,
                                       max_length=10.0, periodic_mode="simplex").double()
    g = torch.Generator().manual_seed(0)
    n = 20
    h = torch.randn(n, 32, generator=g, dtype=F64)
    mol = torch.randn(n, 3, generator=g, dtype=F64)
    mol = mol / mol.norm(dim=1).max() * 3.0  # radius 3 Å
    d = float(torch.cdist(mol, mol).max())
    b = torch.zeros(n, dtype=torch.long)
    pbc = torch.ones(1, 3, dtype=torch.bool)
    errs = []
    with torch.no_grad():
        yo = m(h, mol, b, 1, torch.zeros(1, 3, 3, dtype=F64), torch.zeros(1, 3, dtype=torch.bool))
        scale = float(yo.abs().max())
        for L in (20.0, 40.0, 80.0):
            cell = torch.eye(3, dtype=F64) * L
            cell[1, 0] = 0.1 * L
            cell[2, 1] = -0.05 * L
            centre = torch.full((3,), L / 2, dtype=F64)
            y0 = m(h, mol + centre, b, 1, cell[None], pbc)
            rot = max(float((m(h, mol @ _rotation(s).T + centre, b, 1, cell[None], pbc) - y0).abs().max())
                      for s in range(4)) / scale
            dev = float((y0 - yo).abs().max()) / scale
            c2 = cell.clone()
            c2[1] = cell[1] + cell[0]
            basis = float((m(h, mol + centre, b, 1, c2[None], pbc) - y0).abs().max()) / scale
            bound = 0.1 * (2 * math.pi * d / L) ** 2
            assert rot <= bound and dev <= bound and basis <= bound, (L, rot, dev, basis, bound)
            errs.append((rot, dev))
    assert errs[2][0] < errs[0][0] / 9 and errs[2][1] < errs[0][1] / 9  # ≥ 3× per doubling


# ------------------------------------------------------------------------------ gradients, TS, dtype
def test_gradcheck_positions_open():
    m = _efa(grid=50, f=8, heads=1, include_vectors=True)
    h, pos, b = _system(n=6, f=8)
    pos.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: m(h, p, b, 1).pow(2).sum(), (pos,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda p: m.forward_vectors(h, p, b, 1)[1].sum(), (pos,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [0.6, 2.0])
def test_gradcheck_positions_and_cell_periodic(mode, scale):
    """Analytic gradients w.r.t. positions and cell (virial). The simplex weights are piecewise linear
    in the cell: away from the faces (measure zero; none within ±eps here) gradcheck is exact."""
    torch.manual_seed(0)
    m = PeriodicEuclideanFastAttention(8, grid=50, max_length=4.0, periodic_mode=mode,
                                       include_vectors=True).double()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 8, generator=g, dtype=F64)
    cell = (CELL * scale)[None].clone().requires_grad_(True)
    pos = (torch.rand(6, 3, generator=g, dtype=F64) @ (CELL * scale)).requires_grad_(True)
    b = torch.zeros(6, dtype=torch.long)
    pbc = torch.ones(1, 3, dtype=torch.bool)
    f = lambda p, c: m(h, p, b, 1, c, pbc).pow(2).sum()
    assert torch.autograd.gradcheck(f, (pos, cell), eps=1e-6, atol=1e-7)
    fv = lambda p, c: m.forward_vectors(h, p, b, 1, c, pbc)[1].sum()
    assert torch.autograd.gradcheck(fv, (pos, cell), eps=1e-6, atol=1e-7)


def test_torchscript():
    h, pos, b = _system(n=12)
    m = _efa(include_vectors=True, vector_input_features=3)
    s = torch.jit.script(m)
    vec = torch.randn(12, 3, 3, dtype=F64)
    assert (s(h, pos, b, 1) - m(h, pos, b, 1)).abs().max() == 0
    assert (s.forward_vectors(h, pos, b, 1, vec)[1] - m.forward_vectors(h, pos, b, 1, vec)[1]).abs().max() == 0
    for mode in MODES:
        for scale in (1.0, 3.0):
            pm = _periodic(mode=mode, include_vectors=True)
            ph, ppos, pb, cell, pbc = _periodic_system(n=40, cell=CELL * scale)
            ps = torch.jit.script(pm)
            assert (ps(ph, ppos, pb, 1, cell, pbc) - pm(ph, ppos, pb, 1, cell, pbc)).abs().max() == 0
            assert (ps.forward_vectors(ph, ppos, pb, 1, cell, pbc)[1]
                    - pm.forward_vectors(ph, ppos, pb, 1, cell, pbc)[1]).abs().max() == 0
            buf = io.BytesIO()
            torch.jit.save(ps, buf)
            buf.seek(0)
            loaded = torch.jit.load(buf)
            assert (loaded(ph, ppos, pb, 1, cell, pbc) - pm(ph, ppos, pb, 1, cell, pbc)).abs().max() == 0
    ph, ppos, pb, cell, pbc = _periodic_system(n=12)
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
    for mode in MODES:
        for scale in (1.0, 3.0):
            p64 = _periodic(mode=mode)
            p32 = _periodic(mode=mode).float()
            ph, ppos, pb, cell, pbc = _periodic_system(n=40, cell=CELL * scale)
            # far from the origin (unwrapped trajectory): positions are wrapped before the phases; the
            # float64 reference gets the same (float32-rounded) inputs
            ppos = (ppos + 1e3 * CELL[0]).float().double()
            with torch.no_grad():
                a = p64(ph, ppos, pb, 1, cell, pbc)
                c = p32(ph.float(), ppos.float(), pb, 1, cell.float(), pbc)
            assert float((c.double() - a).abs().max() / a.abs().max()) < 1e-5, (mode, scale)


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
    for mode in MODES:
        for scale in (1.0, 3.0):  # simplex: both layouts
            pm = _periodic(mode=mode)
            c0 = CELL * scale
            ph, ppos, pb, cell, pbc = _periodic_system(n=14, cell=c0)
            # ghost-like copies: rank 1 holds its atoms shifted by a lattice vector
            ppos_r = ppos + (owner == 1).to(F64).unsqueeze(1) * c0[2]
            with torch.no_grad():
                kv = sum(pm.global_sums(ph, ppos_r, (owner == r).to(F64), c0) for r in range(3))
                ref = pm(ph, ppos, pb, 1, cell, pbc)
                assert (pm.apply_global_sums(ph, ppos, kv, c0) - ref).abs().max() < 1e-12
            s = torch.jit.script(pm)
            with torch.no_grad():
                assert (s.apply_global_sums(ph, ppos, s.global_sums(ph, ppos, torch.ones(14, dtype=F64), c0), c0)
                        - ref).abs().max() < 1e-12


def test_kshell_tends_to_open_kernel_in_large_box():
    """kshell mode: a small cluster in a 60 Å box with narrow k shells (σ = 0.03/Å) sees nearly the Lebedev kernel."""
    torch.manual_seed(0)
    m = PeriodicEuclideanFastAttention(32, num_heads=2, grid=86, max_length=6.0, k_width=0.03,
                                       periodic_mode="kshell").double()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(10, 32, generator=g, dtype=F64)
    pos = torch.rand(10, 3, generator=g, dtype=F64) * 3.4 + 30.0
    b = torch.zeros(10, dtype=torch.long)
    with torch.no_grad():
        yo = m(h, pos, b, 1, torch.zeros(1, 3, 3, dtype=F64), torch.zeros(1, 3, dtype=torch.bool))
        yp = m(h, pos, b, 1, torch.eye(3, dtype=F64)[None] * 60.0, torch.ones(1, 3, dtype=torch.bool))
    assert float((yp - yo).abs().max() / yo.abs().max()) < 1e-2


# ------------------------------------------------------------------------------ model level
# A small So3krates with EFA in both layers. EFABlock zero-initialises mlp2 (a fresh model's EFA
# contributes exactly 0), so the blocks get random nonzero mlp2 weights and gate values here and
# every test checks that the EFA contribution is nonzero (energy differs from the same weights with
# EFA disabled), so none of them can pass with EFA switched off.
def _model_config(**kw):
    from so3krates.potential.config import So3kratesConfig
    args = dict(num_features=16, num_layers=2, num_heads=2, degrees=[1, 2], cutoff=3.0,
                cutoff_fn="cosine", radial_basis_fn="bernstein", num_radial_basis_fn=8, energy_regression_dim=16,
                energy_learn_atomic_type_scales=True, energy_learn_atomic_type_shifts=True, species=[1, 6, 8],
                efa_layers=[True, True], efa_grid=50, efa_max_length=12.0, efa_num_heads=2, efa_qk_features=16,
                efa_v_features=16, efa_qk_activation="gelu")
    args.update(kw)
    return So3kratesConfig(**args)


def _efa_model(seed=0, dtype=F64, **kw):
    from so3krates.potential.model import So3krates
    torch.manual_seed(seed)
    model = So3krates(_model_config(**kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for layer in model.layers:
            if layer.efa.enabled:
                layer.efa.mlp2.weight.normal_(0.0, 0.5)
                layer.efa.mlp2.bias.normal_(0.0, 0.1)
                layer.efa.c_switch.fill_(0.3)
    return model.to(dtype).eval()


def _potential(model):
    from so3krates.potential.potential import So3kratesPotential
    return So3kratesPotential(model).eval()


def _without_efa(model):
    """The same weights with EFA switched off in every layer (plain So3krates layers)."""
    from so3krates.potential.model import So3krates
    off = So3krates(model.config.replace(efa_layers=[]))
    missing, _ = off.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    return off.to(next(model.parameters()).dtype).eval()


def _open_structure(n=14, seed=3):
    from helpers import random_molecule
    pos, z = random_molecule(n, seed=seed, box=6.0)  # diameter < 10.4 Å <= efa_max_length 12 Å
    return torch.tensor(pos, dtype=F64), torch.tensor(z), torch.zeros(3, 3, dtype=F64), torch.zeros(3, dtype=torch.bool)


def _periodic_structure(n=20, seed=1):
    from helpers import random_periodic
    pos, z, cell = random_periodic(n, seed=seed, skew=True)
    return torch.tensor(pos, dtype=F64), torch.tensor(z), torch.tensor(cell, dtype=F64), torch.ones(3, dtype=torch.bool)


def _energy_forces(pot, pos, z, cell, pbc, stress=False):
    out = pot(pos, z, cell, pbc, compute_forces=True, compute_stress=stress)
    return {k: v.detach() for k, v in out.items()}


def _assert_efa_contributes(model, pos, z, cell, pbc):
    e = float(_energy_forces(_potential(model), pos, z, cell, pbc)["energy"])
    e_off = float(_energy_forces(_potential(_without_efa(model)), pos, z, cell, pbc)["energy"])
    assert abs(e - e_off) > 1e-2 * max(1.0, abs(e)), (e, e_off)


STRUCTURES = ["open", "simplex", "kshell"]


def _setup(kind, dtype=F64):
    model = _efa_model(dtype=dtype, efa_periodic_mode="kshell" if kind == "kshell" else "simplex")
    structure = _open_structure() if kind == "open" else _periodic_structure()
    return model, structure


def test_model_efa_is_global():
    """Two molecules farther apart than the cutoff: moving one changes the other's atomic energies only
    through EFA (exactly zero change for the same model without EFA)."""
    model = _efa_model()
    pos_a, z_a, cell, pbc = _open_structure(n=6, seed=3)
    pos_b, z_b, _, _ = _open_structure(n=6, seed=4)
    far = torch.tensor([0.0, 0.0, 7.5], dtype=F64)  # min A–B distance > cutoff 3 Å, all pairs < 12 Å
    z = torch.cat([z_a, z_b])

    def e_a(m, shift):
        pos = torch.cat([pos_a, pos_b + far + shift])
        return float(_potential(m)(pos, z, cell, pbc)["atomic_energies"][:6].detach().sum())

    shift = torch.tensor([0.8, -0.5, 0.6], dtype=F64)
    off = _without_efa(model)
    assert abs(e_a(off, shift) - e_a(off, 0 * shift)) < 1e-12
    assert abs(e_a(model, shift) - e_a(model, 0 * shift)) > 1e-4


@pytest.mark.parametrize("kind", STRUCTURES)
def test_model_invariances(kind):
    """Open: rotations to the grid's accuracy (10·ε, ε = kernel_quadrature_error(50, π) ≈ 5e-7; all
    pair distances <= efa_max_length), translations and permutations exactly; forces rotate.
    Periodic (both modes): wrapping atoms by lattice vectors and shifting the cell origin exactly;
    joint rotation of cell and atoms exactly (forces rotate)."""
    model, (pos, z, cell, pbc) = _setup(kind)
    _assert_efa_contributes(model, pos, z, cell, pbc)
    pot = _potential(model)
    ref = _energy_forces(pot, pos, z, cell, pbc)
    e0, f0 = float(ref["energy"]), ref["forces"]
    eps = lebedev.kernel_quadrature_error(50, math.pi)
    g = torch.Generator().manual_seed(7)
    for s in range(3):
        r = _rotation(s)
        out = _energy_forces(pot, pos @ r.T, z, cell @ r.T, pbc)
        tol_e = 10 * eps * max(1.0, abs(e0)) if kind == "open" else 1e-10
        assert abs(float(out["energy"]) - e0) <= tol_e, (kind, float(out["energy"]) - e0)
        assert (out["forces"] - f0 @ r.T).abs().max() <= (100 * eps if kind == "open" else 1e-9)
    shift = torch.tensor([3.1, -7.2, 0.4], dtype=F64)
    out = _energy_forces(pot, pos + shift, z, cell, pbc)  # translation / cell origin
    assert abs(float(out["energy"]) - e0) < 1e-10 and (out["forces"] - f0).abs().max() < 1e-9
    perm = torch.randperm(pos.shape[0], generator=g)
    out = _energy_forces(pot, pos[perm], z[perm], cell, pbc)
    assert abs(float(out["energy"]) - e0) < 1e-10 and (out["forces"] - f0[perm]).abs().max() < 1e-9
    if kind != "open":
        n_shift = torch.randint(-2, 3, (pos.shape[0], 3), generator=g).to(F64)
        out = _energy_forces(pot, pos + n_shift @ cell, z, cell, pbc)  # wrapping
        assert abs(float(out["energy"]) - e0) < 1e-10 and (out["forces"] - f0).abs().max() < 1e-9


def test_model_rotation_control():
    """Control for the open rotation test: with efa_max_length far below the structure size the
    Lebedev kernel is not rotation invariant, and the same check sees it."""
    model = _efa_model(efa_max_length=1.0)
    pos, z, cell, pbc = _open_structure()
    pot = _potential(model)
    e0 = float(_energy_forces(pot, pos, z, cell, pbc)["energy"])
    e1 = float(_energy_forces(pot, pos @ _rotation(1).T, z, cell, pbc)["energy"])
    assert abs(e1 - e0) > 1e3 * lebedev.kernel_quadrature_error(50, math.pi)


@pytest.mark.parametrize("kind", STRUCTURES)
def test_model_finite_difference_forces_and_stress(kind):
    """float64 forces (and stress, periodic) against central differences of the energy (h = 1e-5 Å)."""
    model, (pos, z, cell, pbc) = _setup(kind)
    pot = _potential(model)
    periodic = kind != "open"
    out = _energy_forces(pot, pos, z, cell, pbc, stress=periodic)
    h = 1e-5
    energy = lambda p, c: float(pot(p, z, c, pbc, compute_forces=False)["energy"].detach())
    g = torch.Generator().manual_seed(2)
    for i, d in zip(torch.randint(0, pos.shape[0], (6,), generator=g).tolist(), [0, 1, 2, 0, 1, 2]):
        dp = torch.zeros_like(pos)
        dp[i, d] = h
        fd = -(energy(pos + dp, cell) - energy(pos - dp, cell)) / (2 * h)
        assert abs(fd - float(out["forces"][i, d])) < 1e-7, (kind, i, d, fd, float(out["forces"][i, d]))
    if periodic:
        vol = float(torch.linalg.det(cell))
        for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)]:
            eps = torch.zeros(3, 3, dtype=F64)
            eps[a, b] = eps[b, a] = h / 2 if a != b else h
            dfm = lambda sgn: torch.eye(3, dtype=F64) + sgn * eps
            fd = (energy(pos @ dfm(1), cell @ dfm(1)) - energy(pos @ dfm(-1), cell @ dfm(-1))) / (2 * h) / vol
            ref = float(out["stress"][a, b]) if a == b else float(out["stress"][a, b] + out["stress"][b, a]) / 2
            assert abs(fd - ref) < 1e-8, (kind, a, b, fd, ref)


@pytest.mark.parametrize("kind", STRUCTURES)
def test_model_float32_vs_float64_and_training_path(kind):
    """float32 = float64 to float32 accuracy; forces of the training path (autograd with
    create_graph) = the eval path."""
    m64, (pos, z, cell, pbc) = _setup(kind)
    m32 = _efa_model(dtype=torch.float32, efa_periodic_mode=m64.config.efa_periodic_mode)
    a = _energy_forces(_potential(m64), pos, z, cell, pbc)
    b = _energy_forces(_potential(m32), pos.float(), z, cell.float(), pbc)
    assert b["energy"].dtype == torch.float32
    assert abs(float(b["energy"]) - float(a["energy"])) < 1e-5 * max(1.0, abs(float(a["energy"])))
    assert float((b["forces"].double() - a["forces"]).abs().max()) < 1e-4 * max(1.0, float(a["forces"].abs().max()))
    train = _potential(m64).train()
    t = train(pos, z, cell, pbc, compute_forces=True)
    assert t["forces"].requires_grad  # keeps the graph for a force loss
    assert (t["forces"].detach() - a["forces"]).abs().max() < 1e-10
    assert abs(float(t["energy"].detach()) - float(a["energy"])) < 1e-10


@pytest.mark.parametrize("kind", STRUCTURES)
def test_model_torchscript_equals_eager(kind):
    model, (pos, z, cell, pbc) = _setup(kind)
    pot = _potential(model)
    scripted = torch.jit.script(pot)
    periodic = kind != "open"
    a = _energy_forces(pot, pos, z, cell, pbc, stress=periodic)
    b = _energy_forces(scripted, pos, z, cell, pbc, stress=periodic)
    for key in ("energy", "forces") + (("stress",) if periodic else ()):
        assert (a[key] - b[key]).abs().max() < 1e-12, key


def test_config_defaults_and_old_checkpoints(tmp_path):
    """New configs get the paper's EFA sizes and the simplex periodic mode; a checkpoint written before
    efa_qk_activation / efa_periodic_mode existed (and with qk/v = None = num_features, grid 86) loads
    with its own sizes and identity q/k activation, and evaluates as before."""
    import torch as _t

    from so3krates.potential.checkpoint import model_from_checkpoint, save_checkpoint
    from so3krates.potential.config import So3kratesConfig
    from so3krates.potential.model import So3krates

    cfg = _model_config(efa_qk_features=None, efa_v_features=None, efa_grid=86, efa_num_heads=1,
                        efa_qk_activation="identity")
    model = _efa_model(efa_qk_features=None, efa_v_features=None, efa_grid=86, efa_num_heads=1,
                       efa_qk_activation="identity")
    pos, z, cell, pbc = _open_structure()
    e_ref = float(_energy_forces(_potential(model), pos, z, cell, pbc)["energy"])
    save_checkpoint(tmp_path / "old.ckpt", model)
    payload = _t.load(tmp_path / "old.ckpt", weights_only=False)
    for key in ("efa_qk_activation", "efa_periodic_mode"):  # written by an older version: absent
        payload["config"].pop(key)
    _t.save(payload, tmp_path / "old.ckpt")
    old = model_from_checkpoint(tmp_path / "old.ckpt", dtype=F64).eval()
    efa = old.layers[0].efa.efa
    assert efa.d_qk == cfg.num_features and efa.d_v == cfg.num_features and efa.grid_size == 86
    assert efa.qk_activation == "identity" and efa.periodic_mode == "simplex"
    assert abs(float(_energy_forces(_potential(old), pos, z, cell, pbc)["energy"]) - e_ref) < 1e-12
    new = So3krates(So3kratesConfig(num_features=128, num_heads=4, efa_layers=[True, True]))
    efa = new.layers[1].efa.efa
    assert (efa.grid_size, efa.d_qk, efa.d_v, efa.periodic_mode) == (50, 16, 32, "simplex")
    with pytest.raises(ValueError, match="efa_periodic_mode"):
        So3kratesConfig(efa_periodic_mode="ewald")
    with pytest.raises(ValueError, match="efa_qk_activation"):
        So3kratesConfig(efa_qk_activation="tanh")
