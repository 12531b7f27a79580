"""openmm-ml potential ``so3krates`` (entry point ``openmmml.potentials``).

>>> from openmmml import MLPotential
>>> potential = MLPotential('so3krates', modelPath='model.pt')
>>> system = potential.createSystem(topology)                       # whole system ML
>>> mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)  # ML region in MM

Arguments of ``MLPotential('so3krates', ...)`` (each may be overridden per call in
``createSystem``/``createMixedSystem``). Values may be given as strings too (XML or command-line
configs): booleans accept True/False, 1/0, "true"/"false", "yes"/"no", "on"/"off" (any case) —
never ``bool("false")``; a bad value is an error naming the option.
  modelPath            file written by ``so3krates export`` (required)
  charge               total charge of the ML atoms, e (default 0)
  numUnpairedElectrons number of unpaired electrons (default 0); or ``multiplicity`` (= n + 1)
  dtype                None (default: the dtype the file was exported in), 'float32' or 'float64'
  implementation       None/'auto' (default): 'torch' when openmmtorch works in this environment, else
                       'python' with a warning saying why; 'torch' (openmmtorch.TorchForce: the
                       .venv environment, torch 2.9.0) or 'python' (openmm.PythonForce: any torch,
                       e.g. .venv-current with torch 2.13). See docs/install.md, "Which environment".
  neighborSkin         Å (default 1.0): the model's pair lists are searched with cutoff + skin and
                       reused over MD steps until an atom has moved skin/2 or the box changed;
                       0 = a new search every step (docs/openmm.md)
  device               PythonForce only: 'cpu' / 'cuda' (default: cuda if available)
  compile              PythonForce only: wrap the module in ``torch.compile`` (default False)
  useCUDAGraphs        TorchForce only: TorchForce property ``useCUDAGraphs`` (CUDA platform)
  CUDAGraphWarmupSteps TorchForce only: TorchForce property ``CUDAGraphWarmupSteps`` (int ≥ 0)
  properties           TorchForce only: dict of further TorchForce properties, set unchanged
Units: OpenMM nm, kJ/mol; model Å, eV (eV → kJ/mol ×96.48533212331002, CODATA 2018).

openmm-ml ≥ 1.8 (mechanical embedding with link atoms) also asks the potential
``getSupportedEmbeddings()`` (none of its own) and ``getMLLongRange()`` (False for a purely local
model; None — pass ``mlLongRange=`` to createMixedSystem — when the file has electrostatics,
dispersion or EFA) and passes its own options (``mlLongRange``, ``linkAtomDistances``) through
to ``addForces``, which ignores them.
"""

from __future__ import annotations

import logging
import warnings
from typing import Iterable, Optional

from . import _torch_first  # noqa: F401

import openmm
import openmm.app

from ._options import parse_bool, parse_float, parse_nonnegative_int, parse_optional_bool

# No ``import openmmml`` at module level: openmmml imports its entry points (this module) while
# it is itself being imported, so importing it here would be circular when this module is
# imported first. MLPotential only calls ``createImpl`` and ``addForces`` (duck typing).

_KEYS = ("modelPath", "charge", "numUnpairedElectrons", "multiplicity", "dtype", "implementation",
         "device", "compile", "useCUDAGraphs", "CUDAGraphWarmupSteps", "properties", "neighborSkin")
_TORCH_ONLY = ("useCUDAGraphs", "CUDAGraphWarmupSteps", "properties")
# options openmm-ml's embeddings (1.8) pass on to addForces; they are theirs, not ours
_OPENMMML_KEYS = ("mlLongRange", "linkAtomDistances")
_LOG = logging.getLogger("so3krates.openmm")
_PYTHON_ONLY = ("device", "compile")


class So3kratesPotentialImplFactory:
    """Creates :class:`So3kratesPotentialImpl` objects for ``MLPotential('so3krates', ...)``."""

    def createImpl(self, name: str, **args) -> "So3kratesPotentialImpl":
        return So3kratesPotentialImpl(name, **args)


