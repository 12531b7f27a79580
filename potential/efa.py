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
vector ``a``: wrapping one atom into the box changes the energy. Periodic graphs therefore use
phases ``k·r`` with reciprocal lattice vectors ``k = 2π n·B`` only (``B = inv(cell)ᵀ``, integer
``n``): ``exp(i k·(r + a)) = exp(i k·r)``, so the energy is exactly invariant to wrapping atoms
and to the choice of the cell origin. Two ways to choose the k vectors (``periodic_mode``,
config ``efa_periodic_mode``):

``simplex`` (default; linear cost). Keep the open variant's frequency vectors ``g = ω_f u_m`` —
Lebedev directions in a frame attached to the cell (e1 ∥ a, e2 in the (a, b) plane: the frame
LAMMPS uses) — and replace each by the 4 reciprocal lattice vectors at the vertices of the
Freudenthal (Kuhn) simplex containing ``g`` in reciprocal fractional coordinates
``s = cell·g/(2π)``, weighted by ``g``'s barycentric coordinates:

    exp(i g·r)  →  Σ_{v=0..3} λ_v(s) exp(i k_v·r),   Σ λ_v = 1,  Σ λ_v k_v = g

The weights are a continuous, piecewise-linear partition of unity in ``s`` (vertices change only
where their weight is zero), so the energy is continuous — piecewise smooth, the stress has small
kinks where a vertex changes — when the cell is strained (NPT). Cost O(N · 4M · d_qk/2 · d_v),
independent of the cell volume; in small cells the 4·M·P vertices collapse to U < 4M distinct
lattice vectors and one phase per vector is used instead (same values). Exact: wrapping, cell
origin, rotating cell and atoms together (the grid turns with the cell frame), permutations.
Approximate: the isotropy of the kernel — linear interpolation reproduces ``exp(i g·r)`` up to
O((|Δk|·r)²), |Δk| ~ 2π/L the reciprocal lattice spacing, so a molecule of diameter d in a box of
side L sees the open kernel (orientation dependence, difference from the open result) to
≈ 0.02–0.04·(2πd/L)² (``tests/test_efa.py::test_simplex_isotropy_vs_box_size``); the triangulation,
and hence the energy, also depends on the choice of cell basis for the same lattice (a LAMMPS
box flip changes it; ≈ 2–5 % of the EFA update in bulk boxes).

``kshell`` (exact, cost ∝ cell volume). Every ``k`` with ``|k| < k_cut`` (an Ewald-like k-space
sum), all channel pairs of a head rotated by the same phase ``k·r_i``; the Lebedev sphere average
over the shell ``|k| = ω_f`` becomes a lattice sum with normalised weights near the shell:

    w_f(k) = softmax_k[ −(|k| − ω_f)² / (2σ²) + log f_c(|k|/k_cut) ]   (per graph, over its k set)

(``f_c`` a smooth cosine cutoff, so the energy is continuous when k vectors cross ``k_cut``).
Exactly invariant also to the cell basis and isotropic; cost O(N · K) with
K ≈ V·k_cut³/(6π²) k vectors (V the cell volume, Å³): quadratic in N at fixed density. Use it
for small boxes (K below ~4M, i.e. a few thousand atoms with the default sizes), or where exact
basis invariance matters.

In both modes ``ω_f = 0`` channels reduce to ``k = 0`` exactly as in the open variant.

Which variant is used when: :class:`EuclideanFastAttention` is for open systems only.
:class:`PeriodicEuclideanFastAttention` (same parameters, plus ``cell``/``pbc``) evaluates graphs
with ``pbc = (True, True, True)`` with the reciprocal lattice (``periodic_mode``) and graphs with
``pbc = (False, False, False)`` with the Lebedev grid, so one set of weights serves both.
Partially periodic graphs (slabs, wires) are rejected with an error.

