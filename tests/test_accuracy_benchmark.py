"""benchmarks/accuracy.py --quick: the so3krates part runs end to end; peers without a venv are
reported (status, the venv path and the command that creates it), never dropped or installed here."""

from __future__ import annotations

import json
import math
import stat
import sys

import numpy as np
import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import _peers  # noqa: E402
import accuracy  # noqa: E402


def test_quick_accuracy_benchmark_so3krates_and_missing_peers(tmp_path, capsys):
    venvs = tmp_path / "no_venvs"  # empty: every peer venv is missing
    out = tmp_path / "accuracy_quick.json"
    rc = accuracy.main(["--quick", "--budget-min", "0.2", "--peer-venvs", str(venvs), "--workdir",
                        str(tmp_path / "work"), "--out", str(out), "--no-progress"])
    assert rc == 0
    assert not venvs.exists()  # nothing was installed
    doc = json.loads(out.read_text())
    rows = {r["model"]: r for r in doc["results"]}
    assert list(rows) == ["so3krates", "mace", "torchmd-net"]
    # the split the benchmark wrote: disjoint index files over the 60 quick frames
    idx = {k: np.loadtxt(tmp_path / "work" / "split" / f"{k}.txt", dtype=int, ndmin=1) for k in ("train", "valid", "test")}
    assert sum(len(v) for v in idx.values()) == doc["frames_used"] == 60
    assert len(set(np.concatenate(list(idx.values())).tolist())) == 60
    assert doc["split_counts"] == {k: len(v) for k, v in idx.items()}
    r = rows["so3krates"]
    assert r["status"] == "ok", r
    assert r["steps"] > 5 and r["parameters"] > 1000
    assert 12.0 <= r["train_time_s"] < 12.0 + 10.0  # 0.2 min of CPU time, stopped by the budget
    assert r["stopped_by"] == "time_budget"
    t = r["test"]
    assert t["num_frames"] == len(idx["test"])
    for key in ("energy_mae", "energy_per_atom_mae", "forces_mae", "forces_rmse"):
        assert math.isfinite(t[key]) and t[key] > 0, key
    assert t["forces_rmse"] >= t["forces_mae"]
    assert set(t["per_element"]) <= {"H", "C", "N", "O", "S"}
    for peer in ("mace", "torchmd-net"):
        p = rows[peer]
        assert p["status"] == "venv missing", p
        assert str(venvs / peer) in p["error"]
        assert "--install-peers" in p["fix"] and peer in p["fix"]
    text = capsys.readouterr().out
    assert "| so3krates |" in text and "venv missing" in text
    # --resume reuses the finished so3krates result (same parameters); --merge keeps the other rows
    rc = accuracy.main(["--quick", "--budget-min", "0.2", "--models", "so3krates", "--resume", "--merge",
                        "--peer-venvs", str(venvs), "--workdir", str(tmp_path / "work"), "--out", str(out),
                        "--no-progress"])
    assert rc == 0
    again = {r["model"]: r for r in json.loads(out.read_text())["results"]}
    assert list(again) == ["so3krates", "mace", "torchmd-net"]
    assert again["so3krates"]["reused"] and again["so3krates"]["test"] == r["test"]
    assert again["mace"]["status"] == "venv missing"


def test_peer_status_reports_a_broken_venv(tmp_path):
    py = tmp_path / "mace" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named mace' >&2\nexit 1\n")
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    st = _peers.peer_status("mace", tmp_path)
    assert st["status"] == "broken" and "No module named mace" in st["error"]
    assert _peers.peer_status("torchmd-net", tmp_path)["status"] == "missing"
    with pytest.raises(ValueError, match="known peers"):
        _peers.peer_status("schnetpack", tmp_path)
