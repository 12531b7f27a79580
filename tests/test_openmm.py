"""so3krates.openmm against real OpenMM (Reference and CPU platforms), float64.

The model under test is the project's shipped model (examples/models/so3krates_demo.ckpt,
H C N O S, with charge embedding), exported in float64 once per session with
``so3krates.export.exporter``. OpenMM's energies and forces (TorchForce and PythonForce,
createSystem and createMixedSystem with and without ``interpolate``, open and periodic) are
compared with ``so3krates.ase.So3kratesCalculator`` on the same coordinates at 1e-8 relative.
The Morse stand-in (so3krates.openmm.standin) is used only where the shipped model cannot do
the job: it has no spin embedding, so the num_unpaired_electrons pass-through is checked on the
stand-in's known energy offsets; and for the torch.compile smoke test (slow-marked).
Units: OpenMM nm, kJ/mol, kJ/mol/nm; model and ASE Å, eV, eV/Å.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import math
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import torch  # noqa: E402  (real, pinned dependencies: a missing one fails, never skips)
import openmm  # noqa: E402
import openmmtorch  # noqa: E402,F401

import openmm.app as app  # noqa: E402
import openmm.unit as unit  # noqa: E402
from ase import Atoms  # noqa: E402

import so3krates.openmm as so_mm  # noqa: E402
from so3krates.ase import So3kratesCalculator  # noqa: E402
from so3krates.export.exporter import export_checkpoint  # noqa: E402
from so3krates.openmm import EV_PER_A_TO_KJ_PER_MOL_NM, EV_TO_KJ_PER_MOL  # noqa: E402
from so3krates.openmm._options import parse_bool, parse_nonnegative_int  # noqa: E402
from morse_standin import make_standin_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CKPT = ROOT / "examples" / "models" / "so3krates_demo.ckpt"
SHIPPED_PT = ROOT / "examples" / "models" / "so3krates_demo.pt"  # float32 export, as shipped
PLATFORMS = ["Reference", "CPU"]
RTOL = 1e-8


def _load_example_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


peptide = _load_example_module("so3krates_example_peptide", ROOT / "examples" / "openmm" / "peptide.py")


# ----------------------------------------------------------------------------- fixtures
_WATER_NM = np.array([[0, 0, 0], [0.096, 0, 0], [-0.024, 0.093, 0]])
_USER_SCRIPT_RUNS: dict = {}


def _user_script(model: str) -> subprocess.CompletedProcess:
    """What a user script does, in a fresh interpreter: only ``import openmm`` (first) and
    openmm-ml, ``MLPotential('so3krates')`` through the entry point, a Reference Context with a
    TorchForce (which openmm-torch loads in C++ and ``torch::jit::freeze``s), one energy."""
    script = f"""
import sys
import openmm, openmm.app as app, openmm.unit as unit
assert 'torch' not in sys.modules
failures = ' '.join(openmm.Platform.getPluginLoadFailures())
print('TRAP', 'TorchReference' in failures, flush=True)
from openmmml import MLPotential
top = app.Topology(); r = top.addResidue('HOH', top.addChain())
for el in ('O', 'H', 'H'): top.addAtom(el, app.Element.getBySymbol(el), r)
system = MLPotential('so3krates', modelPath={model!r}).createSystem(top)
ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName('Reference'))
ctx.setPositions({_WATER_NM.tolist()!r} * unit.nanometer)
print('ENERGY', repr(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)))
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> str:
    """float64 export of the shipped checkpoint (H C N O S), once per session. It must run in
    an OpenMM Context (checked in a subprocess first: a module that breaks under openmm-torch's
    ``torch::jit::freeze`` crashes the process instead of raising, which would kill pytest)."""
    assert SHIPPED_CKPT.is_file(), f"the shipped model is missing: {SHIPPED_CKPT}"
    path = tmp_path_factory.mktemp("model") / "so3krates_demo_float64.pt"
    meta = export_checkpoint(str(SHIPPED_CKPT), str(path), dtype="float64")
    assert meta["dtype"] == "float64" and meta["species"] == [1, 6, 7, 8, 16]
    res = _USER_SCRIPT_RUNS[str(path)] = _user_script(str(path))
    if res.returncode != 0:
        pytest.fail(f"the float64 export of {SHIPPED_CKPT.name} does not run in an OpenMM Context "
                    f"(subprocess exit code {res.returncode}; -11 is a segmentation fault: openmm-torch "
                    f"runs the module after torch.jit.freeze, so a module that raises under freeze "
                    f"crashes in TorchScript's error handler; reproduce with torch.jit.freeze("
                    f"torch.jit.load(model).eval()) and a forward call). stderr:\n{res.stderr[-3000:]}",
                    pytrace=False)
    return str(path)


@pytest.fixture(scope="session")
def standin_path(tmp_path_factory) -> str:
    """The Morse stand-in; used only for the spin pass-through and the torch.compile smoke test."""
    return make_standin_model(tmp_path_factory.mktemp("standin") / "standin.pt", species=(1, 6, 7, 8),
                              cutoff=5.0, dtype="float64")


