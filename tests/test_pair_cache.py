"""Pair lists reused across calls with a skin (potential/graph/pair_cache.py, So3kratesPotential.neighbor_skin):
the same pairs as a new search while valid, a new search once an atom moved skin/2 or the cell changed, in eager,
TorchScript and frozen modules; bad skins refused."""
import numpy as np
import pytest
import torch

from helpers import random_molecule, random_periodic, small_model
from so3krates.export.loader import resolve_neighbor_skin, set_neighbor_skin
from so3krates.potential.graph.neighbors import neighbor_list
from so3krates.potential.graph.pair_cache import lists_still_valid, select_within, split_candidates
from so3krates.potential.potential import So3kratesPotential


def _pair_set(i, j, s):
    """Unordered pairs as a set: (a, b, shift) with (i, j, s) and (j, i, -s) the same pair."""
    out = set()
    for a, b, t in zip(i.tolist(), j.tolist(), s.round().to(torch.long).tolist()):
        t = tuple(t)
        if (a, t) > (b, tuple(-x for x in t)):
            a, b, t = b, a, tuple(-x for x in t)
        out.add((a, b, t))
    return out


def _moved(pos, rng, max_step):
    """Every atom displaced by less than max_step Å in a random direction."""
    d = rng.normal(size=pos.shape)
    d *= (rng.uniform(0.0, 1.0, (len(pos), 1)) * max_step) / np.linalg.norm(d, axis=1, keepdims=True)
    return pos + d


@pytest.mark.parametrize("periodic", [True, False], ids=["triclinic", "open"])
def test_selected_pairs_equal_a_new_search(periodic):
    rng = np.random.default_rng(3)
    if periodic:
        pos0, _, cell = random_periodic(40, seed=5)
        pbc = torch.ones(3, dtype=torch.bool)
    else:
        pos0, _ = random_molecule(30, seed=5, box=7.0)
        cell = np.zeros((3, 3))
        pbc = torch.zeros(3, dtype=torch.bool)
    cell_t = torch.tensor(cell)
    cutoff, skin = 4.0, 1.2  # cutoff + skin > half the cell: several images of one pair
    p0 = torch.tensor(pos0)
    groups = split_candidates(p0, cell_t, *neighbor_list(p0, cutoff + skin, cell_t, pbc, True), cutoff, skin)
    assert groups[0].shape[0] > 0 and groups[3].shape[0] > 0  # both groups in use
    kept = [p0.clone(), cell_t.clone(), pbc.clone()] + groups
    for step in range(4):
        p = torch.tensor(_moved(pos0, rng, 0.499 * skin))
        assert lists_still_valid(kept, p, cell_t, pbc, skin)
        got = select_within(p, cell_t, groups, cutoff)
        want = neighbor_list(p, cutoff, cell_t, pbc, True)
        assert got[0].shape[0] == want[0].shape[0]
        assert _pair_set(*got) == _pair_set(*want)


def test_lists_become_invalid():
    pos0, _, cell = random_periodic(20, seed=2)
    p0, c0, pbc = torch.tensor(pos0), torch.tensor(cell), torch.ones(3, dtype=torch.bool)
    kept = [p0.clone(), c0.clone(), pbc.clone()]
    skin = 1.0
    assert lists_still_valid(kept, p0 + 0.2, c0, pbc, skin)  # 0.35 Å < skin / 2
    far = p0.clone()
    far[7, 1] += 0.5  # one atom at skin / 2
    assert not lists_still_valid(kept, far, c0, pbc, skin)
    assert not lists_still_valid(kept, p0 + c0[0], c0, pbc, skin)  # wrapped by a lattice vector: moved
    assert not lists_still_valid(kept, p0, c0 * 1.001, pbc, skin)  # another cell (a barostat step)
    assert not lists_still_valid(kept, p0, c0, torch.tensor([True, True, False]), skin)
    assert not lists_still_valid(kept, p0[:-1], c0, pbc, skin)  # another number of atoms
    assert not lists_still_valid(kept, p0.float(), c0, pbc, skin)  # another dtype
    assert not lists_still_valid(kept, p0, c0, pbc, 0.0)
    assert not lists_still_valid([], p0, c0, pbc, skin)


