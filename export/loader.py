"""The one way to open an exported file: checks its metadata, then loads TorchScript or a pt2 package.

``load_exported(path, device) -> (module, metadata)``: the module has the exported ``forward``
(positions Å, atomic numbers, cell Å, pbc, total charge e, unpaired electrons, compute_forces,
compute_stress -> energy eV, forces eV/Å, stress eV/Å³, atomic energies eV) whatever the format.
``read_model_bytes`` gives the checked file's bytes (OpenMM's TorchForce deserialises them itself).
"""
from __future__ import annotations

import io
import os
from typing import Any, Dict, Optional, Tuple

import torch

from so3krates.export.metadata import METADATA_NAME, ModelFileError, ModelSource, read_metadata, source_name
from so3krates.export.jit_fusion import no_jit_fusion
from so3krates.export.process_memory import keep_freed_memory
from so3krates.export.pt2 import So3kratesPT2


def load_exported(source: ModelSource, device: str | torch.device = "cpu") -> Tuple[Any, Dict[str, Any]]:
    """Load an exported model (path or file bytes) and its metadata (validated). Returns (module, metadata):
    a scripted module for a TorchScript file, a :class:`so3krates.export.pt2.So3kratesPT2` for a pt2 package.
    Sets this process' malloc to keep freed memory for reuse (``process_memory``; SO3KRATES_MALLOC=system
    keeps glibc's defaults) and turns TorchScript's kernel fusion off (``jit_fusion``; SO3KRATES_JIT_FUSION=on
    keeps torch's default)."""
    meta = read_metadata(source)
    keep_freed_memory()
    no_jit_fusion()
    require_fused_kernels(meta, source)
    if meta.get("format") == "pt2":
        if isinstance(source, (bytes, bytearray)):
            raise ModelFileError("a pt2 package must be loaded from its path, not from bytes")
        return So3kratesPT2(source, device=str(device)), meta
    extra = {METADATA_NAME: ""}
    target = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    try:
        module = torch.jit.load(target, map_location=device, _extra_files=extra)
    except RuntimeError as exc:  # corrupt archive or incompatible torch
        raise ModelFileError(f"could not load '{source_name(source)}' with torch {torch.__version__}: "
                             f"{exc}".splitlines()[0] + "; re-export the model with this torch version") from None
    module.eval()
    return module, meta


def require_fused_kernels(meta: Dict[str, Any], source: ModelSource) -> None:
    """Register the fused CPU kernels in this process when the file was exported with them (``so3krates export
    --fused-kernels``); ModelFileError with the reason and the fix when they cannot be loaded."""
    if not meta.get("fused_kernels"):
        return
    from so3krates.potential.nn import fused_ops
    try:
        fused_ops.require(f"'{source_name(source)}'")
    except RuntimeError as exc:
        raise ModelFileError(str(exc)) from None


def read_model_bytes(source: ModelSource) -> bytes:
    """The bytes of an exported TorchScript file, after the same checks as ``load_exported`` (and the same
    malloc and fusion settings: the caller runs the model in this process, e.g. OpenMM's TorchForce on the
    same libtorch)."""
    meta = read_metadata(source)
    keep_freed_memory()
    no_jit_fusion()
    require_fused_kernels(meta, source)
    if meta.get("format") == "pt2":
        raise ModelFileError(f"'{source_name(source)}' is a pt2 package; OpenMM's TorchForce needs the TorchScript "
                             "file (export without --format pt2); use so3krates.openmm.python_force for pt2 packages")
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    with open(source, "rb") as f:
        return f.read()


def user_message(exc: BaseException) -> str:
    """The message of an error raised inside an exported file, without TorchScript's interpreter
    traceback: TorchScript re-raises a model's ``ValueError`` as ``torch.jit.Error`` whose text ends in
    ``builtins.ValueError: <message>``."""
    text = str(exc)
    tag = "builtins.ValueError: "
    if tag in text:
        return text.rsplit(tag, 1)[1].strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


#: Å: the pair-list skin of the MD engines' adapters (OpenMM) when none is given (LAMMPS keeps its own lists)
MD_NEIGHBOR_SKIN = 1.0


