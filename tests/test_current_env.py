"""The "current" environment (.venv-current: torch 2.13.0+cpu, openmm 8.6.1, openmm-ml 1.8, lammps
2025.7.22.4.0, no openmmtorch; requirements-current.lock.txt, docs/install.md "Which environment").

A fast subset (~1-2 min) that runs *inside* .venv-current: `bash scripts/run_tests.sh` builds it
(`scripts/setup.sh --env current`) and runs

    .venv-current/bin/python -m pytest -m "current_env and not slow" tests/test_current_env.py

It checks what the environment is for: the ASE calculator, OpenMM through openmm.PythonForce (our
``python_force`` route and openmm-ml's ``MLPotential('so3krates')`` with implementation 'auto'),
LAMMPS (``pair_style so3krates`` built against this torch) on 1 and 2 MPI ranks, and the README's main
job (examples/main_job.py, quick form) unchanged.

LAMMPS gets the shipped TorchScript file and, for the main job also in the fast subset (issue 14: LAMMPS via
.pt2 in the current environment, tested in CI) and for the LAMMPS = ASE checks in the tests marked ``slow``,
the demo model exported as a ``.pt2`` package (when the installed pair style reads them:
:func:`lammps_pt2_support`; the export compiles ~18 AOTInductor programs, ~4-6 min here):

    .venv-current/bin/python -m pytest -m current_env tests/test_current_env.py          # both formats
    SO3KRATES_CURRENT_PT2=demo.pt2 .venv-current/bin/python -m pytest -m current_env ...   # a ready export

``SO3KRATES_CURRENT_LAMMPS_FORMAT=torchscript|pt2`` runs one format only (pt2: a pair style without
.pt2 support is then a failure, not a skip).

In any other environment (the pinned .venv, where openmmtorch is installed) the module is skipped:
the main suite (tests/test_openmm.py, tests/test_lammps.py) covers that one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT

IN_CURRENT = importlib.util.find_spec("openmmtorch") is None
pytestmark = [
    pytest.mark.current_env,
    pytest.mark.skipif(not IN_CURRENT, reason="runs inside .venv-current (no openmmtorch); bash scripts/run_tests.sh "
                                              "runs it there: .venv-current/bin/python -m pytest -m 'current_env and not slow'"),
]

LOCK = ROOT / "requirements-current.lock.txt"
DEMO_PT = ROOT / "examples" / "models" / "so3krates_demo.pt"
DEMO_CKPT = ROOT / "examples" / "models" / "so3krates_demo.ckpt"
EV_TO_KJ_MOL = 96.48533212331002
BIN = Path(sys.executable).parent


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}


def lammps_pt2_support() -> tuple:
    """``(supported, how it was found)``: whether the installed ``pair_style so3krates`` loads ``.pt2``
    packages. An explicit flag of :mod:`so3krates.lammps` wins; otherwise the built plugin is asked
    (it names .pt2 packages / AOTInductor only when it was compiled with the .pt2 loader)."""
    import so3krates.lammps as sl
    for name in ("supports_pt2", "pt2_supported", "PT2_SUPPORTED", "SUPPORTS_PT2", "has_pt2"):
        flag = getattr(sl, name, None)
        if flag is not None:
            return bool(flag() if callable(flag) else flag), f"so3krates.lammps.{name}"
    data = Path(sl.plugin_path()).read_bytes()
    found = b"AOTIModelPackageLoader" in data or b".pt2 package" in data
    return found, f"strings of {Path(sl.plugin_path()).name}"


def _lammps_format() -> str:
    choice = os.environ.get("SO3KRATES_CURRENT_LAMMPS_FORMAT", "auto").strip().lower()
    assert choice in ("auto", "pt2", "torchscript"), f"SO3KRATES_CURRENT_LAMMPS_FORMAT={choice!r}: auto|pt2|torchscript"
    return choice


@pytest.fixture(scope="module")
def demo_pt2(tmp_path_factory):
    """The demo model as a ``.pt2`` package for LAMMPS (``so3krates export --format pt2``, the dtype of the
    shipped TorchScript file), or ``SO3KRATES_CURRENT_PT2=path`` (an export made before, in this
    environment). Skips when the installed pair style reads no .pt2 (SO3KRATES_CURRENT_LAMMPS_FORMAT=pt2
    makes that a failure). The export compiles ~18 AOTInductor programs: many minutes on 2 cores."""
    given = os.environ.get("SO3KRATES_CURRENT_PT2")
    if given:
        assert Path(given).is_file(), f"SO3KRATES_CURRENT_PT2={given} does not exist"
        return Path(given).resolve()
    supported, how = lammps_pt2_support()
    if not supported:
        if _lammps_format() == "pt2":
            pytest.fail(f"SO3KRATES_CURRENT_LAMMPS_FORMAT=pt2 but pair_style so3krates reads no .pt2 ({how})")
        pytest.skip(f"pair_style so3krates reads no .pt2 here ({how}): the TorchScript tests cover LAMMPS")
    from so3krates.export.metadata import read_metadata
    dtype = read_metadata(str(DEMO_PT)).get("dtype", "float32")
    out = tmp_path_factory.mktemp("pt2") / "so3krates_demo.pt2"
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "so3krates.cli", "export", str(DEMO_CKPT), "--format", "pt2",
                          "--dtype", dtype, "-o", str(out)], capture_output=True, text=True, env=_env(), timeout=3600)
    assert res.returncode == 0, f"pair style reads .pt2 ({how}) but the export failed:\n{res.stdout[-2000:]}{res.stderr[-3000:]}"
    print(f"[current env] exported {out.name} ({dtype}) in {time.perf_counter() - t0:.0f} s ({how})")
    return out


@pytest.fixture
def lammps_model(request):
    """The model file LAMMPS gets: the shipped TorchScript file or the demo ``.pt2`` package (exported once
    per session, ~4-6 min). SO3KRATES_CURRENT_LAMMPS_FORMAT=torchscript|pt2
    runs only that one."""
    fmt = _lammps_format()
    if fmt != "auto" and fmt != request.param:
        pytest.skip(f"SO3KRATES_CURRENT_LAMMPS_FORMAT={fmt}")
    if request.param == "torchscript":
        return DEMO_PT
    return request.getfixturevalue("demo_pt2")


# ----------------------------------------------------------------------------- the environment
def test_environment_is_the_locked_one():
    """torch / openmm / openmm-ml / lammps are the versions of requirements-current.lock.txt, torch is
    the CPU build, and OpenMM's route resolves to PythonForce (openmmtorch is absent) with the reason."""
    import openmm
    import torch

    import so3krates.openmm as so_mm

    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", LOCK.read_text(), re.M))
    for name in ("torch", "openmm", "openmmml", "lammps", "mpich", "numpy"):
        assert metadata.version(name) == pins[name], (name, metadata.version(name), pins[name])
    assert torch.__version__ == pins["torch"] and not torch.cuda.is_available()
    assert hasattr(openmm, "PythonForce")
    ok, why = so_mm.torch_force_status()
    assert not ok and "openmmtorch is not installed" in why
    route, message = so_mm.resolve_implementation("auto")
    assert route == "python" and "PythonForce" in message
    with pytest.raises(RuntimeError, match="openmmtorch"):
        so_mm.resolve_implementation("torch")


