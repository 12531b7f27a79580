"""Traces of whole-box MD runs as PNG + JSON (the stability evidence of issue #15).

Reads the ``log.csv`` and ``summary.json`` of MD runs written by ``active_learning.py md`` and writes

- ``<prefix>.png``: per NVT run the instantaneous temperature, its 1-ps block means (and the judged 5-ps means of
  a final-check run's last window), the run's target
  (its summary's ``temperature``, else ``--target``) ± ``window`` K band and the judged window (the last ``last_ps`` ps) shaded; per NVE run the total
  energy per atom (meV/atom, relative to its first value) with the linear fit whose slope is the drift;
- ``<prefix>.json``: per run the summary (failure, stable ps, temperature statistics, NVE drift), the
  1-ps block means and the full logged series (time ps, temperature K, total energy eV), plus the
  commands that made the runs where given.

    python examples/data/md_traces.py --run "seed 1=build/al/round_03/final/nvt_s1" \\
        --run "NVE=build/al/round_03/final/nve" --out examples/gems/results/whole_box_final

Units: ps, K, eV (JSON), meV/atom (plot).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np


def read_run(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    log = run_dir / "log.csv"
    if not log.exists():
        raise SystemExit(f"{run_dir}: no log.csv (not an MD run of active_learning.py md?)")
    with open(log) as fh:
        rows = list(csv.DictReader(fh))
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    t = np.array([float(r["time_ps"]) for r in rows])
    return {"dir": str(run_dir), "summary": summary, "time_ps": t,
            "temperature_K": np.array([float(r["temperature_K"]) for r in rows]),
            "total_eV": np.array([float(r["total_eV"]) for r in rows])}


def block_means(t: np.ndarray, y: np.ndarray, block_ps: float = 1.0, start_ps: float = 0.0) -> list:
    """(block end ps, mean) of consecutive ``block_ps`` blocks from ``start_ps`` (complete blocks only); the
    one block average of the loop's stability judgement (``active_learning.block_means``) and of the plots."""
    t, y = np.asarray(t), np.asarray(y)
    out, b = [], float(start_ps)
    while len(t) and b + block_ps <= t[-1] + 1e-9:
        m = (t > b + 1e-9) & (t <= b + block_ps + 1e-9)
        if m.any():
            out.append((round(b + block_ps, 6), float(y[m].mean())))
        b += block_ps
    return out


def write_traces(runs: Dict[str, Path], prefix: Path, target_K: float = 300.0, window_K: float = 15.0,
                 last_ps: float = 40.0, title: str = "", commands: Optional[Dict[str, str]] = None) -> dict:
    """PNG + JSON of the runs (label -> run folder); returns the JSON content."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    data = {label: read_run(d) for label, d in runs.items()}
    fig, axes = plt.subplots(len(data), 1, figsize=(9, 2.6 * len(data)), squeeze=False)
    out = {"title": title, "target_K": target_K, "window_K": window_K, "last_ps": last_ps, "runs": {}}
    for ax, (label, r) in zip(axes[:, 0], data.items()):
        s, t = r["summary"], r["time_ps"]
        n = s.get("atoms") or 1
        nve = s.get("mode") == "nve"
        entry = {"dir": r["dir"], "summary": s, "series": {"time_ps": t.round(4).tolist(),
                                                            "temperature_K": r["temperature_K"].round(3).tolist(),
                                                            "total_eV": r["total_eV"].round(6).tolist()}}
        if nve:
            e = 1000.0 * (r["total_eV"] - r["total_eV"][0]) / n
            ax.plot(t, e, lw=0.8, label="total energy")
            if len(t) > 2:
                k, c = np.polyfit(t, e, 1)
                ax.plot(t, k * t + c, "k--", lw=1, label=f"fit: drift {k:+.3f} meV/atom/ps")
            ax.set_ylabel("E - E(0)\n(meV/atom)")
        else:
            t0 = float(s.get("temperature") or target_K)  # the run's own target, else the given one
            blocks = block_means(t, r["temperature_K"])
            entry["T_block_means_K"] = blocks
            ax.plot(t, r["temperature_K"], lw=0.5, alpha=0.6, label="T (instantaneous)")
            if blocks:
                ax.plot([b[0] - 0.5 for b in blocks], [b[1] for b in blocks], "o-", ms=3, lw=1, label="1-ps means")
            judged = s.get("T_last_block_ps")  # the block length of the run's stability judgement (final check)
            if judged and judged != 1.0 and len(t):
                jb = block_means(t, r["temperature_K"], judged, max(0.0, t[-1] - last_ps))
                entry[f"T_last_{judged:g}ps_means_K"] = jb
                if jb:
                    ax.plot([b[0] - judged / 2 for b in jb], [b[1] for b in jb], "s-", ms=5, lw=1.5, color="black",
                            label=f"{judged:g}-ps means (judged)")
            ax.axhspan(t0 - window_K, t0 + window_K, color="green", alpha=0.12, label=f"{t0:.0f} ± {window_K:.0f} K")
            if len(t) and t[-1] > 0:
                ax.axvspan(max(0.0, t[-1] - last_ps), t[-1], color="grey", alpha=0.08, label=f"last {last_ps:g} ps")
            if s.get("failed"):
                f = s.get("failure") or {}
                ax.axvline(f.get("time_ps", t[-1] if len(t) else 0), color="red", lw=1,
                           label="failure: " + str(f.get("reason", "?"))[:40])
            ax.set_ylabel("T (K)")
        if commands and label in commands:
            entry["command"] = commands[label]
        verdict = ("failed" if s.get("failed") else
                   f"drift {s.get('nve_drift_meV_per_atom_ps', float('nan')):+.3f} meV/atom/ps" if nve else
                   (f"{s.get('T_last_block_ps', 1.0):g}-ps means of the last window "
                    + ("within the band" if s.get("T_last_blocks_within") else "outside the band or window incomplete")))
        ax.set_title(f"{label}: {s.get('duration_ps', t[-1] if len(t) else 0):.1f} ps, {verdict}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right", ncol=3)
        out["runs"][label] = entry
    axes[-1, 0].set_xlabel("time (ps)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(str(prefix.with_suffix(".png")), dpi=110)
    plt.close(fig)
    prefix.with_suffix(".json").write_text(json.dumps(out, indent=1, default=float))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=DIR",
                   help="an MD run folder (log.csv, summary.json) and its label; repeat")
    p.add_argument("--out", required=True, help="path prefix: <out>.png and <out>.json")
    p.add_argument("--target", type=float, default=300.0, help="K")
    p.add_argument("--window", type=float, default=15.0, help="K")
    p.add_argument("--last-ps", type=float, default=40.0)
    p.add_argument("--title", default="")
    a = p.parse_args(argv)
    runs = {}
    for x in a.run:
        if "=" not in x:
            raise SystemExit(f"--run {x!r}: expected LABEL=DIR")
        label, d = x.split("=", 1)
        runs[label] = Path(d)
    write_traces(runs, Path(a.out), a.target, a.window, a.last_ps, a.title)
    print(f"wrote {a.out}.png and {a.out}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
