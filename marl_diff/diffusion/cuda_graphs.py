"""CUDA graphs of the chains a diffusion policy samples without gradient (`graph_chains`).

On a GPU, a reverse chain at reinforcement learning's batch sizes (tens to hundreds of rows) is
bound by kernel launches and the Python that issues them, not by arithmetic: a 10-step chain is
a few hundred small kernels (results/gpu/README.md). A CUDA graph records those kernels once
and replays them in one launch. `ChainGraphs` keeps one graph per call signature (the input's
shape, dtype and device, the sampling options, the process's float32 matmul precision), each
with its own input and output tensors:
- the input is copied into the graph's input tensor before each replay;
- the parameters are read from their tensors at each replay, so optimiser steps, target
  updates and `load_state_dict` (all in place) are seen, while replacing a parameter tensor
  would not be (nothing in marl_diff does);
- the noise comes from the default CUDA generator, which PyTorch keeps graph-safe: each replay
  draws fresh numbers and advances it as the eager chain would;
- the output is cloned, since the next replay overwrites the graph's own.
Graphs are captured after warm-up calls on a side stream (PyTorch's recipe), which also builds
any compiled kernels (`compile_chains`) before the capture.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

WARMUP_CALLS = 3  # PyTorch's recipe warms up on a side stream before a capture
# Signatures per module. A caller whose shapes keep changing (DDiffPG's per-mode groups) would
# capture without end; past this many, new signatures run eagerly, with one warning.
MAX_GRAPHS = 16


class ChainGraphs:
    """One module's graphs: `replay(chain, obs, options)` runs `chain(obs, **options)` from the
    graph captured on the first call with that signature. `chain` must not synchronise with the
    host (no `.item()`, no branch on a tensor's value): a capture refuses that, with PyTorch's
    error. A copy (`copy.deepcopy` of the module, e.g. a target policy) starts with no graphs:
    the graphs read the original's tensors."""

    def __init__(self):
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.full = False  # MAX_GRAPHS reached (and warned about)

    def __deepcopy__(self, memo) -> ChainGraphs:
        return ChainGraphs()

    def __getstate__(self) -> dict:
        return {"graphs": {}, "full": False}

    def replay(
        self, chain: Callable[..., torch.Tensor], obs: torch.Tensor, options: dict
    ) -> torch.Tensor:
        key = (
            tuple(obs.shape),
            obs.dtype,
            obs.device,
            tuple(sorted(options.items())),
            torch.get_float32_matmul_precision(),
        )
        if key not in self.graphs:
            if len(self.graphs) >= MAX_GRAPHS:
                if not self.full:
                    warnings.warn(
                        f"graph_chains: {MAX_GRAPHS} chain shapes captured already; "
                        "chains of new shapes run eagerly",
                        stacklevel=3,
                    )
                    self.full = True
                return chain(obs, **options)
            try:
                self.graphs[key] = self._capture(chain, obs, options)
            except RuntimeError as err:
                raise RuntimeError(
                    f"capturing a diffusion chain as a CUDA graph failed ({err}); "
                    "agent.graph_chains=false runs the chains eagerly"
                ) from err
        graph, static_obs, static_out = self.graphs[key]
        static_obs.copy_(obs)
        graph.replay()
        return static_out.clone()

    def _capture(self, chain: Callable[..., torch.Tensor], obs: torch.Tensor, options: dict):
        static_obs = obs.clone()
        current = torch.cuda.current_stream(obs.device)
        side = torch.cuda.Stream(device=obs.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                chain(static_obs, **options)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = chain(static_obs, **options)
        return graph, static_obs, static_out
