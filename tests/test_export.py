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

from helpers import ROOT, random_molecule, random_periodic, small_model, so3lr_dir
from so3krates.export.exporter import export_potential
from so3krates.export.loader import load_exported
from so3krates.export.metadata import FORMAT_VERSION, METADATA_NAME, ModelFileError, read_metadata
from so3krates.potential.potential import So3kratesPotential


def _t(x, dtype=torch.float64):
    return torch.tensor(np.asarray(x), dtype=dtype)


def _eval(module, pos, z, cell=None, pbc=(False,) * 3, dtype=torch.float64, stress=False, charge=0.0):
    cell = np.zeros((3, 3)) if cell is None else cell
    out = module(_t(pos, dtype), torch.tensor(z, dtype=torch.long), _t(cell, dtype), torch.tensor(pbc),
                 charge, 0.0, True, stress)
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
    assert {"forward", "engine_layout", "engine_atoms", "engine_atoms_vjp", "engine_pairs",
            "engine_pairs_vjp"} <= set(meta["entry_points"])
    assert meta["ghost_cutoff"] == pytest.approx(max(3.0, 4.5))
    module, _ = load_exported(tmp_path / "m.pt")
    for name in meta["entry_points"]:  # every listed entry point exists in the file
        assert hasattr(module, name), name
    layout = module.engine_layout()
    assert layout["num_layers"] == 2 and layout["feature_width"] == 16 + 3 + 5 and layout["exchange_width"] == 2
    assert layout["readout_sums"] == 2 and layout["embedding_sums"] == 1
    out = subprocess.run([sys.executable, "-m", "so3krates.cli", "info", str(tmp_path / "m.pt")],
                         capture_output=True, text=True, check=True).stdout
    assert "2 layers" in out and "receptive field 10.5 Å" in out and "elements H C O" in out


def test_shipped_model_file_is_current():
    """examples/models/so3krates_demo.pt (what the README's main job and the LAMMPS examples load) is in this
    package's file format and is the shipped checkpoint exported: a protocol change must re-export it."""
    from so3krates.export.exporter import potential_from_checkpoint

    path = ROOT / "examples" / "models" / "so3krates_demo.pt"
    meta = read_metadata(path)
    assert meta["format_version"] == FORMAT_VERSION, \
        "re-export: so3krates export examples/models/so3krates_demo.ckpt -o examples/models/so3krates_demo.pt"
    assert meta["dtype"] == "float32"
    module, _ = load_exported(path)
    assert hasattr(module.potential, "capturable"), \
        "re-export (the file predates capturable steps): so3krates export examples/models/so3krates_demo.ckpt -o " \
        "examples/models/so3krates_demo.pt"
    eager = potential_from_checkpoint(str(ROOT / "examples" / "models" / "so3krates_demo.ckpt"), "float32")
    pos, z = random_molecule(12, seed=2, species=(1, 6, 7, 8))
    a = _eval(eager, pos, z, dtype=torch.float32)
    b = _eval(module, pos, z, dtype=torch.float32)
    assert abs(float(a["energy"] - b["energy"])) <= 1e-5 * max(1.0, abs(float(a["energy"])))
    assert float((a["forces"] - b["forces"]).abs().max()) <= 1e-4


def test_exported_filter_memory_is_settable_and_changes_no_result():
    """The lean pass' memory-for-speed budget (``potential.filter_memory_mb``: geometry and filter state kept
    between forward and backward) is an attribute of the loaded file; 0 (recompute all), a budget that keeps
    part of it and the default give the same energies and forces."""
    module, _ = load_exported(ROOT / "examples" / "models" / "so3krates_demo.pt")
    assert module.potential.filter_memory_mb == 1024
    pos, z = random_molecule(40, seed=5, species=(1, 6, 7, 8))
    out = []
    for mb in (1024, 0, 1):
        module.potential.filter_memory_mb = mb
        out.append(_eval(module, pos, z, dtype=torch.float32))
    module.potential.filter_memory_mb = 1024
    for o in out[1:]:
        assert abs(float(o["energy"] - out[0]["energy"])) <= 1e-6 * max(1.0, abs(float(out[0]["energy"])))
        # float32: the kept and the recomputed filters differ in rounding
        f_max = float(out[0]["forces"].abs().max())
        assert float((o["forces"] - out[0]["forces"]).abs().max()) <= 1e-6 * f_max + 2e-5
    assert float(out[0]["forces"].abs().max()) > 1e-2


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


# ----------------------------------------------------------------------------- engine entry points
ENGINE_MODELS = {
    "local": dict(long_range=False),
    "long_range": dict(long_range=True),  # ZBL, electrostatics, dispersion, charge and spin embeddings
    "efa": dict(long_range=True, efa=True),
}


@pytest.mark.parametrize("kind", list(ENGINE_MODELS))
@pytest.mark.parametrize("periodic", [True, False], ids=["periodic", "open"])
def test_engine_stages_on_simulated_ranks_equal_forward(tmp_path, kind, periodic):
    """The exported stages with halo exchange and sums over ranks (export/engine_reference.py, what the
    LAMMPS pair style does) = the file's forward, on 1, 2 and 5 simulated ranks (5 ranks on 16 atoms
    leave some ranks without atoms), to 1e-10 in energies, forces and per-atom energies."""
    from so3krates.export import engine_reference
    model = small_model(**ENGINE_MODELS[kind])
    if kind == "efa":
        with torch.no_grad():  # the EFA output layers start at zero: make them count
            for layer in model.layers:
                layer.efa.mlp2.weight.normal_(0.0, 0.5)
    export_potential(So3kratesPotential(model), tmp_path / "m.pt", dtype="float64")
    module, _ = load_exported(tmp_path / "m.pt")
    pos, z, cell = random_periodic(16, seed=9)
    pbc = np.array([periodic] * 3)
    if not periodic:
        cell = np.zeros((3, 3))
    ref = _eval(module, pos, z, cell, tuple(pbc))
    for nranks in (1, 2, 5):
        out = engine_reference.evaluate(module, pos, z, cell, pbc, nranks, charge=1.0 if kind != "local" else 0.0,
                                        chunk=11)
        if kind != "local":  # the reference for a charged system
            ref = _eval(module, pos, z, cell, tuple(pbc), charge=1.0)
        assert abs(out["energy"] - float(ref["energy"])) <= 1e-10 * max(1.0, abs(float(ref["energy"])))
        assert np.abs(out["forces"] - ref["forces"].numpy()).max() <= 1e-10
        assert np.abs(out["atomic_energies"] - ref["atomic_energies"].numpy()).max() <= 1e-10


def test_engine_stage_errors(tmp_path):
    export_potential(So3kratesPotential(small_model(long_range=False)), tmp_path / "m.pt")
    module, _ = load_exported(tmp_path / "m.pt")
    pos = torch.zeros(2, 3, dtype=torch.float64)
    pos[1, 0] = float("nan")
    with pytest.raises(Exception, match="NaN or inf"):
        module.engine_atoms("check", 0, [pos, torch.tensor([1, 1])])
    with pytest.raises(Exception, match=r"unknown element Cl .*only knows H, C, O"):
        module.engine_atoms("check", 0, [torch.zeros(2, 3, dtype=torch.float64), torch.tensor([1, 17])])
    with pytest.raises(Exception, match="unknown stage 'nonsense'"):
        module.engine_atoms("nonsense", 0, [pos])


# ----------------------------------------------------------------------------- SO3LR through the file
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