def _ase_evaluator(model, dtype=None):
    calc = So3kratesCalculator(model, dtype=dtype)

    def evaluate(pos_nm, numbers, box_nm=None, charge=0.0):
        """ASE on the same coordinates: (positions nm, Z, box nm or None) → (E kJ/mol, F kJ/mol/nm)."""
        pos = np.asarray(pos_nm, dtype=np.float64) * 10.0
        if box_nm is None:
            atoms = Atoms(numbers=list(numbers), positions=pos, pbc=False)
        else:
            atoms = Atoms(numbers=list(numbers), positions=pos, cell=np.asarray(box_nm) * 10.0, pbc=True)
        atoms.info["charge"] = float(charge)
        calc.reset()  # ASE's cache compares positions/cell, not atoms.info (the charge)
        atoms.calc = calc
        return (atoms.get_potential_energy() * EV_TO_KJ_PER_MOL,
                atoms.get_forces() * EV_PER_A_TO_KJ_PER_MOL_NM)

    return evaluate


@pytest.fixture(scope="session")
def ase_ref(model_path):
    return _ase_evaluator(model_path)


@pytest.fixture(scope="session")
def forcefield():
    return app.ForceField("amber14-all.xml", "amber14/tip3p.xml")


@pytest.fixture(scope="session")
def dipeptide(forcefield):
    """Ace-Ala-Nme (22 atoms), open, as (topology, positions nm ndarray)."""
    top, pos = peptide.build_peptide(1, "c7eq", forcefield)
    return top, np.asarray(pos.value_in_unit(unit.nanometer))


@pytest.fixture(scope="session")
def solvated(forcefield, dipeptide):
    """Ace-Ala-Nme in a 1.3 nm TIP3P box (periodic, 157 atoms), as (topology, positions nm)."""
    top, pos = dipeptide
    top2, pos2 = peptide.solvate(top, pos * unit.nanometer, forcefield, box_nm=1.3)
    return top2, np.asarray(pos2.value_in_unit(unit.nanometer))


@pytest.fixture(scope="session")
def cluster(solvated):
    """The solvated dipeptide with its 8 closest waters as an open cluster (46 atoms)."""
    top, pos = solvated
    atoms = list(top.atoms())
    pep = [a.index for a in atoms if a.residue.name != "HOH"]
    centre = pos[pep].mean(0)
    waters = [r for r in top.residues() if r.name == "HOH"]
    waters.sort(key=lambda r: np.linalg.norm(pos[[a.index for a in r.atoms()]].mean(0) - centre))
    keep = set(pep) | {a.index for r in waters[:8] for a in r.atoms()}
    modeller = app.Modeller(top, pos * unit.nanometer)
    modeller.delete([a for a in modeller.topology.atoms() if a.index not in keep])
    modeller.topology.setPeriodicBoxVectors(None)
    return modeller.topology, np.asarray(modeller.positions.value_in_unit(unit.nanometer))


def numbers_of(top, atoms=None):
    z = [a.element.atomic_number for a in top.atoms()]
    return z if atoms is None else [z[i] for i in atoms]


def peptide_atoms(top):
    return [a.index for a in top.atoms() if a.residue.name != "HOH"]


def ml_system(top, force):
    system = openmm.System()
    if top.getPeriodicBoxVectors() is not None:
        system.setDefaultPeriodicBoxVectors(*top.getPeriodicBoxVectors())
    for a in top.atoms():
        system.addParticle(a.element.mass)
    system.addForce(force)
    return system


def context(system, pos_nm, platform="Reference"):
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    ctx.setPositions(pos_nm * unit.nanometer)
    return ctx


def state(ctx, groups=-1, params=None):
    for k, v in (params or {}).items():
        ctx.setParameter(k, v)
    st = ctx.getState(getEnergy=True, getForces=True, groups=groups)
    return (st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            np.asarray(st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)))


def evaluate(system, pos_nm, platform="Reference", groups=-1, params=None):
    return state(context(system, pos_nm, platform), groups, params)


def box_of(top):
    return np.asarray(top.getPeriodicBoxVectors().value_in_unit(unit.nanometer))


def scatter(f_sub, atoms, n):
    full = np.zeros((n, 3))
    full[atoms] = f_sub
    return full


def assert_close(e, f, e_ref, f_ref, rtol=RTOL, atol=0.0):
    """|ΔE| ≤ rtol·max(|E|, 1 kJ/mol) + atol and max|ΔF| ≤ rtol·max(max|F|, 1 kJ/mol/nm) + atol."""
    assert abs(e - e_ref) <= rtol * max(abs(e_ref), 1.0) + atol, (e, e_ref, e - e_ref)
    scale = max(np.abs(f_ref).max(), 1.0)
    assert np.abs(f - f_ref).max() <= rtol * scale + atol, np.abs(f - f_ref).max()


def so3krates_forces(system):
    """The system's so3krates forces, as TorchForce / PythonForce objects (System.getForces()
    returns plugin forces as plain ``openmm.Force`` proxies)."""
    out = []
    for force in system.getForces():
        if force.getName() == "so3krates":
            out.append(openmmtorch.TorchForce.cast(force) if openmmtorch.TorchForce.isinstance(force) else force)
    return out


