"""Networks whose parameters are stacked over members (agents, twin critics), so N members run
in one batched matmul instead of a Python loop."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def _mish_factor(s: torch.Tensor) -> torch.Tensor:
    """tanh(softplus(x)) from s = sigmoid(x), in place on s: with p = s (2 - s),
    tanh(softplus(x)) = ((1 + e^x)^2 - 1) / ((1 + e^x)^2 + 1) = p / (2 - p)."""
    p = s.mul_(torch.rsub(s, 2.0))
    return p.div_(torch.rsub(p, 2.0))


class _MishFunction(torch.autograd.Function):
    """mish whose forward is the sigmoid form and whose backward is ATen's fused
    `mish_backward` (one pass; autograd through the composed formula saves and revisits every
    intermediate)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _mish_factor(torch.sigmoid(x)).mul_(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.mish_backward(grad, x)


class Mish(nn.Module):
    """mish(x) = x tanh(softplus(x)), computed from one sigmoid.

    tanh(softplus(x)) = p / (2 - p) with p = s (2 - s), s = sigmoid(x): exact to float
    precision for all x. On CPUs with slow transcendentals this is several times faster than
    `torch.nn.functional.mish`, and mish is the diffusion denoisers' default activation,
    evaluated T times per sample. Without autograd it works in place (on large stacked tensors
    fresh temporaries cost more than the arithmetic); with autograd its backward is written out.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _MishFunction.apply(x)
        return _mish_factor(torch.sigmoid(x)).mul_(x)


ACTIVATIONS = {"relu": nn.ReLU, "mish": Mish, "tanh": nn.Tanh, "silu": nn.SiLU, "elu": nn.ELU}


class StackedLinear(nn.Module):
    """`members` independent linear layers applied with one bmm: x [M, B, in] -> [M, B, out]."""

    def __init__(self, members: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, members: int | None = None) -> torch.Tensor:
        """`members`: run only the first that many members (x then has that many rows)."""
        if members is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[:members], x, self.weight[:members])


class StackedLayerNorm(nn.Module):
    """LayerNorm over the features with each member's own gain and bias: x [M, B, F]."""

    def __init__(self, members: int, features: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, features))
        self.bias = nn.Parameter(torch.zeros(members, 1, features))
        self.eps = eps

    def forward(self, x: torch.Tensor, members: int | None = None) -> torch.Tensor:
        normed = nn.functional.layer_norm(x, x.shape[-1:], eps=self.eps)
        if members is None:
            return torch.addcmul(self.bias, normed, self.weight)
        return torch.addcmul(self.bias[:members], normed, self.weight[:members])


class StackedMLP(nn.Module):
    """An MLP per member with stacked parameters.

    Input [M, B, in] (or [B, in], broadcast to every member) -> [M, B, out]. With `layer_norm`
    every hidden layer is linear -> LayerNorm -> activation (DTQL's Q heads).
    """

    def __init__(
        self,
        members: int,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
        layer_norm: bool = False,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choices: {sorted(ACTIVATIONS)}")
        self.members = members
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
            layers.append(StackedLinear(members, fan_in, fan_out))
            if i < len(sizes) - 2:
                if layer_norm:
                    layers.append(StackedLayerNorm(members, fan_out))
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, members: int | None = None) -> torch.Tensor:
        """`members`: run only the first that many members, e.g. the critics of the modes
        discovered so far out of all those allocated."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members if members is None else members, -1, -1)
        for layer in self.net:
            stacked = isinstance(layer, (StackedLinear, StackedLayerNorm))
            x = layer(x, members) if stacked else layer(x)
        return x
