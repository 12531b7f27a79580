"""Peer MLIP packages (TorchMD-Net, MACE, nequip/Allegro), each in its own virtual environment.

Shared by ``benchmarks/run_all.py --peers`` (speed) and ``benchmarks/accuracy.py`` (accuracy).
Every peer lives in ``benchmarks/.peer_venvs/<name>`` (git-ignored) on top of the CPU torch 2.13
wheel (``/opt/wheels``, else ``torch==2.13.0`` from the index), so nothing pulls CUDA and the
project's own pinned environment stays untouched (see ../shared/environment.md).

    status = peer_status("mace")        # {"status": "ok"|"missing"|"broken", "python": ..., "error", "fix"}
    python = ensure_peer("mace")        # create or repair the venv (pip, minutes), return its python

A venv counts as usable only when its python imports torch, numpy and the peer package (a copied
venv without its compiled extensions, or an interrupted install, is reported as ``broken``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
PEER_VENVS = HERE / ".peer_venvs"
TORCH_CPU_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")

PEERS: Dict[str, List[str]] = {  # name: pip requirements (each in its own venv on the CPU torch 2.13 wheel)
    "torchmd-net": ["torchmd-net==3.1.0"],
    "mace": ["mace-torch==0.3.16"],
    "nequip": ["nequip==0.19.1", "nequip-allegro==0.8.3"],
}
# module whose import proves the install works (mace must be imported before e3nn)
IMPORT_PROBE: Dict[str, str] = {
    "torchmd-net": "torchmdnet.models.model",
    "mace": "mace.modules",
    "nequip": "nequip",
}
EXTRA_REQUIREMENTS = ["ase", "numpy", "tqdm"]


def venv_python(name: str, venvs: Optional[Path] = None) -> Path:
    return Path(venvs or PEER_VENVS) / name / "bin" / "python"


def _install_hint(name: str, venvs: Path) -> str:
    default = Path(venvs).resolve() == PEER_VENVS.resolve()
    where = "" if default else f" --peer-venvs {venvs}"
    return (f"create it with `python benchmarks/accuracy.py --install-peers --models {name}{where}` "
            f"(pip: torch 2.13 CPU + {' '.join(PEERS[name])}; a few minutes)")


def peer_status(name: str, venvs: Optional[Path] = None, timeout: float = 300.0) -> Dict[str, str]:
    """Whether the venv of peer ``name`` exists and imports its package; never installs anything."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; known peers: {', '.join(PEERS)}")
    venvs = Path(venvs or PEER_VENVS)
    py = venv_python(name, venvs)
    out = {"peer": name, "venv": str(venvs / name), "python": str(py)}
    if not py.exists():
        return dict(out, status="missing", error=f"peer venv {venvs / name} does not exist",
                    fix=_install_hint(name, venvs))
    probe = f"import torch, numpy, ase; import {IMPORT_PROBE[name]}; print('torch', torch.__version__)"
    try:
        proc = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return dict(out, status="broken", error=f"{py} does not run ({exc})", fix=_install_hint(name, venvs))
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return dict(out, status="broken", error=f"{py} cannot import {IMPORT_PROBE[name]}: {last[-300:]}",
                    fix=_install_hint(name, venvs))
    return dict(out, status="ok", torch=proc.stdout.strip().split()[-1])


def ensure_peer(name: str, venvs: Optional[Path] = None) -> Path:
    """Create (or, when broken, rebuild) the venv of peer ``name``; returns its python."""
    venvs = Path(venvs or PEER_VENVS)
    st = peer_status(name, venvs)
    py = venv_python(name, venvs)
    if st["status"] == "ok":
        return py
    venv = venvs / name
    if st["status"] == "broken":
        print(f"[peers] {venv} is broken ({st['error']}); rebuilding it", flush=True)
        shutil.rmtree(venv)
    print(f"[peers] creating {venv} (pip install, minutes)", flush=True)
    venvs.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    torch_req = str(TORCH_CPU_WHEEL) if TORCH_CPU_WHEEL.exists() else "torch==2.13.0"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + [torch_req], check=True)
    subprocess.run(pip + PEERS[name] + EXTRA_REQUIREMENTS, check=True)
    st = peer_status(name, venvs)
    if st["status"] != "ok":
        raise RuntimeError(f"peer {name}: installed but still unusable: {st['error']}")
    (venv / ".installed").write_text("ok\n")
    return py


# the name run_all.py used before this module existed
peer_python = ensure_peer
