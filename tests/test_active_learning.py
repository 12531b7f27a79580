"""Fast checks of examples/data/active_learning.py (the whole-box active-learning loop) and of the
shipped model on the held-out sets it reports (``so3krates evaluate`` on a few frames).

No long MD here: frame selection, committee spread, splits, the chemistry check, the stability
statistics and the status table on synthetic data; one 20-step MD run of the small box with resume;
the whole loop end to end in a tiny configuration (one 20-step exploration of the ~300-atom box,
one frame labelled with periodic GFN2-xTB, a 2-step fine-tune from the shipped weights, evaluation,
stopped after a stage and resumed, restored on a "new machine" from the carry and shipped into a
temporary folder); a label stage in progress carried; and the shipped model evaluated on a few held-out periodic boxes
and cluster test frames (~2 min in all on one thread).
Units: Å, eV, eV/Å, K, ps.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
sys.path.insert(0, str(DATA))
import active_learning as al  # noqa: E402

SO3KRATES = str(Path(sys.executable).parent / "so3krates")
MODEL = ROOT / "examples" / "models" / "so3krates_demo.pt"
HELDOUT = DATA / "whole_box_heldout.extxyz"
AL_DATA = DATA / "whole_box_al.extxyz"


def test_select_frames_gap_must_and_limit():
    cands = [{"frame_id": f"f{s}", "step": s, "score": sc}
             for s, sc in [(50, 0.1), (100, 0.9), (150, 0.8), (200, 0.2), (400, 0.7), (450, 0.95), (600, 0.05)]]
    # highest score first, never two within the gap: 450 (0.95), 100 (0.9); all others are too close
    assert al.select_frames(cands, 3, 200) == ["f450", "f100"]
    assert al.select_frames(cands, 3, 100) == ["f450", "f100", "f200"]
    # failure frames come first and are kept even when close to each other
    assert al.select_frames(cands, 4, 200, must=["f600", "f450"])[:2] == ["f600", "f450"]
    assert len(al.select_frames(cands, 1, 0, must=["f600", "f450"])) == 1
    assert al.select_frames([], 3, 10) == []


def test_force_spread_and_heuristic_score():
    f = np.random.default_rng(0).normal(size=(1, 5, 3))
    assert np.allclose(al.force_spread(np.repeat(f, 3, 0)), 0.0)
    g = np.zeros((2, 2, 3))
    g[1, 0, 0] = 2.0  # member 2 differs by 2 eV/Å on atom 0: spread sqrt((1² + 1²)/2) = 1
    assert np.allclose(al.force_spread(g), [1.0, 0.0])
    assert al.heuristic_score({"max_force_change": "1.5", "temperature_K": "320"}, 300.0) == pytest.approx(3.5)
    assert al.heuristic_score({"max_force_change": "nan", "temperature_K": "300"}, 300.0) == 0.0


def test_splits_keep_the_shipped_test_set():
    base = al.base_split()
    assert [len(base[k]) for k in ("train", "valid", "test")] == [2490, 146, 293]
    assert int((base["test"] < al.N_CLUSTER_FRAMES).sum()) == 277  # the cluster test frames of docs/training.md
    ext = al.extended_split(20)
    assert np.array_equal(ext["test"], base["test"])
    new_valid = ext["valid"][ext["valid"] >= 2930]
    assert list(new_valid) == [2937, 2945]
    allidx = np.concatenate([ext[k] for k in ("train", "valid", "test")])
    assert len(allidx) == len(set(allidx.tolist())) == 2929 + 20


def test_geometry_check_flags_broken_chemistry():
    import ase.io
    top, _ = al.build_box("small")  # the built box has clashes across the faces: MD minimises first
    frame = ase.io.read(str(DATA / "water_boxes_al.extxyz"), 0)  # the same box after MD (same atom order)
    assert frame.get_chemical_symbols() == [a.element.symbol for a in top.atoms()]
    xyz = frame.positions
    check = al.GeometryCheck(top, frame.cell.array)
    assert check(xyz) is None
    water_o = [a.index for a in top.atoms() if a.residue.name == "HOH" and a.element.symbol == "O"]
    o, h = water_o[0], water_o[0] + 1
    bad = xyz.copy()
    bad[h] = bad[o] + (bad[h] - bad[o]) * 1.6 / np.linalg.norm(bad[h] - bad[o])
    assert "X-H bond" in check(bad)
    bad = xyz.copy()
    o2 = water_o[5]
    bad[o2] = bad[o] + np.array([0.9, 0.0, 0.0])
    assert check(bad) is not None
    bad = xyz.copy()
    bad[0, 0] = np.nan
    assert check(bad) == "non-finite positions"


def test_stability_statistics():
    t = np.arange(1, 501) * 0.1  # 50 ps, a row every 0.1 ps
    T = 300 + 5 * np.sin(t)
    rows = [{"time_ps": x, "temperature_K": y, "total_eV": -100.0} for x, y in zip(t, T)]
    s = al.analyse_log(rows, 300.0, "check", 684)
    assert s["last_window_ps"] == [10.0, 50.0]
    assert s["T_last_block_ps"] == 5.0 and len(s["T_last_block_means_K"]) == 8 and s["T_last_blocks_within"]
    T2 = T.copy()
    T2[t > 45] += 30  # heats up in the last 5 ps
    rows2 = [dict(r, temperature_K=y) for r, y in zip(rows, T2)]
    assert not al.analyse_log(rows2, 300.0, "check", 684)["T_last_blocks_within"]
    # thermal noise: one 1-ps mean ~17 K low (σ of 1-ps means of this box ~5 K) is not a failure, 5 ps 20 K low is
    T3 = T.copy()
    T3[(t > 20) & (t <= 21)] -= 20
    s3 = al.analyse_log([dict(r, temperature_K=y) for r, y in zip(rows, T3)], 300.0, "check", 684)
    assert s3["T_last_blocks_within"] and s3["T_last_1ps_means_range_K"][0] < 285
    T3[(t > 20) & (t <= 25)] = T[(t > 20) & (t <= 25)] - 20
    assert not al.analyse_log([dict(r, temperature_K=y) for r, y in zip(rows, T3)], 300.0, "check", 684)[
        "T_last_blocks_within"]
    nve = [{"time_ps": x, "temperature_K": 300.0, "total_eV": -100.0 + 0.684 * x} for x in t[:50]]
    assert al.analyse_log(nve, 300.0, "nve", 684)["nve_drift_meV_per_atom_ps"] == pytest.approx(1.0)


def test_status_table_from_state():
    state = {"rounds": [
        {"round": 0, "stages": {
            "evaluate": {"heldout_boxes": {"all": {"force_mae": 0.2}, "heldout_classical_main": {"force_mae": 0.1},
                                           "heldout_ml_main": {"force_mae": 0.3}},
                         "test_clusters": {"all": {"force_mae": 0.095}}},
            "explore": {"a": {"box": "main", "temperature": 300.0, "ps": 3, "stable_ps": 1.2, "failed": True}},
            "select": {"selected": 6, "by": "committee"}, "label": {"labelled": 6}},
         "costs": {"train": {"cpu_s": 600}}}]}
    table = al.status_table(state)
    assert "| 0 | start (shipped) | 0 | 0.200 / 0.100 / 0.300 | 0.095 | main 300 K: 1.2/3 ✗ | 1.2 | 6 / 6 / – (committee)" in table


def _loop(tmp_path, wd, carry):
    import argparse
    p = argparse.ArgumentParser()
    al.loop_args(p)
    return al.Loop(p.parse_args(["--workdir", str(wd), "--carry", str(carry), "--status-md", str(tmp_path / "s.md"),
                                 "--base-data", str(HELDOUT)]))


def test_md_run_resumes(tmp_path):
    """20 steps of the small box with the shipped model, cut off after a checkpoint, carried to a new
    machine (``--carry``: a final-check run, an empty workdir) and resumed there.
    (30 L-BFGS iterations first: the freshly built box has clashes across its faces.)"""
    wd, wd2, carry = tmp_path / "wd", tmp_path / "wd2", tmp_path / "carry"
    out = wd / "round_03" / "final" / "nvt_s1"
    args = [sys.executable, str(DATA / "active_learning.py"), "md", "--model", str(MODEL), "--box", "small",
            "--temperature", "350", "--seed", "3", "--minimize", "30", "--equil-steps", "0", "--log-every", "2",
            "--pool-every", "2", "--checkpoint-every", "10"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(args + ["--ps", "0.01", "--out", str(out)], check=True, env=env, capture_output=True)
    first = (out / "log.csv").read_text()
    # pretend the run was cut off: not finished, checkpoint at step 10
    (out / "summary.json").unlink()  # a run in progress has no summary and no end state yet
    (out / "final_state.xml").unlink()
    # carry it (state: round 3 waiting for its final check) and restore it into an empty workdir
    loop = _loop(tmp_path, wd, carry)
    loop.state = {"rounds": [{"round": r, "stages": {}, "costs": {}} for r in range(4)], "converged": False}
    loop.carry_save()
    carried = carry / "md" / "round_03" / "final" / "nvt_s1"
    assert sorted(f.name for f in carried.iterdir()) == ["checkpoint.chk", "checkpoint.json", "checkpoint_state.xml",
                                                          "log.csv", "pool.extxyz.gz", "pool_index.csv"]
    # the pool travels thinned: every 4th pooled frame and the last two (steps 2, 8, 10 of 2, 4, ..., 10)
    assert [int(r["step"]) for r in al.read_csv(carried / "pool_index.csv")] == [2, 8, 10]
    assert al.count_frames(out / "pool.extxyz") == 5
    _loop(tmp_path, wd2, carry)  # restores
    out = wd2 / "round_03" / "final" / "nvt_s1"
    assert (out / "checkpoint.chk").read_bytes() == (carried / "checkpoint.chk").read_bytes()
    import ase.io
    assert [a.info["step"] for a in ase.io.read(str(out / "pool.extxyz"), ":")] == [2, 8, 10]
    # an OpenMM build that cannot read the checkpoint: the portable state takes over
    other = tmp_path / "other" / "nvt_s1"
    shutil.copytree(out, other)
    (other / "checkpoint.chk").write_bytes(b"not a checkpoint of this build")
    p = subprocess.run(args + ["--ps", "0.02", "--out", str(other)], check=True, env=env, capture_output=True, text=True)
    assert "checkpoint does not load here" in p.stdout and "resuming at step 10/20" in p.stdout
    assert json.loads((other / "summary.json").read_text())["steps"] == 20
    # then ask for 20 steps on the new machine: it resumes at step 10
    p = subprocess.run(args + ["--ps", "0.02", "--out", str(out)], check=True, env=env, capture_output=True, text=True)
    assert "resuming at step 10/20" in p.stdout and "does not load" not in p.stdout
    rows = al.read_log(out / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(2, 21, 2))
    assert (out / "log.csv").read_text().startswith(first)
    pool = al.read_csv(out / "pool_index.csv")
    assert [int(r["step"]) for r in pool] == [2, 8, 10, 12, 14, 16, 18, 20]
    s = json.loads((out / "summary.json").read_text())
    assert s["finished"] and not s["failed"] and s["steps"] == 20
    # its cost counts the first machine's part too (kept in the checkpoint)
    before = json.loads((carried / "checkpoint.json").read_text())
    assert before["step"] == 10 and before["cpu_s"] > 0
    assert s["cpu_s_total"] > before["cpu_s"] + 0.5 * s["ms_per_step_cpu"] * 10 / 1000
    # NVE from the end state (the stop criterion's drift run): 10 velocity-Verlet steps
    nve = tmp_path / "nve"
    subprocess.run([sys.executable, str(DATA / "active_learning.py"), "md", "--model", str(MODEL), "--box", "small",
                    "--mode", "nve", "--start-state", str(out / "final_state.xml"), "--ps", "0.01", "--log-every", "2",
                    "--pool-every", "0", "--out", str(nve)], check=True, env=env, capture_output=True)
    s = json.loads((nve / "summary.json").read_text())
    assert s["mode"] == "nve" and s["steps"] == 10 and not s["failed"]
    assert np.isfinite(s["nve_drift_meV_per_atom_ps"]) and s["nve_total_energy_range_eV"] < 1.0


def test_final_check_plumbing(tmp_path):
    """The stop criterion's driver on the 684-atom box, shrunk to 10 steps: it must run the NVT seed,
    judge it (10 steps hold no complete 1-ps temperature block, so it fails as "temperature"), skip the
    NVE part and exit 1."""
    out = tmp_path / "final"
    p = subprocess.run([sys.executable, str(DATA / "active_learning.py"), "final", "--model", str(MODEL),
                        "--final-ps", "0.01", "--final-seeds", "1", "--out", str(out)],
                       env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads((out / "final_check.json").read_text())
    assert res["passed"] is False and "nve" not in res
    s = res["nvt_s1"]
    assert s["atoms"] == 684 and s["mode"] == "check" and s["steps"] == 10 and not s["failed"]
    assert s["T_last_block_means_K"] == [] and s["T_last_blocks_within"] is False
    sel = res["runs_for_selection"]["final_nvt_s1"]
    assert sel["failed"] and sel["failure"]["reason"] == "temperature" and sel["box"] == "main"
    # the traces (PNG + JSON, the stability evidence) with the command of each run
    traces = json.loads((out / "traces.json").read_text())
    assert list(traces["runs"]) == ["NVT seed 1"] and (out / "traces.png").stat().st_size > 10000
    run = traces["runs"]["NVT seed 1"]
    assert "--seed 1" in run["command"] and run["summary"]["steps"] == 10
    assert len(run["series"]["time_ps"]) == len(run["series"]["temperature_K"]) >= 1


def _evaluate(model, data, indices, tmp_path):
    idx = tmp_path / f"idx_{Path(data).stem}.txt"
    np.savetxt(idx, indices, fmt="%d")
    pred = tmp_path / f"pred_{Path(data).stem}.extxyz"
    subprocess.run([SO3KRATES, "evaluate", str(model), str(data), "--indices", str(idx), "-o", str(pred)],
                   check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    import ase.io
    refs = ase.io.read(str(data), ":")
    err, n = 0.0, 0
    for i, p in zip(indices, ase.io.read(str(pred), ":")):
        d = p.get_forces() - refs[i].get_forces()
        err += np.abs(d).sum()
        n += d.size
    return err / n


def test_shipped_model_on_heldout_boxes_and_clusters(tmp_path):
    """The fast path of the reported numbers: a few held-out periodic boxes (frames of MD runs no
    training set uses) and a few cluster test frames, through ``so3krates evaluate``."""
    import ase.io
    frames = ase.io.read(str(HELDOUT), ":")
    assert all(a.pbc.all() for a in frames)
    subsets = [a.info["subset"] for a in frames]
    pick = [subsets.index(s) for s in sorted(set(subsets))]  # one frame of each kind of run
    mae_box = _evaluate(MODEL, HELDOUT, pick, tmp_path)
    test = al.base_split()["test"]
    mae_clusters = _evaluate(MODEL, DATA / "so3krates_demo.extxyz", test[test < al.N_CLUSTER_FRAMES][:24], tmp_path)
    assert np.isfinite(mae_box) and np.isfinite(mae_clusters)
    assert mae_box < BOX_MAE_BOUND, mae_box
    assert mae_clusters < CLUSTER_MAE_BOUND, mae_clusters


# bounds with margin over the measured values of the shipped model on these frames
BOX_MAE_BOUND = 0.30
CLUSTER_MAE_BOUND = 0.15


def _frames(path, idx):
    import ase.io
    return [ase.io.read(str(path), i) for i in idx]


def test_heldout_file_is_small_and_labelled():
    import ase.io
    assert HELDOUT.stat().st_size < 3e6  # a few MB at most: it is committed
    frames = ase.io.read(str(HELDOUT), ":")
    assert len(frames) >= 10
    ids = [a.info["frame_id"] for a in frames]
    assert len(set(ids)) == len(ids) and all(i.startswith("heldout/") for i in ids)
    for a in frames:
        assert a.pbc.all() and len(a) == 684
        e, f = a.get_potential_energy(), a.get_forces()
        assert np.isfinite(e) and np.isfinite(f).all() and f.shape == (684, 3)


@pytest.mark.skipif(importlib.util.find_spec("tblite") is None, reason="tblite (GFN2-xTB) not installed")
def test_loop_end_to_end_tiny_with_resume(tmp_path):
    """``active_learning.py run`` for real, shrunk: round 0 evaluates the shipped model, explores the
    ~300-atom box for 20 steps, trains a 1-member committee (2 steps from scratch), picks 1 frame by the
    committee + model force spread, labels it with periodic GFN2-xTB and appends
    it; the run is stopped there (``--stop-after label``) and started again, when it must skip the
    finished stages, fine-tune round 1's model (2 steps from the shipped weights) and evaluate it."""
    import ase.io
    wd, al_data, status_md = tmp_path / "al", tmp_path / "al.extxyz", tmp_path / "status.md"
    base = tmp_path / "base.extxyz"
    ase.io.write(str(base), _frames(DATA / "so3krates_demo.extxyz", range(0, 400, 20)), format="extxyz")
    heldout = tmp_path / "heldout.extxyz"
    ase.io.write(str(heldout), _frames(HELDOUT, [0]), format="extxyz")
    repo_status = al.STATUS_MD.read_text()
    args = [sys.executable, str(DATA / "active_learning.py"), "run", "--workdir", str(wd), "--al-data", str(al_data),
            "--heldout", str(heldout), "--base-data", str(base), "--status-md", str(status_md), "--max-rounds", "2",
            "--explore-ps", "0.02", "--explore-runs", "small:350", "--md-minimize", "30", "--md-equil-steps", "0",
            "--md-log-every", "5", "--md-pool-every", "10", "--select-after-ps", "0", "--frames-small", "1",
            "--min-gap-fs", "5", "--committee", "1", "--committee-epochs", "1", "--finetune-epochs", "1", "--max-steps", "2",
            "--eval-cluster-frames", "2", "--carry", str(tmp_path / "carry")]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(*extra):
        p = subprocess.run(args + list(extra), env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        return json.loads((wd / "state.json").read_text())

    # ---- first invocation: round 0 up to the labels, then "interrupted"
    st = run("--stop-after", "label")
    assert len(st["rounds"]) == 1 and not st["converged"]
    r0 = st["rounds"][0]
    assert set(r0["stages"]) == {"evaluate", "explore", "committee", "select", "label"}
    ev = r0["stages"]["evaluate"]
    assert ev["heldout_boxes"]["all"]["frames"] == 1 and ev["test_clusters"]["all"]["frames"] == 2
    assert 0 < ev["heldout_boxes"]["all"]["force_mae"] < 1.0
    (name, ex), = r0["stages"]["explore"].items()
    assert name == "r00_small350_s1" and ex["box"] == "small" and ex["temperature"] == 350.0
    summary = wd / "round_00" / "md" / name / "summary.json"
    md = json.loads(summary.read_text())
    assert md["finished"] and md["steps"] == (md["failure"]["step"] if md["failed"] else 20)
    assert r0["stages"]["select"]["selected"] == 1 and r0["stages"]["select"]["by"] == "committee"
    scores = json.loads((summary.parent / "committee.json").read_text())
    pooled = [r["frame_id"] for r in al.read_csv(summary.parent / "pool_index.csv")]
    assert sorted(scores) == sorted(pooled) and len(pooled) >= 1
    assert all(np.isfinite(v["max"]) and v["max"] > 0 for v in scores.values())
    picked = r0["stages"]["select"]["per_run"][name]["picked_scores"]
    assert picked == [round(max(v["max"] for v in scores.values()), 3)] or md["failed"]
    assert r0["stages"]["label"] == {"labelled": 1, "failed": 0, "added": 1, "al_frames_total": 1}
    (frame,) = ase.io.read(str(al_data), ":")
    assert frame.info["frame_id"].startswith(f"al/{name}/f") and frame.pbc.all() and len(frame) == md["atoms"]
    assert np.isfinite(frame.get_potential_energy()) and np.isfinite(frame.get_forces()).all()
    table = status_md.read_text()
    assert "| 0 | start (shipped) | 0 |" in table and "| 1 / 1 / 1 (committee) |" in table
    assert al.STATUS_MD.read_text() == repo_status  # --status-md: the repository's file is left alone
    md_mtime, label_log = summary.stat().st_mtime, (wd / "round_00" / "label.log").read_text()

    # ---- same command again: finished stages are skipped, round 1 fine-tunes and is evaluated
    st = run("--stop-after", "evaluate")
    r0b, r1 = st["rounds"]
    assert {k: r0b["stages"][k] for k in r0["stages"]} == r0["stages"]
    assert r0b["stages"]["decision"] == {"next": "finetune"}
    assert summary.stat().st_mtime == md_mtime  # the MD was not run again
    assert (wd / "round_00" / "label.log").read_text() == label_log  # nor the labeller
    assert len(ase.io.read(str(al_data), ":")) == 1
    assert set(r1["stages"]) == {"train", "evaluate"}
    assert r1["model"]["mode"] == "finetune" and r1["model"]["al_frames"] == 1
    cfg = (wd / "round_01" / "train" / "train.yaml").read_text()
    assert str(ROOT / "examples" / "models" / "so3krates_demo.ckpt") in cfg and str(al_data) in cfg
    assert Path(r1["model"]["pt"]).exists()
    assert np.isfinite(r1["stages"]["evaluate"]["heldout_boxes"]["all"]["force_mae"])
    table = status_md.read_text()
    assert "| 1 | finetune | 1 |" in table

    # ---- the carry: state with portable paths + the newest checkpoints; a new machine (empty workdir) resumes
    carried = json.loads((tmp_path / "carry" / "state.json").read_text())
    assert str(wd) not in json.dumps(carried) and "<workdir>/round_01/model.pt" in json.dumps(carried)
    assert sorted(carried["carried"]) == ["round_00/committee_0/model.ckpt", "round_01/model.ckpt"]
    assert all((tmp_path / "carry" / r).is_file() for r in carried["carried"])
    shutil.rmtree(wd)
    st2 = run("--stop-after", "explore")
    assert st2["restored"][0]["dropped"] == []
    assert {k: st2["rounds"][0]["stages"][k] for k in r0["stages"]} == r0["stages"]
    assert st2["rounds"][1]["stages"]["evaluate"] == r1["stages"]["evaluate"]  # not evaluated again
    assert Path(r1["model"]["pt"]).exists() and "explore" in st2["rounds"][1]["stages"]  # re-exported, then explored
    assert "Restored from `carry/`" in status_md.read_text()
    # the exploration (frames not yet labelled) travels with its thinned pool: a third machine keeps it
    (name1,) = st2["rounds"][1]["stages"]["explore"]
    assert (tmp_path / "carry" / "md" / "round_01" / "md" / name1 / "pool.extxyz.gz").is_file()
    third = _loop(tmp_path, tmp_path / "al3", tmp_path / "carry")
    assert "explore" in third.state["rounds"][1]["stages"] and third.state["restored"][-1]["dropped"] == []
    assert al.count_frames(tmp_path / "al3" / "round_01" / "md" / name1 / "pool.extxyz") >= 1

    # ---- the newest model's training report travels with it (ship needs it on the machine that converges)
    reports = carried["carried_reports"]
    assert "round_01/train/run/metrics.csv" in reports and "round_01/train/split/test.txt" in reports
    carried_cfg = (tmp_path / "carry" / "round_01" / "train" / "train.yaml").read_text()
    assert str(wd) not in carried_cfg and "<workdir>/round_01/train/run" in carried_cfg
    assert str(wd / "round_01" / "train" / "run") in (wd / "round_01" / "train" / "train.yaml").read_text()
    assert (wd / "round_01" / "train" / "run" / "parity_forces.png").is_file()

    # ---- ship: refused without a passed final check; with --allow-unchecked the restored round 1 is shipped
    ship = [sys.executable, str(DATA / "active_learning.py"), "ship", "--workdir", str(wd), "--carry", "",
            "--to", str(tmp_path / "models"), "--results", str(tmp_path / "res")]
    p = subprocess.run(ship, env=env, capture_output=True, text=True)
    assert p.returncode != 0 and "has not converged" in p.stderr
    p = subprocess.run(ship + ["--round", "1"], env=env, capture_output=True, text=True)
    assert p.returncode != 0 and "has not passed the final check" in p.stderr
    p = subprocess.run(ship + ["--round", "1", "--allow-unchecked"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    _check_shipped(tmp_path / "models", st2["rounds"][1])

    # ---- the status command prints the same table
    p = subprocess.run([sys.executable, str(DATA / "active_learning.py"), "status", "--workdir", str(wd)],
                       env=env, capture_output=True, text=True, check=True)
    rows = [line for line in p.stdout.splitlines() if line[:4] in ("| 0 ", "| 1 ")]
    table = status_md.read_text()
    assert len(rows) == 2 and all(row in table for row in rows)


def _check_shipped(models: Path, R: dict):
    """What ``active_learning.py ship`` wrote: the round's checkpoint, its float32 export (same energies and
    forces), the recipe (loads, its split files hold the round's frames), the report and the summary."""
    import torch
    from so3krates.export.exporter import potential_from_checkpoint
    from so3krates.export.loader import load_exported
    from so3krates.potential.train.config import load_config
    summary = json.loads((models / "shipped_whole_box.json").read_text())
    assert summary["round"] == R["round"] and summary["trained"] == R["model"]["mode"]
    assert summary["al_frames"] == R["model"]["al_frames"] and summary["final_check_passed"] is False
    ev = R["stages"]["evaluate"]
    assert summary["heldout_boxes_force_mae_eV_A"]["all"] == round(ev["heldout_boxes"]["all"]["force_mae"], 4)
    assert summary["test_clusters_force_mae_eV_A"]["all"] == round(ev["test_clusters"]["all"]["force_mae"], 4)
    for name in ("shipped_metrics.csv", "shipped_learning_curve.png", "shipped_parity_energy.png",
                 "shipped_parity_forces.png", "shipped_test_metrics.json"):
        assert (models / name).stat().st_size > 0, name
    assert (models / "so3krates_demo.ckpt").read_bytes() == Path(R["model"]["ckpt"]).read_bytes()
    cfg = load_config(str(models / "config_shipped.yaml"))
    assert cfg["run_dir"] == "runs/shipped" and not cfg.get("init_from")
    assert [Path(f).resolve() for f in cfg["data"]["path"]] == \
        [Path(f).resolve() for f in yaml_load(Path(R["model"]["config"]))["data"]["path"]]
    n = {k: len(np.loadtxt(cfg["data"]["index_files"][k], dtype=int, ndmin=1)) for k in ("train", "valid", "test")}
    assert n == summary["split_frames"]
    outside = [Path(f).resolve() for f in summary["data_outside_repository"]]
    assert outside == [Path(f).resolve() for f in cfg["data"]["path"]]  # (the test's data lie in tmp)
    module, _ = load_exported(models / "so3krates_demo.pt")
    eager = potential_from_checkpoint(str(models / "so3krates_demo.ckpt"), "float32")
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.09, 0.0, 0.0], [-0.36, 1.03, 0.0], [-0.36, -0.51, 0.89]])
    z, cell, pbc = torch.tensor([6, 1, 1, 8]), torch.zeros(3, 3), torch.tensor([False] * 3)
    a, b = (m(pos, z, cell, pbc, 0.0, 0.0, True, False) for m in (eager, module))
    assert abs(float(a["energy"] - b["energy"])) <= 1e-5 * max(1.0, abs(float(a["energy"])))
    assert float((a["forces"] - b["forces"]).abs().max()) <= 1e-4


