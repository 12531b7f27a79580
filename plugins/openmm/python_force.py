"""Build an ``openmm.PythonForce`` that calls an exported so3krates model from Python.

This route does not need openmm-torch (so it works with any torch version, e.g. on GPU
machines whose torch is not the one openmm-torch was built for) and allows ``torch.compile``
of eager modules. Units as in :mod:`so3krates.openmm.torch_force`: nm ↔ Å (×10),
eV → kJ/mol (×96.48533212331002, CODATA 2018), eV/Å → kJ/mol/nm.

The computation object is picklable (it carries the model file's bytes, not the loaded module),
so the System can be serialized with ``XmlSerializer``, deep-copied, and used inside openmm-ml's
``createMixedSystem(interpolate=True)`` (which deep-copies the force into a CustomCVForce).
"""

from __future__ import annotations

import io
from typing import Optional, Sequence, Union

from . import _torch_first  # noqa: F401

import numpy as np
import torch
import openmm
import openmm.app
from openmm import unit

from so3krates.export.loader import MD_NEIGHBOR_SKIN, raise_for_status, resolve_neighbor_skin, set_neighbor_skin

from ._options import parse_bool
from .torch_force import (EV_PER_A_TO_KJ_PER_MOL_NM, EV_TO_KJ_PER_MOL, NM_TO_ANGSTROM,
                          ModelSource, atomic_numbers_from_topology, cast_model, for_inference, load_model,
                          read_model_bytes, resolve_dtype, select_atoms, topology_is_periodic)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class So3kratesComputation:
    """Picklable callable ``state -> (energy kJ/mol, forces ndarray [N,3] kJ/mol/nm)``."""

    def __init__(self, model_bytes: bytes, atomic_numbers: Sequence[int],
                 indices: Optional[Sequence[int]], periodic: bool, charge: float,
                 num_unpaired_electrons: float, dtype: str, device: str, compile: bool = False,
                 num_threads: Optional[int] = None, eager_metadata: Optional[dict] = None,
                 neighbor_skin: Optional[float] = None):
        self.model_bytes = model_bytes
        # None: model_bytes is an exported TorchScript file; a dict: a torch.save'd eager module
        self.eager_metadata = eager_metadata
        self.atomic_numbers = [int(z) for z in atomic_numbers]
        self.indices = None if indices is None else [int(i) for i in indices]
        self.periodic = bool(periodic)
        self.charge = float(charge)
        self.num_unpaired_electrons = float(num_unpaired_electrons)
        self.dtype = str(dtype)
        self.device = str(device)
        self.compile = bool(compile)
        self.num_threads = num_threads
        self.neighbor_skin = neighbor_skin
        self._ready = False

    # pickling: keep the model bytes and settings, drop the loaded module and tensors
    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("_module", "_numbers", "_pbc", "_open_cell", "_index", "_tdtype", "_call"):
            state.pop(key, None)
        state["_ready"] = False
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._ready = False

    def _setup(self):
        device = torch.device(self.device)
        if self.eager_metadata is None:
            module, metadata = load_model(self.model_bytes, map_location=device)
        else:
            module = torch.load(io.BytesIO(self.model_bytes), map_location=device, weights_only=False)
            module.eval()
            metadata = self.eager_metadata
        tdtype = resolve_dtype(self.dtype, metadata)
        module = for_inference(cast_model(module, tdtype, metadata))
        set_neighbor_skin(module, getattr(self, "neighbor_skin", None), MD_NEIGHBOR_SKIN)
        self._module = module
        self._tdtype = tdtype
        self._numbers = torch.tensor(self.atomic_numbers, dtype=torch.long, device=device)
        self._pbc = torch.tensor([self.periodic] * 3, dtype=torch.bool, device=device)
        self._open_cell = torch.zeros((3, 3), dtype=tdtype, device=device)
        self._index = None if self.indices is None else np.asarray(self.indices, dtype=np.int64)
        call = module
        if self.compile:
            call = torch.compile(module, dynamic=True)
        self._call = call
        self._ready = True

    def __call__(self, state: openmm.State):
        if not self._ready:
            self._setup()
        if self.num_threads is not None:
            torch.set_num_threads(int(self.num_threads))
        pos_nm = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        n_total = pos_nm.shape[0]
        if self._index is not None:
            pos_nm = pos_nm[self._index]
        device = self._numbers.device
        pos = (torch.as_tensor(np.ascontiguousarray(pos_nm), device=device) * NM_TO_ANGSTROM).to(self._tdtype)
        if self.periodic:
            box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
            cell = (torch.as_tensor(np.asarray(box), device=device) * NM_TO_ANGSTROM).to(self._tdtype)
        else:
            cell = self._open_cell
        out = self._call(pos, self._numbers, cell, self._pbc, self.charge,
                         self.num_unpaired_electrons, True, False)
        raise_for_status(out)
        energy = float(out["energy"].detach().to(torch.float64).cpu()) * EV_TO_KJ_PER_MOL
        forces = out["forces"].detach().to(torch.float64).cpu().numpy() * EV_PER_A_TO_KJ_PER_MOL_NM
        if self._index is not None:
            full = np.zeros((n_total, 3), dtype=np.float64)
            full[self._index] = forces
            forces = full
        return energy, forces


