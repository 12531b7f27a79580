"""The Python loader keeps freed memory in the process (export/process_memory.py): measured by page faults
in a fresh process, since the setting is per process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

# load the shipped model (which applies the setting), then allocate, touch and free 64 MiB ten times:
# each round faults 16,384 pages in when freed blocks go back to the system, none when they are kept
PROBE = r"""
import json, resource, torch
from so3krates.export.loader import load_exported
from so3krates.export.process_memory import keep_freed_memory
load_exported("examples/models/so3krates_demo.pt")
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(16 << 20); del x  # first touch of the block
f0 = faults()
for _ in range(10):
    x = torch.ones(16 << 20); del x
print(json.dumps({"state": keep_freed_memory(), "faults_per_round": (faults() - f0) / 10}))
"""


def _probe(**env) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "SO3KRATES_MALLOC"))}
    full.update(env)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_loader_keeps_freed_memory():
    kept = _probe()
    system = _probe(SO3KRATES_MALLOC="system")
    assert kept["state"] == "keep" and system["state"] == "system"
    assert system["faults_per_round"] > 10000, system  # 64 MiB = 16,384 pages faulted in again each round
    # kept: the block is reused (at most an occasional round faults, as the heap settles)
    assert kept["faults_per_round"] < 0.25 * system["faults_per_round"], (kept, system)


def test_environment_settings_win_and_bad_values_are_named():
    assert _probe(MALLOC_TRIM_THRESHOLD_="1000000")["state"] == "environment"
    proc = subprocess.run([sys.executable, "-c", "from so3krates.export.process_memory import keep_freed_memory; "
                           "keep_freed_memory()"], cwd=ROOT, env=dict(os.environ, SO3KRATES_MALLOC="always"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "SO3KRATES_MALLOC='always'" in proc.stderr and "'keep'" in proc.stderr and "'system'" in proc.stderr
