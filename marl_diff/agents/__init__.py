"""Agents (algorithms) by name. An agent YAML names its `algorithm`; the class's `Config`
dataclass validates the YAML."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch

from marl_diff.agents.base import Agent
from marl_diff.envs.base import EnvSpec
from marl_diff.errors import unknown
from marl_diff.typed_config import to_dataclass

ALGORITHMS: dict[str, str] = {
    "gaussian": "marl_diff.agents.gaussian:GaussianAgent",
    "ddpl": "marl_diff.agents.ddpl:DDPLAgent",
    "dacer": "marl_diff.agents.dacer:DACERAgent",
    "qvpo": "marl_diff.agents.qvpo:QVPOAgent",
    "diffusion_bc": "marl_diff.agents.diffusion_bc:DiffusionBCAgent",
    "dtql": "marl_diff.agents.dtql:DTQLAgent",
    "qensemble": "marl_diff.agents.qensemble:QEnsembleAgent",
    "ddiffpg": "marl_diff.agents.ddiffpg:DDiffPGAgent",
}


def agent_class(algorithm: str) -> type[Agent]:
    if algorithm not in ALGORITHMS:
        raise unknown("algorithm", algorithm, ALGORITHMS)
    module_name, class_name = ALGORITHMS[algorithm].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_agent(config: Mapping[str, Any], spec: EnvSpec, device: torch.device | str) -> Agent:
    cls = agent_class(config["algorithm"])
    typed = to_dataclass(config, cls.Config, "agent")
    return cls(typed, spec, torch.device(device))


__all__ = ["ALGORITHMS", "Agent", "agent_class", "make_agent"]
