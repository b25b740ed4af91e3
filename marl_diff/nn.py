"""Networks whose parameters are stacked over members (agents, twin critics), so N members run
in one batched matmul instead of a Python loop."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import types
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn


def _mish_factor(s: torch.Tensor) -> torch.Tensor:
    """tanh(softplus(x)) from s = sigmoid(x), in place on s: with p = s (2 - s),
    tanh(softplus(x)) = ((1 + e^x)^2 - 1) / ((1 + e^x)^2 + 1) = p / (2 - p)."""
    p = s.mul_(torch.rsub(s, 2.0))
    return p.div_(torch.rsub(p, 2.0))


# Elementwise activations on more elements than this work a chunk (1 MiB of float32) at a
# time. A fresh tensor of several MB comes as fresh pages that the kernel maps and zeroes (above
# glibc's mmap threshold), and each of mish's passes over it goes out to memory; a chunk's
# temporaries come from the heap and stay in cache. Elementwise, so the numbers are the same
# bit for bit. No-grad mish on [3, 16384, 256] (qvpo's candidates on MPE), one thread of the
# project's CPU: 113 ms whole, 16 ms in place by chunks; at or below one chunk, no change.
ELEMENTWISE_CHUNK = 1 << 18


def _flat_chunks(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Views of contiguous `x`, flattened, ELEMENTWISE_CHUNK elements each."""
    return x.view(-1).split(ELEMENTWISE_CHUNK)


