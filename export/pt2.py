"""``so3krates export --format pt2``: a torch.export / AOTInductor package, TorchScript's successor.

TorchScript (the default ``.pt`` format) is deprecated upstream; ``torch.export`` + AOTInductor is its
replacement. Every entry point of the model is compiled ahead of time to C++ and packaged in one
``.pt2`` file with the so3krates metadata (``extra/so3krates_metadata.json``; each compiled program
also carries it in its AOTInductor metadata, where C++ reads it):

* ``model`` (+ ``periodic_model`` for EFA models, ``model`` being then the open-boundary program):
  energy, forces and strain derivative of one structure from given pair lists. :class:`So3kratesPT2`
  (needs the ``so3krates`` package) validates the input and builds the pair lists in eager PyTorch
  (``torch.export`` cannot trace the cell-list search: data-dependent shapes), then runs it — the
  runtime of ASE and OpenMM's PythonForce.
* the engine stages (``project_0``, ``messages_0_vjp``, ..., :mod:`so3krates.export.pt2_programs`),
  what ``pair_style so3krates`` runs for a ``.pt2`` file, with the same halo-exchange protocol as a
  TorchScript file (``pair_coeff * * model.pt2 H C N O``).

Every model kind is supported: local, EFA (open and periodic; the periodic 'kshell' mode is refused:
its number of k vectors depends on the cell), electrostatics, dispersion, ZBL, charge/spin embeddings.
Sizes are dynamic: any number of atoms and pairs >= 2; engines pad calls with 0 or 1 rows
(:mod:`so3krates.export.pt2_engine`). Every export is verified against the eager model before the
file is kept: the generic program on open and periodic structures of two other sizes, the engine
stages through the engine driver (:mod:`so3krates.export.engine_reference`) on 1, 2 and 5 simulated
ranks (5 leaves ranks with 0 or 1 atoms, i.e. the padding). The compiled code targets the CPU it was
compiled on (``-march=native``): export on the machine type that runs it. Compiling takes ~10-30 s per
program (a 2-layer model has ~16 programs; progress is printed). Units: Å, eV, eV/Å, eV/Å³.

torch 2.9.0 notes: (1) AOTInductor's kernel fusion miscompiles the force (backward) part of the published SO3LR
network's ``model`` program (3 layers whose geometry feeds predicted charges into electrostatics and
dispersion: energy exact, forces off by 1.3-3.3 eV/Å); a program that fails the export-time check is
therefore compiled again with ``max_fusion_size=1`` and checked again (the export says which). (2) AOTInductor
miscompiles ``q - zeros(1).index_add(0, batch, q)[batch]`` for a dynamic
number of rows (``tests/test_export_pt2.py::test_upstream_index_add_broadcast_reproducer``); the model avoids
that pattern for one graph (``potential/nn/segments.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from so3krates.export.exported_model import ExportedPotential
from so3krates.export.metadata import PT2_METADATA_NAME, build_metadata, read_metadata
from so3krates.export.pt2_programs import (MIN_SIZE, EdgeEnergyForces, StageProgram, engine_programs,
                                           record_examples, static_boundary_copy)
from so3krates.potential.graph.neighbors import neighbor_list
from so3krates.potential.validate import check_cell, check_min_distance, check_species, check_structure, is_open

__all__ = ["export_pt2", "So3kratesPT2", "edge_inputs", "MIN_SIZE"]

#: AOTInductor metadata key holding the so3krates metadata JSON (C++: AOTIModelPackageLoader::get_metadata)
AOTI_METADATA_KEY = "so3krates_metadata"


def _example_structure(species: List[int], n: int, seed: int) -> Tuple[np.ndarray, np.ndarray, float]:
    """A random cluster of the model's elements, atoms at least 1.0 Å apart, and the edge (Å) of a cubic
    box around it that keeps periodic images at least 1.0 Å apart."""
    rng = np.random.default_rng(seed)
    box = 1.6 * n ** (1.0 / 3.0) + 1.0
    pos: List[np.ndarray] = []
    while len(pos) < n:
        p = rng.uniform(0.0, box, 3)
        if all(np.linalg.norm(p - q) > 1.0 for q in pos):
            pos.append(p)
    return np.array(pos), rng.choice(np.array(species), size=n), box + 1.0


def _generic_inputs(potential, periodic: bool, dtype: torch.dtype, device: str, n: int, seed: int):
    pos, z, box = _example_structure(list(potential.species), n, seed)
    cell = torch.eye(3, dtype=dtype, device=device) * (box if periodic else 0.0)
    pbc = torch.full((3,), periodic, dtype=torch.bool, device=device)
    return edge_inputs(torch.tensor(pos, dtype=dtype, device=device), torch.tensor(z, device=device), cell, pbc,
                       0.0, 0.0, potential.cutoff, potential.cutoff_lr if potential.long_range else 0.0, dtype,
                       torch.device(device))


def edge_inputs(positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor, total_charge: float,
                num_unpaired_electrons: float, cutoff: float, cutoff_lr: float, dtype: torch.dtype,
                device: torch.device):
    """Neighbour lists (Å) and the argument tuple of :class:`EdgeEnergyForces` for one structure; open
    structures are centred (the energy is translation invariant; EFA phases stay accurate)."""
    pbc_b = pbc.to(torch.bool)
    open_sys = is_open(cell, pbc_b)
    cell_m = torch.zeros(3, 3, dtype=dtype, device=device) if open_sys else cell.to(dtype)
    if open_sys:
        pbc_b = torch.zeros(3, dtype=torch.bool, device=device)
    pos = positions.detach().to(dtype)
    if open_sys and pos.shape[0] > 0:
        pos = pos - pos.mean(0, keepdim=True)
    idx_i, idx_j, shifts = neighbor_list(pos, cutoff, cell_m, pbc_b, True)
    if cutoff_lr > 0.0:
        il, jl, sl = neighbor_list(pos, cutoff_lr, cell_m, pbc_b, True)
    else:  # unused by the compiled graph of a local model
        il, jl, sl = idx_i[:MIN_SIZE], idx_j[:MIN_SIZE], shifts[:MIN_SIZE]
    if pos.shape[0] < MIN_SIZE or idx_i.shape[0] < MIN_SIZE or il.shape[0] < MIN_SIZE:
        raise ValueError(f"the pt2 package needs at least {MIN_SIZE} atoms and {MIN_SIZE} neighbour pairs within "
                         f"the cutoff ({cutoff} Å); this structure has {pos.shape[0]} atoms and "
                         f"{idx_i.shape[0]} pairs: use the TorchScript file for it")
    q = torch.full((1,), float(total_charge), dtype=dtype, device=device)
    s = torch.full((1,), float(num_unpaired_electrons), dtype=dtype, device=device)
    return (pos, atomic_numbers.to(torch.long), cell_m, idx_i, idx_j, shifts, il, jl, sl, q, s)


class CompiledMismatch(ValueError):
    """A compiled program disagrees with the eager model; ``programs`` names the programs that were checked."""

    def __init__(self, message: str, programs: List[str]):
        super().__init__(message)
        self.programs = programs


def _compile(program: StageProgram, aoti_metadata: Dict[str, str], keep_dir: str, fuse: bool = True) -> List[str]:
    """make_fx (flattens the explicit backward to aten ops) → torch.export with dynamic rows → AOTInductor.

    ``fuse=False`` compiles with ``max_fusion_size=1`` (one kernel per node): the work-around for the torch 2.9
    AOTInductor fusion miscompile of SO3LR's forces (see the module docstring); slower code, so it is used only
    for a program that failed the export-time check. The compiled files are copied to ``keep_dir/<program name>/`` at once: AOTInductor writes them into its
    cache under a hash of the graph, and two programs with the same graph but other weights (the projection
    of layer 0 and of layer 1) share that path — the second compile overwrites the first one's weights."""
    from torch.fx.experimental.proxy_tensor import make_fx

    traced = make_fx(program.module, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*program.example)
    exported = torch.export.export(traced, program.example, dynamic_shapes=program.dynamic, strict=False)
    meta = dict(aoti_metadata)
    meta.update(program.padding_metadata())
    options: Dict[str, Any] = {"aot_inductor.package": True, "aot_inductor.metadata": meta}
    if not fuse:
        options["max_fusion_size"] = 1
    paths = torch._inductor.aot_compile(exported.module(), program.example, options=options)
    target = os.path.join(keep_dir, program.name)
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    kept = []
    for path in paths:
        kept.append(os.path.join(target, os.path.basename(path)))
        shutil.copy2(path, kept[-1])
    return kept


