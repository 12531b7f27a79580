"""Evaluation: a model's errors on labelled frames, in a training run and as ``so3krates evaluate``.

Units: energies eV (and eV/atom), forces eV/Å, stress eV/Å³.

- :func:`evaluate_frames` — loss and MAE/RMSE of an in-memory model on frames with neighbour lists
  (the trainer's validation and final test); :func:`make_eval_model` — its float64 copy of a model.
- :func:`predict_frames` — predictions of a model file: a training checkpoint (``.ckpt``: float64,
  EMA weights, batched) or an exported TorchScript model (``.pt``: frame by frame in the file's
  dtype through its ``forward(positions, atomic_numbers, cell, pbc, total_charge,
  num_unpaired_electrons, compute_forces, compute_stress)``).
- :func:`error_metrics` / :func:`format_metrics` — energy MAE/RMSE (total and per atom),
  force-component MAE/RMSE overall and per element, stress errors when the data have stress.
- :func:`evaluate_main` (``so3krates evaluate``) — prints the table, optionally writes the
  predictions to an extxyz (predicted ``energy``/``forces`` as the calculator results, the
  references as ``info['ref_energy']`` / ``arrays['ref_forces']``) and returns the metrics.
"""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols
from tqdm.auto import tqdm

from ..checkpoint import model_from_checkpoint
from .batch import Batch, BatchLoader
from .frames import Frame, frames_to_atoms, read_frames, stress_to_voigt
from .loss import accumulate, loss_and_metrics, predict, summarise
from .neighbor_lists import attach_model_neighbors
from .splits import read_index_file

__all__ = ["make_eval_model", "evaluate_frames", "predict_frames", "error_metrics", "format_metrics",
           "evaluate_main", "evaluate_cli"]


def make_eval_model(model: torch.nn.Module, dtype: torch.dtype = torch.float64,
                    device: Optional[str] = None) -> torch.nn.Module:
    """A copy of ``model`` for evaluation in ``dtype`` (float32 training, float64 evaluation).

    ``copy.deepcopy(model).to(float64)`` keeps the weights as trained (float32 values, exactly
    representable in float64) and rebuilds the constant buffers (radial-basis binomials, Lebedev
    grids, free-atom dispersion tables, ...) from their float64 originals (``ExactConstants`` in
    ``potential/nn/exact.py``), so the copy equals the trained weights loaded into a model built in
    float64. The per-element energy shifts are weights: they keep their float32 rounding (about 1e-6 eV
    per atom), exactly as in an exported float64 model. The original model is not touched."""
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()


def _split_predictions(p: Dict[str, torch.Tensor], batch: Batch) -> List[Dict[str, Any]]:
    """Per-frame ``{"energy", "forces"[, "stress"]}`` (float64 numpy) of one batch's predictions."""
    e = p["energy"].detach().cpu().double().numpy()
    f = p["forces"].detach().cpu().double().numpy() if "forces" in p else np.zeros((int(batch.num_atoms.sum()), 3))
    out, off = [], 0
    for b, n in enumerate(batch.num_atoms.tolist()):
        item = {"energy": float(e[b]), "forces": f[off : off + n]}
        if "stress" in p:
            item["stress"] = p["stress"][b].detach().cpu().double().numpy()
        out.append(item)
        off += n
    return out


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
        accumulate(acc, stats)
        if return_predictions:
            preds += _split_predictions(p, batch)
    model.train(was_training)
    res = {"loss": loss_sum / max(1, n_graph), **summarise(acc, "x")}
    res = {k.replace("x_", "", 1) if k.startswith("x_") else k: v for k, v in res.items()}
    if return_predictions:
        return res, preds
    return res


def _is_checkpoint(path: Path) -> bool:
    if path.suffix == ".ckpt":
        return True
    if path.suffix == ".pt":
        return False
    # TorchScript archives carry code/ and extra/ entries; torch.save'd dicts only data.pkl
    try:
        with zipfile.ZipFile(path) as zf:
            return not any("/code/" in n or n.startswith("code/") for n in zf.namelist())
    except zipfile.BadZipFile:
        return True


def _predict_checkpoint(path: Path, frames: Sequence[Frame], batch_size: int, progress: bool,
                        dtype: Optional[torch.dtype], device: str, want_stress: bool) -> List[Dict[str, Any]]:
    dtype = dtype or torch.float64
    model = model_from_checkpoint(path, dtype=dtype).to(device=device)
    attach_model_neighbors(frames, model.config.to_dict(), progress=progress)
    _, preds = evaluate_frames(model, frames, batch_size, dtype, device, compute_stress=want_stress,
                               progress=progress, desc="evaluate", return_predictions=True)
    return preds


