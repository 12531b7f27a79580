"""Energy normalisation: per-element energy shifts (eV) and a common energy scale (eV/Å).

Both live in the model's weights (``energy_head.energy_offset`` and ``energy_head.atomic_scales``,
indexed by atomic number, potential/nn/readout.py), so a checkpoint is self-contained.

- :func:`fit_energy_shifts` — least squares ``E_m ≈ Σ_Z n_Z(m) · shift_Z`` (:func:`composition_matrix`).
- :func:`force_rms` — RMS force component of the training set, the energy scale.
- :func:`apply_normalization` — writes shifts and scale into the model.
- :func:`normalize` — what the ``normalization`` section of a training config asks for.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from ase.data import atomic_numbers as _atomic_numbers

from .evaluate import evaluate_frames, make_eval_model
from .frames import Frame, element_species

__all__ = ["composition_matrix", "fit_energy_shifts", "force_rms", "apply_normalization", "normalize"]


def composition_matrix(frames: Sequence[Frame], species: Sequence[int]) -> np.ndarray:
    """[M, S] counts of each species (``species`` = sorted atomic numbers) per frame."""
    lookup = {int(z): k for k, z in enumerate(species)}
    a = np.zeros((len(frames), len(species)))
    for m, f in enumerate(frames):
        for z, c in zip(*np.unique(f.atomic_numbers, return_counts=True)):
            a[m, lookup[int(z)]] = c
    return a


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


def apply_normalization(model: torch.nn.Module, energy_shifts: Optional[Dict[int, float]],
                        force_scale: Optional[float]) -> None:
    """Write per-element energy shifts (eV, indexed by atomic number) and a common energy scale
    (eV/Å: the RMS force) into the model's per-type shift/scale tensors, so the weights alone
    reproduce the normalisation."""
    head = model.energy_head
    with torch.no_grad():
        for z, v in (energy_shifts or {}).items():
            head.energy_offset.view(-1)[int(z)] = float(v)
        if force_scale is not None:
            head.atomic_scales.fill_(float(force_scale))


def _residual_shifts(model: torch.nn.Module, frames: Sequence[Frame], species, device: str,
                     progress: bool) -> Optional[Dict[int, float]]:
    """Shifts that absorb the mean per-element error of the current model (fine-tuning onto a
    different reference level), added to the model's existing offsets."""
    labelled = [f for f in frames if f.energy is not None]
    if not labelled:
        return None
    _, preds = evaluate_frames(make_eval_model(model, torch.float64, device), labelled, 16, torch.float64, device,
                               compute_forces=False, progress=progress, desc="residual shifts",
                               return_predictions=True)
    resid = [Frame(positions=f.positions, atomic_numbers=f.atomic_numbers, energy=f.energy - p["energy"])
             for f, p in zip(labelled, preds)]
    delta = fit_energy_shifts(resid, species)
    base = model.energy_head.energy_offset.detach().double().cpu().view(-1)
    mae = float(np.mean([abs(r.energy) for r in resid]))
    print(f"[train] residual energy shifts fitted (mean |E_ref - E_model| before: {mae:.4g} eV)")
    return {z: float(base[z]) + d for z, d in delta.items()}


def _energy_shifts(mode, model, frames: Sequence[Frame], device: str, progress: bool) -> Optional[Dict[int, float]]:
    if isinstance(mode, dict):
        return {int(_atomic_numbers.get(str(k), k)): float(v) for k, v in mode.items()}
    if mode == "fit":
        return fit_energy_shifts(frames, element_species(frames))
    if mode == "fit_residual":
        return _residual_shifts(model, frames, element_species(frames), device, progress)
    if mode in ("keep", "none", None):
        return None
    raise ValueError(f"normalization.energy_shifts={mode!r} is unknown; use auto, fit, fit_residual, keep, "
                     "none or a mapping {element: eV}")


def _force_scale(mode, frames: Sequence[Frame]) -> Optional[float]:
    if mode == "fit":
        return force_rms(frames)
    if isinstance(mode, (int, float)) and not isinstance(mode, bool):
        return float(mode)
    if mode in ("keep", "none", None):
        return None
    raise ValueError(f"normalization.force_scale={mode!r} is unknown; use auto, fit, keep, none or a number (eV/Å)")


def normalize(model: torch.nn.Module, norm_cfg: Dict[str, Any], train_frames: Sequence[Frame], fine_tune: bool,
              device: str, progress: bool, normalization: Dict[str, Any]) -> Dict[str, Any]:
    """Fit/apply the per-element energy shifts and the energy scale (the ``normalization`` config
    section; ``auto`` fits from scratch and, when ``fine_tune``, fits residual shifts and keeps the
    scale); returns ``normalization`` updated: the record stored in the checkpoints."""
    normalization = dict(normalization)
    shifts_mode = norm_cfg.get("energy_shifts", "auto")
    scale_mode = norm_cfg.get("force_scale", "auto")
    if shifts_mode == "auto":
        shifts_mode = "fit_residual" if fine_tune else "fit"
    if scale_mode == "auto":
        scale_mode = "keep" if fine_tune else "fit"
    shifts = _energy_shifts(shifts_mode, model, train_frames, device, progress)
    scale = _force_scale(scale_mode, train_frames)
    apply_normalization(model, shifts, scale)
    if shifts is not None:
        normalization["energy_shifts"] = shifts
    if scale is not None:
        normalization["force_scale"] = scale
    if shifts:
        print("[train] energy shifts (eV): " + ", ".join(f"Z={z}: {v:.6g}" for z, v in sorted(shifts.items()))
              + (f"; energy scale (RMS force) {scale:.4g} eV/Å" if scale else ""))
    return normalization
