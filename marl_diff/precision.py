"""How float32 matrix products are computed (`matmul_precision=`).

torch's own setting (`torch.set_float32_matmul_precision`): "highest" computes them in float32;
"high" lets a CUDA GPU with tensor cores use TF32 (10-bit mantissa inputs, float32
accumulation); "medium" also lets the GPU, and a CPU with AMX through oneDNN, compute them
from bfloat16 inputs. On the project's AMD EPYC (AVX512-BF16, no AMX) oneDNN's "medium"
products stay float32-accurate instead: a [512, 256] x [256, 256] product moved by 5e-5 where
bfloat16 inputs move it by 0.17, a 10-step ddpl chain by 4e-7, at about 0.9x the float32 time;
products of bfloat16 tensors take 0.47x there (one thread, 2026-12-05). Every network in
marl_diff is stacked matrix products, and the diffusion agents' sampled chains are mostly that,
so this is their largest precision-for-speed trade. The run's default keeps float32 (the
catalog's ddpl and qvpo sample their chains at "medium", `chain_precision` below): the learning
figures in `results/` were made with it, and a change of rounding alone gives a seed another
trajectory.

Measured on the project's CPUs (one thread, `bench update`, one precision per process,
results/speed.md): "medium" takes a ddpl update and a Gaussian one to about 0.9x their float32
time on Ant and MPE on a CPU with AVX512-BF16 alone, where the headline run did not go faster,
and to 0.67-0.85x (every agent) on an Intel Xeon with AMX; "high" changes nothing on a CPU.
It also learned less: ddpl's vmas_navigation study setting ended about 0.1 lower in each of
six seeds. Hence off by default; a GPU's TF32 is not measured. `scoped` applies a mode to a
block only: the diffusion agents' `chain_precision` gives "medium" to their sampled chains
alone, which learned as float32 did (agents/diffusion_actor.py).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

import torch

from marl_diff.errors import ConfigError, choices

MODES = ("highest", "high", "medium")
# A block's products computed on bfloat16 tensors (torch.autocast): bfloat16 inputs and outputs,
# on any CPU with bfloat16 instructions, where "medium" may stay float32-accurate (above).
BFLOAT16 = "bfloat16"
SCOPED_MODES = (*MODES, BFLOAT16)


@functools.cache
def cpu_has_bfloat16_kernels() -> bool:
    """Whether this CPU has oneDNN's bfloat16 matrix-product kernels (AVX512-BF16 or AMX).
    Without them torch multiplies bfloat16 tensors in a scalar loop: on an AMD EPYC Zen 3
    (AVX2 only) a [2048, 256] x [256, 256] product took 191 ms against 1.7 ms in float32, two
    threads (results/speed.md, twenty-fifth session). The check is oneDNN's own."""
    return torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def configure(mode: str) -> None:
    """Apply `mode` (one of MODES) to this process's float32 matrix products."""
    if mode not in MODES:
        raise ConfigError(f"matmul_precision must be one of {choices(MODES)}, not '{mode}'")
    torch.set_float32_matmul_precision(mode)


def setting_scope(setting: str, device_type: str) -> contextlib.AbstractContextManager:
    """The block of an agent's precision setting (`update_precision`, `weights_precision`):
    "run" leaves the run's own precision, any of SCOPED_MODES is `scoped`."""
    return contextlib.nullcontext() if setting == "run" else scoped(setting, device_type)


@contextlib.contextmanager
def scoped(mode: str, device_type: str) -> Iterator[None]:
    """`mode` (one of SCOPED_MODES) for the float32 matrix products inside the block, the
    process's setting again after it (the diffusion policies' no-gradient chains,
    `chain_precision`). BFLOAT16 autocasts the block's products on `device_type` ("cpu",
    "cuda": autocast is per device type) to bfloat16: their results come out in bfloat16, one
    more rounding than "medium"'s float32 outputs. On a CPU without bfloat16 kernels
    (`cpu_has_bfloat16_kernels`) it warns, once a process: the mode would run far slower."""
    if mode == BFLOAT16:
        if device_type == "cpu" and not cpu_has_bfloat16_kernels():
            warnings.warn(
                "bfloat16 products (agent.chain_precision or agent.update_precision=bfloat16) "
                "on a CPU without AVX512-BF16 or AMX take torch's scalar fallback, about 100x "
                "their float32 time; choose 'run' on this CPU",
                RuntimeWarning,
                stacklevel=1,  # one location: shown once per process
            )
        # Autocast's cache of cast weights stays off on a GPU, where a chain may run inside a
        # CUDA graph capture (`graph_chains`): torch asks for that with graphed callables.
        with torch.autocast(device_type, torch.bfloat16, cache_enabled=device_type != "cuda"):
            yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(mode)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
