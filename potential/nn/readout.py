"""Per-atom readouts: energy (eV) with per-type scale/shift, partial charges (e) with exact total-charge
conservation, and Hirshfeld volume ratios (dimensionless), as mlff's EnergySparse,
PartialChargesSparse and HirshfeldSparse."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..graph.segments import per_atom
from .activation import activation


class _Regression(nn.Module):
    """x -> [act(W_r x + b_r)] -> W_f . + b_f (the regression layer is skipped when dim is None)."""

    def __init__(self, num_features: int, regression_dim: Optional[int], out_features: int, activation_fn: str):
        super().__init__()
        self.use_regression = regression_dim is not None
        d = regression_dim if regression_dim is not None else num_features
        self.dense_regression = nn.Linear(num_features, d) if regression_dim is not None else nn.Identity()
        self.dense_final = nn.Linear(d, out_features)
        self.activation_fn = activation_fn

    def forward(self, x: Tensor) -> Tensor:
        if self.use_regression:
            x = activation(self.dense_regression(x), self.activation_fn)
        return self.dense_final(x)


class EnergyHead(nn.Module):
    """E_i = MLP(x_i) * scale[Z_i] + shift[Z_i]  (eV)."""

    def __init__(self, num_features: int, regression_dim: Optional[int], activation_fn: str, zmax: int = 118,
                 learn_atomic_type_scales: bool = False, learn_atomic_type_shifts: bool = False):
        super().__init__()
        self.mlp = _Regression(num_features, regression_dim, 1, activation_fn)
        # per-type scale and shift; kept fixed (buffers would not train) unless learnable
        self.atomic_scales = nn.Parameter(torch.ones(zmax + 1), requires_grad=learn_atomic_type_scales)
        self.energy_offset = nn.Parameter(torch.zeros(zmax + 1), requires_grad=learn_atomic_type_shifts)

    def forward(self, x: Tensor, atomic_numbers: Tensor) -> Tensor:
        e = self.mlp(x).squeeze(-1)
        return e * self.atomic_scales[atomic_numbers] + self.energy_offset[atomic_numbers]


class PartialChargesHead(nn.Module):
    """q_i = MLP(x_i) + q0[Z_i] + (Q - sum_graph(...)) / n_atoms(graph)   (e); sums to Q per graph.
    ``raw`` gives the first two terms; ``correct`` adds the third from the graph's sums."""

    def __init__(self, num_features: int, regression_dim: Optional[int], activation_fn: str,
                 num_embeddings: int = 100):
        super().__init__()
        self.mlp = _Regression(num_features, regression_dim, 1, activation_fn)
        self.embedding = nn.Embedding(num_embeddings, 1)
        nn.init.zeros_(self.embedding.weight)

    def raw(self, x: Tensor, atomic_numbers: Tensor) -> Tensor:
        """Uncorrected charges q~_i = MLP(x_i) + q0[Z_i] (e), [N]."""
        return self.mlp(x).squeeze(-1) + self.embedding(atomic_numbers).squeeze(-1)

    def correct(self, raw: Tensor, batch: Tensor, total_charge: Tensor, predicted: Tensor, counts: Tensor) -> Tensor:
        """q_i = q~_i + (Q_b - predicted_b) / counts_b with b = batch[i]; predicted/counts [B]."""
        correction = (total_charge.to(raw.dtype) - predicted) / torch.clamp(counts, min=1.0)
        return raw + per_atom(correction, batch, correction.shape[0])


class HirshfeldHead(nn.Module):
    """v_i = | v0[Z_i] + <Q[Z_i], MLP(x_i)> / sqrt(F/2) |  (Hirshfeld volume ratio)."""

    def __init__(self, num_features: int, regression_dim: Optional[int], activation_fn: str,
                 num_embeddings: int = 100):
        super().__init__()
        half = num_features // 2
        self.half = half
        self.mlp = _Regression(num_features, regression_dim // 2 if regression_dim is not None else None,
                               half, activation_fn)
        self.shift = nn.Embedding(num_embeddings, 1)
        self.query = nn.Embedding(num_embeddings, half)
        nn.init.ones_(self.shift.weight)

    def forward(self, x: Tensor, atomic_numbers: Tensor) -> Tensor:
        k = self.mlp(x)
        q = self.query(atomic_numbers)
        qk = (q * k / math.sqrt(self.half)).sum(-1)
        return torch.abs(self.shift(atomic_numbers).squeeze(-1) + qk)
