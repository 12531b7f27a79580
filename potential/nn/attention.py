"""So3krates attention block (invariant features + Euclidean variables) and exchange block.

Shapes: N atoms, P pairs (each unordered pair of the local graph once; messages i <- j and j <- i),
F features, H heads, D = len(degrees), m_tot = sum(2l + 1). Segment sums use index_add (no N x N tensors).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .activation import activation, activation_derivative
from .basis import degree_repeat_index, l0_contraction_matrix
from .exact import ExactConstants


def _block_diagonal_t(w: Tensor) -> Tensor:
    """[H, n, n] per-head matrices -> [H n, H n] block-diagonal B with x @ B = per head x_h @ w[h]^T
    (the einsum "hij,nhj->nhi" as one matrix product)."""
    h = w.shape[0]
    n = w.shape[1]
    eye = torch.eye(h, dtype=w.dtype, device=w.device)
    return torch.einsum("hg,hba->hagb", eye, w).reshape(h * n, h * n)


def segment_sum(x: Tensor, num_segments: int, scale: float) -> Tensor:
    """[E, S * size] -> [E, S]: sums of consecutive blocks of ``size`` columns, times scale (the per-head
    sums). A reshape and an inner sum: several times faster on the CPU than a product with the
    [S * size, S] 0/1 matrix (a matrix product with 4 columns runs far below the memory bandwidth)."""
    return x.view(x.shape[0], num_segments, x.shape[1] // num_segments).sum(-1) * scale


def segment_expand_mul(g: Tensor, y: Tensor, scale: float) -> Tensor:
    """(g @ S^T) * y for the segment-sum matrix S of ``segment_sum``: each of g's [E, S] values, times
    scale, multiplies its block of y [E, S * size], broadcast (no [E, S * size] expansion of g)."""
    e = y.shape[0]
    ns = g.shape[1]
    return (y.view(e, ns, y.shape[1] // ns) * (g * scale).unsqueeze(-1)).view(e, y.shape[1])


class AttentionBlock(ExactConstants):
    """Two attention heads families on the local graph:

    alpha1_ij^h = <q1_i^h, w1_ij^h, k1_j^h> / nc * cut_ij   (H heads, invariant update)
    alpha2_ij^d = <q2_i^d, w2_ij^d, k2_j^d> / nc * cut_ij   (D heads, one per degree)
    x_i  += sum_j alpha1_ij^h (Wv1^h x_j^h)
    ev_i += sum_j alpha2_ij^{l} Y_l(r_ij / |r_ij|)
    with filters w_ij = MLP(rbf_ij) + MLP(contract_l0(ev_j - ev_i)).

    The computation is split so that callers can process the pairs in chunks (see
    ``So3krates.messages``): ``project`` (per atom) -> gather at both atoms of each pair ->
    ``pair_messages`` (both directions of each pair) -> segment sums over the receiving atoms.

    ``fused_kernels`` (a TorchScript constant, False unless an export asks for it): without a graph and
    on the CPU, the attention logits and their backward, and the filters' SiLU with its derivative, run as
    the fused kernels of ``libso3krates_ops.so`` (``fused_ops``; one pass over the pair arrays instead of
    a chain of elementwise products); a file scripted with False holds no reference to them.
    """

    __constants__ = ["fused_kernels"]

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
        self.fused_kernels = False
        self.register_constant("contraction", l0_contraction_matrix(degrees))
        self.register_buffer("repeat_index", degree_repeat_index(degrees), persistent=False)
        self.num_degrees = nd  # per-head sums (segment_sum) with 1/nc folded in: [E, F] -> [E, heads]
        parity: List[float] = []
        for l in degrees:
            parity += [float((-1) ** l)] * (2 * l + 1)
        self.register_constant("parity", torch.tensor(parity, dtype=torch.float64))

    def project(self, x: Tensor) -> List[Tensor]:
        """Per-atom queries, keys and values from one matrix product: x [N, F] -> [q1, q2, k1, k2, v1],
        each [N, F] and contiguous (for row gathers; q*, k* after the qk non-linearity)."""
        f = self.num_features
        w = torch.cat([_block_diagonal_t(self.Wq1), _block_diagonal_t(self.Wq2), _block_diagonal_t(self.Wk1),
                       _block_diagonal_t(self.Wk2), _block_diagonal_t(self.Wv1)], dim=1)  # [F, 5F]
        y = torch.matmul(x, w)
        qk = activation(y[:, :4 * f], self.qk_non_linearity)
        return [qk[:, :f].contiguous(), qk[:, f:2 * f].contiguous(), qk[:, 2 * f:3 * f].contiguous(),
                qk[:, 3 * f:].contiguous(), y[:, 4 * f:].contiguous()]

    def filter_weights(self) -> List[Tensor]:
        """The filter MLPs as three matrices: [A [K+D, 2H], a [2H], B1 [H, F], b1 [F], B2 [H, F], b2 [F]] with
        H = F + F/4: the first layers of both filters (radial | spherical of filter 1, then of filter 2)
        as one block-diagonal product on [rbf | c], the second layers of each filter on its activations."""
        r1 = self.radial_filter1_layer_1
        r2 = self.radial_filter2_layer_1
        s1 = self.spherical_filter1_layer_1
        s2 = self.spherical_filter2_layer_1
        k = r1.weight.shape[1]
        d = s1.weight.shape[1]
        zr = torch.zeros(k, s1.weight.shape[0], dtype=r1.weight.dtype, device=r1.weight.device)
        zs = torch.zeros(d, r1.weight.shape[0], dtype=r1.weight.dtype, device=r1.weight.device)
        a = torch.cat([torch.cat([r1.weight.t(), zr, r2.weight.t(), zr], 1),
                       torch.cat([zs, s1.weight.t(), zs, s2.weight.t()], 1)], 0)
        bias = torch.cat([r1.bias, s1.bias, r2.bias, s2.bias], 0)
        o1r = self.radial_filter1_layer_2
        o1s = self.spherical_filter1_layer_2
        o2r = self.radial_filter2_layer_2
        o2s = self.spherical_filter2_layer_2
        return [a, bias, torch.cat([o1r.weight, o1s.weight], 1).t(), o1r.bias + o1s.bias,
                torch.cat([o2r.weight, o2s.weight], 1).t(), o2r.bias + o2s.bias]

    def filters(self, rbf: Tensor, dev: Tensor) -> Tuple[Tensor, Tensor]:
        """Filters (w1, w2) [P, F] from rbf [P, K] and dev = ev[idx_j] - ev[idx_i] [P, m_tot]; symmetric
        under i <-> j (dev enters squared):

        w_k = W_rk2 act(W_rk1 rbf + b_rk1) + b_rk2 + W_sk2 act(W_sk1 c + b_sk1) + b_sk2 (k = 1, 2;
        c = contract_l0(dev)), as three matrix products (``filter_weights``): fewer passes over the
        [P, F] arrays."""
        w = self.filter_weights()
        pre = self.filter_preactivations(rbf, dev, w)
        if self.fused_kernels:
            if self._fused_silu_now(pre):
                return self.second_layers(torch.ops.so3krates.silu_and_derivative(pre, False)[0], w)
        return self.second_layers(activation(pre, self.activation_fn), w)

    def second_layers(self, h: Tensor, w: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """The filters (w1, w2) from the activations h [P, 2H] of both first layers (``filter_weights`` w)."""
        half = w[2].shape[0]
        return torch.addmm(w[3], h[:, :half], w[2]), torch.addmm(w[5], h[:, half:], w[4])

    def filter_preactivations(self, rbf: Tensor, dev: Tensor, w: List[Tensor]) -> Tensor:
        """[P, 2H]: the first layers of both filters before the activation."""
        c = torch.matmul(dev * dev, self.contraction.to(dev.dtype))  # [P, D]
        return torch.addmm(w[1], torch.cat([rbf, c], 1), w[0])

    def messages(self, a1: Tensor, a2: Tensor, v1_j: Tensor, ylm: Tensor, cut: Tensor) -> List[Tensor]:
        """Messages i <- j from the attention logits a1 [E, H], a2 [E, D] (``logits``, before the cutoff),
        the gathered values v1_j and the pairs' ylm, cut: [msg [E, F], ev_msg [E, m_tot]]."""
        e = v1_j.shape[0]
        f = self.num_features
        h = self.num_heads
        cut_ = cut.unsqueeze(-1)
        msg = ((a1 * cut_).unsqueeze(-1) * v1_j.view(e, h, f // h)).view(e, f)
        ev_msg = (a2 * cut_).index_select(1, self.repeat_index) * ylm
        return [msg, ev_msg]

    def filter_state(self, rbf: Tensor, dev: Tensor) -> List[Tensor]:
        """[w1 [P, F], w2 [P, F], act' [P, 2H]]: the filters and the derivative of the activation at the
        first layers' pre-activations — all that the explicit backward needs from the filter MLPs (the
        memory-lean pass may keep it from the forward instead of recomputing it)."""
        w = self.filter_weights()
        pre = self.filter_preactivations(rbf, dev, w)
        if self.fused_kernels:
            if self._fused_silu_now(pre):  # h and SiLU' in one pass
                hd = torch.ops.so3krates.silu_and_derivative(pre, True)
                w1, w2 = self.second_layers(hd[0], w)
                return [w1, w2, hd[1]]
        silu = self.activation_fn == "silu"
        sig = torch.sigmoid(pre) if silu else pre  # SiLU: h = x s(x), s kept for the derivative
        h = pre * sig if silu else activation(pre, self.activation_fn)
        w1, w2 = self.second_layers(h, w)
        # SiLU'(x) = s + h (1 - s) from s and h: two passes over [P, 2H] instead of five. (Not
        # torch.ops.aten.silu_backward, nor autograd's SiluBackward: in the TorchScript file frozen by
        # openmm-torch both segfault.)
        d = torch.addcmul(sig + h, h, sig, value=-1.0) if silu else activation_derivative(pre, self.activation_fn)
        return [w1, w2, d]

    def pair_messages(self, p_i: List[Tensor], p_j: List[Tensor], dev: Tensor, rbf: Tensor, ylm: Tensor,
                      cut: Tensor, keep: bool = False, tab: Optional[List[Tensor]] = None,
                      idx: Optional[List[Tensor]] = None, x_att: Optional[Tensor] = None) -> List[Tensor]:
        """Both directions of P pairs (i, j) at once, the filters computed once per pair: p_i / p_j are the
        five rows of ``project`` gathered at i / j, dev = ev[j] - ev[i], rbf, ylm, cut of r_ij.
        Returns [messages i <- j [P, F], [P, m_tot], messages j <- i [P, F], [P, m_tot]]
        (Y_l(-r) = (-1)^l Y_l(r)), followed with ``keep`` by the three tensors of ``filter_state`` and the
        four attention logits [a1_ij, a1_ji, a2_ij, a2_ji] [P, H] / [P, D] (for
        ``pair_messages_backward(..., kept=...)``). With ``tab`` = the five per-atom tables of ``project``,
        ``idx`` = [idx_i, idx_j] and ``x_att`` [N, F] (only when ``indexed_now``) the kernels read the rows
        through the pair indices (p_i, p_j may be empty) and add the invariant messages of both directions
        into ``x_att`` in place: the first and third outputs are then empty."""
        st: List[Tensor] = []
        if keep:
            st = self.filter_state(rbf, dev)
            w1 = st[0]
            w2 = st[1]
        else:
            w1, w2 = self.filters(rbf, dev)
        lg = self.logits_at(p_i, p_j, w1, w2, tab, idx)
        out = self.values_indexed(lg, ylm, cut, tab, idx, x_att)
        if len(out) == 0:
            o_ij = self.messages(lg[0], lg[2], p_j[4], ylm, cut)
            o_ji = self.messages(lg[1], lg[3], p_i[4], ylm * self.parity.to(ylm.dtype), cut)
            out = [o_ij[0], o_ij[1], o_ji[0], o_ji[1]]
        if keep:  # the logits too: [w1, w2, act', a1_ij, a1_ji, a2_ij, a2_ji]
            st = st + lg
        return out + st

    def values_indexed(self, lg: List[Tensor], ylm: Tensor, cut: Tensor, tab: Optional[List[Tensor]],
                       idx: Optional[List[Tensor]], x_att: Optional[Tensor]) -> List[Tensor]:
        """The indexed messages (see ``pair_messages``): the invariant ones added into ``x_att`` by
        ``so3krates::attention_values_indexed``, -> [empty, ev messages to i, empty, ev messages to j]; [] when
        not indexed."""
        if self.fused_kernels:
            if tab is not None and idx is not None and x_att is not None:
                cut_ = cut.unsqueeze(-1)
                torch.ops.so3krates.attention_values_indexed(lg[0] * cut_, lg[1] * cut_, tab[4], idx[0], idx[1], x_att)
                none = torch.empty(0, dtype=ylm.dtype, device=ylm.device)
                e_ij = (lg[2] * cut_).index_select(1, self.repeat_index) * ylm
                e_ji = (lg[3] * cut_).index_select(1, self.repeat_index) * (ylm * self.parity.to(ylm.dtype))
                return [none, e_ij, none, e_ji]
        return []

    def _fused_now(self, x: Tensor) -> bool:
        """Whether the fused kernels can run for ``x`` (callers check ``fused_kernels`` first, as its own
        ``if``, so that TorchScript drops the branch from files exported without them): a CPU tensor and no
        graph being recorded (the kernels have no autograd formula)."""
        return x.device.type == "cpu" and not torch.is_grad_enabled()

    def _fused_silu_now(self, pre: Tensor) -> bool:
        """``_fused_now`` for the filters' SiLU kernel (``so3krates::silu_and_derivative``): SiLU filters only."""
        return self.activation_fn == "silu" and self._fused_now(pre)

    def indexed_now(self, x: Tensor) -> bool:
        """Whether the attention may read the per-atom q, k, v through the pair indices and add the invariant
        messages onto the atoms in place (``so3krates::attention_{logits,values}[_backward]_indexed``: no
        gathered [P, F] copies, message arrays or scatters of them): fused kernels, a CPU tensor, no graph
        (``_fused_now``)."""
        if self.fused_kernels:
            return self._fused_now(x)
        return False

    def logits_at(self, p_i: List[Tensor], p_j: List[Tensor], w1: Tensor, w2: Tensor, tab: Optional[List[Tensor]],
                  idx: Optional[List[Tensor]]) -> List[Tensor]:
        """``logits`` from the gathered rows p_i / p_j, or with ``tab`` and ``idx`` (see ``pair_messages``) from
        the per-atom tables through the pair indices."""
        if self.fused_kernels:
            if tab is not None and idx is not None:
                r1 = torch.ops.so3krates.attention_logits_indexed(tab[0], tab[2], idx[0], idx[1], w1, self.num_heads,
                                                                  1.0 / self.nc1)
                r2 = torch.ops.so3krates.attention_logits_indexed(tab[1], tab[3], idx[0], idx[1], w2,
                                                                  self.num_degrees, 1.0 / self.nc2)
                return [r1[0], r1[1], r2[0], r2[1]]
        return self.logits(p_i, p_j, w1, w2)

    def logits_backward_at(self, p_i: List[Tensor], p_j: List[Tensor], which: int, w: Tensor, ga_ij: Tensor,
                           ga_ji: Tensor, scale: float, inputs_grad: bool, tab: Optional[List[Tensor]],
                           idx: Optional[List[Tensor]], g_tab: Optional[List[Tensor]]) -> List[Tensor]:
        """``logits_backward`` of the head logits (``which`` 0: q1, k1, w1) or the degree logits (1: q2, k2, w2).
        With ``tab``, ``idx`` and ``g_tab`` (the per-atom gradients of [q1, q2, k1, k2], added to in place)
        the rows are read and their gradients added through the pair indices: only g_w is returned, the four
        row gradients are empty."""
        if self.fused_kernels:
            if tab is not None and idx is not None and g_tab is not None:
                g_w = torch.ops.so3krates.attention_logits_backward_indexed(
                    tab[which], tab[2 + which], idx[0], idx[1], w, ga_ij, ga_ji, scale, g_tab[which],
                    g_tab[2 + which], inputs_grad)
                none = torch.empty(0, dtype=w.dtype, device=w.device)
                return [none, none, none, none, g_w]
        return self.logits_backward(p_i[which], p_j[which], p_i[2 + which], p_j[2 + which], w, ga_ij, ga_ji, scale,
                                    inputs_grad)

    def logits_backward(self, q_i: Tensor, q_j: Tensor, k_i: Tensor, k_j: Tensor, w: Tensor, ga_ij: Tensor,
                        ga_ji: Tensor, scale: float, inputs_grad: bool) -> List[Tensor]:
        """Backward of the attention logits a_ij = segment_sum(q_i w k_j) and a_ji = segment_sum(q_j w k_i)
        (before the cutoff; ``scale`` = 1/nc) from their gradients: [g_q_i, g_q_j, g_k_i, g_k_j, g_w]; without
        ``inputs_grad`` only g_w (the others empty). With t_ij = ga_ij broadcast over each head's block:
        g_w = t_ij k_j q_i + t_ji k_i q_j, g_q_i = t_ij k_j w, g_k_j = t_ij q_i w (ten passes over [P, F]
        arrays, one with ``fused_kernels``; the logits themselves come from the forward)."""
        if self.fused_kernels:
            if self._fused_now(w):
                r = torch.ops.so3krates.attention_logits_backward(q_i, q_j, k_i, k_j, w, ga_ij, ga_ji, scale,
                                                                  inputs_grad)
                return [r[0], r[1], r[2], r[3], r[4]]
        tk_ij = segment_expand_mul(ga_ij, k_j, scale)
        tk_ji = segment_expand_mul(ga_ji, k_i, scale)
        g_w = torch.addcmul(tk_ij * q_i, tk_ji, q_j)
        if not inputs_grad:
            none = torch.empty(0, dtype=w.dtype, device=w.device)
            return [none, none, none, none, g_w]
        return [tk_ij * w, tk_ji * w, segment_expand_mul(ga_ji, q_j, scale) * w,
                segment_expand_mul(ga_ij, q_i, scale) * w, g_w]

    def logits(self, p_i: List[Tensor], p_j: List[Tensor], w1: Tensor, w2: Tensor) -> List[Tensor]:
        """The attention logits before the cutoff, [a1_ij, a1_ji, a2_ij, a2_ji] [P, H] / [P, D]: per-head sums
        of q1_i w1 k1_j (times 1/nc1), q1_j w1 k1_i, and of the degree heads' q2, w2, k2."""
        h = self.num_heads
        d = self.num_degrees
        if self.fused_kernels:
            if self._fused_now(w1):
                r1 = torch.ops.so3krates.attention_logits(p_i[0], p_j[2], p_j[0], p_i[2], w1, h, 1.0 / self.nc1)
                r2 = torch.ops.so3krates.attention_logits(p_i[1], p_j[3], p_j[1], p_i[3], w2, d, 1.0 / self.nc2)
                return [r1[0], r1[1], r2[0], r2[1]]
        return [segment_sum(p_i[0] * w1 * p_j[2], h, 1.0 / self.nc1), segment_sum(p_j[0] * w1 * p_i[2], h, 1.0 / self.nc1),
                segment_sum(p_i[1] * w2 * p_j[3], d, 1.0 / self.nc2), segment_sum(p_j[1] * w2 * p_i[3], d, 1.0 / self.nc2)]

    def pair_messages_backward(self, p_i: List[Tensor], p_j: List[Tensor], dev: Tensor, rbf: Tensor, ylm: Tensor,
                               cut: Tensor, g: List[Tensor], inputs_grad: bool = True,
                               kept: Optional[List[Tensor]] = None, tab: Optional[List[Tensor]] = None,
                               idx: Optional[List[Tensor]] = None,
                               g_tab: Optional[List[Tensor]] = None) -> List[Tensor]:
        """Explicit backward of ``pair_messages`` (no autograd): g = gradients of its four outputs ->
        [g_p_i (5 tensors), g_p_j (5 tensors), g_dev, g_rbf, g_ylm, g_cut]. The filters (``filter_state``)
        and the attention logits are recomputed unless ``kept`` from the forward (``pair_messages(...,
        keep=True)``). Without ``inputs_grad`` (layer 0: its inputs do not depend on the positions)
        g_p_i, g_p_j and g_dev are left out (empty tensors): about half of the elementwise work. Indexed (as in
        ``pair_messages``): ``tab``, ``idx``, and ``g_tab`` = the per-atom gradient accumulators of the five
        tables ([N, F] each, added to in place) followed by the gradient of the invariant sums x_att [N, F];
        g[0] and g[2] are then unused and g_p_i, g_p_j returned empty."""
        n = dev.shape[0]
        f = self.num_features
        nh = self.num_heads
        fh = f // nh
        dt = dev.dtype
        w = self.filter_weights()
        st = kept if kept is not None else self.filter_state(rbf, dev)
        w1 = st[0]
        w2 = st[1]
        lg = st[3:] if len(st) > 3 else self.logits_at(p_i, p_j, w1, w2, tab, idx)  # [a1_ij, a1_ji, a2_ij, a2_ji]
        cut_ = cut.unsqueeze(-1)
        nd = self.num_degrees
        rep = self.repeat_index
        # invariant messages m_ij = alpha1_ij[head] v1_j with alpha1_ij = a1_ij cut, a1_ij = segment_sum(q1_i w1 k1_j)
        ga1: List[Tensor] = []
        if tab is not None and idx is not None and g_tab is not None:
            ga1 = self.values_backward_indexed(lg, cut_, tab, idx, g_tab, inputs_grad)
        indexed = len(ga1) > 0
        gm_ij = g[0]
        gm_ji = g[2]
        if indexed:
            ga1_ij = ga1[0]
            ga1_ji = ga1[1]
        else:
            gm_ij = gm_ij.view(n, nh, fh)
            gm_ji = gm_ji.view(n, nh, fh)
            ga1_ij = (gm_ij * p_j[4].view(n, nh, fh)).sum(-1)
            ga1_ji = (gm_ji * p_i[4].view(n, nh, fh)).sum(-1)
        g1 = self.logits_backward_at(p_i, p_j, 0, w1, ga1_ij * cut_, ga1_ji * cut_, 1.0 / self.nc1, inputs_grad, tab,
                                     idx, g_tab)
        # Euclidean messages e_ij = alpha2_ij[degree] Y(r_ij), e_ji = alpha2_ji[degree] (-1)^l Y(r_ij)
        par = self.parity.to(dt)
        degree = (self.contraction.to(dt) != 0.0).to(dt)  # [m, D] indicator of each component's degree
        ga2_ij = torch.matmul(g[1] * ylm, degree)
        ga2_ji = torch.matmul(g[3] * ylm * par, degree)
        g_ylm = (lg[2] * cut_).index_select(1, rep) * g[1] + (lg[3] * cut_).index_select(1, rep) * g[3] * par
        g2 = self.logits_backward_at(p_i, p_j, 1, w2, ga2_ij * cut_, ga2_ji * cut_, 1.0 / self.nc2, inputs_grad, tab,
                                     idx, g_tab)
        g_cut = (ga1_ij * lg[0]).sum(1) + (ga1_ji * lg[1]).sum(1) + (ga2_ij * lg[2]).sum(1) + (ga2_ji * lg[3]).sum(1)
        # filters: second layers, activation, first layers, contraction of dev
        g_h = torch.cat([torch.matmul(g1[4], w[2].t()), torch.matmul(g2[4], w[4].t())], 1)
        g_x = torch.matmul(g_h * st[2], w[0].t())
        k = rbf.shape[1]
        if not inputs_grad:
            none = torch.empty(0, dtype=dt, device=dev.device)
            return [none] * 11 + [g_x[:, :k], g_ylm, g_cut]
        g_dev = 2.0 * dev * torch.matmul(g_x[:, k:], self.contraction.to(dt).t())
        if indexed:  # the tables' gradients are in g_tab
            none = torch.empty(0, dtype=dt, device=dev.device)
            return [none] * 10 + [g_dev, g_x[:, :k], g_ylm, g_cut]
        g_v1_j = ((lg[0] * cut_).unsqueeze(-1) * gm_ij).view(n, f)
        g_v1_i = ((lg[1] * cut_).unsqueeze(-1) * gm_ji).view(n, f)
        return [g1[0], g2[0], g1[2], g2[2], g_v1_i, g1[1], g2[1], g1[3], g2[3], g_v1_j,
                g_dev, g_x[:, :k], g_ylm, g_cut]

    def values_backward_indexed(self, lg: List[Tensor], cut_: Tensor, tab: List[Tensor], idx: List[Tensor],
                                g_tab: List[Tensor], inputs_grad: bool) -> List[Tensor]:
        """Backward of ``values_indexed``'s invariant messages: [dL/dalpha1_ij, dL/dalpha1_ji] [P, H] from the
        gradient of x_att (g_tab[5]), adding dL/dv1 into g_tab[4] with ``inputs_grad``."""
        if self.fused_kernels:
            r = torch.ops.so3krates.attention_values_backward_indexed(lg[0] * cut_, lg[1] * cut_, tab[4], idx[0],
                                                                      idx[1], g_tab[5], g_tab[4], inputs_grad)
            return [r[0], r[1]]
        raise RuntimeError("values_backward_indexed: only with fused kernels (indexed_now)")


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
