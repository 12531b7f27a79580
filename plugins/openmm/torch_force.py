"""Build an ``openmmtorch.TorchForce`` from an exported so3krates model file.

Units: OpenMM works in nm and kJ/mol, the model in Å and eV. The wrapper converts
positions and box vectors nm → Å (×10), energies eV → kJ/mol (×96.48533212331002) and forces
eV/Å → kJ/mol/nm (×964.8533212331002). The eV → kJ/mol factor is e·N_A/1000 with the exact
SI-2019 (CODATA 2018) values e = 1.602176634e-19 C, N_A = 6.02214076e23 /mol; it equals
``openmm.unit`` and ``ase.units.create_units('2018')`` (ASE's default ``ase.units`` is CODATA
2014: 96.48533288..., 8e-9 relative difference).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

from . import _torch_first  # noqa: F401  (import torch first, repair the Torch plugins)

import torch
from torch import Tensor, nn
import openmm
import openmm.app

from so3krates.export.loader import (MD_NEIGHBOR_SKIN, load_exported, read_model_bytes, set_capturable,
                                     set_neighbor_skin)
from so3krates.export.metadata import ModelSource

from ._options import parse_nonnegative_int, parse_optional_bool

# 1 eV in kJ/mol: e * N_A / 1000 with exact SI-2019 constants (CODATA 2018).
EV_TO_KJ_PER_MOL: float = 1.602176634e-19 * 6.02214076e23 / 1000.0  # 96.48533212331002
NM_TO_ANGSTROM: float = 10.0
# Forces: eV/Å → kJ/mol/nm
EV_PER_A_TO_KJ_PER_MOL_NM: float = EV_TO_KJ_PER_MOL * NM_TO_ANGSTROM

_DTYPES = {"float64": torch.float64, "float32": torch.float32, "double": torch.float64,
           "single": torch.float32}



# openmm-torch builds that work with one torch release only (binary wheels; verified, docs/install.md):
# openmmtorch 1.5 segfaults with torch 2.8 and fails with "set_stride is not allowed" from torch 2.10 on.
_OPENMMTORCH_NEEDS_TORCH = {"1.5": "2.9."}
_TORCH_FORCE_STATUS: Optional[Tuple[bool, str]] = None

#: Names accepted for the two OpenMM routes (``implementation=`` of MLPotential, ``--openmm-force``).
IMPLEMENTATIONS = {"auto": "auto", "torch": "torch", "torchforce": "torch", "python": "python",
                   "pythonforce": "python"}


def torch_force_status() -> Tuple[bool, str]:
    """Whether ``openmmtorch.TorchForce`` can be used in this environment, and why (not).

    Returns ``(True, "openmmtorch 1.5 with torch 2.9.0+cu128")`` in the project's ``.venv``;
    ``(False, reason)`` when openmmtorch is not installed (the ``.venv-current`` environment,
    torch 2.13), was built for another torch, cannot be imported, or OpenMM could not load its
    TorchReference plugin. Cached after the first call; imports nothing heavy besides openmmtorch.
    """
    global _TORCH_FORCE_STATUS
    if _TORCH_FORCE_STATUS is not None:
        return _TORCH_FORCE_STATUS
    from importlib import metadata
    try:
        version = metadata.version("openmmtorch")
    except metadata.PackageNotFoundError:
        version = None
    if version is None:
        status = (False, f"openmmtorch is not installed (torch {torch.__version__})")
    elif (_OPENMMTORCH_NEEDS_TORCH.get(version) is not None
          and not torch.__version__.startswith(_OPENMMTORCH_NEEDS_TORCH[version])):
        status = (False, f"openmmtorch {version} works only with torch {_OPENMMTORCH_NEEDS_TORCH[version]}x, "
                         f"this is torch {torch.__version__}")
    else:
        try:
            import_openmmtorch()
        except Exception as exc:  # noqa: BLE001 - ImportError/OSError of a binary built for another torch
            status = (False, f"import openmmtorch failed: {exc}")
        else:
            from ._torch_first import _LOADED, ensure_torch_plugins
            ensure_torch_plugins()
            failures = " ".join(openmm.Platform.getPluginLoadFailures())
            if "libOpenMMTorchReference.so" in failures and "libOpenMMTorchReference.so" not in _LOADED:
                status = (False, "OpenMM could not load openmm-torch's TorchReference plugin: "
                                 + next(f for f in openmm.Platform.getPluginLoadFailures() if "TorchReference" in f))
            else:
                status = (True, f"openmmtorch {version} with torch {torch.__version__}")
    _TORCH_FORCE_STATUS = status
    return status


def resolve_implementation(requested: Optional[str] = None) -> Tuple[str, str]:
    """Choose the OpenMM route: ``("torch" | "python", message saying which and why)``.

    ``requested``: None or 'auto' (TorchForce when :func:`torch_force_status` says it works, else
    PythonForce), 'torch'/'TorchForce' (an error naming the reason when it cannot work) or
    'python'/'PythonForce' (any case).
    """
    key = "auto" if requested is None else str(requested).strip().lower()
    if key not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be 'torch' (openmmtorch.TorchForce), 'python' (openmm.PythonForce) "
                         f"or 'auto' (TorchForce when openmmtorch works here, else PythonForce), got {requested!r}")
    choice = IMPLEMENTATIONS[key]
    if choice == "python":
        return "python", "so3krates: OpenMM route PythonForce (openmm.PythonForce), as requested"
    ok, why = torch_force_status()
    if choice == "torch":
        if not ok:
            raise RuntimeError(f"implementation='torch' needs openmmtorch.TorchForce, which is unavailable here: {why}. "
                               "Use implementation='python' (openmm.PythonForce, any torch) or the project's .venv "
                               "environment (torch 2.9.0 + openmmtorch 1.5; docs/install.md, 'Which environment')")
        return "torch", f"so3krates: OpenMM route TorchForce ({why}), as requested"
    if ok:
        return "torch", f"so3krates: OpenMM route TorchForce ({why})"
    return "python", (f"so3krates: OpenMM route PythonForce (openmm.PythonForce): TorchForce is unavailable, {why}. "
                      "Choose a route explicitly with implementation='python' (MLPotential) or --openmm-force python "
                      "(examples); docs/install.md, 'Which environment'")


def import_openmmtorch():
    """``import openmmtorch`` without its "importing 'simtk.openmm' is deprecated" log line
    (openmmtorch 1.5 imports the old ``simtk`` alias; nothing the user can fix).

    Raises ``ImportError`` naming the alternatives when openmmtorch is not installed."""
    import importlib.util
    import logging

    if importlib.util.find_spec("openmmtorch") is None:
        raise ImportError(
            f"openmmtorch is not installed in this environment (torch {torch.__version__}), so TorchForce is "
            "unavailable: use so3krates.openmm.python_force(...) or MLPotential('so3krates', ..., "
            "implementation='python') (openmm.PythonForce), or the project's .venv environment (torch 2.9.0 + "
            "openmmtorch 1.5; docs/install.md, 'Which environment')")

    class _DropSimtk(logging.Filter):
        def filter(self, record):
            return "simtk.openmm" not in record.getMessage()

    root = logging.getLogger()
    drop = _DropSimtk()
    root.addFilter(drop)
    try:
        import openmmtorch
    finally:
        root.removeFilter(drop)
    return openmmtorch


# ----------------------------------------------------------------------------- loading
def load_model(model_path: ModelSource, map_location: Union[str, torch.device] = "cpu"
               ) -> Tuple[torch.jit.ScriptModule, dict]:
    """Load an exported TorchScript model (path or file bytes) and its metadata dict, with the checks of
    :func:`so3krates.export.loader.load_exported` (raises ``ModelFileError``, a ``ValueError``)."""
    read_model_bytes(model_path)  # refuses pt2 packages: TorchForce needs TorchScript
    return load_exported(model_path, device=map_location)


def resolve_dtype(dtype: Union[str, torch.dtype, None], metadata: dict) -> torch.dtype:
    """``None`` → the model's own dtype (metadata ``dtype``, default float64)."""
    if dtype is None:
        dtype = metadata.get("dtype", "float64")
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        return dtype
    key = str(dtype).replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"dtype must be 'float64' or 'float32' (or None for the model's own), got {dtype!r}")
    return _DTYPES[key]


