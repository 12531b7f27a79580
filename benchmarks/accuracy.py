#!/usr/bin/env python
"""Accuracy: so3krates vs peer MLIPs trained on the same data with the same time budget.

    python benchmarks/accuracy.py                     # so3krates, MACE, TensorNet: 10 min of one core each
    python benchmarks/accuracy.py --budget-min 5 --models so3krates,mace
    python benchmarks/accuracy.py --split trajectory  # held-out trajectory ends instead of random frames
    python benchmarks/accuracy.py --install-peers     # first create missing peer venvs (pip, minutes)
    python benchmarks/accuracy.py --quick             # CI-sized: 60 frames, 20 s, tiny models

Data: ``examples/data/so3krates_demo.extxyz`` (the project's GFN2-xTB set: peptides, capped amino
acids, villin cut-outs; H C N O S; charges 0/±1). The benchmark writes the split as index files
(``<workdir>/split/{train,valid,test}.txt``) and every model reads exactly those frames. ``random``
(default) is the shipped model's split (85/5/10 %, seed 7), so the so3krates row is comparable to
``examples/models/shipped_test_metrics.json``; ``trajectory`` is
:func:`so3krates.potential.train.splits.split_by_trajectory` (the end of every trajectory held out).

Models (each trained from scratch in its own process, one thread):

``so3krates``    ``so3krates train`` with the shipped model's architecture (examples/models/config_shipped.yaml)
``mace``         mace-torch 0.3.16 ScaleShiftMACE (36x0e+36x1o, L=3, correlation 3, 2 layers, charge embedding)
``torchmd-net``  torchmd-net 3.1.0 TensorNet (48 channels, 2 layers, 32 rbf, total charge q)

The peers run ``benchmarks/_accuracy_worker.py`` with the python of their own venv
(``benchmarks/.peer_venvs/<name>``, see ``benchmarks/_peers.py``); a missing or broken venv is
reported in the table and the JSON with the command that creates it (``--install-peers``), never
dropped. Sizes are chosen for comparable parameter counts (~0.1 M); every model gets the same
batch size, loss (``4·mean((ΔE/N)²) + 20·mean(ΔF²)``, eV and eV/Å), AMSGrad, 200 warm-up steps, a
cosine decay that ends with the budget, gradient clipping 10, EMA 0.995 of the weights, a validation
after every epoch keeping the best EMA weights, and the same per-element energy shifts (least
squares on the training split) and force scale (RMS force). Learning rates are each code's own
default for such models: so3krates 2e-3 (shipped config), MACE 1e-2, TensorNet 1e-3.

Budget: ``--budget-min`` minutes per model of training loop (steps + validations), measured on
``--clock cpu`` (process CPU time: on a shared machine other jobs do not eat into a model's
budget; with one thread it equals wall time on an idle core) or ``--clock wall``. Test errors are
computed in float64 with the best EMA weights. Results: ``benchmarks/results/accuracy.json``
(``accuracy_quick.json`` with --quick) and a Markdown table printed at the end.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DATA = ROOT / "examples" / "data" / "so3krates_demo.extxyz"
SHIPPED_CONFIG = ROOT / "examples" / "models" / "config_shipped.yaml"
WORKER = HERE / "_accuracy_worker.py"
sys.path.insert(0, str(HERE))

import _measure  # noqa: E402
import _peers  # noqa: E402

MODELS = ("so3krates", "mace", "torchmd-net")

# shared training settings (every model); per-model learning rates below
TRAINING = dict(batch_size=8, valid_batch_size=32, loss_weights={"energy": 4.0, "forces": 20.0}, warmup_steps=200,
                min_lr_ratio=0.02, gradient_clip=10.0, ema_decay=0.995)
QUICK_TRAINING = dict(TRAINING, batch_size=4, warmup_steps=5, ema_decay=0.9)
LR = {"so3krates": 2.0e-3, "mace": 1.0e-2, "torchmd-net": 1.0e-3}

ARCH = {
    "mace": dict(hidden_irreps="36x0e+36x1o", max_ell=3, correlation=3, num_interactions=2, num_bessel=8,
                 radial_MLP=[64, 64, 64], MLP_irreps="16x0e", cutoff=5.0, charge_emb_dim=16),
    "torchmd-net": dict(embedding_dimension=48, num_layers=2, num_rbf=32, cutoff=5.0, max_num_neighbors=128),
}
QUICK_ARCH = {
    "so3krates": dict(num_features=16, num_layers=1, degrees=[1, 2], num_heads=2, cutoff=5.0,
                      num_radial_basis_fn=8, energy_regression_dim=16, use_charge_embed=True),
    "mace": dict(hidden_irreps="8x0e+8x1o", max_ell=1, correlation=2, num_interactions=1, num_bessel=4,
                 radial_MLP=[16], MLP_irreps="8x0e", cutoff=5.0, charge_emb_dim=4),
    "torchmd-net": dict(embedding_dimension=16, num_layers=1, num_rbf=8, cutoff=5.0, max_num_neighbors=128),
}


# ============================================================================ split and shared data
def make_split(args, workdir: Path) -> Dict[str, Any]:
    """Write ``split/{train,valid,test}.txt`` (indices into the data file the workers read)."""
    import ase.io
    import numpy as np

    from so3krates.potential.train.splits import split_by_trajectory, split_indices

    images = ase.io.read(str(args.data), ":")
    data_path = Path(args.data)
    if args.max_frames and args.max_frames < len(images):  # quick: an evenly spread subset, own file
        sel = np.linspace(0, len(images) - 1, args.max_frames).round().astype(int)
        images = [images[i] for i in sel]
        data_path = workdir / "data.extxyz"
        ase.io.write(str(data_path), images, format="extxyz")
    if args.split == "trajectory":
        ids = [a.info.get("frame_id") for a in images]
        if any(i is None for i in ids):
            raise ValueError(f"--split trajectory needs info['frame_id'] on every frame of {args.data}")
        idx = split_by_trajectory(ids)
        idx.pop("dropped")
    else:
        idx = split_indices(len(images), train=0.85, valid=0.05, test=0.10, seed=7)
    split_dir = workdir / "split"
    split_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("train", "valid", "test"):
        files[name] = str(split_dir / f"{name}.txt")
        np.savetxt(files[name], idx[name], fmt="%d")
    return dict(data=str(data_path), split_files=files, counts={k: int(len(v)) for k, v in idx.items()},
                images=images, idx=idx)


def normalisation(images, idx) -> Dict[str, Any]:
    """Per-element energy shifts (least squares on the training split) and RMS force, eV and eV/Å."""
    from so3krates.potential.train.frames import frames_from_atoms
    from so3krates.potential.train.normalization import fit_energy_shifts, force_rms

    train = frames_from_atoms([images[i] for i in idx["train"]])
    species = sorted({int(z) for a in images for z in a.numbers})
    shifts = fit_energy_shifts(train, species)
    return dict(e0={str(z): v for z, v in shifts.items()}, force_rms=force_rms(train), species=species)


# ============================================================================ so3krates worker
def so3krates_config(params: Dict[str, Any]) -> Dict[str, Any]:
    import yaml

    t = params["training"]
    if params.get("arch"):
        model = dict(params["arch"])
    else:
        model = dict((yaml.safe_load(SHIPPED_CONFIG.read_text()) or {}).get("model") or {})
    model.setdefault("message_normalization", "avg_num_neighbors")
    return {
        "run_dir": params["run_dir"], "seed": int(params.get("seed", 0)), "model": model,
        "data": {"path": params["data"], "index_files": params["split_files"]},
        "normalization": {"energy_shifts": "fit", "force_scale": "fit"},
        "training": {
            "batch_size": t["batch_size"], "valid_batch_size": t["valid_batch_size"], "epochs": 100000,
            "loss_weights": {**t["loss_weights"], "stress": 0.0}, "energy_loss": "per_atom", "optimizer": "amsgrad",
            "lr": t["lr"], "warmup_steps": t["warmup_steps"], "lr_decay": "cosine", "min_lr_ratio": t["min_lr_ratio"],
            "gradient_clip": t["gradient_clip"], "ema_decay": t["ema_decay"], "time_budget_s": t["time_budget_s"],
            "time_budget_clock": t["clock"], "dtype": "float32", "eval_dtype": "float64", "device": "cpu",
            "progress": bool(params.get("progress")), "overwrite": True},
    }


def worker_so3krates(params_path: str, result_path: str) -> None:
    """Train so3krates with the trainer (``so3krates train``) and test best.ckpt on the test split."""
    import csv
    import resource

    import torch

    from so3krates.potential.checkpoint import load_checkpoint, model_from_checkpoint
    from so3krates.potential.train.evaluate import error_metrics, predict_frames
    from so3krates.potential.train.frames import read_frames
    from so3krates.potential.train.trainer import train_main

    params = json.loads(Path(params_path).read_text())
    torch.set_num_threads(int(params.get("threads", 1)))
    cfg = so3krates_config(params)
    run = train_main(None, overrides=cfg)
    last = load_checkpoint(run / "last.ckpt")
    frames = read_frames(params["data"])
    test_idx = [int(x) for x in Path(params["split_files"]["test"]).read_text().split()]
    test = [frames[i] for i in test_idx]
    preds = predict_frames(str(run / "best.ckpt"), test, batch_size=32, progress=False)
    model = model_from_checkpoint(run / "best.ckpt")
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    history = [dict(step=int(r["step"]), epoch=float(r["epoch"]), train_loss=float(r["train_loss"]),
                    valid_loss=float(r["valid_loss"]), budget_used_s=float(r.get("budget_used_s") or "nan"),
                    lr=float(r["lr"])) for r in rows]
    m = model.config
    res = dict(model="so3krates", status="ok", parameters=sum(p.numel() for p in model.parameters()),
               trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
               description=(f"So3krates F={m.num_features}, {m.num_layers} layers, degrees {list(m.degrees)}, "
                            f"{m.cutoff} Å, charge embedding {bool(m.use_charge_embed)}"),
               steps=int(last["step"]), epochs=round(int(last["step"]) / int(last["steps_per_epoch"]), 3),
               train_time_s=round(float(last["budget_used_s"]), 2), train_wall_s=round(float(last["elapsed_s"]), 2),
               clock=params["training"]["clock"], stopped_by=last.get("stopped_by"),
               best_valid_loss=float(last["best_valid_loss"]), history=history, eval_dtype="float64",
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, torch=torch.__version__,
               test=error_metrics(test, preds))
    Path(result_path).write_text(json.dumps(res, indent=1))


# ============================================================================ driver
def run_model(name: str, params: Dict[str, Any], workdir: Path, python: str, script: List[str],
              limits: Dict[str, float], progress: bool, resume: bool = False) -> Dict[str, Any]:
    """Run one worker process; stream its log to ``<workdir>/<name>.log``; show a budget bar.

    ``limits``: ``cpu_s`` (the worker's CPU time: budget + setup + test, independent of the load of
    a shared machine) and ``wall_s`` (a hang guard); the worker is killed past either. ``resume``: reuse
    ``<workdir>/<name>_result.json`` when ``<name>_params.json`` holds exactly these parameters."""
    from tqdm.auto import tqdm

    pfile, rfile, log = workdir / f"{name}_params.json", workdir / f"{name}_result.json", workdir / f"{name}.log"
    if resume and rfile.is_file() and pfile.is_file() and json.loads(pfile.read_text()) == params:
        res = json.loads(rfile.read_text())
        if res.get("status") == "ok":
            print(f"[accuracy] {name}: reusing {rfile} (same parameters; --resume)", flush=True)
            res["reused"] = True
            res.setdefault("log", str(log.relative_to(ROOT)) if log.is_relative_to(ROOT) else str(log))
            return res
    pfile.write_text(json.dumps(params, indent=1))
    if rfile.exists():
        rfile.unlink()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    budget = float(params["training"]["time_budget_s"])
    bar = tqdm(total=round(budget), desc=f"{name} ({params['training']['clock']} s of budget)", unit="s",
               disable=not progress, leave=True)

    def show(usage):
        bar.n = min(round(usage["cpu_s"] if params["training"]["clock"] == "cpu" else usage["wall_s"]), bar.total)
        bar.refresh()

    run = _measure.guarded_run([python, *script, str(pfile), str(rfile)], cwd=ROOT, env=env, log_path=log,
                               max_cpu_s=limits["cpu_s"], timeout_s=limits["wall_s"], poll_s=1.0, on_poll=show)
    bar.close()
    wall = run["wall_s"]
    tail = log.read_text().strip().splitlines()[-6:] if log.exists() else []
    if run["killed"]:
        return dict(model=name, status="timeout", error=f"worker ran {run['killed_reason']}; see {log}",
                    process_wall_s=wall)
    if run["returncode"] != 0 or not rfile.exists():
        err = next((l for l in reversed(tail) if l.strip()), "?")
        return dict(model=name, status="failed", error=f"exit {run['returncode']}: {err[-400:]} (log: {log})",
                    process_wall_s=wall)
    res = json.loads(rfile.read_text())
    res["process_wall_s"] = round(wall, 1)
    res["log"] = str(log.relative_to(ROOT)) if log.is_relative_to(ROOT) else str(log)
    return res


def fmt_table(doc: Dict[str, Any]) -> str:
    lines = [f"| model | params | steps | epochs | train time (s, {doc['clock']}) | E MAE (eV) | E MAE (meV/atom) | "
             "F MAE (eV/Å) | F RMSE (eV/Å) | status |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["results"]:
        if r.get("status") != "ok":
            msg = r.get("error", "") + (f"; fix: {r['fix']}" if r.get("fix") else "")
            lines.append(f"| {r['model']} | — | — | — | — | — | — | — | — | {r['status']}: {msg} |")
            continue
        t = r["test"]
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['steps']} | {r['epochs']:.1f} | {r['train_time_s']:.0f} | "
                     f"{t['energy_mae']:.3f} | {1e3 * t['energy_per_atom_mae']:.2f} | {t['forces_mae']:.4f} | "
                     f"{t['forces_rmse']:.4f} | ok |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized: 60 frames, 20 s budget, tiny models")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)} (default all)")
    ap.add_argument("--budget-min", type=float, default=None, help="training budget per model, minutes (10; quick 1/3)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="budget clock: process CPU time (default; fair on a shared machine) or wall time")
    ap.add_argument("--split", choices=["random", "trajectory"], default="random",
                    help="random: the shipped model's 85/5/10 split (seed 7); trajectory: held-out trajectory ends")
    ap.add_argument("--data", default=str(DATA), help="extxyz with energies/forces (default the demo data)")
    ap.add_argument("--max-frames", type=int, default=None, help="use an evenly spread subset (quick: 60)")
    ap.add_argument("--seed", type=int, default=0, help="model init and batch order seed")
    ap.add_argument("--peer-venvs", default=str(_peers.PEER_VENVS), help="folder of the peer venvs")
    ap.add_argument("--install-peers", action="store_true", help="create missing/broken peer venvs first (pip)")
    ap.add_argument("--workdir", default=None, help="runs, split files, logs (default build/accuracy[_quick])")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/accuracy[_quick].json)")
    ap.add_argument("--merge", action="store_true",
                    help="replace only the rows of the models run now in an existing --out JSON of the same "
                         "data, split, budget and clock (rerun one model); other rows are kept")
    ap.add_argument("--resume", action="store_true",
                    help="reuse a model's finished result in the workdir when its parameters are identical "
                         "(continue an interrupted benchmark)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)

    quick = args.quick
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = sorted(set(models) - set(MODELS))
    if bad:
        ap.error(f"unknown models {bad}; choose from {', '.join(MODELS)}")
    budget_s = 60.0 * (args.budget_min if args.budget_min is not None else (1.0 / 3.0 if quick else 10.0))
    if args.max_frames is None and quick:
        args.max_frames = 60
    tag = "_quick" if quick else ""
    workdir = Path(args.workdir or ROOT / "build" / f"accuracy{tag}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or RESULTS / f"accuracy{tag}.json")
    progress = not args.no_progress
    peer_venvs = Path(args.peer_venvs)

    split = make_split(args, workdir)
    norm = normalisation(split["images"], split["idx"])
    sha = hashlib.sha256(Path(args.data).read_bytes()).hexdigest()[:16]
    print(f"[accuracy] {args.data} (sha256 {sha}): {split['counts']} frames ({args.split} split, index files in "
          f"{workdir / 'split'}); budget {budget_s / 60:.2f} min of {args.clock} time per model; models {models}",
          flush=True)
    base_training = dict(QUICK_TRAINING if quick else TRAINING, time_budget_s=budget_s, clock=args.clock)
    results = []
    for name in models:
        params = dict(model=name, data=split["data"], split_files=split["split_files"], e0=norm["e0"],
                      force_rms=norm["force_rms"], seed=args.seed, threads=1, progress=False,
                      training=dict(base_training, lr=LR[name]),
                      arch=copy.deepcopy((QUICK_ARCH if quick else ARCH).get(name)), run_dir=str(workdir / name))
        # CPU limit: budget + setup/test allowance; wall limit only guards against hangs (a shared machine
        # can give a worker a small fraction of a core for a long time)
        limits = dict(cpu_s=budget_s * 1.2 + (300 if quick else 1200), wall_s=budget_s * 30 + 7200)
        if name == "so3krates":
            r = run_model(name, params, workdir, sys.executable, [str(Path(__file__).resolve()), "--worker", name],
                          limits, progress, args.resume)
        else:
            st = _peers.peer_status(name, peer_venvs)
            if st["status"] != "ok" and args.install_peers:
                _peers.ensure_peer(name, peer_venvs)
                st = _peers.peer_status(name, peer_venvs)
            if st["status"] != "ok":
                r = dict(model=name, status=f"venv {st['status']}", error=st["error"], fix=st["fix"], venv=st["venv"])
            else:
                r = run_model(name, params, workdir, st["python"], [str(WORKER)], limits, progress, args.resume)
                r["package"] = " ".join(_peers.PEERS[name])
        r["lr"] = LR[name]
        results.append(r)
        if r.get("status") == "ok":
            print(f"[accuracy] {name}: {r['parameters']:,} parameters, {r['steps']} steps in {r['train_time_s']:.0f} s; "
                  f"test force MAE {r['test']['forces_mae']:.4f} eV/Å, energy MAE {r['test']['energy_mae']:.4f} eV",
                  flush=True)
        else:
            print(f"[accuracy] {name}: {r['status']}: {r.get('error')}" + (f" — {r['fix']}" if r.get("fix") else ""),
                  flush=True)

    import torch

    doc = dict(benchmark="accuracy", quick=quick, data=str(Path(args.data).resolve().relative_to(ROOT))
               if Path(args.data).resolve().is_relative_to(ROOT) else str(args.data), data_sha256_16=sha,
               frames_used=len(split["images"]), split=args.split, split_counts=split["counts"],
               split_files={k: str(Path(v).relative_to(ROOT)) if Path(v).is_relative_to(ROOT) else v
                            for k, v in split["split_files"].items()},
               budget_s=budget_s, clock=args.clock, threads=1, training=base_training, learning_rates=LR,
               energy_shifts_eV=norm["e0"], force_rms_eV_per_A=norm["force_rms"],
               units={"energy": "eV", "energy_per_atom": "eV/atom", "forces": "eV/Å", "time": "s"},
               torch_main=torch.__version__, python=platform.python_version(), cpu_count=os.cpu_count(),
               load_average=os.getloadavg(), date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               results=results)
    if args.merge and out.is_file():
        old = json.loads(out.read_text())
        same = {k: (old.get(k), doc[k]) for k in ("data_sha256_16", "split", "split_counts", "budget_s", "clock", "quick")}
        differ = {k: v for k, v in same.items() if v[0] != v[1]}
        if differ:
            raise SystemExit(f"--merge: {out} was made with other settings {differ}; rerun all models instead")
        ran = {r["model"] for r in results}
        kept = [r for r in old["results"] if r["model"] not in ran]
        order = {m: k for k, m in enumerate(MODELS)}
        doc["results"] = sorted(kept + results, key=lambda r: order.get(r["model"], 99))
        doc["merged"] = sorted(set(old.get("merged", [])) | {f"{m} {doc['date_utc']}" for m in ran})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    table = fmt_table(doc)
    print(f"\naccuracy on the test split ({split['counts']['test']} frames), {budget_s / 60:.2f} min of {args.clock} "
          f"time per model, one thread:\n{table}\nwrote {out}")
    return 0 if all(r.get("status") == "ok" or r["model"] != "so3krates" for r in doc["results"]) else 1


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        if len(sys.argv) != 5 or sys.argv[2] != "so3krates":
            raise SystemExit("usage: accuracy.py --worker so3krates params.json result.json")
        worker_so3krates(sys.argv[3], sys.argv[4])
        sys.exit(0)
    sys.exit(main())