def computation_of(force: openmm.PythonForce):
    """The PythonForce's computation object, unpickled from its XML serialization."""
    match = re.search(r'function="([0-9a-fA-F]+)"', openmm.XmlSerializer.serialize(force))
    assert match, "PythonForce XML without a pickled function"
    return pickle.loads(bytes.fromhex(match.group(1)))


def _mlpotential(model_path, **kw):
    from openmmml import MLPotential  # the so3krates entry point registers itself on import
    return MLPotential("so3krates", modelPath=model_path, **kw)


# ----------------------------------------------------------------------------- whole system vs ASE
@pytest.mark.parametrize("periodic", [False, True], ids=["open", "periodic"])
@pytest.mark.parametrize("implementation", ["torch", "python"])
def test_create_system_matches_ase(model_path, ase_ref, cluster, solvated, implementation, periodic):
    """MLPotential.createSystem (TorchForce / PythonForce) on Reference and CPU = ASE, 1e-8."""
    top, pos = solvated if periodic else cluster
    system = _mlpotential(model_path, implementation=implementation).createSystem(top)
    forces = so3krates_forces(system)
    assert len(forces) == 1
    kind = openmmtorch.TorchForce if implementation == "torch" else openmm.PythonForce
    assert isinstance(forces[0], kind)
    assert system.usesPeriodicBoundaryConditions() == periodic
    assert forces[0].usesPeriodicBoundaryConditions() == periodic
    box = box_of(top) if periodic else None
    e_ref, f_ref = ase_ref(pos, numbers_of(top), box)
    assert abs(e_ref) > 1e3 and np.abs(f_ref).max() > 100.0  # a real model: nothing trivially zero
    for platform in PLATFORMS:
        ctx = context(system, pos, platform)
        e, f = state(ctx)
        assert_close(e, f, e_ref, f_ref)
        if periodic:  # a water wrapped by a lattice vector: the same configuration
            shifted = pos.copy()
            shifted[-3:] += box[0] - box[2]
            ctx.setPositions(shifted * unit.nanometer)
            e2, f2 = state(ctx)
            assert_close(e2, f2, e_ref, f_ref)


@pytest.mark.parametrize("implementation", ["torch", "python"])
def test_builder_subset_and_charge_match_ase(model_path, ase_ref, solvated, implementation):
    """torch_force / python_force on a subset (periodic) with total charge 1 = ASE with
    info['charge'] = 1 on that subset and box; the other atoms get exactly zero force."""
    top, pos = solvated
    atoms = peptide_atoms(top)[::-1] + [30, 31, 32]
    build = so_mm.torch_force if implementation == "torch" else so_mm.python_force
    force = build(model_path, top, atoms=atoms, charge=1.0, force_group=4)
    assert force.getForceGroup() == 4
    e, f = evaluate(ml_system(top, force), pos, "CPU")
    e_ref, f_ref = ase_ref(pos[atoms], numbers_of(top, atoms), box_of(top), charge=1.0)
    assert_close(e, f, e_ref, scatter(f_ref, atoms, len(pos)))
    rest = np.setdiff1d(np.arange(len(pos)), atoms)
    assert np.all(f[rest] == 0.0)
    e_neutral, _ = ase_ref(pos[atoms], numbers_of(top, atoms), box_of(top), charge=0.0)
    assert abs(e - e_neutral) > 10.0  # the shipped model embeds the charge: it really was passed


def test_spin_and_charge_are_passed(standin_path, cluster):
    """num_unpaired_electrons reaches the module (the shipped model has no spin embedding, so the
    stand-in's exact offsets 0.1 eV per e and 0.05 eV per unpaired electron are used)."""
    top, pos = cluster
    for build in (so_mm.torch_force, so_mm.python_force):
        e0, _ = evaluate(ml_system(top, build(standin_path, top)), pos)
        e1, _ = evaluate(ml_system(top, build(standin_path, top, charge=2, num_unpaired_electrons=1)), pos)
        assert math.isclose(e1 - e0, (0.2 + 0.05) * EV_TO_KJ_PER_MOL, rel_tol=1e-9)
    # openmm-ml: multiplicity = numUnpairedElectrons + 1, string values parsed
    for kw in (dict(charge="-1", multiplicity="4"), dict(implementation="python", charge=-1, numUnpairedElectrons="3")):
        system = _mlpotential(standin_path, **kw).createSystem(top)
        e2, _ = evaluate(system, pos)
        assert math.isclose(e2 - e0, (-0.1 + 0.15) * EV_TO_KJ_PER_MOL, rel_tol=1e-9)
    with pytest.raises(ValueError, match="disagree"):
        _mlpotential(standin_path, multiplicity=2, numUnpairedElectrons=0).createSystem(top)


