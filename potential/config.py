"""Hyperparameters of the So3krates / SO3LR network (`So3kratesConfig`).

All lengths in Å, energies in eV. The field names follow the `model:` section of the mlff /
SO3LR `hyperparameters.yaml` so that published configurations map one-to-one
(`So3kratesConfig.from_mlff(hparams)`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .nn.activation import ACTIVATIONS as _ACTIVATIONS
from .nn.efa import QK_ACTIVATIONS as _EFA_QK_ACTIVATIONS
from .nn.efa_periodic import PERIODIC_MODES as _EFA_PERIODIC_MODES

_RADIAL_BASES = ("bernstein", "physnet", "fourier")
_CUTOFF_FNS = ("phys", "cosine", "exponential", "polynomial")
_NORMALISATIONS = ("identity", "sqrt_num_features", "avg_num_neighbors")
#: keys of older configs (and of mlff's hyperparameters) that no longer mean anything here
_IGNORED_KEYS = ("num_features_head",)


@dataclass
class So3kratesConfig:
    """Configuration of a So3krates model (optionally with the SO3LR long-range terms).

    Units: `cutoff`, `cutoff_lr`, `dispersion_energy_cutoff_lr_damping` in Å.
    """

    # --- geometry / basis
    cutoff: float = 5.0
    cutoff_fn: str = "cosine"
    cutoff_fn_p: int = 6  # only for cutoff_fn == "polynomial"
    radial_basis_fn: str = "bernstein"
    num_radial_basis_fn: int = 32
    degrees: List[int] = field(default_factory=lambda: [1, 2, 3, 4])
    # --- network
    num_features: int = 128
    num_layers: int = 2
    num_heads: int = 4
    activation_fn: str = "silu"
    qk_non_linearity: str = "identity"
    residual_mlp_1: bool = False
    residual_mlp_2: bool = False
    layer_normalization_1: bool = False
    layer_normalization_2: bool = False
    message_normalization: str = "sqrt_num_features"
    avg_num_neighbors: Optional[float] = None
    zmax: int = 118
    use_charge_embed: bool = False
    use_spin_embed: bool = False
    # --- energy readout
    energy_regression_dim: Optional[int] = 128
    energy_activation_fn: str = "identity"
    energy_learn_atomic_type_scales: bool = False
    energy_learn_atomic_type_shifts: bool = False
    # --- physical terms (SO3LR)
    zbl_repulsion_bool: bool = False
    electrostatic_energy_bool: bool = False
    electrostatic_energy_scale: float = 1.0
    dispersion_energy_bool: bool = False
    dispersion_energy_scale: float = 1.0
    cutoff_lr: Optional[float] = None
    dispersion_energy_cutoff_lr_damping: Optional[float] = None
    # --- Euclidean fast attention (potential/nn/efa.py); efa_layers[k] switches it on in layer k
    efa_layers: List[bool] = field(default_factory=list)
    # sizes default to the EFA paper's (cost ∝ grid · qk/2 · v: ~10 % of the SO3LR network at these
    # values, 3-8x it at qk = v = 128, grid 86; docs/efa.md); None = num_features (older checkpoints)
    efa_grid: int = 50  # Lebedev points
    efa_max_frequency: Optional[float] = None
    efa_max_length: float = 10.0  # Å
    efa_num_heads: int = 1
    efa_qk_features: Optional[int] = 16
    efa_v_features: Optional[int] = 32
    efa_qk_activation: str = "identity"  # identity | gelu (the EFA paper's experiments) | silu
    efa_periodic_mode: str = "simplex"  # periodic boxes: simplex (linear cost) | kshell (exact k-space shells)
    efa_periodic_kcut: Optional[float] = None  # 1/Å, kshell mode only
    efa_periodic_width: Optional[float] = None  # 1/Å, kshell mode only
    # direction-dependent EFA queries/keys from the layer's Euclidean variables of degrees 1..L (0 = off:
    # the kernel then depends on |r_j - r_i| only; docs/efa.md); open systems only
    efa_qk_degrees: int = 0
    # --- metadata: elements the model was trained on (atomic numbers)
    species: Optional[List[int]] = None

    def __post_init__(self) -> None:
        self.degrees = [int(d) for d in self.degrees]
        self.efa_layers = [bool(b) for b in (self.efa_layers or [])]
        if self.species is not None:
            self.species = sorted(int(z) for z in self.species)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the offending field and the fix."""
        if self.radial_basis_fn not in _RADIAL_BASES:
            raise ValueError(f"radial_basis_fn={self.radial_basis_fn!r} is unknown; use one of {_RADIAL_BASES}")
        if self.cutoff_fn not in _CUTOFF_FNS:
            raise ValueError(f"cutoff_fn={self.cutoff_fn!r} is unknown; use one of {_CUTOFF_FNS}")
        for name in ("activation_fn", "qk_non_linearity", "energy_activation_fn"):
            if getattr(self, name) not in _ACTIVATIONS:
                raise ValueError(f"{name}={getattr(self, name)!r} is unknown; use one of {_ACTIVATIONS}")
        if self.message_normalization not in _NORMALISATIONS:
            raise ValueError(
                f"message_normalization={self.message_normalization!r} is unknown; use one of {_NORMALISATIONS}")
        if self.message_normalization == "avg_num_neighbors" and self.avg_num_neighbors is None:
            raise ValueError("message_normalization='avg_num_neighbors' needs avg_num_neighbors; set it "
                             "(mean number of neighbours within the cutoff in the training data)")
        if len(self.degrees) == 0 or min(self.degrees) < 1 or max(self.degrees) > 4:
            raise ValueError(f"degrees={self.degrees} must be a non-empty subset of 1..4")
        if self.num_features % self.num_heads != 0:
            raise ValueError(f"num_features={self.num_features} must be divisible by num_heads={self.num_heads}")
        if self.num_features % len(self.degrees) != 0:
            raise ValueError(f"num_features={self.num_features} must be divisible by len(degrees)={len(self.degrees)}")
        if len(self.efa_layers) > self.num_layers:
            raise ValueError(f"efa_layers has {len(self.efa_layers)} entries but num_layers={self.num_layers}; "
                             "give one bool per layer")
        if self.efa_qk_activation not in _EFA_QK_ACTIVATIONS:
            raise ValueError(f"efa_qk_activation={self.efa_qk_activation!r} is unknown; use one of "
                             f"{_EFA_QK_ACTIVATIONS}")
        if self.efa_periodic_mode not in _EFA_PERIODIC_MODES:
            raise ValueError(f"efa_periodic_mode={self.efa_periodic_mode!r} is unknown; use one of "
                             f"{_EFA_PERIODIC_MODES} (simplex: linear cost, any box; kshell: exact "
                             "k-space shells, cost grows with the cell volume)")
        if int(self.efa_qk_degrees) < 0 or int(self.efa_qk_degrees) > 4:
            raise ValueError(f"efa_qk_degrees={self.efa_qk_degrees} must be 0 (off) or 1..4")
        if int(self.efa_qk_degrees) > 0:
            missing = [l for l in range(1, int(self.efa_qk_degrees) + 1) if l not in self.degrees]
            if missing:
                raise ValueError(f"efa_qk_degrees={self.efa_qk_degrees} needs the Euclidean variables of degrees "
                                 f"1..{self.efa_qk_degrees} but degrees={self.degrees} lacks {missing}; lower "
                                 "efa_qk_degrees or add them to degrees")
        if self.species is not None and any(z < 1 or z > self.zmax for z in self.species):
            raise ValueError(f"species {self.species} must be atomic numbers in 1..{self.zmax}")
        if self.cutoff <= 0:
            raise ValueError(f"cutoff={self.cutoff} must be positive (Å)")
        if self.cutoff_lr is not None and self.cutoff_lr <= 0:
            raise ValueError(f"cutoff_lr={self.cutoff_lr} must be positive (Å) or None (no long-range cutoff)")
        if self.dispersion_energy_bool and self.cutoff_lr is not None and \
                self.dispersion_energy_cutoff_lr_damping is None:
            raise ValueError("dispersion with a finite cutoff_lr needs dispersion_energy_cutoff_lr_damping (Å); "
                             "SO3LR uses 2.0")

    @property
    def long_range(self) -> bool:
        """True if the model needs the long-range pair graph (electrostatics or dispersion)."""
        return bool(self.electrostatic_energy_bool or self.dispersion_energy_bool)

    # ------------------------------------------------------------- (de)serialise
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "So3kratesConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - set(_IGNORED_KEYS))
        if unknown:
            raise ValueError(f"unknown So3kratesConfig keys {unknown}; valid keys are {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes: Any) -> "So3kratesConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mlff(cls, hparams: Dict[str, Any], cutoff_lr: Optional[float] = None,
                  dispersion_damping: Optional[float] = None) -> "So3kratesConfig":
        """Build a config from an mlff / SO3LR `hyperparameters.yaml|json` (already parsed).

        `cutoff_lr` / `dispersion_damping` (Å) override the file's `model.cutoff_lr` and
        `model.dispersion_energy_cutoff_lr_damping` (SO3LR ships them as null and sets them at load time).
        """
        m = dict(hparams["model"])
        data = hparams.get("data", {}) or {}
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in m.items() if k in names}
        if m.get("message_normalization") == "avg_num_neighbors":
            kw["avg_num_neighbors"] = float(data["avg_num_neighbors"])
        if cutoff_lr is not None:
            kw["cutoff_lr"] = float(cutoff_lr)
        if dispersion_damping is not None:
            kw["dispersion_energy_cutoff_lr_damping"] = float(dispersion_damping)
        if kw.get("energy_regression_dim") is not None:
            kw["energy_regression_dim"] = int(kw["energy_regression_dim"])
        return cls(**kw)

    # ------------------------------------------------------------------ presets
    @classmethod
    def so3lr(cls, cutoff_lr: Optional[float] = 12.0, dispersion_damping: Optional[float] = 2.0) -> "So3kratesConfig":
        """SO3LR (Kabylda et al. 2024): the published `hyperparameters.yaml`, lr cutoff 12 Å, damping 2 Å."""
        return cls(
            cutoff=4.5, cutoff_fn="phys", radial_basis_fn="bernstein", num_radial_basis_fn=32,
            degrees=[1, 2, 3, 4], num_features=128, num_layers=3, num_heads=4,
            activation_fn="silu", qk_non_linearity="identity",
            residual_mlp_1=True, residual_mlp_2=False, layer_normalization_1=True, layer_normalization_2=True,
            message_normalization="avg_num_neighbors", avg_num_neighbors=13.168995780096482,
            use_charge_embed=True, use_spin_embed=True,
            energy_regression_dim=128, energy_activation_fn="silu",
            energy_learn_atomic_type_scales=True, energy_learn_atomic_type_shifts=True,
            zbl_repulsion_bool=True, electrostatic_energy_bool=True, electrostatic_energy_scale=4.0,
            dispersion_energy_bool=True, dispersion_energy_scale=1.2,
            cutoff_lr=cutoff_lr,
            dispersion_energy_cutoff_lr_damping=dispersion_damping if cutoff_lr is not None else None,
        )

    @classmethod
    def nature_comms(cls) -> "So3kratesConfig":
        """So3krates as in Frank et al., Nat. Commun. 15, 6539 (2024): F=132, 3 layers, degrees 1-3,
        cosine cutoff at 5 Å, purely local (no long-range terms)."""
        return cls(
            cutoff=5.0, cutoff_fn="cosine", radial_basis_fn="physnet", num_radial_basis_fn=32,
            degrees=[1, 2, 3], num_features=132, num_layers=3, num_heads=4,
            activation_fn="silu", qk_non_linearity="identity",
            residual_mlp_1=False, residual_mlp_2=False, layer_normalization_1=False, layer_normalization_2=False,
            message_normalization="sqrt_num_features",
            energy_regression_dim=128, energy_activation_fn="identity",
            energy_learn_atomic_type_scales=True, energy_learn_atomic_type_shifts=True,
            zbl_repulsion_bool=False, electrostatic_energy_bool=False, dispersion_energy_bool=False,
        )
