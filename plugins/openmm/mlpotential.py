"""openmm-ml potential ``so3krates`` (entry point ``openmmml.potentials``).

>>> from openmmml import MLPotential
>>> potential = MLPotential('so3krates', modelPath='model.pt')
>>> system = potential.createSystem(topology)                       # whole system ML
>>> mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)  # ML region in MM

Arguments of ``MLPotential('so3krates', ...)`` (each may be overridden per call in
``createSystem``/``createMixedSystem``):
  modelPath            file written by ``so3krates export`` (required)
  charge               total charge of the ML atoms, e (default 0)
  numUnpairedElectrons number of unpaired electrons (default 0); or ``multiplicity`` (= n + 1)
  dtype                'float64' (default), 'float32', or None for the exported dtype
  implementation       'torch' (openmmtorch.TorchForce, default) or 'python' (openmm.PythonForce)
  device               PythonForce only: 'cpu' / 'cuda' (default: cuda if available)
  useCUDAGraphs        TorchForce only: set the ``useCUDAGraphs`` property
Units: OpenMM nm, kJ/mol; model Å, eV (eV → kJ/mol ×96.48533212331002, CODATA 2018).
"""

from __future__ import annotations

from typing import Iterable, Optional

from . import _torch_first  # noqa: F401

import openmm
import openmm.app

# No ``import openmmml`` at module level: openmmml imports its entry points (this module) while
# it is itself being imported, so importing it here would be circular when this module is
# imported first. MLPotential only calls ``createImpl`` and ``addForces`` (duck typing).

_KEYS = ("modelPath", "charge", "numUnpairedElectrons", "multiplicity", "dtype", "implementation",
         "device", "useCUDAGraphs", "compile")


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
        settings = dict(self.args)
        settings.update({k: v for k, v in args.items() if k in _KEYS})
        if settings.get("modelPath") is None:
            raise ValueError("MLPotential('so3krates') needs modelPath='model.pt' (a file from `so3krates export`)")
        if "multiplicity" in settings and "numUnpairedElectrons" not in settings:
            settings["numUnpairedElectrons"] = int(settings["multiplicity"]) - 1
        return settings

    def addForces(self, topology: openmm.app.Topology, system: openmm.System,
                  atoms: Optional[Iterable[int]], forceGroup: int, **args):
        s = self._settings(args)
        periodic = topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
        common = dict(atoms=None if atoms is None else list(atoms), charge=float(s.get("charge", 0.0)),
                      num_unpaired_electrons=float(s.get("numUnpairedElectrons", 0.0)),
                      dtype=s.get("dtype", "float64"), force_group=forceGroup, periodic=periodic)
        implementation = str(s.get("implementation", "torch")).lower()
        if implementation in ("torch", "torchforce"):
            from .torch_force import torch_force
            force = torch_force(s["modelPath"], topology, use_cuda_graphs=bool(s.get("useCUDAGraphs", False)),
                                **common)
        elif implementation in ("python", "pythonforce"):
            from .python_force import python_force
            force = python_force(s["modelPath"], topology, device=s.get("device"),
                                 compile=bool(s.get("compile", False)), **common)
        else:
            raise ValueError(f"implementation must be 'torch' or 'python', got {implementation!r}")
        system.addForce(force)


def register() -> None:
    """Register the factory by hand (only needed when the package is not installed)."""
    from openmmml.mlpotential import MLPotential
    if "so3krates" not in MLPotential._implFactories:
        MLPotential.registerImplFactory("so3krates", So3kratesPotentialImplFactory())
