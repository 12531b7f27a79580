"""Import torch before OpenMM's Torch plugins are used, and repair them if they failed to load.

The pip wheels of openmm-torch link against torch's CUDA libraries (``libnvrtc.so.12`` ...).
Those are found only when ``torch`` is already imported (torch preloads them). ``import openmm``
loads every plugin in ``<openmm>/lib/plugins`` at import time; if torch was not imported first
(openmm-ml imports openmm before anything else) the TorchReference plugin silently fails, and a
Context with a TorchForce fails later with "Specified a Platform for a Context which does not
support all required kernels". :func:`ensure_torch_plugins` imports torch and then loads again
every Torch plugin that is listed in ``openmm.Platform.getPluginLoadFailures()``.

``openmm.Platform.getDefaultPluginsDirectory()`` is wrong for the pip wheels: we use
``openmm.version.openmm_library_path + '/plugins'``.
"""

from __future__ import annotations

import os

import torch  # noqa: F401  -- must come before openmm's torch plugins are loaded
import openmm
import openmm.version

_LOADED: set = set()

# Plugin libraries of openmm-torch, in dependency order (platform plugins after the reference one).
_TORCH_PLUGINS = (
    "libOpenMMTorchReference.so",
    "libOpenMMTorchCPU.so",
    "libOpenMMTorchCUDA.so",
    "libOpenMMTorchOpenCL.so",
)


def plugins_dir() -> str:
    """Directory of OpenMM's plugin libraries for the installed wheel."""
    return os.path.join(openmm.version.openmm_library_path, "plugins")


def ensure_torch_plugins() -> list:
    """Load the openmm-torch plugins that failed to load at ``import openmm``.

    Returns the list of libraries loaded by this call (empty when nothing had to be done).
    Libraries that still fail for reasons unrelated to torch (OpenCL without ``libOpenCL.so.1``)
    are skipped silently: their platforms are not available on this machine anyway.
    """
    failures = " ".join(openmm.Platform.getPluginLoadFailures())
    loaded = []
    for name in _TORCH_PLUGINS:
        if name in _LOADED or name not in failures:
            continue
        path = os.path.join(plugins_dir(), name)
        if not os.path.exists(path):
            continue
        try:
            openmm.Platform.loadPluginLibrary(path)
        except Exception:  # e.g. OpenCL runtime missing: the platform does not exist here
            continue
        _LOADED.add(name)
        loaded.append(name)
    return loaded


ensure_torch_plugins()
