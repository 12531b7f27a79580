"""The ASE calculator (so3krates.ase.So3kratesCalculator) and the `so3krates export` command:
charge/spin from atoms.info, stress against finite differences, per-atom energies, .pt and .ckpt
inputs, float32 exports of open, periodic and EFA models."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms

from helpers import random_molecule, random_periodic, small_model
from so3krates.ase import So3kratesCalculator
from so3krates.export.exporter import export_potential
from so3krates.export.metadata import read_metadata
from so3krates.potential.potential import So3kratesPotential
from so3krates.potential.checkpoint import save_checkpoint


def _periodic_atoms(seed=4):
    pos, z, cell = random_periodic(18, seed=seed)
    return Atoms(numbers=z, positions=pos, cell=cell, pbc=True)


@pytest.fixture(scope="module")
def lr_file(tmp_path_factory):
    """float64 export of a small model with charge/spin embeddings and long-range terms."""
    path = tmp_path_factory.mktemp("ase") / "lr.pt"
    export_potential(So3kratesPotential(small_model(long_range=True)), path, dtype="float64")
    return path


def test_charge_and_spin_come_from_atoms_info(lr_file):
    pos, z = random_molecule(12, seed=2)
    atoms = Atoms(numbers=z, positions=pos)
    atoms.calc = So3kratesCalculator(lr_file)
    neutral = atoms.get_potential_energy()
    atoms.info.update(charge=1, num_unpaired_electrons=1)
    atoms.calc.reset()
    charged = atoms.get_potential_energy()
    direct = So3kratesPotential(small_model(long_range=True))(
        torch.tensor(pos), torch.tensor(z), torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.bool),
        1.0, 1.0, True, False)
    assert charged == pytest.approx(float(direct["energy"]), abs=1e-10)
    assert abs(charged - neutral) > 1e-4  # the embeddings really see the charge and the spin
    # the aliases and the calculator defaults give the same numbers
    atoms.info.clear()
    atoms.info.update(total_charge=1, spin=1)
    atoms.calc.reset()
    assert atoms.get_potential_energy() == pytest.approx(charged, abs=1e-12)
    atoms.info.clear()
    atoms.calc = So3kratesCalculator(lr_file, charge=1, num_unpaired_electrons=1)
    assert atoms.get_potential_energy() == pytest.approx(charged, abs=1e-12)


def test_stress_matches_finite_differences_and_energies_per_atom(lr_file):
    atoms = _periodic_atoms()
    calc = So3kratesCalculator(lr_file)
    atoms.calc = calc
    stress = atoms.get_stress(voigt=False)
    vol = atoms.get_volume()
    h = 1e-4
    cell0, pos0 = atoms.get_cell().array.copy(), atoms.get_positions().copy()
    for a, b in ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2)):
        e = []
        for sgn in (1, -1):
            eps = np.zeros((3, 3))
            eps[a, b] += 0.5 * sgn * h
            eps[b, a] += 0.5 * sgn * h
            strained = atoms.copy()
            strained.set_cell(cell0 @ (np.eye(3) + eps), scale_atoms=False)
            strained.set_positions(pos0 @ (np.eye(3) + eps))
            strained.calc = calc
            e.append(strained.get_potential_energy())
        fd = (e[0] - e[1]) / (2 * h) / vol
        assert abs(stress[a, b] - fd) <= 1e-6 * max(1e-2, np.abs(stress).max()), (a, b, stress[a, b], fd)
    assert np.abs(stress).max() > 1e-4
    # per-atom energies: those of the model, not just numbers summing to the energy
    direct = So3kratesPotential(small_model(long_range=True))(
        torch.tensor(pos0), torch.tensor(atoms.numbers), torch.tensor(cell0), torch.ones(3, dtype=torch.bool),
        0.0, 0.0, False, False)
    assert np.abs(atoms.get_potential_energies() - direct["atomic_energies"].detach().numpy()).max() <= 1e-10
    slab = atoms.copy()
    slab.pbc = (True, True, False)
    slab.calc = So3kratesCalculator(lr_file)
    from ase.calculators.calculator import PropertyNotImplementedError
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        slab.get_stress()


@pytest.mark.parametrize("kw", [dict(long_range=False), dict(long_range=True), dict(long_range=False, efa=True)],
                         ids=["local", "long_range", "efa"])
def test_float32_export_via_cli_open_and_periodic(tmp_path, kw):
    """`so3krates export --dtype float32` against the float64 eager model, open and periodic."""
    periodic_kw = dict(kw, periodic_efa=True) if kw.get("efa") else kw
    model = small_model(**periodic_kw)
    if kw.get("efa"):  # EFA's output weights start at zero: make its contribution real
        with torch.no_grad():
            for layer in model.layers:
                if layer.efa.mlp2 is not None:
                    layer.efa.mlp2.weight.normal_(0.0, 0.3)
    save_checkpoint(tmp_path / "m.ckpt", model)
    res = subprocess.run([sys.executable, "-m", "so3krates.cli", "export", str(tmp_path / "m.ckpt"), "-o",
                          str(tmp_path / "m32.pt"), "--dtype", "float32"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and read_metadata(tmp_path / "m32.pt")["dtype"] == "float32"
    ref_pot = So3kratesPotential(model)
    pos, z = random_molecule(14, seed=3)
    mol = Atoms(numbers=z, positions=pos + 40.0)  # far from the origin: float32 must still be accurate
    atoms = _periodic_atoms(seed=5)
    for a in (mol, atoms):
        a.calc = So3kratesCalculator(tmp_path / "m32.pt")
        e32, f32 = a.get_potential_energy(), a.get_forces()
        ref = ref_pot(torch.tensor(a.positions), torch.tensor(a.numbers), torch.tensor(a.cell.array),
                      torch.tensor(a.pbc), 0.0, 0.0, True, False)
        e64, f64 = float(ref["energy"]), ref["forces"].detach().numpy()
        assert abs(e32 - e64) <= 2e-6 * abs(e64) + 1e-5, (e32, e64)
        assert np.abs(f32 - f64).max() <= 1e-5 * np.abs(f64).max() + 1e-5
    if kw.get("efa"):
        import copy
        no_efa = copy.deepcopy(model)
        with torch.no_grad():  # zero EFA output weights: exactly the model without the global update
            for layer in no_efa.layers:
                if layer.efa.mlp2 is not None:
                    layer.efa.mlp2.weight.zero_()
                    layer.efa.mlp2.bias.zero_()
        off = So3kratesPotential(no_efa)
        e_off = float(off(torch.tensor(atoms.positions), torch.tensor(atoms.numbers), torch.tensor(atoms.cell.array),
                          torch.tensor(atoms.pbc), 0.0, 0.0, False, False)["energy"])
        assert abs(e_off - e64) > 1e-3  # EFA contributes


def test_bad_input_gives_the_message_only(lr_file):
    """Errors raised inside the exported file reach ASE users as one ValueError with the model's message
    (no TorchScript interpreter traceback)."""
    from ase import Atoms
    atoms = Atoms("HOCl", positions=[[0, 0, 0], [0.96, 0, 0], [3.0, 0, 0]])
    atoms.calc = So3kratesCalculator(lr_file)
    with pytest.raises(ValueError) as err:
        atoms.get_potential_energy()
    msg = str(err.value)
    assert msg.startswith("unknown element Cl (atomic number 17) at atom index 2") and "only knows" in msg
    assert "Traceback" not in msg and "TorchScript" not in msg and "\n" not in msg
    atoms = Atoms("HO", positions=[[0, 0, 0], [0.05, 0, 0]])
    atoms.calc = So3kratesCalculator(lr_file)
    with pytest.raises(ValueError, match=r"^atoms (0 and 1|1 and 0) are 0\.0500 Å apart, closer than 0\.10 Å"):
        atoms.get_potential_energy()
