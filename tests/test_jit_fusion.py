"""The Python loader turns TorchScript kernel fusion off (export/jit_fusion.py), once per process; checked in
fresh processes, since the setting is global to one."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import ROOT

PROBE = r"""
import json, torch
from so3krates.export.loader import load_exported
before = torch.jit.set_fusion_strategy([("STATIC", 2), ("DYNAMIC", 10)])  # torch's default, returns the old one
torch.jit.set_fusion_strategy(before)
try:
    module, _ = load_exported("examples/models/so3krates_demo.pt")
except ValueError as exc:
    print(json.dumps({"error": str(exc)}))
    raise SystemExit(0)
now = torch.jit.set_fusion_strategy([("STATIC", 0), ("DYNAMIC", 0)])
pos = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
out = module(pos, torch.tensor([8, 1, 1]), torch.zeros(3, 3), torch.zeros(3, dtype=torch.bool), 0.0, 0.0, True, False)
print(json.dumps({"before": before, "after_load": now, "energy": float(out["energy"])}))
"""


def _probe(**env) -> dict:
    full = {k: v for k, v in os.environ.items() if k != "SO3KRATES_JIT_FUSION"}
    full.update(env)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_loader_turns_jit_fusion_off_and_on_request_keeps_it():
    off = _probe()
    assert off["before"] != [["STATIC", 0], ["DYNAMIC", 0]]
    assert off["after_load"] == [["STATIC", 0], ["DYNAMIC", 0]]
    on = _probe(SO3KRATES_JIT_FUSION="on")
    assert on["after_load"] == on["before"] != off["after_load"]
    assert abs(on["energy"] - off["energy"]) <= 1e-5 * max(1.0, abs(off["energy"]))


def test_bad_jit_fusion_value_is_refused():
    bad = _probe(SO3KRATES_JIT_FUSION="maybe")
    assert "SO3KRATES_JIT_FUSION='maybe'" in bad["error"] and "'off'" in bad["error"]
