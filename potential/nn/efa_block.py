"""The gated blend of a layer's local update with an EFA (global) update, as in the EFA paper's model."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from .efa_periodic import PeriodicEuclideanFastAttention


class EFABlock(nn.Module):
    """Gated blend of a layer's local update with an EFA (global) update, as in the paper's model.

    ``forward(x, dx_local, positions, batch, num_graphs, cell, pbc[, global_sums]) -> x_new`` with

        enabled:   y  = EFA(x) + x;  y = W_2 silu(W_1 y)      (EFA ends with its output Linear;
                                                             W_2, b_2 zero at init)
                   x_new = x + silu(c) · dx_local + silu(1 − c) · y              (c learned, init 0.5)
        disabled:  x_new = x + dx_local                                           (no parameters)

    So a layer without EFA is exactly the plain residual update (e.g. converted SO3LR weights).
    ``x``: invariant features [N,F]; ``dx_local``: the layer's local (message-passing/attention)
    update [N,F]; positions Å; cell [B,3,3] Å (rows = lattice vectors), pbc [B,3] bool.
    The EFA is :class:`PeriodicEuclideanFastAttention`, so open graphs (pbc all False, any cell)
    use the Lebedev grid and fully periodic graphs the reciprocal lattice.

    Config fields (``So3kratesConfig``, read by :meth:`from_config`; defaults there): ``efa_layers``
    (one bool per layer), ``efa_grid``, ``efa_max_frequency``, ``efa_max_length`` (Å),
    ``efa_num_heads``, ``efa_qk_features``, ``efa_v_features``, ``efa_qk_activation``,
    ``efa_periodic_mode`` (``simplex`` | ``kshell``), ``efa_periodic_kcut`` / ``efa_periodic_width``
    (1/Å, kshell only), ``efa_qk_degrees`` (direction-dependent queries/keys from the layer's input
    Euclidean variables ``ev``; layers ≥ 1 only, since the first layer's input ev is zero; open
    systems only). Used by ``So3kratesLayer`` (nn/layer.py) in place of ``x + dx_local``.
    """

    def __init__(self, num_features: int, enabled: bool = True, num_heads: int = 1,
                 qk_features: Optional[int] = None, v_features: Optional[int] = None, grid: int = 86,
                 max_frequency: Optional[float] = None, max_length: float = 10.0,
                 kcut: Optional[float] = None, k_width: Optional[float] = None,
                 zero_init: bool = True, qk_activation: str = "identity",
                 periodic_mode: str = "simplex", qk_degrees: int = 0,
                 env_degrees: Optional[List[int]] = None):
        super().__init__()
        self.enabled = bool(enabled)
        self.num_features = int(num_features)
        # 0: the boundary comes from pbc at run time; 1: always open; 2: always fully periodic (set by
        # ahead-of-time compilation, so3krates.export.pt2, which compiles one program per boundary)
        self.boundary: int = 0
        if enabled:
            self.efa = PeriodicEuclideanFastAttention(
                num_features, num_heads=num_heads, qk_features=qk_features, v_features=v_features,
                grid=grid, max_frequency=max_frequency, max_length=max_length, kcut=kcut,
                k_width=k_width, qk_activation=qk_activation, periodic_mode=periodic_mode,
                qk_degrees=qk_degrees, env_degrees=env_degrees)
            self.mlp1 = nn.Linear(num_features, num_features)
            self.mlp2 = nn.Linear(num_features, num_features)
            if zero_init:
                nn.init.zeros_(self.mlp2.weight)
                nn.init.zeros_(self.mlp2.bias)
            self.c_switch = nn.Parameter(torch.full((1,), 0.5))
        else:
            self.efa = None
            self.mlp1 = None
            self.mlp2 = None
            self.register_parameter("c_switch", None)

    @classmethod
    def from_config(cls, cfg, layer_index: int) -> "EFABlock":
        """Build the block of layer ``layer_index`` from a config with the ``efa_*`` fields above
        (missing fields take the defaults; no ``efa_layers`` → disabled)."""
        layers = list(getattr(cfg, "efa_layers", None) or [])
        enabled = layer_index < len(layers) and bool(layers[layer_index])
        return cls(
            num_features=int(cfg.num_features), enabled=enabled,
            num_heads=int(getattr(cfg, "efa_num_heads", 1) or 1),
            qk_features=getattr(cfg, "efa_qk_features", None),
            v_features=getattr(cfg, "efa_v_features", None),
            grid=int(getattr(cfg, "efa_grid", 50) or 50),
            max_frequency=getattr(cfg, "efa_max_frequency", None),
            max_length=float(getattr(cfg, "efa_max_length", 10.0) or 10.0),
            kcut=getattr(cfg, "efa_periodic_kcut", None),
            k_width=getattr(cfg, "efa_periodic_width", None),
            qk_activation=str(getattr(cfg, "efa_qk_activation", "identity") or "identity"),
            periodic_mode=str(getattr(cfg, "efa_periodic_mode", "simplex") or "simplex"),
            # the first layer's input Euclidean variables are zero: no direction-dependent queries/keys there
            qk_degrees=int(getattr(cfg, "efa_qk_degrees", 0) or 0) if layer_index > 0 else 0,
            env_degrees=[int(d) for d in getattr(cfg, "degrees", [])],
        )

    def forward(self, x: Tensor, dx_local: Tensor, positions: Tensor, batch: Tensor, num_graphs: int,
                cell: Tensor, pbc: Tensor, global_sums: Optional[Tensor] = None,
                ev: Optional[Tensor] = None) -> Tensor:
        """``global_sums``: the attention's key-value sums over the whole system (one graph; an engine
        sums :meth:`global_sums` of its atoms over MPI ranks), None to form them from the given atoms.
        ``ev`` [N, m_tot]: the layer's input Euclidean variables, read only with ``efa_qk_degrees`` > 0
        (direction-dependent queries/keys)."""
        efa = self.efa
        mlp1 = self.mlp1
        mlp2 = self.mlp2
        c = self.c_switch
        if efa is None or mlp1 is None or mlp2 is None or c is None:  # disabled: the plain residual update
            return x + dx_local
        if global_sums is None:
            y = efa(x, positions, batch, num_graphs, cell, pbc, ev)
        else:
            y = efa.apply_global_sums(x, positions, global_sums, self.periodic_cell(cell, pbc), ev)
        y = mlp2(torch.nn.functional.silu(mlp1(y + x)))
        c = c.to(x.dtype)
        return x + torch.nn.functional.silu(c) * dx_local + torch.nn.functional.silu(1.0 - c) * y

    def periodic_cell(self, cell: Tensor, pbc: Tensor) -> Optional[Tensor]:
        """The cell [3,3] of a fully periodic graph, None for an open one (one graph: cell [1,3,3] or
        [3,3], pbc [1,3] or [3]); mixed boundaries raise ``ValueError``. A fixed ``boundary`` skips
        reading pbc."""
        if self.boundary == 1:
            return None
        if self.boundary == 2:
            return cell.reshape(3, 3)
        p = pbc.reshape(-1).to(torch.bool)
        if bool(p.all()):
            return cell.reshape(3, 3)
        if bool(p.any()):
            raise ValueError("Euclidean fast attention supports fully periodic boxes (EFA on the reciprocal "
                             "lattice) or fully open ones (Lebedev EFA), not mixed boundaries; use pbc = (T, T, T) "
                             "with a vacuum gap for slabs, or an open system")
        return None

    def global_sums(self, x: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor,
                    ev: Optional[Tensor] = None) -> Tensor:
        """The attention's key-value sums over the given atoms (one graph; shape fixed by the module and
        the cell: treat it as opaque). Open systems: positions must share one origin on every rank (Å).
        ``ev``: the atoms' Euclidean variables (required with ``efa_qk_degrees`` > 0)."""
        efa = self.efa
        if efa is None:
            return torch.zeros(0, dtype=x.dtype, device=x.device)
        w = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        return efa.global_sums(x, positions, w, self.periodic_cell(cell, pbc), ev)
