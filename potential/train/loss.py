"""Predictions of a batch, the training loss and the error statistics behind the metrics.

Units: energies eV, forces eV/Å, stress eV/Å³. :func:`predict` runs the raw ``So3krates`` module
with autograd forces/stress; :func:`loss_and_metrics` gives the weighted MSE loss and summable error
statistics (sums and counts); :func:`accumulate` adds them up over batches and :func:`summarise`
turns the sums into MAE/RMSE columns (``<prefix>_energy_mae``, ``<prefix>_forces_rmse``, ...).
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch

from ..forces import autograd_gradients, strain
from .batch import Batch
from .frames import Frame

__all__ = ["predict", "loss_and_metrics", "accumulate", "summarise", "needs_stress"]


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


def _error_sums(key: str, d: torch.Tensor) -> Dict[str, float]:
    """``<key>_abs`` and ``<key>_sq``: sums of |d| and d² (counts are added by the caller)."""
    return {f"{key}_abs": d.abs().sum().item(), f"{key}_sq": d.pow(2).sum().item()}


def loss_and_metrics(
    pred: Dict[str, torch.Tensor], batch: Batch, weights: Dict[str, float], energy_loss: str = "per_atom"
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Weighted MSE loss and summable error statistics (sums, counts) of one batch."""
    loss = pred["energy"].sum() * 0.0
    stats: Dict[str, float] = {}
    n_at = batch.num_atoms.to(pred["energy"].dtype)
    me = batch.has_energy
    if me.any():
        de = (pred["energy"] - batch.energy)[me]
        dea = de / n_at[me]
        le = (dea if energy_loss == "per_atom" else de).pow(2).mean()
        loss = loss + float(weights.get("energy", 0.0)) * le
        stats.update(**_error_sums("e", de), **_error_sums("ea", dea), e_n=float(me.sum()))
    # forces (per atom) and stress (per graph): MSE over the components of the labelled frames
    for name, key, mask in (("forces", "f", batch.has_forces[batch.batch]), ("stress", "s", batch.has_stress)):
        if name in pred and mask.any():
            d = (pred[name] - getattr(batch, name))[mask]
            loss = loss + float(weights.get(name, 0.0)) * d.pow(2).mean()
            stats.update(_error_sums(key, d))
            stats[f"{key}_n"] = float(d.numel())
    return loss, stats


def accumulate(acc: Dict[str, float], stats: Dict[str, float]) -> None:
    """Add the statistics of one batch to ``acc`` (in place)."""
    for k, v in stats.items():
        acc[k] = acc.get(k, 0.0) + v


def summarise(acc: Dict[str, float], prefix: str) -> Dict[str, float]:
    """MAE/RMSE columns from accumulated statistics: ``<prefix>_{energy,energy_per_atom,forces,stress}_{mae,rmse}``."""
    out = {}
    for key, name in (("e", "energy"), ("ea", "energy_per_atom"), ("f", "forces"), ("s", "stress")):
        n = acc.get(f"{key if key != 'ea' else 'e'}_n", 0.0)
        if n > 0:
            out[f"{prefix}_{name}_mae"] = acc[f"{key}_abs"] / n
            out[f"{prefix}_{name}_rmse"] = math.sqrt(acc[f"{key}_sq"] / n)
    return out


def needs_stress(weights: Dict[str, float], frames: Sequence[Frame]) -> bool:
    """Whether training must compute the stress: a stress weight and periodic frames with stress labels."""
    return float(weights.get("stress", 0.0)) > 0 and any(f.stress is not None and f.pbc.any() for f in frames)
