"""PNG figures of a training run (matplotlib, Agg backend; no display needed).

- :func:`learning_curve` — losses and validation MAEs against the optimizer step, from ``metrics.csv``.
- :func:`parity_energy` — predicted vs reference energies (eV/atom when ``num_atoms`` is given).
- :func:`parity_forces` — predicted vs reference force components (eV/Å), coloured by element.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from ase.data import chemical_symbols


def _plt():
    import matplotlib  # slow to import; only runs that plot need it

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _read_csv(path: Union[str, Path]):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = {}
    for key in rows[0].keys() if rows else []:
        vals = []
        for r in rows:
            try:
                vals.append(float(r[key]) if r[key] not in ("", None) else np.nan)
            except ValueError:
                vals.append(np.nan)
        cols[key] = np.array(vals)
    return cols


def _log_panel(ax, c, series, ylabel: str) -> None:
    """The columns ``series`` ((key, label), ...) of ``c`` that hold numbers, against the step, log scale."""
    for key, label in series:
        if key in c and np.isfinite(c[key]).any():
            ax.plot(c["step"], c[key], marker="o", ms=3, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)


def learning_curve(csv_path: Union[str, Path], out_path: Union[str, Path]) -> Optional[Path]:
    """Two panels: train/valid loss (log), and validation energy-per-atom / force MAE (log)."""
    csv_path, out_path = Path(csv_path), Path(out_path)
    if not csv_path.exists():
        return None
    c = _read_csv(csv_path)
    if not c or len(c.get("step", [])) == 0:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    _log_panel(ax1, c, (("train_loss", "train loss"), ("valid_loss", "validation loss")), "loss")
    _log_panel(ax2, c, (("valid_energy_per_atom_mae", "E MAE (eV/atom)"), ("valid_forces_mae", "F MAE (eV/Å)"),
                        ("train_forces_mae", "train F MAE (eV/Å)")), "MAE")
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def _parity(ax, ref, pred):
    lo = float(min(np.min(ref), np.min(pred)))
    hi = float(max(np.max(ref), np.max(pred)))
    pad = 0.02 * (hi - lo + 1e-12)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")


def parity_energy(ref: np.ndarray, pred: np.ndarray, out_path: Union[str, Path],
                  num_atoms: Optional[np.ndarray] = None, title: str = "energies") -> Path:
    """Scatter of predicted vs reference energies, with MAE/RMSE in the legend."""
    plt = _plt()
    ref, pred = np.asarray(ref, float), np.asarray(pred, float)
    unit = "eV"
    if num_atoms is not None:
        ref, pred, unit = ref / num_atoms, pred / num_atoms, "eV/atom"
    err = pred - ref
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.scatter(ref, pred, s=8, alpha=0.7,
               label=f"MAE {np.mean(np.abs(err)):.3g} {unit}\nRMSE {np.sqrt(np.mean(err ** 2)):.3g} {unit}")
    _parity(ax, ref, pred)
    ax.set_xlabel(f"reference energy ({unit})")
    ax.set_ylabel(f"predicted energy ({unit})")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def parity_forces(ref: np.ndarray, pred: np.ndarray, out_path: Union[str, Path],
                  atomic_numbers: Optional[Sequence[int]] = None, title: str = "forces") -> Path:
    """Scatter of predicted vs reference force components [N,3], one colour per element."""
    plt = _plt()
    ref, pred = np.asarray(ref, float).reshape(-1, 3), np.asarray(pred, float).reshape(-1, 3)
    z = np.asarray(atomic_numbers if atomic_numbers is not None else np.zeros(len(ref), int))
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    for zz in np.unique(z):
        m = z == zz
        err = pred[m] - ref[m]
        name = chemical_symbols[int(zz)] if zz > 0 else "all"
        ax.scatter(ref[m].ravel(), pred[m].ravel(), s=4, alpha=0.5,
                   label=f"{name}: MAE {np.mean(np.abs(err)):.3g}, RMSE {np.sqrt(np.mean(err ** 2)):.3g}")
    _parity(ax, ref, pred)
    ax.set_xlabel("reference force component (eV/Å)")
    ax.set_ylabel("predicted force component (eV/Å)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=7, markerscale=3)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