Degree-1 (equivariant) outputs
------------------------------
``forward_vectors`` also returns a vector update ``[N, 3, C]``: (i) the "tensor integration" of
the paper with ``Y_1(u) = u``: ``Σ_m w_m u_m q_i(u_m)·Σ_j k_j(u_m) v_jᵀ`` (periodic: ``u_m`` in the
cell frame for ``simplex``, ``k/|k|`` for ``kshell``), and (ii) if degree-1 value features are
given (``vectors [N, 3, C_in]``), those values propagated by the same invariant kernel. Both
rotate as vectors.

Cost
----
Per layer O(N·J·(d_qk/2)·d_v) time and O(N·J·d_qk/2) extra memory, J the number of phases per
channel pair: M (Lebedev points) open, ≤ 4M periodic ``simplex``, K periodic ``kshell``. Three
evaluation orders of the same sum (``_attend``): rotated queries/keys and one GEMM per graph and
head (default), shared-phase contractions against the [cos|sin] table when ``kshell`` has many k
vectors (``_key_value``/``_query``), and a dense n×n kernel for graphs of ≤ 32 atoms (training
batches of small molecules). ``max_kvectors`` guards ``kshell`` against accidental blow-up.

Everything is TorchScript-able and works in float32 and float64 (the grid is stored as a buffer
and cast to the positions' dtype). Open graphs are centred before the phases are computed (the
result is translation invariant) and periodic ones wrapped into the cell (fractional coordinates
in float64), which keeps float32 phases accurate far from the origin.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import lebedev
from .constants import ExactConstants

__all__ = ["EuclideanFastAttention", "PeriodicEuclideanFastAttention", "EFABlock", "QK_ACTIVATIONS",
           "PERIODIC_MODES"]

#: activations of queries/keys (``qk_activation``, config ``efa_qk_activation``)
QK_ACTIVATIONS = ("identity", "silu", "gelu")
#: periodic variants (``periodic_mode``, config ``efa_periodic_mode``); the first is the default
PERIODIC_MODES = ("simplex", "kshell")


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


def _pair_rotations(x: Tensor) -> Tensor:
    """x [..., 2] (channel pair (a, b)) -> [..., 2 (cos|sin part), 2]: ((a, b), (−b, a)).

    With R(θ)(a, b) = (a cosθ − b sinθ, b cosθ + a sinθ):  R(θ)x = cosθ·x + sinθ·Jx, Jx = (−b, a),
    so every rotated pair is the [cos|sin] table contracted with these two vectors."""
    return torch.stack([x, torch.stack([-x[..., 1], x[..., 0]], dim=-1)], dim=-2)


def _key_value(k: Tensor, v: Tensor, cs: Tensor) -> Tensor:
    """Per-graph key-value sums of rotated keys ``KV[b,p,j,s,h,v] = Σ_n k_n(u_j)_s v_nᵀ``.

    k [B,n,H,P,2], v [B,n,H,V], cs [B,n,2J,Pc] (the [cos|sin] table, Pc = P or 1)
    -> [B,P,J,2,H,V] (index s: pair component a|b). One batched matmul contracting (atom, cos|sin):
    ``KV = Σ_n cos·(k v) + sin·(Jk v)``; no intermediate of size (graphs × J × P × V) other
    than the result."""
    nb = k.shape[0]
    n = k.shape[1]
    nh = k.shape[2]
    npair = k.shape[3]
    nv = v.shape[3]
    nj = cs.shape[2] // 2
    y = torch.einsum("bnhpts,bnhv->bnptshv", _pair_rotations(k), v).reshape(nb, n, npair, 2, 2 * nh * nv)
    t = cs.reshape(nb, n, 2, nj, cs.shape[3])
    if cs.shape[3] == 1:
        kv = torch.einsum("bntj,bnptx->bpjx", t.squeeze(4), y)
    else:
        kv = torch.einsum("bntjp,bnptx->bpjx", t, y)
    return kv.reshape(nb, npair, nj, 2, nh, nv)