def _predict_exported(path: Path, frames: Sequence[Frame], progress: bool, dtype: Optional[torch.dtype],
                      device: str, want_stress: bool) -> List[Dict[str, Any]]:
    # so3krates.export builds on so3krates.potential, not the other way round: only .pt files need it
    from so3krates.export.loader import load_exported

    module, meta = load_exported(path, device=device)
    mdtype = dtype or {"float32": torch.float32, "float64": torch.float64}.get(str(meta.get("dtype")), torch.float32)
    preds = []
    for f in tqdm(frames, desc="evaluate", disable=not progress, leave=False):
        pos = torch.tensor(f.positions, dtype=mdtype, device=device)
        out = module(pos, torch.tensor(f.atomic_numbers, dtype=torch.long, device=device),
                     torch.tensor(f.cell, dtype=mdtype, device=device),
                     torch.tensor(np.asarray(f.pbc, dtype=bool), device=device),
                     float(f.total_charge), float(f.num_unpaired_electrons), True,
                     bool(want_stress and f.pbc.any()))
        item = {"energy": float(out["energy"].detach().double().cpu()),
                "forces": out["forces"].detach().double().cpu().numpy()}
        if "stress" in out and f.pbc.any():
            item["stress"] = out["stress"].detach().double().cpu().numpy().reshape(3, 3)
        preds.append(item)
    return preds


def predict_frames(model_path: str, frames: Sequence[Frame], batch_size: int = 16, progress: bool = True,
                   dtype: Optional[torch.dtype] = None, device: str = "cpu") -> List[Dict[str, np.ndarray]]:
    """Predictions ``{"energy", "forces"[, "stress"]}`` for every frame (eV, eV/Å, eV/Å³)."""
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist; pass a .ckpt from `so3krates train` or a .pt "
                                "from `so3krates export`")
    want_stress = any(f.stress is not None and f.pbc.any() for f in frames)
    if _is_checkpoint(path):
        return _predict_checkpoint(path, frames, batch_size, progress, dtype, device, want_stress)
    return _predict_exported(path, frames, progress, dtype, device, want_stress)


def error_metrics(frames: Sequence[Frame], preds: Sequence[Dict[str, np.ndarray]]) -> Dict[str, Any]:
    """MAE/RMSE of energies (total, per atom), forces (overall and per element) and stress."""
    res: Dict[str, Any] = {"num_frames": len(frames), "num_atoms": int(sum(f.num_atoms for f in frames))}
    e = [(f.energy, p["energy"], f.num_atoms) for f, p in zip(frames, preds) if f.energy is not None]
    if e:
        ref, pred, n = (np.array(x, dtype=float) for x in zip(*e))
        de, dea = pred - ref, (pred - ref) / n
        res.update(energy_mae=float(np.mean(np.abs(de))), energy_rmse=float(np.sqrt(np.mean(de**2))),
                   energy_per_atom_mae=float(np.mean(np.abs(dea))),
                   energy_per_atom_rmse=float(np.sqrt(np.mean(dea**2))))
    fr = [(f, p) for f, p in zip(frames, preds) if f.forces is not None]
    if fr:
        df = np.concatenate([p["forces"] - f.forces for f, p in fr])
        z = np.concatenate([f.atomic_numbers for f, _ in fr])
        res.update(forces_mae=float(np.mean(np.abs(df))), forces_rmse=float(np.sqrt(np.mean(df**2))))
        per = {}
        for zz in np.unique(z):
            d = df[z == zz]
            per[chemical_symbols[int(zz)]] = {"Z": int(zz), "num_atoms": int(d.shape[0]),
                                              "forces_mae": float(np.mean(np.abs(d))),
                                              "forces_rmse": float(np.sqrt(np.mean(d**2)))}
        res["per_element"] = per
    st = [(f, p) for f, p in zip(frames, preds) if f.stress is not None and "stress" in p]
    if st:
        ds = np.stack([p["stress"] - f.stress for f, p in st])
        res.update(stress_mae=float(np.mean(np.abs(ds))), stress_rmse=float(np.sqrt(np.mean(ds**2))))
    return res


