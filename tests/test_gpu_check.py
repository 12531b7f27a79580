"""benchmarks/gpu_check.sh on this CPU machine: --prepare --quick, then --device cpu --quick (what CI runs).

The device run makes its own importable so3krates layout and runs every worker in a fresh process; here
it checks that the module entry's energy equals a direct evaluation of the exported demo model on the
same box, and that the OpenMM PythonForce entry ran. docs/gpu.md.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # the venv's python3 first
    env.pop("OUT", None)
    env.pop("PYTHON", None)
    return env


def test_gpu_check_cpu_quick(tmp_path):
    carry, out = tmp_path / "carry", tmp_path / "out"
    prep = subprocess.run(["bash", str(SCRIPT), "--prepare", "--quick", "--carry", str(carry)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stdout[-3000:] + prep.stderr[-3000:]
    manifest = json.loads((carry / "manifest.json").read_text())
    assert set(manifest["systems"]) == {"water_small"} and set(manifest["models"]) == {"demo"}
    assert not (carry / "wheels").exists()  # --quick carries no wheels

    run = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--quick", "--carry", str(carry), "--out", str(out)],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert "exported module, energy + forces" in run.stdout
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["device"] == "cpu" and doc["quick"] is True
    assert doc["info"]["status"] == "ok" and "site" in doc["info"]["so3krates"]  # the script's layout was imported
    assert {p["name"]: p["status"] for p in doc["parts"]} == {"versions": "ok", "layout": "ok", "wheels": "ok",
                                                              "bench": "ok"}

    entry, capturable = doc["module"]  # the ordinary step, then the capturable one (no CUDA graph on a CPU)
    assert entry["mode"] == "ordinary" and capturable["mode"] == "capturable"
    assert capturable["status"] == "ok" and capturable["model_status"] == 0
    assert abs(capturable["energy_eV"] - entry["energy_eV"]) <= 1e-5 * abs(entry["energy_eV"])
    assert entry["status"] == "ok" and entry["model"] == "demo" and entry["system"] == "water_small"
    assert entry["forces_finite"] and entry["steps"] == 2 and entry["ms_per_step"] > 0
    energy = entry["energy_eV"]
    assert math.isfinite(energy)

    from so3krates.export.loader import load_exported

    module, _ = load_exported(carry / "models" / "demo_f32.pt")
    with np.load(carry / "systems" / "water_small.npz") as d:
        res = module(torch.tensor(d["positions"], dtype=torch.float32), torch.tensor(d["numbers"], dtype=torch.long),
                     torch.tensor(d["cell"], dtype=torch.float32), torch.ones(3, dtype=torch.bool),
                     float(d["charge"]), 0.0, True, False)
        assert entry["atoms"] == len(d["numbers"])
    direct = float(res["energy"].detach())
    assert abs(energy - direct) <= 1e-4 * abs(direct), (energy, direct)

    (agree,) = doc["agreement"]
    assert agree["status"] == "ok" and agree["agree"] is True

    (mm,) = doc["openmm"]
    assert mm["status"] == "ok", mm
    assert mm["platform"] == "CPU" and mm["model_device"] == "cpu" and mm["steps"] == 10
    assert mm["ms_per_step"] > 0 and mm["ns_per_day"] > 0 and mm["finite"]
    assert mm["energy_vs_module_rel"] < 1e-4  # OpenMM's kJ/mol at the start positions = the module's eV
    assert doc["failures"] == []
