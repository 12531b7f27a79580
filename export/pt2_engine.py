"""The engine stages of a ``.pt2`` package, callable from Python like the TorchScript file's
``engine_*`` methods (what :mod:`so3krates.export.engine_reference` drives).

The LAMMPS pair style does the same in C++ (``plugins/lammps/stage_backend.cpp``, ``AOTIBackend``);
this class is the Python twin used to verify a package when it is written and in the tests.

Padding (the programs need at least 2 rows of atoms or pairs; ``rows_in`` / ``rows_out`` of every
program, from the package metadata, say which inputs and outputs have one row per atom or pair):

* 1 row: the row is duplicated. Forward programs return row 0 of the row outputs and half of the other
  outputs (sums over the rows: exactly twice the one row's share). Backward (``*_vjp``) programs get
  the duplicated inputs and half of every gradient (each copy carries half), and return the sum of the
  two copies' rows and the other outputs as they are — exact in floating point (scaling by 1/2).
* 0 rows: the program runs on 2 dummy rows (ones; integer inputs the model's first element); the row
  outputs are empty and the other outputs zero.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor

from so3krates.export.pt2_programs import MIN_SIZE, program_name
from so3krates.potential.validate import check_species


def _ints(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v != ""]


def run_padded(runner, inputs: List[Tensor], rows_in: List[int], rows_out: List[int], num_inputs: int,
               dummy_z: int) -> List[Tensor]:
    """Call a compiled program on ``inputs`` with the padding described in the module docstring."""
    n = inputs[rows_in[0]].shape[0]

    def call(args: List[Tensor]) -> List[Tensor]:
        out = runner(*[a.contiguous() for a in args])
        return [out] if isinstance(out, Tensor) else list(out)

    if n >= MIN_SIZE:
        return call(inputs)
    vjp = num_inputs < len(inputs)
    rows = set(rows_in)
    if n == 1:
        args = []
        for i, t in enumerate(inputs):
            if i >= num_inputs:
                t = 0.5 * t
            args.append(torch.cat([t, t]) if i in rows else t)
        out = call(args)
        res = []
        for i, t in enumerate(out):
            if i in rows_out:
                res.append(t[0:1] + t[1:2] if vjp else t[0:1])
            else:
                res.append(t if vjp else 0.5 * t)
        return res
    args = []
    for i, t in enumerate(inputs):
        if i in rows:
            shape = [MIN_SIZE] + list(t.shape[1:])
            t = torch.full(shape, dummy_z, dtype=t.dtype, device=t.device) if not t.is_floating_point() else \
                torch.ones(shape, dtype=t.dtype, device=t.device)
        args.append(t)
    out = call(args)
    return [t[0:0] if i in rows_out else torch.zeros_like(t) for i, t in enumerate(out)]


class PT2Engine:
    """``engine_layout / engine_atoms / engine_atoms_vjp / engine_pairs / engine_pairs_vjp`` of a package
    (same arguments and results as :class:`~so3krates.export.exported_model.ExportedPotential`)."""

    def __init__(self, path: str, metadata: Dict, device: str = "cpu"):
        from torch._inductor.package import load_package

        self._load = lambda name: load_package(path, model_name=name)
        self.programs: Dict[str, Dict[str, str]] = metadata["programs"]
        self.layout: Dict[str, int] = {k: int(v) for k, v in metadata["engine_layout"].items()}
        self.cutoff = float(metadata["cutoff"])
        self.cutoff_lr = float(metadata.get("cutoff_lr") or 0.0)
        self.species = [int(z) for z in metadata["species"]]
        known = torch.zeros(max(self.species) + 1, dtype=torch.bool)
        known[torch.tensor(self.species)] = True
        self.known_species = known
        self._runners: Dict[str, object] = {}

    def _run(self, name: str, inputs: List[Tensor]) -> List[Tensor]:
        if name not in self.programs:
            raise ValueError(f"the package has no program '{name}'")
        if name not in self._runners:
            self._runners[name] = self._load(name)
        info = self.programs[name]
        return run_padded(self._runners[name], inputs, _ints(info["rows_in"]), _ints(info["rows_out"]),
                          int(info["num_inputs"]), self.species[0])

    def _name(self, stage: str, k: int, vjp: bool, inputs: List[Tensor]) -> str:
        if program_name(stage, k, False, "open") in self.programs:  # an EFA stage: one program per boundary
            pbc = inputs[3] if stage == "efa_sums" else inputs[4]
            periodic = bool(pbc.all())
            if not periodic and bool(pbc.any()):
                raise ValueError("Euclidean fast attention supports fully periodic or fully open boxes, not mixed "
                                 "boundaries")
            return program_name(stage, k, vjp, "periodic" if periodic else "open")
        return program_name(stage, k, vjp)

    def engine_layout(self) -> Dict[str, int]:
        return dict(self.layout)

    def engine_atoms(self, stage: str, k: int, inputs: List[Tensor]) -> List[Tensor]:
        if stage == "check":
            if not bool(torch.isfinite(inputs[0]).all()):
                raise ValueError("positions contain NaN or inf (Å): the simulation has blown up or the input is "
                                 "corrupt; check the time step, the starting structure and the units")
            check_species(inputs[1], self.known_species, self.species)
            return []
        return self._run(self._name(stage, k, False, inputs), inputs)

    def engine_atoms_vjp(self, stage: str, k: int, inputs: List[Tensor], grads: List[Tensor]) -> List[Tensor]:
        return self._run(self._name(stage, k, True, inputs), inputs + grads)

    def engine_pairs(self, stage: str, k: int, z_i: Tensor, z_j: Tensor, a_i: Tensor, a_j: Tensor,
                     vectors: Tensor) -> List[Tensor]:
        return self._run(program_name(stage, k, False), [z_i, z_j, a_i, a_j, vectors])

    def engine_pairs_vjp(self, stage: str, k: int, z_i: Tensor, z_j: Tensor, a_i: Tensor, a_j: Tensor,
                         vectors: Tensor, g_i: Tensor, g_j: Tensor) -> List[Tensor]:
        return self._run(program_name(stage, k, True), [z_i, z_j, a_i, a_j, vectors, g_i, g_j])
