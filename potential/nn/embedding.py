"""Atom-type embedding and SpookyNet-style total-charge / spin embeddings (as in mlff/SO3LR)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..graph.segments import graph_sums, per_atom
from .activation import activation


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

    def weights(self, atomic_numbers: Tensor, psi: Tensor, batch: Tensor) -> Tensor:
        """y_i = softplus(q[Z_i] . k[sign psi_b] / sqrt(F)) [N] (b = batch[i]); psi [B]."""
        sign_idx = (psi.to(self.q.weight.dtype) < 0).long()  # mlff: psi // inf -> -1 (row 1) if negative else 0
        qk = (self.q(atomic_numbers) * per_atom(self.k(sign_idx), batch, psi.shape[0])).sum(-1) \
            / math.sqrt(self.num_features)
        return torch.logaddexp(qk, torch.zeros_like(qk))  # softplus exactly as jax.nn.softplus

    def weight_sums(self, atomic_numbers: Tensor, psi: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """Sum of the weights y_i per graph [B] (the normalisation of :meth:`forward`)."""
        y = self.weights(atomic_numbers, psi, batch)
        return graph_sums(y, batch, num_graphs)

    def forward(self, atomic_numbers: Tensor, psi: Tensor, batch: Tensor, num_graphs: int,
                weight_sums: Optional[Tensor] = None) -> Tensor:
        """[N, F] embedding of psi [B] (one value per graph). ``weight_sums`` [B]: the normalising sums
        over the whole system (engines, whose atoms are one rank's share), else formed from these atoms."""
        psi = psi.to(self.q.weight.dtype)
        y = self.weights(atomic_numbers, psi, batch)
        if weight_sums is None:
            weight_sums = graph_sums(y, batch, num_graphs)
        sign_idx = (psi < 0).long()
        a = per_atom(psi, batch, num_graphs) * y / per_atom(weight_sums.to(y.dtype), batch, num_graphs)
        e = a.unsqueeze(-1) * per_atom(self.v(sign_idx), batch, num_graphs)
        h = self.layer_0(activation(e, self.activation_fn))
        h = self.layer_1(activation(h, self.activation_fn))
        return e + h
