#!/usr/bin/env python
"""OpenMM speed of a so3krates model: ms/step and ns/day vs number of atoms (TIP3P water boxes).

    python benchmarks/openmm_speed.py --model model.pt          # full size scan
    python benchmarks/openmm_speed.py --quick                   # stand-in model, 2 small boxes

For every box it measures
  direct   the exported module called directly from Python (energy + forces, Å/eV), ms/call
  wrapper  the scripted nm/kJ/mol wrapper that the TorchForce runs, called from Python, ms/call
  torch    MD with the openmmtorch.TorchForce (LangevinMiddleIntegrator, whole box ML), ms/step
  python   MD with the openmm.PythonForce route, ms/step
and reports the overhead of each OpenMM route over the direct call (ms/step − ms/call) and ns/day
at the given timestep. On a busy machine that difference is noisy, so it also measures the
plumbing alone: MD steps with a zero-cost TorchForce (tf-zero) and PythonForce (pf-zero). Prints a table; writes JSON to benchmarks/results/openmm_speed.json.
Without --model the non-physical Morse stand-in (brute-force O(N²) pairs) is used: its absolute
times say nothing about So3krates, only the OpenMM overheads are meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Tuple

import so3krates.openmm as so_mm  # imports torch before openmm's Torch plugins are used
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch
from so3krates.openmm.standin import make_standin_model

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 5


def water_box(edge_nm: float):
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(forcefield, model="tip3p", boxSize=openmm.Vec3(edge_nm, edge_nm, edge_nm) * unit.nanometer)
    pos = np.asarray(modeller.positions.value_in_unit(unit.nanometer))
    return modeller.topology, pos


def direct_caller(model_path, top, pos_nm, dtype):
    """The exported module called from Python (Å, eV), incl. the nm→Å conversion a caller does."""
    module, _ = so_mm.load_model(model_path)
    tdtype = getattr(torch, dtype)
    module = module.to(tdtype)
    box = np.asarray(top.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    z = torch.tensor([a.element.atomic_number for a in top.atoms()], dtype=torch.long)
    cell = torch.tensor(box * 10.0, dtype=tdtype)
    pbc = torch.ones(3, dtype=torch.bool)
    pos64 = torch.tensor(pos_nm, dtype=torch.float64)

    def call(n):
        for _ in range(n):
            out = module(pos64.to(tdtype) * 10.0, z, cell, pbc, 0.0, 0.0, True, False)
            out["forces"].numpy()
    return call


def wrapper_caller(model_path, top, pos_nm, dtype):
    """The scripted OpenMM wrapper (nm, kJ/mol) that the TorchForce runs, called from Python."""
    wrapper, _ = so_mm.build_wrapper(model_path, top, dtype=dtype)
    box = torch.tensor(np.asarray(top.getPeriodicBoxVectors().value_in_unit(unit.nanometer)))
    pos = torch.tensor(pos_nm, dtype=torch.float64)

    def call(n):
        for _ in range(n):
            wrapper(pos, box)
    return call


def md_caller(force, top, pos_nm, platform_name, timestep_fs):
    """n MD steps (LangevinMiddleIntegrator) with the force as the only interaction."""
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(*top.getPeriodicBoxVectors())
    for a in top.atoms():
        system.addParticle(a.element.mass)
    system.addForce(force)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, timestep_fs * unit.femtosecond)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform_name))
    ctx.setPositions(pos_nm * unit.nanometer)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)

    def call(n):
        # restart from the initial box every round: an untrained model (or the stand-in) may
        # not keep water stable for long, and the timing should not depend on how far it drifted
        ctx.setPositions(pos_nm * unit.nanometer)
        ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)
        t0 = time.perf_counter()
        integrator.step(n)
        ctx.getState(getEnergy=True)  # synchronise
        return time.perf_counter() - t0
    return call


class ZeroForces(torch.nn.Module):
    """A TorchForce module that costs nothing: measures OpenMM's own per-step plumbing."""

    def forward(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        return positions.sum() * 0.0, torch.zeros_like(positions)


def zero_forces_python(n_atoms: int):
    def compute(state):
        state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        return 0.0, np.zeros((n_atoms, 3))
    return compute


def plumbing_callers(top, pos_nm, platform_name, timestep_fs):
    """MD with zero-cost forces through the TorchForce and the PythonForce machinery."""
    from so3krates.openmm.torch_force import import_openmmtorch
    tf = import_openmmtorch().TorchForce(torch.jit.script(ZeroForces()))
    tf.setOutputsForces(True)
    tf.setUsesPeriodicBoundaryConditions(True)
    pf = openmm.PythonForce(zero_forces_python(top.getNumAtoms()))
    pf.setUsesPeriodicBoundaryConditions(True)
    return {"torchforce_plumbing": md_caller(tf, top, pos_nm, platform_name, timestep_fs),
            "pythonforce_plumbing": md_caller(pf, top, pos_nm, platform_name, timestep_fs)}


def measure(callers: dict, per_round: int, rounds: int) -> dict:
    """ms per call of each caller: warm up, then ``rounds`` interleaved rounds, best round.

    Interleaving and taking the best round make the comparison robust on a busy machine."""
    for call in callers.values():
        call(WARMUP)  # TorchScript's profiling executor optimises after the first calls
    best = {k: float("inf") for k in callers}
    for _ in range(rounds):
        for k, call in callers.items():
            t0 = time.perf_counter()
            elapsed = call(per_round)  # callers that need set-up time their own work
            if elapsed is None:
                elapsed = time.perf_counter() - t0
            best[k] = min(best[k], 1e3 * elapsed / per_round)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="exported so3krates model (default: the Morse stand-in)")
    p.add_argument("--quick", action="store_true", help="two small boxes, few steps")
    p.add_argument("--boxes", type=float, nargs="*", help="box edges in nm")
    p.add_argument("--steps", type=int, default=None,
                   help="calls / MD steps per timed round (scaled down as 400/atoms for big boxes)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--platform", default="CPU")
    p.add_argument("--timestep", type=float, default=0.5, help="fs (whole-box ML: no constraints)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or torch's)")
    p.add_argument("--no-python-force", action="store_true")
    p.add_argument("--label", default=None, help="free text stored in the JSON (what the model is)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "openmm_speed.json"))
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    boxes = args.boxes or ([1.2, 1.6] if args.quick else [1.2, 1.6, 2.0, 2.5])
    steps = args.steps or (5 if args.quick else 10)
    rounds = 3 if args.quick else 5
    tmpdir = tempfile.TemporaryDirectory()
    stand_in = args.model is None
    model = args.model or make_standin_model(Path(tmpdir.name) / "standin.pt", species=(1, 8), cutoff=5.0)
    _, metadata = so_mm.load_model(model)

    rows = []
    header = (f"{'atoms':>6} {'box nm':>6} {'direct ms':>10} {'wrapper ms':>10} {'torch ms/step':>13} {'overhead':>9} "
              f"{'ns/day':>8} {'python ms/step':>13} {'overhead':>9} {'ns/day':>8} {'tf-zero':>8} {'pf-zero':>8}")
    print(f"model: {model}{' (stand-in: Morse, O(N^2))' if stand_in else ''}; dtype {args.dtype}; "
          f"platform {args.platform}; torch threads {torch.get_num_threads()}; dt {args.timestep} fs")
    print(header)
    for edge in boxes:
        top, pos = water_box(edge)
        n = top.getNumAtoms()
        callers = {"direct": direct_caller(model, top, pos, args.dtype),
                   "wrapper": wrapper_caller(model, top, pos, args.dtype),
                   "torchforce": md_caller(so_mm.torch_force(model, top, dtype=args.dtype), top, pos,
                                           args.platform, args.timestep)}
        if not args.no_python_force:
            callers["pythonforce"] = md_caller(so_mm.python_force(model, top, dtype=args.dtype, device="cpu"),
                                               top, pos, args.platform, args.timestep)
        # fewer calls per round for big boxes (keeps the scan to minutes on a CPU)
        ms = measure(callers, max(2, min(steps, (steps * 400) // n)), rounds)
        ms.update(measure(plumbing_callers(top, pos, args.platform, args.timestep), 20, rounds))
        row = {"atoms": n, "box_nm": edge, "direct_ms_per_call": ms["direct"], "wrapper_ms_per_call": ms["wrapper"]}
        line = f"{n:6d} {edge:6.2f} {ms['direct']:10.2f} {ms['wrapper']:10.2f}"
        for key in ("torchforce", "pythonforce"):
            if key in ms:
                nsday = args.timestep * 1e-6 * 86400.0 / (ms[key] * 1e-3)
                row.update({f"{key}_ms_per_step": ms[key], f"{key}_overhead_ms": ms[key] - ms["direct"],
                            f"{key}_ns_per_day": nsday})
                line += f" {ms[key]:13.2f} {ms[key] - ms['direct']:9.2f} {nsday:8.3f}"
        row["torchforce_plumbing_ms_per_step"] = ms["torchforce_plumbing"]
        row["pythonforce_plumbing_ms_per_step"] = ms["pythonforce_plumbing"]
        line += f" {ms['torchforce_plumbing']:8.3f} {ms['pythonforce_plumbing']:8.3f}"
        rows.append(row)
        print(line, flush=True)

    result = {
        "benchmark": "openmm_speed", "model": os.fspath(args.model) if args.model else "stand-in",
        "stand_in": stand_in, "label": args.label, "model_metadata": {k: metadata.get(k) for k in ("model", "package_version", "cutoff", "cutoff_lr", "species", "dtype",
                                                          "num_layers", "num_parameters")},
        "model_features": (metadata.get("config") or {}).get("num_features"),
        "dtype": args.dtype, "platform": args.platform, "timestep_fs": args.timestep, "steps_per_round": steps, "rounds": rounds,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "openmm": openmm.__version__,
        "machine": pyplatform.node(), "cpu_count": os.cpu_count(), "quick": args.quick,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows,
        "load_average": os.getloadavg(),
        "notes": "best of interleaved rounds; overhead = OpenMM ms/step - direct module ms/call "
                 "(energy+forces; noisy on a busy machine); *_plumbing_ms_per_step = MD step with a "
                 "zero-cost force through the same route; the stand-in's absolute times are not So3krates'",
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
