"""Convert published JAX weights (mlff So3krates / SO3LR `params.pkl`, flax naming) to this model.

    model = load_so3lr("../shared/reference/so3lr/params.pkl")           # SO3LR, lr cutoff 12 Å
    cfg = config_from_hyperparameters("hyperparameters.yaml", cutoff_lr=12.0, dispersion_damping=2.0)
    state = convert_flax_params(params, cfg)                              # -> So3krates state_dict

`params.pkl` is a nested dict of numpy arrays (``{"params": {...}}``); flax Dense kernels are
[in, out] and become torch Linear weights [out, in]. Units are unchanged (Å, eV, e).
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from .config import So3kratesConfig
from .model import So3krates
from .physics.zbl import ZBL_PARAMETERS

PathLike = Union[str, os.PathLike]
# Elements of the SO3LR training data (SPICE, QM7-X, AQM, DES, ...): H Li C N O F Na Mg P S Cl K Ca Br I.
SO3LR_SPECIES = [1, 3, 6, 7, 8, 9, 11, 12, 15, 16, 17, 19, 20, 35, 53]


# ------------------------------------------------------------------------------------ reading
def load_params_pkl(path: PathLike) -> Dict[str, Any]:
    """Read a flax `params.pkl` (nested dict of numpy arrays); returns the inner `params` dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JAX parameter file '{path}' does not exist; pass the params.pkl of an mlff/SO3LR "
                                "model (SO3LR ships it as so3lr/params/params.pkl)")
    with open(path, "rb") as fh:
        params = pickle.load(fh)
    if not isinstance(params, dict):
        raise ValueError(f"'{path}' does not hold a dict of parameters (got {type(params).__name__})")
    while "params" in params and isinstance(params["params"], dict) and len(params) == 1:
        params = params["params"]
    return params


