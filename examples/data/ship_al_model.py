"""Ship the active-learning loop's model as the project's model (issue #15).

    python examples/data/active_learning.py ship          # the round whose final check passed
    python examples/data/active_learning.py ship --round 5 --allow-unchecked --to /tmp/models --results /tmp/res

Writes into ``--to`` (default ``examples/models``):

- ``so3krates_demo.ckpt``: the round's compact checkpoint (EMA weights, no optimizer state);
- ``so3krates_demo.pt``: its float32 TorchScript export (``so3krates export --dtype float32``, no fused
  kernels: OpenMM's TorchForce and LAMMPS load it without the so3krates package);
- ``config_shipped.yaml`` + ``shipped_split/{train,valid,test}.txt``: the recipe (the round's training
  config, data paths relative to it, its split as index files): ``so3krates train
  examples/models/config_shipped.yaml`` trains the model again;
- ``shipped_metrics.csv``, ``shipped_learning_curve.png``, ``shipped_parity_{energy,forces}.png``,
  ``shipped_test_metrics.json``: the training report;
- ``shipped_whole_box.json``: what the model was trained on, force MAE on the held-out periodic boxes and
  the cluster test frames, the training time, the final check (1-ps temperature means of the judged
  window, NVE drift) and the commands;

and the final check's traces (``whole_box_final_rXX.png/.json``, redrawn from the round's MD logs) into
``--results`` (default ``examples/gems/results``). Refuses a round whose final check has not passed
unless ``--allow-unchecked`` (then ``shipped_whole_box.json`` says so). Units: Å, eV, eV/Å, K, ps.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

REPORT_FILES = {  # training run file -> shipped name
    "run/metrics.csv": "shipped_metrics.csv",
    "run/learning_curve.png": "shipped_learning_curve.png",
    "run/parity_energy.png": "shipped_parity_energy.png",
    "run/parity_forces.png": "shipped_parity_forces.png",
    "run/test_metrics.json": "shipped_test_metrics.json",
}
SPLITS = ("train", "valid", "test")
CONFIG_HEADER = """\
# The project's shipped model (examples/models/so3krates_demo.{{ckpt,pt}}), written by
# `python examples/data/active_learning.py ship` from round {round} of the active-learning loop
# ({mode}, {al_frames} whole-box frames from active learning on top of the base data).
# A local So3krates trained on the project's own GFN2-xTB data (examples/data/: peptides in gas phase
# and with water shells, capped amino acids, villin cut-outs, periodic water and solvated-peptide
# boxes; H C N O S).
# Split: index files in shipped_split/ (the base data's random 85/5/10 % split, seed 7, plus every
# 8th active-learning frame for validation, the rest for training). Reproduce (2 CPU cores, ~{minutes:.0f} min;
# docs/training.md):
#   so3krates train examples/models/config_shipped.yaml
#   so3krates export runs/shipped/best.ckpt -o examples/models/so3krates_demo.pt --dtype float32
# Units: Å, eV, eV/Å.
"""


def pick_round(state: dict, r=None, allow_unchecked: bool = False) -> int:
    """The round to ship: ``r`` or the loop's converged round; refused unless its final check passed."""
    if r is None:
        if not state.get("converged"):
            raise SystemExit("ship: the loop has not converged (no from-scratch model has passed the final check: "
                             "50 ps NVT in two seeds + 5 ps NVE); run `active_learning.py run` until it does, or name "
                             "a round with --round N --allow-unchecked")
        r = int(state["final_round"])
    rounds = state.get("rounds", [])
    if not 0 <= r < len(rounds) or "model" not in rounds[r]:
        have = [R["round"] for R in rounds if "model" in R]
        raise SystemExit(f"ship: round {r} has no trained model; rounds with one: {have}")
    passed = bool(rounds[r]["stages"].get("final", {}).get("passed"))
    if not passed and not allow_unchecked:
        raise SystemExit(f"ship: round {r}'s model has not passed the final check; add --allow-unchecked to ship it "
                         "anyway (shipped_whole_box.json will say so)")
    return r