def _eager_metadata(module: torch.nn.Module, metadata: Optional[dict]) -> dict:
    if metadata is None:
        metadata = getattr(module, "metadata", None)
    if metadata is None:
        try:  # an eager So3kratesPotential: the exporter knows how to describe it
            from so3krates.export.metadata import build_metadata
            metadata = build_metadata(module)
        except Exception as exc:
            raise ValueError("python_force with an eager module needs metadata={'species': [...], "
                             "'dtype': 'float64'} (could not derive it: " + str(exc) + ")") from exc
    if "species" not in metadata:
        raise ValueError("metadata must list the model's species (atomic numbers)")
    metadata = dict(metadata)
    if "dtype" not in metadata:
        try:
            metadata["dtype"] = str(next(module.parameters()).dtype).replace("torch.", "")
        except StopIteration:
            metadata["dtype"] = "float64"
    return metadata


def python_force(model_path: Union[ModelSource, torch.nn.Module], topology: openmm.app.Topology,
                 atoms: Optional[Sequence[int]] = None, charge: float = 0.0,
                 num_unpaired_electrons: float = 0.0, dtype: Union[str, torch.dtype, None] = None,
                 force_group: int = 0, device: Optional[str] = None, compile: Union[bool, str] = False,
                 periodic: Optional[bool] = None, num_threads: Optional[int] = None,
                 metadata: Optional[dict] = None, neighbor_skin: Optional[float] = None) -> openmm.PythonForce:
    """Create an ``openmm.PythonForce`` computing the so3krates model's energy and forces.

    Same arguments and results as :func:`so3krates.openmm.torch_force` (Å/eV model,
    nm/kJ/mol OpenMM; ``dtype`` None = the file's), plus ``device`` ('cpu', 'cuda', ...; default
    cuda when available),
    ``compile`` (wrap the module in ``torch.compile``; useful for eager modules — an exported
    TorchScript module is already compiled and gains nothing; the first call compiles, minutes on
    CPU) and ``num_threads`` (``torch.set_num_threads`` before each call; default: leave torch's).
    ``neighbor_skin`` (Å; None = 1.0, 0 = search every step) as for ``torch_force``.

    ``model_path`` may also be an eager ``nn.Module`` with the exported ``forward`` signature
    (e.g. a ``So3kratesPotential``) — then ``metadata`` (at least ``species``) is taken from the
    argument, the module's ``metadata`` attribute, or the exporter; the module is stored with
    ``torch.save`` so the force stays picklable/serializable.
    """
    if isinstance(model_path, torch.nn.Module) and not isinstance(model_path, torch.jit.ScriptModule):
        metadata = _eager_metadata(model_path, metadata)
        resolve_neighbor_skin(model_path, neighbor_skin, MD_NEIGHBOR_SKIN)  # checked now, set at the first step
        buf = io.BytesIO()
        torch.save(model_path, buf)
        model_bytes, eager_metadata = buf.getvalue(), metadata
    else:
        if isinstance(model_path, torch.jit.ScriptModule):
            raise ValueError("pass the exported file's path (its metadata lives in the file), not a loaded ScriptModule")
        model_bytes, eager_metadata = read_model_bytes(model_path), None
        loaded, metadata = load_model(model_bytes)  # validates the file (and the skin) now, not at the first step
        resolve_neighbor_skin(loaded, neighbor_skin, MD_NEIGHBOR_SKIN)
    compile = parse_bool("compile", compile)
    tdtype = resolve_dtype(dtype, metadata)
    indices = select_atoms(topology, atoms)
    numbers = atomic_numbers_from_topology(topology, indices, metadata)
    if periodic is None:
        periodic = topology_is_periodic(topology)
    compute = So3kratesComputation(model_bytes, numbers, indices, periodic, charge,
                                   num_unpaired_electrons, str(tdtype).replace("torch.", ""),
                                   device or _default_device(), compile=compile,
                                   num_threads=num_threads, eager_metadata=eager_metadata,
                                   neighbor_skin=neighbor_skin)
    force = openmm.PythonForce(compute)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setForceGroup(int(force_group))
    force.setName("so3krates")
    return force