def cast_model(module: torch.jit.ScriptModule, dtype: torch.dtype, metadata: dict):
    """Cast parameters/buffers to ``dtype`` when it differs from the exported dtype."""
    if resolve_dtype(None, metadata) != dtype:
        module = module.to(dtype)
    return module


def for_inference(module: torch.nn.Module) -> torch.nn.Module:
    """Parameters without gradients: forces need ∂E/∂positions only, and autograd bookkeeping
    for the weights (``torch.jit.load`` leaves ``requires_grad=True``) costs ~20 % of a call on
    CPU. Results are unchanged. (openmm-torch's ``torch::jit::freeze`` does this for TorchForce.)"""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


# ----------------------------------------------------------------------------- topology
def _element_symbol(z: int) -> str:
    try:
        return openmm.app.Element.getByAtomicNumber(int(z)).symbol
    except Exception:
        return f"Z={z}"


def select_atoms(topology: openmm.app.Topology, atoms: Optional[Sequence[int]]) -> Optional[List[int]]:
    """Validate the ML subset; ``None`` means every atom of the topology."""
    if atoms is None:
        return None
    n = topology.getNumAtoms()
    idx = [int(i) for i in atoms]
    if len(idx) == 0:
        raise ValueError("atoms is empty: pass the indices of the atoms the model should act on, or None for all")
    if len(set(idx)) != len(idx):
        raise ValueError("atoms contains duplicate indices")
    bad = [i for i in idx if i < 0 or i >= n]
    if bad:
        raise ValueError(f"atoms contains indices outside the topology (0..{n - 1}): {bad[:10]}")
    if idx == list(range(n)):
        return None
    return idx