def load_hyperparameters(path: PathLike) -> Dict[str, Any]:
    """Read mlff `hyperparameters.yaml` or `.json`."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        import yaml
        with open(path) as fh:
            return yaml.safe_load(fh)
    with open(path) as fh:
        return json.load(fh)


def config_from_hyperparameters(path: PathLike, cutoff_lr: Optional[float] = None,
                                dispersion_damping: Optional[float] = None) -> So3kratesConfig:
    """So3kratesConfig from an mlff hyperparameter file; lr settings in Å override the file."""
    return So3kratesConfig.from_mlff(load_hyperparameters(path), cutoff_lr=cutoff_lr,
                                     dispersion_damping=dispersion_damping)


# ------------------------------------------------------------------------------------ mapping
def _t(a: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64, copy=True))


def _dense(out: Dict[str, torch.Tensor], prefix: str, p: Dict[str, Any], bias: bool = True) -> None:
    out[prefix + ".weight"] = _t(p["kernel"]).T.contiguous()
    if bias:
        out[prefix + ".bias"] = _t(p["bias"])


def _find(params: Dict[str, Any], key: str, path: Tuple[str, ...] = ()) -> Optional[Tuple[Tuple[str, ...], Dict]]:
    """Depth-first search for the sub-dict that directly holds `key`."""
    if key in params:
        return path, params
    for k, v in params.items():
        if isinstance(v, dict):
            r = _find(v, key, path + (k,))
            if r is not None:
                return r
    return None


def convert_flax_params(params: Dict[str, Any], config: So3kratesConfig) -> Dict[str, torch.Tensor]:
    """Map the flax parameter tree of mlff's `SO3kratesSparse` to a `So3krates(config)` state_dict
    (float64 tensors; the physical-term parameters under the key prefix of their modules)."""
    sd: Dict[str, torch.Tensor] = {}
    # embeddings: feature_embeddings_0 = atom type, then charge (if used), then spin (if used)
    sd["atom_embedding.embedding.weight"] = _t(params["feature_embeddings_0"]["Embed_0"]["embedding"])
    k = 1
    for use, name in ((config.use_charge_embed, "charge_embedding"), (config.use_spin_embed, "spin_embedding")):
        if not use:
            continue
        p = params[f"feature_embeddings_{k}"]["ChargeSpinEmbedSparse_0"]
        sd[f"{name}.q.weight"] = _t(p["Embed_0"]["embedding"])
        sd[f"{name}.k.weight"] = _t(p["Embed_1"]["embedding"])
        sd[f"{name}.v.weight"] = _t(p["Embed_2"]["embedding"])
        _dense(sd, f"{name}.layer_0", p["Residual_0"]["layers_0"], bias=False)
        _dense(sd, f"{name}.layer_1", p["Residual_0"]["layers_1"], bias=False)
        k += 1

    for n in range(config.num_layers):
        lp = params[f"layers_{n}"]
        pre = f"layers.{n}."
        ap = lp["attention_block"]
        for w in ("Wq1", "Wk1", "Wv1", "Wq2", "Wk2"):
            sd[pre + "attention_block." + w] = _t(ap[w])
        for name in ("radial_filter1_layer_1", "radial_filter1_layer_2", "radial_filter2_layer_1",
                     "radial_filter2_layer_2", "spherical_filter1_layer_1", "spherical_filter1_layer_2",
                     "spherical_filter2_layer_1", "spherical_filter2_layer_2"):
            _dense(sd, pre + "attention_block." + name, ap[name])
        _dense(sd, pre + "exchange_block.mlp_layer_2", lp["exchange_block"]["mlp_layer_2"])
        for i in (1, 2):
            if getattr(config, f"layer_normalization_{i}"):
                ln = lp[f"layer_normalization_{i}"]
                sd[pre + f"layer_normalization_{i}.weight"] = _t(ln["scale"])
                sd[pre + f"layer_normalization_{i}.bias"] = _t(ln["bias"])
            if getattr(config, f"residual_mlp_{i}"):
                _dense(sd, pre + f"res_mlp_{i}.layer_1", lp[f"res_mlp_{i}_layer_1"])
                _dense(sd, pre + f"res_mlp_{i}.layer_2", lp[f"res_mlp_{i}_layer_2"])

    # energy head
    found = _find(params, "energy_dense_final")
    if found is None:
        raise ValueError("no energy readout ('energy_dense_final') in the parameter tree; is this an mlff So3krates?")
    ep = found[1]
    zp1 = config.zmax + 1
    sd["energy_head.atomic_scales"] = _t(ep["atomic_scales"]).reshape(-1) if "atomic_scales" in ep \
        else torch.ones(zp1, dtype=torch.float64)
    sd["energy_head.energy_offset"] = _t(ep["energy_offset"]).reshape(-1) if "energy_offset" in ep \
        else torch.zeros(zp1, dtype=torch.float64)
    if config.energy_regression_dim is not None:
        _dense(sd, "energy_head.mlp.dense_regression", ep["energy_dense_regression"])
    _dense(sd, "energy_head.mlp.dense_final", ep["energy_dense_final"])

    if config.electrostatic_energy_bool:
        found = _find(params, "charge_dense_final_vec")
        if found is None:
            raise ValueError("electrostatics is on but the parameter tree has no partial-charge readout")
        cp = found[1]
        sd["charges_head.embedding.weight"] = _t(cp["Embed_0"]["embedding"])
        if config.energy_regression_dim is not None:
            _dense(sd, "charges_head.mlp.dense_regression", cp["charge_dense_regression_vec"])
        _dense(sd, "charges_head.mlp.dense_final", cp["charge_dense_final_vec"])

    if config.dispersion_energy_bool:
        found = _find(params, "hirshfeld_ratios_dense_final")
        if found is None:
            raise ValueError("dispersion is on but the parameter tree has no Hirshfeld-ratio readout")
        hp = found[1]
        sd["hirshfeld_head.shift.weight"] = _t(hp["Embed_0"]["embedding"])
        sd["hirshfeld_head.query.weight"] = _t(hp["Embed_1"]["embedding"])
        if config.energy_regression_dim is not None:
            _dense(sd, "hirshfeld_head.mlp.dense_regression", hp["hirshfeld_ratios_dense_regression"])
        _dense(sd, "hirshfeld_head.mlp.dense_final", hp["hirshfeld_ratios_dense_final"])
    return sd


def _flax_subdict(params: Dict[str, Any], name: str) -> Optional[Dict[str, Any]]:
    found = _find(params, name)
    if found is None:
        return None
    return found[1][name]


def _load_zbl(zbl, sub: Optional[Dict[str, Any]]) -> None:
    """The raw (pre-softplus) ZBL parameters of ``observables_0/zbl_repulsion`` (a1..a4, c1..c4, p, d;
    shape (1,) each)."""
    if sub is None:
        raise ValueError("ZBL repulsion is on but the parameter tree has no 'zbl_repulsion' entry")
    with torch.no_grad():
        for k in ZBL_PARAMETERS:
            param = getattr(zbl, k)
            if k not in sub:
                raise ValueError(f"zbl_repulsion/{k} is missing from the parameter tree")
            v = torch.as_tensor(np.asarray(sub[k], dtype=np.float64).reshape(-1), dtype=param.dtype)
            if v.shape != param.shape:
                raise ValueError(f"zbl_repulsion/{k}: expected shape (1,), got {tuple(v.shape)}")
            param.copy_(v)


def model_from_flax_params(params: Dict[str, Any], config: So3kratesConfig,
                           dtype: torch.dtype = torch.float64) -> So3krates:
    """Build `So3krates(config)` and load the flax parameters (network + physical terms)."""
    model = So3krates(config)
    model = model.to(torch.float64)
    sd = convert_flax_params(params, config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected:
        raise ValueError(f"converted parameters not in the model: {unexpected}")
    zbl = model.zbl
    if zbl is not None:
        _load_zbl(zbl, _flax_subdict(params, "zbl_repulsion"))
    left = [k for k in missing if not k.startswith(("zbl.", "dispersion."))]
    if left:
        raise ValueError(f"model parameters missing from the JAX checkpoint: {left}")
    return model.to(dtype).eval()


def load_so3lr(path: PathLike, lr_cutoff: Optional[float] = 12.0, dispersion_damping: Optional[float] = 2.0,
               dtype: torch.dtype = torch.float64) -> So3krates:
    """SO3LR from its published `params.pkl` (or the folder holding it and `hyperparameters.yaml|json`).

    lr_cutoff (Å): cutoff of electrostatics and dispersion (None: no cutoff, open systems only);
    dispersion_damping (Å): width over which dispersion is switched off before lr_cutoff.
    """
    path = Path(path)
    pkl = path / "params.pkl" if path.is_dir() else path
    folder = pkl.parent
    hp = None
    for name in ("hyperparameters.yaml", "hyperparameters.json"):
        if (folder / name).is_file():
            hp = folder / name
            break
    damping = dispersion_damping if lr_cutoff is not None else None
    if hp is not None:
        config = config_from_hyperparameters(hp, cutoff_lr=lr_cutoff, dispersion_damping=damping)
        config.cutoff_lr = lr_cutoff
        config.dispersion_energy_cutoff_lr_damping = damping
    else:
        config = So3kratesConfig.so3lr(cutoff_lr=lr_cutoff, dispersion_damping=damping)
    if config.species is None:
        config.species = list(SO3LR_SPECIES)
    config.validate()
    return model_from_flax_params(load_params_pkl(pkl), config, dtype=dtype)


def convert_mlff_checkpoint(params_path: PathLike, hyperparameters_path: PathLike,
                            cutoff_lr: Optional[float] = None, dispersion_damping: Optional[float] = None,
                            dtype: torch.dtype = torch.float64) -> So3krates:
    """Any mlff So3krates (sparse) checkpoint: `params.pkl` + `hyperparameters.yaml|json`."""
    config = config_from_hyperparameters(hyperparameters_path, cutoff_lr=cutoff_lr,
                                         dispersion_damping=dispersion_damping)
    return model_from_flax_params(load_params_pkl(params_path), config, dtype=dtype)


def convert_so3lr_params(path: PathLike, lr_cutoff: Optional[float] = 12.0, dispersion_damping: Optional[float] = 2.0
                         ) -> Tuple[Dict[str, torch.Tensor], So3kratesConfig]:
    """SO3LR `params.pkl` -> (float64 state_dict of `So3krates(config)`, config)."""
    model = load_so3lr(path, lr_cutoff=lr_cutoff, dispersion_damping=dispersion_damping, dtype=torch.float64)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, model.config


def convert_to_checkpoint(params_path: PathLike, out_path: PathLike, hyperparameters_path: Optional[PathLike] = None,
                          lr_cutoff: Optional[float] = 12.0, dispersion_damping: Optional[float] = 2.0) -> So3krates:
    """Write a so3krates checkpoint (.ckpt) from JAX weights. Without `hyperparameters_path` the file next
    to `params_path` is used (SO3LR layout); lr settings in Å apply to models with long-range terms."""
    from .checkpoint import save_checkpoint
    if hyperparameters_path is None:
        model = load_so3lr(params_path, lr_cutoff=lr_cutoff, dispersion_damping=dispersion_damping)
    else:
        hp = load_hyperparameters(hyperparameters_path)
        m = hp.get("model", {})
        long_range = bool(m.get("electrostatic_energy_bool") or m.get("dispersion_energy_bool"))
        model = convert_mlff_checkpoint(params_path, hyperparameters_path,
                                        cutoff_lr=lr_cutoff if long_range else None,
                                        dispersion_damping=dispersion_damping if long_range else None)
    save_checkpoint(out_path, model, source={"params": str(params_path), "lr_cutoff": lr_cutoff,
                                             "dispersion_damping": dispersion_damping})
    return model