# ----------------------------------------------------------------------------- dtype
def test_float32_on_float64_file(model_path, ase_ref, cluster):
    """dtype='float32' runs a float64 file in single precision: close to, but not equal to, ASE."""
    top, pos = cluster
    e_ref, f_ref = ase_ref(pos, numbers_of(top))
    for build in (so_mm.torch_force, so_mm.python_force):
        e, f = evaluate(ml_system(top, build(model_path, top, dtype="float32")), pos)
        assert 0.0 < abs(e - e_ref) <= 1e-5 * abs(e_ref)
        assert 0.0 < np.abs(f - f_ref).max() <= 1e-4 * np.abs(f_ref).max()


def test_default_dtype_is_the_files(ase_ref, cluster):
    """dtype=None (default) keeps the exported dtype: the shipped float32 file runs in float32 and
    equals ASE on that file; dtype='float64' on it equals ASE's float64 cast of it (1e-8) and is
    within 1e-6 of the float64 export of the checkpoint (float32-rounded weights and constants)."""
    top, pos = cluster
    z = numbers_of(top)
    torch_default = so_mm.torch_force(SHIPPED_PT, top)
    assert torch_default.getModule().open_cell.dtype == torch.float32
    python_default = so_mm.python_force(SHIPPED_PT, top, device="cpu")
    assert computation_of(python_default).dtype == "float32"
    ase32 = _ase_evaluator(SHIPPED_PT)
    e_ref, f_ref = ase32(pos, z)
    for force in (torch_default, python_default):
        e, f = evaluate(ml_system(top, force), pos)
        # float32: TorchScript's optimised graph (after the first calls) rounds differently
        assert_close(e, f, e_ref, f_ref, rtol=1e-5)

    e64, f64 = evaluate(ml_system(top, so_mm.torch_force(SHIPPED_PT, top, dtype="float64")), pos)
    e_cast, f_cast = _ase_evaluator(SHIPPED_PT, dtype="float64")(pos, z)
    assert_close(e64, f64, e_cast, f_cast)
    e_exp, f_exp = ase_ref(pos, z)  # the float64 export of the checkpoint
    # same float32 weights, but the basis/grid constants were rounded to float32 in the file:
    # measured 1e-8 (energy) and 2e-6 (max force) relative here
    assert_close(e64, f64, e_exp, f_exp, rtol=1e-5)
    assert np.abs(f64 - f_exp).max() > 1e-9 * np.abs(f_exp).max()  # it is not the float64 export


def test_unit_constants():
    assert EV_TO_KJ_PER_MOL == 96.48533212331002
    ev = (1 * unit.elementary_charge * unit.volt * unit.AVOGADRO_CONSTANT_NA).value_in_unit(unit.kilojoule_per_mole)
    assert math.isclose(EV_TO_KJ_PER_MOL, ev, rel_tol=1e-14)
    assert EV_PER_A_TO_KJ_PER_MOL_NM == EV_TO_KJ_PER_MOL * 10.0


# ----------------------------------------------------------------------------- options
def test_parse_bool():
    for value in (True, 1, "true", "True", "TRUE", " yes ", "on", "1"):
        assert parse_bool("useCUDAGraphs", value) is True
    for value in (False, 0, "false", "False", "no", "OFF", "0", " 0 "):
        assert parse_bool("useCUDAGraphs", value) is False
    for value in ("", "maybe", "2", 2, None, 0.5, [True]):
        with pytest.raises(ValueError, match="useCUDAGraphs must be a boolean"):
            parse_bool("useCUDAGraphs", value)
    assert parse_nonnegative_int("CUDAGraphWarmupSteps", "12") == 12
    for value in ("-1", -1, "x", 1.5, True):
        with pytest.raises(ValueError, match="CUDAGraphWarmupSteps must be a non-negative integer"):
            parse_nonnegative_int("CUDAGraphWarmupSteps", value)


def test_torch_force_cuda_properties(model_path, cluster):
    top, _ = cluster
    force = so_mm.torch_force(model_path, top, use_cuda_graphs="False", cuda_graph_warmup_steps="5",
                              force_group=3, properties={"useCUDAGraphs": "true"})
    props = dict(force.getProperties())
    assert (props["useCUDAGraphs"], props["CUDAGraphWarmupSteps"]) == ("true", "5")  # properties= wins
    assert force.getForceGroup() == 3
    props = dict(so_mm.torch_force(model_path, top, use_cuda_graphs="false").getProperties())
    assert props["useCUDAGraphs"] == "false"
    # nothing given: openmm-torch's defaults (graphs off)
    assert dict(so_mm.torch_force(model_path, top).getProperties()).get("useCUDAGraphs", "false") == "false"
    with pytest.raises(ValueError, match="use_cuda_graphs must be a boolean"):
        so_mm.torch_force(model_path, top, use_cuda_graphs="sometimes")


