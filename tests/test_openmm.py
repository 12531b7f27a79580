"""so3krates.openmm against real OpenMM (Reference and CPU platforms), float64.

The model file comes from the ``model_path`` fixture: a TorchScript stand-in with the exported
file interface (so3krates.openmm.standin). To test a real exported model set
SO3KRATES_TEST_MODEL=/path/to/model.pt (it must know H, C, N, O and not Cl; untrained weights are
fine for the equality tests); the MD example test then uses the stand-in unless
SO3KRATES_EXAMPLE_MODEL names a trained model.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
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

import so3krates.openmm as so_mm  # noqa: E402
from so3krates.openmm import EV_PER_A_TO_KJ_PER_MOL_NM, EV_TO_KJ_PER_MOL  # noqa: E402
from so3krates.openmm.standin import make_standin_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = ["Reference", "CPU"]
RTOL = 1e-8


def _load_example_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


peptide = _load_example_module("so3krates_example_peptide", ROOT / "examples" / "openmm" / "peptide.py")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> str:
    """The model under test. One line to switch to a real exported model."""
    real = os.environ.get("SO3KRATES_TEST_MODEL")
    if real:
        return real
    return make_standin_model(tmp_path_factory.mktemp("model") / "standin.pt", species=(1, 6, 7, 8),
                              cutoff=5.0, dtype="float64")


@pytest.fixture(scope="session")
def direct(model_path):
    """Direct evaluation of the module: (positions nm, Z, box nm or None) → (E kJ/mol, F kJ/mol/nm)."""
    module, _ = so_mm.load_model(model_path)

    def evaluate(pos_nm, numbers, box_nm=None, charge=0.0, unpaired=0.0):
        pos = torch.tensor(np.asarray(pos_nm, dtype=np.float64) * 10.0)
        z = torch.tensor(list(numbers), dtype=torch.long)
        if box_nm is None:
            cell = torch.zeros((3, 3), dtype=torch.float64)
            pbc = torch.zeros(3, dtype=torch.bool)
        else:
            cell = torch.tensor(np.asarray(box_nm, dtype=np.float64) * 10.0)
            pbc = torch.ones(3, dtype=torch.bool)
        out = module(pos, z, cell, pbc, float(charge), float(unpaired), True, False)
        return (float(out["energy"].detach()) * EV_TO_KJ_PER_MOL,
                out["forces"].detach().numpy() * EV_PER_A_TO_KJ_PER_MOL_NM)

    return evaluate


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
    """Ace-Ala-Nme in a 1.6 nm TIP3P box (periodic), as (topology, positions nm ndarray)."""
    top, pos = dipeptide
    top2, pos2 = peptide.solvate(top, pos * unit.nanometer, forcefield, box_nm=1.6)
    return top2, np.asarray(pos2.value_in_unit(unit.nanometer))


@pytest.fixture(scope="session")
def cluster(solvated):
    """The solvated dipeptide with its 12 closest waters as an open cluster (58 atoms)."""
    top, pos = solvated
    atoms = list(top.atoms())
    pep = [a.index for a in atoms if a.residue.name != "HOH"]
    centre = pos[pep].mean(0)
    waters = [r for r in top.residues() if r.name == "HOH"]
    waters.sort(key=lambda r: np.linalg.norm(pos[[a.index for a in r.atoms()]].mean(0) - centre))
    keep = set(pep) | {a.index for r in waters[:12] for a in r.atoms()}
    modeller = app.Modeller(top, pos * unit.nanometer)
    modeller.delete([a for a in modeller.topology.atoms() if a.index not in keep])
    modeller.topology.setPeriodicBoxVectors(None)
    return modeller.topology, np.asarray(modeller.positions.value_in_unit(unit.nanometer))


def numbers_of(top, atoms=None):
    z = [a.element.atomic_number for a in top.atoms()]
    return z if atoms is None else [z[i] for i in atoms]


def ml_system(top, force):
    system = openmm.System()
    if top.getPeriodicBoxVectors() is not None:
        system.setDefaultPeriodicBoxVectors(*top.getPeriodicBoxVectors())
    for a in top.atoms():
        system.addParticle(a.element.mass)
    system.addForce(force)
    return system


def evaluate(system, pos_nm, platform="Reference", groups=-1, params=None):
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    ctx.setPositions(pos_nm * unit.nanometer)
    for k, v in (params or {}).items():
        ctx.setParameter(k, v)
    st = ctx.getState(getEnergy=True, getForces=True, groups=groups)
    return (st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            np.asarray(st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)))


def box_of(top):
    return np.asarray(top.getPeriodicBoxVectors().value_in_unit(unit.nanometer))


def assert_close(e, f, e_ref, f_ref, rtol=RTOL, atol=0.0):
    assert abs(e - e_ref) <= rtol * max(abs(e_ref), 1.0) + atol, (e, e_ref)
    scale = max(np.abs(f_ref).max(), 1.0)
    assert np.abs(f - f_ref).max() <= rtol * scale + atol, np.abs(f - f_ref).max()


# ----------------------------------------------------------------------------- whole system
@pytest.mark.parametrize("platform", PLATFORMS)
def test_torchforce_open_matches_direct(model_path, direct, cluster, platform):
    top, pos = cluster
    force = so_mm.torch_force(model_path, top)
    assert not force.usesPeriodicBoundaryConditions()
    assert force.getOutputsForces()
    e, f = evaluate(ml_system(top, force), pos, platform)
    e_ref, f_ref = direct(pos, numbers_of(top))
    assert abs(e) > 1.0 and np.abs(f).max() > 1.0  # not trivially zero
    assert_close(e, f, e_ref, f_ref)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_torchforce_periodic_matches_direct(model_path, direct, solvated, platform):
    top, pos = solvated
    force = so_mm.torch_force(model_path, top)
    assert force.usesPeriodicBoundaryConditions()
    e, f = evaluate(ml_system(top, force), pos, platform)
    e_ref, f_ref = direct(pos, numbers_of(top), box_of(top))
    assert_close(e, f, e_ref, f_ref)
    # wrapping one molecule by a lattice vector changes nothing
    shifted = pos.copy()
    shifted[-3:] += box_of(top)[0]
    e2, f2 = evaluate(ml_system(top, so_mm.torch_force(model_path, top)), shifted, platform)
    assert_close(e2, f2, e, f, rtol=1e-9)


def test_subset_forces_scattered(model_path, direct, solvated):
    top, pos = solvated
    atoms = [a.index for a in top.atoms() if a.residue.name != "HOH"][::-1] + [30, 31, 32]
    force = so_mm.torch_force(model_path, top, atoms=atoms, charge=1.0, num_unpaired_electrons=1.0)
    e, f = evaluate(ml_system(top, force), pos)
    e_ref, f_ref = direct(pos[atoms], numbers_of(top, atoms), box_of(top), charge=1.0, unpaired=1.0)
    full = np.zeros_like(f)
    full[atoms] = f_ref
    assert_close(e, f, e_ref, full)
    rest = np.setdiff1d(np.arange(len(pos)), atoms)
    assert np.all(f[rest] == 0.0)


def test_charge_and_spin_are_passed(model_path, cluster):
    if os.environ.get("SO3KRATES_TEST_MODEL"):
        pytest.skip("stand-in specific: energy offset 0.1 eV/e + 0.05 eV/unpaired electron")
    top, pos = cluster
    e0, _ = evaluate(ml_system(top, so_mm.torch_force(model_path, top)), pos)
    e1, _ = evaluate(ml_system(top, so_mm.torch_force(model_path, top, charge=2, num_unpaired_electrons=1)), pos)
    assert math.isclose(e1 - e0, (0.2 + 0.05) * EV_TO_KJ_PER_MOL, rel_tol=1e-9)


def test_float32(model_path, direct, cluster):
    top, pos = cluster
    e, f = evaluate(ml_system(top, so_mm.torch_force(model_path, top, dtype="float32")), pos)
    e_ref, f_ref = direct(pos, numbers_of(top))
    assert abs(e - e_ref) <= 1e-5 * abs(e_ref) + 1e-3
    assert np.abs(f - f_ref).max() <= 1e-4 * np.abs(f_ref).max()


def test_unit_constants():
    assert EV_TO_KJ_PER_MOL == 96.48533212331002
    ev = (1 * unit.elementary_charge * unit.volt * unit.AVOGADRO_CONSTANT_NA).value_in_unit(unit.kilojoule_per_mole)
    assert math.isclose(EV_TO_KJ_PER_MOL, ev, rel_tol=1e-14)
    assert EV_PER_A_TO_KJ_PER_MOL_NM == EV_TO_KJ_PER_MOL * 10.0


def test_cuda_graph_property(model_path, cluster):
    top, _ = cluster
    force = so_mm.torch_force(model_path, top, use_cuda_graphs=True, cuda_graph_warmup_steps=5, force_group=3)
    props = dict(force.getProperties())
    assert props["useCUDAGraphs"] == "true" and props["CUDAGraphWarmupSteps"] == "5"
    assert force.getForceGroup() == 3


# ----------------------------------------------------------------------------- PythonForce
@pytest.mark.parametrize("periodic", [False, True])
def test_pythonforce_equals_torchforce(model_path, cluster, solvated, periodic):
    top, pos = solvated if periodic else cluster
    atoms = None if not periodic else list(range(0, 40))
    e_t, f_t = evaluate(ml_system(top, so_mm.torch_force(model_path, top, atoms=atoms)), pos)
    pf = so_mm.python_force(model_path, top, atoms=atoms, device="cpu")
    assert pf.usesPeriodicBoundaryConditions() == periodic
    e_p, f_p = evaluate(ml_system(top, pf), pos, "CPU")
    assert_close(e_p, f_p, e_t, f_t, rtol=1e-12)


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_pythonforce_eager_module(tmp_path, cluster, compile):
    """An eager nn.Module with the exported signature (here the stand-in's class), optionally
    torch.compile'd, gives the TorchForce results of its scripted file; it survives deepcopy."""
    from so3krates.openmm.standin import MorseStandIn
    top, pos = cluster
    path = make_standin_model(tmp_path / "m.pt", species=(1, 6, 7, 8), cutoff=5.0)
    eager = MorseStandIn((1, 6, 7, 8), cutoff=5.0).double()
    e_t, f_t = evaluate(ml_system(top, so_mm.torch_force(path, top)), pos)
    system = ml_system(top, so_mm.python_force(eager, top, device="cpu", compile=compile,
                                               metadata={"species": [1, 6, 7, 8]}))
    e_p, f_p = evaluate(system, pos)
    assert_close(e_p, f_p, e_t, f_t, rtol=1e-12)
    e_c, f_c = evaluate(copy.deepcopy(system), pos)
    assert_close(e_c, f_c, e_t, f_t, rtol=1e-12)
    with pytest.raises(ValueError, match="metadata"):
        so_mm.python_force(torch.nn.Linear(3, 1), top)


# ----------------------------------------------------------------------------- errors
def test_unknown_element_error(model_path, cluster):
    species = so_mm.load_model(model_path)[1]["species"]
    unknown = [el for el in (app.element.chlorine, app.element.sodium, app.element.gold, app.element.uranium)
               if el.atomic_number not in species]
    if not unknown:
        pytest.skip("the model knows every element tried")
    el = unknown[0]
    top = copy.deepcopy(cluster[0])  # Modeller/Topology edits would change the shared fixture
    n = top.getNumAtoms()
    top.addAtom(el.symbol, el, top.addResidue("ION", top.addChain()))
    for builder in (so_mm.torch_force, so_mm.python_force):
        with pytest.raises(ValueError) as err:
            builder(model_path, top)
        msg = str(err.value)
        known = ", ".join(app.element.Element.getByAtomicNumber(z).symbol for z in species)
        assert f"{el.symbol} (Z={el.atomic_number}, 1 atoms)" in msg and known in msg
    # the Cl ion left out of the ML region is fine
    so_mm.torch_force(model_path, top, atoms=list(range(n)))


def test_bad_model_file(tmp_path, cluster):
    top, _ = cluster
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a so3krates model file"):
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


# ----------------------------------------------------------------------------- serialization
@pytest.mark.parametrize("builder", ["torch", "python"])
def test_deepcopy_and_xml_roundtrip(model_path, solvated, builder):
    top, pos = solvated
    make = so_mm.torch_force if builder == "torch" else so_mm.python_force
    system = ml_system(top, make(model_path, top, atoms=list(range(30))))
    e0, f0 = evaluate(system, pos)
    copied = copy.deepcopy(system)
    xml = openmm.XmlSerializer.serialize(system)
    restored = openmm.XmlSerializer.deserialize(xml)
    for other in (copied, restored):
        e, f = evaluate(other, pos)
        assert_close(e, f, e0, f0, rtol=1e-14)


# ----------------------------------------------------------------------------- openmm-ml
def _mlpotential(model_path, **kw):
    from openmmml import MLPotential
    from so3krates.openmm.mlpotential import register
    register()  # no-op when the entry point is installed
    return MLPotential("so3krates", modelPath=model_path, **kw)


def test_entry_point_registered():
    from importlib.metadata import entry_points
    names = {ep.name: ep.value for ep in entry_points(group="openmmml.potentials")}
    assert names.get("so3krates") == "so3krates.openmm.mlpotential:So3kratesPotentialImplFactory"


@pytest.mark.parametrize("implementation", ["torch", "python"])
@pytest.mark.parametrize("periodic", [False, True])
def test_mlpotential_create_system(model_path, direct, cluster, solvated, implementation, periodic):
    top, pos = solvated if periodic else cluster
    system = _mlpotential(model_path, implementation=implementation).createSystem(top)
    assert system.usesPeriodicBoundaryConditions() == periodic
    e, f = evaluate(system, pos, "CPU")
    e_ref, f_ref = direct(pos, numbers_of(top), box_of(top) if periodic else None)
    assert_close(e, f, e_ref, f_ref)


def _split(top, pos):
    atoms = [a.index for a in top.atoms() if a.residue.name != "HOH"]
    return atoms


@pytest.mark.parametrize("implementation", ["torch", "python"])
def test_mixed_open_decomposition(model_path, direct, forcefield, cluster, dipeptide, implementation):
    """E_mixed = E_MM(all) - E_MM(ML region alone) + E_ML(ML region); interpolate on/off."""
    top, pos = cluster
    ml_atoms = _split(top, pos)
    kw = dict(nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    mm = forcefield.createSystem(top, **kw)
    pep_top, _ = dipeptide
    mm_pep = forcefield.createSystem(pep_top, **kw)
    e_mm, f_mm = evaluate(mm, pos)
    e_mm_pep, f_mm_pep = evaluate(mm_pep, pos[ml_atoms])
    e_ml, f_ml = direct(pos[ml_atoms], numbers_of(top, ml_atoms))
    e_expect = e_mm - e_mm_pep + e_ml
    f_expect = f_mm.copy()
    f_expect[ml_atoms] += f_ml - f_mm_pep

    pot = _mlpotential(model_path, implementation=implementation)
    mixed = pot.createMixedSystem(top, mm, ml_atoms, forceGroup=1)
    e, f = evaluate(mixed, pos)
    assert_close(e, f, e_expect, f_expect)
    e_g, _ = evaluate(mixed, pos, groups={1})
    assert abs(e_g - e_ml) <= RTOL * abs(e_ml)

    # With lambda < 1 openmm-ml recomputes the region's MM nonbonded energy in a CustomBondForce
    # with the rounded constant 138.935456 where NonbondedForce uses its own more precise
    # 1/(4 pi eps0): the two differ by ~1.7e-6 kJ/mol here (measured), hence atol 1e-5 there.
    interp = pot.createMixedSystem(top, mm, ml_atoms, interpolate=True)
    for lam, (e_ref, f_ref) in {1.0: (e_expect, f_expect), 0.0: (e_mm, f_mm),
                                0.5: (0.5 * (e_expect + e_mm), 0.5 * (f_expect + f_mm))}.items():
        e, f = evaluate(interp, pos, params={"lambda_interpolate": lam})
        assert_close(e, f, e_ref, f_ref, atol=0.0 if lam == 1.0 else 1e-5)


@pytest.mark.parametrize("implementation", ["torch", "python"])
def test_mixed_periodic(model_path, direct, forcefield, solvated, implementation):
    """PME water + ML peptide: ML group = direct model on the region with the box;
    interpolate at lambda=1 equals the plain mixed system, at lambda=0 the MM system."""
    top, pos = solvated
    ml_atoms = _split(top, pos)
    mm = forcefield.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=0.7 * unit.nanometer,
                                 constraints=app.HBonds)
    for force in mm.getForces():
        if isinstance(force, openmm.NonbondedForce):
            force.setForceGroup(2)
    pot = _mlpotential(model_path, implementation=implementation, charge=0)
    mixed = pot.createMixedSystem(top, mm, ml_atoms, forceGroup=1)
    ml = [f for f in mixed.getForces() if f.getName() == "so3krates"]
    assert len(ml) == 1 and ml[0].usesPeriodicBoundaryConditions()
    e_g, f_g = evaluate(mixed, pos, "CPU", groups={1})
    e_ml, f_ml = direct(pos[ml_atoms], numbers_of(top, ml_atoms), box_of(top))
    full = np.zeros_like(f_g)
    full[ml_atoms] = f_ml
    assert_close(e_g, f_g, e_ml, full)
    e_mix, f_mix = evaluate(mixed, pos, "CPU")
    interp = pot.createMixedSystem(top, mm, ml_atoms, interpolate=True)
    e1, f1 = evaluate(interp, pos, "CPU", params={"lambda_interpolate": 1.0})
    assert_close(e1, f1, e_mix, f_mix, rtol=1e-6)  # PME on CPU: single-precision reciprocal part
    e0, f0 = evaluate(interp, pos, "CPU", params={"lambda_interpolate": 0.0})
    e_mm, f_mm = evaluate(mm, pos, "CPU")
    assert_close(e0, f0, e_mm, f_mm, rtol=1e-6)


def test_import_order_trap_fixed(model_path, tmp_path):
    """openmm-ml imports openmm before torch; creating a Context must still work."""
    script = f"""
import openmm, openmm.app as app, openmm.unit as unit
from openmmml import MLPotential
from so3krates.openmm.mlpotential import register; register()
top = app.Topology(); r = top.addResidue('X', top.addChain())
for el in ('O', 'H', 'H'): top.addAtom(el, app.Element.getBySymbol(el), r)
system = MLPotential('so3krates', modelPath={str(model_path)!r}).createSystem(top)
ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName('Reference'))
ctx.setPositions([[0, 0, 0], [0.096, 0, 0], [-0.024, 0.093, 0]] * unit.nanometer)
print('ENERGY', ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ENERGY" in res.stdout


# ----------------------------------------------------------------------------- example
@pytest.fixture(scope="session")
def example_model(model_path):
    """MD needs a physically sensible model: the stand-in, or a trained model given by
    SO3KRATES_EXAMPLE_MODEL (an untrained exported model collapses atoms while minimising)."""
    return os.environ.get("SO3KRATES_EXAMPLE_MODEL") or str(ROOT / "examples" / "models" / "so3krates_demo.pt")


def test_peptide_example_short_run(example_model, tmp_path):
    """examples/openmm/run_peptide.py: a few hundred steps, no NaN, temperature near target."""
    out = tmp_path / "run"
    model_args = ["--model", str(example_model)] if example_model else []
    cmd = [sys.executable, str(ROOT / "examples" / "openmm" / "run_peptide.py"), *model_args,
           "--steps", "400", "--report-interval", "20", "--box", "2.2", "--out", str(out),
           "--platform", "CPU", "--equilibration-steps", "200"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finite"] is True
    assert (out / "trajectory.dcd").stat().st_size > 0
    temps = summary["temperatures_K"]
    assert len(temps) == 20 and all(np.isfinite(temps))
    mean_t = float(np.mean(temps[len(temps) // 2:]))
    assert abs(mean_t - summary["target_K"]) < 40.0, temps
