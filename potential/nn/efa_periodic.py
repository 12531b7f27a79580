"""Euclidean fast attention in periodic boxes (reciprocal-lattice ERoPE).

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
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .efa import EuclideanFastAttention, _graph_layout, _pad, _unpad

#: periodic variants (``periodic_mode``, config ``efa_periodic_mode``); the first is the default
PERIODIC_MODES = ("simplex", "kshell")


def _inverse_3x3(cell: Tensor) -> Tensor:
    """inv(cell) [B,3,3] from cross products (columns b×c, c×a, a×b over the volume): differentiable and
    without a read-back to the host (``torch.linalg.inv`` checks its result on the host). The cell was
    checked with the inputs (non-zero volume)."""
    a = cell[:, 0]
    b = cell[:, 1]
    c = cell[:, 2]
    bc = torch.linalg.cross(b, c, dim=-1)
    det = (a * bc).sum(-1)
    cols = torch.stack([bc, torch.linalg.cross(c, a, dim=-1), torch.linalg.cross(a, b, dim=-1)], dim=-1)
    return cols / det.view(-1, 1, 1)


def _wrapped_fractional(pos: Tensor, cell: Tensor) -> Tensor:
    """Fractional coordinates ``f = r·cell⁻¹`` of pos [B,n,3] wrapped into [0, 1) ([B,n,3], pos dtype).

    Computed in float64 (then cast): in float32 the product would lose ~|f|·1e-7 of a lattice
    period for atoms far from the origin (unwrapped trajectories). The wrap (``f − floor(f)``,
    gradient 1) makes the phases exactly invariant to wrapping atoms, also in floating point."""
    f = torch.einsum("bnd,bde->bne", pos.to(torch.float64), _inverse_3x3(cell.to(torch.float64)))
    return (f - torch.floor(f.detach())).to(pos.dtype)


def _smooth_cutoff(x: Tensor) -> Tensor:
    """Cosine cutoff, 1 at x = 0, 0 (with zero slope) at x = 1."""
    return 0.5 * (torch.cos(math.pi * x.clamp(0.0, 1.0)) + 1.0)


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
                 periodic_mode: str = "simplex", qk_degrees: int = 0,
                 env_degrees: Optional[List[int]] = None):
        super().__init__(num_features, num_heads, qk_features, v_features, grid, max_frequency,
                         max_length, include_vectors, num_vector_features, vector_input_features,
                         trainable_frequencies, qk_activation, qk_degrees, env_degrees)
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
        # lattice vector, 2 = per channel pair (shapes independent of the cell: ahead-of-time
        # compilation); all give the same values (up to rounding)
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
        # one-hot rows of the sorted axes (a comparison: one_hot reads its input's range back to the host)
        steps = (order.unsqueeze(-1) == torch.arange(3, device=order.device)).to(dt).cumsum(dim=-2)  # [B,M,P,3,3]
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
        if self.simplex_layout != 2:
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

    def _no_directional_periodic(self) -> None:
        if self.qk_degrees > 0:
            raise ValueError("efa_qk_degrees > 0 (direction-dependent EFA queries/keys) supports open systems "
                             "(pbc = F,F,F) only; for periodic boxes use a model with efa_qk_degrees = 0")

    def _phases(self, pos: Tensor, cell: Optional[Tensor], want_vectors: bool) -> Tuple[Tensor, Tensor, Tensor]:
        if cell is None:
            return self._open_phases(pos, want_vectors)
        self._no_directional_periodic()
        c = cell.unsqueeze(0) if cell.dim() == 2 else cell
        return self._periodic_phases(pos, c, want_vectors)

    def _periodic(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int, cell: Tensor,
                  vectors: Optional[Tensor], want_vectors: bool) -> Tensor:
        self._no_directional_periodic()
        q, k, v = self._qkv(h, vectors, None)
        flat, nmax = _graph_layout(batch, num_graphs)
        pos = _pad(positions, flat, num_graphs, nmax)
        cos, sin, wc = self._periodic_phases(pos, cell, want_vectors)
        y = self._attend(_pad(q, flat, num_graphs, nmax), _pad(k, flat, num_graphs, nmax),
                         _pad(v, flat, num_graphs, nmax), cos, sin, wc)
        return _unpad(y, flat, num_graphs)

    def _dispatch(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int, cell: Tensor,
                  pbc: Tensor, vectors: Optional[Tensor], want_vectors: bool,
                  env: Optional[Tensor] = None) -> Tensor:
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
            return self._open(h, positions, batch, num_graphs, vectors, want_vectors, env)
        self._no_directional_periodic()
        # open graphs of a mixed batch get a tiny dummy cell (only k = 0); their result is discarded
        cell_safe = torch.where(full.view(-1, 1, 1), cell, torch.eye(3, dtype=cell.dtype, device=cell.device)
                                .expand(num_graphs, 3, 3) * 1e-3)
        yp = self._periodic(h, positions, batch, num_graphs, cell_safe, vectors, want_vectors)
        if bool(full.all()):
            return yp
        yo = self._open(h, positions, batch, num_graphs, vectors, want_vectors, None)
        sel = full[batch].view(-1, 1, 1, 1)
        return torch.where(sel, yp, yo)

    def forward(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int,  # type: ignore[override]
                cell: Tensor, pbc: Tensor, env: Optional[Tensor] = None) -> Tensor:
        """Scalar EFA update ``[N, F]``; positions/cell in Å, cell rows are lattice vectors; ``env``: the
        atoms' equivariant features (read with ``qk_degrees`` > 0; open graphs only)."""
        y = self._dispatch(h, positions, batch, num_graphs, cell, pbc, None, False, env)
        return self._outputs(y, False)[0]

    @torch.jit.export
    def forward_vectors(self, h: Tensor, positions: Tensor, batch: Tensor, num_graphs: int,  # type: ignore[override]
                        cell: Tensor, pbc: Tensor, vectors: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Scalar update ``[N, F]`` and vector update ``[N, 3, C]``."""
        y = self._dispatch(h, positions, batch, num_graphs, cell, pbc, vectors, True, None)
        return self._outputs(y, True)
