"""VMAS backend: batched torch-native multi-agent scenarios (navigation, balance, transport,
the MPE ports such as simple_spread, ...), stepped entirely on the env's torch device.

Notes on the VMAS API that shape this wrapper:
- One `vmas.Environment` already simulates `num_envs` copies; every tensor is [num_envs, ...].
- Only a whole-batch `reset()` or a single-index `reset_at(i)` exist, and both recompute the
  observations of *all* envs unless told not to. So on auto-reset we reset the finished envs
  without observations and read the observations back once.
- VMAS keeps its RNG state in a class attribute shared by every `Environment` in the process;
  seeding one instance (at construction or `reset(seed)`) reseeds that shared stream. Left
  shared, every evaluation (its env reset with the evaluation seed) put the training env's
  stream back to the same point, so the training episodes after each evaluation started from
  the same positions as after the last one. Each `VmasEnv` therefore keeps its own stream and
  swaps it in around its calls into VMAS (`_own_stream`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import vmas
from vmas.simulator.environment.environment import Environment as _VmasEnvironment

from marl_diff.envs.base import (
    BatchedMultiAgentEnv,
    EnvSpec,
    ScenarioConfig,
    StepResult,
    pad_stack,
)
from marl_diff.errors import ConfigError, choices


@dataclass
class VmasConfig(ScenarioConfig):
    backend: str = "vmas"
    scenario: str = "navigation"  # any VMAS scenario name (vmas.scenarios / vmas.mpe_scenarios)
    n_agents: int = 2
    max_steps: int = 100  # truncation horizon
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra scenario kwargs


# Smallest agent count each commonly used scenario accepts (others: at least 1, and VMAS decides).
_MIN_AGENTS = {"balance": 2}
# Navigation spawns 2 * n_agents non-overlapping discs (agents and goals) by rejection sampling
# in the spawning box; past random close packing VMAS's reset loops forever, so refuse early.
_NAV_MAX_COVERAGE = 0.45
_UNUSED_KWARGS_WARNING = "passed but not used by the scenario"


def _known_scenarios() -> list[str]:
    return list(vmas.scenarios) + list(vmas.mpe_scenarios) + list(vmas.debug_scenarios)


def _navigation_max_agents(kwargs: dict[str, Any]) -> int:
    try:
        radius = float(kwargs.get("agent_radius", 0.1))
        half_x = float(kwargs.get("world_spawning_x", 1.0))
        half_y = float(kwargs.get("world_spawning_y", 1.0))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"bad navigation kwargs for the spawning area: {err}.") from None
    diameter = 2.0 * radius + 0.05  # VMAS's min_distance_between_entities
    area = (2.0 * half_x + diameter) * (2.0 * half_y + diameter)
    disc = math.pi * (diameter / 2.0) ** 2
    return max(1, int(_NAV_MAX_COVERAGE * area / disc) // 2)


def _check_agent_count(cfg: VmasConfig) -> None:
    low = _MIN_AGENTS.get(cfg.scenario, 1)
    high = _navigation_max_agents(cfg.kwargs) if cfg.scenario == "navigation" else None
    if cfg.n_agents < low or (high is not None and cfg.n_agents > high):
        valid = f"{low}..{high}" if high is not None else f">= {low}"
        hint = (
            " (the limit comes from fitting 2 * n_agents discs in the spawning box; raise "
            "kwargs.world_spawning_x / world_spawning_y or lower kwargs.agent_radius)"
            if high is not None
            else ""
        )
        raise ConfigError(
            f"VMAS scenario '{cfg.scenario}' cannot run n_agents={cfg.n_agents}; "
            f"valid range: n_agents {valid}{hint}."
        )


class VmasEnv(BatchedMultiAgentEnv):
    Config = VmasConfig

    def __init__(self, config: VmasConfig, num_envs: int, device: torch.device, seed: int):
        self.config = config
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        if config.scenario not in _known_scenarios():
            raise ConfigError(
                f"unknown VMAS scenario '{config.scenario}'. Valid choices include: "
                f"{choices(list(vmas.scenarios) + list(vmas.mpe_scenarios))}."
            )
        if config.max_steps < 1:
            raise ConfigError(f"scenario.max_steps must be >= 1, got {config.max_steps}.")
        if "n_agents" in config.kwargs:
            raise ConfigError("set the agent count with scenario.n_agents, not kwargs.n_agents.")
        _check_agent_count(config)
        self._random_state = list(_VmasEnvironment.vmas_random_state)  # seeded by _make
        with self._own_stream():
            self.env = self._make(config, seed)

        agents = self.env.agents
        obs_dims, act_dims, lows, highs = [], [], [], []
        for agent, obs_space, act_space in zip(
            agents, self.env.observation_space, self.env.action_space, strict=True
        ):
            if len(getattr(obs_space, "shape", None) or ()) != 1:
                raise ConfigError(
                    f"VMAS scenario '{config.scenario}' gives agent '{agent.name}' a "
                    f"non-vector observation ({obs_space}); only flat observations are supported."
                )
            obs_dims.append(int(obs_space.shape[0]))
            act_dims.append(int(act_space.shape[0]))
            lows.append(torch.as_tensor(act_space.low, dtype=torch.float32))
            highs.append(torch.as_tensor(act_space.high, dtype=torch.float32))
        width = max(act_dims)
        act_low = -torch.ones(len(agents), width)
        act_high = torch.ones(len(agents), width)
        for i, d in enumerate(act_dims):
            act_low[i, :d] = lows[i]
            act_high[i, :d] = highs[i]
        self.spec = EnvSpec(
            agent_names=tuple(agent.name for agent in agents),
            obs_dims=tuple(obs_dims),
            act_dims=tuple(act_dims),
            state_dim=sum(obs_dims),
            max_episode_steps=config.max_steps,
            act_low=act_low.to(self.device),
            act_high=act_high.to(self.device),
        )
        self._obs_width = max(obs_dims)
        self._full_act = all(d == width for d in act_dims)

    # -- construction -------------------------------------------------------------------------

    def _make(self, cfg: VmasConfig, seed: int):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                env = vmas.make_env(
                    cfg.scenario,
                    num_envs=self.num_envs,
                    device=self.device,
                    continuous_actions=True,
                    max_steps=cfg.max_steps,
                    seed=seed,
                    dict_spaces=False,
                    terminated_truncated=True,
                    n_agents=cfg.n_agents,
                    **cfg.kwargs,
                )
        except (AssertionError, ValueError, TypeError, RuntimeError, IndexError) as err:
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"VMAS scenario '{cfg.scenario}' rejected n_agents={cfg.n_agents} with "
                f"kwargs={dict(cfg.kwargs)}: {detail}. Check the scenario's valid agent range "
                f"and keyword arguments."
            ) from None
        for w in caught:
            message = str(w.message)
            if _UNUSED_KWARGS_WARNING in message:
                unused = [k for k in cfg.kwargs if repr(k) in message]
                if unused:
                    raise ConfigError(
                        f"VMAS scenario '{cfg.scenario}' does not take kwargs {unused}."
                    )
            else:  # pass through anything else VMAS wanted to say
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if env.n_agents != cfg.n_agents:
            raise ConfigError(
                f"VMAS scenario '{cfg.scenario}' has a fixed agent count of {env.n_agents}; "
                f"valid range: n_agents {env.n_agents}..{env.n_agents} (got {cfg.n_agents})."
            )
        return env

    # -- interface ----------------------------------------------------------------------------

    def _pack(self, obs_list) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_stack(obs_list, self._obs_width), torch.cat(obs_list, dim=-1)

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with self._own_stream():
            obs_list = self.env.reset(seed=seed)
        return self._pack(obs_list)

    def step(self, actions: torch.Tensor) -> StepResult:
        with self._own_stream():
            return self._step(actions)

    def _step(self, actions: torch.Tensor) -> StepResult:
        scaled = self.scale_actions(actions)
        if self._full_act:
            per_agent = scaled.unbind(dim=1)
        else:
            per_agent = [scaled[:, i, :d] for i, d in enumerate(self.spec.act_dims)]
        obs_list, rewards, terminated, truncated, infos = self.env.step(list(per_agent))
        next_obs, next_state = self._pack(obs_list)
        reward = torch.stack(rewards, dim=1)
        terminated = terminated.bool()
        truncated = truncated.bool() & ~terminated
        done = terminated | truncated

        obs, state = next_obs, next_state
        if bool(done.any()):
            index = done.nonzero().flatten()
            if index.numel() == self.num_envs:
                self.env.reset(return_observations=False)
            else:
                for i in index.tolist():
                    self.env.reset_at(i, return_observations=False)
            fresh_obs, fresh_state = self._pack(self._current_obs())
            obs = torch.where(done[:, None, None], fresh_obs, next_obs)
            state = torch.where(done[:, None], fresh_state, next_state)

        return StepResult(
            obs=obs,
            state=state,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            next_obs=next_obs,
            next_state=next_state,
            info=self._info(infos),
        )

    def close(self) -> None:
        self.env = None

    # -- helpers ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _own_stream(self):
        """This env's random stream (torch, numpy, random) in VMAS's shared slot for the calls
        inside, the other instances' stream back afterwards. VMAS swaps the slot's states in
        and out of the global generators around each of its calls; here only the references
        in the slot move."""
        shared = _VmasEnvironment.vmas_random_state
        others = list(shared)
        shared[:] = self._random_state
        try:
            yield
        finally:
            self._random_state = list(shared)
            shared[:] = others

    def _current_obs(self) -> list[torch.Tensor]:
        (obs_list,) = self.env.get_from_scenario(
            get_observations=True, get_rewards=False, get_infos=False, get_dones=False
        )
        return obs_list

    def _info(self, infos) -> dict[str, torch.Tensor]:
        """Per-agent scalar metrics VMAS reports (e.g. navigation's final_rew) as [B, N]."""
        out: dict[str, torch.Tensor] = {}
        if not infos:
            return out
        for key, value in infos[0].items():
            if not isinstance(value, torch.Tensor) or value.numel() != self.num_envs:
                continue
            per_agent = [info.get(key) for info in infos]
            if any(
                not isinstance(v, torch.Tensor) or v.numel() != self.num_envs for v in per_agent
            ):
                continue
            out[key] = torch.stack([v.reshape(self.num_envs) for v in per_agent], dim=1).float()
        return out


__all__ = ["VmasConfig", "VmasEnv"]