def _generic_programs(potential, boundaries: List[str], dtype: torch.dtype, device: str) -> List[StageProgram]:
    out = []
    for b in boundaries:
        periodic = b == "periodic"
        module = EdgeEnergyForces(static_boundary_copy(potential, periodic).model, periodic).eval()
        example = _generic_inputs(potential, periodic, dtype, device, n=12, seed=0)
        atoms = torch.export.Dim("atoms", min=MIN_SIZE)
        edges = torch.export.Dim("edges", min=MIN_SIZE)
        edges_lr = torch.export.Dim("edges_lr", min=MIN_SIZE)
        dynamic = ({0: atoms}, {0: atoms}, None, {0: edges}, {0: edges}, {0: edges},
                   {0: edges_lr}, {0: edges_lr}, {0: edges_lr}, None, None)
        out.append(StageProgram("periodic_model" if periodic and len(boundaries) > 1 else "model", module, example,
                                dynamic, len(example)))
    return out


def _engine_setup(potential, boundaries: List[str], dtype: torch.dtype) -> Tuple[Dict[str, ExportedPotential],
                                                                                Dict[str, Any]]:
    """Eager engine modules per boundary and the example runs that record the stages' inputs."""
    exported, recorders = {}, {}
    for b in boundaries:
        periodic = b == "periodic"
        exported[b] = ExportedPotential(static_boundary_copy(potential, periodic)).eval()
        pos, z, box = _example_structure(list(potential.species), 13, seed=3)
        recorders[b] = record_examples(exported[b], pos, z, np.eye(3) * box, periodic, dtype)
    return exported, recorders


