"""``so3krates train``: fit a So3krates model to energies, forces (and stress) from a YAML config.

Units: Å, eV, eV/Å, eV/Å³. Entry point :func:`train_main`; the pieces (:func:`load_config`,
:func:`predict`, :func:`fit_energy_shifts`, :class:`EMA`, :func:`make_lr_lambda`) are public
for scripts and tests.

Config (YAML; every key optional except ``data.path``; defaults in :data:`DEFAULTS`)::

    run_dir: runs/demo          # output folder (relative to the working directory)
    seed: 0                     # model init, batch order (torch/numpy/python RNGs)
    init_from: null             # checkpoint (.ckpt, e.g. converted SO3LR) to fine-tune from;
                                # its model config wins over the `model:` section
    model: {...}                # So3kratesConfig fields (potential/config.py); `species` and
                                # `avg_num_neighbors` (for message_normalization avg_num_neighbors)
                                # are filled from the training set when absent
    data:
      path: data.extxyz         # extxyz / anything ASE reads / EFA-style npz (relative to the YAML);
                                # a list of files is read in order as one data set
      valid_path: null          # optional separate validation file (then no random valid split)
      test_path: null           # optional separate test file
      index: ":"                # ASE index string applied to `path`
      split: {train: 0.8, valid: 0.1, test: null, seed: 0}  # fractions (float) or counts (int);
                                # test null = the rest
      index_files: {train: null, valid: null, test: null}   # .txt/.npy/.json index lists (override split)
      energy_key: energy; forces_key: forces; stress_key: stress; charge_key: total_charge
    normalization:
      energy_shifts: auto       # auto (fit from scratch, fit_residual with init_from) | fit (per-element
                                # least squares of E_ref on the training set) | fit_residual (least
                                # squares of E_ref - E_model, added to the model's offsets) | keep | none
                                # | {Z or symbol: eV}
      force_scale: auto         # auto (fit from scratch, keep with init_from) | fit (RMS force component
                                # of the training set, eV/Å) | keep | none | float
    training:
      batch_size: 8; valid_batch_size: 32
      epochs: 100; max_steps: null          # stop at whichever comes first
      stop_after_steps: null    # stop this invocation after N more steps (job time limits); --resume continues
      time_budget_s: null       # stop the run (as finished) once the training loop (steps + validations) has
                                # used this many seconds; a cosine decay then runs over the budget
                                # (progress = max(step fraction, time fraction)); not bitwise reproducible
      time_budget_clock: wall   # wall | cpu (process CPU time of all threads: immune to other jobs on a
                                # shared machine; equals wall time for one thread on an idle core)
      loss_weights: {energy: 1.0, forces: 10.0, stress: 0.0}
      energy_loss: per_atom     # per_atom: MSE of (E_pred-E_ref)/N_atoms; total: MSE of E
      optimizer: amsgrad        # amsgrad | adam | adamw
      lr: 1.0e-3; weight_decay: 0.0; betas: [0.9, 0.999]
      warmup_steps: 0           # linear warm-up from 0
      lr_decay: exponential     # exponential (lr·rate^(step/decay_steps)) | cosine (to min_lr_ratio·lr
                                # at the last step) | none
      lr_decay_rate: 0.5; lr_decay_steps: 10000; min_lr_ratio: 0.01
      gradient_clip: 10.0       # max global gradient norm (null: off)
      ema_decay: 0.99           # EMA of weights used for validation, best.ckpt and export (null: off)
      eval_every: null          # validate every N steps (null: every epoch)
      patience: null            # early stopping after this many validations without improvement
      dtype: float32            # training precision
      eval_dtype: float64       # validation / test / parity plots precision
      device: cpu               # cpu | cuda | auto
      progress: true            # tqdm bars
      overwrite: false          # allow reusing a run_dir that already holds a run

Outputs in ``run_dir``: ``config.yaml`` (resolved), ``last.ckpt``, ``best.ckpt``, ``metrics.csv``,
``learning_curve.png``, ``parity_energy.png``, ``parity_forces.png``, ``test_metrics.json``.

Checkpoints (``potential/checkpoint.py`` format, ``torch.save`` dict): ``format``, ``version``,
``config`` (So3kratesConfig dict), ``state_dict`` (raw weights), ``ema_state_dict`` (EMA weights,
what :func:`model_from_checkpoint` loads by default), ``species``, ``normalization``
(``energy_shifts`` {Z: eV}, ``force_scale`` eV/Å — already inside the weights, informational),
``train_config``, ``optimizer``, ``scheduler``, ``ema``, ``step``, ``epoch``, ``best_valid_loss``,
``bad_evals``, ``rng``, ``finished``. ``--resume`` restarts from ``last.ckpt`` and continues the same
step sequence (same batches, learning rates, EMA), so N steps straight equal N/2 + N/2 resumed.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from ..forces import autograd_gradients, strain
from .data import (
    Batch,
    BatchLoader,
    Frame,
    attach_neighbors,
    composition_matrix,
    read_frames,
    split_indices,
)

__all__ = [
    "DEFAULTS",
    "train_main",
    "load_config",
    "predict",
    "loss_and_metrics",
    "fit_energy_shifts",
    "force_rms",
    "apply_normalization",
    "make_eval_model",
    "evaluate_frames",
    "EMA",
    "make_lr_lambda",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "add_train_arguments",
    "parse_overrides",
]

DEFAULTS: Dict[str, Any] = {
    "run_dir": "runs/so3krates",
    "seed": 0,
    "init_from": None,
    "model": {},
    "data": {
        "path": None,
        "valid_path": None,
        "test_path": None,
        "index": ":",
        "split": {"train": 0.8, "valid": 0.1, "test": None, "seed": 0},
        "index_files": {},
        "energy_key": "energy",
        "forces_key": "forces",
        "stress_key": "stress",
        "charge_key": "total_charge",
    },
    "normalization": {"energy_shifts": "auto", "force_scale": "auto"},
    "training": {
        "batch_size": 8,
        "valid_batch_size": 32,
        "epochs": 100,
        "max_steps": None,
        "stop_after_steps": None,
        "time_budget_s": None,
        "time_budget_clock": "wall",
        "loss_weights": {"energy": 1.0, "forces": 10.0, "stress": 0.0},
        "energy_loss": "per_atom",
        "optimizer": "amsgrad",
        "lr": 1.0e-3,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "warmup_steps": 0,
        "lr_decay": "exponential",
        "lr_decay_rate": 0.5,
        "lr_decay_steps": 10000,
        "min_lr_ratio": 0.01,
        "gradient_clip": 10.0,
        "ema_decay": 0.99,
        "eval_every": None,
        "patience": None,
        "dtype": "float32",
        "eval_dtype": "float64",
        "device": "cpu",
        "progress": True,
        "overwrite": False,
    },
}

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
def _deep_merge(base: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (new or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "model":
            out[k] = _deep_merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = copy.deepcopy(v)
    return out


def _apply_overrides(cfg: Dict[str, Any], overrides: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """``overrides``: nested dict and/or dotted keys (``{"training.max_steps": 10}``)."""
    cfg = copy.deepcopy(cfg)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and "." not in key:
            cfg[key] = _deep_merge(cfg.get(key, {}) or {}, value) if isinstance(cfg.get(key), dict) else value
            continue
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def load_config(config_path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Read a YAML training config, fill defaults, apply overrides, check keys. Data paths
    relative to the YAML file are resolved against its folder."""
    import yaml

    raw: Dict[str, Any] = {}
    base_dir = Path.cwd()
    if config_path is not None:
        p = Path(config_path)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} does not exist")
        raw = yaml.safe_load(p.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{p}: a training config must be a YAML mapping with sections model/data/training")
        base_dir = p.resolve().parent
    raw = _apply_overrides(raw, overrides)
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown top-level config keys {unknown}; valid keys are {sorted(DEFAULTS)}")
    for section in ("data", "training", "normalization"):
        bad = sorted(set(raw.get(section) or {}) - set(DEFAULTS[section]))
        if bad:
            raise ValueError(f"unknown keys {bad} in section '{section}'; valid keys are {sorted(DEFAULTS[section])}")
    cfg = _deep_merge(DEFAULTS, raw)
    d = cfg["data"]
    if not d.get("path"):
        raise ValueError("config needs data.path (extxyz, any ASE-readable file, or npz with reference labels)")

    def resolve(x):
        if x is None:
            return None
        x = Path(os.path.expanduser(str(x)))
        if x.is_absolute() or x.exists():
            return str(x)
        return str(base_dir / x)

    for key in ("path", "valid_path", "test_path"):
        v = d.get(key)
        d[key] = [resolve(x) for x in v] if isinstance(v, (list, tuple)) else resolve(v)
    d["index_files"] = {k: resolve(v) for k, v in (d.get("index_files") or {}).items() if v is not None}
    if cfg.get("init_from"):
        cfg["init_from"] = resolve(cfg["init_from"])
    t = cfg["training"]
    if t["optimizer"] not in ("amsgrad", "adam", "adamw"):
        raise ValueError(f"training.optimizer={t['optimizer']!r} is unknown; use amsgrad, adam or adamw")
    if t["lr_decay"] not in ("exponential", "cosine", "none", None):
        raise ValueError(f"training.lr_decay={t['lr_decay']!r} is unknown; use exponential, cosine or none")
    if t["energy_loss"] not in ("per_atom", "total"):
        raise ValueError(f"training.energy_loss={t['energy_loss']!r} is unknown; use per_atom or total")
    if t.get("time_budget_clock", "wall") not in ("wall", "cpu"):
        raise ValueError(f"training.time_budget_clock={t['time_budget_clock']!r} is unknown; use wall or cpu")
    if t.get("time_budget_s") is not None and not float(t["time_budget_s"]) > 0:
        raise ValueError(f"training.time_budget_s={t['time_budget_s']!r} must be a positive number of seconds (or null)")
    for k in ("dtype", "eval_dtype"):
        if t[k] not in _DTYPES:
            raise ValueError(f"training.{k}={t[k]!r} is unknown; use float32 or float64")
    lw = t["loss_weights"]
    bad = sorted(set(lw) - {"energy", "forces", "stress"})
    if bad:
        raise ValueError(f"unknown loss_weights {bad}; use energy, forces, stress")
    return cfg


# --------------------------------------------------------------------------------------------
# Predictions, losses, metrics
# --------------------------------------------------------------------------------------------
def predict(
    model: torch.nn.Module,
    batch: Batch,
    compute_forces: bool = True,
    compute_stress: bool = False,
    create_graph: bool = False,
) -> Dict[str, torch.Tensor]:
    """Energies [B] (eV), forces [N,3] (eV/Å, −∂E/∂r) and stress [B,3,3] (eV/Å³, (1/V)∂E/∂ε)
    of a batch with the raw ``So3krates`` module (autograd); ``atomic_energies`` [N] too."""
    base = batch.positions.detach().requires_grad_(compute_forces)
    positions, cell, eps = strain(base, batch.cell, batch.batch, batch.num_graphs, compute_stress)
    out = model(**batch.model_inputs(positions, cell))
    atomic = out["atomic_energies"]
    energy = torch.zeros(batch.num_graphs, dtype=atomic.dtype, device=atomic.device).index_add(0, batch.batch, atomic)
    res = {"energy": energy, "atomic_energies": atomic}
    g_pos, g_eps = autograd_gradients(energy.sum(), base, eps, compute_forces, compute_stress, create_graph)
    if g_pos is not None:
        res["forces"] = -g_pos
    if g_eps is not None:
        vol = torch.linalg.det(batch.cell).abs().clamp_min(1e-12)
        res["stress"] = g_eps / vol[:, None, None]
    return res


def loss_and_metrics(
    pred: Dict[str, torch.Tensor], batch: Batch, weights: Dict[str, float], energy_loss: str = "per_atom"
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Weighted MSE loss and summable error statistics (sums, counts) of one batch."""
    zero = pred["energy"].sum() * 0.0
    loss = zero
    stats: Dict[str, float] = {}
    n_at = batch.num_atoms.to(pred["energy"].dtype)
    me = batch.has_energy
    if me.any():
        de = (pred["energy"] - batch.energy)[me]
        dea = de / n_at[me]
        le = (dea if energy_loss == "per_atom" else de).pow(2).mean()
        loss = loss + float(weights.get("energy", 0.0)) * le
        stats.update(e_abs=de.abs().sum().item(), e_sq=de.pow(2).sum().item(),
                     ea_abs=dea.abs().sum().item(), ea_sq=dea.pow(2).sum().item(), e_n=float(me.sum()))
    if "forces" in pred:
        mf = batch.has_forces[batch.batch]
        if mf.any():
            df = (pred["forces"] - batch.forces)[mf]
            lf = df.pow(2).mean()
            loss = loss + float(weights.get("forces", 0.0)) * lf
            stats.update(f_abs=df.abs().sum().item(), f_sq=df.pow(2).sum().item(), f_n=float(df.numel()))
    if "stress" in pred:
        ms = batch.has_stress
        if ms.any():
            ds = (pred["stress"] - batch.stress)[ms]
            ls = ds.pow(2).mean()
            loss = loss + float(weights.get("stress", 0.0)) * ls
            stats.update(s_abs=ds.abs().sum().item(), s_sq=ds.pow(2).sum().item(), s_n=float(ds.numel()))
    return loss, stats


def _summarise(acc: Dict[str, float], prefix: str) -> Dict[str, float]:
    out = {}
    for key, name in (("e", "energy"), ("ea", "energy_per_atom"), ("f", "forces"), ("s", "stress")):
        n = acc.get(f"{key if key != 'ea' else 'e'}_n", 0.0)
        if n > 0:
            out[f"{prefix}_{name}_mae"] = acc[f"{key}_abs"] / n
            out[f"{prefix}_{name}_rmse"] = math.sqrt(acc[f"{key}_sq"] / n)
    return out


def _accumulate(acc: Dict[str, float], stats: Dict[str, float]) -> None:
    for k, v in stats.items():
        acc[k] = acc.get(k, 0.0) + v


def _needs_stress(weights, frames: Sequence[Frame]) -> bool:
    return float(weights.get("stress", 0.0)) > 0 and any(f.stress is not None and f.pbc.any() for f in frames)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------
def fit_energy_shifts(frames: Sequence[Frame], species: Sequence[int], rcond: Optional[float] = None) -> Dict[int, float]:
    """Per-element energy shifts (eV) by least squares: ``E_m ≈ Σ_Z n_Z(m) · shift_Z`` over the frames
    with energies. Elements that always occur together get the minimum-norm split."""
    fr = [f for f in frames if f.energy is not None]
    if not fr:
        return {int(z): 0.0 for z in species}
    a = composition_matrix(fr, species)
    b = np.array([f.energy for f in fr], dtype=np.float64)
    x, *_ = np.linalg.lstsq(a, b, rcond=rcond)
    return {int(z): float(v) for z, v in zip(species, x)}


def force_rms(frames: Sequence[Frame]) -> Optional[float]:
    """Root mean square force component (eV/Å) of the frames with forces (None if none)."""
    sq, n = 0.0, 0
    for f in frames:
        if f.forces is not None:
            sq += float(np.sum(f.forces**2))
            n += f.forces.size
    if n == 0 or sq == 0.0:
        return None
    return math.sqrt(sq / n)


def _type_parameters(model: torch.nn.Module) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The model's per-atomic-number energy shift and scale tensors (indexed by Z):
    ``energy_head.energy_offset`` and ``energy_head.atomic_scales`` in potential/nn/readout.py."""
    head = getattr(model, "energy_head", None)
    if head is not None and hasattr(head, "energy_offset") and hasattr(head, "atomic_scales"):
        return head.energy_offset, head.atomic_scales
    shift = scale = None
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        leaf = name.split(".")[-1]
        if leaf in ("energy_offset", "atomic_type_shifts", "energy_shifts") and shift is None:
            shift = t
        if leaf in ("atomic_scales", "atomic_type_scales", "energy_scales") and scale is None:
            scale = t
    return shift, scale


def apply_normalization(model: torch.nn.Module, energy_shifts: Optional[Dict[int, float]],
                        force_scale: Optional[float]) -> None:
    """Write per-element energy shifts (eV, indexed by atomic number) and a common energy scale
    (eV/Å: the RMS force) into the model's per-type shift/scale tensors, so the weights alone
    reproduce the normalisation."""
    if hasattr(model, "set_energy_normalization"):
        model.set_energy_normalization(energy_shifts, force_scale)
        return
    shift, scale = _type_parameters(model)
    with torch.no_grad():
        if energy_shifts:
            if shift is None:
                raise ValueError("the model has no per-type energy shifts; set model.energy_learn_atomic_type_shifts: true "
                                 "or normalization.energy_shifts: none")
            for z, v in energy_shifts.items():
                shift.view(-1)[int(z)] = float(v)
        if force_scale is not None:
            if scale is None:
                raise ValueError("the model has no per-type energy scales; set model.energy_learn_atomic_type_scales: true "
                                 "or normalization.force_scale: none")
            scale.fill_(float(force_scale))


def make_eval_model(model: torch.nn.Module, dtype: torch.dtype = torch.float64,
                    device: Optional[str] = None) -> torch.nn.Module:
    """A copy of ``model`` for evaluation in ``dtype`` (float32 training, float64 evaluation).

    ``copy.deepcopy(model).to(float64)`` keeps the weights as trained (float32 values, exactly
    representable in float64) and rebuilds the constant buffers (radial-basis binomials, Lebedev
    grids, free-atom dispersion tables, ...) from their float64 originals (``ExactConstants`` in
    ``potential/constants.py``), so the copy equals the trained weights loaded into a model built in
    float64. The per-element energy shifts are weights: they keep their float32 rounding (about 1e-6 eV
    per atom), exactly as in an exported float64 model. The original model is not touched."""
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()


# --------------------------------------------------------------------------------------------
# EMA, schedules, optimizers
# --------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of a model's floating-point parameters.

    ``decay_t = min(decay, (1 + t) / (10 + t))`` (the usual warm-up), ``shadow ← decay_t·shadow +
    (1 − decay_t)·param`` after every optimizer step."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        for k, p in model.named_parameters():
            self.shadow[k].mul_(d).add_(p.detach(), alpha=1.0 - d)

    def model_state_dict(self, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
        """The model's state_dict with EMA parameters in place of the raw ones."""
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for k, v in self.shadow.items():
            sd[k] = v.detach().clone()
        return sd

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: v.detach().cpu().clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def make_lr_lambda(t: Dict[str, Any], total_steps: int,
                   time_fraction: Optional[Callable[[], float]] = None) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    ``time_fraction`` (used with ``training.time_budget_s``) returns the fraction of the time budget
    used so far; the cosine decay then progresses by ``max(step fraction, time fraction)``, so it
    reaches its floor when the budget runs out even if ``total_steps`` is never reached."""
    warm = int(t.get("warmup_steps") or 0)
    kind = t.get("lr_decay") or "none"
    rate = float(t.get("lr_decay_rate", 0.5))
    dsteps = max(1, int(t.get("lr_decay_steps", 10000)))
    min_ratio = float(t.get("min_lr_ratio", 0.0))
    total = max(1, int(total_steps))

    def f(step: int) -> float:
        w = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        s = max(0, step - warm)
        if kind == "exponential":
            d = rate ** (s / dsteps)
        elif kind == "cosine":
            span = max(1, total - warm)
            prog = s / span
            if time_fraction is not None and s > 0:
                prog = max(prog, float(time_fraction()))
            d = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
        else:
            d = 1.0
        return w * d

    return f


def _make_optimizer(model: torch.nn.Module, t: Dict[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    betas = tuple(float(b) for b in t.get("betas", (0.9, 0.999)))
    lr, wd = float(t["lr"]), float(t.get("weight_decay") or 0.0)
    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=wd, amsgrad=t["optimizer"] == "amsgrad")


def _rng_state() -> Dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Data preparation
# --------------------------------------------------------------------------------------------
def _load_splits(cfg: Dict[str, Any], progress: bool) -> Dict[str, List[Frame]]:
    d = cfg["data"]
    keys = {k: d[k] for k in ("energy_key", "forces_key", "stress_key", "charge_key")}
    paths = d["path"] if isinstance(d["path"], list) else [d["path"]]
    frames = [f for path in paths for f in read_frames(path, index=d.get("index", ":"), **keys)]
    sp = dict(d.get("split") or {})
    if d.get("valid_path"):
        sp["valid"] = 0
    if d.get("test_path"):
        sp["test"] = 0
    idx = split_indices(len(frames), train=sp.get("train", 0.8), valid=sp.get("valid", 0.1), test=sp.get("test"),
                        seed=int(sp.get("seed", 0)), index_files=d.get("index_files"))
    out = {k: [frames[i] for i in v] for k, v in idx.items()}
    if d.get("valid_path"):
        out["valid"] = read_frames(d["valid_path"], **keys)
    if d.get("test_path"):
        out["test"] = read_frames(d["test_path"], **keys)
    for k in ("train", "valid", "test"):
        out.setdefault(k, [])
    return out


def _element_species(frames: Sequence[Frame]) -> List[int]:
    zs = set()
    for f in frames:
        zs.update(int(z) for z in np.unique(f.atomic_numbers))
    return sorted(zs)


def _avg_num_neighbors(frames: Sequence[Frame]) -> float:
    n_edges = sum(int(f.idx_i.shape[0]) for f in frames)
    n_atoms = sum(f.num_atoms for f in frames)
    return n_edges / max(1, n_atoms)


def _build_model(cfg: Dict[str, Any], splits: Dict[str, List[Frame]], progress: bool):
    """Model (config + init/fine-tune weights) and whether per-type normalisation may be fitted."""
    from ..config import So3kratesConfig
    from ..model import So3krates

    train_species = _element_species(splits["train"] + splits["valid"] + splits["test"])
    if cfg.get("init_from"):
        payload = load_checkpoint(cfg["init_from"])
        mcfg = So3kratesConfig.from_dict(payload["config"])
        if cfg.get("model"):
            print(f"[train] init_from {cfg['init_from']}: using the checkpoint's model config; the 'model' section is ignored")
        model = So3krates(mcfg)
        state = payload.get("ema_state_dict") or payload["state_dict"]
        model.load_state_dict(state)
        known = set(int(z) for z in (payload.get("species") or mcfg.species or train_species))
        missing = sorted(set(train_species) - known)
        if missing:
            print(f"[train] warning: elements {missing} are not in the checkpoint's species {sorted(known)}")
        return model, mcfg, payload
    mdict = dict(cfg.get("model") or {})
    all_frames = splits["train"]
    cutoff = float(mdict.get("cutoff", So3kratesConfig.cutoff))
    if mdict.get("species") is None:
        mdict["species"] = train_species
    else:
        extra = sorted(set(train_species) - set(int(z) for z in mdict["species"]))
        if extra:
            raise ValueError(f"data contain elements {extra} that model.species {mdict['species']} lacks; add them")
    if mdict.get("message_normalization") == "avg_num_neighbors" and mdict.get("avg_num_neighbors") in (None, "auto"):
        # neighbour lists of the training set are computed already (same cutoff)
        mdict["avg_num_neighbors"] = _avg_num_neighbors(all_frames)
        print(f"[train] avg_num_neighbors = {mdict['avg_num_neighbors']:.4f} (training set, cutoff {cutoff} Å)")
    mcfg = So3kratesConfig.from_dict(mdict)
    model = So3krates(mcfg)
    return model, mcfg, None


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def evaluate_frames(
    model: torch.nn.Module,
    frames: Sequence[Frame],
    batch_size: int = 32,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    weights: Optional[Dict[str, float]] = None,
    energy_loss: str = "per_atom",
    compute_stress: bool = False,
    progress: bool = True,
    desc: str = "evaluate",
    return_predictions: bool = False,
    compute_forces: bool = True,
):
    """Loss and MAE/RMSE of ``model`` on ``frames`` (and per-frame predictions on request)."""
    from tqdm.auto import tqdm

    weights = weights or {"energy": 1.0, "forces": 1.0, "stress": 1.0}
    loader = BatchLoader(frames, batch_size, shuffle=False, dtype=dtype)
    acc: Dict[str, float] = {}
    loss_sum, n_graph = 0.0, 0
    preds = []
    was_training = model.training
    model.eval()
    for batch in tqdm(loader.epoch(0), total=len(loader), desc=desc, disable=not progress, leave=False):
        batch = batch.to(device, dtype)
        with torch.enable_grad():
            p = predict(model, batch, compute_forces=compute_forces, compute_stress=compute_stress)
        loss, stats = loss_and_metrics({k: v.detach() for k, v in p.items()}, batch, weights, energy_loss)
        loss_sum += float(loss) * batch.num_graphs
        n_graph += batch.num_graphs
        _accumulate(acc, stats)
        if return_predictions:
            counts = batch.num_atoms.tolist()
            e = p["energy"].detach().cpu().double().numpy()
            f = p["forces"].detach().cpu().double().numpy() if "forces" in p else np.zeros((int(batch.num_atoms.sum()), 3))
            off = 0
            for b, n in enumerate(counts):
                item = {"energy": float(e[b]), "forces": f[off : off + n]}
                if "stress" in p:
                    item["stress"] = p["stress"][b].detach().cpu().double().numpy()
                preds.append(item)
                off += n
    model.train(was_training)
    res = {"loss": loss_sum / max(1, n_graph), **_summarise(acc, "x")}
    res = {k.replace("x_", "", 1) if k.startswith("x_") else k: v for k, v in res.items()}
    if return_predictions:
        return res, preds
    return res



def _normalize(model, norm_cfg: Dict[str, Any], train_frames: Sequence[Frame], fine_tune: bool, device: str,
               progress: bool, normalization: Dict[str, Any]) -> Dict[str, Any]:
    """Fit/apply the per-element energy shifts and the energy scale (see the ``normalization``
    config section); returns the normalisation record stored in the checkpoints."""
    normalization = dict(normalization)
    shifts_mode = norm_cfg.get("energy_shifts", "auto")
    scale_mode = norm_cfg.get("force_scale", "auto")
    if shifts_mode == "auto":
        shifts_mode = "fit_residual" if fine_tune else "fit"
    if scale_mode == "auto":
        scale_mode = "keep" if fine_tune else "fit"
    species = _element_species(train_frames)
    shifts: Optional[Dict[int, float]] = None
    if isinstance(shifts_mode, dict):
        from ase.data import atomic_numbers as _anum

        shifts = {int(_anum.get(str(k), k)): float(v) for k, v in shifts_mode.items()}
    elif shifts_mode == "fit":
        shifts = fit_energy_shifts(train_frames, species)
    elif shifts_mode == "fit_residual":
        # shifts that absorb the mean per-element error of the current model (fine-tuning onto a
        # different reference level); added to the model's existing offsets
        shift_t, _ = _type_parameters(model)
        if shift_t is None:
            raise ValueError("normalization.energy_shifts: fit_residual needs a model with per-type energy offsets")
        ev = copy.deepcopy(model).to(device=device, dtype=torch.float64)
        labelled = [f for f in train_frames if f.energy is not None]
        if labelled:
            _, preds = evaluate_frames(ev, labelled, 16, torch.float64, device, compute_forces=False,
                                       progress=progress, desc="residual shifts", return_predictions=True)
            resid = [Frame(positions=f.positions, atomic_numbers=f.atomic_numbers, energy=f.energy - p["energy"])
                     for f, p in zip(labelled, preds)]
            delta = fit_energy_shifts(resid, species)
            base = shift_t.detach().double().cpu().view(-1)
            shifts = {z: float(base[z]) + d for z, d in delta.items()}
            mae = float(np.mean([abs(r.energy) for r in resid]))
            print(f"[train] residual energy shifts fitted (mean |E_ref - E_model| before: {mae:.4g} eV)")
    elif shifts_mode not in ("keep", "none", None):
        raise ValueError(f"normalization.energy_shifts={shifts_mode!r} is unknown; use auto, fit, fit_residual, keep, "
                         "none or a mapping {element: eV}")
    if scale_mode == "fit":
        scale = force_rms(train_frames)
    elif isinstance(scale_mode, (int, float)) and not isinstance(scale_mode, bool):
        scale = float(scale_mode)
    elif scale_mode in ("keep", "none", None):
        scale = None
    else:
        raise ValueError(f"normalization.force_scale={scale_mode!r} is unknown; use auto, fit, keep, none or a number (eV/Å)")
    apply_normalization(model, shifts, scale)
    if shifts is not None:
        normalization["energy_shifts"] = shifts
    if scale is not None:
        normalization["force_scale"] = scale
    if shifts:
        print("[train] energy shifts (eV): " + ", ".join(f"Z={z}: {v:.6g}" for z, v in sorted(shifts.items()))
              + (f"; energy scale (RMS force) {scale:.4g} eV/Å" if scale else ""))
    return normalization

# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
_CSV_FIELDS = [
    "step", "epoch", "lr", "time_s", "train_loss", "train_energy_mae", "train_energy_per_atom_mae",
    "train_forces_mae", "train_forces_rmse", "valid_loss", "valid_energy_mae", "valid_energy_rmse",
    "valid_energy_per_atom_mae", "valid_energy_per_atom_rmse", "valid_forces_mae", "valid_forces_rmse",
    "valid_stress_mae", "best_valid_loss", "budget_used_s",
]


def _append_csv(path: Path, row: Dict[str, Any]) -> None:
    new = not path.exists()
    fields = _CSV_FIELDS
    if not new:  # keep the columns of an existing file (a run started by an older version)
        with open(path, newline="") as fh:
            fields = next(csv.reader(fh), None) or _CSV_FIELDS
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})


def _truncate_csv(path: Path, step: int) -> None:
    """On resume, drop rows written after the checkpoint's step (a crash between saves)."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if int(float(r["step"])) <= step]
    if len(keep) != len(rows):
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=_CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(keep)


def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("training.device is cuda but no GPU is visible; use device: cpu or auto")
    return name


def train_main(config_path: Optional[str], resume: bool = False, overrides: Optional[Dict[str, Any]] = None) -> Path:
    """Train (or with ``resume`` continue) the run described by a YAML config; returns the run folder.

    ``overrides`` patch the config (nested dict or dotted keys, e.g. ``{"training.max_steps": 50}``).
    """
    import yaml
    from tqdm.auto import tqdm

    from . import plots

    cfg = load_config(config_path, overrides)
    t = cfg["training"]
    progress = bool(t.get("progress", True))
    device = _resolve_device(str(t.get("device", "cpu")))
    dtype, eval_dtype = _DTYPES[t["dtype"]], _DTYPES[t["eval_dtype"]]
    run_dir = Path(cfg["run_dir"])
    last_path, best_path = run_dir / "last.ckpt", run_dir / "best.ckpt"
    csv_path = run_dir / "metrics.csv"

    resume_payload = None
    if resume:
        if not last_path.exists():
            raise FileNotFoundError(f"--resume: {last_path} does not exist; start the run without --resume")
        resume_payload = load_checkpoint(last_path)
        saved = resume_payload.get("train_config") or {}
        for section in ("model", "data", "normalization", "init_from", "seed"):
            if saved.get(section) != cfg.get(section):
                print(f"[train] warning: config section '{section}' differs from the run being resumed; "
                      "using the checkpoint's")
                cfg[section] = saved.get(section)
        if resume_payload.get("finished"):
            print(f"[train] {run_dir} already finished (step {resume_payload['step']}); nothing to resume. "
                  "Raise training.epochs/max_steps to train further.")
    elif last_path.exists() and not t.get("overwrite"):
        raise ValueError(f"{run_dir} already holds a run (last.ckpt); pass --resume to continue it, "
                         "choose another run_dir, or set training.overwrite: true")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume and csv_path.exists():
        csv_path.unlink()

    seed = int(cfg.get("seed") or 0)
    _seed_everything(seed)

    # ---- data
    t0 = time.perf_counter()
    splits = _load_splits(cfg, progress)
    from ..config import So3kratesConfig

    mdict = dict(cfg.get("model") or {})
    if resume_payload is not None:
        mdict = dict(resume_payload["config"])
    elif cfg.get("init_from"):
        mdict = dict(load_checkpoint(cfg["init_from"])["config"])

    cutoff = float(mdict.get("cutoff", So3kratesConfig.cutoff))
    lr_needed = bool(mdict.get("electrostatic_energy_bool") or mdict.get("dispersion_energy_bool"))
    cutoff_lr = mdict.get("cutoff_lr")
    for name in ("train", "valid", "test"):
        if splits[name]:
            attach_neighbors(splits[name], cutoff, cutoff_lr, lr_needed, progress, desc=f"neighbours ({name})")
    print(f"[train] data: {len(splits['train'])} train / {len(splits['valid'])} valid / {len(splits['test'])} test "
          f"frames ({time.perf_counter() - t0:.1f} s)")

    # ---- model
    _seed_everything(seed)
    if resume_payload is not None:  # the architecture of the run being resumed, weights loaded below
        from ..model import So3krates

        mcfg = So3kratesConfig.from_dict(resume_payload["config"])
        model, init_payload = So3krates(mcfg), None
    else:
        model, mcfg, init_payload = _build_model(cfg, splits, progress)
    norm_cfg = cfg["normalization"]
    species = [int(z) for z in (mcfg.species or _element_species(splits["train"]))]
    normalization: Dict[str, Any] = {"energy_shifts": None, "force_scale": None}
    if init_payload is not None:
        normalization = dict(init_payload.get("normalization") or normalization)
    if resume_payload is None:
        normalization = _normalize(model, norm_cfg, splits["train"], init_payload is not None, device, progress,
                                   normalization)
    model = model.to(device=device, dtype=dtype)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[train] model: {n_params} parameters, species {species}, cutoff {mcfg.cutoff} Å, "
          f"{t['dtype']} training / {t['eval_dtype']} evaluation on {device}")

    # ---- optimisation state
    loader = BatchLoader(splits["train"], int(t["batch_size"]), shuffle=True, seed=seed, dtype=dtype)
    steps_per_epoch = len(loader)
    total_steps = int(t["epochs"]) * steps_per_epoch
    if t.get("max_steps"):
        total_steps = min(total_steps, int(t["max_steps"]))
    optimizer = _make_optimizer(model, t)
    # time budget (training.time_budget_s): seconds of the training loop, validations included, on the
    # chosen clock; kept across --resume in the checkpoint ("budget_used_s")
    budget = float(t["time_budget_s"]) if t.get("time_budget_s") else None
    clock = time.process_time if t.get("time_budget_clock", "wall") == "cpu" else time.perf_counter
    budget_state = {"used0": float(resume_payload.get("budget_used_s", 0.0)) if resume_payload else 0.0,
                    "start": None}

    def budget_used() -> float:
        if budget_state["start"] is None:
            return budget_state["used0"]
        return budget_state["used0"] + clock() - budget_state["start"]

    time_fraction = (lambda: budget_used() / budget) if budget else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, make_lr_lambda(t, total_steps, time_fraction))
    ema = EMA(model, float(t["ema_decay"])) if t.get("ema_decay") else None
    weights = dict(t["loss_weights"])
    use_stress = _needs_stress(weights, splits["train"])
    eval_every = int(t["eval_every"]) if t.get("eval_every") else steps_per_epoch
    patience = int(t["patience"]) if t.get("patience") else None
    step, best_loss, bad_evals, finished = 0, math.inf, 0, False
    if resume_payload is not None:
        model.load_state_dict(resume_payload["state_dict"])
        optimizer.load_state_dict(resume_payload["optimizer"])
        scheduler.load_state_dict(resume_payload["scheduler"])
        if ema is not None and resume_payload.get("ema"):
            ema.load_state_dict(resume_payload["ema"])
        step = int(resume_payload["step"])
        best_loss = float(resume_payload.get("best_valid_loss", math.inf))
        bad_evals = int(resume_payload.get("bad_evals", 0))
        prev_stop = resume_payload.get("stopped_by")
        if prev_stop == "time_budget":  # a larger time_budget_s continues the run
            finished = budget is not None and budget_state["used0"] >= budget
        elif prev_stop == "early_stopping":
            finished = True
        else:
            finished = bool(resume_payload.get("finished", False)) and step >= total_steps
        normalization = resume_payload.get("normalization", normalization)
        _set_rng_state(resume_payload["rng"])
        _truncate_csv(csv_path, step)
        print(f"[train] resumed {run_dir} at step {step} (epoch {step // steps_per_epoch})")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    eval_model = make_eval_model(model, eval_dtype, device)
    valid_frames = splits["valid"] or []
    stop_after = t.get("stop_after_steps")
    stop_at = min(total_steps, step + int(stop_after)) if stop_after else total_steps

    # running training statistics since the last validation (kept across --resume)
    running: Dict[str, Any] = {"acc": {}, "loss_sum": 0.0, "n": 0}
    if resume_payload is not None and resume_payload.get("train_running"):
        running = copy.deepcopy(resume_payload["train_running"])

    def inference_state():
        return ema.model_state_dict(model) if ema is not None else {k: v.detach().clone() for k, v in model.state_dict().items()}

    def save(path: Path, *, is_finished: bool) -> None:
        save_checkpoint(
            path, model,
            ema_state_dict=inference_state() if ema is not None else None,
            normalization=normalization,
            train_config=cfg,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            ema=ema.state_dict() if ema is not None else None,
            step=step,
            epoch=step // steps_per_epoch,
            best_valid_loss=best_loss,
            bad_evals=bad_evals,
            rng=_rng_state(),
            finished=is_finished,
            elapsed_s=time.perf_counter() - t_start,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            train_running=running,
            budget_used_s=budget_used(),
            stopped_by=stopped_by,
        )

    def validate(train_acc, train_loss_sum, train_n) -> Dict[str, Any]:
        nonlocal best_loss, bad_evals
        row: Dict[str, Any] = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                               "lr": optimizer.param_groups[0]["lr"], "time_s": round(time.perf_counter() - t_start, 3)}
        if train_n:
            row["train_loss"] = train_loss_sum / train_n
            row.update(_summarise(train_acc, "train"))
        if budget is not None:
            row["budget_used_s"] = round(budget_used(), 3)
        if valid_frames:
            eval_model.load_state_dict(inference_state())
            res = evaluate_frames(eval_model, valid_frames, int(t["valid_batch_size"]), eval_dtype, device, weights,
                                  t["energy_loss"], compute_stress=use_stress, progress=progress, desc="validate")
            row.update({f"valid_{k}": v for k, v in res.items()})
            score = res["loss"]
        else:
            score = row.get("train_loss", math.inf)
        if score < best_loss:
            best_loss, bad_evals = score, 0
            save(best_path, is_finished=False)
        else:
            bad_evals += 1
        row["best_valid_loss"] = best_loss
        _append_csv(csv_path, row)
        return row

    # ---- loop
    t_start = time.perf_counter() - (float(resume_payload.get("elapsed_s", 0.0)) if resume_payload else 0.0)
    stopped_early = False
    stopped_by: Optional[str] = resume_payload.get("stopped_by") if resume_payload else None
    if not finished and step < stop_at:
        budget_state["start"], stopped_by = clock(), None
        first_epoch = step // steps_per_epoch
        n_epochs = (total_steps + steps_per_epoch - 1) // steps_per_epoch
        epoch_bar = tqdm(range(first_epoch, n_epochs), desc="epochs", disable=not progress, initial=first_epoch,
                         total=n_epochs)
        for epoch in epoch_bar:
            start = step - epoch * steps_per_epoch
            n_batches = min(steps_per_epoch, stop_at - epoch * steps_per_epoch)
            bar = tqdm(loader.epoch(epoch, start), total=n_batches, initial=start, desc=f"epoch {epoch}",
                       disable=not progress, leave=False)
            for batch in bar:
                batch = batch.to(device, dtype)
                optimizer.zero_grad(set_to_none=True)
                pred = predict(model, batch, compute_forces=True, compute_stress=use_stress, create_graph=True)
                loss, stats = loss_and_metrics(pred, batch, weights, t["energy_loss"])
                if not torch.isfinite(loss):
                    raise RuntimeError(f"loss became {float(loss.detach())} at step {step}; lower training.lr or check the data")
                loss.backward()
                if t.get("gradient_clip"):
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(t["gradient_clip"]))
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model)
                step += 1
                running["loss_sum"] += float(loss.detach()) * batch.num_graphs
                running["n"] += batch.num_graphs
                _accumulate(running["acc"], stats)
                bar.set_postfix(loss=f"{float(loss.detach()):.4g}", refresh=False)
                out_of_time = budget is not None and budget_used() >= budget
                if step % eval_every == 0 or step == total_steps or out_of_time:
                    row = validate(running["acc"], running["loss_sum"], running["n"])
                    running.update(acc={}, loss_sum=0.0, n=0)
                    epoch_bar.set_postfix(valid=f"{row.get('valid_loss', row.get('train_loss', float('nan'))):.4g}",
                                          refresh=False)
                    if patience is not None and bad_evals >= patience:
                        stopped_early, stopped_by = True, "early_stopping"
                        break
                    if out_of_time:
                        stopped_early, stopped_by = True, "time_budget"
                        break
                    save(last_path, is_finished=step >= total_steps)
                if step >= stop_at:
                    break
            bar.close()
            if stopped_early or step >= stop_at:
                break
        epoch_bar.close()
        budget_state.update(used0=budget_used(), start=None)  # the budget counts the loop only
    if stopped_by is None and step >= total_steps:
        stopped_by = "max_steps" if t.get("max_steps") and total_steps == int(t["max_steps"]) else "epochs"
    finished = finished or stopped_early or step >= total_steps
    save(last_path, is_finished=finished)
    if stopped_by == "early_stopping" and stopped_early:
        print(f"[train] early stopping at step {step}: no improvement in {patience} validations")
    if stopped_by == "time_budget" and stopped_early:
        print(f"[train] time budget used up at step {step}: {budget_used():.1f} s of {budget:.1f} s "
              f"({t.get('time_budget_clock', 'wall')} clock)")
    print(f"[train] step {step}/{total_steps}; checkpoints in {run_dir}")
    if not finished:
        print(f"[train] stopped after training.stop_after_steps; continue with `so3krates train {config_path or 'CONFIG'} --resume`")

    # ---- plots and final test
    try:
        plots.learning_curve(csv_path, run_dir / "learning_curve.png")
    except Exception as exc:  # noqa: BLE001 - plots must never break a run
        print(f"[train] warning: learning curve not plotted ({exc})")
    if finished:
        _final_evaluation(run_dir, best_path if best_path.exists() else last_path, splits, t, device, eval_dtype,
                          use_stress, progress)
    return run_dir


