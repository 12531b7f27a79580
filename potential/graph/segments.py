"""Sums over the atoms of each graph of a batch."""
import torch
from torch import Tensor


def graph_sums(values: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """[B, ...]: the sum of ``values`` [N, ...] over the atoms of each graph (``batch`` [N] = graph of
    each atom). One graph: a plain sum (no scatter; AOTInductor miscompiles scatters into a
    one-element buffer, torch 2.9)."""
    if num_graphs == 1:
        return values.sum(0, keepdim=True)
    shape = [num_graphs] + list(values.shape[1:])
    return torch.zeros(shape, dtype=values.dtype, device=values.device).index_add(0, batch, values)


def per_atom(values: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """[N, ...]: each atom's row of the per-graph ``values`` [B, ...]. One graph: a broadcast (no
    gather, whose backward would be a scatter into a one-element buffer; see ``graph_sums``)."""
    if num_graphs == 1:
        shape = [batch.shape[0]] + list(values.shape[1:])
        return values.expand(shape)
    return values.index_select(0, batch)
