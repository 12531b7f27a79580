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

With invariant q, k the sphere average leaves a kernel of |r_j − r_i| only: it cannot compare the
orientations of two atoms' environments (e.g. the two ends of a cumulene). ``qk_degrees`` = L > 0
(config ``efa_qk_degrees``) adds direction-dependent terms from per-atom equivariant features
``env`` (the model's Euclidean variables ev): ``q_i(u_m) = act(W_q h_i) + Σ_l s_i^l(u_m)(A_q^l h_i +
a_q^l)`` with ``s_i^l(u) = Σ_μ env_i^{lμ} Y_lμ(u)``, keys alike (``_init_directional``). They are
still per-atom, per-grid-point quantities, so the cost stays linear and the key-value sums still
add over atoms (``global_sums``); rotation invariance holds to the grid accuracy (the integrand's
angular degree grows by ≤ 2L). Open systems only (docs/efa.md).

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

Periodic boxes: :mod:`so3krates.potential.nn.efa_periodic`; the gated block inside a layer:
:mod:`so3krates.potential.nn.efa_block`.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..graph.segments import graph_sums, per_atom
from . import lebedev
from .exact import ExactConstants

__all__ = ["EuclideanFastAttention", "QK_ACTIVATIONS"]

#: activations of queries/keys (``qk_activation``, config ``efa_qk_activation``)
QK_ACTIVATIONS = ("identity", "silu", "gelu")


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
    """ERoPE: rotate channel pairs. x [B,n,H,P,2] (the same query/key for every direction) or
    [B,n,M,H,P,2] (direction-dependent, ``qk_degrees`` > 0); cos/sin [B,n,M,P or 1] -> [B,n,M,H,2P]."""
    c = cos.unsqueeze(3)
    s = sin.unsqueeze(3)
    if x.dim() == 6:
        a = x[..., 0]
        b = x[..., 1]
    else:
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
    npair = qr.shape[4] // 2
    nv = kv.shape[3]
    nc = wc.shape[1]
    w = wc.permute(0, 2, 3, 1)  # [B|1,J,P,C]
    w = w.unsqueeze(1).unsqueeze(4).unsqueeze(-1)  # [B|1,1,J,P,1,C,1]
    wkv = kv.reshape(nb, nh, nj, npair, 2, 1, nv) * w  # [B,H,J,P,2,C,V]
    a = qr.permute(0, 3, 1, 2, 4).reshape(nb * nh, n, nj * npair * 2)
    y = torch.bmm(a, wkv.reshape(nb * nh, nj * npair * 2, nc * nv))
    return y.reshape(nb, nh, n, nc, nv).permute(0, 2, 3, 1, 4)


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
        qk_degrees: L, direction-dependent queries/keys from degrees 1..L of ``env`` (0: off, the
            module is exactly the plain one). ``forward``/``global_sums``/... then need ``env``.
        env_degrees: degrees of the ``env`` layout (``spherical_harmonics`` order; the model's
            ``degrees``); must contain 1..L.

    ``forward(h [N,F], positions [N,3] Å, batch [N] long, num_graphs) -> [N,F]``.
    """

    def __init__(self, num_features: int, num_heads: int = 1, qk_features: Optional[int] = None,
                 v_features: Optional[int] = None, grid: int = 86,
                 max_frequency: Optional[float] = None, max_length: float = 10.0,
                 include_vectors: bool = False, num_vector_features: Optional[int] = None,
                 vector_input_features: int = 0, trainable_frequencies: bool = False,
                 qk_activation: str = "identity", qk_degrees: int = 0,
                 env_degrees: Optional[List[int]] = None):
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
        self._init_directional(int(qk_degrees), env_degrees, u, qk_features)

    def _init_directional(self, qk_degrees: int, env_degrees: Optional[List[int]], u, qk_features: int) -> None:
        """Direction-dependent queries/keys (``qk_degrees`` = L > 0, config ``efa_qk_degrees``).

        ``env`` [N, sum(2l+1)] are per-atom equivariant features laid out as ``spherical_harmonics``
        for the degrees ``env_degrees`` (the model passes its Euclidean variables ``ev``). Their
        degrees 1..L are contracted with the real spherical harmonics of every grid direction,
        ``s_i^l(u_m) = Σ_μ env_i^{lμ} Y_lμ(u_m)`` (a rotation-invariant function of the pair
        (environment, direction)), and mixed into the queries/keys with per-atom invariant
        coefficients: ``q_i(u_m) = act(W_q h_i) + Σ_l s_i^l(u_m) (A_q^l h_i + a_q^l)`` (keys alike).
        Off (L = 0): no parameters or buffers that change the state dict, and the computation is
        exactly the non-directional one."""
        self.qk_degrees: int = qk_degrees
        if qk_degrees < 0:
            raise ValueError(f"efa_qk_degrees must be >= 0, got {qk_degrees}")
        if qk_degrees == 0:
            self.q_dir = nn.Identity()
            self.k_dir = nn.Identity()
            self.register_buffer("qk_sh", torch.zeros(0, 0), persistent=False)
            self.register_buffer("qk_env_index", torch.zeros(0, dtype=torch.long), persistent=False)
            self.register_buffer("qk_sh_degree", torch.zeros(0, 0), persistent=False)
            return
        from .basis import spherical_harmonics

        env = [int(d) for d in (env_degrees or [])]
        missing = [l for l in range(1, qk_degrees + 1) if l not in env]
        if missing:
            raise ValueError(f"efa_qk_degrees={qk_degrees} needs the Euclidean variables of degrees 1..{qk_degrees}, "
                             f"but the model's degrees are {env} (missing {missing}); lower efa_qk_degrees or add "
                             f"the degrees to `degrees`")
        used = list(range(1, qk_degrees + 1))
        index: List[int] = []
        start = 0
        for l in env:
            if l in used:
                index.extend(range(start, start + 2 * l + 1))
            start += 2 * l + 1
        sh = spherical_harmonics(torch.as_tensor(u, dtype=torch.float64), used)  # [M, Σ(2l+1)]
        onehot = torch.zeros(sh.shape[1], len(used), dtype=torch.float64)
        c = 0
        for a, l in enumerate(used):
            onehot[c:c + 2 * l + 1, a] = 1.0
            c += 2 * l + 1
        self.register_constant("qk_sh", sh, persistent=False)
        self.register_buffer("qk_env_index", torch.tensor(index, dtype=torch.long), persistent=False)
        self.register_constant("qk_sh_degree", onehot, persistent=False)
        self.q_dir = nn.Linear(self.num_features, qk_degrees * qk_features)
        self.k_dir = nn.Linear(self.num_features, qk_degrees * qk_features)

    # ----------------------------------------------------------------------------- pieces
    def _directional_fields(self, env: Optional[Tensor], n: int) -> Tensor:
        """``s_i^l(u_m)`` [N, M, L]: degree-l parts of ``env`` contracted with Y_l(u_m)."""
        if env is None:
            raise ValueError("this EFA has direction-dependent queries/keys (efa_qk_degrees > 0) and needs the "
                             "atoms' Euclidean variables: pass env/ev (engines: the ev part of the feature rows)")
        if env.dim() != 2 or env.shape[0] != n:
            raise ValueError("env must have shape [N, sum(2l+1)] (the model's Euclidean variables ev)")
        e = env.index_select(1, self.qk_env_index)  # [N, Σ(2l+1)]
        y = self.qk_sh.to(env.dtype)  # [M, Σ(2l+1)]
        return torch.matmul(e.unsqueeze(1) * y.unsqueeze(0), self.qk_sh_degree.to(env.dtype))

    def _qkv(self, h: Tensor, vectors: Optional[Tensor],
             env: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        n = h.shape[0]
        q = self.q(h)
        k = self.k(h)
        if self.qk_act == 1:
            q = torch.nn.functional.silu(q)
            k = torch.nn.functional.silu(k)
        elif self.qk_act == 2:
            q = torch.nn.functional.gelu(q)
            k = torch.nn.functional.gelu(k)
        if self.qk_degrees > 0:
            # direction-dependent queries/keys [N, M, qk]: per atom and grid point (linear cost)
            s = self._directional_fields(env, n)  # [N, M, L]
            nqk = self.num_heads * self.d_qk
            aq = self.q_dir(h).reshape(n, self.qk_degrees, nqk)
            ak = self.k_dir(h).reshape(n, self.qk_degrees, nqk)
            q = q.unsqueeze(1) + torch.bmm(s, aq)
            k = k.unsqueeze(1) + torch.bmm(s, ak)
            q = q * (1.0 / math.sqrt(self.d_qk))
            q = q.reshape(n, q.shape[1], self.num_heads, self.d_qk // 2, 2)
            k = k.reshape(n, k.shape[1], self.num_heads, self.d_qk // 2, 2)
        else:
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
        return cos.shape[3] > 1 or cos.shape[2] <= 4 * self.grid_size or self.qk_degrees > 0

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
        nj = cos.shape[2]
        qr = _rotate(q, cos, sin)
        nh = qr.shape[3]
        npair = qr.shape[4] // 2
        qr = qr.reshape(nb, n, nj, nh, npair, 2)
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
              vectors: Optional[Tensor], want_vectors: bool, env: Optional[Tensor] = None) -> Tensor:
        """Lebedev path; returns y [N,C,H,V']."""
        q, k, v = self._qkv(h, vectors, env)
        flat, nmax = _graph_layout(batch, num_graphs)
        # the result is translation invariant; centring each graph keeps float32 phases accurate
        counts = torch.bincount(batch, minlength=num_graphs).clamp_min(1).to(positions.dtype)
        centre = graph_sums(positions.detach(), batch, num_graphs) / counts.unsqueeze(1)
        pos = _pad(positions - per_atom(centre, batch, num_graphs), flat, num_graphs, nmax)
        cos, sin, wc = self._open_phases(pos, want_vectors)
        y = self._attend(_pad(q, flat, num_graphs, nmax), _pad(k, flat, num_graphs, nmax),
                         _pad(v, flat, num_graphs, nmax), cos, sin, wc)
        return _unpad(y, flat, num_graphs)

    # ----------------------------------------------------------------------------- API
    def forward(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int,
                env: Optional[Tensor] = None) -> Tensor:
        """Scalar EFA update ``[N, F]`` for open systems (positions in Å); ``env`` [N, Σ(2l+1)]: the
        atoms' equivariant features (needed, and only read, with ``qk_degrees`` > 0)."""
        self._check_inputs(h, positions, batch, num_graphs)
        y = self._open(h, positions, batch, num_graphs, None, False, env)
        return self._outputs(y, False)[0]

    @torch.jit.export
    def forward_vectors(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int,
                        vectors: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Scalar update ``[N, F]`` and vector update ``[N, 3, C]`` (rotates with the input)."""
        self._check_inputs(h, positions, batch, num_graphs)
        y = self._open(h, positions, batch, num_graphs, vectors, True, None)
        return self._outputs(y, True)

    def _phases(self, pos: Tensor, cell: Optional[Tensor], want_vectors: bool) -> Tuple[Tensor, Tensor, Tensor]:
        if cell is not None:
            raise ValueError("this EFA module is for open systems; use PeriodicEuclideanFastAttention with a cell")
        return self._open_phases(pos, want_vectors)

    @torch.jit.export
    def global_sums(self, h: Tensor, positions: Tensor, weights: Tensor,
                    cell: Optional[Tensor] = None, env: Optional[Tensor] = None) -> Tensor:
        """Stage 1 of a distributed evaluation (one graph, e.g. LAMMPS under MPI).

        Partial key-value sums ``Σ_j weights_j k_j(u) v_jᵀ`` (weights: 1 for atoms this rank owns,
        0 for ghosts): a tensor whose shape depends only on the module and the cell (e.g.
        ``[H, J·P·2, V]``; treat it as opaque). Sum them over ranks (MPI_Allreduce) and pass the
        total to :meth:`apply_global_sums` with the same cell; open systems: positions must share
        one origin on all ranks (Å); periodic: any lattice images (ghost atoms) are fine.
        ``cell [3,3]`` (periodic variant only) selects the reciprocal-lattice phases. ``env``: the
        atoms' equivariant features (``qk_degrees`` > 0 only); the sums stay per-atom sums
        ``Σ_j weights_j k_j(u_m) v_jᵀ`` with the direction-dependent keys, so ranks still add them."""
        q, k, v = self._qkv(h, None, env)
        cos, sin, _ = self._phases(positions.unsqueeze(0), cell, False)
        return self._global_kv(k.unsqueeze(0), (v * weights.unsqueeze(-1).unsqueeze(-1)).unsqueeze(0), cos, sin)[0]

    @torch.jit.export
    def apply_global_sums(self, h: Tensor, positions: Tensor, kv: Tensor,
                          cell: Optional[Tensor] = None, env: Optional[Tensor] = None) -> Tensor:
        """Stage 2: scalar update ``[N, F]`` of every given atom from the total ``kv`` of stage 1.
        ``apply_global_sums(h, r, global_sums(h, r, ones))`` equals ``forward`` for one graph."""
        q, k, v = self._qkv(h, None, env)
        cos, sin, wc = self._phases(positions.unsqueeze(0), cell, False)
        y = self._attend_global(q.unsqueeze(0), kv.unsqueeze(0), cos, sin, wc)[0]
        return self._outputs(y, False)[0]

    @torch.jit.export
    def kernel_matrix(self, h: Tensor, positions: Tensor, env: Optional[Tensor] = None) -> Tensor:
        """Dense attention kernel ``A[h, i, j] = Σ_m w_m q_i(u_m)·k_j(u_m)`` of one graph (O(N²),
        for tests and analysis only): the update is ``out(Σ_j A[h,i,j] v_j)``."""
        q, k, _ = self._qkv(h, None, env)
        cos, sin, wc = self._open_phases(positions.unsqueeze(0), False)
        qr = _rotate(q.unsqueeze(0), cos, sin)[0]  # [N,M,H,2P]
        kr = _rotate(k.unsqueeze(0), cos, sin)[0]
        wx = wc[0, 0].repeat_interleave(2, dim=-1)  # [M,2P]
        return torch.einsum("imhx,jmhx,mx->hij", qr, kr, wx)
