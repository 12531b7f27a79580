"""``metrics.csv`` of a run: one row per validation (step, learning rate, train and valid errors)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict

__all__ = ["CSV_FIELDS", "append_row", "truncate_after"]

CSV_FIELDS = [
    "step", "epoch", "lr", "time_s", "train_loss", "train_energy_mae", "train_energy_per_atom_mae",
    "train_forces_mae", "train_forces_rmse", "valid_loss", "valid_energy_mae", "valid_energy_rmse",
    "valid_energy_per_atom_mae", "valid_energy_per_atom_rmse", "valid_forces_mae", "valid_forces_rmse",
    "valid_stress_mae", "best_valid_loss", "budget_used_s",
]


def append_row(path: Path, row: Dict[str, Any]) -> None:
    """Append ``row`` (missing columns empty, extra keys dropped); writes the header of a new file."""
    new = not path.exists()
    fields = CSV_FIELDS
    if not new:  # keep the columns of an existing file (a run started by an older version)
        with open(path, newline="") as fh:
            fields = next(csv.reader(fh), None) or CSV_FIELDS
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})


def truncate_after(path: Path, step: int) -> None:
    """On resume, drop rows written after the checkpoint's step (a crash between saves)."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if int(float(r["step"])) <= step]
    if len(keep) != len(rows):
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(keep)
