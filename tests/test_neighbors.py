"""Neighbour list: equality with a brute-force O(N^2) reference and with ASE."""
import itertools

import numpy as np
import pytest
import torch

from so3krates.potential.graph.neighbors import batched_neighbor_list, neighbor_list


def brute_force(positions, cutoff, cell, pbc):
    """O(N^2 * images) reference: set of (i, j, s0, s1, s2), r_ij = r_j - r_i + s @ cell."""
    pos = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    if not pbc.any() or np.all(cell == 0):
        pbc = np.zeros(3, bool)
    n = len(pos)
    if pbc.any():
        full = cell.copy()
        # complete zero vectors of open directions (they are never used for shifts)
        for d in range(3):
            if not np.any(full[d]):
                others = [full[e] for e in range(3) if np.any(full[e])]
                v = np.cross(others[0], others[1]) if len(others) == 2 else np.cross(
                    others[0], np.eye(3)[np.argmin(np.abs(others[0]))])
                full[d] = v / np.linalg.norm(v)
        inv = np.linalg.inv(full)
        vol = abs(np.linalg.det(full))
        heights = vol / np.linalg.norm(np.cross(full[[1, 2, 0]], full[[2, 0, 1]]), axis=1)
        frac = pos @ inv
        wrap = np.where(pbc, np.floor(frac), 0.0)
        posw = pos - wrap @ full
        nmax = [int(np.ceil(cutoff / heights[d])) + 1 if pbc[d] else 0 for d in range(3)]
    else:
        full = np.zeros((3, 3))
        wrap = np.zeros((n, 3))
        posw = pos
        nmax = [0, 0, 0]
    out = set()
    for s in itertools.product(*[range(-m, m + 1) for m in nmax]):
        s = np.array(s, dtype=np.float64)
        vec = posw[None, :, :] - posw[:, None, :] + s @ full
        d = np.sqrt((vec ** 2).sum(-1))
        mask = d < cutoff
        if not s.any():
            np.fill_diagonal(mask, False)
        for i, j in zip(*np.nonzero(mask)):
            sh = s - wrap[j] + wrap[i]
            out.add((int(i), int(j), *[int(round(x)) for x in sh]))
    return out


def as_set(idx_i, idx_j, shifts):
    sh = shifts.detach().cpu().numpy()
    assert np.all(sh == np.round(sh)), "shifts must be integers"
    res = set()
    for i, j, s in zip(idx_i.tolist(), idx_j.tolist(), np.round(sh).astype(int).tolist()):
        res.add((i, j, *s))
    assert len(res) == len(idx_i), "duplicate pairs"
    return res


def run(positions, cutoff, cell, pbc, dtype=torch.float64, **kw):
    p = torch.as_tensor(np.asarray(positions), dtype=dtype)
    c = torch.as_tensor(np.asarray(cell), dtype=dtype)
    b = torch.as_tensor(np.asarray(pbc), dtype=torch.bool)
    if kw:
        out = batched_neighbor_list(p, cutoff, c[None], b[None],
                                    torch.zeros(len(p), dtype=torch.long), 1, **kw)
    else:
        out = neighbor_list(p, cutoff, c, b)
    i, j, s = out
    assert i.dtype == torch.long and j.dtype == torch.long and s.dtype == dtype
    assert s.shape == (len(i), 3)
    # edge vectors really are shorter than the cutoff and i is sorted
    vec = p[j].double() - p[i].double() + s.double() @ c.double()
    if len(i):
        assert float(vec.norm(dim=1).max()) < cutoff + 1e-9
        assert bool((i[1:] >= i[:-1]).all())
    return as_set(i, j, s)


def check(positions, cutoff, cell, pbc, dtype=torch.float64, **kw):
    ref = brute_force(np.asarray(torch.as_tensor(np.asarray(positions), dtype=dtype).double()),
                      cutoff, cell, pbc)
    got = run(positions, cutoff, cell, pbc, dtype, **kw)
    assert got == ref, (len(got), len(ref), list(got - ref)[:5], list(ref - got)[:5])
    return got


rng = np.random.default_rng(0)

