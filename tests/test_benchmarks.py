"""The shared benchmark helpers (benchmarks/_measure.py, _engines.py), the system builders
(so3krates.systems) and a small end-to-end run of benchmarks/lammps_speed.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import _engines  # noqa: E402
import _measure  # noqa: E402

LOG_LINE = ("so3krates: ghost cutoff 6 A (cutoff 5 A + skin 1 A) | rank 0: 145 local + 1094 ghost atoms | features "
            "computed for the local atoms only (1.00 per local atom); layer inputs projected for 395 atoms (2.72 per "
            "local atom, at most 2.83 on any rank) | per layer 87 values per ghost atom exchanged forward and 87 back "
            "| ghost atoms per local atom: 7.54 here, at most 7.61")


def test_parse_lammps_log():
    text = "\n".join([LOG_LINE, "Loop time of 0.554873 on 2 procs for 2 steps with 297 atoms",
                      "46.9% CPU use with 2 MPI tasks x 1 OpenMP threads",
                      "Nlocal:          148.5 ave         151 max         146 min",
                      "Nghost:         1088.5 ave        1094 max        1083 min"])
    res = _engines.parse_lammps(text)
    assert res["loop_s"] == pytest.approx(0.554873) and res["steps"] == 2 and res["procs"] == 2
    assert res["nlocal_ave"] == 148.5 and res["nghost_ave"] == 1088.5 and res["cpu_use_percent"] == 46.9
    st = res["so3krates"]
    assert st["ghost_cutoff_A"] == 6.0 and st["skin_A"] == 1.0
    assert (st["rank0_local"], st["rank0_ghost"], st["rank0_projected"]) == (145, 1094, 395)
    assert st["features_per_local"] == 1.0
    assert (st["projected_per_local"], st["projected_per_local_max"]) == (2.72, 2.83)
    assert (st["ghost_per_local"], st["ghost_per_local_max"]) == (7.54, 7.61)
    assert st["values_forward"] == st["values_back"] == 87
    with pytest.raises(RuntimeError, match="Loop time"):
        _engines.parse_lammps("no run here")


def test_lammps_input():
    text = _engines.lammps_input("box.data", "model.pt", ["H", "O"], steps=3, charge=1.0, bonds=True)
    for line in ("units metal", "newton on", "pair_style so3krates threads 1 charge 1", "run 1", "run 3 pre no",
                 "special_bonds lj/coul 1.0 1.0 1.0", f"pair_coeff * * {os.path.abspath('model.pt')} H O"):
        assert line in text, line
    assert "special_bonds" not in _engines.lammps_input("box.data", "model.pt", ["H", "O"], steps=3)
    assert "prune" not in text


def test_guarded_run_memory_guard_and_peak():
    ok = _measure.guarded_run([sys.executable, "-c", "x = bytearray(200 * 2**20); import time; time.sleep(0.5); "
                               "print('done')"], poll_s=0.05)
    assert ok["returncode"] == 0 and ok["killed"] is None and "done" in ok["stdout"]
    assert 0.19 < ok["peak_rss_gb"] < 0.6 and ok["processes"] == 1
    bad = _measure.guarded_run([sys.executable, "-c", "x = bytearray(400 * 2**20); import time; time.sleep(5)"],
                               max_rss_gb=0.2, poll_s=0.05)
    assert bad["killed"] == "memory" and bad["returncode"] != 0 and bad["wall_s"] < 5
    slow = _measure.guarded_run([sys.executable, "-c", "import time; time.sleep(5)"], timeout_s=0.3, poll_s=0.05)
    assert slow["killed"] == "timeout" and "wall time" in _measure.failure_text(slow)


def test_fits_and_table():
    ns = [1000, 3000, 9000]
    assert _measure.power_law_exponent(ns, [2e-3 * n ** 1.1 for n in ns]) == pytest.approx(1.1)
    assert math.isnan(_measure.power_law_exponent([1000], [1.0]))
    assert _measure.linear_fit([1, 2, 3], [5, 7, 9]) == pytest.approx((2.0, 3.0))
    assert _measure.extrapolate([(1000, 100.0), (2000, 150.0)], 4000) == pytest.approx(250.0)
    assert _measure.extrapolate([(1000, 100.0)], 3000) == pytest.approx(300.0)
    assert _measure.extrapolate([], 3000) is None
    table = _measure.format_table(["a", "bb"], [[1, "x"], [22, "yyy"]]).splitlines()
    assert len(table) == 3 and len({len(line) for line in table}) == 1
    assert _measure.format_table(["a"], [[1]], markdown=True).splitlines()[1] == "|---|"


def test_systems_builders(tmp_path):
    from so3krates import systems
    pos, cell, numbers = systems.water_lattice(3)
    assert pos.shape == (81, 3) and list(numbers[:3]) == [8, 1, 1]
    assert 81 / np.linalg.det(cell) == pytest.approx(0.1003, rel=1e-3)  # atoms / Å³ at 1 g/cm³
    box = systems.water_box(300)
    assert abs(box.n_atoms - 300) <= 0.05 * 300 and box.elements() == ["H", "O"]
    systems.save_arrays(box, tmp_path / "box.npz")
    arrays = systems.load_arrays(tmp_path / "box.npz")
    assert np.allclose(arrays["positions"], box.positions) and list(arrays["numbers"]) == box.atomic_numbers
    top = systems.topology_from_numbers(arrays["numbers"], arrays["cell"])
    assert top.getNumAtoms() == box.n_atoms and top.getPeriodicBoxVectors() is not None
    assert systems.write_lammps_data(box, tmp_path / "box.data") == ["H", "O"]


def test_lammps_speed_smoke(tmp_path):
    """All three engines and 1 + 2 ranks on a ~150-atom box with the demo model: the JSON has the
    ratios, the memory of every process tree and the pair style's decomposition line."""
    out = tmp_path / "ls.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lammps_speed.py"), "--sizes", "150",
                           "--steps", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    row = doc["rows"][0]
    assert row["module"]["status"] == row["openmm"]["status"] == "ok"
    assert [r["ranks"] for r in row["lammps"]] == [1, 2] and all(r["status"] == "ok" for r in row["lammps"])
    for r in [row["module"], row["openmm"]] + row["lammps"]:
        assert r["peak_rss_gb"] > 0.1 and r["atom_steps_per_s"] > 0
    for r in row["lammps"]:
        assert r["so3krates"]["features_per_local"] == 1.0 and r["so3krates"]["projected_per_local"] >= 1.0
    assert {"lammps1_over_module_time", "lammps1_over_module_memory", "speedup_2_ranks"} <= set(row["ratios"])
    assert "LAMMPS-1/module time" in proc.stdout and "prune" not in proc.stdout


