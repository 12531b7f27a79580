"""pair_style so3krates: the real ``lmp`` (plugin auto-loaded through the ``lammps.plugins``
entry point) under real ``mpirun``, against the same TorchScript module evaluated in Python on
the periodic system with ASE's neighbour list (float64, 1e-10).

The toy model (tests/lammps_helpers.py) has the exported-file interface and two
message-passing layers, so a correct ghost shell (2 x cutoff) is needed for exact results.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lammps")
pytest.importorskip("ase")

import lammps_helpers as H  # noqa: E402

CUTOFF = 3.0
TOL = 1e-10


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Model files and structures shared by the tests of this module."""
    from so3krates.lammps import plugin_path

    plugin_path()  # fails with the reason when the plugin was not built
    d = tmp_path_factory.mktemp("lammps")
    H.save_toy(d / "toy.pt", CUTOFF, 0)
    H.save_toy(d / "toy_glob.pt", CUTOFF, 1)
    H.save_toy(d / "toy32.pt", CUTOFF, 0, dtype="float32")
    ortho = H.random_box(4, 2.2, seed=1)                         # 8.8 Å box, 64 atoms
    tric = H.random_box(4, 2.2, seed=2, tilt=(0.7, -0.5, 0.4))
    H.write_data(ortho, d / "ortho.data", ["H", "O"])
    H.write_data(tric, d / "tric.data", ["H", "O"])
    return {"dir": d, "ortho": ortho, "tric": tric}


def _run(work, tmp_path, script, nprocs=1):
    for f in work["dir"].iterdir():
        if not (tmp_path / f.name).exists():
            os.symlink(f, tmp_path / f.name)
    return H.run_lmp(tmp_path, script, nprocs=nprocs)


def _compare(res, ref, tol=TOL, factor=1.0):
    V = res["vol"]
    assert abs(res["pe"] - factor * ref["energy"]) < tol * max(1.0, abs(factor * ref["energy"]))
    np.testing.assert_allclose(res["forces"], factor * ref["forces"], rtol=0, atol=tol)
    np.testing.assert_allclose(res["atomic_energies"], factor * ref["atomic_energies"], rtol=0, atol=tol)
    if factor == 1.0:  # pressure units differ for 'real'; the metal case checks the virial
        np.testing.assert_allclose(res["vir"] * V / H.NKTV2P_METAL, H.voigt(ref["virial"]), rtol=0, atol=tol * 10)
        # per-atom virial (compute stress/atom, incl. reverse-communicated ghost parts) sums to it
        np.testing.assert_allclose(-res["sasum"] / H.NKTV2P_METAL, H.voigt(ref["virial"]), rtol=0, atol=tol * 10)


def test_plugin_dir_entry_point():
    from importlib import metadata

    from so3krates.lammps import PLUGIN_NAME, plugin_dir

    eps = [ep for ep in metadata.entry_points(group="lammps.plugins") if ep.name == "so3krates"]
    assert eps, "entry point lammps.plugins: so3krates is not installed"
    d = eps[0].load()()
    assert d == plugin_dir()
    assert (Path(d) / PLUGIN_NAME).is_file()


@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_matches_python_reference(work, tmp_path, nprocs):
    ref = H.reference(work["ortho"], CUTOFF)
    res = H.parse_results(tmp_path, _run(work, tmp_path, H.energy_script("ortho.data", "toy.pt", ["H", "O"]), nprocs))
    _compare(res, ref)


@pytest.mark.parametrize("nprocs", [1, 4])
def test_global_terms_triclinic(work, tmp_path, nprocs):
    """num_globals > 0: MPI_Allreduce of global_partials and of the adjoint; triclinic cell."""
    ref = H.reference(work["tric"], CUTOFF, num_globals=1)
    res = H.parse_results(tmp_path, _run(work, tmp_path, H.energy_script("tric.data", "toy_glob.pt", ["H", "O"]), nprocs))
    _compare(res, ref)


def test_charge_keyword_and_type_order(work, tmp_path):
    """`charge Q` reaches the model; atom types map through pair_coeff element names."""
    ref = H.reference(work["ortho"], CUTOFF, total_charge=1.5)
    H.write_data(work["ortho"], tmp_path / "swapped.data", ["O", "H"])
    script = H.energy_script("swapped.data", "toy.pt", ["O", "H"], pair_style="so3krates charge 1.5 threads 1")
    res = H.parse_results(tmp_path, _run(work, tmp_path, script, 2))
    _compare(res, ref)


