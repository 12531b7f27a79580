#!/usr/bin/env python
"""OpenMM speed of a so3krates model and OpenMM's overhead over calling the exported module.

    python benchmarks/openmm_speed.py --model examples/models/so3krates_demo.pt   # shipped model
    python benchmarks/openmm_speed.py --quick                                      # CI-sized

Systems: periodic TIP3P water boxes (OpenMM ``Modeller.addSolvent``), whole box by the model,
0.5 fs, the model in its file's dtype unless ``--dtype``. Timed MD uses a VerletIntegrator from
a fixed state (positions and velocities after 5 Langevin steps at 300 K): every round retraces
the same k configurations, and the direct calls evaluate exactly those configurations (the
model's cost depends on the configuration itself, see ``direct_timer``). For every
box, in interleaved rounds (each round times every caller once, back to back, so that a change
in the load of a shared machine hits all of them alike):

  direct    the exported module called from Python (positions nm → Å tensor, energy + forces,
            forces to numpy) with its parameters set up for inference (no gradients; what the
            PythonForce route does, and what openmm-torch's torch::jit::freeze does for the
            TorchForce): ms/call. This is the baseline "calling the exported module".
  torch     MD steps with ``so3krates.openmm.torch_force`` (openmmtorch.TorchForce): ms/step; like the
            direct calls a new neighbour search every step (``neighbor_skin=0``)
  python    MD steps with ``so3krates.openmm.python_force`` (openmm.PythonForce): ms/step, skin 0
  skin      MD steps with ``torch_force`` as users get it: pair lists reused over steps with the
            default skin (1 Å, rebuilt when an atom moved 0.5 Å): ms/step and its speed-up over ``torch``
  tf-zero   MD steps with a zero-cost TorchForce (returns zeros): OpenMM's own per-step cost
  pf-zero   the same through PythonForce

Reported (medians over rounds; the spread is the 25–75 % range of the per-round values):
  end-to-end overhead = median over rounds of (route ms/step / direct ms/call − 1), in % —
                        paired within a round, so slow drifts of the machine's load cancel;
  plumbing overhead   = median zero-cost ms/step / median direct ms/call, in %;
  ns/day              = timestep / median ms/step.
Verdict: PASS when the median end-to-end overhead of the TorchForce route is ≤ --target (10 %).
Wall-clock times are the primary numbers; per-round process CPU times are recorded too (less
sensitive to other jobs). OpenMM's CPU platform is run with as many threads as torch
(``--threads``, default 1) so that both sides use the same cores.
``--model`` defaults to the shipped model (examples/models/so3krates_demo.pt, float32).
Writes ``benchmarks/results/openmm_speed.json`` (``openmm_speed_quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import os
import platform as pyplatform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import so3krates.openmm as so_mm  # imports torch before openmm's Torch plugins are used
import numpy as np
import openmm
import openmm.unit as unit
import torch
from so3krates import systems
from so3krates.openmm.torch_force import cast_model, for_inference, import_openmmtorch, resolve_dtype

from _measure import timed, write_json

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "models" / "so3krates_demo.pt"
WARMUP = 3  # TorchScript's profiling executor specialises during the first calls


Timer = Callable[[int], Tuple[float, float]]  # n calls/steps → (wall s, process CPU s)


def _system(top, force) -> openmm.System:
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(*top.getPeriodicBoxVectors())
    for a in top.atoms():
        system.addParticle(a.element.mass)
    system.addForce(force)
    return system


def md_start(model_path, top, pos_nm, dtype, timestep_fs, steps: int = 5) -> Tuple[np.ndarray, np.ndarray]:
    """Positions and velocities after ``steps`` Langevin steps (300 K) from the freshly built
    box: the state every timed round starts from."""
    system = _system(top, so_mm.torch_force(model_path, top, dtype=dtype))
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(1)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos_nm * unit.nanometer)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 2)
    integrator.step(steps)
    st = ctx.getState(getPositions=True, getVelocities=True)
    return (np.ascontiguousarray(st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)),
            np.ascontiguousarray(st.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)))


def _verlet_context(force, top, start, platform_name, timestep_fs, threads):
    integrator = openmm.VerletIntegrator(timestep_fs * unit.femtosecond)
    platform = openmm.Platform.getPlatformByName(platform_name)
    props = {"Threads": str(threads)} if platform_name == "CPU" else {}
    ctx = openmm.Context(_system(top, force), integrator, platform, props)

    def reset():
        ctx.setPositions(start[0] * unit.nanometer)  # neither call evaluates the forces
        ctx.setVelocities(start[1] * unit.nanometer / unit.picosecond)
    return ctx, integrator, reset


def md_configurations(model_path, top, start, dtype, platform_name, timestep_fs, threads, n) -> list:
    """The n configurations (nm) that ``n`` timed MD steps from ``start`` evaluate the model on
    (VerletIntegrator: step i evaluates the forces at x_i, i = 0..n-1)."""
    ctx, integrator, reset = _verlet_context(so_mm.torch_force(model_path, top, dtype=dtype), top, start,
                                             platform_name, timestep_fs, threads)
    reset()
    configs = []
    for _ in range(n):
        configs.append(np.ascontiguousarray(
            ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)))
        integrator.step(1)
    return configs


def direct_timer(model_path, top, configs, dtype: Optional[str], as_loaded: bool = False) -> Timer:
    """The exported module called from Python (Å, eV), including the nm→Å conversion a caller
    does, set up for inference (parameters without gradients) unless ``as_loaded``. Call i of a
    round evaluates ``configs[i]``: the configuration MD step i evaluates (the model's cost
    depends on the configuration itself: the shipped model took 35 % longer on Modeller's freshly
    built 774-atom box than on the same box 3 steps (< 0.1 Å) later, with the same number of
    pairs — so only the same configurations compare like with like)."""
    module, metadata = so_mm.load_model(model_path)
    tdtype = resolve_dtype(dtype, metadata)
    module = cast_model(module, tdtype, metadata)
    if not as_loaded:
        module = for_inference(module)
    box = np.asarray(top.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    z = torch.tensor([a.element.atomic_number for a in top.atoms()], dtype=torch.long)
    cell = torch.tensor(box * 10.0, dtype=tdtype)
    pbc = torch.ones(3, dtype=torch.bool)

    def call(pos_nm):
        pos = (torch.from_numpy(pos_nm) * 10.0).to(tdtype)
        out = module(pos, z, cell, pbc, 0.0, 0.0, True, False)
        # what an engine does with the result; returning drops ``out``, whose energy still holds
        # the autograd graph (keeping it alive into the next call would slow that call down)
        return float(out["energy"].detach()), out["forces"].detach().numpy()

    def timer(n):
        def work():
            for i in range(n):
                call(configs[i % len(configs)])
        return timed(work)
    return timer


def md_timer(force, top, start, platform_name, timestep_fs, threads) -> Timer:
    """n MD steps (VerletIntegrator, deterministic) from ``start`` with ``force`` as the only
    interaction: every round retraces the same n configurations (those of md_configurations)."""
    ctx, integrator, reset = _verlet_context(force, top, start, platform_name, timestep_fs, threads)

    def timer(n):
        reset()

        def work():
            integrator.step(n)  # n force evaluations
            # synchronise (GPU platforms) without an extra evaluation: getEnergy=True would call
            # the model once more (a TorchForce that outputs forces computes both together)
            ctx.getState(getPositions=True)
        return timed(work)
    return timer


class ZeroForces(torch.nn.Module):
    """A TorchForce module that costs nothing: measures OpenMM's own per-step plumbing."""

    def forward(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        return positions.sum() * 0.0, torch.zeros_like(positions)


class ZeroPython:
    """A PythonForce computation that costs nothing beyond reading the positions."""

    def __init__(self, n_atoms: int):
        self.n_atoms = n_atoms

    def __call__(self, state):
        state.getPositions(asNumpy=True)
        return 0.0, np.zeros((self.n_atoms, 3))


def zero_forces(n_atoms: int) -> Dict[str, openmm.Force]:
    tf = import_openmmtorch().TorchForce(torch.jit.script(ZeroForces()))
    tf.setOutputsForces(True)
    tf.setUsesPeriodicBoundaryConditions(True)
    pf = openmm.PythonForce(ZeroPython(n_atoms))
    pf.setUsesPeriodicBoundaryConditions(True)
    return {"tf_zero": tf, "pf_zero": pf}


def measure(timers: Dict[str, Timer], per_round: Dict[str, int], rounds: int) -> Dict[str, dict]:
    """Warm up, then ``rounds`` interleaved rounds; per caller the per-round ms per call (wall, CPU)."""
    for name, timer in timers.items():
        timer(WARMUP)
    wall = {k: [] for k in timers}
    cpu = {k: [] for k in timers}
    for r in range(rounds):
        names = list(timers) if r % 2 == 0 else list(reversed(timers))  # alternate the order too
        for name in names:
            w, c = timers[name](per_round[name])
            wall[name].append(1e3 * w / per_round[name])
            cpu[name].append(1e3 * c / per_round[name])
    return {k: {"wall_ms": wall[k], "cpu_ms": cpu[k]} for k in timers}


def _q(values: List[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q))


def summarise(samples: Dict[str, dict], timestep_fs: float) -> dict:
    base_w = samples["direct"]["wall_ms"]
    base_c = samples["direct"]["cpu_ms"]
    row = {"direct_ms_per_call": statistics.median(base_w),
           "direct_ms_per_call_q25_q75": [_q(base_w, 0.25), _q(base_w, 0.75)],
           "direct_cpu_ms_per_call": statistics.median(base_c)}
    for route in ("torch", "python", "skin"):
        if route not in samples:
            continue
        w, c = samples[route]["wall_ms"], samples[route]["cpu_ms"]
        ratio_w = [100.0 * (a / b - 1.0) for a, b in zip(w, base_w)]
        ratio_c = [100.0 * (a / b - 1.0) for a, b in zip(c, base_c)]
        med = statistics.median(w)
        row.update({
            f"{route}_ms_per_step": med,
            f"{route}_ms_per_step_q25_q75": [_q(w, 0.25), _q(w, 0.75)],
            f"{route}_ns_per_day": timestep_fs * 1e-6 * 86400.0 / (med * 1e-3),
            f"{route}_overhead_pct": statistics.median(ratio_w),
            f"{route}_overhead_pct_q25_q75": [_q(ratio_w, 0.25), _q(ratio_w, 0.75)],
            f"{route}_overhead_pct_cpu": statistics.median(ratio_c),
        })
    for zero, route in (("tf_zero", "torch"), ("pf_zero", "python")):
        if zero in samples:
            med = statistics.median(samples[zero]["wall_ms"])
            row[f"{route}_plumbing_ms_per_step"] = med
            row[f"{route}_plumbing_pct"] = 100.0 * med / row["direct_ms_per_call"]
    if "skin" in samples:  # paired within rounds, like the overheads
        row["skin_speedup"] = statistics.median([a / b for a, b in zip(samples["torch"]["wall_ms"],
                                                                       samples["skin"]["wall_ms"])])
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="exported so3krates model (default: the shipped examples/models/so3krates_demo.pt)")
    p.add_argument("--quick", action="store_true", help="two small boxes, few rounds")
    p.add_argument("--boxes", type=float, nargs="*", help="box edges in nm (default 1.2 1.6 2.0 2.5)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 13; 3 with --quick)")
    p.add_argument("--calls", type=int, default=None,
                   help="model calls / MD steps per round and caller at 150 atoms (scaled as 1/atoms, "
                        "at least 3; default 6, 3 with --quick)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="default: the dtype the model file was exported in")
    p.add_argument("--platform", default="CPU")
    p.add_argument("--timestep", type=float, default=0.5, help="fs (whole-box ML: no constraints)")
    p.add_argument("--threads", type=int, default=1, help="torch threads and OpenMM CPU threads (default 1)")
    p.add_argument("--target", type=float, default=10.0, help="overhead target in %% (default 10)")
    p.add_argument("--no-python-force", action="store_true")
    p.add_argument("--direct-as-loaded", action="store_true",
                   help="baseline with the parameters as torch.jit.load leaves them (requires_grad=True: "
                        "~20%% slower on CPU) instead of set up for inference")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = args.model or str(SHIPPED)
    if not os.path.isfile(model):
        p.error(f"model file {model} not found: pass --model model.pt (a file from `so3krates export`)")
    _, metadata = so_mm.load_model(model)
    dtype = args.dtype or metadata.get("dtype", "float64")
    boxes = args.boxes or ([1.2, 1.6] if args.quick else [1.2, 1.6, 2.0, 2.5])
    rounds = args.rounds or (3 if args.quick else 13)
    calls = args.calls or (3 if args.quick else 6)
    output = Path(args.output or ROOT / "benchmarks" / "results" /
                  ("openmm_speed_quick.json" if args.quick else "openmm_speed.json"))

    print(f"model: {model} ({metadata.get('num_layers')} layers, cutoff {metadata.get('cutoff')} Å, "
          f"{metadata.get('num_parameters')} parameters); dtype {dtype}; platform {args.platform}; "
          f"{args.threads} thread(s); dt {args.timestep} fs; {rounds} interleaved rounds; "
          f"load average {os.getloadavg()[0]:.1f}")
    header = (f"{'atoms':>6} {'direct ms':>10} {'torch ms/step':>13} {'ns/day':>7} {'overhead %':>16} "
              f"{'python ms/step':>14} {'ns/day':>7} {'overhead %':>16} {'tf-zero ms':>10} {'%':>6} "
              f"{'pf-zero ms':>10} {'%':>6} {'skin ms/step':>12} {'speed-up':>8}")
    print(header)
    rows = []
    for edge in boxes:
        box = systems.solvent_box(edge)
        top, pos = box.topology, box.positions / 10.0  # nm
        n = top.getNumAtoms()
        k = max(3, (calls * 150) // n)
        start = md_start(model, top, pos, dtype, args.timestep)
        configs = md_configurations(model, top, start, dtype, args.platform, args.timestep, args.threads, k)
        timers = {"direct": direct_timer(model, top, configs, dtype, args.direct_as_loaded),
                  "torch": md_timer(so_mm.torch_force(model, top, dtype=dtype, neighbor_skin=0.0), top, start,
                                    args.platform, args.timestep, args.threads),
                  "skin": md_timer(so_mm.torch_force(model, top, dtype=dtype), top, start, args.platform,
                                   args.timestep, args.threads)}
        if not args.no_python_force:
            timers["python"] = md_timer(so_mm.python_force(model, top, dtype=dtype, device="cpu", neighbor_skin=0.0),
                                        top, start, args.platform, args.timestep, args.threads)
        zero = zero_forces(n)
        timers["tf_zero"] = md_timer(zero["tf_zero"], top, start, args.platform, args.timestep, args.threads)
        if not args.no_python_force:
            timers["pf_zero"] = md_timer(zero["pf_zero"], top, start, args.platform, args.timestep, args.threads)
        per_round = {name: (k if name in ("direct", "torch", "python", "skin") else 50) for name in timers}
        samples = measure(timers, per_round, rounds)
        row = {"atoms": n, "box_nm": edge, "calls_per_round": k, **summarise(samples, args.timestep),
               "samples": samples}
        rows.append(row)

        def cell(route):
            if f"{route}_ms_per_step" not in row:
                return f"{'—':>14} {'—':>7} {'—':>16}"
            q = row[f"{route}_overhead_pct_q25_q75"]
            spread = f"{row[f'{route}_overhead_pct']:+.1f} [{q[0]:+.0f},{q[1]:+.0f}]"
            return f"{row[f'{route}_ms_per_step']:14.1f} {row[f'{route}_ns_per_day']:7.3f} {spread:>16}"
        line = (f"{n:6d} {row['direct_ms_per_call']:10.1f} {cell('torch')[1:]} {cell('python')} "
                f"{row['torch_plumbing_ms_per_step']:10.3f} {row['torch_plumbing_pct']:6.2f} "
                f"{row.get('python_plumbing_ms_per_step', float('nan')):10.3f} "
                f"{row.get('python_plumbing_pct', float('nan')):6.2f} {row['skin_ms_per_step']:12.1f} "
                f"{row['skin_speedup']:8.3f}")
        print(line, flush=True)

    worst = max(r["torch_overhead_pct"] for r in rows)
    worst_plumbing = max(r["torch_plumbing_pct"] for r in rows)
    verdict = "PASS" if worst <= args.target else "FAIL"
    print(f"verdict (TorchForce, target ≤ {args.target:g} %): {verdict} — end-to-end median overhead at most "
          f"{worst:+.1f} %, OpenMM plumbing at most {worst_plumbing:.2f} % of a model call")
    if not args.no_python_force:
        worst_py = max(r["python_overhead_pct"] for r in rows)
        print(f"PythonForce route: end-to-end median overhead at most {worst_py:+.1f} % "
              f"({'within' if worst_py <= args.target else 'above'} the target)")

    result = {
        "benchmark": "openmm_speed",
        "model": os.path.relpath(model, ROOT) if Path(model).resolve().is_relative_to(ROOT) else model,
        "model_metadata": {k: metadata.get(k) for k in ("model", "package_version", "cutoff", "species", "dtype",
                                                          "num_layers", "num_parameters")},
        "model_features": (metadata.get("config") or {}).get("num_features"),
        "direct_baseline": "as loaded (parameters require grad)" if args.direct_as_loaded else
                           "set up for inference (parameters without gradients)",
        "dtype": dtype, "platform": args.platform, "timestep_fs": args.timestep, "rounds": rounds,
        "threads": args.threads, "torch": torch.__version__, "openmm": openmm.__version__,
        "machine": pyplatform.node(), "cpu_count": os.cpu_count(), "quick": args.quick,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_average": os.getloadavg(),
        "target_overhead_pct": args.target, "verdict_torchforce": verdict,
        "max_torchforce_overhead_pct": worst, "max_torchforce_plumbing_pct": worst_plumbing,
        "rows": rows,
        "notes": "medians over interleaved rounds (wall clock); *_overhead_pct = median over rounds of "
                 "(route ms/step / direct ms/call - 1) x 100, paired within a round, *_q25_q75 its "
                 "spread; *_overhead_pct_cpu the same from process CPU time; *_plumbing_* = MD step with "
                 "a zero-cost force through the same route (pure OpenMM cost), % of a direct model call; "
                 "samples = per-round ms per call/step; torch/python routes search pairs every step "
                 "(neighbor_skin=0, as the direct calls); skin = the TorchForce with the default 1 A skin, "
                 "skin_speedup = median over rounds of torch ms/step / skin ms/step",
    }
    write_json(output, result)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
