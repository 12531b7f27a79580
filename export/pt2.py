"""``so3krates export --format pt2``: a torch.export / AOTInductor package, TorchScript's successor.

TorchScript (the default ``.pt`` format) is deprecated upstream; ``torch.export`` + AOTInductor
is its replacement. The model is compiled ahead of time to C++ and packaged in one ``.pt2`` file
together with the so3krates metadata (``extra/so3krates_metadata.json``).

What is inside: energy, forces and the strain derivative of one structure **from a given edge
list** — ``torch.export`` cannot trace the cell-list neighbour search (data-dependent shapes),
so :class:`So3kratesPT2` (this module, needs the ``so3krates`` package) validates the input and
builds the neighbour lists in eager PyTorch, then calls the compiled graph. Shapes are dynamic
(any number of atoms ≥ 2 and edges ≥ 2).

Where it works (torch 2.9.0): local So3krates models (no EFA, no electrostatics/dispersion),
open and periodic, float32 and float64. Every export is verified against the eager model on a
test structure; a mismatch (AOTInductor miscompiles the long-range terms with torch 2.9.0:
errors of ~0.5 eV were measured) or a model with EFA (its open/periodic branch is data
dependent) stops the export with an error that says to use the TorchScript format. Compiling
takes one to a few minutes on a CPU. Units: Å, eV, eV/Å, eV/Å³ as everywhere.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from so3krates.export.metadata import PT2_METADATA_NAME, build_metadata, read_metadata
from so3krates.potential.forces import autograd_gradients, strain
from so3krates.potential.graph.edges import pair_vectors
from so3krates.potential.graph.neighbors import neighbor_list
from so3krates.potential.validate import check_cell, check_min_distance, check_species, check_structure, is_open
MIN_SIZE = 2  # torch.export specialises dimensions of size 0 and 1: the compiled graph needs >= 2


class EdgeEnergyForces(nn.Module):
    """The graph that is compiled: a So3krates model on given edge lists.

    ``forward(positions [N,3] Å, atomic_numbers [N], cell [3,3] Å (zeros when open),
    idx_i [E], idx_j [E], shifts [E,3] (integer image offsets, float), idx_i_lr [E'], idx_j_lr [E'],
    shifts_lr [E',3], total_charge [1] e, num_unpaired_electrons [1])
    -> (atomic_energies [N] eV, forces [N,3] eV/Å, dE/dstrain [3,3] eV)``;
    edge vectors are ``r_j − r_i + shift·cell``; stress = dE/dstrain / volume.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, positions: Tensor, atomic_numbers: Tensor, cell: Tensor, idx_i: Tensor, idx_j: Tensor,
                shifts: Tensor, idx_i_lr: Tensor, idx_j_lr: Tensor, shifts_lr: Tensor, total_charge: Tensor,
                num_unpaired_electrons: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        pos = positions.detach().requires_grad_(True)
        n = pos.shape[0]
        batch = torch.zeros(n, dtype=torch.long, device=pos.device)
        pos_s, cell_s, eps = strain(pos, cell.unsqueeze(0), batch, 1, True)
        vec = pair_vectors(pos_s, cell_s[0], idx_i, idx_j, shifts)
        vec_lr = pair_vectors(pos_s, cell_s[0], idx_i_lr, idx_j_lr, shifts_lr)
        pbc = torch.zeros(1, 3, dtype=torch.bool, device=pos.device)  # only EFA reads it (refused)
        out = self.model(pos_s, atomic_numbers, vec, idx_i, idx_j, vec_lr, idx_i_lr, idx_j_lr, batch, 1,
                         total_charge, num_unpaired_electrons, cell_s, pbc)
        atomic = out["atomic_energies"]
        g_pos, g_eps = autograd_gradients(atomic.sum(), pos, eps, True, True, False)
        return atomic, -g_pos, g_eps[0]


def _supported(cfg) -> Optional[str]:
    """None when the config can be packaged, else the reason it cannot."""
    if any(cfg.efa_layers):
        return "the model uses Euclidean fast attention (its open/periodic branch is data dependent)"
    return None


def _example_structure(species: List[int], n: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """A random open cluster of the model's elements, atoms at least 1.0 Å apart (Å)."""
    rng = np.random.default_rng(seed)
    box = 1.6 * n ** (1.0 / 3.0) + 1.0
    pos: List[np.ndarray] = []
    while len(pos) < n:
        p = rng.uniform(0.0, box, 3)
        if all(np.linalg.norm(p - q) > 1.0 for q in pos):
            pos.append(p)
    return np.array(pos), rng.choice(np.array(species), size=n)


def _example_inputs(potential, dtype: torch.dtype, device: str, n: int, seed: int):
    pos, z = _example_structure(list(potential.species), n, seed)
    return edge_inputs(torch.tensor(pos, dtype=dtype, device=device), torch.tensor(z, device=device),
                       torch.zeros(3, 3, dtype=dtype, device=device), torch.zeros(3, dtype=torch.bool, device=device),
                       0.0, 0.0, potential.cutoff, potential.cutoff_lr if potential.long_range else 0.0, dtype,
                       torch.device(device))


def edge_inputs(positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor, total_charge: float,
                num_unpaired_electrons: float, cutoff: float, cutoff_lr: float, dtype: torch.dtype,
                device: torch.device):
    """Neighbour lists (Å) and the argument tuple of :class:`EdgeEnergyForces` for one structure."""
    pbc_b = pbc.to(torch.bool)
    open_sys = is_open(cell, pbc_b)
    cell_m = torch.zeros(3, 3, dtype=dtype, device=device) if open_sys else cell.to(dtype)
    if open_sys:
        pbc_b = torch.zeros(3, dtype=torch.bool, device=device)
    pos = positions.detach().to(dtype)
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


def export_pt2(potential, output: str | os.PathLike, dtype: str = "float64", device: str = "cpu",
               metadata: Optional[Dict[str, Any]] = None, verify_tolerance: Optional[float] = None,
               progress: bool = True) -> Dict[str, Any]:
    """Compile ``potential`` (an eager So3kratesPotential) with torch.export + AOTInductor into ``output``
    (``.pt2``); returns the metadata written. Raises ``ValueError`` for models that cannot be packaged
    and when the compiled graph disagrees with the eager model (then use the TorchScript format)."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.export.pt2_archive._package import package_pt2

    output = os.fspath(output)
    if not output.endswith(".pt2"):
        raise ValueError(f"a pt2 package must be named *.pt2, got '{output}'")
    reason = _supported(potential.model.config)
    if reason is not None:
        raise ValueError(f"--format pt2 is not available for this model: {reason}; "
                         "export it in the TorchScript format (the default, --format torchscript)")
    tdtype = getattr(torch, dtype)
    potential = potential.to(tdtype).to(device).eval()
    graph = EdgeEnergyForces(potential.model).eval()
    example = _example_inputs(potential, tdtype, device, n=12, seed=0)

    def say(msg: str) -> None:
        if progress:
            print(f"[export pt2] {msg}", flush=True)

    t0 = time.perf_counter()
    traced = make_fx(graph, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
    say(f"traced forward + backward ({len(traced.graph.nodes)} nodes, {time.perf_counter() - t0:.1f} s)")
    n_atoms = torch.export.Dim("atoms", min=MIN_SIZE)
    n_edges = torch.export.Dim("edges", min=MIN_SIZE)
    n_edges_lr = torch.export.Dim("edges_lr", min=MIN_SIZE)
    dynamic = ({0: n_atoms}, {0: n_atoms}, None, {0: n_edges}, {0: n_edges}, {0: n_edges},
               {0: n_edges_lr}, {0: n_edges_lr}, {0: n_edges_lr}, None, None)
    t0 = time.perf_counter()
    program = torch.export.export(traced, example, dynamic_shapes=dynamic, strict=False)
    say(f"torch.export done ({time.perf_counter() - t0:.1f} s); compiling with AOTInductor (a few minutes)")
    t0 = time.perf_counter()
    files = torch._inductor.aot_compile(program.module(), example, options={"aot_inductor.package": True})
    say(f"compiled ({time.perf_counter() - t0:.1f} s)")

    meta = build_metadata(potential, dtype)
    meta.update({"format": "pt2", "device": device, "entry_points": ["So3kratesPT2 (so3krates.export.pt2)"],
                 "compiled_with": f"torch {torch.__version__} AOTInductor"})
    if metadata:
        meta.update(metadata)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output[:-4] + ".tmp.pt2"
    package_pt2(tmp, aoti_files={"model": files}, extra_files={PT2_METADATA_NAME: json.dumps(meta, indent=1)})

    # verify on fresh structures of other sizes (dynamic shapes) before the file is kept
    runner = torch._inductor.aoti_load_package(tmp)
    tol = verify_tolerance if verify_tolerance is not None else (1e-8 if dtype == "float64" else 2e-4)
    for n, seed in ((9, 1), (23, 2)):
        args = _example_inputs(potential, tdtype, device, n=n, seed=seed)
        e_ref, f_ref, _ = graph(*args)
        e_got, f_got, _ = runner(*args)
        de = float((e_got.sum() - e_ref.sum()).abs())
        df = float((f_got - f_ref).abs().max())
        scale = max(1.0, float(e_ref.sum().abs()))
        fscale = max(1.0, float(f_ref.abs().max()))
        if not (de <= tol * scale and df <= tol * fscale):
            os.remove(tmp)
            raise ValueError(f"the AOTInductor-compiled model disagrees with the eager model (|ΔE| = {de:.3g} eV, "
                             f"max|ΔF| = {df:.3g} eV/Å on {n} atoms): torch {torch.__version__} miscompiles it; "
                             "export it in the TorchScript format (the default)")
    os.replace(tmp, output)
    say(f"verified against the eager model on 9 and 23 atoms; wrote {output}")
    return meta


class So3kratesPT2:
    """Runtime of a ``.pt2`` package: same call and outputs as the TorchScript file's ``forward``.

    ``model(positions [N,3] Å, atomic_numbers [N], cell [3,3] Å, pbc [3] bool, total_charge=0.,
    num_unpaired_electrons=0., compute_forces=True, compute_stress=False)`` returns
    ``{"energy": [] eV, "forces": [N,3] eV/Å, "stress": [3,3] eV/Å³ (periodic, on request),
    "atomic_energies": [N] eV}``. Input checks are those of the TorchScript file.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        self.metadata = read_metadata(path)
        if self.metadata.get("format") != "pt2":
            raise ValueError(f"'{path}' is a TorchScript file; load it with so3krates.export.metadata.load_exported")
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
        self.runner = torch._inductor.aoti_load_package(os.fspath(path))

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
        if compute_stress and float(torch.linalg.det(cell_m.to(torch.float64)).abs()) == 0.0:
            raise ValueError("stress needs a periodic cell with non-zero volume; call with compute_stress=False "
                             "or give a periodic cell")
        atomic, forces, dstrain = self.runner(*args)
        out = {"energy": atomic.sum(), "atomic_energies": atomic}
        if compute_forces:
            out["forces"] = forces
        if compute_stress:
            out["stress"] = dstrain / torch.linalg.det(cell_m).abs()
        return out
