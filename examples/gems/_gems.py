"""Shared driver of the GEMS-scale examples: build a system, write OpenMM and LAMMPS setups, run NVT.

Every ``examples/gems/<system>.py`` calls :func:`main` with its builder. Outputs in ``--out``
(default ``runs/gems/<system>``):

====================================  ==========================================================
``<name>.pdb``                        topology + start positions (OpenMM, nm in the file's Å)
``<name>_system.xml``                 the OpenMM System (masses + so3krates Torch/PythonForce), XmlSerializer
``<name>.data``, ``in.<name>.lmp``    LAMMPS data file (``atom_style atomic``, masses) and input
``openmm_log.csv``, ``openmm.dcd``    OpenMM StateDataReporter (T, energies, ns/day, ETA), trajectory
``log.lammps``, ``lammps.xyz``        LAMMPS thermo (T, energies, CPU left), trajectory
``<engine>_summary.json``             steps, wall time, ms/step, ns/day, atoms
``md_<engine>.png`` (``--plot``)      temperature and energies vs time
====================================  ==========================================================

Units: OpenMM nm/ps/kJ mol⁻¹; LAMMPS ``units metal`` (Å, ps, eV); the model Å/eV.
OpenMM route (``--openmm-force``): ``auto`` (default) uses ``openmmtorch.TorchForce`` where openmmtorch
works (the ``.venv`` environment) and ``openmm.PythonForce`` elsewhere (``.venv-current``, torch 2.13);
the line ``[openmm] force: ...`` says which. ``--lammps-model`` gives LAMMPS its own file (default
``--model``), e.g. a ``.pt2`` package once the pair style reads them.
NVT: OpenMM ``LangevinMiddleIntegrator`` (friction ``--friction`` ps⁻¹); LAMMPS ``fix langevin``
(damp = 1/friction ps) + ``fix nve``. No constraints: the default time step is 0.5 fs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from so3krates import systems

ROOT = Path(__file__).resolve().parents[2]

DEFAULT_MODEL = ROOT / "examples" / "models" / "so3krates_demo.pt"
VENV_BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------- CLI
def parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{name}.py", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help="exported model file (so3krates export ... -o model.pt); default %(default)s")
    p.add_argument("--engine", choices=["openmm", "lammps", "both", "none"], default="openmm",
                   help="engine(s) to run; 'none' only writes the setups (default %(default)s)")
    p.add_argument("--steps", type=int, default=100, help="MD steps (default %(default)s)")
    p.add_argument("--dt", type=float, default=0.5, help="time step in fs (default %(default)s; no constraints)")
    p.add_argument("--temperature", type=float, default=300.0, help="K (default %(default)s)")
    p.add_argument("--friction", type=float, default=1.0, help="Langevin friction 1/ps (default %(default)s)")
    p.add_argument("--report", type=int, default=10, help="log every N steps (default %(default)s)")
    p.add_argument("--traj", type=int, default=100, help="trajectory frame every N steps (default %(default)s)")
    p.add_argument("--minimize", type=int, default=0, help="energy-minimisation iterations before MD (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--mpi", type=int, default=1, help="MPI ranks for LAMMPS (mpirun -np N; default 1)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="OpenMM: model precision (default: the precision it was exported in)")
    p.add_argument("--platform", default="CPU", help="OpenMM platform (CPU, Reference, CUDA; default CPU)")
    p.add_argument("--openmm-force", choices=["auto", "torch", "python"], default="auto",
                   help="OpenMM route: openmmtorch.TorchForce ('torch'), openmm.PythonForce ('python') or 'auto' "
                        "(TorchForce where openmmtorch works, else PythonForce; default)")
    p.add_argument("--lammps-model", default=None,
                   help="model file for LAMMPS' pair_coeff (default: --model); the hook for a .pt2 package")
    p.add_argument("--seed", type=int, default=1, help="velocity / thermostat seed")
    p.add_argument("--out", default=None, help=f"output folder (default runs/gems/{name})")
    p.add_argument("--plot", action="store_true", help="plot temperature and energies vs time after the run")
    p.add_argument("--plot-only", action="store_true", help="only plot the logs already in --out")
    return p


# ----------------------------------------------------------------------------- model checks
def model_metadata(model: str) -> dict:
    from so3krates.export.metadata import read_metadata
    if not os.path.isfile(model):
        hint = ""
        if Path(model) == DEFAULT_MODEL:
            hint = (" (the project's demo model is trained by examples/training; meanwhile export SO3LR: "
                    "`so3krates convert ../shared/reference/so3lr/params.pkl -o so3lr.ckpt && "
                    "so3krates export so3lr.ckpt --dtype float32 -o so3lr.pt` and pass --model so3lr.pt)")
        raise SystemExit(f"error: model file {model!r} does not exist{hint}")
    return read_metadata(model)


def check_elements(system: "systems.MolSystem", meta: dict, hint: str = "") -> None:
    """Stop with a clear message when the system holds elements the model was not trained on."""
    import openmm.app as app
    known = {int(z) for z in meta["species"]}
    zs = system.atomic_numbers
    unknown = sorted(set(zs) - known)
    if unknown:
        what = ", ".join(f"{app.Element.getByAtomicNumber(z).symbol} ({zs.count(z)} atoms)" for z in unknown)
        names = " ".join(app.Element.getByAtomicNumber(z).symbol for z in sorted(known))
        raise SystemExit(f"error: the model knows only {names}; system '{system.name}' also contains {what}. "
                         f"Use a model trained on these elements (SO3LR knows H C N O F P S Cl){hint}")


# ----------------------------------------------------------------------------- setups
def write_setups(system, out: Path, args, meta: dict) -> Dict[str, str]:
    """PDB + LAMMPS data + LAMMPS input (the OpenMM system XML is written by run_openmm)."""
    out.mkdir(parents=True, exist_ok=True)
    name = system.name
    systems.write_pdb(system, out / f"{name}.pdb")
    elements = systems.write_lammps_data(system, out / f"{name}.data")
    model = os.path.abspath(args.lammps_model or args.model)
    friction = max(args.friction, 1e-6)
    threads = f" threads {args.threads}" if args.threads else ""
    charge = f" charge {system.charge:g}" if system.charge else ""
    dump_every = max(1, args.traj)
    lmp = f"""# {name}: {system.description}; {system.n_atoms} atoms
