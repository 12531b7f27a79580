"""Forces and stress from the energy: the chain rule from pair vectors to positions and strain.

Two routes, both in one place:

* :func:`lean_gradients` — from the explicit gradients of ``So3krates.energy_and_gradients``
  (w.r.t. the pair vectors, the explicit positions and the cell) to dE/d positions and dE/d strain;
* :func:`strain` + :func:`autograd_gradients` — autograd through a strained copy of the structure
  (training, Hessians, compiled graphs).

Units: positions and cell Å, energies eV, gradients eV/Å (positions) and eV (strain). The stress is
(1/V) dE/dε (ASE's sign convention: negative under compression).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .graph.edges import pair_virial


def lean_gradients(positions: Tensor, cell: Tensor, idx_i: Tensor, idx_j: Tensor, shifts: Tensor,
                   idx_i_lr: Tensor, idx_j_lr: Tensor, shifts_lr: Tensor, grads: List[Tensor],
                   compute_stress: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """dE/d positions [N,3] and (with ``compute_stress``) dE/d strain [3,3] of one graph from
    ``grads`` = [dE/d pair vectors, dE/d long-range pair vectors, dE/d positions (explicit),
    dE/d cell [1,3,3]], in the positions' dtype; with r_p(ε) = r_p (1 + ε) under a strain ε."""
    dt = positions.dtype
    gv = grads[0].to(dt)
    gv_lr = grads[1].to(dt)
    gp = grads[2].to(dt)
    g = gp.index_add(0, idx_j, gv).index_add(0, idx_i, -gv)
    g = g.index_add(0, idx_j_lr, gv_lr).index_add(0, idx_i_lr, -gv_lr)
    if not compute_stress:
        return g, None
    m = positions.t() @ gp + cell.t() @ grads[3].reshape(3, 3).to(dt)
    m = m + pair_virial(positions, cell, idx_i, idx_j, shifts, gv)
    m = m + pair_virial(positions, cell, idx_i_lr, idx_j_lr, shifts_lr, gv_lr)
    return g, 0.5 * (m + m.t())


def strain(positions: Tensor, cell: Tensor, batch: Tensor, num_graphs: int,
           compute_stress: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(positions, cell, ε): with ``compute_stress`` the structure deformed by a zero strain ε [B,3,3]
    that autograd can differentiate (r -> r (1 + sym ε)); otherwise the inputs and an unused ε.
    ``cell`` [B,3,3]."""
    eps = torch.zeros(num_graphs, 3, 3, dtype=positions.dtype, device=positions.device)
    if not compute_stress:
        return positions, cell, eps
    eps = eps.requires_grad_(True)
    sym = 0.5 * (eps + eps.transpose(1, 2))
    pos_s = positions + torch.einsum("na,nab->nb", positions, sym.index_select(0, batch))
    return pos_s, cell + torch.bmm(cell, sym), eps


def autograd_gradients(energy: Tensor, positions: Tensor, eps: Tensor, compute_forces: bool, compute_stress: bool,
                       create_graph: bool) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """(dE/d positions [N,3], dE/d ε [B,3,3]) of the total ``energy`` by autograd (None where not asked)."""
    inputs: List[Tensor] = []
    if compute_forces:
        inputs.append(positions)
    if compute_stress:
        inputs.append(eps)
    if len(inputs) == 0 or not energy.requires_grad:
        g_pos = torch.zeros_like(positions) if compute_forces else None
        g_eps = torch.zeros_like(eps) if compute_stress else None
        return g_pos, g_eps
    go: List[Optional[Tensor]] = [torch.ones_like(energy)]
    g = torch.autograd.grad([energy], inputs, grad_outputs=go, create_graph=create_graph, allow_unused=True)
    g_pos: Optional[Tensor] = None
    g_eps: Optional[Tensor] = None
    k = 0
    if compute_forces:
        g0 = g[0]
        g_pos = g0 if g0 is not None else torch.zeros_like(positions)
        k = 1
    if compute_stress:
        gk = g[k]
        g_eps = gk if gk is not None else torch.zeros_like(eps)
    return g_pos, g_eps
