"""One timed SO3LR entry of ``benchmarks/peers_so3lr.py``, run in a fresh process of its own venv.

    python _so3lr_peer_worker.py --backend ours|so3krates-torch|jax-md --dtype float32|float64 \
        --system box.npz --out result.json [--model model.pt] [--reference-dir ../shared/reference/so3lr]

Deliberately standalone: it imports only what the venv it runs in provides (torch + numpy for our
exported TorchScript file; so3krates_torch in its venv; jax/mlff/so3lr/jax_md in the JAX venv) and
nothing from this repository, so it keeps working while the package moves and the same file runs
in every venv. The parent pins it to one core (taskset) and sets the thread environment.

Protocol per entry: load the model, call it ``--warmup`` times (the first call's time including
the load is reported as warm-up; it holds TorchScript profiling / JAX JIT compilation), then
``--repeats`` timed energy+forces calls; median reported. Energies are in eV *without* any
per-element energy shift (SO3LR's reference convention); So3krates-torch's shift is zeroed in the
model (or, with --keep-shift, subtracted afterwards) and reported. Forces (eV/Å) are written next to the JSON (``.forces.npy``) for the cross-check.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 ** 2  # KiB on Linux


# ----------------------------------------------------------------------------------------- ours
def make_ours(system, dtype_name, args):
    import torch
    torch.set_num_threads(1)
    dtype = torch.float64 if dtype_name == "float64" else torch.float32
    is_pt2 = args.model.endswith(".pt2")  # a torch.export/AOTInductor package: our loader's runtime
    # the public loader, as the ASE calculator and OpenMM use it (it also sets the process' malloc to keep
    # freed memory, export/process_memory.py; SO3KRATES_MALLOC=system in the environment turns that off)
    from so3krates.export.loader import load_exported
    from so3krates.export.process_memory import keep_freed_memory
    module, _ = load_exported(args.model)
    pos = torch.tensor(system["positions"], dtype=dtype)
    z = torch.tensor(system["numbers"], dtype=torch.long)
    cell = torch.tensor(system["cell"], dtype=dtype)
    pbc = torch.tensor(system["pbc"], dtype=torch.bool)

    def call():
        out = module(pos, z, cell, pbc, 0.0, 0.0, True, False)
        return float(out["energy"].detach().double().sum()), out["forces"].detach().double().numpy()

    info = {"torch": torch.__version__, "model": os.path.abspath(args.model), "interface": "so3krates load_exported (.pt2)" if is_pt2 else "so3krates load_exported (TorchScript)",
            "malloc": keep_freed_memory(),
            "model_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(os.path.getmtime(args.model)))}
    potential = getattr(module, "potential", None)
    if potential is not None and hasattr(potential, "neighbor_skin"):
        # JAX-MD's counterpart of its "E+F without neighbour update": an MD step between searches, the
        # pair lists reused with a 1 Å skin (ours measures the shell of candidates again each call)
        def call_reused():
            potential.neighbor_skin = 1.0
            return call()

        info["extra_timings"] = {"energy_forces_only": call_reused}
    meta = _export_metadata(args.model)
    if meta:
        lr = meta.get("long_range") or {}
        info["model_metadata"] = {k: meta.get(k) for k in ("package_version", "torch_version", "dtype",
                                                           "cutoff", "cutoff_lr", "num_layers", "efa")}
        info["model_metadata"]["long_range"] = lr
        if meta.get("dtype") not in (None, dtype_name):
            raise RuntimeError(f"{args.model} is exported as {meta.get('dtype')}, not {dtype_name}")
        if lr and (lr.get("cutoff_lr") != 12.0 or lr.get("dispersion_damping") != 2.0):
            raise RuntimeError(f"{args.model}: long-range settings {lr} differ from the reference "
                               "(lr cutoff 12 Å, dispersion damping 2 Å)")
    return call, info


def _export_metadata(path):
    """The metadata JSON `so3krates export` stores among the TorchScript file's extra files."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if "/extra/" in name and name.endswith("metadata.json"):
                    return json.loads(z.read(name))
    except (OSError, zipfile.BadZipFile, ValueError):
        pass
    return None