# written by examples/gems/{name}.py; run:  lmp -in in.{name}.lmp   (or mpirun -np 2 lmp -in ...)
units metal                # Å, ps, eV
atom_style atomic
boundary p p p
newton on
read_data {name}.data
pair_style so3krates{threads}{charge}
pair_coeff * * {model} {' '.join(elements)}
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
timestep {args.dt / 1000.0:g}              # ps ({args.dt:g} fs)
"""
    if args.minimize:
        lmp += f"minimize 1.0e-6 1.0e-3 {args.minimize} {10 * args.minimize}\nreset_timestep 0\n"
    lmp += f"""velocity all create {args.temperature:g} {args.seed} mom yes rot no dist gaussian
fix thermostat all langevin {args.temperature:g} {args.temperature:g} {1.0 / friction:g} {args.seed} zero yes
fix integrate all nve
thermo_style custom step time temp pe ke etotal press cpuremain
thermo_modify flush yes
thermo {max(1, args.report)}
dump traj all xyz {dump_every} lammps.xyz
dump_modify traj element {' '.join(elements)}
run {args.steps}
"""
    (out / f"in.{name}.lmp").write_text(lmp)
    return {"pdb": str(out / f"{name}.pdb"), "data": str(out / f"{name}.data"),
            "lammps_input": str(out / f"in.{name}.lmp"), "elements": elements}


# ----------------------------------------------------------------------------- OpenMM
def build_openmm_system(system, model: str, dtype: Optional[str], implementation: str = "auto",
                        threads: Optional[int] = None):
    """``(System, 'TorchForce' | 'PythonForce')``: masses + the so3krates force through the route
    ``implementation`` resolves to ('auto': TorchForce where openmmtorch works, else PythonForce;
    so3krates.openmm.resolve_implementation)."""
    import so3krates.openmm as so_mm  # imports torch before OpenMM's Torch plugins are used
    import openmm
    import openmm.unit as unit
    mm = openmm.System()
    for atom in system.topology.atoms():
        mm.addParticle(systems.MASSES.get(atom.element.symbol, atom.element.mass._value))
    mm.setDefaultPeriodicBoxVectors(*system.topology.getPeriodicBoxVectors())
    try:
        route, message = so_mm.resolve_implementation(implementation)
    except RuntimeError as exc:  # --openmm-force torch where openmmtorch cannot work: one line, no traceback
        raise SystemExit(f"error: --openmm-force {implementation}: {exc}")
    print(f"[openmm] force: {'TorchForce' if route == 'torch' else 'PythonForce'} -- {message}", flush=True)
    if route == "torch":
        force = so_mm.torch_force(model, system.topology, charge=system.charge, dtype=dtype)
    else:
        force = so_mm.python_force(model, system.topology, charge=system.charge, dtype=dtype, num_threads=threads)
    mm.addForce(force)
    mm.addForce(openmm.CMMotionRemover())
    return mm, ("TorchForce" if route == "torch" else "PythonForce")


def run_openmm(system, out: Path, args) -> dict:
    import so3krates.openmm  # noqa: F401  (torch first)
    import torch
    import openmm
    import openmm.app as app
    import openmm.unit as unit
    torch.set_num_threads(max(1, args.threads))
    name = system.name
    t0 = time.perf_counter()
    mm, route = build_openmm_system(system, args.model, args.dtype, args.openmm_force, max(1, args.threads))
    try:
        (out / f"{name}_system.xml").write_text(openmm.XmlSerializer.serialize(mm))
    except Exception as exc:  # serialisation is a convenience, not needed for the run
        print(f"[openmm] could not serialise the System: {exc}")
    integrator = openmm.LangevinMiddleIntegrator(args.temperature * unit.kelvin, args.friction / unit.picosecond,
                                                 args.dt * unit.femtosecond)
    integrator.setRandomNumberSeed(args.seed)
    platform = openmm.Platform.getPlatformByName(args.platform)
    props = {"Threads": "1"} if args.platform == "CPU" else {}
    sim = app.Simulation(system.topology, mm, integrator, platform, props)
    sim.context.setPositions(system.positions * 0.1 * unit.nanometer)
    if args.minimize:
        print(f"[openmm] minimising ({args.minimize} iterations)", flush=True)
        sim.minimizeEnergy(maxIterations=args.minimize)
    sim.context.setVelocitiesToTemperature(args.temperature * unit.kelvin, args.seed)
    # the start configuration's energy: what LAMMPS prints at step 0 (compare engines/environments)
    e_start = sim.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    setup_s = time.perf_counter() - t0
    every = max(1, args.report)
    common = dict(step=True, time=True, potentialEnergy=True, kineticEnergy=True, totalEnergy=True,
                  temperature=True, speed=True, elapsedTime=True, remainingTime=True, progress=True,
                  totalSteps=args.steps)
    sim.reporters.append(app.StateDataReporter(str(out / "openmm_log.csv"), every, **common))
    sim.reporters.append(app.StateDataReporter(sys.stdout, every, separator="  ", **common))
    sim.reporters.append(app.DCDReporter(str(out / "openmm.dcd"), max(1, args.traj)))
    print(f"[openmm] {name}: {system.n_atoms} atoms, {args.steps} steps of {args.dt} fs at "
          f"{args.temperature} K on {args.platform} (setup {setup_s:.1f} s)", flush=True)
    sim.step(1)  # first call: TorchScript warm-up, not timed
    t1 = time.perf_counter()
    if args.steps > 1:
        sim.step(args.steps - 1)
    wall = time.perf_counter() - t1
    timed = max(args.steps - 1, 0)
    state = sim.context.getState(getPositions=True, getEnergy=True, enforcePeriodicBox=True)
    with open(out / f"{name}_final.pdb", "w") as fh:
        app.PDBFile.writeFile(system.topology, state.getPositions(), fh)
    res = summary("openmm", system, args, wall, timed, setup_s, openmm_force=route,
                  potential_energy_start_kj_mol=e_start,
                  potential_energy_kj_mol=state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    (out / "openmm_summary.json").write_text(json.dumps(res, indent=1))
    return res


# ----------------------------------------------------------------------------- LAMMPS
def run_lammps(system, out: Path, args) -> dict:
    name = system.name
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    cmd = [str(VENV_BIN / "lmp"), "-in", f"in.{name}.lmp", "-log", "log.lammps"]
    if args.mpi > 1:
        cmd = [str(VENV_BIN / "mpirun"), "-np", str(args.mpi)] + cmd
    print(f"[lammps] {' '.join(cmd)}  (in {out})", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: List[str] = []
    for line in proc.stdout:  # stream thermo output (progress, CPU time left)
        sys.stdout.write(line)
        sys.stdout.flush()
        tail = (tail + [line])[-40:]
    rc = proc.wait()
    total = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"error: LAMMPS failed (exit {rc}); see {out / 'log.lammps'}:\n" + "".join(tail[-15:]))
    log = parse_lammps_log(out / "log.lammps")
    loop = log.get("loop_time_s") or total
    res = summary("lammps", system, args, loop, args.steps, total - loop, mpi_ranks=args.mpi,
                  lammps_model=os.path.abspath(args.lammps_model or args.model),
                  potential_energy_ev=log["rows"][-1].get("PotEng") if log["rows"] else None)
    (out / "lammps_summary.json").write_text(json.dumps(res, indent=1))
    return res


def parse_lammps_log(path: Path) -> dict:
    """Thermo rows of the last run block and its loop time."""
    rows, header, loop = [], None, None
    for line in Path(path).read_text().splitlines():
        words = line.split()
        if words[:2] == ["Step", "Time"] or (words and words[0] == "Step"):
            header, rows = words, []
            continue
        if line.startswith("Loop time of"):
            loop = float(words[3])
            header = None
            continue
        if header and len(words) == len(header):
            try:
                rows.append(dict(zip(header, map(float, words))))
            except ValueError:
                header = None
    return {"rows": rows, "loop_time_s": loop}


def summary(engine, system, args, wall, steps, setup_s, **extra) -> dict:
    ms = 1000.0 * wall / steps if steps else float("nan")
    ns_day = (args.dt * 1e-6) * steps / wall * 86400.0 if steps and wall > 0 else float("nan")
    import resource
    who = resource.RUSAGE_CHILDREN if engine == "lammps" else resource.RUSAGE_SELF
    extra.setdefault("peak_rss_mb", resource.getrusage(who).ru_maxrss / 1024.0)  # LAMMPS: largest rank
    res = dict(engine=engine, system=system.name, atoms=system.n_atoms, steps=steps, dt_fs=args.dt,
               wall_s=wall, setup_s=setup_s, ms_per_step=ms, ns_per_day=ns_day,
               atom_steps_per_s=system.n_atoms * 1000.0 / ms if steps else float("nan"),
               model=os.path.abspath(args.model), threads=args.threads, **extra)
    print(f"[{engine}] {system.name}: {steps} timed steps, {ms:.1f} ms/step, {ns_day:.4f} ns/day, "
          f"{res['atom_steps_per_s']:.0f} atom-steps/s", flush=True)
    return res


# ----------------------------------------------------------------------------- plots
def plot(out: Path) -> List[str]:
    """md_openmm.png / md_lammps.png: temperature, potential and total energy vs time."""
    import csv
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    series = {}
    if (out / "openmm_log.csv").is_file():
        with open(out / "openmm_log.csv") as fh:
            rows = list(csv.DictReader(fh))
        if rows:
            key = {k.lstrip('#"').strip('"'): k for k in rows[0]}
            col = lambda name: [float(r[key[name]]) for r in rows]  # noqa: E731
            kj = 1.0 / 96.48533212331002
            series["openmm"] = (col("Time (ps)"), col("Temperature (K)"),
                                [e * kj for e in col("Potential Energy (kJ/mole)")],
                                [e * kj for e in col("Total Energy (kJ/mole)")])
    if (out / "log.lammps").is_file():
        rows = parse_lammps_log(out / "log.lammps")["rows"]
        if rows:
            series["lammps"] = ([r["Time"] for r in rows], [r["Temp"] for r in rows],
                                [r["PotEng"] for r in rows], [r["TotEng"] for r in rows])
    for engine, (t, temp, pe, te) in series.items():
        fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        a1.plot(t, temp)
        a1.set_ylabel("temperature (K)")
        a2.plot(t, pe, label="potential")
        a2.plot(t, te, label="total")
        a2.set_ylabel("energy (eV)")
        a2.set_xlabel("time (ps)")
        a2.legend()
        fig.suptitle(f"{out.name}: {engine} NVT")
        fig.tight_layout()
        path = out / f"md_{engine}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(str(path))
        print(f"[plot] {path}")
    if not made:
        print(f"[plot] no logs in {out}")
    return made


# ----------------------------------------------------------------------------- main
def main(name: str, doc: str, build: Callable[[argparse.Namespace], "systems.MolSystem"],
         extra_args: Optional[Callable[[argparse.ArgumentParser], None]] = None, element_hint: str = "",
         argv: Optional[List[str]] = None) -> dict:
    p = parser(name, doc)
    if extra_args:
        extra_args(p)
    args = p.parse_args(argv)
    try:  # progress lines (StateDataReporter, LAMMPS thermo) appear at once, also through pipes
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    out = Path(args.out or ROOT / "runs" / "gems" / name)
    if args.plot_only:
        plot(out)
        return {}
    meta = model_metadata(args.model)
    t0 = time.perf_counter()
    system = build(args)
    print(f"[build] {system.name}: {system.description}; {system.n_atoms} atoms, elements "
          f"{' '.join(system.elements())}, box {' x '.join(f'{x:.1f}' for x in system.cell.diagonal())} Å "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    check_elements(system, meta, element_hint)
    if args.lammps_model and args.engine in ("lammps", "both", "none"):
        check_elements(system, model_metadata(args.lammps_model), element_hint)
    files = write_setups(system, out, args, meta)
    print(f"[setup] {out}: {Path(files['pdb']).name}, {Path(files['data']).name}, "
          f"{Path(files['lammps_input']).name} (pair_coeff * * model {' '.join(files['elements'])})", flush=True)
    results = {}
    if args.engine in ("openmm", "both"):
        results["openmm"] = run_openmm(system, out, args)
    if args.engine in ("lammps", "both"):
        results["lammps"] = run_lammps(system, out, args)
    if args.plot:
        plot(out)
    return results