def _query(q: Tensor, kv: Tensor, cs: Tensor, wc: Tensor) -> Tensor:
    """``y[b,n,c,h,v] = Σ_{p,j} wc[c,j,p] q_n(u_j)·KV[p,j]`` -> [B,n,C,H,V].

    q [B,n,H,P,2], kv [B,P,J,2,H,V] from :func:`_key_value`, cs [B,n,2J,Pc], wc [B|1,C,J,P].
    ``q(u)·KV = cos·(q·KV) + sin·(Jq·KV)``: the weighted sums are contracted with the phase table
    in one batched matmul, then with the (un-rotated) query pairs."""
    nb = q.shape[0]
    n = q.shape[1]
    nh = q.shape[2]
    npair = q.shape[3]
    nv = kv.shape[5]
    nj = kv.shape[2]
    nc = wc.shape[1]
    kv2 = kv.reshape(nb, npair, nj, 2 * nh * nv)
    wkv = torch.einsum("bcjp,bpjx->bpjcx", wc, kv2) if wc.shape[0] == nb else \
        torch.einsum("cjp,bpjx->bpjcx", wc[0], kv2)
    t = cs.reshape(nb, n, 2, nj, cs.shape[3])
    if cs.shape[3] == 1:
        z = torch.einsum("bntj,bpjcx->bnptcx", t.squeeze(4), wkv)
    else:
        z = torch.einsum("bntjp,bpjcx->bnptcx", t, wkv)
    z = z.reshape(nb, n, npair, 2, nc, 2, nh, nv)
    return torch.einsum("bnhpts,bnptcshv->bnchv", _pair_rotations(q), z)