# ------------------------------------------------------------------------------- So3krates-torch
def make_so3krates_torch(system, dtype_name, args):
    import torch
    torch.set_num_threads(1)
    import ase
    from so3krates_torch.calculator.so3 import SO3LRCalculator
    import so3krates_torch

    calc = SO3LRCalculator(r_max_lr=12.0, dispersion_energy_cutoff_lr_damping=2.0, default_dtype=dtype_name)
    atoms = ase.Atoms(numbers=system["numbers"], positions=system["positions"], cell=system["cell"],
                      pbc=system["pbc"])
    # The shipped model adds a learned per-element energy shift (its output head's `energy_shifts`,
    # indexed by Z-1 over the 118-element one-hot table; -163.618 eV for every element) that SO3LR's
    # reference (mlff, add_shift=False) leaves out. Default: set it to zero in the model, which is
    # exactly SO3LR's add_shift=False and costs the same (one gather + add per atom either way).
    # Subtracting the sum afterwards (--keep-shift) leaves the float32 rounding of a ~-1.6e2 eV/atom
    # total in the result: ~0.08 eV at 1536 atoms, 3.1 eV (6e-4 eV/atom) at 5184 atoms.
    head = None
    for module in calc.models[0].modules():
        if isinstance(getattr(module, "energy_shifts", None), torch.Tensor):
            head = module
            break
    if head is None:
        raise RuntimeError("So3krates-torch: no `energy_shifts` parameter found in the SO3LR model")
    shifts = head.energy_shifts.detach().double().cpu().numpy().reshape(-1)
    shift_total = float(shifts[np.asarray(system["numbers"]) - 1].sum())
    if args.keep_shift:
        subtract = shift_total
    else:
        with torch.no_grad():
            head.energy_shifts.zero_()
        subtract = 0.0

    def call():
        calc.calculate(atoms, ["energy", "forces"], ["positions", "numbers", "cell", "pbc"])
        return float(calc.results["energy"]) - subtract, np.asarray(calc.results["forces"], dtype=np.float64)

    info = {"torch": torch.__version__, "so3krates_torch": getattr(so3krates_torch, "__version__", "0.2.1"),
            "interface": "SO3LRCalculator(r_max_lr=12, dispersion_energy_cutoff_lr_damping=2, "
                         f"default_dtype={dtype_name!r}).calculate",
            "energy_shift_handling": ("shipped shift kept, its float64 sum subtracted afterwards" if args.keep_shift
                                      else "energy_shifts parameter set to 0 (SO3LR's add_shift=False)"),
            "energy_shift_removed_eV": shift_total,
            "energy_shift_per_atom_eV": shift_total / len(system["numbers"])}
    return call, info


