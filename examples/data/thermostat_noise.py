#!/usr/bin/env python
"""How much the temperature of a box scatters with exact forces: the control of the final check's judgement.

Runs the active-learning loop's box (``--box main``: Ac-Ala3-NHMe + 214 waters, 684 atoms) with a classical
force field (amber14 + flexible TIP3P, PME 0.9 nm or 0.49 × the box, no constraints -- exact, conservative forces) and the
loop's integrator (LangevinMiddleIntegrator, ``--dt`` fs, 1/ps, ``--temperature`` K) for ``--ps`` ps after
3 ps of equilibration, logs T every 100 fs (dof 3N - 3, as ``active_learning.py md``) and prints the mean and
the scatter of block means of 1, 2 and 5 ps, and how many blocks leave ±``--window`` K:

    OMP_NUM_THREADS=1 python examples/data/thermostat_noise.py --ps 40        # ~1.5 min on one core

Measured 2026-12-08 (40 ps, 1 fs): mean 302.2 K, 1-ps means σ 5.0 K (291.2–312.8 K): why the final check
judges 5-ps means (docs/training.md). ``--json`` writes the numbers. Units: K, ps, fs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "examples" / "openmm"))

KB_KJ = 0.0083144626  # kJ/mol/K


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--box", default="main", choices=["main", "small"])
    p.add_argument("--ps", type=float, default=40.0, help="production length (ps), after 3 ps of equilibration")
    p.add_argument("--dt", type=float, default=1.0, help="time step (fs)")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--window", type=float, default=15.0, help="K")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--equil-ps", type=float, default=3.0)
    p.add_argument("--json", default=None, help="write the numbers here")
    a = p.parse_args(argv)
    import openmm
    from openmm import app, unit
    from active_learning import block_means, build_box
    top, pos = build_box(a.box)
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    box_nm = min(float(np.linalg.norm(list(v))) for v in top.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    cutoff_nm = min(0.9, 0.49 * box_nm)  # (the ~300-atom box is 1.6 nm wide)
    system = ff.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=cutoff_nm * unit.nanometer,
                             constraints=None, rigidWater=False)
    integ = openmm.LangevinMiddleIntegrator(a.temperature * unit.kelvin, 1 / unit.picosecond, a.dt * unit.femtosecond)
    integ.setRandomNumberSeed(a.seed)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    ctx.setPositions(pos)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10, 100)
    ctx.setVelocitiesToTemperature(a.temperature * unit.kelvin, a.seed)
    dof = 3 * top.getNumAtoms() - 3
    every = max(1, int(round(100.0 / a.dt)))
    integ.step(int(round(a.equil_ps * 1000.0 / a.dt)))
    t, temps = [], []
    for k in range(int(round(a.ps * 1000.0 / a.dt)) // every):
        integ.step(every)
        ke = ctx.getState(getEnergy=True).getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        t.append((k + 1) * every * a.dt / 1000.0)
        temps.append(2.0 * ke / (dof * KB_KJ))
    t, temps = np.array(t), np.array(temps)
    res = {"box": a.box, "atoms": top.getNumAtoms(), "dt_fs": a.dt, "ps": a.ps, "target_K": a.temperature,
           "mean_K": float(temps.mean()), "instantaneous_std_K": float(temps.std()), "blocks": {}}
    print(f"{a.box} box, {res['atoms']} atoms, amber14 + flexible TIP3P, LangevinMiddle {a.dt:g} fs 1/ps, "
          f"{a.ps:g} ps: mean T {res['mean_K']:.2f} K, instantaneous σ {res['instantaneous_std_K']:.2f} K")
    for block in (1.0, 2.0, 5.0):
        b = np.array(block_means(t, temps, block, 0.0))
        if len(b) < 2:
            continue
        out = int(np.sum(np.abs(b - a.temperature) > a.window))
        res["blocks"][f"{block:g}ps"] = {"n": len(b), "std_K": float(b.std()), "min_K": float(b.min()),
                                         "max_K": float(b.max()), "outside_window": out}
        print(f"  {block:g}-ps means: n {len(b)}, σ {b.std():.2f} K, {b.min():.1f}–{b.max():.1f} K, "
              f"outside {a.temperature:g} ± {a.window:g} K: {out}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