def _verify_generic(runner: Callable, programs: Dict[str, Any], potential, dtype: torch.dtype, device: str,
                    tol: float, say: Callable[[str], None], open_only: bool = False) -> None:
    for periodic in (False,) if open_only else (False, True):
        for n, seed in ((9, 1), (23, 2)):
            args = _generic_inputs(potential, periodic, dtype, device, n=n, seed=seed)
            pos, z, cell = args[0], args[1], args[2]
            pbc = torch.full((3,), periodic, dtype=torch.bool, device=device)
            ref = potential(pos, z, cell, pbc, 0.0, 0.0, True, False)
            name = "periodic_model" if periodic and "periodic_model" in programs else "model"
            e_got, f_got, _ = runner(name)(*args)
            _compare(float(e_got.sum()), float(ref["energy"]), f_got, ref["forces"], tol,
                     f"the compiled program '{name}' on {n} atoms ({'periodic' if periodic else 'open'})", [name])
    say(f"generic program(s) = eager on {'open' if open_only else 'open and periodic'} structures of 9 and 23 atoms")


def _verify_engine(engine, potential, dtype: torch.dtype, tol: float, say: Callable[[str], None],
                   open_only: bool = False, names: Optional[List[str]] = None) -> None:
    from so3krates.export.engine_reference import evaluate

    eager = ExportedPotential(potential).eval()
    for periodic in (False,) if open_only else (False, True):
        pos, z, box = _example_structure(list(potential.species), 16, seed=5)
        cell = np.eye(3) * (box if periodic else 0.0)
        pbc = np.array([periodic] * 3)
        ref = evaluate(eager, pos, z, cell, pbc, 1, dtype=dtype)
        for ranks in (1, 2, 5):
            got = evaluate(engine, pos, z, cell, pbc, ranks, dtype=dtype)
            _compare(got["energy"], ref["energy"], torch.as_tensor(got["forces"]), torch.as_tensor(ref["forces"]),
                     tol, f"the compiled engine stages on {ranks} rank(s) ({'periodic' if periodic else 'open'})",
                     names or [])
    say("engine stages = eager on 1, 2 and 5 simulated ranks (ranks with 0 and 1 atoms included)")


def _compare(e_got: float, e_ref: float, f_got: Tensor, f_ref: Tensor, tol: float, what: str,
             programs: List[str]) -> None:
    de = abs(e_got - e_ref)
    df = float((f_got.detach().cpu().double() - f_ref.detach().cpu().double()).abs().max())
    if not (de <= tol * max(1.0, abs(e_ref)) and df <= tol * max(1.0, float(f_ref.abs().max()))):
        raise CompiledMismatch(f"{what} disagrees with the eager model (|ΔE| = {de:.3g} eV, max|ΔF| = {df:.3g} "
                               f"eV/Å): torch {torch.__version__} miscompiles it; export it in the TorchScript format "
                               "(the default) and report the model config", programs)