def _mish(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    """mish(x) from one sigmoid, a chunk at a time; written over x itself when `inplace`."""
    x = x.contiguous()
    if inplace:
        for chunk in _flat_chunks(x):
            chunk.mul_(_mish_factor(torch.sigmoid(chunk)))
        return x
    out = torch.sigmoid(x)
    for factor, chunk in zip(_flat_chunks(out), _flat_chunks(x), strict=True):
        _mish_factor(factor).mul_(chunk)
    return out


class _MishFunction(torch.autograd.Function):
    """mish whose forward is the sigmoid form and whose backward is ATen's fused
    `mish_backward` (one pass; autograd through the composed formula saves and revisits every
    intermediate)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _mish(x, inplace=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.mish_backward(grad, x)


class Mish(nn.Module):
    """mish(x) = x tanh(softplus(x)), computed from one sigmoid.

    tanh(softplus(x)) = p / (2 - p) with p = s (2 - s), s = sigmoid(x): exact to float
    precision for all x. On CPUs with slow transcendentals this is several times faster than
    `torch.nn.functional.mish`, and mish is the diffusion denoisers' default activation,
    evaluated T times per sample. Its temporaries are chunk-sized (`ELEMENTWISE_CHUNK`): on
    large stacked tensors fresh temporaries cost more than the arithmetic. With autograd its
    backward is written out. `inplace`: without autograd, the result overwrites the input (for
    a network's own intermediates, as `torch.nn.ReLU(inplace=True)`).
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # One fused kernel with `_mish_factor`'s operations in its order, so that without
            # gradient it returns the eager numbers bit for bit (x * p / (2 - p) did not); the
            # compiler derives the backward.
            s = torch.sigmoid(x)
            p = s * (2.0 - s)
            return x * (p / (2.0 - p))
        if torch.is_grad_enabled() and x.requires_grad:
            return _MishFunction.apply(x)
        return _mish(x, self.inplace)


def _tanh_from_sigmoid(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """tanh(x) = 2 sigmoid(2x) - 1, in one fresh tensor or over x itself."""
    return (x.mul_(2.0) if inplace else x.mul(2.0)).sigmoid_().mul_(2.0).sub_(1.0)


class _TanhFunction(torch.autograd.Function):
    """tanh from one sigmoid, with ATen's `tanh_backward` (1 - y^2) from the saved output, as
    torch's own tanh does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = _tanh_from_sigmoid(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


class Tanh(nn.Module):
    """tanh as 2 sigmoid(2x) - 1.

    On this project's CPU (x86_64, torch 2.13's AVX-512 kernels) `torch.tanh` takes about 6x a
    sigmoid: on [2, 128, 256], one thread, 190 us against 32 us, and this form 58 us. The tanh
    hidden layers (MASAC's networks in the peer benchmark) spend that at every layer and call.
    The form is within 2.5e-7 of tanh in absolute terms for every x (a few float32 roundings of
    an output near 1), not in relative terms: outputs much smaller than 1e-5 carry a larger
    relative error, which a hidden layer's next matmul cannot tell from rounding. The policies'
    action squashing keeps `torch.tanh`: its tensors are small, and there an exact value costs
    nothing. `inplace`: as `Mish`'s.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # Plain operations, the backward left to the compiler: a custom autograd.Function
            # in a graph keeps AOTAutograd from caching it, so every run would redo that
            # compile. Out of place, unlike `_tanh_from_sigmoid`: the backward reads the sigmoid.
            return x.mul(2.0).sigmoid().mul(2.0).sub(1.0)
        if torch.is_grad_enabled() and x.requires_grad:
            return _TanhFunction.apply(x)
        return _tanh_from_sigmoid(x, self.inplace)


ACTIVATIONS = {"relu": nn.ReLU, "mish": Mish, "tanh": Tanh, "silu": nn.SiLU, "elu": nn.ELU}
# Those a StackedMLP runs in place on its own intermediates: the same numbers and gradients,
# without a fresh tensor per layer. torch's ELU in place takes its gradient from the output,
# another rounding, so it stays out of place, and SiLU (no catalog agent uses it) with it.
IN_PLACE_ACTIVATIONS = ("relu", "mish", "tanh")


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

    `compiled`: the layers after the first run as one `torch.compile` graph (`after_first`).
    Eager PyTorch makes a pass over memory for every elementwise op, and a mish from one sigmoid
    takes six; compiled, each layer's bias and activation are one fused kernel around the
    matmul (its backward too). The graph is built at the first call for each input layout and
    grad mode, a few seconds each. Without gradient its results are the eager layers' bit for bit
    on a CPU (inductor's C++ keeps each operation's rounding and contracts no multiply-adds);
    with gradient the backward is the compiler's own, equal to eager's to float rounding.
    Inputs of fewer than `COMPILED_MIN_ROWS` rows per member (acting in a few envs) run eagerly:
    there the compiled call's fixed cost outweighs what it saves.
    """

    def __init__(
        self,
        members: int,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
        layer_norm: bool = False,
        compiled: bool = False,
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
                inplace = {"inplace": True} if activation in IN_PLACE_ACTIVATIONS else {}
                layers.append(ACTIVATIONS[activation](**inplace))
        self.net = nn.Sequential(*layers)
        self.compiled = compiled and compiler_available()

    def after_first(self, h: torch.Tensor) -> torch.Tensor:
        """The layers after the first linear one, from its output h [M', B, H] for the first
        M' <= M members (for callers that compute the first layer themselves); one compiled
        graph when `compiled`. h is the network's own intermediate: the activations may
        overwrite it.

        Inside a graph being compiled (a chain's whole loop, `compile_chain_loop`) the layers
        join that graph: a call to their own compiled copy there would break it at every chain
        step, and each step's frame, recompiled per step index, would run eagerly once
        Dynamo's limit of 8 is spent (seen with `compile_denoiser` on top of the loop: acting
        took 3 ms instead of under 1)."""
        if not self.compiled or h.shape[1] < COMPILED_MIN_ROWS or torch.compiler.is_compiling():
            return _after_first(self, h)
        return _compiled_after_first(self)(self, h)

    @contextlib.contextmanager
    def compiling(self) -> Iterator[None]:
        """Within the block the layers after the first run compiled, as with `compiled=True`
        (a policy's chains without gradient, `DiffusionPolicy.chain_context`); as before after
        it."""
        before = self.compiled
        self.compiled = self.compiler_found
        try:
            yield
        finally:
            self.compiled = before

    @functools.cached_property
    def compiler_found(self) -> bool:
        """`compiler_available()`, looked up once (`compiling` runs at every update)."""
        return compiler_available()

    @functools.cached_property
    def structure(self) -> tuple:
        """The layers after the first, as types and parameter shapes: what a compiled graph of
        `after_first` is specific to (computed once, not at every call)."""
        return tuple(
            (type(layer), tuple(p.shape for p in layer.parameters())) for layer in self.net[1:]
        )

    def forward(self, x: torch.Tensor, members: int | None = None) -> torch.Tensor:
        """`members`: run only the first that many members, e.g. the critics of the modes
        discovered so far out of all those allocated."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members if members is None else members, -1, -1)
        return self.after_first(self.net[0](x, members))


# Rows per member from which `StackedMLP.compiled` runs the compiled graph. Measured on a 2-core
# CPU, one thread, [64, 64] and [256, 256, 256] mish layers: with autograd the compiled layers
# took 0.65-1.0x the eager time from 64 rows (0.75x from 256); without, 0.9-1.2x from 64 rows
# and 0.9x at 1024; at 16 rows up to 1.5x (the compiled call's fixed cost).
COMPILED_MIN_ROWS = 64


def _after_first(mlp: StackedMLP, h: torch.Tensor) -> torch.Tensor:
    members = None if h.shape[0] == mlp.members else h.shape[0]
    for layer in mlp.net[1:]:
        stacked = isinstance(layer, (StackedLinear, StackedLayerNorm))
        h = layer(h, members) if stacked else layer(h)
    return h


# One compiled copy of a function per structure key (`compiled_for`). Dynamo keeps its graphs,
# and its limit of 8 per function, on the function's code object: one copy for every network
# would exhaust the limit in a process that builds many (a test worker, a distillation) and run
# later ones eagerly, so whether a network ran compiled would depend on what was built before
# it. Networks of one structure (a policy and its target copy) share graphs: the parameters are
# the graph's inputs, not constants.
_COMPILED: dict[tuple, Callable] = {}


def compiled_for(fn: Callable, structure: tuple, **options) -> Callable:
    """The compiled copy of `fn` (`compile_own_copy`) that every caller with this `structure`
    (layer types, parameter shapes) shares; built at its first request."""
    key = (fn, structure)
    if key not in _COMPILED:
        _COMPILED[key] = compile_own_copy(fn, **options)
    return _COMPILED[key]


def _compiled_after_first(mlp: StackedMLP) -> Callable:
    """The compiled `after_first` of every network of `mlp`'s layer structure."""
    return compiled_for(_after_first, mlp.structure, dynamic=True)


def compile_own_copy(fn: Callable, **options) -> Callable:
    """torch.compile of a private copy of `fn`'s code: Dynamo keeps its graphs, and its limit
    of 8 per function, on the code object, so the copy's graphs are its own (see `_COMPILED`)."""
    own = types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    return torch.compile(own, **options)


def compiler_available() -> bool:
    """Whether torch.compile can build kernels here: its CPU backend (and Triton's launchers
    on a GPU) need a C++ compiler. Without one, networks asked to compile run eagerly, with a
    warning."""
    names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if any(name and shutil.which(name) for name in names):
        return True
    warnings.warn(
        "torch.compile needs a C++ compiler (g++ or clang++; none found on PATH or in $CXX): "
        "the networks asked to compile run eagerly, with the same results, more slowly",
        stacklevel=2,
    )
    return False
