"""Shared plumbing for the JAX-simulated backends (SMAX, multi-agent Brax through jaxmarl).

How data crosses between torch and JAX:
- JAX -> torch: `torch.from_dlpack(jax_array)` wraps the XLA buffer without copying when the
  JAX device is the torch device (CPU <-> CPU, or the same CUDA GPU); the torch tensor keeps
  the JAX buffer alive. When no JAX device matches the torch device (e.g. torch on CUDA but a
  CPU-only jaxlib), the tensor is moved with `.to(device)`, which copies.
- torch -> JAX: `jax.dlpack.from_dlpack(tensor)` (again zero-copy where the devices match; JAX
  may still copy a buffer whose alignment it does not accept) and `jax.device_put` onto the
  env's JAX device otherwise.
- JAX dispatches asynchronously; `JaxBatch.__call__` blocks until the outputs are ready before
  handing them to torch, so an action tensor that JAX may still be reading is never mutated
  underneath it, and torch never sees a buffer that is still being written.

`JaxBatch` turns two per-env pure functions into one batched call each:
`reset_one(key) -> (carry, outputs)` and `step_one(carry, action) -> (carry, outputs)` become
`jax.jit(jax.vmap(...))` over the env copies, with `carry` (the simulator state *and* the PRNG
key of each copy) kept on the JAX side between calls, so one Python call = one XLA launch for
the whole batch, including auto-reset and key splitting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import torch

from marl_diff.envs.base import StepResult


def jax_device_for(device: torch.device) -> jax.Device:
    """The JAX device that shares memory with a torch device; the default JAX CPU device when
    JAX has no such device (outputs are then copied to torch's device)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index < len(gpus):
            return gpus[index]
    return jax.devices("cpu")[0]


def to_torch(array: jax.Array, device: torch.device) -> torch.Tensor:
    """A JAX array as a torch tensor on `device` (zero-copy via DLPack when devices match)."""
    tensor = torch.from_dlpack(array)
    return tensor if tensor.device == device else tensor.to(device)


def to_jax(tensor: torch.Tensor, jax_device: jax.Device) -> jax.Array:
    """A torch tensor as a JAX array on `jax_device` (zero-copy via DLPack when devices match)."""
    tensor = tensor.detach()
    same = (tensor.device.type == "cpu" and jax_device.platform == "cpu") or (
        tensor.device.type == "cuda" and jax_device.platform == "gpu"
    )
    if same:
        return jax.dlpack.from_dlpack(tensor.contiguous())
    return jax.device_put(jnp.asarray(tensor.cpu().numpy()), jax_device)


def _strong_carry(fn: Callable) -> Callable:
    """Drop JAX's weak types from the returned carry: a leaf that is weakly typed after reset
    but not after a step (e.g. a Python int default in the simulator's state) would make the
    jitted step compile twice, once per input signature."""

    def wrapped(*args):
        carry, outputs = fn(*args)
        carry = jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), carry)
        return carry, outputs

    return wrapped


class JaxBatch:
    """`num_envs` copies of a JAX env, stepped by one jitted, vmapped function (see module doc)."""

    def __init__(
        self,
        reset_one: Callable[[jax.Array], tuple[Any, dict[str, jax.Array]]],
        step_one: Callable[[Any, jax.Array], tuple[Any, dict[str, jax.Array]]],
        num_envs: int,
        device: torch.device,
    ):
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self.jax_device = jax_device_for(self.device)
        self._reset = jax.jit(jax.vmap(_strong_carry(reset_one)))
        self._step = jax.jit(jax.vmap(_strong_carry(step_one)))
        self.carry: Any = None

    def reset(self, seed: int) -> dict[str, torch.Tensor]:
        key = jax.device_put(jax.random.PRNGKey(int(seed) % (2**32)), self.jax_device)
        keys = jax.random.split(key, self.num_envs)
        self.carry, outputs = self._reset(keys)
        return self._outputs(outputs)

    def step(self, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.carry is None:
            raise RuntimeError("call reset() before step()")
        self.carry, outputs = self._step(self.carry, to_jax(actions, self.jax_device))
        return self._outputs(outputs)

    def _outputs(self, outputs: dict[str, jax.Array]) -> dict[str, torch.Tensor]:
        outputs = jax.block_until_ready(outputs)
        return {name: to_torch(value, self.device) for name, value in outputs.items()}


def step_result(outputs: dict[str, torch.Tensor], info: dict[str, torch.Tensor]) -> StepResult:
    """A `JaxBatch.step` output (with the StepResult fields among its keys) as a StepResult."""
    return StepResult(
        obs=outputs["obs"],
        state=outputs["state"],
        reward=outputs["reward"],
        terminated=outputs["terminated"],
        truncated=outputs["truncated"],
        next_obs=outputs["next_obs"],
        next_state=outputs["next_state"],
        info=info,
    )


__all__ = ["JaxBatch", "jax_device_for", "step_result", "to_jax", "to_torch"]