def test_cuda_graph_force_equals_the_ordinary_force(model_path, solvated):
    """use_cuda_graphs=True makes the model's steps capturable (fixed-shape pair lists, no host read-back); on
    any platform they give the ordinary forces (the CPU platform here: OpenMM ignores useCUDAGraphs there)."""
    top, pos = solvated
    e0, f0 = evaluate(ml_system(top, so_mm.torch_force(model_path, top)), pos, "CPU")
    graphs = ml_system(top, so_mm.torch_force(model_path, top, use_cuda_graphs=True))
    for shift in (0.0, 0.002):
        e, f = evaluate(graphs, pos + shift, "CPU")
        e_ref, f_ref = (e0, f0) if shift == 0.0 else evaluate(ml_system(top, so_mm.torch_force(model_path, top)),
                                                               pos + shift, "CPU")
        assert abs(e - e_ref) < 1e-8 and np.abs(f - f_ref).max() < 1e-7


def test_mlpotential_options_pass_through(model_path, ase_ref, cluster, solvated):
    """openmm-ml passes every option: CUDA-graph properties (strings parsed), dtype, charge,
    implementation/device/compile; per-call values override the constructor's."""
    top, pos = cluster
    pot = _mlpotential(model_path, useCUDAGraphs="false", CUDAGraphWarmupSteps="7")
    periodic = pot.createSystem(solvated[0], useCUDAGraphs="Yes")
    (force,) = so3krates_forces(periodic)
    props = dict(force.getProperties())
    assert (props["useCUDAGraphs"], props["CUDAGraphWarmupSteps"]) == ("true", "7")
    assert force.getModule().model.potential.capturable  # CUDA graphs: the model's capturable steps
    with pytest.raises(ValueError, match="need a periodic box"):  # an open cluster cannot be captured
        pot.createSystem(top, useCUDAGraphs="Yes")
    system = pot.createSystem(top, charge="1", dtype="float32")
    (force,) = so3krates_forces(system)
    props = dict(force.getProperties())
    assert (props["useCUDAGraphs"], props["CUDAGraphWarmupSteps"]) == ("false", "7")
    assert force.getModule().open_cell.dtype == torch.float32
    e, _ = evaluate(system, pos)
    e1, _ = ase_ref(pos, numbers_of(top), charge=1.0)
    e0, _ = ase_ref(pos, numbers_of(top), charge=0.0)
    assert abs(e - e1) <= 1e-5 * abs(e1) < abs(e - e0)  # float32, and charge 1 reached the model
    mixed = pot.createMixedSystem(top, _mm_open(top), peptide_atoms(top))
    (force,) = so3krates_forces(mixed)
    props = dict(force.getProperties())
    assert (props["useCUDAGraphs"], props["CUDAGraphWarmupSteps"]) == ("false", "7")
    assert not force.getModule().model.potential.capturable
    assert force.getModule().open_cell.dtype == torch.float64

    python = _mlpotential(model_path, implementation="PythonForce", device="cpu", compile="false")
    system = python.createSystem(top, charge=-1, numUnpairedElectrons="0", dtype="float32")
    (force,) = so3krates_forces(system)
    comp = computation_of(force)
    assert (comp.compile, comp.device, comp.dtype, comp.charge, comp.num_unpaired_electrons) == \
        (False, "cpu", "float32", -1.0, 0.0)

    with pytest.raises(ValueError, match=r"only to implementation='torch'"):
        _mlpotential(model_path, implementation="python", useCUDAGraphs=True).createSystem(top)
    with pytest.raises(ValueError, match=r"only to implementation='python'"):
        _mlpotential(model_path, compile=True).createSystem(top)
    with pytest.raises(ValueError, match="useCUDAGraphs must be a boolean"):
        _mlpotential(model_path, useCUDAGraphs="enabled").createSystem(top)
    with pytest.raises(ValueError, match="CUDAGraphWarmupSteps must be a non-negative integer"):
        _mlpotential(model_path, CUDAGraphWarmupSteps="-3").createSystem(top)
    with pytest.raises(ValueError, match="charge must be a number"):
        _mlpotential(model_path, charge="plus one").createSystem(top)
    with pytest.raises(ValueError, match="unknown argument"):
        _mlpotential(model_path, useCudaGraphs=True)
    with pytest.raises(ValueError, match="unknown argument"):
        _mlpotential(model_path).createSystem(top, precison="double")
    with pytest.raises(ValueError, match="dtype must be"):
        _mlpotential(model_path, dtype="float16").createSystem(top)


def _mm_open(top):
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    return ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)


# ----------------------------------------------------------------------------- PythonForce
@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_pythonforce_eager_module(standin_path, model_path, ase_ref, cluster, compile):
    """An eager nn.Module with the exported signature works in python_force and survives deepcopy:
    the shipped model as an eager So3kratesPotential equals ASE on its float64 export (1e-8).
    ``compile=True`` (slow: torch.compile of the real network takes too long on CPU) uses the
    stand-in's eager class and checks it against its scripted file."""
    top, pos = cluster
    if compile:
        from morse_standin import MorseStandIn
        eager = MorseStandIn((1, 6, 7, 8), cutoff=5.0).double()
        e_ref, f_ref = evaluate(ml_system(top, so_mm.torch_force(standin_path, top)), pos)
        metadata = {"species": [1, 6, 7, 8]}
    else:
        from so3krates.export.exporter import potential_from_checkpoint
        eager = potential_from_checkpoint(str(SHIPPED_CKPT), dtype="float64")
        e_ref, f_ref = ase_ref(pos, numbers_of(top))
        metadata = None  # derived by the exporter
    system = ml_system(top, so_mm.python_force(eager, top, device="cpu", compile=compile, metadata=metadata))
    e_p, f_p = evaluate(system, pos)
    assert_close(e_p, f_p, e_ref, f_ref)
    e_c, f_c = evaluate(copy.deepcopy(system), pos, "CPU")
    assert_close(e_c, f_c, e_ref, f_ref)
    with pytest.raises(ValueError, match="metadata"):
        so_mm.python_force(torch.nn.Linear(3, 1), top)


