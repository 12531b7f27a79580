"""``so3krates evaluate``: energy/force errors of a model on a labelled data set, per element.

Units: energies eV (and eV/atom), forces eV/Å, stress eV/Å³.

:func:`evaluate_main` accepts a training checkpoint (``.ckpt``: evaluated in float64 with EMA
weights, batched) or an exported TorchScript model (``.pt``: evaluated frame by frame in the
file's dtype through its ``forward(positions, atomic_numbers, cell, pbc, total_charge,
num_unpaired_electrons, compute_forces, compute_stress)``). It prints energy MAE/RMSE (total and
per atom), force-component MAE/RMSE overall and per element, stress errors when the data have
stress, optionally writes the predictions to an extxyz (predicted ``energy``/``forces`` as the
calculator results, the references as ``info['ref_energy']`` / ``arrays['ref_forces']``) and
returns the metrics as a dict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .data import Frame, attach_neighbors, frames_to_atoms, read_frames

__all__ = ["evaluate_main", "evaluate_cli", "predict_frames", "error_metrics", "format_metrics",
           "add_evaluate_arguments"]


def _is_checkpoint(path: Path) -> bool:
    if path.suffix == ".ckpt":
        return True
    if path.suffix == ".pt":
        return False
    import zipfile

    # TorchScript archives carry code/ and extra/ entries; torch.save'd dicts only data.pkl
    try:
        with zipfile.ZipFile(path) as zf:
            return not any("/code/" in n or n.startswith("code/") for n in zf.namelist())
    except zipfile.BadZipFile:
        return True


def predict_frames(model_path: str, frames: Sequence[Frame], batch_size: int = 16, progress: bool = True,
                   dtype: Optional[torch.dtype] = None, device: str = "cpu") -> List[Dict[str, np.ndarray]]:
    """Predictions ``{"energy", "forces"[, "stress"]}`` for every frame (eV, eV/Å, eV/Å³)."""
    from tqdm.auto import tqdm

    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist; pass a .ckpt from `so3krates train` or a .pt "
                                "from `so3krates export`")
    want_stress = any(f.stress is not None and f.pbc.any() for f in frames)
    if _is_checkpoint(path):
        from ..checkpoint import model_from_checkpoint
        from .trainer import evaluate_frames

        dtype = dtype or torch.float64
        model = model_from_checkpoint(path, dtype=dtype).to(device=device)
        cfg = model.config
        long_range = bool(cfg.electrostatic_energy_bool or cfg.dispersion_energy_bool)
        attach_neighbors(frames, float(cfg.cutoff), cfg.cutoff_lr, long_range, progress=progress)
        _, preds = evaluate_frames(model, frames, batch_size, dtype, device, compute_stress=want_stress,
                                   progress=progress, desc="evaluate", return_predictions=True)
        return preds

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


def error_metrics(frames: Sequence[Frame], preds: Sequence[Dict[str, np.ndarray]]) -> Dict[str, Any]:
    """MAE/RMSE of energies (total, per atom), forces (overall and per element) and stress."""
    from ase.data import chemical_symbols

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
        from .data import _read_index_file

        if not Path(indices).exists():
            raise FileNotFoundError(f"index file {indices} does not exist")
        idx = _read_index_file(indices)
        if idx.size == 0:
            raise ValueError(f"index file {indices} is empty")
        if idx.min() < 0 or idx.max() >= len(frames):
            raise ValueError(f"index file {indices} has indices outside [0, {len(frames)}) of {data_path}")
        frames = [frames[int(i)] for i in idx]
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
        import ase.io
        from ase.calculators.singlepoint import SinglePointCalculator

        images = frames_to_atoms([_unlabelled(f) for f in frames])
        for a, f, p in zip(images, frames, preds):
            res = {"energy": p["energy"], "forces": p["forces"]}
            if "stress" in p:
                s = p["stress"]
                res["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
            if f.energy is not None:
                a.info["ref_energy"] = f.energy
            if f.forces is not None:
                a.arrays["ref_forces"] = f.forces.copy()
            a.calc = SinglePointCalculator(a, **res)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        ase.io.write(out, images, format="extxyz")
        Path(str(out) + ".metrics.json").write_text(json.dumps(metrics, indent=1))
        print(f"predictions written to {out}")
    return metrics


def _unlabelled(f: Frame) -> Frame:
    return Frame(positions=f.positions, atomic_numbers=f.atomic_numbers, cell=f.cell, pbc=f.pbc,
                 total_charge=f.total_charge, num_unpaired_electrons=f.num_unpaired_electrons)


def add_evaluate_arguments(parser) -> None:
    """Arguments of ``so3krates evaluate`` (for the CLI)."""
    parser.add_argument("model", help="exported model (.pt) or checkpoint (.ckpt)")
    parser.add_argument("data", help="extxyz (or anything ASE reads) or npz with reference energies/forces")
    parser.add_argument("-o", "--output", default=None, help="write predictions to this extxyz")
    parser.add_argument("--indices", default=None, metavar="FILE",
                        help="evaluate only these frames (index file .txt/.npy/.json, e.g. a test split)")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per batch for checkpoints (default 16)")


def evaluate_cli(args) -> Dict[str, Any]:
    """Run :func:`evaluate_main` from parsed :func:`add_evaluate_arguments` arguments."""
    return evaluate_main(args.model, args.data, args.output, batch_size=getattr(args, "batch_size", 16),
                         indices=getattr(args, "indices", None))
