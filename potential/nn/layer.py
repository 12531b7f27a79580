"""One So3krates (Euclidean transformer) layer's per-atom update, as mlff's `SO3kratesLayerSparse`:

x, ev += Attention(x, ev) [blended with EFA];  [LayerNorm 1];  [x += MLP1(x)];
x, ev += Exchange(x, ev);  [x += MLP2(x)];  [LayerNorm 2]

The attention sums themselves (pairs of the local graph) are formed by ``So3krates.messages``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from torch import Tensor, nn

from .activation import activation
from .attention import AttentionBlock, ExchangeBlock
from .efa_block import EFABlock

# flax.linen.LayerNorm default epsilon
LAYER_NORM_EPS = 1e-6


class ResidualMLP(nn.Module):
    """y = W2 act(W1 act(x) + b1) + b2 (the residual is added by the caller)."""

    def __init__(self, num_features: int, activation_fn: str):
        super().__init__()
        self.layer_1 = nn.Linear(num_features, num_features)
        self.layer_2 = nn.Linear(num_features, num_features)
        self.activation_fn = activation_fn

    def forward(self, x: Tensor) -> Tensor:
        y = self.layer_1(activation(x, self.activation_fn))
        return self.layer_2(activation(y, self.activation_fn))


class So3kratesLayer(nn.Module):
    def __init__(self, num_features: int, num_heads: int, degrees: List[int], num_radial_basis_fn: int,
                 message_normalization: str, avg_num_neighbors: float, activation_fn: str,
                 qk_non_linearity: str, residual_mlp_1: bool, residual_mlp_2: bool,
                 layer_normalization_1: bool, layer_normalization_2: bool,
                 efa: Optional[EFABlock] = None):
        super().__init__()
        self.attention_block = AttentionBlock(num_features, num_heads, degrees, num_radial_basis_fn,
                                              message_normalization, avg_num_neighbors, activation_fn,
                                              qk_non_linearity)
        self.exchange_block = ExchangeBlock(num_features, degrees)
        # Euclidean fast attention next to the local attention update; disabled = plain x + dx
        self.efa = efa if efa is not None else EFABlock(num_features, enabled=False)
        self.use_ln1 = layer_normalization_1
        self.use_ln2 = layer_normalization_2
        self.use_mlp1 = residual_mlp_1
        self.use_mlp2 = residual_mlp_2
        # Unused sub-modules are Identity so TorchScript sees one type per attribute.
        self.layer_normalization_1 = nn.LayerNorm(num_features, eps=LAYER_NORM_EPS) \
            if layer_normalization_1 else nn.Identity()
        self.layer_normalization_2 = nn.LayerNorm(num_features, eps=LAYER_NORM_EPS) \
            if layer_normalization_2 else nn.Identity()
        self.res_mlp_1 = ResidualMLP(num_features, activation_fn) if residual_mlp_1 else nn.Identity()
        self.res_mlp_2 = ResidualMLP(num_features, activation_fn) if residual_mlp_2 else nn.Identity()

    def forward(self, x: Tensor, ev: Tensor, x_att: Tensor, ev_att: Tensor, positions: Tensor, batch: Tensor,
                num_graphs: int, cell: Tensor, pbc: Tensor, efa_sums: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Per atom: (x [N,F], ev [N,m_tot], attention sums x_att, ev_att) -> new (x, ev). Positions (Å),
        batch, cell and pbc are read by the EFA block only; ``efa_sums``: its key-value sums over the
        whole system (engines that sum them over MPI ranks), None to form them from these atoms."""
        x = self.efa(x, x_att, positions, batch, num_graphs, cell, pbc, efa_sums, ev)
        ev = ev + ev_att
        if self.use_ln1:
            x = self.layer_normalization_1(x)
        if self.use_mlp1:
            x = x + self.res_mlp_1(x)
        x_ex, ev_ex = self.exchange_block(x, ev)
        x = x + x_ex
        ev = ev + ev_ex
        if self.use_mlp2:
            x = x + self.res_mlp_2(x)
        if self.use_ln2:
            x = self.layer_normalization_2(x)
        return x, ev
