"""What a run writes when it ends: ``learning_curve.png`` (from ``metrics.csv``) and, for a finished
run, the final test of the best checkpoint: ``<set>_metrics.json`` (the test set, else the
validation set; MAE/RMSE with per-element force errors) and ``parity_energy.png`` /
``parity_forces.png``. Plots never break a run: a failure is printed as a warning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from ..checkpoint import model_from_checkpoint
from . import plots
from .evaluate import error_metrics, evaluate_frames
from .frames import Frame

__all__ = ["plot_learning_curve", "final_evaluation"]


def plot_learning_curve(run_dir: Path) -> None:
    try:
        plots.learning_curve(run_dir / "metrics.csv", run_dir / "learning_curve.png")
    except Exception as exc:  # noqa: BLE001 - plots must never break a run
        print(f"[train] warning: learning curve not plotted ({exc})")


def _parity_plots(run_dir: Path, name: str, frames: Sequence[Frame], preds: Sequence[Dict[str, Any]]) -> None:
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


def final_evaluation(run_dir: Path, ckpt: Path, splits: Dict[str, List[Frame]], t: Dict[str, Any], device: str,
                     eval_dtype: torch.dtype, use_stress: bool, progress: bool) -> None:
    """Test ``ckpt`` on the test split (the validation split when there is no test split)."""
    frames = splits["test"] or splits["valid"]
    name = "test" if splits["test"] else "valid"
    if not frames:
        return
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
    _parity_plots(run_dir, name, frames, preds)
