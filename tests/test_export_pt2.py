"""`so3krates export --format pt2` (torch.export + AOTInductor): equality with the eager model and the
TorchScript file, the ASE calculator on a .pt2, `so3krates info`, and the clear refusals.

Compiling takes about a minute on 2 CPU cores: one small model is compiled once for the module."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import random_molecule, random_periodic, small_model
from so3krates.export.loader import load_exported
from so3krates.export.metadata import read_metadata
from so3krates.potential.potential import So3kratesPotential
from so3krates.potential.checkpoint import save_checkpoint

CLI = [sys.executable, "-m", "so3krates.cli"]


def _model(**kw):
    """One layer, ZBL, electrostatics and dispersion (4.5 Å), charge and spin embeddings."""
    return small_model(long_range=True, num_layers=1, seed=4, **kw)


@pytest.fixture(scope="module")
def pt2_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("pt2")
    save_checkpoint(d / "m.ckpt", _model())
    res = subprocess.run(CLI + ["export", str(d / "m.ckpt"), "--format", "pt2", "--dtype", "float64",
                                "-o", str(d / "m.pt2")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "verified against the eager model" in res.stdout
    return d / "m.pt2"


def _run(module, pos, z, cell=None, pbc=False, stress=False):
    cell = np.zeros((3, 3)) if cell is None else cell
    out = module(torch.tensor(pos), torch.tensor(z), torch.tensor(cell), torch.tensor([pbc] * 3), 0.0, 0.0,
                 True, stress)
    return {k: v.detach() for k, v in out.items()}


def test_pt2_equals_eager_open_and_periodic(pt2_file):
    module, meta = load_exported(pt2_file)
    assert meta["format"] == "pt2" and meta["dtype"] == "float64"
    eager = So3kratesPotential(_model())
    for n, seed in ((5, 1), (31, 2)):  # dynamic shapes: sizes other than the traced one
        pos, z = random_molecule(n, seed=seed)
        a, b = _run(eager, pos, z), _run(module, pos, z)
        assert abs(float(a["energy"] - b["energy"])) <= 1e-10 * max(1.0, abs(float(a["energy"])))
        assert float((a["forces"] - b["forces"]).abs().max()) <= 1e-10
        assert float((a["atomic_energies"] - b["atomic_energies"]).abs().max()) <= 1e-10
    pos, z, cell = random_periodic(18, seed=4)
    a = _run(eager, pos, z, cell, True, stress=True)
    b = _run(module, pos, z, cell, True, stress=True)
    assert abs(float(a["energy"] - b["energy"])) <= 1e-10 * max(1.0, abs(float(a["energy"])))
    assert float((a["forces"] - b["forces"]).abs().max()) <= 1e-10
    assert float((a["stress"] - b["stress"]).abs().max()) <= 1e-10
    assert float(a["stress"].abs().max()) > 1e-6  # a real stress was compared
    # the same input checks as the TorchScript file
    bad = pos.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _run(module, bad, z, cell, True)
    with pytest.raises(ValueError, match="7"):  # nitrogen is not in the model
        _run(module, pos, np.where(z == 6, 7, z), cell, True)


def test_pt2_through_ase_and_info(pt2_file):
    from ase import Atoms
    from so3krates.ase import So3kratesCalculator
    pos, z, cell = random_periodic(18, seed=6)
    atoms = Atoms(numbers=z, positions=pos, cell=cell, pbc=True)
    atoms.calc = So3kratesCalculator(pt2_file)
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    ref = _run(So3kratesPotential(_model()), pos, z, cell, True, stress=True)
    assert e == pytest.approx(float(ref["energy"]), abs=1e-10)
    assert np.abs(f - ref["forces"].numpy()).max() <= 1e-10
    assert s[0] == pytest.approx(float(ref["stress"][0, 0]), abs=1e-12)
    with pytest.raises(ValueError, match="compiled for float64"):
        So3kratesCalculator(pt2_file, dtype="float32")
    out = subprocess.run(CLI + ["info", str(pt2_file)], capture_output=True, text=True, check=True).stdout
    assert "format" in out and "pt2" in out and "1 layers" in out
    assert read_metadata(pt2_file)["species"] == [1, 6, 8]


@pytest.mark.parametrize("kw,match", [(dict(long_range=False, efa=True), "Euclidean fast attention")])
def test_pt2_refuses_unsupported_models_clearly(tmp_path, kw, match):
    save_checkpoint(tmp_path / "m.ckpt", small_model(**kw))
    res = subprocess.run(CLI + ["export", str(tmp_path / "m.ckpt"), "--format", "pt2", "-o", str(tmp_path / "m.pt2")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and match in res.stderr and "TorchScript format" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "m.pt2").exists()