def _key_value_rotated(k: Tensor, v: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Key-value sums from the rotated keys: ``KV[b,h,(j,p,s),v] = Σ_n k_n(u_j)_{p,s} v_{n,h,v}``.

    k [B,n,H,P,2], v [B,n,H,V], cos/sin [B,n,J,P or 1] -> [B,H,J·P·2,V]: one GEMM per (graph,
    head) over the atoms, 4·n·J·P·V flops per head (half of :func:`_key_value`); the rotated keys
    (n·J·H·P·2 values, the size of the phase table) are materialised."""
    kr = _rotate(k, cos, sin)  # [B,n,J,H,2P]
    nb = kr.shape[0]
    n = kr.shape[1]
    nj = kr.shape[2]
    nh = kr.shape[3]
    nx = kr.shape[4]
    nv = v.shape[3]
    a = kr.permute(0, 3, 2, 4, 1).reshape(nb * nh, nj * nx, n)
    b = v.permute(0, 2, 1, 3).reshape(nb * nh, n, nv)
    return torch.bmm(a, b).reshape(nb, nh, nj * nx, nv)


def _query_rotated(q: Tensor, kv: Tensor, cos: Tensor, sin: Tensor, wc: Tensor) -> Tensor:
    """``y[b,n,c,h,v] = Σ_{j,p,s} q_n(u_j)_{p,s} wc[c,j,p] KV[b,h,(j,p,s),v]`` -> [B,n,C,H,V].

    q [B,n,H,P,2], kv [B,H,J·P·2,V] from :func:`_key_value_rotated`, cos/sin [B,n,J,P or 1],
    wc [B|1,C,J,P]. The weights are folded into the (per-graph, small) key-value sums; then one GEMM
    per (graph, head) with the rotated queries."""
    qr = _rotate(q, cos, sin)  # [B,n,J,H,2P]
    nb = qr.shape[0]
    n = qr.shape[1]
    nj = qr.shape[2]
    nh = qr.shape[3]
    npair = q.shape[3]
    nv = kv.shape[3]
    nc = wc.shape[1]
    w = wc.permute(0, 2, 3, 1)  # [B|1,J,P,C]
    w = w.unsqueeze(1).unsqueeze(4).unsqueeze(-1)  # [B|1,1,J,P,1,C,1]
    wkv = kv.reshape(nb, nh, nj, npair, 2, 1, nv) * w  # [B,H,J,P,2,C,V]
    a = qr.permute(0, 3, 1, 2, 4).reshape(nb * nh, n, nj * npair * 2)
    y = torch.bmm(a, wkv.reshape(nb * nh, nj * npair * 2, nc * nv))
    return y.reshape(nb, nh, n, nc, nv).permute(0, 2, 3, 1, 4)


def _wrapped_fractional(pos: Tensor, cell: Tensor) -> Tensor:
    """Fractional coordinates ``f = r·cell⁻¹`` of pos [B,n,3] wrapped into [0, 1) ([B,n,3], pos dtype).

    Computed in float64 (then cast): in float32 the product would lose ~|f|·1e-7 of a lattice
    period for atoms far from the origin (unwrapped trajectories). The wrap (``f − floor(f)``,
    gradient 1) makes the phases exactly invariant to wrapping atoms, also in floating point."""
    f = torch.einsum("bnd,bde->bne", pos.to(torch.float64), torch.linalg.inv(cell.to(torch.float64)))
    return (f - torch.floor(f.detach())).to(pos.dtype)


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
        qk_activation: activation of queries and keys before the phases: "identity" (the reference
            module's default), "gelu" (what the paper's experiments use; exact erf form) or "silu".

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
        if qk_activation not in QK_ACTIVATIONS:
            raise ValueError(f"qk_activation must be one of {QK_ACTIVATIONS}, got {qk_activation!r}")

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
        # graphs with at most this many atoms use the dense O(n²) evaluation order (see _attend)
        self.dense_max_atoms: int = 32
        self.qk_activation = str(qk_activation)
        self.qk_act: int = QK_ACTIVATIONS.index(qk_activation)  # 0 identity, 1 silu, 2 gelu
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
        if self.qk_act == 1:
            q = torch.nn.functional.silu(q)
            k = torch.nn.functional.silu(k)
        elif self.qk_act == 2:
            q = torch.nn.functional.gelu(q)
            k = torch.nn.functional.gelu(k)
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
        """Padded attention ``y_i = Σ_j w_j q_i(u_j)·Σ_n k_n(u_j) v_nᵀ`` per graph -> [B,n,C,H,V].

        q, k [B,n,H,P,2] (channel pairs); v [B,n,H,V]; cos/sin [B,n,J,Pc] with Pc = P (one phase
        per channel pair: Lebedev, periodic simplex) or Pc = 1 (same phase for all pairs: periodic
        shared layouts); wc [B|1,C,J,P] weights (C = 1, or 4 with the u-weighted vector channels).

        Three evaluation orders of the same sum (they differ only by rounding):
        * linear, rotated (default): rotated keys -> key-value sums per graph and head -> rotated
          queries (:func:`_key_value_rotated`, :func:`_query_rotated`), 4·n·J·P·V·(1+C) flops per
          head; O(n·J·P·H) memory for the rotated queries/keys.
        * linear, shared phases (kshell with more than 4M k vectors): contractions against the
          [cos|sin] table without rotated copies per channel pair (:func:`_key_value`,
          :func:`_query`), twice the flops but O(n·K) + O(n·P·V) memory.
        * dense, for graphs of at most ``dense_max_atoms`` atoms (small molecules in training
          batches): the n×n kernel from the rotated queries and keys, O(n²·J·P), which avoids the
          per-graph O(J·P·V) tensors that dominate for tiny graphs.
        """
        if q.shape[1] <= self.dense_max_atoms:
            return self._attend_dense(q, k, v, cos, sin, wc)
        return self._attend_global(q, self._global_kv(k, v, cos, sin), cos, sin, wc)

    def _rotated_order(self, cos: Tensor) -> bool:
        """Linear order with rotated queries/keys (half the flops) unless the phases are shared by all
        channel pairs and there are many of them (kshell mode in a large box: K > 4M), where
        materialising n·K·P rotated values would cost too much memory."""
        return cos.shape[3] > 1 or cos.shape[2] <= 4 * self.grid_size

    def _global_kv(self, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        if self._rotated_order(cos):
            return _key_value_rotated(k, v, cos, sin)
        return _key_value(k, v, torch.cat([cos, sin], dim=2))

    def _attend_global(self, q: Tensor, kv: Tensor, cos: Tensor, sin: Tensor, wc: Tensor) -> Tensor:
        if self._rotated_order(cos):
            return _query_rotated(q, kv, cos, sin, wc)
        return _query(q, kv, torch.cat([cos, sin], dim=2), wc)

    def _attend_dense(self, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, wc: Tensor) -> Tensor:
        nb = q.shape[0]
        n = q.shape[1]
        nh = q.shape[2]
        npair = q.shape[3]
        nj = cos.shape[2]
        qr = _rotate(q, cos, sin).reshape(nb, n, nj, nh, npair, 2)
        kr = _rotate(k, cos, sin).reshape(nb, n, nj, nh, npair, 2)
        if wc.shape[0] == nb:
            a = torch.einsum("bijhps,bcjp,bljhps->bchil", qr, wc, kr)
        else:
            a = torch.einsum("bijhps,cjp,bljhps->bchil", qr, wc[0], kr)
        return torch.einsum("bchil,blhv->bichv", a, v)

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
        0 for ghosts): a tensor whose shape depends only on the module and the cell (e.g.
        ``[H, J·P·2, V]``; treat it as opaque). Sum them over ranks (MPI_Allreduce) and pass the
        total to :meth:`apply_global_sums` with the same cell; open systems: positions must share
        one origin on all ranks (Å); periodic: any lattice images (ghost atoms) are fine.
        ``cell [3,3]`` (periodic variant only) selects the reciprocal-lattice phases."""
        q, k, v = self._qkv(h, None)
        cos, sin, _ = self._phases(positions.unsqueeze(0), cell, False)
        return self._global_kv(k.unsqueeze(0), (v * weights.unsqueeze(-1).unsqueeze(-1)).unsqueeze(0), cos, sin)[0]

    @torch.jit.export
    def apply_global_sums(self, h: Tensor, positions: Tensor, kv: Tensor,
                          cell: Optional[Tensor] = None) -> Tensor:
        """Stage 2: scalar update ``[N, F]`` of every given atom from the total ``kv`` of stage 1.
        ``apply_global_sums(h, r, global_sums(h, r, ones))`` equals ``forward`` for one graph."""
        q, k, v = self._qkv(h, None)
        cos, sin, wc = self._phases(positions.unsqueeze(0), cell, False)
        y = self._attend_global(q.unsqueeze(0), kv.unsqueeze(0), cos, sin, wc)[0]
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
    """EFA for periodic boxes (and open ones): phases ``k·r`` with reciprocal lattice vectors ``k``.

    Same constructor as :class:`EuclideanFastAttention` plus

        periodic_mode: how fully periodic graphs are evaluated (open graphs always use the Lebedev
            grid):

            ``"simplex"`` (default) — the open variant's frequency vectors ``g = ω_f u_m`` (Lebedev
            directions, in a frame attached to the cell) are each replaced by the 4 reciprocal
            lattice vectors at the vertices of the Freudenthal (Kuhn) simplex that contains ``g``
            in reciprocal fractional coordinates, weighted by ``g``'s barycentric coordinates.
            Cost O(N · 4M · d_qk/2), independent of the cell volume (linear in N at fixed density).
            Exact: wrapping, cell origin, joint rotation of cell and atoms; continuous (piecewise
            linear) in the cell. Approximate: isotropy of the kernel (orientation of a molecule
            inside a box, error ∝ (2π·r/L)²) and the choice of cell basis for the same lattice.

            ``"kshell"`` — every reciprocal lattice vector with ``|k| < kcut`` (an Ewald-like
            k-space sum), channel ``f`` weighting the k vectors near its shell ``|k| = ω_f``.
            Exactly invariant also to the cell basis and to joint rotations; cost O(N · K) with
            K ≈ V·kcut³/(6π²) k vectors (V the cell volume, Å³), i.e. quadratic in N at fixed
            density.
        kcut: ``kshell`` only: k-space cutoff |k| < kcut (1/Å); default ``ω_max + 3σ``.
        k_width: ``kshell`` only: σ (1/Å), radial width of the per-channel k shells; default the
            channel spacing ``ω_max / (d_qk/2 − 1)`` (``ω_max`` if d_qk = 2).
        max_kvectors: ``kshell`` only: guard against huge boxes / cutoffs (error if more k vectors
            are needed).

    ``forward(h [N,F], positions [N,3] Å, batch [N], num_graphs, cell [B,3,3] Å (rows = lattice
    vectors), pbc [B,3] bool) -> [N,F]``. Fully periodic graphs use the reciprocal lattice, open
    graphs the Lebedev grid; partially periodic graphs raise ``ValueError``. The energy is exactly
    invariant to wrapping atoms by lattice vectors and to shifting the cell origin (both modes).
    """

    def __init__(self, num_features: int, num_heads: int = 1, qk_features: Optional[int] = None,
                 v_features: Optional[int] = None, grid: int = 86,
                 max_frequency: Optional[float] = None, max_length: float = 10.0,
                 include_vectors: bool = False, num_vector_features: Optional[int] = None,
                 vector_input_features: int = 0, trainable_frequencies: bool = False,
                 qk_activation: str = "identity", kcut: Optional[float] = None,
                 k_width: Optional[float] = None, max_kvectors: int = 20000,
                 periodic_mode: str = "simplex"):
        super().__init__(num_features, num_heads, qk_features, v_features, grid, max_frequency,
                         max_length, include_vectors, num_vector_features, vector_input_features,
                         trainable_frequencies, qk_activation)
        if periodic_mode not in PERIODIC_MODES:
            raise ValueError(f"periodic_mode must be one of {PERIODIC_MODES}, got {periodic_mode!r}")
        self.periodic_mode = str(periodic_mode)
        self.simplex: bool = periodic_mode == "simplex"
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
        # simplex mode evaluation order: 0 = automatic (cheaper one), 1 = shared phases per distinct
        # lattice vector, 2 = per channel pair; all give the same values (up to rounding)
        self.simplex_layout: int = 0

    # ------------------------------------------------------------------ simplex mode
    @staticmethod
    def _cell_frame(cell: Tensor) -> Tensor:
        """Orthonormal frame attached to the cell, rows e1 ∥ a, e2 in the (a, b) plane, e3 = e1 × e2
        ([B,3,3]); the frame LAMMPS uses for triclinic boxes. Smooth in the cell for every
        non-degenerate cell, unchanged by b → b + n·a (LAMMPS box flips)."""
        a = cell[:, 0]
        b = cell[:, 1]
        e1 = a / torch.linalg.norm(a, dim=-1, keepdim=True)
        bp = b - (b * e1).sum(-1, keepdim=True) * e1
        e2 = bp / torch.linalg.norm(bp, dim=-1, keepdim=True)
        e3 = torch.linalg.cross(e1, e2, dim=-1)
        return torch.stack([e1, e2, e3], dim=1)

    def _simplex_vertices(self, cell: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Freudenthal interpolation of the frequency vectors onto the reciprocal lattice.

        For every grid direction m and channel pair p the frequency vector ``g = ω_p u_m`` (u_m in
        the cell frame) has reciprocal fractional coordinates ``s = cell·g/(2π)`` (``g = 2π s·B``,
        B the reciprocal basis). With ``n0 = floor(s)``, ``t = s − n0`` sorted descending
        (t1 ≥ t2 ≥ t3 along axes i1, i2, i3), the Kuhn simplex containing s has the vertices
        n0, n0+e_i1, n0+e_i1+e_i2, n0+(1,1,1) and s has barycentric coordinates
        (1−t1, t1−t2, t2−t3, t3): a continuous piecewise-linear partition of unity with
        ``Σ λ_v n_v = s`` (linear precision), so the interpolated phase factors reproduce
        ``exp(i g·r)`` up to O((|Δk|·r)²), Δk the reciprocal lattice spacing.

        Returns integer vertices ``n [B,M,P,4,3]`` (as float), weights ``λ [B,M,P,4]`` and the grid
        directions in the lab frame ``u_lab [B,M,3]``.
        """
        dt = cell.dtype
        u = self.grid_u.to(dt)
        omega = self.omega.to(dt)
        u_lab = torch.einsum("md,bde->bme", u, self._cell_frame(cell))  # [B,M,3]
        su = torch.einsum("bme,bje->bmj", u_lab, cell) * (1.0 / (2.0 * math.pi))  # a_j·u/(2π)
        s = su.unsqueeze(2) * omega.view(1, 1, -1, 1)  # [B,M,P,3]
        n0 = torch.floor(s.detach())
        tv, order = torch.sort(s - n0, dim=-1, descending=True)
        lam = torch.stack([1.0 - tv[..., 0], tv[..., 0] - tv[..., 1], tv[..., 1] - tv[..., 2], tv[..., 2]], dim=-1)
        steps = torch.nn.functional.one_hot(order, 3).to(dt).cumsum(dim=-2)  # [B,M,P,3,3]
        verts = torch.cat([n0.unsqueeze(-2), n0.unsqueeze(-2) + steps], dim=-2)  # [B,M,P,4,3]
        return verts, lam, u_lab

    def _simplex_phases(self, pos: Tensor, cell: Tensor, want_vectors: bool) -> Tuple[Tensor, Tensor, Tensor]:
        """pos [B,n,3], cell [B,3,3] -> cos/sin [B,n,J,Pc], weights [B,C,J,P] (see ``_attend``).

        Phases ``k_v·r = 2π n_v·f`` with ``f`` the fractional coordinates of the atom wrapped into
        [0, 1) (so wrapping is exact also in floating point). Two equivalent layouts of the same sum:
        per channel pair (J = 4M, Pc = P), or — when the vertices of all (m, p) collapse to fewer
        than 4M distinct lattice vectors (small cells) — one phase per distinct vector shared by all
        pairs (J = U, Pc = 1) with the weights summed per vector. Which one is used changes only the
        rounding, never the value, so the energy stays continuous when a cell grows through the
        switch."""
        verts, lam, u_lab = self._simplex_vertices(cell)
        nb = verts.shape[0]
        m = verts.shape[1]
        npair = verts.shape[2]
        dt = pos.dtype
        w = self.grid_w.to(dt)
        frac = _wrapped_fractional(pos, cell)
        # per-vertex weights [B,C,M,P,4] (C = 1, or 4 with the u-weighted vector channels)
        wl = lam * w.view(1, -1, 1, 1)
        if self._num_weight_channels(want_vectors) == 4:
            wv = wl.unsqueeze(1) * u_lab.permute(0, 2, 1).unsqueeze(-1).unsqueeze(-1)  # [B,3,M,P,4]
            wc = torch.cat([wl.unsqueeze(1), wv], dim=1)
        else:
            wc = wl.unsqueeze(1)
        nc = wc.shape[1]
        vi = verts.detach().to(torch.long)
        off = int(vi.abs().max().item()) + 1
        side = 2 * off + 1
        key = ((vi[..., 0] + off) * side + (vi[..., 1] + off)) * side + (vi[..., 2] + off)  # [B,M,P,4]
        uniq, inv = torch.unique(key.reshape(-1), sorted=True, return_inverse=True)
        nu = uniq.shape[0]
        if (self.simplex_layout == 0 and nu < 4 * m) or self.simplex_layout == 1:
            # shared layout: one phase per distinct lattice vector
            nvec = torch.stack([uniq // (side * side) - off, (uniq // side) % side - off, uniq % side - off],
                               dim=1).to(dt)  # [U,3]
            ang = (2.0 * math.pi) * torch.einsum("bnd,ud->bnu", frac, nvec).unsqueeze(-1)  # [B,n,U,1]
            pidx = torch.arange(npair, device=pos.device).view(1, 1, -1, 1).expand(nb, m, npair, 4)
            bidx = torch.arange(nb, device=pos.device).view(-1, 1, 1, 1).expand(nb, m, npair, 4)
            tgt = ((bidx * nu + inv.view(nb, m, npair, 4)) * npair + pidx).reshape(-1)  # (b, u, p)
            src = wc.permute(0, 2, 3, 4, 1).reshape(-1, nc)  # [(b,m,p,v), C]
            acc = wc.new_zeros(nb * nu * npair, nc).index_add(0, tgt, src)
            wt = acc.reshape(nb, nu, npair, nc).permute(0, 3, 1, 2)  # [B,C,U,P]
            return torch.cos(ang), torch.sin(ang), wt
        # per-pair layout: J = (m, v) = 4M phases per channel pair
        ang = (2.0 * math.pi) * torch.einsum("bnd,bmpvd->bnmvp", frac, verts).reshape(nb, -1, 4 * m, npair)
        wt = wc.permute(0, 1, 2, 4, 3).reshape(nb, nc, 4 * m, npair)
        return torch.cos(ang), torch.sin(ang), wt

    # ------------------------------------------------------------------ kshell mode
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
        """Phases and weights of fully periodic graphs in the configured ``periodic_mode``."""
        if self.simplex:
            return self._simplex_phases(pos, cell, want_vectors)
        return self._kshell_phases(pos, cell, want_vectors)

    def _kshell_phases(self, pos: Tensor, cell: Tensor, want_vectors: bool) -> Tuple[Tensor, Tensor, Tensor]:
        """pos [B,n,3], cell [B,3,3] -> cos/sin [B,n,K,1], weights [B,C,K,P]."""
        k = self._kvectors(cell)  # [B,K,3]
        # phases of the positions wrapped into the cell (exactly the same values for exact
        # arithmetic; keeps float32 phases accurate far from the origin)
        pos_w = torch.einsum("bne,bed->bnd", _wrapped_fractional(pos, cell).to(pos.dtype), cell)
        ang = torch.einsum("bnd,bkd->bnk", pos_w, k).unsqueeze(-1)
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

    Config fields (``So3kratesConfig``, read by :meth:`from_config`; defaults there): ``efa_layers``
    (one bool per layer), ``efa_grid``, ``efa_max_frequency``, ``efa_max_length`` (Å),
    ``efa_num_heads``, ``efa_qk_features``, ``efa_v_features``, ``efa_qk_activation``,
    ``efa_periodic_mode`` (``simplex`` | ``kshell``), ``efa_periodic_kcut`` / ``efa_periodic_width``
    (1/Å, kshell only). Used by ``So3kratesLayer`` (potential/layer.py) in place of ``x + dx_local``.
    """

    def __init__(self, num_features: int, enabled: bool = True, num_heads: int = 1,
                 qk_features: Optional[int] = None, v_features: Optional[int] = None, grid: int = 86,
                 max_frequency: Optional[float] = None, max_length: float = 10.0,
                 kcut: Optional[float] = None, k_width: Optional[float] = None,
                 zero_init: bool = True, qk_activation: str = "identity",
                 periodic_mode: str = "simplex"):
        super().__init__()
        self.enabled = bool(enabled)
        self.num_features = int(num_features)
        if enabled:
            self.efa = PeriodicEuclideanFastAttention(
                num_features, num_heads=num_heads, qk_features=qk_features, v_features=v_features,
                grid=grid, max_frequency=max_frequency, max_length=max_length, kcut=kcut,
                k_width=k_width, qk_activation=qk_activation, periodic_mode=periodic_mode)
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
        )

    def forward(self, x: Tensor, dx_local: Tensor, positions: Tensor, batch: Tensor, num_graphs: int,
                cell: Tensor, pbc: Tensor) -> Tensor:
        efa = self.efa
        if efa is None:  # disabled: blend's identity, without computing an attention
            return x + dx_local
        return self.blend(x, dx_local, efa(x, positions, batch, num_graphs, cell, pbc))

    def blend(self, x: Tensor, dx_local: Tensor, efa_update: Tensor) -> Tensor:
        """The gated update from the local update ``dx_local`` and the attention output
        ``efa_update`` (both [N, F]); engines that compute the attention from rank-summed global sums
        (``apply_global_sums``) call this directly. Identity blend (x + dx_local) when disabled."""
        mlp1 = self.mlp1
        mlp2 = self.mlp2
        c = self.c_switch
        if mlp1 is None or mlp2 is None or c is None:
            return x + dx_local
        y = mlp2(torch.nn.functional.silu(mlp1(efa_update + x)))
        c = c.to(x.dtype)
        return x + torch.nn.functional.silu(c) * dx_local + torch.nn.functional.silu(1.0 - c) * y
