"""The training config: YAML keys, defaults (:data:`DEFAULTS`), overrides and checks.

Units: Å, eV, eV/Å, eV/Å³, seconds. :func:`load_config` reads the YAML, applies overrides (nested
dict or dotted keys, :func:`parse_overrides` turns ``--set KEY=VALUE`` into them), fills the
defaults and checks every key.

Config (YAML; every key optional except ``data.path``)::

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
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import yaml

__all__ = ["DEFAULTS", "DTYPES", "load_config", "parse_overrides"]

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

#: ``training.dtype`` / ``training.eval_dtype`` names
DTYPES = {"float32": torch.float32, "float64": torch.float64}


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


def _read_yaml(config_path: Optional[str]):
    """The raw mapping of a config file and the folder its relative paths refer to."""
    if config_path is None:
        return {}, Path.cwd()
    p = Path(config_path)
    if not p.exists():
        raise FileNotFoundError(f"config file {p} does not exist")
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: a training config must be a YAML mapping with sections model/data/training")
    return raw, p.resolve().parent


def _check_keys(raw: Dict[str, Any]) -> None:
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown top-level config keys {unknown}; valid keys are {sorted(DEFAULTS)}")
    for section in ("data", "training", "normalization"):
        bad = sorted(set(raw.get(section) or {}) - set(DEFAULTS[section]))
        if bad:
            raise ValueError(f"unknown keys {bad} in section '{section}'; valid keys are {sorted(DEFAULTS[section])}")


def _resolve_paths(cfg: Dict[str, Any], base_dir: Path) -> None:
    """Data, index-file and ``init_from`` paths relative to the YAML's folder (in place)."""

    def resolve(x):
        if x is None:
            return None
        x = Path(os.path.expanduser(str(x)))
        if x.is_absolute() or x.exists():
            return str(x)
        return str(base_dir / x)

    d = cfg["data"]
    for key in ("path", "valid_path", "test_path"):
        v = d.get(key)
        d[key] = [resolve(x) for x in v] if isinstance(v, (list, tuple)) else resolve(v)
    d["index_files"] = {k: resolve(v) for k, v in (d.get("index_files") or {}).items() if v is not None}
    if cfg.get("init_from"):
        cfg["init_from"] = resolve(cfg["init_from"])


def _check_training(t: Dict[str, Any]) -> None:
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
        if t[k] not in DTYPES:
            raise ValueError(f"training.{k}={t[k]!r} is unknown; use float32 or float64")
    bad = sorted(set(t["loss_weights"]) - {"energy", "forces", "stress"})
    if bad:
        raise ValueError(f"unknown loss_weights {bad}; use energy, forces, stress")


def load_config(config_path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Read a YAML training config, fill defaults, apply overrides, check keys. Data paths
    relative to the YAML file are resolved against its folder."""
    raw, base_dir = _read_yaml(config_path)
    raw = _apply_overrides(raw, overrides)
    _check_keys(raw)
    cfg = _deep_merge(DEFAULTS, raw)
    if not cfg["data"].get("path"):
        raise ValueError("config needs data.path (extxyz, any ASE-readable file, or npz with reference labels)")
    _resolve_paths(cfg, base_dir)
    _check_training(cfg["training"])
    return cfg


def parse_overrides(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``["training.max_steps=100", "model.num_layers=2"]`` -> ``{"training.max_steps": 100, ...}``
    (values parsed as YAML)."""
    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: use KEY=VALUE with a dotted key, e.g. training.max_steps=100")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out