SKEWED = np.array([[7.0, 0.0, 0.0], [4.5, 6.0, 0.0], [-3.0, 2.5, 6.5]])


@pytest.mark.parametrize("seed", [0, 1])
def test_open_random(seed):
    r = np.random.default_rng(seed)
    pos = r.uniform(-6, 6, size=(150, 3))
    got = check(pos, 3.0, np.zeros((3, 3)), [False] * 3)
    assert len(got) > 0
    # pbc False with a non-zero cell is open too
    check(pos, 3.0, np.eye(3) * 5.0, [False] * 3)
    # a zero cell with pbc True is open
    check(pos, 3.0, np.zeros((3, 3)), [True] * 3)


def test_open_extended_and_sparse():
    r = np.random.default_rng(3)
    pos = np.concatenate([r.uniform(0, 5, (40, 3)), r.uniform(0, 5, (40, 3)) + 500.0,
                          [[-800.0, 2.0, 3.0], [-798.5, 2.0, 3.0]]])
    got = check(pos, 2.5, np.zeros((3, 3)), [False] * 3)
    assert (80, 81, 0, 0, 0) in got


def test_periodic_cubic_positions_outside_cell():
    pos = rng.uniform(-10, 20, size=(120, 3))
    check(pos, 3.5, np.eye(3) * 9.0, [True] * 3)


@pytest.mark.parametrize("cutoff", [2.0, 4.0, 6.0])
def test_periodic_skewed_triclinic(cutoff):
    pos = rng.uniform(-0.2, 1.2, size=(100, 3)) @ SKEWED
    check(pos, cutoff, SKEWED, [True] * 3)


def test_left_handed_cell():
    cell = SKEWED[[1, 0, 2]]
    pos = rng.uniform(0, 1, size=(60, 3)) @ cell
    check(pos, 4.0, cell, [True] * 3)


@pytest.mark.parametrize("cell", [np.eye(3) * 2.5,
                                  np.array([[2.0, 0, 0], [1.7, 1.5, 0], [0.4, -0.8, 2.2]]),
                                  np.array([[1.0, 0, 0], [0, 9.0, 0], [0, 0, 4.0]])])
def test_cell_smaller_than_twice_cutoff(cell):
    pos = rng.uniform(0, 1, size=(7, 3)) @ cell
    got = check(pos, 5.0, cell, [True] * 3)
    # an atom sees its own images
    assert any(i == j for i, j, *_ in got)


def test_single_atom_images():
    got = check([[0.1, 0.2, 0.3]], 3.1, np.eye(3) * 1.5, [True] * 3)
    # lattice points of the simple cubic lattice (a = 1.5) with 0 < |n| a < 3.1
    expected = sum(1 for n in itertools.product(range(-3, 4), repeat=3)
                   if 0 < 1.5 * np.linalg.norm(n) < 3.1)
    assert len(got) == expected


def test_mixed_pbc_slab_and_wire():
    pos = rng.uniform(0, 1, size=(80, 3)) @ SKEWED
    pos[:, 2] += rng.uniform(-5, 5, size=80)
    check(pos, 3.5, SKEWED, [True, True, False])
    # slab with a zero c vector (ASE style)
    cell = SKEWED.copy()
    cell[2] = 0.0
    check(pos, 3.5, cell, [True, True, False])
    check(pos, 3.5, cell, [False, True, False])
    # wire along c with zero a and b
    wire = np.array([[0, 0, 0], [0, 0, 0], [0.5, 0.3, 4.0]])
    check(pos, 3.5, wire, [False, False, True])
    check(pos, 3.5, SKEWED, [True, False, True])


def test_float32():
    pos = rng.uniform(0, 1, size=(120, 3)) @ SKEWED
    check(pos, 3.7, SKEWED, [True] * 3, dtype=torch.float32)
    check(pos, 3.7, np.zeros((3, 3)), [False] * 3, dtype=torch.float32)


