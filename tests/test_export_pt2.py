"""`so3krates export --format pt2` (torch.export + AOTInductor): equality with the eager model and the
TorchScript file, the ASE calculator on a .pt2, the engine stages in the real LAMMPS pair style (1, 2 and
5 ranks, some without atoms), EFA models (open and periodic), `so3krates info`, the clear refusals, and
the upstream miscompile the model works around.

Compiling takes 2-4 minutes per model on 2 CPU cores: each model is compiled once for the module (one
layer; the bigger checks, SO3LR through a .pt2, are marked slow)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import lammps_helpers as H
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
    assert "engine stages = eager on 1, 2 and 5 simulated ranks" in res.stdout
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


def test_pt2_refuses_kshell_efa_clearly(tmp_path):
    """The periodic 'kshell' EFA mode has a cell-dependent number of k vectors: refused, with the fix."""
    save_checkpoint(tmp_path / "m.ckpt", small_model(long_range=False, efa=True, num_layers=1, efa_layers=[True],
                                                     efa_periodic_mode="kshell", efa_periodic_kcut=2.0))
    res = subprocess.run(CLI + ["export", str(tmp_path / "m.ckpt"), "--format", "pt2", "-o", str(tmp_path / "m.pt2")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "kshell" in res.stderr and "TorchScript format" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "m.pt2").exists()


def _lammps_pair(tmp_path, model_file, atoms, nprocs, charge=0.0):
    H.write_data(atoms, tmp_path / "box.data", ["H", "O"])
    name = "model" + model_file.suffix
    if not (tmp_path / name).exists():
        (tmp_path / name).symlink_to(model_file)
    style = f"so3krates charge {charge}" if charge else "so3krates"
    proc = H.run_lmp(tmp_path, H.energy_script("box.data", name, ["H", "O"], pair_style=style), nprocs)
    return H.parse_results(tmp_path, proc)


@pytest.fixture(scope="module")
def torchscript_twin(pt2_file):
    """The TorchScript file of the same model (float64)."""
    from so3krates.export.exporter import export_potential
    path = pt2_file.parent / "m.pt"
    export_potential(So3kratesPotential(_model()), path, dtype="float64")
    return path


@pytest.mark.parametrize("nprocs", [1, 2])
def test_pt2_in_lammps_equals_torchscript(pt2_file, torchscript_twin, tmp_path, nprocs):
    """pair_coeff * * model.pt2 H O: the compiled engine stages in the real pair style give what the
    TorchScript file gives (energy, forces, per-atom energies, virial) to 1e-10, on 1 and 2 ranks."""
    atoms = H.random_box(4, 2.2, seed=3)  # 64 atoms, 8.8 Å: the 4.5 Å long-range pairs cross the ranks
    (tmp_path / "ts").mkdir()
    (tmp_path / "pt2").mkdir()
    ts = _lammps_pair(tmp_path / "ts", torchscript_twin, atoms, nprocs)
    pt2 = _lammps_pair(tmp_path / "pt2", pt2_file, atoms, nprocs)
    assert abs(pt2["pe"] - ts["pe"]) <= 1e-10 * max(1.0, abs(ts["pe"]))
    np.testing.assert_allclose(pt2["forces"], ts["forces"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(pt2["atomic_energies"], ts["atomic_energies"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(pt2["vir"], ts["vir"], rtol=1e-10, atol=1e-8)  # bar
    assert float(np.abs(ts["forces"]).max()) > 1e-3  # real forces were compared


def test_pt2_in_lammps_ranks_without_atoms(pt2_file, torchscript_twin, tmp_path):
    """8 atoms on 8 ranks, half crowded into one corner: ranks with 0 and 1 local atoms run the padded
    programs (minimum 2 rows) and take part in every exchange; charged system (global stages)."""
    atoms = H.random_box(2, 2.6, seed=11)
    atoms.positions[:4] = atoms.positions[:4] * 0.45
    (tmp_path / "ts").mkdir()
    (tmp_path / "pt2").mkdir()
    ts = _lammps_pair(tmp_path / "ts", torchscript_twin, atoms, 1, charge=1.0)
    pt2 = _lammps_pair(tmp_path / "pt2", pt2_file, atoms, 8, charge=1.0)
    assert abs(pt2["pe"] - ts["pe"]) <= 1e-10 * max(1.0, abs(ts["pe"]))
    np.testing.assert_allclose(pt2["forces"], ts["forces"], rtol=0, atol=1e-10)


def test_pt2_lammps_errors(pt2_file, tmp_path):
    """A .pt2 with 'device cuda' and a package without engine stages stop at pair_coeff with the fix."""
    atoms = H.random_box(2, 2.6, seed=1)
    H.write_data(atoms, tmp_path / "box.data", ["H", "O"])
    (tmp_path / "model.pt2").symlink_to(pt2_file)
    proc = H.run_lmp(tmp_path, H.energy_script("box.data", "model.pt2", ["H", "O"], pair_style="so3krates device cuda"))
    text = H.error_text(proc)
    assert proc.returncode != 0 and "ERROR" in text
    assert ("compiled for the CPU" in text) or ("device cuda" in text and "GPU" in text), text[-1500:]


@pytest.fixture(scope="module")
def efa_pt2(tmp_path_factory):
    """One-layer EFA model (open Lebedev + periodic simplex programs), generic programs only (the engine
    stages of EFA models are checked by the exporter in the slow test below)."""
    from so3krates.export.pt2 import export_pt2
    d = tmp_path_factory.mktemp("efa_pt2")
    pot = So3kratesPotential(small_model(long_range=False, efa=True, num_layers=1, efa_layers=[True], seed=5))
    meta = export_pt2(pot, d / "efa.pt2", engine=False)
    assert sorted(meta["programs"]) == ["model", "periodic_model"]
    return d / "efa.pt2", pot


def test_pt2_efa_open_and_periodic_equal_eager(efa_pt2):
    path, eager = efa_pt2
    module, _ = load_exported(path)
    pos, z = random_molecule(14, seed=3)
    a, b = _run(eager, pos, z), _run(module, pos, z)
    assert abs(float(a["energy"] - b["energy"])) <= 1e-10 * max(1.0, abs(float(a["energy"])))
    assert float((a["forces"] - b["forces"]).abs().max()) <= 1e-10
    pos, z, cell = random_periodic(17, seed=5)
    a, b = _run(eager, pos, z, cell, True, stress=True), _run(module, pos, z, cell, True, stress=True)
    assert abs(float(a["energy"] - b["energy"])) <= 1e-10 * max(1.0, abs(float(a["energy"])))
    assert float((a["forces"] - b["forces"]).abs().max()) <= 1e-10
    assert float((a["stress"] - b["stress"]).abs().max()) <= 1e-10
    with pytest.raises(ValueError, match="mixed"):  # EFA: fully periodic or fully open
        module(torch.tensor(pos), torch.tensor(z), torch.tensor(cell), torch.tensor([True, True, False]))


@pytest.mark.slow
def test_pt2_efa_engine_stages(tmp_path):
    """EFA (open + periodic) and long-range terms with the engine stages: the exporter verifies them on 1, 2
    and 5 simulated ranks against the eager model (it raises otherwise)."""
    from so3krates.export.pt2 import export_pt2
    pot = So3kratesPotential(small_model(long_range=True, efa=True, num_layers=1, efa_layers=[True], seed=6))
    meta = export_pt2(pot, tmp_path / "efa.pt2")
    assert "efa_sums_0_periodic_vjp" in meta["programs"] and "update_0_open_fwd" in meta["programs"]


def _index_add_broadcast():
    """q - Σ_graph q broadcast back with index_add: what PartialChargesHead.correct did for one graph."""
    class M(torch.nn.Module):
        def forward(self, q, batch):
            return q - torch.zeros(1, dtype=q.dtype).index_add(0, batch, q)[batch]
    return M()


@pytest.mark.xfail(torch.__version__.startswith("2.9."), strict=True,
                   reason="torch 2.9 AOTInductor miscompiles index_add + gather with a dynamic number of rows; "
                          "the model uses potential/graph/segments.py graph_sums for one graph instead")
def test_upstream_index_add_broadcast_reproducer(tmp_path):
    """The smallest op sequence behind the long-range mismatch of earlier pt2 exports (~0.5 eV): compiled
    with a dynamic number of rows, the result differs from eager. Passes once torch fixes it."""
    m = _index_add_broadcast()
    q, b = torch.randn(7, dtype=torch.float64), torch.zeros(7, dtype=torch.long)
    n = torch.export.Dim("n", min=2)
    ep = torch.export.export(m, (q, b), dynamic_shapes=({0: n}, {0: n}))
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "m.pt2"))
    run = torch._inductor.aoti_load_package(path)
    for size in (7, 11, 30):
        q, b = torch.randn(size, dtype=torch.float64), torch.zeros(size, dtype=torch.long)
        assert float((run(q, b) - m(q, b)).abs().max()) < 1e-12


@pytest.mark.slow
def test_pt2_directional_efa_open_only(tmp_path):
    """Direction-dependent EFA queries/keys (efa_qk_degrees = 2): only the open-boundary programs are
    compiled, the exporter verifies them (generic + engine stages on 1, 2, 5 ranks), and the runtime
    refuses a periodic structure naming the option."""
    from so3krates.export.pt2 import export_pt2
    pot = So3kratesPotential(small_model(long_range=False, efa=True, num_layers=2, efa_layers=[True, True],
                                         efa_qk_degrees=2, seed=5))
    meta = export_pt2(pot, tmp_path / "dir.pt2")
    assert meta["efa_qk_degrees"] == 2 and "periodic_model" not in meta["programs"]
    assert "efa_sums_1_open_vjp" in meta["programs"] and not any("periodic" in p for p in meta["programs"])
    module, _ = load_exported(tmp_path / "dir.pt2")
    pos, z, cell = random_periodic(17, seed=5)
    with pytest.raises(ValueError, match="efa_qk_degrees"):
        module(torch.tensor(pos), torch.tensor(z), torch.tensor(cell), torch.tensor([True] * 3))


def test_pt2_fusion_fallback_recompiles_the_blamed_program(tmp_path, monkeypatch, capsys):
    """The work-around for torch 2.9's fusion miscompile of SO3LR's forces: when the export-time check blames
    a program, the exporter compiles that program again with kernel fusion off (max_fusion_size=1), packages
    and checks again, and says so. The failing check is forced once here (the real miscompile needs SO3LR and
    ~1 h of compiling: tests/test_model_parity.py::test_parity_through_pt2, slow); everything after it runs
    for real and the unfused package must equal the eager model."""
    import so3krates.export.pt2 as pt2
    real_verify, calls = pt2._verify_package, []

    def verify_failing_once(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise pt2.CompiledMismatch("the compiled program 'model' on 9 atoms (open) disagrees with the eager "
                                       "model (forced by the test)", ["model"])
        return real_verify(*args, **kw)

    monkeypatch.setattr(pt2, "_verify_package", verify_failing_once)
    pot = So3kratesPotential(small_model(long_range=False, num_layers=1, seed=7))
    meta = pt2.export_pt2(pot, tmp_path / "m.pt2", engine=False)
    said = capsys.readouterr().out.splitlines()
    assert len(calls) == 2 and "model" in meta["programs"]
    assert meta["compiled_without_fusion"] == ["model"] == read_metadata(tmp_path / "m.pt2")["compiled_without_fusion"]
    assert any("recompiling 1 program(s) with kernel fusion off" in s for s in said), said
    assert any("recompiled model without fusion" in s for s in said), said
    assert any("compiled without kernel fusion" in s and "model" in s for s in said), said
    module, _ = load_exported(tmp_path / "m.pt2")
    pos, z = random_molecule(12, seed=4)
    a, b = _run(pot, pos, z), _run(module, pos, z)
    assert abs(float(a["energy"] - b["energy"])) <= 1e-10 * max(1.0, abs(float(a["energy"])))
    assert float((a["forces"] - b["forces"]).abs().max()) <= 1e-10



@pytest.mark.slow
@pytest.mark.parametrize("nprocs", [1, 2])
def test_so3lr_pt2_in_lammps_equals_torchscript(so3lr_pt2, so3lr_file, tmp_path, nprocs):
    """SO3LR (3 layers, 12 Å electrostatics + dispersion, programs recompiled without fusion where torch 2.9
    needs it) through its .pt2 package in the real pair style = the TorchScript file to 1e-10 (energy, forces,
    per-atom energies, virial), DHA in a 17 Å triclinic periodic cell on 1 and 2 ranks."""
    from ase.io import read
    atoms = H.place_in_box(read(H.so3lr_dir() / "tests" / "dha.xyz"),
                           [[17.0, 0, 0], [1.5, 16.5, 0], [-1.0, 1.2, 16.0]])
    elements = ["H", "C", "O"]
    res = {}
    for kind, path in (("ts", so3lr_file), ("pt2", so3lr_pt2)):
        d = tmp_path / kind
        d.mkdir()
        name = "so3lr" + path.suffix
        (d / name).symlink_to(path)
        H.write_data(atoms, d / "dha.data", elements)
        proc = H.run_lmp(d, H.energy_script("dha.data", name, elements, extra="neighbor 0.5 bin"), nprocs,
                         timeout=600)
        res[kind] = H.parse_results(d, proc)
    ts, pt2 = res["ts"], res["pt2"]
    assert abs(pt2["pe"] - ts["pe"]) <= 1e-10 * max(1.0, abs(ts["pe"]))
    np.testing.assert_allclose(pt2["forces"], ts["forces"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(pt2["atomic_energies"], ts["atomic_energies"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(pt2["vir"], ts["vir"], rtol=1e-10, atol=1e-8)
    assert float(np.abs(ts["forces"]).max()) > 1e-2


@pytest.mark.slow
@pytest.mark.xfail(torch.__version__.startswith("2.9."), strict=True,
                   reason="torch 2.9 AOTInductor kernel fusion miscompiles the forces of SO3LR's generic program; "
                          "export/pt2.py recompiles it with max_fusion_size=1")
def test_upstream_fusion_miscompile_so3lr(so3lr_checkpoint, tmp_path, monkeypatch):
    """The upstream bug behind the SO3LR fallback, kept as a marker for the torch version: SO3LR's generic
    program compiled *with* kernel fusion must pass the export-time check. On torch 2.9 it does not (forces
    off by ~1.3 eV/Å; the exporter's retry is disabled here, so CompiledMismatch surfaces); strict, so a torch
    that fixes it reports. Not reduced further: a random 3-layer long-range model compiles correctly."""
    import so3krates.export.pt2 as pt2
    from so3krates.export.exporter import potential_from_checkpoint
    real_compile = pt2._compile
    monkeypatch.setattr(pt2, "_compile", lambda program, meta, keep_dir, fuse=True: real_compile(program, meta,
                                                                                                 keep_dir, True))
    pot = potential_from_checkpoint(str(so3lr_checkpoint), dtype="float64")
    try:
        pt2.export_pt2(pot, tmp_path / "fused.pt2", engine=False)
    except pt2.CompiledMismatch as err:  # the retry compiled with fusion again and failed again
        pytest.fail(f"fused compile of SO3LR disagrees with eager: {err}")
