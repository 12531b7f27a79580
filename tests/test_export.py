"""Exported TorchScript files: equality with the eager model, engine entry points, metadata, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from ase.io import read
from ase.neighborlist import neighbor_list as ase_neighbor_list

from helpers import ROOT, periodic_images_within, random_molecule, random_periodic, small_model, so3lr_dir
from so3krates.export.exporter import export_potential
from so3krates.export.metadata import FORMAT_VERSION, METADATA_NAME, ModelFileError, load_exported, read_metadata
from so3krates.potential.calculator import So3kratesPotential


def _t(x, dtype=torch.float64):
    return torch.tensor(np.asarray(x), dtype=dtype)


def _eval(module, pos, z, cell=None, pbc=(False,) * 3, dtype=torch.float64, stress=False):
    cell = np.zeros((3, 3)) if cell is None else cell
    out = module(_t(pos, dtype), torch.tensor(z, dtype=torch.long), _t(cell, dtype), torch.tensor(pbc),
                 0.0, 0.0, True, stress)
    return {k: v.detach() for k, v in out.items()}


CASES = [
    dict(long_range=False),
    dict(long_range=True),
    dict(long_range=False, efa=True),
]


@pytest.mark.parametrize("kw", CASES, ids=["local", "long_range", "efa"])
def test_exported_equals_eager_float64(tmp_path, kw):
    pot = So3kratesPotential(small_model(**kw))
    path = tmp_path / "m.pt"
    export_potential(pot, path, dtype="float64")
    module, meta = load_exported(path)
    pos, z = random_molecule(14, seed=3)
    a, b = _eval(pot, pos, z), _eval(module, pos, z)
    assert abs(float(a["energy"] - b["energy"])) <= 1e-10 * max(1.0, abs(float(a["energy"])))
    assert float((a["forces"] - b["forces"]).abs().max()) <= 1e-10
    # periodic, triclinic, with stress (periodic EFA variant for the EFA model)
    if kw.get("efa"):
        pot = So3kratesPotential(small_model(**kw, periodic_efa=True))
        export_potential(pot, path, dtype="float64")
        module, _ = load_exported(path)
    pos, z, cell = random_periodic(18, seed=4)
    a = _eval(pot, pos, z, cell, (True,) * 3, stress=True)
    b = _eval(module, pos, z, cell, (True,) * 3, stress=True)
    assert abs(float(a["energy"] - b["energy"])) <= 1e-10 * max(1.0, abs(float(a["energy"])))
    assert float((a["forces"] - b["forces"]).abs().max()) <= 1e-10
    assert float((a["stress"] - b["stress"]).abs().max()) <= 1e-10


def test_exported_float32_matches_float64(tmp_path):
    pot = So3kratesPotential(small_model(long_range=True))
    export_potential(pot, tmp_path / "m32.pt", dtype="float32")
    module, meta = load_exported(tmp_path / "m32.pt")
    assert meta["dtype"] == "float32"
    pos, z, cell = random_periodic(18, seed=5)
    ref = _eval(So3kratesPotential(small_model(long_range=True)), pos, z, cell, (True,) * 3)
    out = _eval(module, pos, z, cell, (True,) * 3, dtype=torch.float32)
    assert out["energy"].dtype == torch.float32
    assert abs(float(out["energy"]) - float(ref["energy"])) <= 2e-6 * abs(float(ref["energy"])) + 1e-5
    fmax = float(ref["forces"].abs().max())
    assert float((out["forces"].double() - ref["forces"]).abs().max()) <= 1e-5 * fmax + 1e-5


def test_metadata_and_info_cli(tmp_path):
    pot = So3kratesPotential(small_model(long_range=True))
    meta = export_potential(pot, tmp_path / "m.pt", dtype="float64")
    assert meta == read_metadata(tmp_path / "m.pt")
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["cutoff"] == 3.0 and meta["cutoff_lr"] == 4.5 and meta["num_layers"] == 2
    assert meta["receptive_field"] == pytest.approx(2 * 3.0 + 4.5)
    assert meta["species"] == [1, 6, 8] and meta["symbols"] == ["H", "C", "O"]
    assert meta["units"]["length"] == "Angstrom" and meta["units"]["energy"] == "eV"
    assert meta["num_globals"] == 2
    assert {"forward", "engine_begin", "engine_continue", "atomic_energies_from_edges"} <= set(meta["entry_points"])
    assert meta["ghost_shell"] == pytest.approx(max(2 * 3.0, 4.5))
    module, _ = load_exported(tmp_path / "m.pt")
    for name in meta["entry_points"]:  # every listed entry point exists in the file
        assert hasattr(module, name), name
    assert float(module.engine_ghost_shell()) == pytest.approx(meta["ghost_shell"])
    out = subprocess.run([sys.executable, "-m", "so3krates.cli", "info", str(tmp_path / "m.pt")],
                         capture_output=True, text=True, check=True).stdout
    assert "2 layers" in out and "receptive field 10.5 Å" in out and "elements H C O" in out


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        read_metadata(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match="not a TorchScript archive"):
        read_metadata(tmp_path / "junk.pt")
    foreign = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(foreign, str(tmp_path / "foreign.pt"))
    with pytest.raises(ModelFileError, match="not a so3krates model"):
        load_exported(tmp_path / "foreign.pt")
    # a file from a newer format version
    meta = export_potential(So3kratesPotential(small_model(long_range=False)), tmp_path / "m.pt")
    newer = tmp_path / "newer.pt"
    with zipfile.ZipFile(tmp_path / "m.pt") as zin, zipfile.ZipFile(newer, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith(METADATA_NAME):
                data = json.dumps(dict(meta, format_version=FORMAT_VERSION + 1)).encode()
            zout.writestr(item, data)
    with pytest.raises(ModelFileError, match="newer than this package reads"):
        load_exported(newer)
    # the CLI turns these into one-line errors with exit code 2
    res = subprocess.run([sys.executable, "-m", "so3krates.cli", "info", str(tmp_path / "foreign.pt")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "not a so3krates model" in res.stderr and "Traceback" not in res.stderr


def test_exported_file_loads_without_so3krates(tmp_path):
    """A fresh process with only torch: importing so3krates is made impossible."""
    export_potential(So3kratesPotential(small_model(long_range=True, efa=True)), tmp_path / "m.pt")
    pos, z = random_molecule(10, seed=7)
    np.save(tmp_path / "pos.npy", pos)
    np.save(tmp_path / "z.npy", z)
    script = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'so3krates':
            raise ImportError('so3krates must not be needed to run an exported file')
sys.meta_path.insert(0, Block())
import numpy as np, torch
m = torch.jit.load(r'{tmp_path / "m.pt"}')
pos = torch.tensor(np.load(r'{tmp_path / "pos.npy"}'), dtype=torch.float64)
z = torch.tensor(np.load(r'{tmp_path / "z.npy"}'), dtype=torch.long)
out = m(pos, z, torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.bool), 0.0, 0.0, True, False)
print(repr(float(out['energy'].detach())))
assert not [m for m in sys.modules if m == 'so3krates' or m.startswith('so3krates.')]
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    pot = So3kratesPotential(small_model(long_range=True, efa=True))
    ref = float(_eval(pot, pos, z)["energy"])
    assert float(res.stdout.strip()) == pytest.approx(ref, rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------- engine entry point


def _engine_energy_forces(module, meta, all_pos, all_z, owner, owned_sets):
    """Energy and forces the way the LAMMPS pair style computes them, with each set in `owned_sets` a
    'rank' (its owned atoms first, everything else as ghosts), global sums reduced across ranks, and
    the adjoint of the global sums reduced and back-propagated through each rank's partial sums."""
    n_owned_total = int(owner.max()) + 1
    ranks = []
    for owned in owned_sets:
        order = np.concatenate([owned, np.setdiff1d(np.arange(len(all_z)), owned)])
        pos = torch.tensor(all_pos[order], dtype=torch.float64, requires_grad=True)
        zz = torch.tensor(all_z[order], dtype=torch.long)
        i, j, _ = ase_neighbor_list("ijS", _atoms(all_pos[order], all_z[order]),
                                    max(meta["cutoff"], meta["cutoff_lr"]) + 0.3)  # with a 'skin'
        ranks.append((order, pos, zz, torch.tensor(i), torch.tensor(j), len(owned)))
    partials = [module.global_partials(p, zz, i, j, nl, 0.0, 0.0) for (_, p, zz, i, j, nl) in ranks]
    total = torch.stack(partials).sum(0).detach() if partials[0].numel() else partials[0].detach()
    energy = 0.0
    forces = np.zeros((n_owned_total, 3))
    adjoints = []
    grads = []
    for (order, pos, zz, i, j, nl) in ranks:
        g = total.clone().requires_grad_(True)
        e = module.atomic_energies_from_edges(pos, zz, i, j, nl, 0.0, 0.0, g)[:nl].sum()
        inputs = [pos, g] if g.numel() else [pos]
        res = torch.autograd.grad(e, inputs, allow_unused=True)
        energy += float(e)
        grads.append(res[0] if res[0] is not None else torch.zeros_like(pos))
        adjoints.append(res[1] if g.numel() and res[1] is not None else None)
    if adjoints[0] is not None:
        adj = torch.stack(adjoints).sum(0)  # MPI_Allreduce of dE_rank/dG
        for k, ((order, pos, zz, i, j, nl), part) in enumerate(zip(ranks, partials)):
            (gp,) = torch.autograd.grad(part, pos, grad_outputs=adj, retain_graph=True)
            grads[k] = grads[k] + gp
    for (order, *_), g in zip(ranks, grads):
        np.add.at(forces, owner[order], -g.numpy())  # reverse communication: ghosts -> owners
    return energy, forces


