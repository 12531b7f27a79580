"""The main job (README, `bash scripts/run_demo.sh`): the shipped pretrained model in every engine.

1. prints what the exported model is (`so3krates info`);
2. energy and forces of Ac-Ala3-NHMe (built with OpenMM's tools) through the ASE calculator, with
   the warm-up (first call) and steady-state time per call;
3. Langevin MD of the peptide in a water box with the same model in OpenMM and in LAMMPS
   (`pair_style so3krates`, 1 and 2 MPI ranks), via examples/gems/ala3.py.
Units: Å, eV, eV/Å (model); the engines report their own (OpenMM kJ/mol, LAMMPS metal: eV).

Runs in both environments (docs/install.md, "Which environment"):
  .venv          (torch 2.9.0 + openmmtorch)   OpenMM through openmmtorch.TorchForce
  .venv-current  (torch 2.13, no openmmtorch)  OpenMM through openmm.PythonForce
`--openmm-force auto` (default) picks TorchForce where openmmtorch works, else PythonForce, and says
which. `--lammps-model PATH` gives LAMMPS another file than `--model` (the hook for a .pt2 package
once the pair style reads them; default: the same TorchScript file as OpenMM).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "examples" / "models" / "so3krates_demo.pt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="exported model (default: the shipped one)")
    p.add_argument("--steps", type=int, default=200, help="MD steps per engine (0.5 fs each; default 200)")
    p.add_argument("--padding", type=float, default=0.6, help="water padding around the peptide, nm (default 0.6)")
    p.add_argument("--minimize", type=int, default=50, help="minimisation iterations before MD (default 50)")
    p.add_argument("--openmm-force", choices=["auto", "torch", "python"], default="auto",
                   help="OpenMM route: 'torch' (openmmtorch.TorchForce, .venv only), 'python' (openmm.PythonForce, "
                        "any torch) or 'auto' (TorchForce where openmmtorch works, else PythonForce; default)")
    p.add_argument("--lammps-model", default=None,
                   help="model file for the LAMMPS runs (default: --model); e.g. a .pt2 package once "
                        "pair_style so3krates reads them")
    p.add_argument("--ranks", default="1,2", help="LAMMPS MPI rank counts to run, comma-separated (default 1,2)")
    p.add_argument("--out", default=str(ROOT / "runs" / "main_job"), help="output folder")
    return p.parse_args(argv)


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def single_point(model: str) -> dict:
    import numpy as np
    from ase import Atoms
    sys.path.insert(0, str(ROOT / "examples" / "openmm"))
    from peptide import build_peptide  # noqa: E402  (examples/openmm/peptide.py)
    from so3krates.ase import So3kratesCalculator

    topology, positions = build_peptide(n_ala=3, conformation="ppii")
    symbols = [a.element.symbol for a in topology.atoms()]
    pos = np.array([[v.x, v.y, v.z] for v in positions]) * 10.0  # nm -> Å
    atoms = Atoms(symbols=symbols, positions=pos)
    t0 = time.perf_counter()
    atoms.calc = So3kratesCalculator(model)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    energy = atoms.get_potential_energy()
    first_s = time.perf_counter() - t0
    times = []
    for k in range(5):
        atoms.positions[0, 0] += 1e-4 * (k + 1)  # new geometry each call: no cached result
        t0 = time.perf_counter()
        atoms.get_forces()
        times.append(time.perf_counter() - t0)
    atoms.positions[0, 0] -= 1e-4 * 15
    atoms.calc.reset()
    forces = atoms.get_forces()
    fnorm = np.linalg.norm(forces, axis=1)
    print(f"Ac-Ala3-NHMe: {len(atoms)} atoms ({atoms.get_chemical_formula()})")
    print(f"  energy            {energy:.6f} eV")
    print(f"  max |force|       {fnorm.max():.4f} eV/Å (atom {int(fnorm.argmax())} {symbols[int(fnorm.argmax())]})")
    print(f"  sum of forces     {np.abs(forces.sum(0)).max():.2e} eV/Å (translation invariance)")
    print(f"  load model        {load_s * 1e3:.1f} ms")
    print(f"  first call        {first_s * 1e3:.1f} ms (TorchScript warm-up included)")
    print(f"  steady state      {min(times) * 1e3:.1f} ms per energy+forces call (best of 5)")
    return {"atoms": len(atoms), "energy_eV": energy, "max_force_eV_A": float(fnorm.max()),
            "first_call_ms": first_s * 1e3, "steady_ms": min(times) * 1e3}


def md(engine: str, model: str, steps: int, padding: float, out: Path, mpi: int = 1, minimize: int = 50,
       openmm_force: str = "auto", lammps_model: str = None) -> dict:
    cmd = [sys.executable, str(ROOT / "examples" / "gems" / "ala3.py"), "--engine", engine, "--model", model,
           "--steps", str(steps), "--padding", str(padding), "--report", str(max(1, steps // 10)),
           "--minimize", str(minimize), "--mpi", str(mpi), "--openmm-force", openmm_force, "--out", str(out)]
    if lammps_model:
        cmd += ["--lammps-model", lammps_model]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    summaries = sorted(out.glob("*summary.json"))
    return json.loads(summaries[-1].read_text()) if summaries else {}


def main(argv=None) -> int:
    args = parse_args(argv)
    model = os.path.abspath(args.model)
    if not os.path.exists(model):
        print(f"error: model file {model} does not exist. The shipped model is examples/models/so3krates_demo.pt; "
              "train and export one with `so3krates train examples/models/config_shipped.yaml` and "
              "`so3krates export runs/shipped/best.ckpt -o examples/models/so3krates_demo.pt`", file=sys.stderr)
        return 2
    lammps_model = os.path.abspath(args.lammps_model) if args.lammps_model else None
    if lammps_model and not os.path.exists(lammps_model):
        print(f"error: --lammps-model {lammps_model} does not exist", file=sys.stderr)
        return 2
    try:
        ranks = [int(r) for r in str(args.ranks).split(",") if r.strip()]
    except ValueError:
        ranks = []
    if not ranks or min(ranks) < 1:
        print(f"error: --ranks must list positive integers such as 1,2; got {args.ranks!r}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch
    results = {"environment": {"python": sys.executable, "torch": torch.__version__,
                               "openmm_force_requested": args.openmm_force, "model": model,
                               "lammps_model": lammps_model or model}}

    banner("model")
    subprocess.run([sys.executable, "-m", "so3krates.cli", "info", model], check=True)

    banner("energy and forces (ASE calculator)")
    results["single_point"] = single_point(model)

    banner(f"OpenMM: solvated Ac-Ala3-NHMe, {args.steps} Langevin steps (torch {torch.__version__})")
    results["openmm"] = md("openmm", model, args.steps, args.padding, out / "openmm", minimize=args.minimize,
                           openmm_force=args.openmm_force)
    for n in ranks:
        banner(f"LAMMPS: same system, {args.steps} Langevin steps, {n} MPI rank(s)"
               + (f", model {os.path.basename(lammps_model)}" if lammps_model else ""))
        results[f"lammps_{n}"] = md("lammps", model, args.steps, args.padding, out / f"lammps_np{n}", n,
                                    minimize=args.minimize, lammps_model=lammps_model)

    (out / "main_job.json").write_text(json.dumps(results, indent=1, default=str))
    banner("done")
    print(f"outputs (trajectories, logs, summaries) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