def atomic_numbers_from_topology(topology: openmm.app.Topology, atoms: Optional[Sequence[int]],
                                 metadata: dict) -> List[int]:
    """Atomic numbers of the ML atoms; clear error for missing or unknown elements."""
    all_atoms = list(topology.atoms())
    chosen = all_atoms if atoms is None else [all_atoms[i] for i in atoms]
    missing = [a for a in chosen if a.element is None]
    if missing:
        names = ", ".join(f"{a.index} ({a.residue.name} {a.name})" for a in missing[:5])
        raise ValueError(
            f"{len(missing)} atom(s) in the ML region have no element (virtual sites / extra "
            f"particles such as TIP4P's EP): {names}; exclude them with `atoms=`")
    numbers = [a.element.atomic_number for a in chosen]
    species = [int(z) for z in metadata["species"]]
    unknown = sorted(set(numbers) - set(species))
    if unknown:
        counts = {z: numbers.count(z) for z in unknown}
        listed = ", ".join(f"{_element_symbol(z)} (Z={z}, {counts[z]} atoms)" for z in unknown)
        known = ", ".join(f"{_element_symbol(z)}" for z in species)
        raise ValueError(
            f"the model does not know element(s) {listed}; it was trained for: {known}. "
            f"Model those atoms with a classical force field (createMixedSystem / `atoms=`) "
            f"or use a model trained on these elements")
    return numbers


def topology_is_periodic(topology: openmm.app.Topology) -> bool:
    return topology.getPeriodicBoxVectors() is not None


