"""CI versions of the GEMS examples (examples/gems/*.py) and the benchmark driver.

A few MD steps on small versions of the systems, with a small random-weight model exported to a
temporary file (H C N O S; no Cl, to exercise the unknown-element error on villin). Real OpenMM
(TorchForce), real ``lmp`` with the so3krates pair style. Budget: well under 2 minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, small_model

GEMS = ROOT / "examples" / "gems"
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import torch
    from so3krates.export.exporter import export_potential
    from so3krates.potential.potential import So3kratesPotential
    path = tmp_path_factory.mktemp("gems") / "small.pt"
    model = small_model(dtype=torch.float32, long_range=False, species=[1, 6, 7, 8, 16])
    export_potential(So3kratesPotential(model), path, dtype="float32")
    return str(path)


def run_script(name, *args, timeout=120):
    proc = subprocess.run([sys.executable, str(GEMS / f"{name}.py"), *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    return proc


def test_ala3_both_engines(model_file, tmp_path):
    out = tmp_path / "ala3"
    proc = run_script("ala3", "--model", model_file, "--engine", "both", "--steps", 4, "--report", 2,
                      "--traj", 2, "--padding", 0.4, "--out", out, "--plot")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for f in ("ala3.pdb", "ala3_system.xml", "ala3.data", "in.ala3.lmp", "openmm_log.csv", "openmm.dcd",
              "log.lammps", "lammps.xyz", "openmm_summary.json", "lammps_summary.json", "md_openmm.png",
              "md_lammps.png"):
        assert (out / f).is_file(), f
    lmp_in = (out / "in.ala3.lmp").read_text()
    assert "units metal" in lmp_in and "atom_style atomic" in lmp_in
    assert f"pair_coeff * * {os.path.abspath(model_file)} H C N O" in lmp_in
    assert "fix thermostat all langevin" in lmp_in and "fix integrate all nve" in lmp_in
    om = json.loads((out / "openmm_summary.json").read_text())
    lm = json.loads((out / "lammps_summary.json").read_text())
    assert om["atoms"] == lm["atoms"] > 100
    assert om["ms_per_step"] > 0 and lm["ms_per_step"] > 0
    rows = (out / "openmm_log.csv").read_text().splitlines()
    assert len(rows) == 3 and "Speed (ns/day)" in rows[0] and "Time Remaining" in rows[0]
    # both engines start from the same structure with the same model: same potential energy
    import csv
    first = next(csv.DictReader(open(out / "openmm_log.csv")))
    pe_key = [k for k in first if "Potential" in k][0]
    sys.path.insert(0, str(GEMS))
    import _gems
    lrows = _gems.parse_lammps_log(out / "log.lammps")["rows"]
    assert len(lrows) == 3 and lrows[0]["Step"] == 0
    assert abs(float(first[pe_key]) / 96.48533212331002 - lrows[0]["PotEng"]) < 0.05 * abs(lrows[0]["PotEng"]) + 1.0


def test_ala15_openmm(model_file, tmp_path):
    proc = run_script("ala15", "--model", model_file, "--steps", 2, "--report", 1, "--padding", 3.0,
                      "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ns/day" in proc.stdout and (tmp_path / "openmm.dcd").is_file()
    n = int((tmp_path / "ala15.data").read_text().splitlines()[2].split()[0])
    assert n > 162


def test_villin_unknown_element_error_and_setup(model_file, tmp_path):
    proc = run_script("villin", "--model", model_file, "--engine", "none", "--out", tmp_path)
    assert proc.returncode != 0
    assert "Cl (2 atoms)" in proc.stderr and "--drop-ions" in proc.stderr
    proc = run_script("villin", "--model", model_file, "--engine", "none", "--drop-ions", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp_path / "villin.data").read_text().splitlines()
    assert lines[2] == "8865 atoms" and lines[3] == "5 atom types"
    assert "pair_coeff * *" in (tmp_path / "in.villin.lmp").read_text()
    assert "charge 2" in (tmp_path / "in.villin.lmp").read_text()


def test_crambin_setup(model_file, tmp_path):
    proc = run_script("crambin", "--model", model_file, "--engine", "none", "--box", 80, 30, 30, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = int((tmp_path / "crambin.data").read_text().splitlines()[2].split()[0])
    assert 4000 < n < 10000


def test_missing_model_message(tmp_path):
    proc = run_script("ala3", "--model", tmp_path / "nope.pt", "--engine", "none")
    assert proc.returncode != 0 and "does not exist" in proc.stderr


def test_run_all_quick_module_stage(model_file, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--model", model_file,
                           "--stages", "module", "--sizes", "100,200", "--calls", "1", "--out", tmp_path / "r"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    assert len(ok) == 2 and all(r["ms_per_step"] > 0 and r["peak_rss_mb"] > 0 for r in ok)
    assert doc["scaling_exponents"]["module"] is not None
    assert (tmp_path / "summary_r.md").read_text().count("| module") == 2