def resolve_neighbor_skin(module: Any, skin: Optional[float], default: float = 0.0) -> float:
    """The pair-list skin (Å) ``set_neighbor_skin`` would give ``module``, checked, nothing changed."""
    value = float(default if skin is None else skin)
    if not (value >= 0.0 and value < float("inf")):
        raise ValueError(f"neighbor skin must be a finite distance >= 0 Å (0 = a new neighbour search every call); "
                         f"got {value!r}")
    if hasattr(getattr(module, "potential", module), "neighbor_skin"):
        return value
    if skin is not None and value > 0.0:
        raise ValueError(f"this model ({type(module).__name__}) cannot reuse pair lists across calls (a pt2 "
                         "package, or a file exported before this option existed): pass a neighbor skin of 0, or "
                         "re-export the model as TorchScript with this version")
    return 0.0


def set_neighbor_skin(module: Any, skin: Optional[float], default: float = 0.0) -> float:
    """Make a loaded model reuse its pair lists across calls (MD steps) with a skin of ``skin`` Å: a search
    with cutoff + skin, reused until an atom has moved skin/2 or the cell changed (``So3kratesPotential.
    neighbor_skin``; 0 = a new search every call). ``module``: an exported TorchScript module or a
    So3kratesPotential. ``skin`` None: ``default`` where the model supports reuse, else 0 (pt2 packages and
    files exported before this option existed search every call; asking them for a skin > 0 raises
    ValueError). Returns the skin set (Å)."""
    value = resolve_neighbor_skin(module, skin, default)
    potential = getattr(module, "potential", module)
    if hasattr(potential, "neighbor_skin"):
        potential.neighbor_skin = value
    return value


def set_capturable(module: Any, capturable: bool) -> None:
    """Make a loaded model's steps capturable by a CUDA graph (``So3kratesPotential.capturable``: pair lists
    with the fixed shapes of a plan made at the next call, no read-back to the host, problems reported in the
    output ``status`` and as NaN outputs; fully periodic boxes with a fixed cell). ``False`` returns to the
    ordinary search. Raises ValueError for a model without the option (a pt2 package, or a file exported
    before it existed)."""
    potential = getattr(module, "potential", module)
    if not hasattr(potential, "capturable"):
        raise ValueError(f"this model ({type(module).__name__}) has no capturable (CUDA-graph) mode: a pt2 "
                         "package, or a file exported before the option existed; re-export it as TorchScript "
                         "with this version")
    problem = potential.capturable_problem() if capturable else ""
    if problem:
        raise ValueError(problem)
    potential.capturable = bool(capturable)
    potential.reset_static_plan()


#: the bits of a capturable step's ``status`` output and what each means
STATUS_BITS = {
    1: "positions contain NaN or inf, or an element the model does not know (check the structure; a simulation "
       "that blew up needs a smaller time step or a minimisation first)",
    2: "the cell is not the one the pair lists were planned for: capturable steps need a fixed cell (NVT/NVE); "
       "call reset_static_plan() after changing the box, or turn capturable off for NPT",
    4: "more local pairs, or more atoms in one bin, than the plan has room for (the density rose far above the "
       "first structure's): call reset_static_plan() to plan anew",
    8: "more long-range pairs, or more atoms in one bin, than the plan has room for: call reset_static_plan()",
    16: "atoms closer than the model's minimum distance (0.1 Å): overlapping atoms",
}


def status_message(status: int) -> str:
    """The problems a capturable step's ``status`` (an int, 0 = none) reports, one sentence each."""
    parts = [text for bit, text in STATUS_BITS.items() if int(status) & bit]
    return "; ".join(parts) if parts else "no problem"


def raise_for_status(out: Dict[str, Any]) -> None:
    """Raise ValueError naming the problems when a capturable step reported any (``out["status"]`` != 0);
    nothing for an ordinary step (no ``status``). Reads one value back (call it outside a CUDA graph)."""
    status = out.get("status")
    if status is not None and int(status) != 0:
        raise ValueError(f"the model reported a problem with this step (status {int(status)}, outputs set to NaN): "
                         f"{status_message(int(status))}")