# ----------------------------------------------------------------------------- errors
def test_unknown_element_error(model_path, cluster):
    species = so_mm.load_model(model_path)[1]["species"]
    assert species == [1, 6, 7, 8, 16] and app.element.chlorine.atomic_number not in species
    el = app.element.chlorine
    top = copy.deepcopy(cluster[0])  # Modeller/Topology edits would change the shared fixture
    n = top.getNumAtoms()
    top.addAtom(el.symbol, el, top.addResidue("ION", top.addChain()))
    for builder in (so_mm.torch_force, so_mm.python_force):
        with pytest.raises(ValueError) as err:
            builder(model_path, top)
        msg = str(err.value)
        assert "Cl (Z=17, 1 atoms)" in msg and "H, C, N, O, S" in msg and "createMixedSystem" in msg
    # the Cl ion left out of the ML region is fine
    so_mm.torch_force(model_path, top, atoms=list(range(n)))


def test_bad_model_file(tmp_path, cluster):
    top, _ = cluster
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        so_mm.torch_force(bad, top)

    class Plain(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(Plain()), str(plain))
    with pytest.raises(ValueError, match="so3krates/metadata.json"):
        so_mm.torch_force(plain, top)
    with pytest.raises(FileNotFoundError, match="so3krates export"):
        so_mm.torch_force(tmp_path / "missing.pt", top)
    with pytest.raises(ValueError, match="modelPath"):
        _mlpotential(None).createSystem(top)


# ----------------------------------------------------------------------------- serialization
@pytest.mark.parametrize("builder", ["torch", "python"])
def test_deepcopy_and_xml_roundtrip(model_path, ase_ref, solvated, builder):
    top, pos = solvated
    make = so_mm.torch_force if builder == "torch" else so_mm.python_force
    atoms = list(range(30))
    system = ml_system(top, make(model_path, top, atoms=atoms))
    e0, f0 = evaluate(system, pos)
    e_ref, f_ref = ase_ref(pos[atoms], numbers_of(top, atoms), box_of(top))
    assert_close(e0, f0, e_ref, scatter(f_ref, atoms, len(pos)))
    copied = copy.deepcopy(system)
    restored = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    for other in (copied, restored):
        e, f = evaluate(other, pos)
        assert_close(e, f, e0, f0, rtol=1e-14)


# ----------------------------------------------------------------------------- openmm-ml mixed
def test_entry_point_registered():
    from importlib.metadata import entry_points
    names = {ep.name: ep.value for ep in entry_points(group="openmmml.potentials")}
    assert names.get("so3krates") == "so3krates.openmm.mlpotential:So3kratesPotentialImplFactory"


def _interpolating(pot, top, mm, ml_atoms, group):
    """createMixedSystem(interpolate=True) with its CustomCVForce moved to force group ``group``."""
    system = pot.createMixedSystem(top, mm, ml_atoms, interpolate=True)
    (cv,) = [f for f in system.getForces() if isinstance(f, openmm.CustomCVForce)]
    cv.setForceGroup(group)
    names = [cv.getCollectiveVariableName(i) for i in range(cv.getNumCollectiveVariables())]
    assert names[0] == "mlForce1" and all(n.startswith("mmForce") for n in names[1:]), names
    return system, cv


def _check_interpolation(ctx, cv, group, e_ml, f_ml, rtol=RTOL):
    """The CustomCVForce (its own group): at λ=1 it is the ML energy/forces; its ML collective
    variable is the ML energy at any λ; λ=0.5 mixes ML and the region's MM terms half and half."""
    e1, f1 = state(ctx, {group}, {"lambda_interpolate": 1.0})
    assert_close(e1, f1, e_ml, f_ml, rtol)
    _, f0 = state(ctx, {group}, {"lambda_interpolate": 0.0})
    e_half, f_half = state(ctx, {group}, {"lambda_interpolate": 0.5})
    values = cv.getCollectiveVariableValues(ctx)
    assert abs(values[0] - e_ml) <= rtol * abs(e_ml)
    e_mm_region = sum(values[1:])
    assert abs(e_mm_region) > 1.0
    assert_close(e_half, f_half, 0.5 * e_ml + 0.5 * e_mm_region, 0.5 * f_ml + 0.5 * f0, rtol)
    ctx.setParameter("lambda_interpolate", 1.0)