# ---------------------------------------------------------------------------------- JAX-MD SO3LR
def make_jax_md(system, dtype_name, args):
    import jax
    if dtype_name == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import warnings
    warnings.filterwarnings("ignore")
    from jax_md import space
    from mlff.mdx.potential import MLFFPotentialSparse
    from so3lr import to_jax_md

    dtype = jnp.float64 if dtype_name == "float64" else jnp.float32
    cell = np.asarray(system["cell"], dtype=np.float64)
    if np.abs(cell - np.diag(np.diag(cell))).max() > 1e-12:
        raise RuntimeError("jax-md entry supports orthorhombic boxes only (as so3lr's md CLI)")
    lengths = np.diag(cell)
    if lengths.min() < 2 * 12.0:
        raise RuntimeError(f"box {lengths.min():.2f} Å is shorter than 2 x the 12 Å long-range cutoff: "
                           "JAX SO3LR is wrong there (see ../shared/peers.md)")
    # The same weights as our conversion and so3lr's own params/ (byte-identical params.pkl),
    # without the energy shift (add_shift=False, the reference convention), as so3lr's md CLI.
    potential = MLFFPotentialSparse.create_from_workdir(
        workdir=args.reference_dir, from_file=True, add_shift=False, dtype=dtype,
        long_range_kwargs=dict(cutoff_lr=12.0, dispersion_energy_cutoff_lr_damping=2.0,
                               neighborlist_format_lr="ordered_sparse"))
    box = jnp.asarray(lengths, dtype=dtype)
    displacement, _ = space.periodic_general(box, fractional_coordinates=True)
    frac = np.mod(np.asarray(system["positions"], dtype=np.float64) / lengths, 1.0)
    R = jnp.asarray(frac, dtype=dtype)
    species = jnp.asarray(system["numbers"], dtype=jnp.int32)
    neighbor_fn, neighbor_fn_lr, energy_fn = to_jax_md(
        potential, displacement, box, species=species, fractional_coordinates=True,
        disable_cell_list=False)
    nbrs = neighbor_fn.allocate(R, box=box)
    nbrs_lr = neighbor_fn_lr.allocate(R, box=box)
    if nbrs.did_buffer_overflow or nbrs_lr.did_buffer_overflow:
        raise RuntimeError("JAX-MD neighbour list overflowed at allocation")

    value_and_grad = jax.value_and_grad(energy_fn)

    @jax.jit
    def step(R, nbrs, nbrs_lr):  # one MD-step's worth: neighbour-list update + energy + forces
        nbrs = nbrs.update(R)
        nbrs_lr = nbrs_lr.update(R)
        e, g = value_and_grad(R, nbrs.idx, nbrs_lr.idx, box=box)
        return e, g, nbrs.did_buffer_overflow | nbrs_lr.did_buffer_overflow

    ef_only = jax.jit(lambda R, idx, idx_lr: value_and_grad(R, idx, idx_lr, box=box))

    def to_result(e, g):
        # jax_md's periodic_general(fractional_coordinates=True) differentiates through its
        # coordinate transform with a custom JVP, so the gradient w.r.t. the fractional positions
        # is already the Cartesian dE/dr (what its integrators use as the force); checked against
        # the reference forces of the 1536-atom box.
        return float(e), -np.asarray(g, dtype=np.float64)

    def call():
        e, g, overflow = step(R, nbrs, nbrs_lr)
        jax.block_until_ready((e, g))
        if bool(overflow):
            raise RuntimeError("JAX-MD neighbour list overflowed")
        return to_result(e, g)

    def call_ef_only():
        e, g = ef_only(R, nbrs.idx, nbrs_lr.idx)
        jax.block_until_ready((e, g))
        return to_result(e, g)

    import jaxlib
    info = {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "interface": "so3lr.to_jax_md + jax.jit(value_and_grad); call = neighbour-list update + E + F",
            "sr_pairs_capacity": int(nbrs.idx.shape[1]), "lr_pairs_capacity": int(nbrs_lr.idx.shape[1]),
            "extra_timings": {"energy_forces_only": call_ef_only}}
    return call, info


BACKENDS = {"ours": make_ours, "so3krates-torch": make_so3krates_torch, "jax-md": make_jax_md}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", required=True, choices=sorted(BACKENDS))
    p.add_argument("--dtype", required=True, choices=["float32", "float64"])
    p.add_argument("--system", required=True, help="npz with numbers, positions (Å), cell (Å), pbc")
    p.add_argument("--out", required=True, help="result JSON (forces go to <out>.forces.npy)")
    p.add_argument("--model", help="exported TorchScript file (backend ours)")
    p.add_argument("--reference-dir", help="directory with SO3LR params.pkl + hyperparameters.yaml (jax-md)")
    p.add_argument("--keep-shift", action="store_true",
                   help="so3krates-torch: run with its shipped energy shift and subtract the sum afterwards")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    data = np.load(args.system)
    system = {k: data[k] for k in ("numbers", "positions", "cell", "pbc")}
    n = int(len(system["numbers"]))

    t0 = time.perf_counter()
    call, info = BACKENDS[args.backend](system, args.dtype, args)
    extra = info.pop("extra_timings", {})
    load_s = time.perf_counter() - t0
    warm = []
    for _ in range(max(1, args.warmup)):
        t = time.perf_counter()
        energy, forces = call()
        warm.append(time.perf_counter() - t)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        energy, forces = call()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    result = {
        "backend": args.backend, "dtype": args.dtype, "atoms": n,
        "load_s": load_s, "warmup_s": load_s + warm[0], "warmup_calls_s": warm,
        "times_s": times, "median_s": med, "s_per_atom": med / n, "us_per_atom": 1e6 * med / n,
        "energy_eV": energy, "energy_per_atom_eV": energy / n,
        "max_abs_force": float(np.abs(forces).max()),
        "peak_rss_gb_self": _rss_gb(), "python": sys.version.split()[0],
        "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")},
        **info,
    }
    for name, fn in extra.items():
        fn()  # compile
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            e2, _ = fn()
            ts.append(time.perf_counter() - t)
        result[f"{name}_median_s"] = statistics.median(ts)
        result[f"{name}_energy_eV"] = e2
    result["peak_rss_gb_self"] = _rss_gb()
    np.save(args.out + ".forces.npy", forces)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("backend", "dtype", "atoms", "median_s", "energy_eV")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
