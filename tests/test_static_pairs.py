"""Capturable steps (CUDA graphs): the fixed-shape pair search (``potential/graph/static_pairs.py``) and the
potential's ``capturable`` mode — the same pairs, energies, forces and stress as the ordinary path, no host
read-back, problems reported as a status with NaN outputs instead of raised (docs/gpu.md)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import ROOT, random_periodic, small_model
from so3krates.export.exporter import export_potential
from so3krates.export.loader import load_exported, raise_for_status, set_capturable, status_message
from so3krates.potential.graph.neighbors import neighbor_list
from so3krates.potential.graph.static_pairs import plan_static_pairs, static_pairs
from so3krates.potential.potential import So3kratesPotential
from test_consistency import water_box
from test_host_syncs import host_syncs

PBC = torch.tensor([True, True, True])


def canonical(idx_i, idx_j, shifts):
    """Each pair once, whichever direction a list gives it in: sorted (i, j, shift) with (j, i, -shift) folded."""
    out = []
    for i, j, s in zip(idx_i.tolist(), idx_j.tolist(), shifts.to(torch.long).tolist()):
        out.append(min((i, j, tuple(s)), (j, i, tuple(-x for x in s))))
    return sorted(out)


def boxes():
    water = water_box(4, seed=1)
    pos, _, cell = random_periodic(20, 1, True)  # a small triclinic cell: atoms see their own images at 12 Å
    return {"water": (water.positions, np.asarray(water.cell)), "small triclinic": (pos, cell)}


@pytest.mark.parametrize("box", ["water", "small triclinic"])
@pytest.mark.parametrize("cutoff", [3.0, 5.0, 12.0])
def test_the_static_search_finds_the_pairs_of_the_ordinary_search(box, cutoff):
    pos, cell = (torch.tensor(a) for a in boxes()[box])
    ints, plan = plan_static_pairs(pos, cell, PBC, cutoff)
    rng = np.random.default_rng(0)
    moved = pos + torch.tensor(rng.normal(scale=0.3, size=pos.shape))
    moved[::5] += cell[0]  # atoms outside the cell (unwrapped, as engines pass them)
    moved[1::7] -= cell[2]
    idx_i, idx_j, shifts, valid, ok = static_pairs(moved, ints, plan, cutoff, torch.float64)
    assert bool(ok)
    assert idx_i.shape[0] == ints[1]  # the plan's fixed size, whatever was found
    ref = neighbor_list(moved, cutoff, cell, PBC, True)
    assert canonical(idx_i[valid], idx_j[valid], shifts[valid]) == canonical(*ref)
    assert bool((idx_i[valid][1:] >= idx_i[valid][:-1]).all())  # grouped by idx_i, as the ordinary list
    # the padding: atom 0 and a far image of itself, beyond the cutoff
    far = shifts[~valid] @ cell
    assert bool((idx_i[~valid] == 0).all()) and bool((idx_j[~valid] == 0).all())
    assert float(torch.linalg.norm(far, dim=1).min()) > cutoff


def test_a_full_bin_or_too_many_pairs_is_flagged_not_truncated_silently():
    water = water_box(4, seed=1)
    pos = torch.tensor(water.positions)
    cell = torch.tensor(np.asarray(water.cell))
    ints, plan = plan_static_pairs(pos, cell, PBC, 5.0)
    squeezed = pos.clone()
    squeezed[:60] = pos[:60] * 0.2 + 1.0  # 60 atoms crowded into one corner
    assert not bool(static_pairs(squeezed, ints, plan, 5.0, torch.float64)[4])
    assert bool(static_pairs(pos, ints, plan, 5.0, torch.float64)[4])


def test_a_plan_needs_a_fully_periodic_cell():
    pos = torch.tensor(water_box(2).positions)
    with pytest.raises(ValueError, match="fully periodic"):
        plan_static_pairs(pos, torch.zeros(3, 3, dtype=torch.float64), torch.tensor([False] * 3), 5.0)
    with pytest.raises(ValueError, match="fully periodic"):
        plan_static_pairs(pos, torch.eye(3, dtype=torch.float64) * 6.2, torch.tensor([True, True, False]), 5.0)


def call(module, atoms, dtype=torch.float64, stress=True, positions=None, cell=None, numbers=None):
    pos = torch.tensor(atoms.positions if positions is None else positions, dtype=dtype)
    c = torch.tensor(np.asarray(atoms.cell) if cell is None else cell, dtype=dtype)
    z = torch.tensor(atoms.numbers if numbers is None else numbers)
    return module(pos, z, c, torch.tensor(atoms.pbc), 0.0, 0.0, True, stress)


@pytest.fixture(scope="module", params=["shipped", "long-range + periodic EFA"])
def exported(request, tmp_path_factory):
    """A float64 file of each kind: the shipped demo model, and a small one with ZBL, electrostatics,
    dispersion (SO3LR's terms) and the periodic EFA."""
    path = tmp_path_factory.mktemp("capturable") / "model.pt"
    if request.param == "shipped":
        from so3krates.export.exporter import potential_from_checkpoint
        potential = potential_from_checkpoint(ROOT / "examples" / "models" / "so3krates_demo.ckpt")
    else:
        potential = So3kratesPotential(small_model(long_range=True, efa=True, periodic_efa=True, species=[1, 8]))
    export_potential(potential.eval(), path, dtype="float64")
    return path


def test_capturable_steps_equal_the_ordinary_steps(exported):
    ordinary, _ = load_exported(exported)
    capturable, _ = load_exported(exported)
    set_capturable(capturable, True)
    atoms = water_box(4, seed=2)
    rng = np.random.default_rng(4)
    for step in range(3):
        ref = call(ordinary, atoms)
        got = call(capturable, atoms)
        assert int(got["status"]) == 0
        assert abs(float(got["energy"] - ref["energy"])) < 1e-10
        assert float((got["forces"] - ref["forces"]).abs().max()) < 1e-10
        assert float((got["stress"] - ref["stress"]).abs().max()) < 1e-10
        assert float((got["atomic_energies"] - ref["atomic_energies"]).abs().max()) < 1e-10
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    assert int(capturable.potential.neighbor_list_builds) == 1  # planned once, searched with the plan since


def test_a_capturable_step_reads_nothing_back(exported):
    """After the planning call a step runs without a single read-back to the host (what a CUDA graph needs);
    the ordinary path reads back several values per step (tests/test_host_syncs.py)."""
    module, _ = load_exported(exported)
    set_capturable(module, True)
    atoms = water_box(3, seed=3)
    call(module, atoms)  # the plan: outside the graph
    syncs = host_syncs(module, torch.tensor(atoms.positions + 0.05), torch.tensor(atoms.numbers),
                       torch.tensor(np.asarray(atoms.cell)), torch.tensor(atoms.pbc), 0.0, 0.0, True, True)
    assert sum(syncs.values()) == 0, dict(syncs)


def test_problems_of_a_capturable_step_are_reported_as_status_and_nan(exported):
    module, _ = load_exported(exported)
    set_capturable(module, True)
    atoms = water_box(3, seed=3)
    bad = atoms.positions.copy()
    bad[4, 1] = np.nan
    with pytest.raises(torch.jit.Error, match="NaN"):  # the planning call checks and raises as usual
        call(module, atoms, positions=bad)
    assert int(call(module, atoms)["status"]) == 0

    out = call(module, atoms, positions=bad)
    assert int(out["status"]) == 1 and bool(torch.isnan(out["energy"])) and bool(torch.isnan(out["forces"]).all())
    with pytest.raises(ValueError, match="NaN or inf"):
        raise_for_status(out)
    numbers = atoms.numbers.copy()
    numbers[0] = 92  # uranium: unknown to both models
    assert int(call(module, atoms, numbers=numbers)["status"]) == 1
    out = call(module, atoms, cell=np.asarray(atoms.cell) * 1.01)
    assert int(out["status"]) == 2 and "fixed cell" in status_message(2)
    close = atoms.positions.copy()
    close[1] = close[0] + 0.05
    assert int(call(module, atoms, positions=close)["status"]) & 16
    assert int(call(module, atoms)["status"]) == 0  # nothing sticks: the next good step is fine
    big = water_box(5, seed=3)  # 375 atoms: a new plan, then half of them crowded into a corner
    module.potential.reset_static_plan()
    assert int(call(module, big)["status"]) == 0
    crowded = big.positions.copy()
    crowded[:180] = crowded[:180] * 0.3 + 0.5
    assert int(call(module, big, positions=crowded)["status"]) & 4

    module.potential.reset_static_plan()  # another cell (and structure): plan anew
    scaled = call(module, atoms, cell=np.asarray(atoms.cell) * 1.01, positions=atoms.positions * 1.01)
    assert int(scaled["status"]) == 0 and bool(torch.isfinite(scaled["energy"]))


def test_capturable_steps_refuse_open_boxes_and_training_clearly():
    potential = So3kratesPotential(small_model(long_range=False, species=[1, 8])).eval()
    potential.capturable = True
    atoms = water_box(2)
    atoms.pbc = False
    with pytest.raises(ValueError, match="fully periodic"):
        call(potential, atoms, stress=False, cell=np.zeros((3, 3)))
    potential.train()
    with pytest.raises(ValueError, match="eval"):
        call(potential, water_box(2), stress=False)


def test_set_capturable_refuses_a_model_without_the_mode():
    with pytest.raises(ValueError, match="re-export"):
        set_capturable(torch.nn.Linear(2, 2), True)
    kshell = So3kratesPotential(small_model(long_range=True, efa=True, periodic_efa=True, species=[1, 8],
                                            efa_periodic_mode="kshell")).eval()
    with pytest.raises(ValueError, match="kshell"):  # its number of k vectors depends on the cell
        set_capturable(kshell, True)
    kshell.capturable = True  # set directly: refused at the first call, with the same message
    with pytest.raises(ValueError, match="kshell"):
        call(kshell, water_box(2), stress=False)
