"""OpenMM adapters for exported so3krates models (import name ``so3krates.openmm``).

- :func:`torch_force` — an ``openmmtorch.TorchForce`` wrapping the exported TorchScript module
  (needs openmmtorch: only in the ``.venv`` environment, torch 2.9.0).
- :func:`python_force` — the same through ``openmm.PythonForce`` (no openmm-torch needed: works
  with any torch, e.g. the ``.venv-current`` environment with torch 2.13).
- :func:`torch_force_status` / :func:`resolve_implementation` — whether TorchForce works here and
  which route ``implementation='auto'`` (the default of openmm-ml's ``MLPotential('so3krates')``
  and of examples/main_job.py) takes. docs/install.md, "Which environment".
- openmm-ml: ``MLPotential('so3krates', modelPath='model.pt')`` (entry point, see
  :mod:`so3krates.openmm.mlpotential`).

Units: OpenMM side nm, kJ/mol, kJ/mol/nm; model side Å, eV, eV/Å;
1 eV = 96.48533212331002 kJ/mol (CODATA 2018 exact e·N_A, same as ``openmm.unit``).

Importing this package imports ``torch`` before OpenMM's Torch plugins are needed and reloads
them if ``import openmm`` came first (see :mod:`so3krates.openmm._torch_first`).
"""

from ._torch_first import ensure_torch_plugins  # noqa: F401  (must be the first import)
from .torch_force import (EV_PER_A_TO_KJ_PER_MOL_NM, EV_TO_KJ_PER_MOL, NM_TO_ANGSTROM,  # noqa: F401
                          OpenMMWrapper, build_wrapper, load_model, resolve_implementation, torch_force,
                          torch_force_status)
from .python_force import So3kratesComputation, python_force  # noqa: F401

__all__ = ["torch_force", "python_force", "torch_force_status", "resolve_implementation", "build_wrapper",
           "load_model", "ensure_torch_plugins",
           "EV_TO_KJ_PER_MOL", "EV_PER_A_TO_KJ_PER_MOL_NM", "NM_TO_ANGSTROM"]
