"""The consistency suite every exported model must pass, run on the shipped model and on a small
model with all SO3LR terms (electrostatics with the total-charge constraint, dispersion, ZBL):

eager PyTorch = TorchScript = ASE = OpenMM (Reference) = LAMMPS (1 and 2 MPI ranks) on the same
periodic configuration (float64), forces = -dE/dr by finite differences, and invariance under
rotation, translation, permutation and wrapping atoms by lattice vectors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

import lammps_helpers as LH
from helpers import ROOT, small_model
from so3krates.export.exporter import export_potential
from so3krates.export.loader import load_exported
from so3krates.potential.potential import So3kratesPotential
from so3krates.potential.checkpoint import model_from_checkpoint

SHIPPED_CKPT = ROOT / "examples" / "models" / "so3krates_demo.ckpt"
EV_TO_KJ_MOL = 96.48533212331002


def water_box(n_side: int = 3, spacing: float = 3.1, seed: int = 0) -> Atoms:
    """n_side³ randomly oriented waters on a cubic lattice (density ~1 g/cm³), periodic; Å."""
    rng = np.random.default_rng(seed)
    mol = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])
    pos, sym = [], []
    for a in range(n_side):
        for b in range(n_side):
            for c in range(n_side):
                q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
                centre = (np.array([a, b, c]) + 0.5) * spacing + rng.normal(scale=0.15, size=3)
                pos.extend(centre + mol @ q.T)
                sym.extend("OHH")
    return Atoms(sym, positions=np.array(pos), cell=np.eye(3) * n_side * spacing, pbc=True)


@pytest.fixture(scope="module", params=["shipped", "small_so3lr_terms"])
def exported(request, tmp_path_factory):
    """(eager So3kratesPotential, path of its float64 export, metadata)."""
    d = tmp_path_factory.mktemp(request.param)
    if request.param == "shipped":
        assert SHIPPED_CKPT.is_file(), f"the shipped model is missing: {SHIPPED_CKPT}"
        model = model_from_checkpoint(SHIPPED_CKPT, dtype=torch.float64)
    else:
        model = small_model(long_range=True, species=[1, 8])
    eager = So3kratesPotential(model).eval()
    meta = export_potential(eager, d / "model.pt", dtype="float64")
    return eager, d / "model.pt", meta


def _tensors(atoms):
    return (torch.tensor(atoms.positions, dtype=torch.float64), torch.tensor(atoms.numbers),
            torch.tensor(np.asarray(atoms.cell), dtype=torch.float64), torch.tensor(atoms.pbc))


def _call(module, atoms):
    out = module(*_tensors(atoms), 0.0, 0.0, True, False)
    return float(out["energy"].detach()), out["forces"].detach().numpy()


def _assert_close(e, f, e_ref, f_ref, rtol=1e-10, what=""):
    scale = max(1.0, abs(e_ref))
    assert abs(e - e_ref) <= rtol * scale, f"{what}: energy {e!r} vs {e_ref!r}"
    fscale = max(1.0, float(np.abs(f_ref).max()))
    assert np.abs(f - f_ref).max() <= rtol * fscale, f"{what}: max force difference {np.abs(f - f_ref).max():.3e}"


def _openmm(path, atoms):
    import openmm
    import openmm.app as app
    import so3krates.openmm as som
    top = app.Topology()
    chain = top.addChain()
    for z in atoms.numbers:
        res = top.addResidue("X", chain)
        top.addAtom(app.Element.getByAtomicNumber(int(z)).symbol, app.Element.getByAtomicNumber(int(z)), res)
    top.setPeriodicBoxVectors([openmm.Vec3(*(row / 10.0)) for row in np.asarray(atoms.cell)])
    system = openmm.System()
    for m in atoms.get_masses():
        system.addParticle(float(m))
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*(row / 10.0)) for row in np.asarray(atoms.cell)])
    system.addForce(som.torch_force(str(path), top, dtype="float64"))
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(atoms.positions / 10.0)
    st = ctx.getState(getEnergy=True, getForces=True)
    e = st.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole) / EV_TO_KJ_MOL
    f = st.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer)
    return e, np.asarray(f) / EV_TO_KJ_MOL / 10.0


def _lammps(path, atoms, meta, tmp_path, nprocs):
    symbols = [s for s in meta["symbols"] if s in set(atoms.get_chemical_symbols())]
    LH.write_data(atoms, tmp_path / "sys.data", symbols)
    proc = LH.run_lmp(tmp_path, LH.energy_script("sys.data", str(path), symbols), nprocs=nprocs, timeout=600)
    res = LH.parse_results(tmp_path, proc)
    return res["pe"], res["forces"]


def check_every_engine(eager, path, meta, tmp_path, label: str = "") -> None:
    """The exported file ``path`` in TorchScript, ASE, OpenMM (Reference) and LAMMPS (1 and 2 MPI ranks)
    against the eager model on a periodic water box: 1e-10 relative (OpenMM 1e-8)."""
    atoms = water_box()
    e_ref, f_ref = _call(eager, atoms)
    module, _ = load_exported(path)
    _assert_close(*_call(module, atoms), e_ref, f_ref, what=f"TorchScript{label} vs eager")

    from so3krates.ase import So3kratesCalculator
    a = atoms.copy()
    a.calc = So3kratesCalculator(path)
    _assert_close(a.get_potential_energy(), a.get_forces(), e_ref, f_ref, what=f"ASE{label} vs eager")

    e, f = _openmm(path, atoms)
    _assert_close(e, f, e_ref, f_ref, rtol=1e-8, what=f"OpenMM{label} vs eager")

    for nprocs in (1, 2):
        d = tmp_path / f"np{nprocs}"
        d.mkdir()
        e, f = _lammps(path, atoms, meta, d, nprocs)
        _assert_close(e, f, e_ref, f_ref, what=f"LAMMPS {nprocs} rank(s){label} vs eager")


def test_every_engine_agrees(exported, tmp_path):
    check_every_engine(*exported, tmp_path)


def test_forces_are_minus_energy_gradient(exported):
    eager, _, _ = exported
    atoms = water_box(2)
    _, f = _call(eager, atoms)
    h = 1e-4
    rng = np.random.default_rng(3)
    for idx in rng.choice(len(atoms), size=4, replace=False):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[idx, k] += h
            minus.positions[idx, k] -= h
            fd = -(_call(eager, plus)[0] - _call(eager, minus)[0]) / (2 * h)
            assert fd == pytest.approx(f[idx, k], abs=2e-6, rel=1e-5)


def test_invariances(exported):
    eager, _, _ = exported
    atoms = water_box(2, seed=5)
    e0, f0 = _call(eager, atoms)
    # wrapping atoms by lattice vectors and translating everything
    moved = atoms.copy()
    moved.positions[::3] += np.asarray(atoms.cell)[0] - 2 * np.asarray(atoms.cell)[2]
    moved.positions += np.array([0.37, -1.2, 2.9])
    e, f = _call(eager, moved)
    _assert_close(e, f, e0, f0, rtol=1e-10, what="wrap + translate")
    # permutation
    perm = np.random.default_rng(1).permutation(len(atoms))
    e, f = _call(eager, atoms[perm])
    _assert_close(e, f, e0, f0[perm], rtol=1e-10, what="permutation")
    # rotation of an open cluster (the same atoms without the cell)
    open_ = atoms.copy()
    open_.pbc = False
    open_.cell = np.zeros((3, 3))
    e1, f1 = _call(eager, open_)
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
    rot = open_.copy()
    rot.positions = open_.positions @ q.T
    e, f = _call(eager, rot)
    _assert_close(e, f, e1, f1 @ q.T, rtol=1e-10, what="rotation")