def _atoms(pos, z):
    from ase import Atoms
    return Atoms(numbers=z, positions=pos, pbc=False)


@pytest.mark.parametrize("long_range", [False, True], ids=["local", "long_range"])
def test_engine_entry_points_match_forward_on_1_and_2_ranks(tmp_path, long_range):
    pot = So3kratesPotential(small_model(long_range=long_range))
    meta = export_potential(pot, tmp_path / "m.pt", dtype="float64")
    module, meta = load_exported(tmp_path / "m.pt")
    pos, z, cell = random_periodic(16, seed=9)
    ref = _eval(module, pos, z, cell, (True,) * 3)
    all_pos, all_z, owner = periodic_images_within(pos, z, cell, meta["receptive_field"])
    n = len(z)
    for sets in ([np.arange(n)], [np.arange(0, n, 2), np.arange(1, n, 2)]):
        energy, forces = _engine_energy_forces(module, meta, all_pos, all_z, owner, sets)
        assert abs(energy - float(ref["energy"])) <= 1e-10 * max(1.0, abs(float(ref["energy"])))
        assert np.abs(forces - ref["forces"].numpy()).max() <= 1e-10


# ----------------------------------------------------------------------------- SO3LR through the file
@pytest.fixture(scope="module")
def so3lr_file(tmp_path_factory):
    from so3krates.potential.convert import convert_to_checkpoint
    from so3krates.export.exporter import export_checkpoint
    d = tmp_path_factory.mktemp("so3lr")
    convert_to_checkpoint(so3lr_dir() / "params.pkl", d / "so3lr.ckpt")
    export_checkpoint(str(d / "so3lr.ckpt"), str(d / "so3lr.pt"), dtype="float64")
    return d / "so3lr.pt"