@pytest.mark.parametrize("bins,chunk", [(1, 4194304), (2, 4194304), (3, 97), (1, 7)])
def test_bin_sizes_and_chunking(bins, chunk):
    pos = rng.uniform(0, 1, size=(90, 3)) @ SKEWED
    check(pos, 4.2, SKEWED, [True] * 3, bins_per_cutoff=bins, chunk_size=chunk)
    check(pos, 4.2, SKEWED, [True, False, True], bins_per_cutoff=bins, chunk_size=chunk)


def test_no_pairs_and_empty():
    i, j, s = neighbor_list(torch.zeros(0, 3), 3.0, torch.zeros(3, 3), torch.zeros(3, dtype=torch.bool))
    assert len(i) == 0 and s.shape == (0, 3)
    i, j, s = neighbor_list(torch.tensor([[0.0, 0, 0], [10.0, 0, 0]]), 3.0, torch.zeros(3, 3),
                            torch.zeros(3, dtype=torch.bool))
    assert len(i) == 0


def test_batched_equals_single():
    systems = [
        (rng.uniform(0, 1, (30, 3)) @ SKEWED, SKEWED, [True] * 3),
        (rng.uniform(-4, 4, (25, 3)), np.zeros((3, 3)), [False] * 3),
        (rng.uniform(0, 1, (5, 3)) @ (np.eye(3) * 2.2), np.eye(3) * 2.2, [True] * 3),
        (rng.uniform(0, 1, (20, 3)) @ SKEWED, SKEWED, [True, True, False]),
    ]
    pos = torch.tensor(np.concatenate([s[0] for s in systems]))
    cell = torch.tensor(np.stack([s[1] for s in systems]))
    pbc = torch.tensor([s[2] for s in systems])
    batch = torch.cat([torch.full((len(s[0]),), k) for k, s in enumerate(systems)])
    i, j, s = batched_neighbor_list(pos, 4.5, cell, pbc, batch, len(systems))
    got = as_set(i, j, s)
    ref = set()
    off = 0
    for p, c, b in systems:
        ref |= {(a + off, b_ + off, *sh) for a, b_, *sh in brute_force(p, 4.5, c, b)}
        off += len(p)
    assert got == ref
    assert bool((batch[i] == batch[j]).all())


def test_torchscript():
    f = torch.jit.script(neighbor_list)
    fb = torch.jit.script(batched_neighbor_list)
    pos = torch.tensor(rng.uniform(0, 1, (50, 3)) @ SKEWED)
    cell = torch.tensor(SKEWED)
    pbc = torch.tensor([True, True, True])
    a = f(pos, 4.0, cell, pbc)
    b = neighbor_list(pos, 4.0, cell, pbc)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    c = fb(pos, 4.0, cell[None], pbc[None], torch.zeros(50, dtype=torch.long), 1)
    assert torch.equal(c[0], b[0])


