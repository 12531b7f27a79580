"""The `so3krates` command line and the README's main job, run as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from ase.io import read

from helpers import ROOT, so3lr_dir

CLI = [sys.executable, "-m", "so3krates.cli"]


def test_convert_export_and_evaluate_published_so3lr(tmp_path):
    ref_dir = so3lr_dir()
    res = subprocess.run(CLI + ["convert", str(ref_dir / "params.pkl"), "-o", str(tmp_path / "so3lr.ckpt")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "parameters" in res.stdout and "lr cutoff 12.0 Å" in res.stdout
    res = subprocess.run(CLI + ["export", str(tmp_path / "so3lr.ckpt"), "--dtype", "float64", "-o",
                                str(tmp_path / "so3lr.pt")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # the converted weights reproduce the reference outputs of the original JAX code (DHA, open)
    from so3krates.ase import So3kratesCalculator
    atoms = read(ref_dir / "tests" / "dha.xyz")
    atoms.pbc = False
    atoms.cell = None
    ref = np.load(ref_dir / "tests" / "dha_ase.npz")
    atoms.calc = So3kratesCalculator(tmp_path / "so3lr.pt")
    e_ref = float(np.asarray(ref["energy"]).reshape(-1)[0])
    assert abs(atoms.get_potential_energy() - e_ref) <= 1e-5 + 1e-6 * abs(e_ref)
    # `so3krates evaluate` on a labelled file prints errors and writes predictions
    labelled = atoms.copy()
    from ase.calculators.singlepoint import SinglePointCalculator
    labelled.calc = SinglePointCalculator(labelled, energy=e_ref, forces=ref["forces"].reshape(-1, 3))
    from ase.io import write
    write(tmp_path / "dha.extxyz", labelled)
    res = subprocess.run(CLI + ["evaluate", str(tmp_path / "so3lr.pt"), str(tmp_path / "dha.extxyz"), "-o",
                                str(tmp_path / "pred.extxyz")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "forces" in res.stdout.lower() and (tmp_path / "pred.extxyz").is_file()


def test_cli_errors_are_one_line(tmp_path):
    res = subprocess.run(CLI + ["convert", str(tmp_path / "missing.pkl"), "-o", str(tmp_path / "x.ckpt")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "missing.pkl" in res.stderr
    (tmp_path / "bad.ckpt").write_bytes(b"junk")
    res = subprocess.run(CLI + ["export", str(tmp_path / "bad.ckpt"), "-o", str(tmp_path / "x.pt")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "not a readable checkpoint" in res.stderr and "Traceback" not in res.stderr


def test_main_job_runs_every_engine(tmp_path):
    """The README's main job (scripts/run_demo.sh runs examples/main_job.py) on a tiny water box."""
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "main_job.py"), "--steps", "2", "--padding", "0.3",
                          "--minimize", "0", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((tmp_path / "main_job.json").read_text())
    assert summary["single_point"]["atoms"] == 42 and np.isfinite(summary["single_point"]["energy_eV"])
    for key in ("openmm", "lammps_1", "lammps_2"):
        assert summary[key]["ms_per_step"] > 0, key
    assert summary["openmm"]["atoms"] == summary["lammps_2"]["atoms"] > 42
