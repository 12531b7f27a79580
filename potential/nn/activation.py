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


def activation_derivative(x: Tensor, name: str) -> Tensor:
    """d activation(x) / dx, elementwise (for explicit backward passes)."""
    if name == "silu":
        s = torch.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    if name == "identity":
        return torch.ones_like(x)
    if name == "relu":
        return (x > 0).to(x.dtype)
    if name == "tanh":
        t = torch.tanh(x)
        return 1.0 - t * t
    if name == "softplus":
        return torch.sigmoid(x)
    if name == "gelu":  # tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
        k = 0.7978845608028654
        u = k * (x + 0.044715 * x * x * x)
        t = torch.tanh(u)
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
    raise ValueError("unknown activation function")
