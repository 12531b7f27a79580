"""Atom-type embedding and SpookyNet-style total-charge / spin embeddings (as in mlff/SO3LR)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .attention import activation


class AtomTypeEmbedding(nn.Module):
    """h_i = E[Z_i]; table of zmax + 1 rows indexed by the atomic number."""

    def __init__(self, num_features: int, zmax: int = 118):
        super().__init__()
        self.embedding = nn.Embedding(zmax + 1, num_features)

    def forward(self, atomic_numbers: Tensor) -> Tensor:
        return self.embedding(atomic_numbers)


class ChargeSpinEmbedding(nn.Module):
    """Embedding of a per-graph scalar psi (total charge in e, or number of unpaired electrons).

    q_i = Q[Z_i], k = K[psi < 0], v = V[psi < 0];  y_i = softplus(q_i . k / sqrt(F));
    a_i = psi * y_i / sum_{j in graph} y_j;  e_i = a_i v + MLP(a_i v) (2 bias-free silu layers).
    Zero for psi = 0.
    """

    def __init__(self, num_features: int, zmax: int = 118, activation_fn: str = "silu"):
        super().__init__()
        self.num_features = num_features
        self.q = nn.Embedding(zmax + 1, num_features)
        self.k = nn.Embedding(2, num_features)
        self.v = nn.Embedding(2, num_features)
        self.layer_0 = nn.Linear(num_features, num_features, bias=False)
        self.layer_1 = nn.Linear(num_features, num_features, bias=False)
        self.activation_fn = activation_fn

    def forward(self, atomic_numbers: Tensor, psi: Tensor, batch: Tensor, num_graphs: int,
                nlocal: int = -1) -> Tensor:
        """[N, F] embedding. With nlocal >= 0 the normalising sum runs over atoms 0..nlocal-1 only
        (engine mode: the rest are ghost images of atoms owned elsewhere)."""
        psi = psi.to(self.q.weight.dtype)
        sign_idx = (psi < 0).long()  # [B]; mlff: psi // inf -> -1 (row 1) if negative else 0
        q = self.q(atomic_numbers)  # [N, F]
        k = self.k(sign_idx)[batch]  # [N, F]
        v = self.v(sign_idx)[batch]  # [N, F]
        qk = (q * k).sum(-1) / math.sqrt(self.num_features)
        y = torch.logaddexp(qk, torch.zeros_like(qk))  # softplus exactly as jax.nn.softplus
        y_owned = y
        if nlocal >= 0:
            y_owned = torch.where(torch.arange(y.shape[0], device=y.device) < nlocal, y, torch.zeros_like(y))
        denom = torch.zeros(num_graphs, dtype=y.dtype, device=y.device).index_add(0, batch, y_owned)
        a = psi[batch] * y / denom[batch]
        e = a.unsqueeze(-1) * v
        h = self.layer_0(activation(e, self.activation_fn))
        h = self.layer_1(activation(h, self.activation_fn))
        return e + h
