"""So3krates attention block (invariant features + Euclidean variables) and exchange block.

Shapes: N atoms, E edges (i <- j), F features, H heads, D = len(degrees),
m_tot = sum(2l + 1). Segment sums over the centre atom i use index_add (no N x N tensors).
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import Tensor, nn

from .basis import degree_repeat_index, l0_contraction_matrix
from .constants import ExactConstants


def activation(x: Tensor, name: str) -> Tensor:
    """Activation by name (as in mlff/flax): silu, identity, relu, tanh, softplus (log(1 + e^x)),
    gelu (tanh approximation, the jax.nn.gelu default)."""
    if name == "silu":
        return torch.nn.functional.silu(x)
    if name == "identity":
        return x
    if name == "relu":
        return torch.relu(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "softplus":
        return torch.logaddexp(x, torch.zeros_like(x))
    if name == "gelu":
        return torch.nn.functional.gelu(x, approximate="tanh")
    raise ValueError("unknown activation function")


class AttentionBlock(ExactConstants):
    """Two attention heads families on the local graph:

    alpha1_ij^h = <q1_i^h, w1_ij^h, k1_j^h> / nc * cut_ij   (H heads, invariant update)
    alpha2_ij^d = <q2_i^d, w2_ij^d, k2_j^d> / nc * cut_ij   (D heads, one per degree)
    x_i  += sum_j alpha1_ij^h (Wv1^h x_j^h)
    ev_i += sum_j alpha2_ij^{l} Y_l(r_ij / |r_ij|)
    with filters w_ij = MLP(rbf_ij) + MLP(contract_l0(ev_j - ev_i)).
    """

    def __init__(self, num_features: int, num_heads: int, degrees: List[int], num_radial_basis_fn: int,
                 normalization: str, avg_num_neighbors: float, activation_fn: str, qk_non_linearity: str):
        super().__init__()
        f = num_features
        nd = len(degrees)
        self.num_features = f
        self.num_heads = num_heads
        self.num_degrees = nd
        self.activation_fn = activation_fn
        self.qk_non_linearity = qk_non_linearity
        self.radial_filter1_layer_1 = nn.Linear(num_radial_basis_fn, f)
        self.radial_filter1_layer_2 = nn.Linear(f, f)
        self.radial_filter2_layer_1 = nn.Linear(num_radial_basis_fn, f)
        self.radial_filter2_layer_2 = nn.Linear(f, f)
        self.spherical_filter1_layer_1 = nn.Linear(nd, f // 4)
        self.spherical_filter1_layer_2 = nn.Linear(f // 4, f)
        self.spherical_filter2_layer_1 = nn.Linear(nd, f // 4)
        self.spherical_filter2_layer_2 = nn.Linear(f // 4, f)
        fh1 = f // num_heads
        fh2 = f // nd
        self.Wq1 = nn.Parameter(torch.empty(num_heads, fh1, fh1))
        self.Wk1 = nn.Parameter(torch.empty(num_heads, fh1, fh1))
        self.Wv1 = nn.Parameter(torch.empty(num_heads, fh1, fh1))
        self.Wq2 = nn.Parameter(torch.empty(nd, fh2, fh2))
        self.Wk2 = nn.Parameter(torch.empty(nd, fh2, fh2))
        for w in (self.Wq1, self.Wk1, self.Wv1, self.Wq2, self.Wk2):
            # lecun normal over the fan-in of each head
            nn.init.normal_(w, std=1.0 / math.sqrt(w.shape[-1]))
        if normalization == "identity":
            nc1, nc2 = 1.0, 1.0
        elif normalization == "sqrt_num_features":
            nc1, nc2 = math.sqrt(fh1), math.sqrt(fh2)
        elif normalization == "avg_num_neighbors":
            nc1, nc2 = float(avg_num_neighbors), float(avg_num_neighbors)
        else:
            raise ValueError(f"message normalization {normalization!r} is not supported")
        self.nc1 = nc1
        self.nc2 = nc2
        self.register_constant("contraction", l0_contraction_matrix(degrees))
        self.register_buffer("repeat_index", degree_repeat_index(degrees), persistent=False)

    def forward(self, x: Tensor, ev: Tensor, rbf: Tensor, ylm: Tensor, cut: Tensor,
                idx_i: Tensor, idx_j: Tensor) -> Tuple[Tensor, Tensor]:
        """x [N, F], ev [N, m_tot], rbf [E, K], ylm [E, m_tot], cut [E] -> (dx [N, F], dev [N, m_tot])."""
        n = x.shape[0]
        e = idx_i.shape[0]
        f = self.num_features
        h = self.num_heads
        nd = self.num_degrees
        act = self.activation_fn
        w1 = self.radial_filter1_layer_2(activation(self.radial_filter1_layer_1(rbf), act))
        w2 = self.radial_filter2_layer_2(activation(self.radial_filter2_layer_1(rbf), act))
        c = torch.matmul((ev[idx_j] - ev[idx_i]) ** 2, self.contraction.to(ev.dtype))  # [E, D]
        w1 = w1 + self.spherical_filter1_layer_2(activation(self.spherical_filter1_layer_1(c), act))
        w2 = w2 + self.spherical_filter2_layer_2(activation(self.spherical_filter2_layer_1(c), act))
        w1 = w1.view(e, h, f // h)
        w2 = w2.view(e, nd, f // nd)

        x1 = x.view(n, h, f // h)
        x2 = x.view(n, nd, f // nd)
        q1 = activation(torch.einsum("hij,nhj->nhi", self.Wq1, x1), self.qk_non_linearity)
        k1 = activation(torch.einsum("hij,nhj->nhi", self.Wk1, x1), self.qk_non_linearity)
        q2 = activation(torch.einsum("hij,nhj->nhi", self.Wq2, x2), self.qk_non_linearity)
        k2 = activation(torch.einsum("hij,nhj->nhi", self.Wk2, x2), self.qk_non_linearity)
        v1 = torch.einsum("hij,nhj->nhi", self.Wv1, x1)

        cut_ = cut.unsqueeze(-1)
        alpha1 = (q1[idx_i] * w1 * k1[idx_j]).sum(-1) / self.nc1 * cut_  # [E, H]
        alpha2 = (q2[idx_i] * w2 * k2[idx_j]).sum(-1) / self.nc2 * cut_  # [E, D]

        msg = alpha1.unsqueeze(-1) * v1[idx_j]  # [E, H, F/H]
        x_att = torch.zeros(n, h, f // h, dtype=x.dtype, device=x.device).index_add(0, idx_i, msg)
        ev_msg = alpha2.index_select(1, self.repeat_index) * ylm  # [E, m_tot]
        ev_att = torch.zeros(n, ev.shape[1], dtype=ev.dtype, device=ev.device).index_add(0, idx_i, ev_msg)
        return x_att.reshape(n, f), ev_att


class ExchangeBlock(ExactConstants):
    """Per-atom mixing of invariant features and Euclidean-variable norms:
    [cx, cev] = W [x, contract_l0(ev)] + b;  x += cx,  ev_l += cev_l * ev_l."""

    def __init__(self, num_features: int, degrees: List[int]):
        super().__init__()
        nd = len(degrees)
        self.num_features = num_features
        self.mlp_layer_2 = nn.Linear(num_features + nd, num_features + nd)
        self.register_constant("contraction", l0_contraction_matrix(degrees))
        self.register_buffer("repeat_index", degree_repeat_index(degrees), persistent=False)

    def forward(self, x: Tensor, ev: Tensor) -> Tuple[Tensor, Tensor]:
        y = torch.cat([x, torch.matmul(ev * ev, self.contraction.to(ev.dtype))], dim=-1)
        y = self.mlp_layer_2(y)
        cx = y[:, :self.num_features]
        cev = y[:, self.num_features:]
        return cx, cev.index_select(1, self.repeat_index) * ev