def export_pt2(potential, output: str | os.PathLike, dtype: str = "float64", device: str = "cpu",
               metadata: Optional[Dict[str, Any]] = None, verify_tolerance: Optional[float] = None,
               progress: bool = True, engine: bool = True) -> Dict[str, Any]:
    """Compile ``potential`` (an eager So3kratesPotential) with torch.export + AOTInductor into ``output``
    (``.pt2``); returns the metadata written. ``engine=False`` leaves out the engine stages (no LAMMPS;
    faster export). Raises ``ValueError`` for models that cannot be packaged and when a compiled program
    disagrees with the eager model (then use the TorchScript format)."""
    from torch.export.pt2_archive._package import package_pt2

    output = os.fspath(output)
    if not output.endswith(".pt2"):
        raise ValueError(f"a pt2 package must be named *.pt2, got '{output}'")
    if device != "cpu":
        raise ValueError(f"--format pt2 is compiled for the CPU here (device '{device}' requested); export on a "
                         "machine with that device, or use the TorchScript format")
    tdtype = getattr(torch, dtype)
    potential = potential.to(tdtype).to(device).eval()
    # EFA: one program per boundary kind; direction-dependent EFA (efa_qk_degrees > 0) is open-only
    open_only = potential.model.has_efa and potential.model.efa_qk_degrees > 0
    boundaries = ["open", "periodic"] if potential.model.has_efa and not open_only else ["open"]

    def say(msg: str) -> None:
        if progress:
            print(f"[export pt2] {msg}", flush=True)

    programs = _generic_programs(potential, boundaries, tdtype, device)
    exported_b: Dict[str, ExportedPotential] = {}
    if engine:
        exported_b, recorders = _engine_setup(potential, boundaries, tdtype)
        programs += engine_programs(exported_b, recorders)
        layout = exported_b["open"].engine_layout()
    meta = build_metadata(potential, dtype)
    meta.update({"format": "pt2", "device": device, "compiled_with": f"torch {torch.__version__} AOTInductor",
                 "entry_points": ["So3kratesPT2 (so3krates.export.pt2)"] + (["pair_style so3krates"] if engine else []),
                 "programs": {p.name: p.padding_metadata() for p in programs}})
    if engine:
        meta["engine_layout"] = {k: int(v) for k, v in layout.items()}
    if metadata:
        meta.update(metadata)
    meta_json = json.dumps(meta, indent=1)
    aoti_meta = {AOTI_METADATA_KEY: meta_json, "species": ",".join(str(int(z)) for z in potential.species),
                 "dtype": dtype}
    if engine:
        aoti_meta["engine_layout"] = ";".join(f"{k}={int(v)}" for k, v in layout.items())

    files: Dict[str, List[str]] = {}
    t_all = time.perf_counter()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".pt2", dir=os.path.dirname(os.path.abspath(output)))
    os.close(fd)
    keep_dir = tempfile.mkdtemp(prefix="so3krates_pt2_")
    tol = verify_tolerance if verify_tolerance is not None else (1e-8 if dtype == "float64" else 2e-4)
    engine_names = [p.name for p in programs if p.name not in ("model", "periodic_model")]
    unfused: List[str] = []
    try:
        for i, program in enumerate(programs):
            t0 = time.perf_counter()
            files[program.name] = _compile(program, aoti_meta, keep_dir)
            say(f"[{i + 1}/{len(programs)}] compiled {program.name} ({time.perf_counter() - t0:.0f} s, "
                f"{time.perf_counter() - t_all:.0f} s in all)")
        while True:
            if unfused:  # recorded for `so3krates info` (the programs' own AOTInductor metadata predate it)
                meta["compiled_without_fusion"] = list(unfused)
                meta_json = json.dumps(meta, indent=1)
            package_pt2(tmp, aoti_files=files, extra_files={PT2_METADATA_NAME: meta_json})
            try:
                _verify_package(tmp, meta, potential, tdtype, device, tol, say, open_only, engine_names if engine
                                else None)
                break
            except CompiledMismatch as err:
                retry = [name for name in err.programs if name not in unfused]
                if not retry:
                    raise
                # torch 2.9 AOTInductor fuses some kernels of SO3LR's backward wrongly: compile without fusion
                say(f"{err.args[0].split(':')[0]}; recompiling {len(retry)} program(s) with kernel fusion off "
                    "(max_fusion_size=1)")
                for program in programs:
                    if program.name in retry:
                        t0 = time.perf_counter()
                        files[program.name] = _compile(program, aoti_meta, keep_dir, fuse=False)
                        say(f"recompiled {program.name} without fusion ({time.perf_counter() - t0:.0f} s)")
                unfused += retry
        os.replace(tmp, output)
    finally:
        shutil.rmtree(keep_dir, ignore_errors=True)
        if os.path.exists(tmp):
            os.remove(tmp)
    if unfused:
        say(f"compiled without kernel fusion (the export-time check failed with it): {', '.join(unfused)}")
    say(f"wrote {output} ({len(programs)} programs, verified against the eager model, "
        f"{time.perf_counter() - t_all:.0f} s)")
    return meta