# ----------------------------------------------------------------------------- wrapper
class OpenMMWrapper(nn.Module):
    """TorchScript wrapper: OpenMM (nm, kJ/mol) ↔ exported so3krates module (Å, eV).

    ``forward(positions [Ntot,3] nm, boxvectors [3,3] nm or None) -> (energy kJ/mol,
    forces [Ntot,3] kJ/mol/nm)``; only the ``indices`` subset is passed to the model and its
    forces are scattered back (zero on the other atoms).
    """

    def __init__(self, model: torch.jit.ScriptModule, atomic_numbers: Sequence[int],
                 indices: Optional[Sequence[int]], periodic: bool, total_charge: float,
                 num_unpaired_electrons: float, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.register_buffer("atomic_numbers", torch.tensor(list(atomic_numbers), dtype=torch.long))
        self.use_subset = indices is not None
        self.register_buffer("indices", torch.tensor(list(indices) if indices is not None else [],
                                                     dtype=torch.long))
        self.periodic = bool(periodic)
        self.register_buffer("pbc", torch.tensor([periodic] * 3, dtype=torch.bool))
        self.register_buffer("open_cell", torch.zeros((3, 3), dtype=dtype))
        self.total_charge = float(total_charge)
        self.num_unpaired_electrons = float(num_unpaired_electrons)
        self.dtype = dtype
        self.length_scale = NM_TO_ANGSTROM
        self.energy_scale = EV_TO_KJ_PER_MOL
        self.force_scale = EV_PER_A_TO_KJ_PER_MOL_NM

    def forward(self, positions: Tensor, boxvectors: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        pos_all = positions.detach()
        if self.use_subset:
            pos = pos_all.index_select(0, self.indices)
        else:
            pos = pos_all
        pos = (pos * self.length_scale).to(self.dtype)  # scale in OpenMM's precision, then cast
        if self.periodic and boxvectors is not None:
            cell = (boxvectors.detach() * self.length_scale).to(self.dtype)
        else:
            cell = self.open_cell
        out = self.model.forward(pos, self.atomic_numbers, cell, self.pbc, self.total_charge,
                                 self.num_unpaired_electrons, True, False)
        energy = out["energy"].to(torch.float64) * self.energy_scale
        forces = out["forces"].detach().to(pos_all.dtype) * self.force_scale
        if self.use_subset:
            full = torch.zeros_like(pos_all)
            full.index_copy_(0, self.indices, forces)
            forces = full
        return energy.detach(), forces


def build_wrapper(model_path: ModelSource, topology: openmm.app.Topology,
                  atoms: Optional[Sequence[int]] = None, charge: float = 0.0,
                  num_unpaired_electrons: float = 0.0, dtype: Union[str, torch.dtype, None] = None,
                  periodic: Optional[bool] = None, neighbor_skin: Optional[float] = None,
                  capturable: bool = False) -> Tuple[torch.jit.ScriptModule, dict]:
    """Load the model and return the scripted :class:`OpenMMWrapper` and the metadata. ``capturable``: the
    model's steps without host read-back (``set_capturable``; CUDA graphs), periodic topologies only."""
    model, metadata = load_model(model_path)
    tdtype = resolve_dtype(dtype, metadata)
    model = for_inference(cast_model(model, tdtype, metadata))
    set_neighbor_skin(model, neighbor_skin, MD_NEIGHBOR_SKIN)
    if periodic is None:
        periodic = topology_is_periodic(topology)
    if capturable:
        if not periodic:
            raise ValueError("CUDA graphs (use_cuda_graphs=True) need a periodic box: the model's capturable pair "
                             "lists have the fixed shapes of a periodic cell. Give the topology periodic box "
                             "vectors, or leave use_cuda_graphs off for an open system")
        set_capturable(model, True)
    indices = select_atoms(topology, atoms)
    numbers = atomic_numbers_from_topology(topology, indices, metadata)
    wrapper = OpenMMWrapper(model, numbers, indices, periodic, charge, num_unpaired_electrons, tdtype)
    return torch.jit.script(wrapper), metadata


def torch_force(model_path: ModelSource, topology: openmm.app.Topology,
                atoms: Optional[Sequence[int]] = None, charge: float = 0.0,
                num_unpaired_electrons: float = 0.0, dtype: Union[str, torch.dtype, None] = None,
                force_group: int = 0, use_cuda_graphs: Union[bool, str, None] = None,
                periodic: Optional[bool] = None, cuda_graph_warmup_steps: Union[int, str, None] = None,
                properties: Optional[Dict[str, str]] = None, neighbor_skin: Optional[float] = None):
    """Create an ``openmmtorch.TorchForce`` computing the so3krates model's energy and forces.

    Parameters
    ----------
    model_path: path (or bytes) of a file written by ``so3krates export`` (TorchScript with
        ``so3krates/metadata.json``).
    topology: the OpenMM Topology of the whole System (elements give the species; its periodic
        box vectors, if any, make the force periodic).
    atoms: indices (into the whole System) of the atoms the model acts on; ``None`` = all.
        Only those are passed to the model; the other atoms get zero force.
    charge: total charge of the ML atoms (e); num_unpaired_electrons: their number of unpaired
        electrons (multiplicity − 1). Used by SO3LR-type models, ignored by purely local ones.
    dtype: None (default: the dtype the file was exported in), 'float32' or 'float64'. A float32
        file run in float64 computes in double precision with its float32-rounded weights and
        constants: smooth to round-off, but ~1e-8 (energy) / ~2e-6 (largest force) relative away
        from a float64 export of the same checkpoint; export with ``--dtype float64`` for
        reference work (docs/openmm.md).
    force_group: OpenMM force group of the new force.
    use_cuda_graphs: True/False (or "true"/"false", ...) sets the TorchForce property
        ``useCUDAGraphs`` (read by the CUDA platform only); None leaves openmm-torch's default
        (off). ``cuda_graph_warmup_steps`` (int ≥ 0) sets ``CUDAGraphWarmupSteps``. True also makes the
        model's steps capturable (``set_capturable``: fixed-shape pair lists planned at the first step, no
        host read-back; periodic boxes with a fixed cell, i.e. NVT/NVE; problems turn the energy and forces
        into NaN, which OpenMM reports, instead of raising; the skin is not used).
    periodic: override periodicity (default: topology has periodic box vectors).
    properties: further TorchForce properties, passed to ``setProperty`` unchanged.
    neighbor_skin: Å; the model's pair lists are searched with cutoff + skin and reused over the MD
        steps until an atom has moved skin/2 or the box changed (same pairs as a new search; docs/openmm.md).
        None: 1.0 Å (``MD_NEIGHBOR_SKIN``); 0: a new search every step.

    Units: OpenMM side nm, kJ/mol, kJ/mol/nm; model side Å, eV, eV/Å (see module docstring).
    """
    openmmtorch = import_openmmtorch()
    use_cuda_graphs = parse_optional_bool("use_cuda_graphs", use_cuda_graphs)
    if cuda_graph_warmup_steps is not None:
        cuda_graph_warmup_steps = parse_nonnegative_int("cuda_graph_warmup_steps", cuda_graph_warmup_steps)

    module, metadata = build_wrapper(model_path, topology, atoms, charge, num_unpaired_electrons,
                                     dtype, periodic, neighbor_skin, bool(use_cuda_graphs))
    force = openmmtorch.TorchForce(module)
    force.setOutputsForces(True)
    force.setUsesPeriodicBoundaryConditions(bool(module.periodic))
    force.setForceGroup(int(force_group))
    force.setName("so3krates")
    if use_cuda_graphs is not None:
        force.setProperty("useCUDAGraphs", "true" if use_cuda_graphs else "false")
    if cuda_graph_warmup_steps is not None:
        force.setProperty("CUDAGraphWarmupSteps", str(cuda_graph_warmup_steps))
    for key, value in (properties or {}).items():
        force.setProperty(str(key), str(value))
    return force
