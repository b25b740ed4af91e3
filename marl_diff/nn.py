"""Networks whose parameters are stacked over members (agents, twin critics), so N members run
in one batched matmul instead of a Python loop."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class Mish(nn.Module):
    """mish(x) = x tanh(softplus(x)), computed from one sigmoid.

    With s = sigmoid(x) and u = 1 - s, tanh(softplus(x)) = (1 - u^2) / (1 + u^2)
    = s (1 + u) / (1 + u^2), exact to float precision for all x. On CPUs with slow
    transcendentals this is ~2.5x faster than `torch.nn.functional.mish`, and mish is the
    diffusion denoisers' default activation, evaluated T times per sample.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(x)
        if torch.is_grad_enabled() and x.requires_grad:
            u = 1.0 - s
            return x * s * (1.0 + u) / (1.0 + u * u)
        # Without autograd (sampling), in place: on large stacked tensors fresh temporaries
        # cost more than the arithmetic (measured 2x on [8, 1024, 256]).
        u = torch.rsub(s, 1.0)
        s.mul_(x).mul_(u + 1.0)
        return s.div_(u.mul_(u).add_(1.0))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class StackedMLP(nn.Module):
    """An MLP per member with stacked parameters.

    Input [M, B, in] (or [B, in], broadcast to every member) -> [M, B, out].
    """

    def __init__(
        self,
        members: int,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
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
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members, -1, -1)
        return self.net(x)