def test_lammps_plugin_is_built_against_this_torch():
    """The pair-style plugin of .venv-current links this environment's libtorch (not the .venv's)."""
    import torch

    import so3krates.lammps as sl
    plugin = Path(sl.plugin_path())
    assert str(plugin).startswith(sys.prefix), (plugin, sys.prefix)
    ldd = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True).stdout
    libtorch = [line.split("=>")[1].split("(")[0].strip() for line in ldd.splitlines() if "libtorch_cpu.so" in line]
    assert libtorch and Path(libtorch[0]).resolve() == (Path(torch.__file__).parent / "lib" / "libtorch_cpu.so").resolve(), ldd


# ----------------------------------------------------------------------------- OpenMM (PythonForce)
def _water_cluster():
    """Three water molecules + methylamine (H C N O), Å, as ASE Atoms and an OpenMM Topology."""
    from ase import Atoms
    import openmm.app as app

    w = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    pos = [w, w + [2.9, 0.3, 0.1], w + [0.2, 2.8, 0.9]]
    syms = ["O", "H", "H"] * 3
    ma = np.array([[-2.5, 0.0, 0.0], [-3.9, 0.1, 0.2], [-2.2, -0.9, 0.4], [-2.1, 0.1, -1.0],
                   [-4.2, 1.0, -0.2], [-4.3, -0.6, -0.4], [-4.2, 0.0, 1.2]])
    syms += ["N", "C", "H", "H", "H", "H", "H"]
    atoms = Atoms(syms, positions=np.vstack(pos + [ma]))
    top = app.Topology()
    chain = top.addChain()
    res = top.addResidue("MOL", chain)
    for s in syms:
        top.addAtom(s, app.Element.getBySymbol(s), res)
    return atoms, top


def _energy_forces(system, positions_ang):
    import openmm
    import openmm.unit as unit
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions_ang * 0.1)
    st = ctx.getState(getEnergy=True, getForces=True)
    e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ_MOL
    f = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer) / EV_TO_KJ_MOL / 10.0
    return e, np.asarray(f)