def _trajectory(pos0, cell, rng, skin):
    """(positions, cell, whether a new search is due) of a short walk: small steps, a jump, a new cell."""
    out, pos, ref = [], pos0.copy(), None
    for step in range(6):
        pos = pos + rng.normal(0.0, 0.02, pos.shape)
        out.append((pos.copy(), cell, ref is None or bool(np.linalg.norm(pos - ref, axis=1).max() >= skin / 2)))
        if out[-1][2]:
            ref = pos.copy()
    pos = pos.copy()
    pos[3] += [0.0, 0.7 * skin, 0.0]
    out.append((pos, cell, True))
    out.append((pos, cell * 1.01, True))
    out.append((pos + 0.01, cell * 1.01, False))
    return out


def _potential(skin, script):
    pot = So3kratesPotential(small_model(seed=4)).eval()
    pot.neighbor_skin = skin
    return torch.jit.script(pot) if script else pot


@pytest.mark.parametrize("script", [False, True], ids=["eager", "torchscript"])
def test_potential_reuses_lists_with_the_results_of_a_new_search(script):
    """A long-range model (local 3 Å, long-range 4.5 Å cutoffs, a ~7 Å triclinic cell): energies, forces
    and stress with a 1 Å skin equal a new search per call to 1e-10 along a walk; searches only when due."""
    pos0, z, cell = random_periodic(20, seed=1)
    rng = np.random.default_rng(0)
    skin = 1.0
    fresh, reused = _potential(0.0, script), _potential(skin, script)
    zt, pbc = torch.tensor(z), torch.ones(3, dtype=torch.bool)
    builds = reused.neighbor_list_builds
    for pos, c, due in _trajectory(pos0, cell, rng, skin):
        args = (torch.tensor(pos), zt, torch.tensor(c), pbc, 0.0, 0.0, True, True)
        a, b = fresh(*args), reused(*args)
        for key in ("energy", "forces", "stress"):
            assert torch.allclose(a[key], b[key], rtol=0.0, atol=1e-10), key
        assert reused.neighbor_list_builds == builds + int(due)
        builds = reused.neighbor_list_builds
    assert builds <= 5  # 9 calls: the small steps reused the lists


def test_frozen_module_reuses_lists_correctly():
    """openmm-torch runs ``torch.jit.freeze`` of the module: the pair cache stays a mutable attribute (not a
    frozen constant), so a frozen module still searches again when due — its results follow a new search."""
    pos0, z, cell = random_periodic(20, seed=1)
    frozen = torch.jit.freeze(_potential(1.0, True).eval(), preserved_attrs=[])
    fresh = _potential(0.0, False)
    zt, pbc = torch.tensor(z), torch.ones(3, dtype=torch.bool)
    for pos, c, _ in _trajectory(pos0, cell, np.random.default_rng(1), 1.0):
        args = (torch.tensor(pos), zt, torch.tensor(c), pbc, 0.0, 0.0, True, False)
        a, b = fresh(*args), frozen(*args)
        assert torch.allclose(a["energy"], b["energy"], rtol=0.0, atol=1e-10)
        assert torch.allclose(a["forces"], b["forces"], rtol=0.0, atol=1e-10)


def test_bad_skin_is_refused():
    pot = _potential(0.0, False)
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="neighbor skin must be a finite distance >= 0 Å"):
            set_neighbor_skin(pot, bad)
    assert set_neighbor_skin(pot, None, 1.0) == 1.0 and pot.neighbor_skin == 1.0
    assert set_neighbor_skin(pot, 0.0, 1.0) == 0.0 and pot.neighbor_skin == 0.0
    scripted = _potential(0.0, True)
    scripted.neighbor_skin = -1.0  # set directly on the module: refused at the call, with the fix
    pos, z, cell = random_periodic(20, seed=1)
    with pytest.raises(Exception, match="neighbor_skin must be >= 0 Å"):
        scripted(torch.tensor(pos), torch.tensor(z), torch.tensor(cell), torch.ones(3, dtype=torch.bool))

    class Foreign(torch.nn.Module):  # no pair cache (a pt2 package, an older export)
        pass

    assert resolve_neighbor_skin(Foreign(), None, 1.0) == 0.0  # the MD default quietly falls back
    with pytest.raises(ValueError, match="cannot reuse pair lists"):
        resolve_neighbor_skin(Foreign(), 1.0)