@pytest.mark.parametrize("implementation", ["torch", "python"])
def test_mixed_open_matches_ase(model_path, ase_ref, forcefield, cluster, dipeptide, implementation):
    """E_mixed = E_MM(all) - E_MM(ML region alone) + E_ASE(ML region) (Reference: 1e-8 on the
    total); the ML force group = ASE on both platforms (1e-8); interpolate=True likewise."""
    top, pos = cluster
    ml_atoms = peptide_atoms(top)
    n = len(pos)
    kw = dict(nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    mm = forcefield.createSystem(top, **kw)
    mm_pep = forcefield.createSystem(dipeptide[0], **kw)
    e_ml, f_ml_sub = ase_ref(pos[ml_atoms], numbers_of(top, ml_atoms))
    f_ml = scatter(f_ml_sub, ml_atoms, n)

    pot = _mlpotential(model_path, implementation=implementation)
    mixed = pot.createMixedSystem(top, mm, ml_atoms, forceGroup=1)
    interp, cv = _interpolating(pot, top, mm, ml_atoms, group=2)
    for platform in PLATFORMS:
        e_mm, f_mm = evaluate(mm, pos, platform)
        ctx = context(mixed, pos, platform)
        e_g, f_g = state(ctx, {1})
        assert_close(e_g, f_g, e_ml, f_ml)
        e, f = state(ctx)
        ictx = context(interp, pos, platform)
        _check_interpolation(ictx, cv, 2, e_ml, f_ml)
        e_i1, f_i1 = state(ictx, params={"lambda_interpolate": 1.0})
        e_i0, f_i0 = state(ictx, params={"lambda_interpolate": 0.0})
        if platform == "Reference":  # double-precision MM: the decomposition holds to 1e-8
            e_mm_pep, f_mm_pep = evaluate(mm_pep, pos[ml_atoms], platform)
            f_expect = f_mm + f_ml
            f_expect[ml_atoms] -= f_mm_pep
            assert_close(e, f, e_mm - e_mm_pep + e_ml, f_expect)
            assert_close(e_i1, f_i1, e, f)
            # λ=0: openmm-ml recomputes the region's nonbonded MM energy with the rounded constant
            # 138.935456 (NonbondedForce uses the exact 1/(4π ε0)): ~2e-6 kJ/mol apart, hence atol
            assert_close(e_i0, f_i0, e_mm, f_mm, atol=1e-5)
        else:  # the CPU platform's MM nonbonded kernel is single precision
            assert_close(e_i1, f_i1, e, f, rtol=1e-6)
            assert_close(e_i0, f_i0, e_mm, f_mm, rtol=1e-6)


@pytest.mark.parametrize("implementation", ["torch", "python"])
def test_mixed_periodic_matches_ase(model_path, ase_ref, forcefield, solvated, implementation):
    """PME water + ML peptide: the ML group = ASE on the region with the box (1e-8, both
    platforms); interpolate at λ=1 is the plain mixed system, at λ=0 the MM system."""
    top, pos = solvated
    ml_atoms = peptide_atoms(top)
    n = len(pos)
    mm = forcefield.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=0.6 * unit.nanometer,
                                 constraints=app.HBonds)
    e_ml, f_ml_sub = ase_ref(pos[ml_atoms], numbers_of(top, ml_atoms), box_of(top))
    f_ml = scatter(f_ml_sub, ml_atoms, n)
    pot = _mlpotential(model_path, implementation=implementation, charge=0)
    mixed = pot.createMixedSystem(top, mm, ml_atoms, forceGroup=1)
    ml = so3krates_forces(mixed)
    assert len(ml) == 1 and ml[0].usesPeriodicBoundaryConditions() and ml[0].getForceGroup() == 1
    interp, cv = _interpolating(pot, top, mm, ml_atoms, group=2)
    for platform in PLATFORMS:
        ctx = context(mixed, pos, platform)
        e_g, f_g = state(ctx, {1})
        assert_close(e_g, f_g, e_ml, f_ml)
        e_mix, f_mix = state(ctx)
        ictx = context(interp, pos, platform)
        _check_interpolation(ictx, cv, 2, e_ml, f_ml)
        exact = 1e-8 if platform == "Reference" else 1e-6  # CPU: single-precision PME
        e1, f1 = state(ictx, params={"lambda_interpolate": 1.0})
        assert_close(e1, f1, e_mix, f_mix, rtol=exact)
        # λ=0: the plain mixed system with the ML energy replaced by the region's MM terms
        e0, f0 = state(ictx, params={"lambda_interpolate": 0.0})
        e_mm_region = sum(cv.getCollectiveVariableValues(ictx)[1:])
        _, f_mm_region = state(ictx, {2})
        assert_close(e0, f0, e_mix - e_g + e_mm_region, f_mix - f_g + f_mm_region, rtol=exact)
        # ... which is the MM system only up to openmm-ml's approximation: it recomputes the
        # region's internal nonbonded terms as plain Coulomb + LJ without cutoff, minimum image
        # or Ewald (PME in the MM system); in this 1.3 nm box that is 0.05 kJ/mol (1e-4) here
        e_mm, _ = evaluate(mm, pos, platform)
        assert abs(e0 - e_mm) <= 1e-3 * abs(e_mm)


