"""``so3krates train``: fit a So3krates model to energies, forces (and stress) from a YAML config.

Units: Å, eV, eV/Å, eV/Å³. Entry point :func:`train_main`: read the config (config.py, where every
key and its default is listed), read and split the data (splits.py), precompute neighbour lists
(neighbor_lists.py), build the model (model_init.py), normalise it (normalization.py), run the
:class:`Trainer` loop, report (report.py).

Outputs in ``run_dir``: ``config.yaml`` (resolved), ``last.ckpt``, ``best.ckpt``, ``metrics.csv``,
``learning_curve.png``, ``parity_energy.png``, ``parity_forces.png``, ``test_metrics.json``.

Checkpoints (``potential/checkpoint.py`` format, ``torch.save`` dict): ``format``, ``version``,
``config`` (So3kratesConfig dict), ``state_dict`` (raw weights), ``ema_state_dict`` (EMA weights,
what ``model_from_checkpoint`` loads by default), ``species``, ``normalization``
(``energy_shifts`` {Z: eV}, ``force_scale`` eV/Å — already inside the weights, informational),
``train_config``, ``optimizer``, ``scheduler``, ``ema``, ``step``, ``epoch``, ``best_valid_loss``,
``bad_evals``, ``rng``, ``finished``, ``elapsed_s``, ``steps_per_epoch``, ``total_steps``,
``train_running``, ``budget_used_s``, ``stopped_by``. ``--resume`` restarts from ``last.ckpt`` and
continues the same step sequence (same batches, learning rates, EMA), so N steps straight equal
N/2 + N/2 resumed.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from .batch import BatchLoader
from .config import DTYPES, load_config
from .evaluate import evaluate_frames, make_eval_model
from .frames import Frame, element_species
from .loss import accumulate, loss_and_metrics, needs_stress, predict, summarise
from .metrics_csv import append_row, truncate_after
from .model_init import build_model, model_source
from .neighbor_lists import attach_model_neighbors
from .normalization import normalize
from .optim import EMA, make_lr_lambda, make_optimizer
from .report import final_evaluation, plot_learning_curve
from .rng import rng_state, seed_everything, set_rng_state
from .splits import load_splits
from .time_budget import TimeBudget

__all__ = ["train_main", "Trainer"]


class Trainer:
    """One invocation of a run: the model, its optimiser state and the loop's counters.

    ``Trainer(cfg, splits, model, device, init_payload, resume_payload)`` normalises the model (new
    runs), sets up optimizer, schedule, EMA and time budget, and restores them from the resumed
    ``last.ckpt``; :meth:`run` trains until the run is finished or this invocation's stop;
    :meth:`finish` writes ``last.ckpt``, prints the outcome and reports."""

    def __init__(self, cfg: Dict[str, Any], splits: Dict[str, List[Frame]], model: torch.nn.Module, device: str,
                 init_payload: Optional[Dict[str, Any]] = None, resume_payload: Optional[Dict[str, Any]] = None):
        self.cfg, self.t, self.splits, self.device = cfg, cfg["training"], splits, device
        self.progress = bool(self.t.get("progress", True))
        self.dtype, self.eval_dtype = DTYPES[self.t["dtype"]], DTYPES[self.t["eval_dtype"]]
        self.run_dir = Path(cfg["run_dir"])
        self.last_path, self.best_path = self.run_dir / "last.ckpt", self.run_dir / "best.ckpt"
        self.csv_path = self.run_dir / "metrics.csv"
        self.model = self._prepare_model(model, init_payload, resume_payload)
        self._setup_optimisation(resume_payload)
        if resume_payload is not None:
            self._restore(resume_payload)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.eval_model = make_eval_model(self.model, self.eval_dtype, device)
        stop_after = self.t.get("stop_after_steps")
        self.stop_at = min(self.total_steps, self.step + int(stop_after)) if stop_after else self.total_steps

    # ------------------------------------------------------------------ setup
    def _prepare_model(self, model, init_payload, resume_payload) -> torch.nn.Module:
        """Normalisation (fitted for new and fine-tuned runs), dtype, device, train mode."""
        self.normalization: Dict[str, Any] = {"energy_shifts": None, "force_scale": None}
        if init_payload is not None:
            self.normalization = dict(init_payload.get("normalization") or self.normalization)
        if resume_payload is None:
            self.normalization = normalize(model, self.cfg["normalization"], self.splits["train"],
                                           init_payload is not None, self.device, self.progress, self.normalization)
        model = model.to(device=self.device, dtype=self.dtype)
        model.train()
        mcfg = model.config
        species = [int(z) for z in (mcfg.species or element_species(self.splits["train"]))]
        n_params = sum(p.numel() for p in model.parameters())
        print(f"[train] model: {n_params} parameters, species {species}, cutoff {mcfg.cutoff} Å, "
              f"{self.t['dtype']} training / {self.t['eval_dtype']} evaluation on {self.device}")
        return model

    def _setup_optimisation(self, resume_payload) -> None:
        t = self.t
        seed = int(self.cfg.get("seed") or 0)
        self.loader = BatchLoader(self.splits["train"], int(t["batch_size"]), shuffle=True, seed=seed, dtype=self.dtype)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = int(t["epochs"]) * self.steps_per_epoch
        if t.get("max_steps"):
            self.total_steps = min(self.total_steps, int(t["max_steps"]))
        self.optimizer = make_optimizer(self.model, t)
        used = float(resume_payload.get("budget_used_s", 0.0)) if resume_payload else 0.0
        self.budget = TimeBudget(t.get("time_budget_s"), t.get("time_budget_clock", "wall"), used)
        time_fraction = self.budget.fraction if self.budget.seconds else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           make_lr_lambda(t, self.total_steps, time_fraction))
        self.ema = EMA(self.model, float(t["ema_decay"])) if t.get("ema_decay") else None
        self.weights = dict(t["loss_weights"])
        self.use_stress = needs_stress(self.weights, self.splits["train"])
        self.eval_every = int(t["eval_every"]) if t.get("eval_every") else self.steps_per_epoch
        self.patience = int(t["patience"]) if t.get("patience") else None
        self.step, self.best_loss, self.bad_evals, self.finished = 0, math.inf, 0, False
        self.stopped_early, self.stopped_by, self.elapsed0 = False, None, 0.0
        # running training statistics since the last validation (kept across --resume)
        self.running: Dict[str, Any] = {"acc": {}, "loss_sum": 0.0, "n": 0}

    def _restore(self, payload: Dict[str, Any]) -> None:
        """Continue the run of ``last.ckpt``: weights, optimiser, schedule, EMA, counters, RNG."""
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.ema is not None and payload.get("ema"):
            self.ema.load_state_dict(payload["ema"])
        self.step = int(payload["step"])
        self.best_loss = float(payload.get("best_valid_loss", math.inf))
        self.bad_evals = int(payload.get("bad_evals", 0))
        prev_stop = self.stopped_by = payload.get("stopped_by")
        if prev_stop == "time_budget":  # a larger time_budget_s continues the run
            self.finished = self.budget.spent()
        elif prev_stop == "early_stopping":
            self.finished = True
        else:
            self.finished = bool(payload.get("finished", False)) and self.step >= self.total_steps
        self.normalization = payload.get("normalization", self.normalization)
        set_rng_state(payload["rng"])
        truncate_after(self.csv_path, self.step)
        print(f"[train] resumed {self.run_dir} at step {self.step} (epoch {self.step // self.steps_per_epoch})")
        self.elapsed0 = float(payload.get("elapsed_s", 0.0))
        if payload.get("train_running"):
            self.running = copy.deepcopy(payload["train_running"])

    # ------------------------------------------------------------------ checkpoints and validation
    def inference_state(self) -> Dict[str, torch.Tensor]:
        """The weights used for validation, ``best.ckpt`` and export (EMA when on)."""
        if self.ema is not None:
            return self.ema.model_state_dict(self.model)
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def save(self, path: Path, *, is_finished: bool) -> None:
        save_checkpoint(
            path, self.model,
            ema_state_dict=self.inference_state() if self.ema is not None else None,
            normalization=self.normalization,
            train_config=self.cfg,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            step=self.step,
            epoch=self.step // self.steps_per_epoch,
            best_valid_loss=self.best_loss,
            bad_evals=self.bad_evals,
            rng=rng_state(),
            finished=is_finished,
            elapsed_s=time.perf_counter() - self.t_start,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            train_running=self.running,
            budget_used_s=self.budget.used(),
            stopped_by=self.stopped_by,
        )

    def validate(self) -> Dict[str, Any]:
        """One ``metrics.csv`` row: training statistics since the last validation and the errors on
        the validation set (EMA weights, ``eval_dtype``); saves ``best.ckpt`` on improvement."""
        t, run = self.t, self.running
        row: Dict[str, Any] = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                               "lr": self.optimizer.param_groups[0]["lr"],
                               "time_s": round(time.perf_counter() - self.t_start, 3)}
        if run["n"]:
            row["train_loss"] = run["loss_sum"] / run["n"]
            row.update(summarise(run["acc"], "train"))
        if self.budget.seconds is not None:
            row["budget_used_s"] = round(self.budget.used(), 3)
        if self.splits["valid"]:
            self.eval_model.load_state_dict(self.inference_state())
            res = evaluate_frames(self.eval_model, self.splits["valid"], int(t["valid_batch_size"]), self.eval_dtype,
                                  self.device, self.weights, t["energy_loss"], compute_stress=self.use_stress,
                                  progress=self.progress, desc="validate")
            row.update({f"valid_{k}": v for k, v in res.items()})
            score = res["loss"]
        else:
            score = row.get("train_loss", math.inf)
        if score < self.best_loss:
            self.best_loss, self.bad_evals = score, 0
            self.save(self.best_path, is_finished=False)
        else:
            self.bad_evals += 1
        row["best_valid_loss"] = self.best_loss
        append_row(self.csv_path, row)
        return row

    # ------------------------------------------------------------------ the loop
    def train_step(self, batch) -> float:
        """One optimizer step on ``batch``; returns its loss."""
        batch = batch.to(self.device, self.dtype)
        self.optimizer.zero_grad(set_to_none=True)
        pred = predict(self.model, batch, compute_forces=True, compute_stress=self.use_stress, create_graph=True)
        loss, stats = loss_and_metrics(pred, batch, self.weights, self.t["energy_loss"])
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {float(loss.detach())} at step {self.step}; lower training.lr or check the data")
        loss.backward()
        if self.t.get("gradient_clip"):
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.t["gradient_clip"]))
        self.optimizer.step()
        self.budget.sample()  # the learning rate below and this step's stop decision see one clock reading
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        value = float(loss.detach())
        self.running["loss_sum"] += value * batch.num_graphs
        self.running["n"] += batch.num_graphs
        accumulate(self.running["acc"], stats)
        return value

    def _after_step(self, epoch_bar) -> bool:
        """Validate and checkpoint when due; True when the run stops here (patience or time budget)."""
        out_of_time = self.budget.spent()
        if not (self.step % self.eval_every == 0 or self.step == self.total_steps or out_of_time):
            return False
        row = self.validate()
        self.running.update(acc={}, loss_sum=0.0, n=0)
        epoch_bar.set_postfix(valid=f"{row.get('valid_loss', row.get('train_loss', float('nan'))):.4g}", refresh=False)
        if self.patience is not None and self.bad_evals >= self.patience:
            self.stopped_early, self.stopped_by = True, "early_stopping"
            return True
        if out_of_time:
            self.stopped_early, self.stopped_by = True, "time_budget"
            return True
        self.save(self.last_path, is_finished=self.step >= self.total_steps)
        return False

    def _run_epoch(self, epoch: int, epoch_bar) -> bool:
        """The rest of ``epoch`` (from the current step); True when the loop ends."""
        start = self.step - epoch * self.steps_per_epoch
        n_batches = min(self.steps_per_epoch, self.stop_at - epoch * self.steps_per_epoch)
        bar = tqdm(self.loader.epoch(epoch, start), total=n_batches, initial=start, desc=f"epoch {epoch}",
                   disable=not self.progress, leave=False)
        for batch in bar:
            loss = self.train_step(batch)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            if self._after_step(epoch_bar) or self.step >= self.stop_at:
                break
        bar.close()
        return self.stopped_early or self.step >= self.stop_at

    def run(self) -> None:
        """Train until the run is finished, stopped early, out of time, or at ``stop_after_steps``."""
        self.t_start = time.perf_counter() - self.elapsed0
        if self.finished or self.step >= self.stop_at:
            return
        self.budget.start()
        self.stopped_by = None
        spe = self.steps_per_epoch
        first_epoch, n_epochs = self.step // spe, (self.total_steps + spe - 1) // spe
        epoch_bar = tqdm(range(first_epoch, n_epochs), desc="epochs", disable=not self.progress, initial=first_epoch,
                         total=n_epochs)
        for epoch in epoch_bar:
            if self._run_epoch(epoch, epoch_bar):
                break
        epoch_bar.close()
        self.budget.stop()  # the budget counts the loop only

    def finish(self, config_path: Optional[str]) -> None:
        """Write ``last.ckpt``, print how the run ended, plot, and test a finished run."""
        t = self.t
        if self.stopped_by is None and self.step >= self.total_steps:
            self.stopped_by = "max_steps" if t.get("max_steps") and self.total_steps == int(t["max_steps"]) else "epochs"
        self.finished = self.finished or self.stopped_early or self.step >= self.total_steps
        self.save(self.last_path, is_finished=self.finished)
        if self.stopped_by == "early_stopping" and self.stopped_early:
            print(f"[train] early stopping at step {self.step}: no improvement in {self.patience} validations")
        if self.stopped_by == "time_budget" and self.stopped_early:
            print(f"[train] time budget used up at step {self.step}: {self.budget.used():.1f} s of "
                  f"{self.budget.seconds:.1f} s ({t.get('time_budget_clock', 'wall')} clock)")
        print(f"[train] step {self.step}/{self.total_steps}; checkpoints in {self.run_dir}")
        if not self.finished:
            print(f"[train] stopped after training.stop_after_steps; continue with `so3krates train "
                  f"{config_path or 'CONFIG'} --resume`")
        plot_learning_curve(self.run_dir)
        if self.finished:
            ckpt = self.best_path if self.best_path.exists() else self.last_path
            final_evaluation(self.run_dir, ckpt, self.splits, t, self.device, self.eval_dtype, self.use_stress,
                             self.progress)


# --------------------------------------------------------------------------------------------
# train_main
# --------------------------------------------------------------------------------------------
def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("training.device is cuda but no GPU is visible; use device: cpu or auto")
    return name


def _open_run(cfg: Dict[str, Any], resume: bool) -> Optional[Dict[str, Any]]:
    """Check and create ``run_dir``; with ``resume`` the ``last.ckpt`` payload (whose config sections
    win over the YAML's), else None (an old ``metrics.csv`` is removed)."""
    run_dir = Path(cfg["run_dir"])
    last_path, csv_path = run_dir / "last.ckpt", run_dir / "metrics.csv"
    payload = None
    if resume:
        if not last_path.exists():
            raise FileNotFoundError(f"--resume: {last_path} does not exist; start the run without --resume")
        payload = load_checkpoint(last_path)
        saved = payload.get("train_config") or {}
        for section in ("model", "data", "normalization", "init_from", "seed"):
            if saved.get(section) != cfg.get(section):
                print(f"[train] warning: config section '{section}' differs from the run being resumed; "
                      "using the checkpoint's")
                cfg[section] = saved.get(section)
        if payload.get("finished"):
            print(f"[train] {run_dir} already finished (step {payload['step']}); nothing to resume. "
                  "Raise training.epochs/max_steps to train further.")
    elif last_path.exists() and not cfg["training"].get("overwrite"):
        raise ValueError(f"{run_dir} already holds a run (last.ckpt); pass --resume to continue it, "
                         "choose another run_dir, or set training.overwrite: true")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume and csv_path.exists():
        csv_path.unlink()
    return payload


def _prepare_data(cfg: Dict[str, Any], resume_payload, progress: bool):
    """Split frames with the neighbour lists of the run's model, and the ``init_from`` checkpoint."""
    t0 = time.perf_counter()
    splits = load_splits(cfg["data"])
    model_config, init_payload = model_source(cfg, resume_payload)
    for name in ("train", "valid", "test"):
        if splits[name]:
            attach_model_neighbors(splits[name], model_config, progress, desc=f"neighbours ({name})")
    print(f"[train] data: {len(splits['train'])} train / {len(splits['valid'])} valid / {len(splits['test'])} test "
          f"frames ({time.perf_counter() - t0:.1f} s)")
    return splits, init_payload


def train_main(config_path: Optional[str], resume: bool = False, overrides: Optional[Dict[str, Any]] = None) -> Path:
    """Train (or with ``resume`` continue) the run described by a YAML config; returns the run folder.

    ``overrides`` patch the config (nested dict or dotted keys, e.g. ``{"training.max_steps": 50}``).
    """
    cfg = load_config(config_path, overrides)
    progress = bool(cfg["training"].get("progress", True))
    device = _resolve_device(str(cfg["training"].get("device", "cpu")))
    resume_payload = _open_run(cfg, resume)
    seed = int(cfg.get("seed") or 0)
    seed_everything(seed)
    splits, init_payload = _prepare_data(cfg, resume_payload, progress)
    seed_everything(seed)  # the model's initial weights do not depend on the data
    model = build_model(cfg, splits, resume_payload, init_payload)
    trainer = Trainer(cfg, splits, model, device, init_payload, resume_payload)
    trainer.run()
    trainer.finish(config_path)
    return trainer.run_dir
