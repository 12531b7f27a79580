"""The model a run starts from: a new one (``model:`` section), a fine-tuned checkpoint
(``init_from``) or the run being resumed (``--resume``).

:func:`model_source` says which model config applies (needed first: its cutoffs decide the
neighbour lists); :func:`build_model` builds the model once the data have their neighbour lists
(``species`` and ``avg_num_neighbors`` of a new model come from the data).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..checkpoint import load_checkpoint
from ..config import So3kratesConfig
from ..model import So3krates
from .frames import Frame, element_species
from .neighbor_lists import avg_num_neighbors

__all__ = ["model_source", "build_model"]


def model_source(cfg: Dict[str, Any], resume_payload: Optional[Dict[str, Any]]
                 ) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """The model config dict of the run and the ``init_from`` checkpoint (None unless fine-tuning)."""
    if resume_payload is not None:
        return dict(resume_payload["config"]), None
    if cfg.get("init_from"):
        payload = load_checkpoint(cfg["init_from"])
        return dict(payload["config"]), payload
    return dict(cfg.get("model") or {}), None


def _fine_tuned(cfg: Dict[str, Any], payload: Dict[str, Any], data_species: List[int]) -> So3krates:
    mcfg = So3kratesConfig.from_dict(payload["config"])
    if cfg.get("model"):
        print(f"[train] init_from {cfg['init_from']}: using the checkpoint's model config; the 'model' section is ignored")
    model = So3krates(mcfg)
    model.load_state_dict(payload.get("ema_state_dict") or payload["state_dict"])
    known = set(int(z) for z in (payload.get("species") or mcfg.species or data_species))
    missing = sorted(set(data_species) - known)
    if missing:
        print(f"[train] warning: elements {missing} are not in the checkpoint's species {sorted(known)}")
    return model


def _new(cfg: Dict[str, Any], train: List[Frame], data_species: List[int]) -> So3krates:
    mdict = dict(cfg.get("model") or {})
    cutoff = float(mdict.get("cutoff", So3kratesConfig.cutoff))
    if mdict.get("species") is None:
        mdict["species"] = data_species
    else:
        extra = sorted(set(data_species) - set(int(z) for z in mdict["species"]))
        if extra:
            raise ValueError(f"data contain elements {extra} that model.species {mdict['species']} lacks; add them")
    if mdict.get("message_normalization") == "avg_num_neighbors" and mdict.get("avg_num_neighbors") in (None, "auto"):
        # neighbour lists of the training set are computed already (same cutoff)
        mdict["avg_num_neighbors"] = avg_num_neighbors(train)
        print(f"[train] avg_num_neighbors = {mdict['avg_num_neighbors']:.4f} (training set, cutoff {cutoff} Å)")
    return So3krates(So3kratesConfig.from_dict(mdict))


def build_model(cfg: Dict[str, Any], splits: Dict[str, List[Frame]], resume_payload: Optional[Dict[str, Any]],
                init_payload: Optional[Dict[str, Any]]) -> So3krates:
    """The run's model: the architecture of the run being resumed (weights loaded later by the
    trainer), the ``init_from`` weights, or a new model initialised from the current torch seed."""
    if resume_payload is not None:
        return So3krates(So3kratesConfig.from_dict(resume_payload["config"]))
    data_species = element_species(splits["train"] + splits["valid"] + splits["test"])
    if init_payload is not None:
        return _fine_tuned(cfg, init_payload, data_species)
    return _new(cfg, splits["train"], data_species)