def test_units_real(work, tmp_path):
    ref = H.reference(work["ortho"], CUTOFF)
    res = H.parse_results(tmp_path, _run(work, tmp_path, H.energy_script("ortho.data", "toy.pt", ["H", "O"], units="real")))
    _compare(res, ref, tol=1e-9, factor=H.EV_TO_KCAL_MOL)


def test_ghost_shell_is_needed(work, tmp_path):
    """A file that under-states its receptive field gives wrong forces: the shell matters."""
    H.save_toy(tmp_path / "lie.pt", CUTOFF, 0, meta=H.metadata(CUTOFF, receptive_field=CUTOFF))
    ref = H.reference(work["ortho"], CUTOFF)
    script = H.energy_script("ortho.data", "lie.pt", ["H", "O"], extra="neighbor 0.1 bin")
    res = H.parse_results(tmp_path, _run(work, tmp_path, script, 2))
    assert np.abs(res["forces"] - ref["forces"]).max() > 1e-4
    script = H.energy_script("ortho.data", "toy.pt", ["H", "O"], extra="neighbor 0.1 bin")
    res = H.parse_results(tmp_path, _run(work, tmp_path, script, 2))
    _compare(res, ref)


@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_box_smaller_than_receptive_field(work, tmp_path, nprocs):
    """8 atoms in a 4.4 Å triclinic cell, ghost shell 8 Å: LAMMPS (comm_style brick) brings in
    several periodic images; still exact."""
    atoms = H.random_box(2, 2.2, seed=4, tilt=(0.3, 0.2, -0.1))
    H.write_data(atoms, tmp_path / "tiny.data", ["H", "O"])
    ref = H.reference(atoms, CUTOFF)
    res = H.parse_results(tmp_path, _run(work, tmp_path, H.energy_script("tiny.data", "toy.pt", ["H", "O"]), nprocs))
    _compare(res, ref)


@pytest.mark.parametrize("long_range,nprocs", [(False, 2), (True, 1), (True, 4)])
def test_exported_so3krates(tmp_path, long_range, nprocs):
    """A real So3krates network (2 layers; with electrostatics + ZBL: cutoff_lr, num_globals = 2)
    written by so3krates.export, against the eager model on the periodic box."""
    pytest.importorskip("so3krates.export.exported_model")
    model = H.export_small_so3krates(tmp_path / "real.pt", long_range)
    atoms = H.random_box(4, 2.2, seed=3)
    H.write_data(atoms, tmp_path / "box.data", ["H", "O"])
    ref = H.reference_so3krates(model, atoms)
    res = H.parse_results(tmp_path, H.run_lmp(tmp_path, H.energy_script("box.data", "real.pt", ["H", "O"]), nprocs))
    assert abs(res["pe"] - ref["energy"]) < TOL * max(1.0, abs(ref["energy"]))
    np.testing.assert_allclose(res["forces"], ref["forces"], rtol=0, atol=TOL)


def test_float32_model(work, tmp_path):
    ref = H.reference(work["ortho"], CUTOFF)
    res = H.parse_results(tmp_path, _run(work, tmp_path, H.energy_script("ortho.data", "toy32.pt", ["H", "O"])))
    assert abs(res["pe"] - ref["energy"]) < 1e-4 * abs(ref["energy"])
    np.testing.assert_allclose(res["forces"], ref["forces"], rtol=0, atol=1e-4)


MD = """
units metal
atom_style atomic
newton on
read_data ortho.data
pair_style so3krates
pair_coeff * * toy.pt H O
velocity all create 600.0 4928459 loop geom
fix 1 all nve
timestep 0.0005
thermo_style custom step pe ke etotal
thermo_modify format float %.15g
run 100
write_dump all custom final.dump id x y z fx fy fz modify sort id format float %.17g
print "RESULT etotal $(etotal:%.17g)"
"""