def test_import_order_trap_fixed(model_path):
    """A user script that imports only openmm and openmm-ml (openmm first, no so3krates import)
    gets the potential through the entry point and a working Context, although ``import openmm``
    had failed to load the TorchReference plugin (the trap, checked first). The script ran once
    per session in the ``model_path`` fixture (see ``_user_script``)."""
    res = _USER_SCRIPT_RUNS[model_path]
    assert res.returncode == 0, res.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines() if line.startswith(("TRAP", "ENERGY")))
    assert lines["TRAP"] == "True", "the trap did not occur: this test no longer tests the fix"
    e = float(lines["ENERGY"])
    e_ref, _ = _ase_evaluator(model_path)(_WATER_NM, [8, 1, 1])
    assert abs(e - e_ref) <= RTOL * abs(e_ref)


# ----------------------------------------------------------------------------- example
def _check_log(out: Path, rows_expected: int):
    log = out / "log.csv"
    assert log.is_file() and log.stat().st_size > 0
    with open(log) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == rows_expected
    assert any(k.startswith("Temperature") for k in rows[0]) and any(k.startswith("Potential") for k in rows[0])
    return rows


def test_peptide_example_short_run(tmp_path):
    """examples/openmm/run_peptide.py with the shipped model (its default), peptide ML region in
    amber14/TIP3P + PME: a few hundred steps, no NaN, temperature near target, outputs written."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "examples" / "openmm" / "run_peptide.py"),
           "--steps", "300", "--report-interval", "15", "--box", "2.2", "--out", str(out),
           "--platform", "CPU", "--equilibration-steps", "100", "--minimize-iterations", "100"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finite"] is True and summary["ml_region"] == "peptide"
    assert Path(summary["model"]).resolve() == SHIPPED_PT.resolve() and summary["dtype"] == "float32"
    assert (out / "trajectory.dcd").stat().st_size > 0 and (out / "topology.pdb").stat().st_size > 0
    rows = _check_log(out, 20)
    temps = summary["temperatures_K"]
    assert len(temps) == 20 and all(np.isfinite(temps))
    assert temps == [float(r[next(k for k in r if k.startswith("Temperature"))]) for r in rows]
    mean_t = float(np.mean(temps[len(temps) // 2:]))
    assert abs(mean_t - summary["target_K"]) < 40.0, temps


def test_peptide_example_whole_box(tmp_path):
    """--ml-region all: the whole periodic box (Ace-Ala-Nme + water) by the shipped model, a few
    steps (the example's main() in-process: the standalone script is the test above)."""
    run_peptide = _load_example_module("so3krates_example_run_peptide", ROOT / "examples" / "openmm" / "run_peptide.py")
    out = tmp_path / "all"
    rc = run_peptide.main(["--ml-region", "all", "--n-ala", "1", "--box", "1.3", "--steps", "10",
                           "--report-interval", "5", "--equilibration-steps", "0", "--minimize-iterations", "10",
                           "--platform", "CPU", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finite"] is True and summary["ml_region"] == "all" and summary["timestep_fs"] == 0.5
    assert summary["ml_atoms"] == summary["atoms"] > 100
    _check_log(out, 2)
    assert (out / "trajectory.dcd").stat().st_size > 0
    assert all(0.0 < t < 1000.0 for t in summary["temperatures_K"])


@pytest.mark.parametrize("implementation", ["torch", "python"])
def test_neighbor_skin_md_equals_a_new_search_every_step(model_path, solvated, implementation):
    """MD with the adapters' default pair-list skin (1 Å: lists reused over steps) gives, at every step of
    a real trajectory, the energy and forces of a force that searches anew each step (neighborSkin=0);
    bad skins are refused when the force is made."""
    top, pos = solvated
    if implementation == "torch":
        assert so_mm.build_wrapper(model_path, top)[0].model.potential.neighbor_skin == 1.0  # the MD default
        assert so_mm.build_wrapper(model_path, top, neighbor_skin=0.5)[0].model.potential.neighbor_skin == 0.5
    reused = _mlpotential(model_path, implementation=implementation).createSystem(top)
    fresh = _mlpotential(model_path, implementation=implementation, neighborSkin=0).createSystem(top)
    integrator = openmm.VerletIntegrator(0.0005)
    ctx = openmm.Context(reused, integrator, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos * unit.nanometer)
    ctx.setVelocitiesToTemperature(600 * unit.kelvin, 7)
    ref = context(fresh, pos)
    for step in range(10):
        integrator.step(2)
        st = ctx.getState(getPositions=True, getEnergy=True, getForces=True)
        ref.setPositions(st.getPositions())
        e_ref, f_ref = state(ref)
        e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        f = np.asarray(st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
        assert e == pytest.approx(e_ref, rel=1e-10, abs=1e-8)
        np.testing.assert_allclose(f, f_ref, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="neighbor skin must be a finite distance >= 0"):
        _mlpotential(model_path, implementation=implementation, neighborSkin=-1).createSystem(top)