def ship(state: dict, r: int, to: Path, results: Path) -> dict:
    """Copy, export and describe round ``r``'s model into ``to``; returns the ``shipped_whole_box.json`` content."""
    from active_learning import ROOT, SO3KRATES, count_frames, log, run_cmd, write_json
    R = state["rounds"][r]
    ckpt = Path(R["model"]["ckpt"])
    train = ckpt.parent / "train"
    needed = [ckpt, train / "train.yaml"] + [train / "split" / f"{k}.txt" for k in SPLITS] + \
             [train / f for f in REPORT_FILES]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise SystemExit(f"ship: round {r}'s files are missing: {missing}; they are written by its training run "
                         "(and carried with the newest model by --carry): ship on the machine that holds the round")
    to = Path(to).resolve()
    to.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ckpt, to / "so3krates_demo.ckpt")
    run_cmd([SO3KRATES, "export", to / "so3krates_demo.ckpt", "-o", to / "so3krates_demo.pt", "--dtype", "float32"],
            to / "ship_export.log")
    (to / "ship_export.log").unlink(missing_ok=True)
    for src, name in REPORT_FILES.items():
        shutil.copy2(train / src, to / name)
    (to / "shipped_split").mkdir(exist_ok=True)
    counts = {}
    for k in SPLITS:
        shutil.copy2(train / "split" / f"{k}.txt", to / "shipped_split" / f"{k}.txt")
        counts[k] = sum(1 for line in open(to / "shipped_split" / f"{k}.txt") if line.strip())
    cfg = yaml.safe_load((train / "train.yaml").read_text())
    data_files = [Path(p) for p in cfg["data"]["path"]]
    outside = [str(p) for p in data_files if ROOT not in p.resolve().parents or ROOT / "build" in p.resolve().parents]
    if outside:  # (the loop ran with --al-data elsewhere): the recipe needs them committed
        log(f"ship: WARNING: round {r} was trained on files outside the repository: {outside}; copy them into "
            "examples/data/ and edit data.path of config_shipped.yaml, or the recipe does not reproduce elsewhere")
    train_min = R["model"]["train_cost"]["wall_s"] / 60.0
    write_config(cfg, to, r, R["model"], train_min)
    final = R["stages"].get("final")
    traces = write_final_traces(final, ckpt.parent / "final", results, r) if final else None
    ev = R["stages"].get("evaluate", {})
    summary = {
        "model": "so3krates_demo.ckpt / so3krates_demo.pt (float32)",
        "round": r, "trained": R["model"]["mode"], "al_frames": R["model"]["al_frames"],
        "training_wall_min": round(train_min, 1),
        "data": [{"file": os.path.relpath(p, to), "frames": count_frames(p)} for p in data_files],
        "split_frames": counts,
        "data_outside_repository": outside,
        "heldout_boxes_force_mae_eV_A": {k: round(v["force_mae"], 4) for k, v in ev.get("heldout_boxes", {}).items()
                                         if isinstance(v, dict) and "force_mae" in v},
        "test_clusters_force_mae_eV_A": {k: round(v["force_mae"], 4) for k, v in ev.get("test_clusters", {}).items()
                                         if isinstance(v, dict) and "force_mae" in v},
        "final_check_passed": bool(final and final.get("passed")),
        "final_check": final_summary(final),
        "traces": traces,
        "commands": {"train": "so3krates train examples/models/config_shipped.yaml",
                     "export": "so3krates export runs/shipped/best.ckpt -o examples/models/so3krates_demo.pt "
                               "--dtype float32",
                     "final check": "OMP_NUM_THREADS=1 python examples/data/active_learning.py final --model "
                                    "examples/models/so3krates_demo.pt --md-workers 2"},
    }
    write_json(to / "shipped_whole_box.json", summary)
    return summary


def write_config(cfg: dict, to: Path, r: int, model: dict, minutes: float) -> None:
    """The round's training config as the shipped recipe: paths relative to ``to``, no run-local keys."""
    cfg = dict(cfg)
    cfg["run_dir"] = "runs/shipped"
    cfg.pop("init_from", None)
    cfg["data"] = dict(cfg["data"])
    cfg["data"]["path"] = [os.path.relpath(p, to) for p in cfg["data"]["path"]]
    cfg["data"]["index_files"] = {k: f"shipped_split/{k}.txt" for k in SPLITS}
    cfg["training"] = {k: v for k, v in cfg["training"].items() if k not in ("overwrite", "max_steps")}
    head = CONFIG_HEADER.format(round=r, mode="trained from scratch" if model["mode"] == "scratch" else "fine-tuned",
                                al_frames=model["al_frames"], minutes=max(minutes, 1.0))
    (to / "config_shipped.yaml").write_text(head + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


def final_summary(final) -> dict | None:
    if not final:
        return None
    out = {"passed": bool(final.get("passed"))}
    for k, v in final.items():
        if k.startswith("nvt_s") and isinstance(v, dict):
            out[k] = {x: v.get(x) for x in ("duration_ps", "stable_ps", "failed", "T_mean_K", "T_std_K",
                                            "T_last_mean_K", "T_last_block_ps", "T_last_block_means_K",
                                            "T_last_blocks_within", "T_last_1ps_means_range_K", "ms_per_step_wall")}
    if isinstance(final.get("nve"), dict):
        out["nve"] = {x: final["nve"].get(x) for x in ("duration_ps", "failed", "nve_drift_meV_per_atom_ps")}
    return out


def write_final_traces(final: dict, final_dir: Path, results: Path, r: int) -> str | None:
    """Redraw the final check's traces from its MD logs into ``results`` (they also exist where the loop
    wrote them; the loop may have run with its results redirected)."""
    from active_learning import read_json
    from md_traces import write_traces
    labels = {f"NVT seed {k[5:]}": final_dir / k for k in sorted(final) if k.startswith("nvt_s")
              and (final_dir / k / "log.csv").exists()}
    if (final_dir / "nve" / "log.csv").exists():
        labels["NVE"] = final_dir / "nve"
    if not labels:
        return None
    prefix = Path(results).resolve() / f"whole_box_final_r{r:02d}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    loop_traces = read_json(str(final.get("traces", "")) + ".json", {}) or {}  # the commands of the runs
    commands = {k: v.get("command") for k, v in loop_traces.get("runs", {}).items() if v.get("command")}
    write_traces(labels, prefix, title=f"whole-box MD, 684 atoms, round {r} model: final check "
                 + ("passed" if final.get("passed") else "failed"), commands=commands or None)
    from active_learning import ROOT
    return str(prefix.relative_to(ROOT)) if ROOT in prefix.parents else str(prefix)