def format_metrics(m: Dict[str, Any]) -> str:
    """Human-readable table of :func:`error_metrics` output."""
    lines = [f"{m['num_frames']} frames, {m['num_atoms']} atoms"]
    if "energy_mae" in m:
        lines.append(f"energy          MAE {m['energy_mae']:.6f} eV   RMSE {m['energy_rmse']:.6f} eV")
        lines.append(f"energy/atom     MAE {1e3 * m['energy_per_atom_mae']:.4f} meV/atom   "
                     f"RMSE {1e3 * m['energy_per_atom_rmse']:.4f} meV/atom")
    if "forces_mae" in m:
        lines.append(f"forces          MAE {m['forces_mae']:.6f} eV/Å   RMSE {m['forces_rmse']:.6f} eV/Å")
        lines.append("per element (force components):")
        lines.append(f"  {'element':8s} {'atoms':>8s} {'MAE (eV/Å)':>12s} {'RMSE (eV/Å)':>12s}")
        for sym, d in sorted(m.get("per_element", {}).items(), key=lambda kv: kv[1]["Z"]):
            lines.append(f"  {sym:8s} {d['num_atoms']:8d} {d['forces_mae']:12.6f} {d['forces_rmse']:12.6f}")
    if "stress_mae" in m:
        lines.append(f"stress          MAE {m['stress_mae']:.6g} eV/Å³   RMSE {m['stress_rmse']:.6g} eV/Å³")
    return "\n".join(lines)


def _select(frames: List[Frame], indices: str, data_path: str) -> List[Frame]:
    """The frames named by an index file."""
    if not Path(indices).exists():
        raise FileNotFoundError(f"index file {indices} does not exist")
    idx = read_index_file(indices)
    if idx.size == 0:
        raise ValueError(f"index file {indices} is empty")
    if idx.min() < 0 or idx.max() >= len(frames):
        raise ValueError(f"index file {indices} has indices outside [0, {len(frames)}) of {data_path}")
    return [frames[int(i)] for i in idx]


def _unlabelled(f: Frame) -> Frame:
    return Frame(positions=f.positions, atomic_numbers=f.atomic_numbers, cell=f.cell, pbc=f.pbc,
                 total_charge=f.total_charge, num_unpaired_electrons=f.num_unpaired_electrons)


def _write_predictions(out: str, frames: Sequence[Frame], preds, metrics: Dict[str, Any]) -> None:
    """extxyz with the predictions as calculator results and the references in info/arrays, plus
    ``<out>.metrics.json``."""
    import ase.io  # about 1 s to import (all of ASE's formats); only -o needs it

    images = frames_to_atoms([_unlabelled(f) for f in frames])
    for a, f, p in zip(images, frames, preds):
        res = {"energy": p["energy"], "forces": p["forces"]}
        if "stress" in p:
            res["stress"] = stress_to_voigt(p["stress"])
        if f.energy is not None:
            a.info["ref_energy"] = f.energy
        if f.forces is not None:
            a.arrays["ref_forces"] = f.forces.copy()
        a.calc = SinglePointCalculator(a, **res)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(out, images, format="extxyz")
    Path(str(out) + ".metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"predictions written to {out}")


def evaluate_main(model_path: str, data_path: str, out: Optional[str] = None, batch_size: int = 16,
                  progress: bool = True, index: str = ":", indices: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate ``model_path`` (.ckpt or exported .pt) on ``data_path`` (extxyz / ASE / npz).

    ``indices``: an index file (``.txt``/``.npy``/``.json``, the format of ``data.index_files`` in a
    training config) selecting frames of ``data_path`` — e.g. the test split of a training run.

    Prints the metrics table, writes predictions to ``out`` (extxyz) when given (and the metrics
    next to it as ``<out>.metrics.json``), returns the metrics dict (keys ``energy_mae``,
    ``energy_rmse``, ``energy_per_atom_mae``, ``energy_per_atom_rmse``, ``forces_mae``, ``forces_rmse``,
    ``per_element`` {symbol: {Z, num_atoms, forces_mae, forces_rmse}}, ``stress_mae``, ...).
    """
    frames = read_frames(data_path, index=index)
    if not frames:
        raise ValueError(f"{data_path} holds no frames")
    if indices is not None:
        frames = _select(frames, indices, data_path)
    if not any(f.energy is not None or f.forces is not None for f in frames) and out is None:
        raise ValueError(f"{data_path} has no reference energies or forces; pass -o to just write predictions")
    preds = predict_frames(model_path, frames, batch_size=batch_size, progress=progress)
    metrics = error_metrics(frames, preds)
    metrics["model"] = str(model_path)
    metrics["data"] = str(data_path)
    if indices is not None:
        metrics["indices"] = str(indices)
    print(f"evaluate {model_path} on {data_path}" + (f" (frames of {indices})" if indices else ""))
    print(format_metrics(metrics))
    if out:
        _write_predictions(out, frames, preds, metrics)
    return metrics


def evaluate_cli(args) -> Dict[str, Any]:
    """Run :func:`evaluate_main` with the arguments of ``so3krates evaluate`` (so3krates/cli.py)."""
    return evaluate_main(args.model, args.data, args.output, batch_size=getattr(args, "batch_size", 16),
                         indices=getattr(args, "indices", None))
