#!/usr/bin/env python
"""Ace-Ala3-Nme in a TIP3P water box with a so3krates model in OpenMM.

    python examples/openmm/run_peptide.py --steps 10000                  # the shipped model
    python examples/openmm/run_peptide.py --model model.pt --ml-region all  # any exported model

The peptide is built from ideal internal coordinates (examples/openmm/peptide.py), protonated
and solvated with OpenMM's Modeller (amber14 + TIP3P). ``--ml-region peptide`` (default) models
the peptide's internal energy with the ML model and everything else (water, peptide–water) with
amber14/TIP3P + PME via openmm-ml's ``createMixedSystem``; ``--ml-region all`` models the whole
box with the ML model (what SO3LR is made for; needs a model that knows water).
The system is minimised, equilibrated briefly at high friction, then run with a
LangevinMiddleIntegrator. Output in ``--out``:
``trajectory.dcd``, ``topology.pdb``, ``log.csv`` (StateDataReporter with progress) and
``summary.json`` (temperatures, finite check, speed).

``--model`` defaults to the project's shipped model (examples/models/so3krates_demo.pt).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import so3krates.openmm  # noqa: F401  (imports torch first: OpenMM's Torch plugin needs it)
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
from openmmml import MLPotential

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peptide import build_peptide, solvate  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "models" / "so3krates_demo.pt"),
                   help="exported so3krates model (default: the shipped examples/models/so3krates_demo.pt)")
    p.add_argument("--steps", type=int, default=5000, help="MD steps (default 5000)")
    p.add_argument("--report-interval", type=int, default=100, help="steps between reports")
    p.add_argument("--timestep", type=float, default=None,
                   help="fs (default 1.0 for --ml-region peptide, 0.5 for all)")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--equilibration-steps", type=int, default=500,
                   help="unreported steps at friction 10/ps after minimisation (default 500)")
    p.add_argument("--box", type=float, default=None, help="cubic box edge in nm (default: 0.8 nm padding)")
    p.add_argument("--n-ala", type=int, default=3, help="number of alanines (default 3)")
    p.add_argument("--ml-region", choices=["peptide", "all"], default="peptide")
    p.add_argument("--implementation", choices=["torch", "python"], default="torch",
                   help="openmmtorch.TorchForce or openmm.PythonForce")
    p.add_argument("--dtype", choices=["float64", "float32"], default=None,
                   help="model precision (default: the dtype the file was exported in; float32 for the shipped model)")
    p.add_argument("--platform", default=None, help="OpenMM platform (default: fastest available)")
    p.add_argument("--minimize-iterations", type=int, default=500, help="L-BFGS iterations before MD (0: none)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="runs/openmm_peptide", help="output directory")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timestep = args.timestep or (1.0 if args.ml_region == "peptide" else 0.5)

    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    top, pos = build_peptide(args.n_ala, "ppii", forcefield)
    top, pos = solvate(top, pos, forcefield, box_nm=args.box)
    ml_atoms = [a.index for a in top.atoms() if a.residue.name != "HOH"]
    box_edge = top.getPeriodicBoxVectors()[0][0].value_in_unit(unit.nanometer)
    print(f"system: Ace-Ala{args.n_ala}-Nme ({len(ml_atoms)} atoms) + "
          f"{sum(1 for r in top.residues() if r.name == 'HOH')} TIP3P waters = {top.getNumAtoms()} atoms, "
          f"box {box_edge:.3f} nm")

    dtype = args.dtype or so3krates.openmm.load_model(args.model)[1].get("dtype", "float64")
    potential = MLPotential("so3krates", modelPath=args.model, dtype=dtype,
                            implementation=args.implementation)
    if args.ml_region == "peptide":
        cutoff = min(0.9, 0.5 * box_edge - 0.05)
        mm = forcefield.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=cutoff * unit.nanometer,
                                     constraints=app.HBonds, rigidWater=True)
        system = potential.createMixedSystem(top, mm, ml_atoms)
    else:
        system = potential.createSystem(top)
    integrator = openmm.LangevinMiddleIntegrator(args.temperature * unit.kelvin, args.friction / unit.picosecond,
                                                 timestep * unit.femtosecond)
    integrator.setRandomNumberSeed(args.seed)
    kw = {}
    if args.platform:
        kw["platform"] = openmm.Platform.getPlatformByName(args.platform)
    simulation = app.Simulation(top, system, integrator, **kw)
    simulation.context.setPositions(pos)
    print(f"platform: {simulation.context.getPlatform().getName()}; ML region: {args.ml_region} "
          f"({args.implementation} force, {dtype}); timestep {timestep} fs")

    e0 = simulation.context.getState(getEnergy=True).getPotentialEnergy()
    if args.minimize_iterations > 0:  # OpenMM reads maxIterations=0 as "no limit": 0 here means none
        simulation.minimizeEnergy(maxIterations=args.minimize_iterations)
    state = simulation.context.getState(getEnergy=True, getPositions=True)
    print(f"minimised ({args.minimize_iterations} iterations at most): {e0.value_in_unit(unit.kilojoule_per_mole):.1f} -> "
          f"{state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole):.1f} kJ/mol")
    with open(out / "topology.pdb", "w") as fh:
        app.PDBFile.writeFile(top, state.getPositions(), fh)
    simulation.context.setVelocitiesToTemperature(args.temperature * unit.kelvin, args.seed)
    if args.equilibration_steps > 0:
        # after minimisation kinetic energy flows into the potential: reheat quickly, then produce
        integrator.setFriction(10.0 / unit.picosecond)
        simulation.step(args.equilibration_steps)
        integrator.setFriction(args.friction / unit.picosecond)
        simulation.currentStep = 0
        print(f"equilibrated {args.equilibration_steps} steps at friction 10/ps")

    interval = max(1, min(args.report_interval, args.steps))
    simulation.reporters.append(app.DCDReporter(str(out / "trajectory.dcd"), interval))
    log = out / "log.csv"
    simulation.reporters.append(app.StateDataReporter(
        str(log), interval, step=True, time=True, potentialEnergy=True, kineticEnergy=True,
        temperature=True, speed=True))
    simulation.reporters.append(app.StateDataReporter(
        sys.stdout, max(interval, args.steps // 10), step=True, potentialEnergy=True, temperature=True,
        speed=True, progress=True, remainingTime=True, totalSteps=args.steps, separator="  "))
    t0 = time.perf_counter()
    simulation.step(args.steps)
    wall = time.perf_counter() - t0

    with open(log) as fh:
        rows = list(csv.DictReader(fh))
    temp_key = next(k for k in rows[0] if k.startswith("Temperature"))
    epot_key = next(k for k in rows[0] if k.startswith("Potential"))
    temps = [float(r[temp_key]) for r in rows]
    epots = [float(r[epot_key]) for r in rows]
    final = simulation.context.getState(getPositions=True, getEnergy=True)
    finite = bool(np.all(np.isfinite(final.getPositions(asNumpy=True).value_in_unit(unit.nanometer)))
                  and all(map(math.isfinite, temps + epots)))
    ns_per_day = args.steps * timestep * 1e-6 / (wall / 86400.0)
    summary = {
        "model": os.fspath(args.model), "ml_region": args.ml_region,
        "implementation": args.implementation, "dtype": dtype,
        "platform": simulation.context.getPlatform().getName(), "atoms": top.getNumAtoms(),
        "ml_atoms": len(ml_atoms) if args.ml_region == "peptide" else top.getNumAtoms(),
        "steps": args.steps, "timestep_fs": timestep,
        "target_K": args.temperature, "temperatures_K": temps, "potential_energy_kJ_mol": epots,
        "mean_temperature_second_half_K": float(np.mean(temps[len(temps) // 2:])) if temps else None,
        "finite": finite, "wall_s": wall, "ms_per_step": 1e3 * wall / max(args.steps, 1),
        "ns_per_day": ns_per_day,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"done: {args.steps} steps in {wall:.1f} s ({summary['ms_per_step']:.2f} ms/step, "
          f"{ns_per_day:.2f} ns/day); mean T (2nd half) {summary['mean_temperature_second_half_K']:.1f} K; "
          f"finite: {finite}; output in {out}")
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