def _verify_package(path: str, meta: Dict[str, Any], potential, dtype: torch.dtype, device: str, tol: float,
                    say: Callable[[str], None], open_only: bool, engine_names: Optional[List[str]]) -> None:
    """The export-time check of a packaged file; raises :class:`CompiledMismatch` naming the programs to blame."""
    from torch._inductor.package import load_package

    from so3krates.export.pt2_engine import PT2Engine

    runners: Dict[str, Any] = {}

    def runner(name: str):
        if name not in runners:
            runners[name] = load_package(path, model_name=name)
        return runners[name]

    _verify_generic(runner, meta["programs"], potential, dtype, device, tol, say, open_only)
    if engine_names is not None:
        _verify_engine(PT2Engine(path, meta), potential, dtype, tol, say, open_only, engine_names)


class So3kratesPT2:
    """Runtime of a ``.pt2`` package: same call and outputs as the TorchScript file's ``forward``.

    ``model(positions [N,3] Å, atomic_numbers [N], cell [3,3] Å, pbc [3] bool, total_charge=0.,
    num_unpaired_electrons=0., compute_forces=True, compute_stress=False)`` returns
    ``{"energy": [] eV, "forces": [N,3] eV/Å, "stress": [3,3] eV/Å³ (periodic, on request),
    "atomic_energies": [N] eV}``. Input checks are those of the TorchScript file.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        from torch._inductor.package import load_package

        self.metadata = read_metadata(path)
        if self.metadata.get("format") != "pt2":
            raise ValueError(f"'{path}' is a TorchScript file; load it with so3krates.export.loader.load_exported")
        meta = self.metadata
        self.cutoff = float(meta["cutoff"])
        self.cutoff_lr = float(meta.get("cutoff_lr") or 0.0)
        self.long_range = self.cutoff_lr > 0.0
        self.dtype = getattr(torch, meta["dtype"])
        self.device = torch.device(device)
        species = [int(z) for z in meta["species"]]
        self.species = species
        known = torch.zeros(max(species) + 1, dtype=torch.bool)
        known[torch.tensor(species)] = True
        self.known_species = known
        path = os.fspath(path)
        self.runner = load_package(path, model_name="model")
        names = meta.get("programs", {})
        self.runner_periodic = load_package(path, model_name="periodic_model") if "periodic_model" in names \
            else self.runner

    def __call__(self, positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor,
                 total_charge: float = 0.0, num_unpaired_electrons: float = 0.0,
                 compute_forces: bool = True, compute_stress: bool = False) -> Dict[str, Tensor]:
        check_structure(positions, atomic_numbers, cell, pbc)
        check_species(atomic_numbers, self.known_species, self.species)
        check_cell(cell, pbc)
        args = edge_inputs(positions, atomic_numbers, cell, pbc, total_charge, num_unpaired_electrons, self.cutoff,
                           self.cutoff_lr, self.dtype, self.device)
        pos, _, cell_m, idx_i, idx_j, shifts = args[:6]
        check_min_distance(pos[idx_j] - pos[idx_i] + shifts @ cell_m, idx_i, idx_j, shifts, 0.1)
        periodic = not is_open(cell, pbc.to(torch.bool))
        if periodic and int(self.metadata.get("efa_qk_degrees", 0)) > 0:
            raise ValueError("efa_qk_degrees > 0 (direction-dependent EFA queries/keys) supports open systems "
                             "(pbc = F,F,F) only; for periodic boxes use a model with efa_qk_degrees = 0")
        if periodic and not bool(pbc.to(torch.bool).all()) and self.runner_periodic is not self.runner:
            raise ValueError("Euclidean fast attention supports fully periodic or fully open boxes, not mixed "
                             "boundaries (pbc = " + str(pbc.tolist()) + ")")
        if compute_stress and float(torch.linalg.det(cell_m.to(torch.float64)).abs()) == 0.0:
            raise ValueError("stress needs a periodic cell with non-zero volume; call with compute_stress=False "
                             "or give a periodic cell")
        atomic, forces, dstrain = (self.runner_periodic if periodic else self.runner)(*args)
        out = {"energy": atomic.sum(), "atomic_energies": atomic}
        if compute_forces:
            out["forces"] = forces
        if compute_stress:
            out["stress"] = dstrain / torch.linalg.det(cell_m).abs()
        return out
