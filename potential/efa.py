"""Euclidean fast attention (EFA): global, linear-cost attention with Euclidean rotary phases.

Reimplementation of Frank, Chmiela, Müller, Unke, "Euclidean fast attention: machine learning
global atomic representations at linear cost" (arXiv 2412.08541). Units: positions Å,
frequencies 1/Å; features are dimensionless.

Open systems (molecules, clusters): Lebedev ERoPE
-------------------------------------------------
Queries, keys and values are linear maps of the invariant features ``h_i``. Each query/key
channel pair ``f`` (channels 2f, 2f+1 of a head) is rotated by the angle ``ω_f (u_m · r_i)``,
where ``u_m`` runs over a Lebedev grid (weights ``w_m``, ``Σ w_m = 1``) and
``ω_f = linspace(0, max_frequency, d_qk/2) / max_length``. With ``q_i(u)``/``k_j(u)`` the rotated
vectors (``q`` scaled by ``1/sqrt(d_qk)``), the update of atom ``i`` in graph ``b`` is

    y_i = Σ_m w_m  q_i(u_m) · [ Σ_{j ∈ b} k_j(u_m) v_jᵀ ]                      (linear attention)

which equals ``Σ_j [Σ_m w_m q_i(u_m)·k_j(u_m)] v_j`` — an attention kernel that depends only on
``r_j − r_i`` (translation invariant exactly), and is the quadrature of a sphere average (rotation
invariant up to the grid accuracy, see ``lebedev.kernel_quadrature_error``: ≈ 5e-7 … 4e-6
absolute kernel error for ``ω r <= b_max(grid)``). No N×N matrix is ever formed: the cost is
O(N · M · H · d_qk · d_v) per layer.

Periodic systems: reciprocal-lattice ERoPE (``PeriodicEuclideanFastAttention``)
------------------------------------------------------------------------------
The Lebedev phases use absolute positions, and ``ω u·a`` is not a multiple of 2π for a lattice
vector ``a``: wrapping one atom into the box changes the energy. For periodic graphs the grid is
replaced by the reciprocal-lattice vectors ``k = 2π n·B`` (``B = inv(cell)ᵀ``, integer ``n``,
``|k| < k_cut``), an Ewald-like k-space sum. All channel pairs of a head are rotated by the same
phase ``k·r_i``; ``exp(i k·(r + a)) = exp(i k·r)``, so the energy is exactly invariant to wrapping
and to the choice of the cell origin, and exactly rotation invariant when cell and positions rotate
together. The Lebedev sphere average over the shell ``|k| = ω_f`` becomes a lattice sum with
normalised weights concentrated near the shell:

    w_f(k) = softmax_k[ −(|k| − ω_f)² / (2σ²) + log f_c(|k|/k_cut) ]   (per graph, over its k set)

(``f_c`` a smooth cosine cutoff, so the energy is continuous when the cell is strained and k
vectors cross ``k_cut``). ``ω_f = 0`` channels reduce to ``k = 0`` exactly as in the open variant;
as the box grows the lattice sum tends to the Lebedev kernel smeared by ``σ`` in ``|k|``.

Which variant is used when: :class:`EuclideanFastAttention` is for open systems only.
:class:`PeriodicEuclideanFastAttention` (same parameters, plus ``cell``/``pbc``) evaluates graphs
with ``pbc = (True, True, True)`` with the reciprocal lattice and graphs with
``pbc = (False, False, False)`` with the Lebedev grid, so one set of weights serves both.
Partially periodic graphs (slabs, wires) are rejected with an error.

Degree-1 (equivariant) outputs
------------------------------
``forward_vectors`` also returns a vector update ``[N, 3, C]``: (i) the "tensor integration" of
the paper with ``Y_1(u) = u``: ``Σ_m w_m u_m q_i(u_m)·Σ_j k_j(u_m) v_jᵀ`` (for the periodic variant
``u → k/|k|``), and (ii) if degree-1 value features are given (``vectors [N, 3, C_in]``), those
values propagated by the same invariant kernel. Both rotate as vectors.

Cost
----
Open: O(N·M·d_qk·d_v) time, O(N·M·d_qk/2) extra memory per layer (M grid points): the rotated
queries/keys are never materialised per (atom, grid point, head); both contractions are batched
matmuls against the [cos|sin] phase table (see ``_key_value``/``_query``). Periodic: the same with
M → K ≈ V·k_cut³/(6π²) reciprocal vectors (V the cell volume, Å³). At fixed density K grows with
the box, so for very large boxes lower ``kcut`` (or use a smaller ``max_frequency``/larger
``max_length``); ``max_kvectors`` guards against accidental blow-up.

Everything is TorchScript-able and works in float32 and float64 (the grid is stored as a buffer
and cast to the positions' dtype). Open graphs are centred before the phases are computed (the
result is translation invariant), which keeps float32 phases accurate far from the origin.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import lebedev
from .constants import ExactConstants

__all__ = ["EuclideanFastAttention", "PeriodicEuclideanFastAttention", "EFABlock"]


# ---------------------------------------------------------------------------------------------
# graph padding helpers (per-graph dense layout so that the per-graph contractions are bmm's)
# ---------------------------------------------------------------------------------------------
def _graph_layout(batch: Tensor, num_graphs: int) -> Tuple[Tensor, int]:
    """Index of every atom in a dense [num_graphs * nmax] layout, and nmax."""
    n = batch.shape[0]
    if num_graphs == 1:
        return torch.arange(n, device=batch.device), n
    counts = torch.bincount(batch, minlength=num_graphs)
    nmax = int(counts.max().item()) if n > 0 else 0
    order = torch.argsort(batch, stable=True)
    sorted_batch = batch[order]
    ptr = torch.cumsum(counts, 0) - counts
    local = torch.arange(n, device=batch.device) - ptr[sorted_batch]
    flat = torch.empty_like(batch)
    flat[order] = sorted_batch * nmax + local
    return flat, nmax


def _pad(x: Tensor, flat: Tensor, num_graphs: int, nmax: int) -> Tensor:
    shape: List[int] = [num_graphs * nmax] + list(x.shape[1:])
    if num_graphs == 1:
        return x.unsqueeze(0)
    out = x.new_zeros(shape).index_copy(0, flat, x)
    return out.reshape([num_graphs, nmax] + list(x.shape[1:]))


def _unpad(x: Tensor, flat: Tensor, num_graphs: int) -> Tensor:
    if num_graphs == 1:
        return x.squeeze(0)
    x = x.reshape([x.shape[0] * x.shape[1]] + list(x.shape[2:]))
    return x.index_select(0, flat)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """ERoPE: rotate channel pairs. x [B,n,H,P,2]; cos/sin [B,n,M,P or 1] -> [B,n,M,H,2P]."""
    c = cos.unsqueeze(3)
    s = sin.unsqueeze(3)
    a = x[..., 0].unsqueeze(2)
    b = x[..., 1].unsqueeze(2)
    out = torch.stack([a * c - b * s, b * c + a * s], dim=-1)  # [B,n,M,H,P,2]
    return out.flatten(-2)


def _key_value(k: Tensor, v: Tensor, cs: Tensor) -> Tensor:
    """Per-graph key-value sums of rotated keys: [B,P,2,M,H,V] (index 2: pair component a|b).

    KV_a = Σ_j cos·(k_a v) − sin·(k_b v),  KV_b = Σ_j cos·(k_b v) + sin·(k_a v), one batched
    matmul over (graph, channel pair) with the stacked table cs = [cos|sin] [B,n,2M,Pc]."""
    nb = k.shape[0]
    n = k.shape[1]
    nh = k.shape[2]
    npair = k.shape[3]
    nv = v.shape[3]
    m = cs.shape[2] // 2
    kv_in = torch.einsum("bnhpt,bnhv->bnpthv", k, v).reshape(nb, n, npair, 2 * nh * nv)
    if cs.shape[3] == 1:
        kvcs = torch.einsum("bnj,bnpx->bpjx", cs.squeeze(3), kv_in)
    else:
        kvcs = torch.einsum("bnjp,bnpx->bpjx", cs, kv_in)
    kvcs = kvcs.reshape(nb, npair, 2, m, 2, nh, nv)  # [b,p,(cos|sin),m,(k_a|k_b),h,v]
    kv_a = kvcs[:, :, 0, :, 0] - kvcs[:, :, 1, :, 1]
    kv_b = kvcs[:, :, 0, :, 1] + kvcs[:, :, 1, :, 0]
    return torch.stack([kv_a, kv_b], dim=2)


def _query(q: Tensor, kv: Tensor, cs: Tensor, wc: Tensor) -> Tensor:
    """y = Σ_p q_a Σ_m (cos·wKV_a + sin·wKV_b) + q_b Σ_m (cos·wKV_b − sin·wKV_a): [B,n,C,H,V]."""
    nb = q.shape[0]
    n = q.shape[1]
    nh = q.shape[2]
    npair = q.shape[3]
    nv = kv.shape[5]
    m = cs.shape[2] // 2
    nc = wc.shape[1]
    w = wc.permute(0, 3, 1, 2).unsqueeze(-1).unsqueeze(-1)  # [B|1,P,C,M,1,1]
    wkv_a = w * kv[:, :, 0].unsqueeze(2)  # [B,P,C,M,H,V]
    wkv_b = w * kv[:, :, 1].unsqueeze(2)
    rhs_cos = torch.stack([wkv_a, wkv_b], dim=2)  # [B,P,(T1|T2),C,M,H,V]
    rhs_sin = torch.stack([wkv_b, -wkv_a], dim=2)
    rhs = torch.stack([rhs_cos, rhs_sin], dim=2)  # [B,P,(cos|sin),(T1|T2),C,M,H,V]
    rhs = rhs.permute(0, 1, 2, 5, 3, 4, 6, 7).reshape(nb, npair, 2 * m, 2 * nc * nh * nv)
    if cs.shape[3] == 1:
        t = torch.einsum("bnj,bpjx->bnpx", cs.squeeze(3), rhs)
    else:
        t = torch.einsum("bnjp,bpjx->bnpx", cs, rhs)
    t = t.reshape(nb, n, npair, 2, nc, nh, nv)
    return torch.einsum("bnhpt,bnptchv->bnchv", q, t)


def _smooth_cutoff(x: Tensor) -> Tensor:
    """Cosine cutoff, 1 at x = 0, 0 (with zero slope) at x = 1."""
    return 0.5 * (torch.cos(math.pi * x.clamp(0.0, 1.0)) + 1.0)


class EuclideanFastAttention(ExactConstants):
    """Euclidean fast attention for open systems (Lebedev-grid ERoPE).

    Args:
        num_features: F, size of the input features ``h`` and of the scalar output.
        num_heads: H, attention heads (the qk and v channels are split evenly).
        qk_features: total query/key channels (H · d_qk, d_qk even); default ``num_features``.
        v_features: total value channels (H · d_v); default ``num_features``.
        grid: number of Lebedev points (50, 86, 110, 146, 194, 302, ...; see ``lebedev``).
        max_frequency: dimensionless b_max; default the grid's limit ``lebedev.max_frequency(grid)``.
            Must not exceed it (else rotation invariance is lost).
        max_length: Å; the largest pair distance for which the kernel is rotation invariant to
            grid accuracy. Angular frequencies are ``linspace(0, max_frequency, d_qk/2)/max_length``.
        include_vectors: build the degree-1 output (``forward_vectors``).
        num_vector_features: C, channels of the vector output (default ``num_features``).
        vector_input_features: C_in of optional degree-1 value inputs (0: none).
        trainable_frequencies: make ω_f a parameter (the reference keeps them fixed).
        qk_activation: "identity" (reference default) or "silu".

    ``forward(h [N,F], positions [N,3] Å, batch [N] long, num_graphs) -> [N,F]``.
    """

    def __init__(self, num_features: int, num_heads: int = 1, qk_features: Optional[int] = None,
                 v_features: Optional[int] = None, grid: int = 86,
                 max_frequency: Optional[float] = None, max_length: float = 10.0,
                 include_vectors: bool = False, num_vector_features: Optional[int] = None,
                 vector_input_features: int = 0, trainable_frequencies: bool = False,
                 qk_activation: str = "identity"):
        super().__init__()
        qk_features = num_features if qk_features is None else int(qk_features)
        v_features = num_features if v_features is None else int(v_features)
        if num_heads < 1 or qk_features % num_heads or v_features % num_heads:
            raise ValueError(f"qk_features ({qk_features}) and v_features ({v_features}) must be "
                             f"divisible by num_heads ({num_heads})")
        d_qk = qk_features // num_heads
        if d_qk % 2:
            raise ValueError(f"query/key channels per head must be even for ERoPE, got {d_qk}; "
                             f"choose qk_features as a multiple of 2*num_heads")
        if max_length <= 0:
            raise ValueError(f"max_length must be positive (Å), got {max_length}")
        b_grid = lebedev.max_frequency(grid)
        if max_frequency is None:
            max_frequency = b_grid
        if max_frequency > b_grid * (1 + 1e-9):
            raise ValueError(
                f"max_frequency {max_frequency:.4g} exceeds the limit {b_grid:.4g} of the {grid}-point "
                f"Lebedev grid; use grid={lebedev.grid_for_frequency(max_frequency)} or lower it")
        if qk_activation not in ("identity", "silu"):
            raise ValueError(f"qk_activation must be 'identity' or 'silu', got {qk_activation!r}")

        self.num_features = int(num_features)
        self.num_heads = int(num_heads)
        self.d_qk = d_qk
        self.d_v = v_features // num_heads
        self.grid_size = int(grid)
        self.grid_degree = lebedev.lebedev_degree(grid)
        self.max_frequency = float(max_frequency)
        self.max_length = float(max_length)
        self.include_vectors = bool(include_vectors)
        self.num_vector_features = int(num_features if num_vector_features is None else num_vector_features)
        self.vector_input_features = int(vector_input_features)
        self.use_silu = qk_activation == "silu"
        # Per-head channels of degree-1 values (0 when there are no vector inputs).
        self.c_v = self.num_vector_features // num_heads if vector_input_features > 0 else 0
        if vector_input_features > 0 and self.num_vector_features % num_heads:
            raise ValueError("num_vector_features must be divisible by num_heads with vector inputs")

        self.q = nn.Linear(num_features, qk_features)
        self.k = nn.Linear(num_features, qk_features)
        self.v = nn.Linear(num_features, v_features)
        self.out = nn.Linear(v_features, num_features)
        if self.c_v > 0:
            self.v_vec = nn.Linear(vector_input_features, num_heads * self.c_v, bias=False)
        else:
            self.v_vec = nn.Identity()
        n_vec_in = (v_features if include_vectors else 0) + num_heads * self.c_v
        if n_vec_in > 0:
            self.out_vec = nn.Linear(n_vec_in, self.num_vector_features, bias=False)
        else:
            self.out_vec = nn.Identity()

        num_freq = d_qk // 2
        if num_freq > 1:
            omega = torch.linspace(0.0, self.max_frequency, num_freq, dtype=torch.float64) / self.max_length
        else:
            omega = torch.tensor([self.max_frequency], dtype=torch.float64) / self.max_length
        if trainable_frequencies:
            self.omega = nn.Parameter(omega.to(torch.get_default_dtype()))
        else:
            self.register_constant("omega", omega, persistent=True)
        u, w = lebedev.lebedev_grid(grid)
        self.register_constant("grid_u", u, persistent=True)
        self.register_constant("grid_w", w, persistent=True)

    # ----------------------------------------------------------------------------- pieces
    def _qkv(self, h: Tensor, vectors: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        n = h.shape[0]
        q = self.q(h)
        k = self.k(h)
        if self.use_silu:
            q = torch.nn.functional.silu(q)
            k = torch.nn.functional.silu(k)
        q = q * (1.0 / math.sqrt(self.d_qk))
        q = q.reshape(n, self.num_heads, self.d_qk // 2, 2)
        k = k.reshape(n, self.num_heads, self.d_qk // 2, 2)
        v = self.v(h).reshape(n, self.num_heads, self.d_v)
        if self.c_v > 0:
            if vectors is None:
                vv = h.new_zeros(n, self.num_heads, 3 * self.c_v)
            else:
                if vectors.dim() != 3 or vectors.shape[1] != 3 or vectors.shape[2] != self.vector_input_features:
                    raise ValueError("vectors must have shape [N, 3, vector_input_features]")
                vv = self.v_vec(vectors).reshape(n, 3, self.num_heads, self.c_v)
                vv = vv.permute(0, 2, 1, 3).reshape(n, self.num_heads, 3 * self.c_v)
            v = torch.cat([v, vv], dim=-1)
        return q, k, v

    def _num_weight_channels(self, want_vectors: bool) -> int:
        return 4 if (want_vectors and self.include_vectors) else 1

    def _open_phases(self, pos: Tensor, want_vectors: bool) -> Tuple[Tensor, Tensor, Tensor]:
        """pos [B,n,3] -> cos, sin [B,n,M,P], weights [1,C,M,P]."""
        u = self.grid_u.to(pos.dtype)
        w = self.grid_w.to(pos.dtype)
        omega = self.omega.to(pos.dtype)
        proj = torch.einsum("bnd,md->bnm", pos, u)
        ang = proj.unsqueeze(-1) * omega
        p = omega.shape[0]
        if self._num_weight_channels(want_vectors) == 4:
            wc = torch.cat([w.unsqueeze(0), w.unsqueeze(0) * u.t()], dim=0)  # [4,M]
        else:
            wc = w.unsqueeze(0)
        wc = wc.unsqueeze(0).unsqueeze(-1).expand(1, wc.shape[0], wc.shape[1], p)
        return torch.cos(ang), torch.sin(ang), wc

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, wc: Tensor) -> Tensor:
        """Padded linear attention ``y_i = Σ_m w_m q_i(u_m)·Σ_j k_j(u_m) v_jᵀ`` (per graph).

        q, k [B,n,H,P,2] (channel pairs); v [B,n,H,V]; cos/sin [B,n,M,Pc] with Pc = P (one phase
        per channel pair, Lebedev) or Pc = 1 (same phase for all pairs, reciprocal lattice);
        wc [B|1,C,M,P] quadrature weights (C = 1, or 4 with the u-weighted vector channels).
        Returns [B,n,C,H,V].

        The rotations are never materialised per (atom, grid point, head, channel): with
        R(θ)(a, b) = (a cosθ − b sinθ, b cosθ + a sinθ),
          KV_a = Σ_j cos·(k_a v) − sin·(k_b v),   KV_b = Σ_j cos·(k_b v) + sin·(k_a v)
          y    = Σ_p q_a Σ_m (cos·wKV_a + sin·wKV_b) + q_b Σ_m (cos·wKV_b − sin·wKV_a)
        so both sides are batched matmuls over (graph, channel pair) with the [cos|sin] table.
        """
        cs = torch.cat([cos, sin], dim=2)  # [B,n,2M,Pc]
        return _query(q, _key_value(k, v, cs), cs, wc)

    def _outputs(self, y: Tensor, want_vectors: bool) -> Tuple[Tensor, Tensor]:
        """y [N,C,H,V'] -> scalar update [N,F], vector update [N,3,Cvec] (empty if not wanted)."""
        n = y.shape[0]
        ys = y[:, 0, :, : self.d_v].reshape(n, self.num_heads * self.d_v)
        scalar = self.out(ys)
        if not want_vectors:
            return scalar, y.new_zeros(n, 3, 0)
        parts: List[Tensor] = []
        if self.include_vectors:
            parts.append(y[:, 1:4, :, : self.d_v].reshape(n, 3, self.num_heads * self.d_v))
        if self.c_v > 0:
            yv = y[:, 0, :, self.d_v:].reshape(n, self.num_heads, 3, self.c_v)
            parts.append(yv.permute(0, 2, 1, 3).reshape(n, 3, self.num_heads * self.c_v))
        if len(parts) == 0:
            return scalar, y.new_zeros(n, 3, 0)
        return scalar, self.out_vec(torch.cat(parts, dim=-1))

    def _check_inputs(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int) -> None:
        if h.dim() != 2 or h.shape[1] != self.num_features:
            raise ValueError("h must have shape [N, " + str(self.num_features) + "]")
        if positions.dim() != 2 or positions.shape[1] != 3 or positions.shape[0] != h.shape[0]:
            raise ValueError("positions must have shape [N, 3] (Å) with the same N as h")
        if batch.shape[0] != h.shape[0]:
            raise ValueError("batch must have shape [N]")
        if num_graphs < 1:
            raise ValueError("num_graphs must be >= 1")

    def _open(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int,
              vectors: Optional[Tensor], want_vectors: bool) -> Tensor:
        """Lebedev path; returns y [N,C,H,V']."""
        q, k, v = self._qkv(h, vectors)
        flat, nmax = _graph_layout(batch, num_graphs)
        # the result is translation invariant; centring each graph keeps float32 phases accurate
        counts = torch.bincount(batch, minlength=num_graphs).clamp_min(1).to(positions.dtype)
        centre = torch.zeros(num_graphs, 3, dtype=positions.dtype, device=positions.device)
        centre = centre.index_add(0, batch, positions.detach()) / counts.unsqueeze(1)
        pos = _pad(positions - centre[batch], flat, num_graphs, nmax)
        cos, sin, wc = self._open_phases(pos, want_vectors)
        y = self._attend(_pad(q, flat, num_graphs, nmax), _pad(k, flat, num_graphs, nmax),
                         _pad(v, flat, num_graphs, nmax), cos, sin, wc)
        return _unpad(y, flat, num_graphs)

    # ----------------------------------------------------------------------------- API
    def forward(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """Scalar EFA update ``[N, F]`` for open systems (positions in Å)."""
        self._check_inputs(h, positions, batch, num_graphs)
        y = self._open(h, positions, batch, num_graphs, None, False)
        return self._outputs(y, False)[0]

    @torch.jit.export
    def forward_vectors(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int,
                        vectors: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Scalar update ``[N, F]`` and vector update ``[N, 3, C]`` (rotates with the input)."""
        self._check_inputs(h, positions, batch, num_graphs)
        y = self._open(h, positions, batch, num_graphs, vectors, True)
        return self._outputs(y, True)

    def _phases(self, pos: Tensor, cell: Optional[Tensor], want_vectors: bool) -> Tuple[Tensor, Tensor, Tensor]:
        if cell is not None:
            raise ValueError("this EFA module is for open systems; use PeriodicEuclideanFastAttention with a cell")
        return self._open_phases(pos, want_vectors)

    @torch.jit.export
    def global_sums(self, h: Tensor, positions: Tensor, weights: Tensor,
                    cell: Optional[Tensor] = None) -> Tensor:
        """Stage 1 of a distributed evaluation (one graph, e.g. LAMMPS under MPI).

        Partial key-value sums ``Σ_j weights_j k_j(u) v_jᵀ`` (weights: 1 for atoms this rank owns,
        0 for ghosts), shape ``[P, 2, M, H, V]``. Sum them over ranks (MPI_Allreduce) and pass the
        total to :meth:`apply_global_sums`; positions must share one origin on all ranks (Å).
        ``cell [3,3]`` (periodic variant only) selects the reciprocal-lattice phases."""
        q, k, v = self._qkv(h, None)
        cos, sin, _ = self._phases(positions.unsqueeze(0), cell, False)
        cs = torch.cat([cos, sin], dim=2)
        return _key_value(k.unsqueeze(0), (v * weights.unsqueeze(-1).unsqueeze(-1)).unsqueeze(0), cs)[0]

    @torch.jit.export
    def apply_global_sums(self, h: Tensor, positions: Tensor, kv: Tensor,
                          cell: Optional[Tensor] = None) -> Tensor:
        """Stage 2: scalar update ``[N, F]`` of every given atom from the total ``kv`` of stage 1.
        ``apply_global_sums(h, r, global_sums(h, r, ones))`` equals ``forward`` for one graph."""
        q, k, v = self._qkv(h, None)
        cos, sin, wc = self._phases(positions.unsqueeze(0), cell, False)
        cs = torch.cat([cos, sin], dim=2)
        y = _query(q.unsqueeze(0), kv.unsqueeze(0), cs, wc)[0]
        return self._outputs(y, False)[0]

    @torch.jit.export
    def kernel_matrix(self, h: Tensor, positions: Tensor) -> Tensor:
        """Dense attention kernel ``A[h, i, j] = Σ_m w_m q_i(u_m)·k_j(u_m)`` of one graph (O(N²),
        for tests and analysis only): the update is ``out(Σ_j A[h,i,j] v_j)``."""
        q, k, _ = self._qkv(h, None)
        cos, sin, wc = self._open_phases(positions.unsqueeze(0), False)
        qr = _rotate(q.unsqueeze(0), cos, sin)[0]  # [N,M,H,2P]
        kr = _rotate(k.unsqueeze(0), cos, sin)[0]
        wx = wc[0, 0].repeat_interleave(2, dim=-1)  # [M,2P]
        return torch.einsum("imhx,jmhx,mx->hij", qr, kr, wx)


class PeriodicEuclideanFastAttention(EuclideanFastAttention):
    """EFA for periodic boxes: reciprocal-lattice phases ``k·r`` (Ewald-like k-space sum).

    Same constructor as :class:`EuclideanFastAttention` plus

        kcut: k-space cutoff |k| < kcut (1/Å); default ``ω_max + 3σ``.
        k_width: σ (1/Å), radial width of the per-channel k shells; default the channel spacing
            ``ω_max / (d_qk/2 − 1)`` (``ω_max`` if d_qk = 2).
        max_kvectors: guard against huge boxes / cutoffs (error if more k vectors are needed).

    ``forward(h [N,F], positions [N,3] Å, batch [N], num_graphs, cell [B,3,3] Å (rows = lattice
    vectors), pbc [B,3] bool) -> [N,F]``. Fully periodic graphs use the reciprocal lattice, open
    graphs the Lebedev grid; partially periodic graphs raise ``ValueError``. Energy is exactly
    invariant to wrapping atoms by lattice vectors and to shifting the cell origin.
    Cost per periodic graph: O(N · K) with K ≈ (4π/3) kcut³ V / (2π)³ k vectors (V the cell volume).
    """

    def __init__(self, num_features: int, num_heads: int = 1, qk_features: Optional[int] = None,
                 v_features: Optional[int] = None, grid: int = 86,
                 max_frequency: Optional[float] = None, max_length: float = 10.0,
                 include_vectors: bool = False, num_vector_features: Optional[int] = None,
                 vector_input_features: int = 0, trainable_frequencies: bool = False,
                 qk_activation: str = "identity", kcut: Optional[float] = None,
                 k_width: Optional[float] = None, max_kvectors: int = 20000):
        super().__init__(num_features, num_heads, qk_features, v_features, grid, max_frequency,
                         max_length, include_vectors, num_vector_features, vector_input_features,
                         trainable_frequencies, qk_activation)
        omega_max = self.max_frequency / self.max_length
        nf = self.d_qk // 2
        if k_width is None:
            k_width = omega_max / (nf - 1) if nf > 1 else omega_max
        if k_width <= 0:
            raise ValueError(f"k_width must be positive (1/Å), got {k_width}")
        if kcut is None:
            kcut = omega_max + 3.0 * k_width
        if kcut <= 0:
            raise ValueError(f"kcut must be positive (1/Å), got {kcut}")
        self.kcut = float(kcut)
        self.k_width = float(k_width)
        self.max_kvectors = int(max_kvectors)

    def _kvectors(self, cell: Tensor) -> Tensor:
        """Reciprocal lattice vectors k = 2π n·inv(cell)ᵀ, [B,K,3]: the union over the batch of the
        integer vectors n with |k| < kcut in some graph (entries beyond kcut of a graph get zero
        weight in ``_periodic_phases``)."""
        recip = torch.linalg.inv(cell).transpose(1, 2)  # rows b_j with a_i·b_j = δ_ij
        lengths = torch.linalg.norm(cell, dim=2)  # |a_j|, [B,3]
        nmax = torch.floor(lengths.detach() * self.kcut / (2.0 * math.pi)).to(torch.long).amax(dim=0)
        n0 = int(nmax[0].item())
        n1 = int(nmax[1].item())
        n2 = int(nmax[2].item())
        total = (2 * n0 + 1) * (2 * n1 + 1) * (2 * n2 + 1)
        if total > 50 * self.max_kvectors:
            raise ValueError(
                "periodic EFA would need ~" + str(total) + " reciprocal lattice vectors (cell too "
                "large for kcut=" + str(self.kcut) + " 1/Å); lower kcut or raise max_kvectors")
        dev = cell.device
        r0 = torch.arange(-n0, n0 + 1, device=dev)
        r1 = torch.arange(-n1, n1 + 1, device=dev)
        r2 = torch.arange(-n2, n2 + 1, device=dev)
        g = torch.meshgrid([r0, r1, r2], indexing="ij")
        n = torch.stack([g[0].reshape(-1), g[1].reshape(-1), g[2].reshape(-1)], dim=1).to(cell.dtype)
        k = 2.0 * math.pi * torch.einsum("kj,bjd->bkd", n, recip)  # [B,Kc,3]
        knorm = torch.linalg.norm(k.detach(), dim=-1)
        keep = (knorm < self.kcut).any(dim=0)
        k = k[:, keep]
        if k.shape[1] > self.max_kvectors:
            raise ValueError(
                "periodic EFA needs " + str(k.shape[1]) + " reciprocal lattice vectors (> max_kvectors="
                + str(self.max_kvectors) + "); lower kcut or raise max_kvectors")
        return k

    def _periodic_phases(self, pos: Tensor, cell: Tensor, want_vectors: bool) -> Tuple[Tensor, Tensor, Tensor]:
        """pos [B,n,3], cell [B,3,3] -> cos/sin [B,n,K,1], weights [B,C,K,P]."""
        k = self._kvectors(cell)  # [B,K,3]
        ang = torch.einsum("bnd,bkd->bnk", pos, k).unsqueeze(-1)
        # |k| with a safe gradient at k = 0
        k2 = (k * k).sum(-1)
        zero = k2 <= 1e-20
        knorm = torch.sqrt(torch.where(zero, torch.ones_like(k2), k2))
        knorm = torch.where(zero, torch.zeros_like(knorm), knorm)  # [B,K]
        valid = knorm < self.kcut
        fc = _smooth_cutoff(knorm / self.kcut).clamp_min(1e-30)
        omega = self.omega.to(pos.dtype)
        logits = -((knorm.unsqueeze(-1) - omega) ** 2) / (2.0 * self.k_width ** 2) + torch.log(fc).unsqueeze(-1)
        logits = logits.masked_fill(~valid.unsqueeze(-1), float("-inf"))
        w = torch.softmax(logits, dim=1)  # normalised over the k set of each graph, [B,K,P]
        if self._num_weight_channels(want_vectors) == 4:
            khat = k / torch.where(zero, torch.ones_like(knorm), knorm).unsqueeze(-1)  # 0 for k = 0
            wv = w.unsqueeze(1) * khat.permute(0, 2, 1).unsqueeze(-1)  # [B,3,K,P]
            wc = torch.cat([w.unsqueeze(1), wv], dim=1)
        else:
            wc = w.unsqueeze(1)
        return torch.cos(ang), torch.sin(ang), wc

    def _phases(self, pos: Tensor, cell: Optional[Tensor], want_vectors: bool) -> Tuple[Tensor, Tensor, Tensor]:
        if cell is None:
            return self._open_phases(pos, want_vectors)
        c = cell.unsqueeze(0) if cell.dim() == 2 else cell
        return self._periodic_phases(pos, c, want_vectors)

    def _periodic(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int, cell: Tensor,
                  vectors: Optional[Tensor], want_vectors: bool) -> Tensor:
        q, k, v = self._qkv(h, vectors)
        flat, nmax = _graph_layout(batch, num_graphs)
        pos = _pad(positions, flat, num_graphs, nmax)
        cos, sin, wc = self._periodic_phases(pos, cell, want_vectors)
        y = self._attend(_pad(q, flat, num_graphs, nmax), _pad(k, flat, num_graphs, nmax),
                         _pad(v, flat, num_graphs, nmax), cos, sin, wc)
        return _unpad(y, flat, num_graphs)

    def _dispatch(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int, cell: Tensor,
                  pbc: Tensor, vectors: Optional[Tensor], want_vectors: bool) -> Tensor:
        self._check_inputs(h, positions, batch, num_graphs)
        if cell.dim() == 2:
            cell = cell.unsqueeze(0)
        if pbc.dim() == 1:
            pbc = pbc.unsqueeze(0)
        if cell.shape[0] != num_graphs or pbc.shape[0] != num_graphs:
            raise ValueError("cell must be [B,3,3] and pbc [B,3] with B = num_graphs")
        pbc = pbc.to(torch.bool)
        full = pbc.all(dim=1)
        none = ~pbc.any(dim=1)
        if bool((~(full | none)).any()):
            raise ValueError("periodic EFA supports fully periodic (pbc = T,T,T) or open (F,F,F) graphs "
                             "only; for slabs/wires use full pbc with a vacuum gap")
        if bool(none.all()):
            return self._open(h, positions, batch, num_graphs, vectors, want_vectors)
        # open graphs of a mixed batch get a tiny dummy cell (only k = 0); their result is discarded
        cell_safe = torch.where(full.view(-1, 1, 1), cell, torch.eye(3, dtype=cell.dtype, device=cell.device)
                                .expand(num_graphs, 3, 3) * 1e-3)
        yp = self._periodic(h, positions, batch, num_graphs, cell_safe, vectors, want_vectors)
        if bool(full.all()):
            return yp
        yo = self._open(h, positions, batch, num_graphs, vectors, want_vectors)
        sel = full[batch].view(-1, 1, 1, 1)
        return torch.where(sel, yp, yo)

    def forward(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int,  # type: ignore[override]
                cell: Tensor, pbc: Tensor) -> Tensor:
        """Scalar EFA update ``[N, F]``; positions/cell in Å, cell rows are lattice vectors."""
        y = self._dispatch(h, positions, batch, num_graphs, cell, pbc, None, False)
        return self._outputs(y, False)[0]

    @torch.jit.export
    def forward_vectors(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int,  # type: ignore[override]
                        cell: Tensor, pbc: Tensor, vectors: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Scalar update ``[N, F]`` and vector update ``[N, 3, C]``."""
        y = self._dispatch(h, positions, batch, num_graphs, cell, pbc, vectors, True)
        return self._outputs(y, True)


class EFABlock(nn.Module):
    """Gated blend of a layer's local update with an EFA (global) update, as in the paper's model.

    ``forward(x, dx_local, positions, batch, num_graphs, cell, pbc) -> x_new`` with

        enabled:   y  = EFA(x) + x;  y = W_2 silu(W_1 y)      (EFA ends with its output Linear;
                                                             W_2, b_2 zero at init)
                   x_new = x + silu(c) · dx_local + silu(1 − c) · y              (c learned, init 0.5)
        disabled:  x_new = x + dx_local                                           (no parameters)

    So a layer without EFA is exactly the plain residual update (e.g. converted SO3LR weights).
    ``x``: invariant features [N,F]; ``dx_local``: the layer's local (message-passing/attention)
    update [N,F]; positions Å; cell [B,3,3] Å (rows = lattice vectors), pbc [B,3] bool.
    The EFA is :class:`PeriodicEuclideanFastAttention`, so open graphs (pbc all False, any cell)
    use the Lebedev grid and fully periodic graphs the reciprocal lattice.

    Integration into the So3krates layer (potential/layer.py, potential/model.py, config.py)::

        # config.py (So3kratesConfig)
        efa_layers: List[bool] = []            # per layer; [] or all False = no EFA (plain So3krates)
        efa_grid: int = 86                     # Lebedev points (50, 86, 110, 146, 194, 302, ...)
        efa_max_frequency: Optional[float] = None   # b_max, default lebedev.max_frequency(efa_grid)
        efa_max_length: float = 10.0           # Å
        efa_num_heads: int = 1
        efa_qk_features: Optional[int] = None  # default num_features
        efa_periodic_kcut: Optional[float] = None   # 1/Å, default ω_max + 3σ
        efa_periodic_width: Optional[float] = None  # σ, 1/Å

        # layer __init__(…, layer_index):
        self.efa = EFABlock.from_config(cfg, layer_index)

        # layer forward — where the invariant residual is applied, replace
        #     h = h + dh_local
        # by
        #     h = self.efa(h, dh_local, positions, batch, num_graphs, cell, pbc)
        # (positions, batch, num_graphs, cell, pbc are the arguments of So3krates.forward; open
        # systems pass zeros for cell and False for pbc.)
    """

    def __init__(self, num_features: int, enabled: bool = True, num_heads: int = 1,
                 qk_features: Optional[int] = None, v_features: Optional[int] = None, grid: int = 86,
                 max_frequency: Optional[float] = None, max_length: float = 10.0,
                 kcut: Optional[float] = None, k_width: Optional[float] = None,
                 zero_init: bool = True):
        super().__init__()
        self.enabled = bool(enabled)
        self.num_features = int(num_features)
        if enabled:
            self.efa = PeriodicEuclideanFastAttention(
                num_features, num_heads=num_heads, qk_features=qk_features, v_features=v_features,
                grid=grid, max_frequency=max_frequency, max_length=max_length, kcut=kcut,
                k_width=k_width)
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
            grid=int(getattr(cfg, "efa_grid", 86) or 86),
            max_frequency=getattr(cfg, "efa_max_frequency", None),
            max_length=float(getattr(cfg, "efa_max_length", 10.0) or 10.0),
            kcut=getattr(cfg, "efa_periodic_kcut", None),
            k_width=getattr(cfg, "efa_periodic_width", None),
        )

    def forward(self, x: Tensor, dx_local: Tensor, positions: Tensor, batch: Tensor, num_graphs: int,
                cell: Tensor, pbc: Tensor) -> Tensor:
        efa = self.efa
        mlp1 = self.mlp1
        mlp2 = self.mlp2
        c = self.c_switch
        if efa is None or mlp1 is None or mlp2 is None or c is None:
            return x + dx_local
        y = efa(x, positions, batch, num_graphs, cell, pbc) + x
        y = mlp2(torch.nn.functional.silu(mlp1(y)))
        c = c.to(x.dtype)
        return x + torch.nn.functional.silu(c) * dx_local + torch.nn.functional.silu(1.0 - c) * y