def test_zero_volume_cell_raises():
    pos = torch.rand(5, 3)
    flat = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [3.0, 3.0, 0]])
    with pytest.raises(ValueError, match="zero volume.*independent lattice vectors"):
        neighbor_list(pos, 2.0, flat, torch.tensor([True, True, True]))
    zero_c = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="zero lattice vector.*vector c"):
        neighbor_list(pos, 2.0, zero_c, torch.tensor([True, True, True]))
    # the same cell is fine when c is not periodic
    neighbor_list(pos, 2.0, zero_c, torch.tensor([True, True, False]))
    thin = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 1e-6]])
    with pytest.raises(ValueError, match="too thin for the cutoff"):
        neighbor_list(pos, 5.0, thin, torch.tensor([True, True, True]))
    with pytest.raises(ValueError, match="NaN"):
        neighbor_list(torch.full((2, 3), float("nan")), 2.0, torch.zeros(3, 3),
                      torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        neighbor_list(torch.rand(4, 2), 2.0, torch.zeros(3, 3), torch.zeros(3, dtype=torch.bool))


def water_box(n_side, seed=0):
    """Water at ~1 g/cm^3 on a cubic lattice (3 atoms per molecule, random orientations)."""
    r = np.random.default_rng(seed)
    a = (18.015 / 0.6022) ** (1 / 3)  # Å per molecule at 1 g/cm^3
    mol = np.array([[0, 0, 0], [0.9572, 0, 0], [-0.2400, 0.9266, 0]])
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * a
    q = r.normal(size=(len(grid), 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    R = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                  2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                  2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)
    R = R.reshape(-1, 3, 3)
    pos = (grid[:, None, :] + np.einsum("mij,aj->mai", R, mol)).reshape(-1, 3)
    return pos, np.eye(3) * a * n_side


@pytest.mark.parametrize("pbc", [[True] * 3, [True, False, True], [False] * 3])
def test_against_ase(pbc):
    import ase.neighborlist as ase_nl
    from ase import Atoms
    pos, cell = water_box(5)
    cell = cell @ np.array([[1, 0, 0], [0.2, 1, 0], [0.1, -0.3, 1]])
    atoms = Atoms("OH2" * (len(pos) // 3), positions=pos, cell=cell, pbc=pbc)
    for cutoff in (2.0, 5.0):
        i, j, S = ase_nl.neighbor_list("ijS", atoms, cutoff)
        ref = {(a, b, *s) for a, b, s in zip(i.tolist(), j.tolist(), S.tolist())}
        got = run(pos, cutoff, cell, pbc)
        assert got == ref


def test_against_ase_small_triclinic_cell():
    import ase.neighborlist as ase_nl
    from ase import Atoms
    cell = np.array([[2.0, 0, 0], [1.7, 1.5, 0], [0.4, -0.8, 2.2]])
    pos = rng.uniform(0, 1, (6, 3)) @ cell
    atoms = Atoms("H6", positions=pos, cell=cell, pbc=True)
    i, j, S = ase_nl.neighbor_list("ijS", atoms, 6.0)
    ref = {(a, b, *s) for a, b, s in zip(i.tolist(), j.tolist(), S.tolist())}
    assert run(pos, 6.0, cell, [True] * 3) == ref


@pytest.mark.parametrize("case", ["periodic", "small_cell", "open", "slab"])
def test_half_list_holds_each_pair_once(case):
    """half=True keeps one direction of every pair; with the reversed pairs it is the full list."""
    if case == "periodic":
        pos, cell, pbc, cutoff = rng.uniform(0, 1, (60, 3)) @ SKEWED, SKEWED, [True] * 3, 4.5
    elif case == "small_cell":  # several images of each atom, including an atom and its own images
        cell = np.array([[2.0, 0, 0], [1.7, 1.5, 0], [0.4, -0.8, 2.2]])
        pos, pbc, cutoff = rng.uniform(0, 1, (5, 3)) @ cell, [True] * 3, 6.0
    elif case == "open":
        pos, cell, pbc, cutoff = rng.uniform(-5, 5, (70, 3)), np.zeros((3, 3)), [False] * 3, 3.5
    else:
        pos, cell, pbc, cutoff = rng.uniform(0, 1, (50, 3)) @ SKEWED, SKEWED, [True, False, True], 4.0
    p = torch.tensor(pos)
    c = torch.tensor(cell)
    b = torch.tensor(pbc)
    full = as_set(*neighbor_list(p, cutoff, c, b))
    i, j, s = neighbor_list(p, cutoff, c, b, half=True)
    half = as_set(i, j, s)
    reverse = {(b_, a, -s0, -s1, -s2) for a, b_, s0, s1, s2 in half}
    assert half <= full and not (half & reverse)
    # the full list may hold a pair at |r| = cutoff (to rounding) in one direction only; apart from
    # those, the half list and its reverse are the full list
    def length(t):
        return float(np.linalg.norm(pos[t[1]] - pos[t[0]] + np.array(t[2:]) @ cell))
    odd = (full - (half | reverse)) | ((half | reverse) - full)
    assert all(abs(length(t) - cutoff) < 1e-9 for t in odd), sorted(length(t) for t in odd)[:3]
    assert len(odd) <= 2
    # the same with several candidate chunks and through TorchScript
    i2, j2, s2 = batched_neighbor_list(p, cutoff, c[None], b[None], torch.zeros(len(p), dtype=torch.long), 1,
                                       0, 13, True)
    assert as_set(i2, j2, s2) == half
    f = torch.jit.script(neighbor_list)
    assert as_set(*f(p, cutoff, c, b, True)) == half