def test_peers_ours_worker_times_reused_lists_and_compare_uses_best_times(so3lr_file, tmp_path):
    """benchmarks/_so3lr_peer_worker.py's ``ours`` entry on the 192-atom SO3LR water box: a call with a new
    neighbour search and one with the pair lists reused (1 Å skin) give the same energy; peers_so3lr.compare
    takes each side's faster time (JAX-MD: without its neighbour update, ours: lists reused)."""
    from ase.io import read

    import peers_so3lr
    from helpers import so3lr_dir

    atoms = read(so3lr_dir() / "tests" / "water_64.xyz")
    system = tmp_path / "water.npz"
    np.savez(system, numbers=atoms.numbers, positions=atoms.positions, cell=np.asarray(atoms.cell), pbc=atoms.pbc)
    out = tmp_path / "ours.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "_so3lr_peer_worker.py"), "--backend", "ours",
                          "--dtype", "float64", "--system", str(system), "--out", str(out), "--model", str(so3lr_file),
                          "--warmup", "1", "--repeats", "1"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["energy_forces_only_median_s"] > 0.0
    assert r["energy_forces_only_energy_eV"] == pytest.approx(r["energy_eV"], abs=1e-9)

    def entry(name, backend, s, ef_only):
        return {"atoms": 192, "dtype": "float32", "status": "ok", "entry": name, "backend": backend, "median_s": s,
                "energy_forces_only_median_s": ef_only}

    rows = peers_so3lr.compare([entry("ours-f32", "ours", 1.0, 0.8), entry("jax-md-f32", "jax-md", 2.0, 1.8),
                                entry("so3krates-torch-f32", "so3krates-torch", 1.9, float("inf"))])
    assert len(rows) == 1
    q = rows[0]
    assert q["fastest_peer"] == "jax-md-f32" and q["speedup"] == pytest.approx(1.8 / 0.8)
    assert q["speedup_both_searching"] == pytest.approx(2.0 / 1.0) and q["meets_goal"]
    assert q["per_peer"]["so3krates-torch-f32"] == pytest.approx(1.9 / 0.8)


def test_peers_fused_entry_exports_with_fused_kernels(tmp_path):
    """peers_so3lr's ours-fused-* entries: their model is made by the public CLI with --fused-kernels."""
    import peers_so3lr
    from so3krates.export.metadata import read_metadata

    assert peers_so3lr._model_key("ours-fused-f32") == "fused-float32"
    assert peers_so3lr._model_key("ours-f64") == "ts-float64" and peers_so3lr._model_key("ours-pt2-f32") == "pt2-float32"
    cli = Path(sys.executable).parent / "so3krates"
    models = peers_so3lr.prepare_ours(cli, ["fused-float32"], tmp_path, {})
    meta = read_metadata(models["fused-float32"])
    assert meta["fused_kernels"] is True and meta["dtype"] == "float32" and meta["cutoff_lr"] == 12.0


def test_files_ab_times_exports_interleaved_and_compares_them(tmp_path):
    """benchmarks/files_ab.py: two exports of the shipped model (plain, fused kernels) in one process."""
    from so3krates.export.exporter import export_checkpoint

    ckpt = ROOT / "examples" / "models" / "so3krates_demo.ckpt"
    export_checkpoint(ckpt, tmp_path / "plain.pt", dtype="float32")
    export_checkpoint(ckpt, tmp_path / "fused.pt", dtype="float32", fused_kernels=True)
    out = tmp_path / "ab.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "files_ab.py"), str(tmp_path / "plain.pt"),
                          str(tmp_path / "fused.pt"), "--replicate", "1", "--rounds", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT / "benchmarks")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "192 atoms, 2 interleaved rounds" in run.stdout and "first/this" in run.stdout
    doc = json.loads(out.read_text())
    assert [len(e["seconds"]) for e in doc["entries"]] == [2, 2] and doc["dtype"] == "float32"
    fused = doc["entries"][1]
    assert fused["abs_dE_eV"] < 1e-3 and fused["max_abs_dF_eV_per_A"] < 1e-3  # same model, float32 rounding
    # files of different dtypes are refused with the reason
    export_checkpoint(ckpt, tmp_path / "f64.pt", dtype="float64")
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "files_ab.py"), str(tmp_path / "plain.pt"),
                          str(tmp_path / "f64.pt"), "--replicate", "1", "--rounds", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT / "benchmarks")
    assert bad.returncode != 0 and "differ in dtype" in bad.stderr