def yaml_load(path: Path):
    import yaml
    return yaml.safe_load(path.read_text())


def test_label_stage_in_progress_travels(tmp_path):
    """``carry`` during the label stage (selected frames, some labelled): those files travel gzipped, and a new
    machine keeps the selection and lets label_xtb.py continue after the frames labelled so far."""
    import ase.io
    wd, wd2, carry = tmp_path / "wd", tmp_path / "wd2", tmp_path / "carry"
    loop = _loop(tmp_path, wd, carry)
    rd = loop.rdir(0)
    ase.io.write(str(rd / "selected.extxyz"), _frames(HELDOUT, [0, 1]), format="extxyz")
    ase.io.write(str(rd / "labelled.extxyz"), _frames(HELDOUT, [0]), format="extxyz")
    loop.state = {"rounds": [{"round": 0, "stages": {"explore": {}, "select": {"selected": 2}}, "costs": {}}],
                  "converged": False}
    loop.carry_save()
    assert sorted(f.name for f in (carry / "md" / "round_00").iterdir()) == ["labelled.extxyz.gz",
                                                                            "selected.extxyz.gz"]
    again = _loop(tmp_path, wd2, carry)  # restores
    assert again.state["restored"][-1]["dropped"] == [] and "select" in again.state["rounds"][0]["stages"]
    for f in ("selected.extxyz", "labelled.extxyz"):
        assert (wd2 / "round_00" / f).read_bytes() == (rd / f).read_bytes()
    # once labelled, the round's files stay home
    loop.state["rounds"][0]["stages"]["label"] = {"labelled": 2}
    loop.carry_save()
    assert not (carry / "md").exists() or not any((carry / "md").rglob("*.extxyz.gz"))


