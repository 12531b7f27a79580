#!/usr/bin/env python
"""Plot temperature and energy traces of a long MD run from its OpenMM StateDataReporter CSV.

    python examples/gems/plot_stability.py runs/stability_mixed/log.csv -o examples/gems/results/stability_mixed.png

Works with the logs of examples/openmm/run_peptide.py (log.csv) and examples/gems/*.py
(openmm_log.csv). Prints the mean and spread of the temperature over the second half and the
drift of the potential energy (linear fit), so a blow-up or a heating run is visible at once.
Units: ps, K, kJ/mol (as OpenMM writes them) and eV on the plot.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

KJ_PER_EV = 96.48533212331002


def read_log(path: Path) -> dict:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise SystemExit(f"error: {path} has no data rows")
    key = {k.lstrip('#"').strip('"'): k for k in rows[0]}

    def col(name):
        return np.array([float(r[key[name]]) for r in rows]) if name in key else None

    out = {"time_ps": col("Time (ps)"), "temperature_K": col("Temperature (K)"),
           "potential_eV": col("Potential Energy (kJ/mole)") / KJ_PER_EV}
    ke = col("Kinetic Energy (kJ/mole)")
    if ke is not None:
        out["total_eV"] = out["potential_eV"] + ke / KJ_PER_EV
    if out["time_ps"] is None:
        raise SystemExit(f"error: {path} has no 'Time (ps)' column (StateDataReporter time=True)")
    return out


def stats(log: dict) -> dict:
    t, temp, pe = log["time_ps"], log["temperature_K"], log["potential_eV"]
    half = len(t) // 2
    slope = float(np.polyfit(t[half:], pe[half:], 1)[0]) if len(t) - half >= 2 else float("nan")
    return {"duration_ps": float(t[-1] - t[0]), "frames": int(len(t)),
            "temperature_mean_K": float(temp[half:].mean()), "temperature_std_K": float(temp[half:].std()),
            "potential_drift_eV_per_ps_2nd_half": slope, "finite": bool(np.isfinite(pe).all() and np.isfinite(temp).all())}


def plot(log: dict, title: str, output: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    a1.plot(log["time_ps"], log["temperature_K"], lw=0.8)
    a1.set_ylabel("temperature (K)")
    a2.plot(log["time_ps"], log["potential_eV"], lw=0.8, label="potential")
    if "total_eV" in log:
        a2.plot(log["time_ps"], log["total_eV"], lw=0.8, label="potential + kinetic")
    a2.set_ylabel("energy (eV)")
    a2.set_xlabel("time (ps)")
    a2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", help="StateDataReporter CSV")
    p.add_argument("-o", "--output", required=True, help="PNG to write (a .json with the statistics goes beside it)")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    log = read_log(Path(args.log))
    s = stats(log)
    out = Path(args.output)
    plot(log, args.title or Path(args.log).parent.name, out)
    out.with_suffix(".json").write_text(json.dumps(s, indent=1))
    print(f"{args.log}: {s['duration_ps']:.1f} ps, T = {s['temperature_mean_K']:.1f} ± {s['temperature_std_K']:.1f} K "
          f"(2nd half), potential drift {s['potential_drift_eV_per_ps_2nd_half']:.3g} eV/ps, finite {s['finite']}; "
          f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