def test_so3lr_parity_through_exported_file_and_ase(so3lr_file):
    from so3krates.ase import So3kratesCalculator
    atoms = read(so3lr_dir() / "tests" / "dha.xyz")
    atoms.pbc = False
    atoms.cell = None
    ref = np.load(so3lr_dir() / "tests" / "dha_ase.npz")
    atoms.calc = So3kratesCalculator(so3lr_file)
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    e_ref = float(np.asarray(ref["energy"]).reshape(-1)[0])
    assert abs(e - e_ref) <= 1e-5 + 1e-6 * abs(e_ref)
    assert np.abs(f - ref["forces"].reshape(f.shape)).max() <= 1e-4
    assert atoms.get_potential_energies().sum() == pytest.approx(e, abs=1e-9)
    # the checkpoint through the same calculator gives the same numbers (eager path)
    atoms.calc = So3kratesCalculator(str(so3lr_file).replace(".pt", ".ckpt"))
    assert atoms.get_potential_energy() == pytest.approx(e, abs=1e-10)


def test_so3lr_water_box_through_exported_file(so3lr_file):
    from so3krates.ase import So3kratesCalculator
    atoms = read(so3lr_dir() / "tests" / "water_64.xyz")
    atoms = atoms.repeat((2, 2, 2))
    atoms.pbc = True
    ref = np.load(so3lr_dir() / "tests" / "water_ase.npz")
    atoms.calc = So3kratesCalculator(so3lr_file)
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    e_ref = float(np.asarray(ref["energy"]).reshape(-1)[0])
    assert abs(e - e_ref) <= 1e-6 * abs(e_ref)
    assert np.abs(f - ref["forces"].reshape(f.shape)).max() <= 5e-4
    assert atoms.get_stress().shape == (6,)


def test_engine_entry_point_refuses_efa_models(tmp_path):
    export_potential(So3kratesPotential(small_model(long_range=False, efa=True)), tmp_path / "m.pt")
    module, meta = load_exported(tmp_path / "m.pt")
    assert meta["efa"] is True
    pos = torch.zeros(2, 3, dtype=torch.float64)
    pos[1, 0] = 1.0
    with pytest.raises(Exception, match="Euclidean fast attention"):
        module.atomic_energies_from_edges(pos, torch.tensor([1, 1]), torch.tensor([0, 1]), torch.tensor([1, 0]),
                                          2, 0.0, 0.0, torch.zeros(0, dtype=torch.float64))