def test_openmm_pythonforce_and_openmmml_match_ase():
    """so3krates.openmm.python_force and openmm-ml 1.8's MLPotential('so3krates') (implementation 'auto'
    -> PythonForce here, with a warning saying why) give the ASE calculator's energy and forces; the
    System survives deepcopy and an XmlSerializer round trip."""
    import copy

    import openmm
    from openmmml import MLPotential

    import so3krates.openmm as so_mm
    from so3krates.ase import So3kratesCalculator

    atoms, top = _water_cluster()
    atoms.calc = So3kratesCalculator(str(DEMO_PT))
    e_ref, f_ref = atoms.get_potential_energy(), atoms.get_forces()

    system = openmm.System()
    for a in atoms:
        system.addParticle(a.mass)
    force = so_mm.python_force(str(DEMO_PT), top, device="cpu")
    assert isinstance(force, openmm.PythonForce)
    system.addForce(force)
    e, f = _energy_forces(system, atoms.positions)
    assert abs(e - e_ref) < 1e-4 * max(1.0, abs(e_ref)), (e, e_ref)
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=2e-3)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ml_system = MLPotential("so3krates", modelPath=str(DEMO_PT)).createSystem(top)
    assert any("PythonForce" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert any(isinstance(ml_system.getForce(i), openmm.PythonForce) for i in range(ml_system.getNumForces()))
    e_ml, f_ml = _energy_forces(ml_system, atoms.positions)
    assert abs(e_ml - e_ref) < 1e-4 * max(1.0, abs(e_ref)), (e_ml, e_ref)
    np.testing.assert_allclose(f_ml, f_ref, rtol=0, atol=2e-3)

    e_copy, _ = _energy_forces(copy.deepcopy(ml_system), atoms.positions)
    assert abs(e_copy - e_ml) < 1e-9 * max(1.0, abs(e_ml))
    try:
        xml = openmm.XmlSerializer.serialize(ml_system)
    except Exception as exc:  # noqa: BLE001 - report what openmm says
        pytest.fail(f"XmlSerializer.serialize of a PythonForce system failed in openmm {openmm.__version__}: {exc}")
    e_xml, _ = _energy_forces(openmm.XmlSerializer.deserialize(xml), atoms.positions)
    assert abs(e_xml - e_ml) < 1e-9 * max(1.0, abs(e_ml))


def test_openmmml_mixed_system_python_force():
    """openmm-ml 1.8's createMixedSystem (ML region: 3 of 30 waters, amber14/TIP3P elsewhere), plain and
    with interpolate=True (the case openmm 8.6 breaks for TorchForce): PythonForce systems build, run,
    deepcopy, and at lambda_interpolate=1 both give the same energy."""
    import copy

    import openmm
    import openmm.app as app
    import openmm.unit as unit
    from openmmml import MLPotential

    pdb = app.PDBFile(str(Path(app.__file__).parent / "data" / "tip3p.pdb"))
    mod = app.Modeller(pdb.topology, pdb.positions)
    mod.delete(list(mod.topology.residues())[30:])
    top = mod.topology
    top.setPeriodicBoxVectors(None)
    mm = app.ForceField("amber14-all.xml", "amber14/tip3p.xml").createSystem(top, nonbondedMethod=app.NoCutoff,
                                                                            rigidWater=False)
    ml_atoms = [a.index for r in list(top.residues())[:3] for a in r.atoms()]
    pot = MLPotential("so3krates", modelPath=str(DEMO_PT))
    energies = []
    for interpolate in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            system = pot.createMixedSystem(top, mm, ml_atoms, interpolate=interpolate)
        forces = [system.getForce(i) for i in range(system.getNumForces())]
        forces += [f.getCollectiveVariable(j) for f in forces if isinstance(f, openmm.CustomCVForce)
                   for j in range(f.getNumCollectiveVariables())]      # interpolate: ML term inside a CV
        assert any(isinstance(f, openmm.PythonForce) for f in forces), [type(f).__name__ for f in forces]
        for s in (system, copy.deepcopy(system)):
            ctx = openmm.Context(s, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
            ctx.setPositions(mod.positions)
            if interpolate:
                ctx.setParameter("lambda_interpolate", 1.0)
            energies.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert np.all(np.isfinite(energies)) and np.ptp(energies) < 1e-6 * max(1.0, abs(energies[0])), energies


# ----------------------------------------------------------------------------- LAMMPS
_FORMATS = [pytest.param("torchscript"), pytest.param("pt2", marks=pytest.mark.slow)]


@pytest.mark.parametrize("nprocs", [1, 2])
@pytest.mark.parametrize("lammps_model", _FORMATS, indirect=True)
def test_lammps_matches_ase(lammps_model, tmp_path, nprocs):
    """pair_style so3krates (built against torch 2.13) with the demo model (.pt2 when supported) on a
    periodic water-like box, 1 and 2 MPI ranks: energy and forces equal the ASE calculator's."""
    import lammps_helpers as H

    atoms = H.random_box(5, 2.3, seed=4)          # 125 H/O atoms, 11.5 Å box > 2 x receptive field / 2
    H.write_data(atoms, tmp_path / "box.data", ["H", "O"])
    ref = H.ase_reference(DEMO_PT, atoms)
    proc = H.run_lmp(tmp_path, H.energy_script("box.data", str(lammps_model), ["H", "O"]), nprocs, timeout=300)
    res = H.parse_results(tmp_path, proc)
    # float32 model: LAMMPS sums in another order than the ASE calculator
    assert abs(res["pe"] - ref["energy"]) < 2e-5 * max(1.0, abs(ref["energy"])) + 5e-3, (res["pe"], ref["energy"])
    np.testing.assert_allclose(res["forces"], ref["forces"], rtol=0, atol=5e-3)


def test_fused_kernels_built_for_this_torch(tmp_path):
    """The fused CPU kernels (libso3krates_ops.so) of .venv-current load with torch 2.13: a demo model
    exported here with --fused-kernels gives the shipped file's energy and forces in ASE and in LAMMPS."""
    import lammps_helpers as H
    from so3krates.potential.nn import fused_ops

    assert fused_ops.load(), fused_ops._state.get("reason")
    fused = tmp_path / "demo_fused.pt"
    res = subprocess.run([sys.executable, "-m", "so3krates.cli", "export", str(DEMO_CKPT), "--fused-kernels",
                          "-o", str(fused)], capture_output=True, text=True, env=_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    atoms = H.random_box(5, 2.3, seed=4)
    ref = H.ase_reference(DEMO_PT, atoms)
    got = H.ase_reference(fused, atoms)
    assert abs(got["energy"] - ref["energy"]) < 1e-5 * max(1.0, abs(ref["energy"]))
    np.testing.assert_allclose(got["forces"], ref["forces"], rtol=0, atol=1e-4)
    H.write_data(atoms, tmp_path / "box.data", ["H", "O"])
    proc = H.run_lmp(tmp_path, H.energy_script("box.data", str(fused), ["H", "O"]), 1, timeout=300)
    out = H.parse_results(tmp_path, proc)
    assert abs(out["pe"] - ref["energy"]) < 2e-5 * max(1.0, abs(ref["energy"])) + 5e-3, (out["pe"], ref["energy"])
    np.testing.assert_allclose(out["forces"], ref["forces"], rtol=0, atol=5e-3)


# ----------------------------------------------------------------------------- README main job
def _lammps_start_energy(log: Path) -> float:
    """PotEng (eV) of the first thermo row of the last run in a log.lammps."""
    header, first = None, None
    for line in log.read_text().splitlines():
        words = line.split()
        if words and words[0] == "Step":
            header, first = words, None
            continue
        if header and first is None and len(words) == len(header):
            try:
                first = dict(zip(header, map(float, words)))
            except ValueError:
                header = None
    assert first is not None, f"no thermo rows in {log}"
    return first["PotEng"]


# the main job with the .pt2 runs in CI's fast subset (issue 14): its export (~18 AOTInductor programs of the
# demo model) costs ~4-6 min of the CI budget; the other .pt2 tests stay slow
@pytest.mark.parametrize("lammps_model", ["torchscript", "pt2"], indirect=True)
def test_main_job_runs_unchanged(lammps_model, tmp_path):
    """The README's main job (scripts/run_demo.sh -> examples/main_job.py), quick form: ASE single point,
    OpenMM MD through PythonForce ('auto'), LAMMPS MD on 1 and 2 ranks with ``lammps_model``; OpenMM's
    and LAMMPS' start energies of the same solvated peptide agree."""
    cmd = [sys.executable, str(ROOT / "examples" / "main_job.py"), "--steps", "2", "--padding", "0.3",
           "--minimize", "0", "--out", str(tmp_path)]
    if Path(lammps_model) != DEMO_PT:
        cmd += ["--lammps-model", str(lammps_model)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=_env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[openmm] force: PythonForce" in res.stdout
    summary = json.loads((tmp_path / "main_job.json").read_text())
    assert summary["environment"]["torch"].startswith("2.13")
    assert summary["single_point"]["atoms"] == 42 and np.isfinite(summary["single_point"]["energy_eV"])
    assert summary["openmm"]["openmm_force"] == "PythonForce"
    for key in ("openmm", "lammps_1", "lammps_2"):
        assert summary[key]["ms_per_step"] > 0, key
    assert summary["lammps_1"]["lammps_model"] == str(Path(lammps_model).resolve())
    e_openmm = summary["openmm"]["potential_energy_start_kj_mol"] / EV_TO_KJ_MOL
    for n in (1, 2):
        e_lmp = _lammps_start_energy(tmp_path / f"lammps_np{n}" / "log.lammps")
        assert abs(e_lmp - e_openmm) < 0.05, (n, e_lmp, e_openmm)   # float32 model, ~18,000 eV
