"""Activation functions by name, as in mlff/flax."""
import torch
from torch import Tensor

#: names accepted by :func:`activation`
ACTIVATIONS = ("silu", "identity", "relu", "tanh", "softplus", "gelu")


def activation(x: Tensor, name: str) -> Tensor:
    """silu, identity, relu, tanh, softplus (log(1 + e^x), as jax.nn.softplus), gelu (tanh
    approximation, the jax.nn.gelu default)."""
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
