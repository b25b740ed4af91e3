"""Scenario backends behind one batched interface (see `base.py`).

A scenario YAML names its `backend`; each backend class declares a `Config` dataclass that the
YAML is validated against and takes `(config, num_envs, device, seed)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch

from marl_diff.envs.base import BatchedMultiAgentEnv, EnvSpec, StepResult
from marl_diff.errors import BackendMissing, missing_package, unknown
from marl_diff.typed_config import to_dataclass

# backend name -> (module:Class, pip extra that installs what it needs)
BACKENDS: dict[str, tuple[str, str]] = {
    "vmas": ("marl_diff.envs.vmas:VmasEnv", "vmas"),
    "pettingzoo": ("marl_diff.envs.pettingzoo:PettingZooEnv", "mpe"),
    "mamujoco": ("marl_diff.envs.mamujoco:MaMuJoCoEnv", "mamujoco"),
    "gymnasium": ("marl_diff.envs.gymnasium:GymnasiumEnv", "mujoco"),
    "multigoal": ("marl_diff.envs.multigoal:MultiGoalEnv", "core"),
    "smax": ("marl_diff.envs.smax:SmaxEnv", "smax"),
    "mabrax": ("marl_diff.envs.mabrax:MabraxEnv", "smax"),
    "isaaclab": ("marl_diff.envs.isaaclab:IsaacLabEnv", "isaaclab"),
    "maze": ("marl_diff.envs.maze:MazeEnv", "mamujoco"),
}


def backend_class(name: str) -> type[BatchedMultiAgentEnv]:
    if name not in BACKENDS:
        raise unknown("scenario backend", name, BACKENDS)
    target, extra = BACKENDS[name]
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        # Only a third-party package that is genuinely absent is a missing backend; an import
        # error inside marl_diff or a broken install propagates with its traceback.
        package = missing_package(err)
        if package is None:
            raise
        raise BackendMissing(
            f"the '{name}' backend needs a package that is not installed ({package}). "
            f"Install it with: pip install 'marl_diff[{extra}]'"
        ) from None
    return getattr(module, class_name)


def make_env(
    scenario: Mapping[str, Any], num_envs: int, device: torch.device | str, seed: int
) -> BatchedMultiAgentEnv:
    """Build a scenario from its (validated) config mapping."""
    cls = backend_class(scenario["backend"])
    config = to_dataclass(scenario, cls.Config, "scenario")  # type: ignore[attr-defined]
    return cls(config, num_envs=num_envs, device=torch.device(device), seed=seed)


__all__ = ["BACKENDS", "BatchedMultiAgentEnv", "EnvSpec", "StepResult", "backend_class", "make_env"]
