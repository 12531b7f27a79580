"""The programs of a ``.pt2`` package: graphs traced from the model's entry points and compiled ahead
of time (torch.export + AOTInductor), one program per entry point.

* ``model`` (and ``periodic_model`` for EFA models: ``model`` is then the open-boundary program):
  energy, forces and strain derivative of one structure from given pair lists
  (:class:`EdgeEnergyForces`; ASE, OpenMM's PythonForce).
* the engine stages of :mod:`so3krates.export.exported_model` (what the LAMMPS pair style runs), one
  program per stage, layer and direction: ``project_0``, ``project_0_vjp``, ``messages_0``, ...;
  EFA stages once per boundary (``update_1_open``, ``update_1_periodic``, ...): see
  :func:`engine_program_names`.

Every program is traced from the same eager code as the TorchScript file (the ``engine_*`` methods of
:class:`~so3krates.export.exported_model.ExportedPotential`), so the two formats cannot drift apart.
Sizes: the number of atoms and of pairs are dynamic, at least 2 each (torch.export specialises sizes 0
and 1): engines pad smaller calls (``plugins/lammps/stage_backend.cpp``). Example inputs are recorded
from a run of the engine driver (:mod:`so3krates.export.engine_reference`) on a small structure.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from so3krates.export.exported_model import ExportedPotential
from so3krates.potential.forces import autograd_gradients, strain
from so3krates.potential.graph.edges import pair_vectors

MIN_SIZE = 2  # torch.export specialises dimensions of size 0 and 1: the programs need >= 2
BOUNDARIES = ("open", "periodic")


class EdgeEnergyForces(nn.Module):
    """The generic program: a So3krates model on given pair lists, one structure.

    ``forward(positions [N,3] Å, atomic_numbers [N], cell [3,3] Å (zeros when open),
    idx_i [E], idx_j [E], shifts [E,3] (integer image offsets, float), idx_i_lr [E'], idx_j_lr [E'],
    shifts_lr [E',3], total_charge [1] e, num_unpaired_electrons [1])
    -> (atomic_energies [N] eV, forces [N,3] eV/Å, dE/dstrain [3,3] eV)``;
    pair vectors are ``r_j − r_i + shift·cell``; stress = dE/dstrain / volume. ``periodic`` fixes the
    boundary of the EFA layers (a program is compiled per boundary).
    """

    def __init__(self, model: nn.Module, periodic: bool):
        super().__init__()
        self.model = model
        self.periodic = bool(periodic)

    def forward(self, positions: Tensor, atomic_numbers: Tensor, cell: Tensor, idx_i: Tensor, idx_j: Tensor,
                shifts: Tensor, idx_i_lr: Tensor, idx_j_lr: Tensor, shifts_lr: Tensor, total_charge: Tensor,
                num_unpaired_electrons: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        pos = positions.detach().requires_grad_(True)
        n = pos.shape[0]
        batch = torch.zeros(n, dtype=torch.long, device=pos.device)
        pos_s, cell_s, eps = strain(pos, cell.unsqueeze(0), batch, 1, True)
        vec = pair_vectors(pos_s, cell_s[0], idx_i, idx_j, shifts)
        vec_lr = pair_vectors(pos_s, cell_s[0], idx_i_lr, idx_j_lr, shifts_lr)
        pbc = torch.full((1, 3), self.periodic, dtype=torch.bool, device=pos.device)
        out = self.model(pos_s, atomic_numbers, vec, idx_i, idx_j, vec_lr, idx_i_lr, idx_j_lr, batch, 1,
                         total_charge, num_unpaired_electrons, cell_s, pbc)
        atomic = out["atomic_energies"]
        g_pos, g_eps = autograd_gradients(atomic.sum(), pos, eps, True, True, False)
        return atomic, -g_pos, g_eps[0]


def static_boundary_copy(potential, periodic: bool):
    """A deep copy of an eager So3kratesPotential whose EFA layers assume one boundary (no branch on pbc),
    use the per-pair simplex layout (shapes independent of the cell) and whose ``forward`` forms the EFA
    key-value sums first (no data-dependent shapes). Same values as ``potential`` up to rounding."""
    pot = copy.deepcopy(potential)
    model = pot.model
    model.efa_global_sums = True
    for layer in model.layers:
        block = layer.efa
        block.boundary = 2 if periodic else 1
        if block.efa is not None:
            if getattr(block.efa, "periodic_mode", "simplex") != "simplex" and periodic:
                raise ValueError("the pt2 format supports periodic EFA in the 'simplex' mode only (the 'kshell' "
                                 "mode's number of k vectors depends on the cell); export this model in the "
                                 "TorchScript format")
            block.efa.simplex_layout = 2
    return pot


# --------------------------------------------------------------------------- engine stages
class AtomsStage(nn.Module):
    """``engine_atoms(stage, k, inputs)`` as a program of the inputs."""

    def __init__(self, exported: ExportedPotential, stage: str, k: int):
        super().__init__()
        self.exported, self.stage, self.k = exported, stage, k

    def forward(self, *inputs: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self.exported.engine_atoms(self.stage, self.k, list(inputs)))


class AtomsStageVJP(nn.Module):
    """``engine_atoms_vjp(stage, k, inputs, grads)`` as a program of inputs + grads."""

    def __init__(self, exported: ExportedPotential, stage: str, k: int, num_inputs: int):
        super().__init__()
        self.exported, self.stage, self.k, self.num_inputs = exported, stage, k, num_inputs

    def forward(self, *args: Tensor) -> Tuple[Tensor, ...]:
        n = self.num_inputs
        return tuple(self.exported.engine_atoms_vjp(self.stage, self.k, list(args[:n]), list(args[n:])))


class PairsStage(nn.Module):
    """``engine_pairs(stage, k, z_i, z_j, a_i, a_j, vectors)``."""

    def __init__(self, exported: ExportedPotential, stage: str, k: int):
        super().__init__()
        self.exported, self.stage, self.k = exported, stage, k

    def forward(self, z_i: Tensor, z_j: Tensor, a_i: Tensor, a_j: Tensor, vectors: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self.exported.engine_pairs(self.stage, self.k, z_i, z_j, a_i, a_j, vectors))


class PairsStageVJP(nn.Module):
    """``engine_pairs_vjp(stage, k, z_i, z_j, a_i, a_j, vectors, g_i, g_j)``."""

    def __init__(self, exported: ExportedPotential, stage: str, k: int):
        super().__init__()
        self.exported, self.stage, self.k = exported, stage, k

    def forward(self, z_i: Tensor, z_j: Tensor, a_i: Tensor, a_j: Tensor, vectors: Tensor,
                g_i: Tensor, g_j: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self.exported.engine_pairs_vjp(self.stage, self.k, z_i, z_j, a_i, a_j, vectors, g_i, g_j))


PAIR_STAGES = ("messages", "zbl", "long_range")


def program_name(stage: str, k: int, vjp: bool, boundary: str = "") -> str:
    """``project_0_fwd``, ``messages_1_vjp``, ``update_2_periodic_fwd``, ``update_2_periodic_vjp``, ``embed_fwd``, ...

    No name is a prefix of another (the AOTInductor package loader of torch 2.9 picks a program's files by
    name prefix: ``messages_0`` would load ``messages_0_vjp``)."""
    name = stage + ("_" + str(k) if stage in ("project", "messages", "efa_sums", "update") else "")
    if boundary:
        name += "_" + boundary
    return name + ("_vjp" if vjp else "_fwd")


def layout_boundaries(layout: Dict[str, int]) -> Tuple[str, ...]:
    """The boundaries the per-boundary (EFA) programs are compiled for: open only for direction-dependent
    EFA queries/keys (``efa_qk_degrees`` > 0, defined for open systems only)."""
    return BOUNDARIES[:1] if int(layout.get("efa_qk_degrees", 0)) > 0 else BOUNDARIES


def engine_stage_list(layout: Dict[str, int]) -> List[Tuple[str, int, bool, bool]]:
    """(stage, k, has_vjp, per_boundary) of every engine stage the layout needs (``check`` excepted: the
    engine checks its input itself)."""
    out: List[Tuple[str, int, bool, bool]] = []
    if layout["embedding_sums"]:
        out.append(("embedding_sums", 0, False, False))
    out.append(("embed", 0, False, False))
    for k in range(layout["num_layers"]):
        efa = bool(layout["efa" + str(k)])
        out += [("project", k, True, False), ("messages", k, True, False)]
        if efa:
            out.append(("efa_sums", k, True, True))
        out.append(("update", k, True, efa))
    out.append(("readout", 0, True, False))
    if layout["zbl"]:
        out.append(("zbl", 0, True, False))
    if layout["exchange_width"] > 0:
        out += [("long_range_values", 0, True, False), ("long_range", 0, True, False)]
    return out


def engine_program_names(layout: Dict[str, int]) -> List[str]:
    names: List[str] = []
    for stage, k, vjp, per_boundary in engine_stage_list(layout):
        for b in (layout_boundaries(layout) if per_boundary else ("",)):
            names.append(program_name(stage, k, False, b))
            if vjp:
                names.append(program_name(stage, k, True, b))
    return names


class Recorder:
    """Wraps an eager ExportedPotential and keeps the first inputs of every engine call (the example
    inputs of the programs)."""

    def __init__(self, exported: ExportedPotential):
        self.exported = exported
        self.potential = exported.potential
        self.calls: Dict[Tuple[str, str, int], List[Tensor]] = {}

    def _keep(self, key: Tuple[str, str, int], tensors: List[Tensor]) -> None:
        if key not in self.calls:
            self.calls[key] = [t.detach().clone() for t in tensors]

    def engine_layout(self) -> Dict[str, int]:
        return self.exported.engine_layout()

    def engine_atoms(self, stage: str, k: int, inputs: List[Tensor]) -> List[Tensor]:
        self._keep(("atoms", stage, k), inputs)
        return self.exported.engine_atoms(stage, k, inputs)

    def engine_atoms_vjp(self, stage: str, k: int, inputs: List[Tensor], grads: List[Tensor]) -> List[Tensor]:
        self._keep(("atoms_vjp", stage, k), inputs + grads)
        return self.exported.engine_atoms_vjp(stage, k, inputs, grads)

    def engine_pairs(self, stage: str, k: int, z_i: Tensor, z_j: Tensor, a_i: Tensor, a_j: Tensor,
                     vectors: Tensor) -> List[Tensor]:
        self._keep(("pairs", stage, k), [z_i, z_j, a_i, a_j, vectors])
        return self.exported.engine_pairs(stage, k, z_i, z_j, a_i, a_j, vectors)

    def engine_pairs_vjp(self, stage: str, k: int, z_i: Tensor, z_j: Tensor, a_i: Tensor, a_j: Tensor,
                         vectors: Tensor, g_i: Tensor, g_j: Tensor) -> List[Tensor]:
        self._keep(("pairs_vjp", stage, k), [z_i, z_j, a_i, a_j, vectors, g_i, g_j])
        return self.exported.engine_pairs_vjp(stage, k, z_i, z_j, a_i, a_j, vectors, g_i, g_j)


def _resize_rows(t: Tensor, n_old: int, n_new: int) -> Tensor:
    """Rows repeated cyclically to ``n_new`` (only tensors whose first dimension is ``n_old``)."""
    if t.dim() == 0 or t.shape[0] != n_old:
        return t
    return t.index_select(0, torch.arange(n_new) % n_old).contiguous()


def _fresh_sizes(static: set, count: int) -> List[int]:
    """``count`` distinct sizes >= 11 that equal no static dimension (tracing unifies equal sizes)."""
    out: List[int] = []
    n = 11
    while len(out) < count:
        if n not in static and all(n % p for p in range(2, int(n ** 0.5) + 1)):
            out.append(n)
        n += 1
    return out


class StageProgram:
    """One engine program: the module to trace, example inputs, which input dimensions are dynamic, and
    what an engine needs to pad calls with fewer than 2 rows (atoms or pairs): ``rows_in`` / ``rows_out``
    (indices of the inputs / outputs with one row per atom or pair), ``num_inputs`` (inputs before the
    gradients of a ``*_vjp`` program; all inputs otherwise)."""

    def __init__(self, name: str, module: nn.Module, example: Tuple[Tensor, ...], dynamic: Tuple,
                 num_inputs: int):
        self.name, self.module, self.example, self.dynamic = name, module, example, dynamic
        self.num_inputs = num_inputs
        self.rows_in = [i for i, d in enumerate(dynamic) if d is not None]
        n = example[self.rows_in[0]].shape[0]
        with torch.no_grad():
            out = module(*example)
        out = (out,) if isinstance(out, Tensor) else out
        self.rows_out = [i for i, t in enumerate(out) if t.dim() > 0 and t.shape[0] == n]

    def padding_metadata(self) -> Dict[str, str]:
        """AOTInductor metadata strings (read by the engines through the package loader)."""
        return {"rows_in": ",".join(map(str, self.rows_in)), "rows_out": ",".join(map(str, self.rows_out)),
                "num_inputs": str(self.num_inputs)}


def record_examples(exported: ExportedPotential, positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray,
                    periodic: bool, dtype: torch.dtype = torch.float64) -> Recorder:
    """Run the engine driver once (one rank, all pairs in one chunk) and keep every stage's inputs."""
    from so3krates.export.engine_reference import evaluate

    rec = Recorder(exported)
    pbc = np.array([periodic] * 3)
    evaluate(rec, positions, numbers, cell if periodic else np.zeros((3, 3)), pbc, 1,
             charge=0.0, spin=0.0, chunk=1 << 30, dtype=dtype)
    return rec


def engine_programs(exported_by_boundary: Dict[str, ExportedPotential],
                    recorders: Dict[str, Recorder]) -> List[StageProgram]:
    """Every engine program of the model (see :func:`engine_program_names`), with example inputs whose
    atom and pair counts are fresh sizes (traced as dynamic)."""
    any_b = BOUNDARIES[0]
    layout = exported_by_boundary[any_b].engine_layout()
    programs: List[StageProgram] = []
    for stage, k, has_vjp, per_boundary in engine_stage_list(layout):
        for b in (layout_boundaries(layout) if per_boundary else (any_b,)):
            suffix = b if per_boundary else ""
            exp, rec = exported_by_boundary[b], recorders[b]
            pair = stage in PAIR_STAGES
            for vjp in ((False, True) if has_vjp else (False,)):
                kind = ("pairs" if pair else "atoms") + ("_vjp" if vjp else "")
                key = (kind, stage, k)
                if key not in rec.calls:
                    if vjp:  # no input of the stage needs a gradient (layer 0's projection): never called
                        continue
                    raise RuntimeError(f"the example run did not call {kind} {stage} {k}")
                inputs = rec.calls[key]
                n_old = inputs[-1 if pair else 0].shape[0]
                static = {int(d) for t in inputs for d in t.shape}
                widths = {int(d) for t in inputs for d in t.shape[1:]} | \
                    {int(t.shape[0]) for t in inputs if t.dim() > 0 and t.shape[0] != n_old}
                if n_old in widths or n_old < MIN_SIZE:
                    raise ValueError(f"example structure: {n_old} rows in {kind} {stage} {k} equal a fixed width; "
                                     "record the examples on a structure of another size")
                n_new = _fresh_sizes(static, 1)[0]
                example = tuple(_resize_rows(t, n_old, n_new) for t in inputs)
                dim = torch.export.Dim("pairs" if pair else "atoms", min=MIN_SIZE)
                dynamic = tuple({0: dim} if (t.dim() > 0 and t.shape[0] == n_old) else None for t in inputs)
                n_in = len(rec.calls[(kind.replace("_vjp", ""), stage, k)])
                if pair:
                    module: nn.Module = PairsStageVJP(exp, stage, k) if vjp else PairsStage(exp, stage, k)
                else:
                    module = AtomsStageVJP(exp, stage, k, n_in) if vjp else AtomsStage(exp, stage, k)
                programs.append(StageProgram(program_name(stage, k, vjp, suffix), module, example, dynamic, n_in))
    return programs