def _final_evaluation(run_dir: Path, ckpt: Path, splits, t, device, eval_dtype, use_stress, progress) -> None:
    from . import plots

    frames = splits["test"] or splits["valid"]
    name = "test" if splits["test"] else "valid"
    if not frames:
        return
    from .evaluate import error_metrics

    model = model_from_checkpoint(ckpt, dtype=eval_dtype).to(device=device)
    res, preds = evaluate_frames(model, frames, int(t["valid_batch_size"]), eval_dtype, device, None,
                                 t["energy_loss"], compute_stress=use_stress, progress=progress,
                                 desc=f"{name} set", return_predictions=True)
    res = {k: v for k, v in res.items() if k != "loss"}
    per_element = error_metrics(frames, preds).get("per_element")
    doc = {"set": name, "checkpoint": ckpt.name, "num_frames": len(frames), **res}
    if per_element:
        doc["per_element"] = per_element  # force-component MAE/RMSE per element (eV/Å)
    (run_dir / f"{name}_metrics.json").write_text(json.dumps(doc, indent=1))
    print(f"[train] {name} set ({len(frames)} frames, {ckpt.name}): "
          + ", ".join(f"{k} {v:.4g}" for k, v in res.items()))
    try:
        ref_e = [f.energy for f in frames if f.energy is not None]
        pred_e = [p["energy"] for f, p in zip(frames, preds) if f.energy is not None]
        n_at = [f.num_atoms for f in frames if f.energy is not None]
        if ref_e:
            plots.parity_energy(np.array(ref_e), np.array(pred_e), run_dir / "parity_energy.png",
                                num_atoms=np.array(n_at), title=f"{name} set energies")
        fr = [(f, p) for f, p in zip(frames, preds) if f.forces is not None]
        if fr:
            plots.parity_forces(np.concatenate([f.forces for f, _ in fr]), np.concatenate([p["forces"] for _, p in fr]),
                                run_dir / "parity_forces.png", atomic_numbers=np.concatenate([f.atomic_numbers for f, _ in fr]),
                                title=f"{name} set forces")
    except Exception as exc:  # noqa: BLE001
        print(f"[train] warning: parity plots not written ({exc})")


def parse_overrides(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``["training.max_steps=100", "model.num_layers=2"]`` -> ``{"training.max_steps": 100, ...}``
    (values parsed as YAML)."""
    import yaml

    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: use KEY=VALUE with a dotted key, e.g. training.max_steps=100")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def add_train_arguments(parser) -> None:
    """Arguments of ``so3krates train`` (for the CLI); call
    ``train_main(args.config, resume=args.resume, overrides=parse_overrides(args.set))``."""
    parser.add_argument("config", help="training config (YAML); see so3krates.potential.train.trainer")
    parser.add_argument("--resume", action="store_true", help="continue the run from run_dir/last.ckpt")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. --set training.max_steps=100 (repeatable)")