def test_committee_scores_zero_for_identical_models(tmp_path):
    """Two copies of one model agree: the spread is 0 on every frame; results are cached by frame id."""
    import ase.io
    pool = tmp_path / "pool.extxyz"
    frames = _frames(DATA / "water_boxes_al.extxyz", [0])
    frames[0].info["frame_id"] = "x/f000010"
    ase.io.write(str(pool), frames, format="extxyz")
    out = tmp_path / "committee.json"
    s = al.committee_scores(pool, [MODEL, MODEL], out)
    assert list(s) == ["x/f000010"] and s["x/f000010"]["max"] == pytest.approx(0.0, abs=1e-6)
    assert json.loads(out.read_text()) == s


def test_md_traces_png_and_json(tmp_path):
    """examples/data/md_traces.py on synthetic runs: 1-ps block means of an NVT run and the fitted drift of
    an NVE run (total energy rising 0.5 meV/atom/ps) in the JSON, a PNG beside it."""
    import md_traces
    t = np.arange(1, 3001) * 0.001
    rng = np.random.default_rng(0)
    nvt, nve = tmp_path / "nvt", tmp_path / "nve"
    for d, temp, tot in ((nvt, 300 + 5 * np.sin(t) + rng.normal(0, 3, t.size), -100 + 0 * t),
                         (nve, 300 + 0 * t, -100 + 0.5e-3 * 684 * t)):
        d.mkdir()
        al.write_log(d / "log.csv", [dict(step=i + 1, time_ps=x, temperature_K=y, potential_eV=0, kinetic_eV=0,
                                          total_eV=e, geometry="") for i, (x, y, e) in enumerate(zip(t, temp, tot))])
    (nvt / "summary.json").write_text(json.dumps({"atoms": 684, "mode": "check", "failed": False, "duration_ps": 3.0}))
    (nve / "summary.json").write_text(json.dumps({"atoms": 684, "mode": "nve", "failed": False, "duration_ps": 3.0,
                                                   "nve_drift_meV_per_atom_ps": 0.5}))
    out = md_traces.write_traces({"NVT": nvt, "NVE": nve}, tmp_path / "traces", commands={"NVT": "md --seed 1"})
    assert (tmp_path / "traces.png").stat().st_size > 10000
    saved = json.loads((tmp_path / "traces.json").read_text())
    blocks = saved["runs"]["NVT"]["T_block_means_K"]
    assert [b[0] for b in blocks] == [1.0, 2.0, 3.0] and all(abs(b[1] - 300) < 6 for b in blocks)
    assert saved["runs"]["NVT"]["command"] == "md --seed 1" and len(saved["runs"]["NVE"]["series"]["total_eV"]) == 3000
    assert out["runs"]["NVE"]["summary"]["nve_drift_meV_per_atom_ps"] == 0.5


def test_thermostat_noise_control_runs(tmp_path):
    """The control behind the final check's 5-ps judgement (exact classical forces, the loop's integrator),
    shrunk to 2 ps of the ~300-atom box: it reports the mean temperature and the 1-ps block scatter."""
    out = tmp_path / "noise.json"
    subprocess.run([sys.executable, str(DATA / "thermostat_noise.py"), "--box", "small", "--ps", "2", "--equil-ps",
                    "0.2", "--json", str(out)], check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    res = json.loads(out.read_text())
    assert res["atoms"] == 300 and res["dt_fs"] == 1.0
    assert 200 < res["mean_K"] < 400 and 0 < res["instantaneous_std_K"] < 40
    b = res["blocks"]["1ps"]
    assert b["n"] == 2 and b["min_K"] <= b["max_K"] and b["std_K"] >= 0
