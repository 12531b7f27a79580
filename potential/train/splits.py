"""Train/valid/test splits of a data set.

:func:`split_indices` — seeded random split by fractions or counts, or index files
(:func:`read_index_file`: ``.txt``/``.npy``/``.json``, 0-based, file order).
:func:`split_by_trajectory` — held-out time blocks: the last part of every trajectory (by the
``frame_id`` labels of the project's data) is the test set, with a gap to the training frames.
:func:`load_splits` — the frames of each split as the ``data`` section of a training config asks.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .frames import Frame, read_frames

__all__ = ["read_index_file", "split_indices", "split_by_trajectory", "load_splits"]


def read_index_file(path: Union[str, Path]) -> np.ndarray:
    """Frame indices from a ``.npy``, ``.json`` or whitespace-separated text file."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path).astype(np.int64).reshape(-1)
    if path.suffix == ".json":
        return np.asarray(json.loads(path.read_text()), dtype=np.int64).reshape(-1)
    return np.loadtxt(path, dtype=np.int64, ndmin=1).reshape(-1)


def _from_index_files(num_frames: int, index_files: Dict[str, Union[str, Path, None]]) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for key, p in index_files.items():
        if p is None:
            continue
        idx = read_index_file(p)
        if idx.size and (idx.min() < 0 or idx.max() >= num_frames):
            raise ValueError(f"index file {p} has indices outside [0, {num_frames})")
        out[key] = idx
    return out


def split_indices(
    num_frames: int,
    train: Union[float, int, None] = 0.8,
    valid: Union[float, int, None] = 0.1,
    test: Union[float, int, None] = None,
    seed: int = 0,
    index_files: Optional[Dict[str, Union[str, Path]]] = None,
) -> Dict[str, np.ndarray]:
    """Split ``range(num_frames)`` into train/valid/test index arrays.

    ``train``/``valid``/``test`` are fractions (float ≤ 1) or counts (int); ``test=None`` takes
    the rest. The permutation is ``numpy.random.default_rng(seed)``. ``index_files`` maps split
    names to ``.txt``/``.npy``/``.json`` index files and overrides the random split for those keys.
    """
    out = _from_index_files(num_frames, dict(index_files or {}))
    if "train" in out:
        for key in ("valid", "test"):
            out.setdefault(key, np.zeros(0, dtype=np.int64))
        return out

    def count(x) -> int:
        if x is None:
            return 0
        if isinstance(x, float) and x <= 1.0:
            return int(math.floor(x * num_frames + 1e-9))
        return int(x)

    perm = np.random.default_rng(seed).permutation(num_frames)
    n_train, n_valid = count(train), count(valid)
    n_test = num_frames - n_train - n_valid if test is None else count(test)
    if n_train <= 0:
        raise ValueError(f"training split is empty ({num_frames} frames, train={train}); use more data or a larger fraction")
    if n_train + n_valid + n_test > num_frames:
        raise ValueError(
            f"split train={n_train} + valid={n_valid} + test={n_test} exceeds the {num_frames} frames; reduce the fractions"
        )
    out["train"] = perm[:n_train]
    out["valid"] = perm[n_train : n_train + n_valid]
    out["test"] = perm[n_train + n_valid : n_train + n_valid + n_test]
    return out


_TIME_POINT = re.compile(r"^[fs]\d+$")


def _series_time_points(frame_ids: Sequence[str]):
    """``{series: {time point: [frame index]}}`` and the frames without a time point."""
    series: Dict[str, Dict[str, List[int]]] = {}
    loose: List[int] = []
    for k, fid in enumerate(frame_ids):
        parts = str(fid).split("/")
        pos = [i for i, p in enumerate(parts) if _TIME_POINT.match(p)]
        if not pos:
            loose.append(k)
            continue
        key, time_point = "/".join(parts[: pos[-1]]), parts[pos[-1]]
        series.setdefault(key, {}).setdefault(time_point, []).append(k)
    return series, loose


def split_by_trajectory(
    frame_ids: Sequence[str], valid: float = 0.05, test: float = 0.10, gap: int = 1, min_points: int = 8
) -> Dict[str, np.ndarray]:
    """Train/valid/test indices that hold out the *end of every trajectory* instead of random frames.

    Frames 50 fs apart in one MD trajectory are nearly copies of each other, so a random split
    measures interpolation between neighbours. Here every ``frame_id`` ``a/b/.../<time point>`` is
    read as a series (everything before the last component that looks like ``f00012`` — an MD frame —
    or ``s003`` — a snapshot whose cut-outs ``c...`` share one time point) and a time point. In each
    series with at least ``min_points`` time points, the last ``test`` fraction of the time points
    (at least one) goes to test, the ``valid`` fraction before it to validation, and ``gap`` time
    points before each held-out block are dropped; all the rest is training. Frames whose id has no
    time point, and short series, are training frames. Returns ``{"train", "valid", "test", "dropped"}``
    index arrays into ``frame_ids``.
    """
    series, loose = _series_time_points(frame_ids)
    out: Dict[str, List[int]] = {"train": list(loose), "valid": [], "test": [], "dropped": []}
    for key in sorted(series):
        points = [series[key][tp] for tp in sorted(series[key])]
        n = len(points)
        if n < min_points:
            out["train"] += [i for p in points for i in p]
            continue
        n_test = max(1, int(round(test * n)))
        n_valid = max(1, int(round(valid * n))) if valid > 0 else 0
        end_train = n - n_test - n_valid - (2 * gap if n_valid else gap)
        if end_train < 1:
            raise ValueError(f"series {key!r} has {n} time points: too few for valid={valid}, test={test}, gap={gap}")
        labels = ["train"] * end_train + ["dropped"] * gap
        if n_valid:
            labels += ["valid"] * n_valid + ["dropped"] * gap
        labels += ["test"] * n_test
        for lab, p in zip(labels, points):
            out[lab] += p
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in out.items()}


def load_splits(data: Dict[str, Any]) -> Dict[str, List[Frame]]:
    """Read the files of a config's ``data`` section and split them: ``{"train", "valid", "test"}``
    frame lists (``valid_path``/``test_path`` files replace the random valid/test splits)."""
    keys = {k: data[k] for k in ("energy_key", "forces_key", "stress_key", "charge_key")}
    paths = data["path"] if isinstance(data["path"], list) else [data["path"]]
    frames = [f for path in paths for f in read_frames(path, index=data.get("index", ":"), **keys)]
    sp = dict(data.get("split") or {})
    if data.get("valid_path"):
        sp["valid"] = 0
    if data.get("test_path"):
        sp["test"] = 0
    idx = split_indices(len(frames), train=sp.get("train", 0.8), valid=sp.get("valid", 0.1), test=sp.get("test"),
                        seed=int(sp.get("seed", 0)), index_files=data.get("index_files"))
    out = {k: [frames[i] for i in v] for k, v in idx.items()}
    if data.get("valid_path"):
        out["valid"] = read_frames(data["valid_path"], **keys)
    if data.get("test_path"):
        out["test"] = read_frames(data["test_path"], **keys)
    for k in ("train", "valid", "test"):
        out.setdefault(k, [])
    return out
