"""Where the files that CMake installs into the package are: ``so3krates/<subdir>/<name>`` (the LAMMPS
plugin, the fused-kernel library).

Light (no torch import): the ``lmp`` launcher imports ``so3krates.lammps`` on every start.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional, Tuple


def search_dirs(subdir: str, env_var: str) -> List[str]:
    """Directories that may hold ``so3krates/<subdir>``'s files, in search order: ``$env_var`` (if set),
    the package's own folder (regular install), and ``so3krates/<subdir>`` under every ``sys.path`` entry
    (editable install: the package source is the repository, CMake installed into site-packages)."""
    env = os.environ.get(env_var)
    out = [env] if env else []
    out.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), subdir))
    out += [os.path.join(entry, "so3krates", subdir) for entry in sys.path if entry]
    return out


def find(name: str, subdir: str, env_var: str) -> Tuple[Optional[str], List[str]]:
    """(absolute path of the first ``name`` in ``search_dirs``, or None; the directories searched before it)."""
    seen: List[str] = []
    for d in search_dirs(subdir, env_var):
        path = os.path.join(d, name)
        if os.path.isfile(path):
            return os.path.abspath(path), seen
        seen.append(os.path.abspath(d))
    return None, seen


def searched(dirs: List[str]) -> str:
    """The searched directories for an error message, each once."""
    return ", ".join(dict.fromkeys(dirs))