class So3kratesPotentialImpl:
    """Adds a so3krates TorchForce (or PythonForce) to a System."""

    def __init__(self, name: str, modelPath: Optional[str] = None, **args):
        self.name = name
        unknown = sorted(set(args) - set(_KEYS))
        if unknown:
            raise ValueError(f"MLPotential('so3krates'): unknown argument(s) {unknown}; known: {list(_KEYS)}")
        self.args = dict(args)
        self.args["modelPath"] = modelPath

    def _settings(self, args: dict) -> dict:
        args = {k: v for k, v in args.items() if k not in _OPENMMML_KEYS}
        unknown = sorted(set(args) - set(_KEYS))
        if unknown:
            raise ValueError(f"MLPotential('so3krates'): unknown argument(s) {unknown} in createSystem/"
                             f"createMixedSystem; known: {list(_KEYS)}")
        settings = dict(self.args)
        settings.update(args)
        if settings.get("modelPath") is None:
            raise ValueError("MLPotential('so3krates') needs modelPath='model.pt' (a file from `so3krates export`)")
        if settings.get("multiplicity") is not None:
            multiplicity = parse_float("multiplicity", settings["multiplicity"])
            if multiplicity < 1:
                raise ValueError(f"multiplicity must be >= 1 (2S+1), got {settings['multiplicity']!r}")
            unpaired = multiplicity - 1.0
            given = settings.get("numUnpairedElectrons")
            if given is not None and parse_float("numUnpairedElectrons", given) != unpaired:
                raise ValueError(f"multiplicity={settings['multiplicity']!r} and numUnpairedElectrons={given!r} "
                                 f"disagree (numUnpairedElectrons = multiplicity - 1): pass only one")
            settings["numUnpairedElectrons"] = unpaired
        from .torch_force import resolve_implementation
        requested = settings.get("implementation")
        implementation, message = resolve_implementation(requested)
        auto = requested is None or str(requested).strip().lower() == "auto"
        if auto and implementation == "python":
            torch_given = [k for k in _TORCH_ONLY if settings.get(k) is not None]
            if torch_given:
                raise ValueError(f"option(s) {torch_given} apply only to implementation='torch' (openmmtorch."
                                 f"TorchForce), which is unavailable here: {message}")
            warnings.warn(message, stacklevel=3)
        else:
            _LOG.info(message)
        settings["implementation"] = implementation
        settings["route_message"] = message
        wrong = _PYTHON_ONLY if implementation == "torch" else _TORCH_ONLY
        given = [k for k in wrong if settings.get(k) is not None]
        if given:
            other = "python" if implementation == "torch" else "torch"
            chosen = f" (chosen automatically: {message})" if auto else ""
            raise ValueError(f"option(s) {given} apply only to implementation='{other}', but "
                             f"implementation='{implementation}'{chosen}: drop them or switch implementation")
        return settings

    def getSupportedEmbeddings(self) -> list:
        """openmm-ml ≥ 1.8: embedding methods of this potential's own (none; openmm-ml's generic
        'mechanical' embedding is used)."""
        return []

    def getMLLongRange(self) -> Optional[bool]:
        """openmm-ml ≥ 1.8: False when the model file is purely local (no electrostatics, dispersion or
        EFA: its interactions end at the receptive field), else None (openmm-ml then asks the caller
        for ``mlLongRange=``)."""
        from so3krates.export.metadata import read_metadata
        path = self.args.get("modelPath")
        if path is None:
            return None
        meta = read_metadata(path)
        long_range = meta.get("long_range") or {}
        if long_range.get("electrostatics") or long_range.get("dispersion") or meta.get("efa"):
            return None
        return False

    def addForces(self, topology: openmm.app.Topology, system: openmm.System,
                  atoms: Optional[Iterable[int]], forceGroup: int, **args):
        s = self._settings(args)
        periodic = topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
        def number(key):
            return 0.0 if s.get(key) is None else parse_float(key, s[key])

        common = dict(atoms=None if atoms is None else list(atoms), charge=number("charge"),
                      num_unpaired_electrons=number("numUnpairedElectrons"),
                      dtype=s.get("dtype"), force_group=forceGroup, periodic=periodic,
                      neighbor_skin=None if s.get("neighborSkin") is None else parse_float("neighborSkin",
                                                                                           s["neighborSkin"]))
        if s["implementation"] == "torch":
            from .torch_force import torch_force
            properties = s.get("properties")
            if properties is not None and not isinstance(properties, dict):
                raise ValueError(f"properties must be a dict of TorchForce properties, got {properties!r}")
            warmup = s.get("CUDAGraphWarmupSteps")
            force = torch_force(s["modelPath"], topology,
                                use_cuda_graphs=parse_optional_bool("useCUDAGraphs", s.get("useCUDAGraphs")),
                                cuda_graph_warmup_steps=None if warmup is None else
                                parse_nonnegative_int("CUDAGraphWarmupSteps", warmup),
                                properties=properties, **common)
        else:
            from .python_force import python_force
            force = python_force(s["modelPath"], topology, device=s.get("device"),
                                 compile=False if s.get("compile") is None else parse_bool("compile", s["compile"]),
                                 **common)
        system.addForce(force)


def register() -> None:
    """Register the factory by hand (only needed when the package is not installed)."""
    from openmmml.mlpotential import MLPotential
    if "so3krates" not in MLPotential._implFactories:
        MLPotential.registerImplFactory("so3krates", So3kratesPotentialImplFactory())