def test_md_nve_ranks_agree(work, tmp_path):
    """100 NVE steps with reneighbouring and atoms migrating between ranks: 1 and 2 ranks agree
    and total energy is conserved."""
    out = {}
    for n in (1, 2):
        d = tmp_path / f"np{n}"
        d.mkdir()
        proc = _run(work, d, MD, n)
        assert proc.returncode == 0, H.error_text(proc)[-3000:]
        rows = np.loadtxt(d / "final.dump", skiprows=9)
        out[n] = rows[np.argsort(rows[:, 0])]
        lines = [ln.split() for ln in (d / "log.lammps").read_text().splitlines()]
        thermo = [ln for ln in lines if len(ln) == 4 and ln[0].isdigit()]
        etot = np.array([float(t[3]) for t in thermo])
        assert len(etot) >= 2 and np.ptp(etot) < 2e-3, etot
    np.testing.assert_allclose(out[1], out[2], rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------ errors
def _error(work, tmp_path, script):
    proc = _run(work, tmp_path, script)
    text = H.error_text(proc)
    assert proc.returncode != 0, text[-2000:]
    assert "ERROR" in text, text[-2000:]
    assert "terminate called" not in text and "c10::Error" not in text, text[-2000:]
    return text


def _script(model="toy.pt", elements=("H", "O"), **kw):
    return H.energy_script("ortho.data", model, list(elements), **kw)


def test_error_element_not_in_model(work, tmp_path):
    text = _error(work, tmp_path, _script(elements=("H", "C")))
    assert "element C (atom type 2) is not in the model" in text and "the model knows: H O" in text


def test_error_element_order_does_not_match_masses(work, tmp_path):
    """ortho.data has type 1 = H (1.008 amu), type 2 = O (15.999 amu); naming them "O H" is an error."""
    text = _error(work, tmp_path, _script(elements=("O", "H")))
    assert "atom type 1 has mass 1.008 amu, which is H" in text and "names O" in text
    assert "atom-type order" in text


def test_error_not_an_element(work, tmp_path):
    assert "'Xx' (atom type 2) is not an element symbol" in _error(work, tmp_path, _script(elements=("H", "Xx")))


def test_error_wrong_number_of_elements(work, tmp_path):
    text = _error(work, tmp_path, _script(elements=("H",)))
    assert "followed by 2 element symbol(s), one per atom type, but got 1" in text


def test_error_missing_file(work, tmp_path):
    assert "cannot open model file 'nothere.pt'" in _error(work, tmp_path, _script(model="nothere.pt"))


def test_error_foreign_file(work, tmp_path):
    (tmp_path / "junk.pt").write_text("this is not a model\n")
    assert "'junk.pt' is not a TorchScript model file" in _error(work, tmp_path, _script(model="junk.pt"))


def test_error_torchscript_without_metadata(work, tmp_path):
    H.save_toy(tmp_path / "bare.pt", CUTOFF, raw_metadata="")
    assert "has no so3krates metadata" in _error(work, tmp_path, _script(model="bare.pt"))


def test_error_corrupt_metadata(work, tmp_path):
    H.save_toy(tmp_path / "bad.pt", CUTOFF, raw_metadata="{cutoff: 3.0,")
    assert "has corrupt so3krates metadata" in _error(work, tmp_path, _script(model="bad.pt"))


def test_error_newer_format(work, tmp_path):
    H.save_toy(tmp_path / "new.pt", CUTOFF, meta=H.metadata(CUTOFF, format_version=2))
    assert "has format_version 2 but this plugin reads format version 1" in _error(
        work, tmp_path, _script(model="new.pt"))


def test_error_newton_off(work, tmp_path):
    assert "requires newton pair on" in _error(work, tmp_path, _script(newton="off"))


def test_error_units(work, tmp_path):
    assert "supports 'units metal'" in _error(work, tmp_path, _script(units="lj"))


def test_error_device_cuda_without_gpu(work, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    text = _error(work, tmp_path, _script(pair_style="so3krates device cuda"))
    assert "'device cuda' requested but" in text and "use 'device cpu'" in text


def test_error_bad_keyword(work, tmp_path):
    assert "unknown keyword 'gpu'" in _error(work, tmp_path, _script(pair_style="so3krates gpu 1"))


def test_error_box_too_small_for_tiled(work, tmp_path):
    text = _error(work, tmp_path, _script(extra="comm_style tiled\nneighbor 3.0 bin"))
    assert "smaller than the ghost shell" in text


def test_warning_efa_without_globals(work, tmp_path):
    H.save_toy(tmp_path / "efa.pt", CUTOFF, meta=H.metadata(CUTOFF, efa=True))
    proc = _run(work, tmp_path, _script(model="efa.pt"))
    assert proc.returncode == 0, H.error_text(proc)[-2000:]
    assert "uses Euclidean fast attention but exposes no global sums" in H.error_text(proc)
