"""Multi-agent Brax backend (jaxmarl MABrax): the JAX counterpart of MaMuJoCo (ant_4x2,
halfcheetah_6x1, walker2d_2x3, hopper_3x1, humanoid_9|8), stepped like SMAX by one jitted,
vmapped call per step through `jax_bridge.JaxBatch` (key splitting and same-step auto-reset on
the JAX side; outputs to torch by DLPack).

- Brax's own auto-reset is switched off (`auto_reset=False`); its episode wrapper still counts
  steps and marks the time limit in `info["truncation"]`, which gives terminated (the body fell:
  brax `done` without truncation) vs truncated (the step limit) apart.
- Agents control disjoint joint groups; observations are jaxmarl's per-agent index mappings
  into the global Brax observation (sizes differ per agent: padded with `pad_stack`'s zeros),
  actions are already in [-1, 1]. The state is the global Brax observation.
- Every agent receives the shared Brax reward.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import jaxmarl
import torch

from marl_diff.envs.base import BatchedMultiAgentEnv, EnvSpec, ScenarioConfig, StepResult
from marl_diff.envs.jax_bridge import JaxBatch, step_result
from marl_diff.errors import BackendMissing, ConfigError, choices, missing_package

TASKS = ("ant_4x2", "halfcheetah_6x1", "hopper_3x1", "humanoid_9|8", "walker2d_2x3")


@dataclass
class MabraxConfig(ScenarioConfig):
    backend: str = "mabrax"
    task: str = "ant_4x2"  # ant_4x2 | halfcheetah_6x1 | hopper_3x1 | humanoid_9|8 | walker2d_2x3
    max_steps: int = 1000  # episode length (truncation)
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # extra brax env kwargs


def require_mabrax() -> None:
    """Raise BackendMissing when brax is not installed. jaxmarl sets MABRAX_AVAILABLE = False on
    *any* ImportError of its MABrax module, so redo that import to tell a missing brax (a clean
    BackendMissing) from a broken install (the real ImportError, which propagates)."""
    if jaxmarl.environments.MABRAX_AVAILABLE:
        return
    try:
        importlib.import_module("jaxmarl.environments.mabrax")
    except ImportError as err:
        package = missing_package(err)
        if package is None:
            raise
        raise BackendMissing(
            f"the 'mabrax' backend needs brax, which is not installed (cannot import "
            f"'{package}'). Install it with: pip install 'marl_diff[smax]'"
        ) from None


class MabraxEnv(BatchedMultiAgentEnv):
    Config = MabraxConfig

    def __init__(self, config: MabraxConfig, num_envs: int, device: torch.device, seed: int):
        require_mabrax()
        if config.task not in TASKS:
            raise ConfigError(
                f"unknown multi-agent Brax task '{config.task}'. Valid choices: {choices(TASKS)}."
            )
        if config.max_steps < 1:
            raise ConfigError(f"scenario.max_steps must be >= 1, got {config.max_steps}.")
        self.config = config
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self._seed = int(seed)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # "MABrax is deprecated"
                warnings.filterwarnings("ignore", message="Brax System")
                self.env = jaxmarl.make(
                    config.task,
                    episode_length=config.max_steps,
                    auto_reset=False,
                    **config.env_kwargs,
                )
        except TypeError as err:
            raise ConfigError(
                f"Brax rejected scenario.env_kwargs={config.env_kwargs}: {err}"
            ) from None
        env = self.env
        self.agents = list(env.agents)
        obs_dims = [int(env.observation_spaces[a].shape[0]) for a in self.agents]
        act_dims = [int(env.action_spaces[a].shape[0]) for a in self.agents]
        self._obs_width, self._act_width = max(obs_dims), max(act_dims)
        n = len(self.agents)
        self.spec = EnvSpec(
            agent_names=tuple(self.agents),
            obs_dims=tuple(obs_dims),
            act_dims=tuple(act_dims),
            state_dim=int(env.env.observation_size),
            max_episode_steps=config.max_steps,
            act_low=-torch.ones(n, self._act_width, device=self.device),
            act_high=torch.ones(n, self._act_width, device=self.device),
        )
        self.batch = JaxBatch(self._reset_one, self._step_one, self.num_envs, self.device)

    # -- per-copy JAX functions ---------------------------------------------------------------

    def _observe(self, obs: dict) -> jax.Array:
        return jnp.stack(
            [jnp.pad(obs[a], (0, self._obs_width - obs[a].shape[0])) for a in self.agents]
        )

    def _reset_one(self, key):
        key, reset_key = jax.random.split(key)
        obs, state = self.env.reset(reset_key)
        return (key, state), {"obs": self._observe(obs), "state": state.obs}

    def _step_one(self, carry, action):
        key, state = carry
        key, step_key, reset_key = jax.random.split(key, 3)
        actions = {a: action[i, : self.spec.act_dims[i]] for i, a in enumerate(self.agents)}
        obs, next_state, rewards, dones, info = self.env.step_env(step_key, state, actions)
        done = dones["__all__"]
        truncated = done & (info["truncation"] > 0)
        terminated = done & ~truncated
        next_obs = self._observe(obs)
        fresh_obs, fresh_state = self.env.reset(reset_key)
        state = jax.tree.map(lambda f, s: jnp.where(done, f, s), fresh_state, next_state)
        out = {
            "obs": jnp.where(done, self._observe(fresh_obs), next_obs),
            "state": jnp.where(done, fresh_state.obs, next_state.obs),
            "reward": jnp.stack([rewards[a] for a in self.agents]).astype(jnp.float32),
            "terminated": terminated,
            "truncated": truncated,
            "next_obs": next_obs,
            "next_state": next_state.obs,
        }
        return (key, state), out

    # -- interface ----------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if seed is not None:
            self._seed = int(seed)
        out = self.batch.reset(self._seed)
        self._seed += 1
        return out["obs"], out["state"]

    def step(self, actions: torch.Tensor) -> StepResult:
        if self.batch.carry is None:
            self.reset()
        actions = actions.to(dtype=torch.float32).clamp(-1.0, 1.0)
        out = self.batch.step(actions)
        return step_result(out, info={})

    def close(self) -> None:
        self.batch.carry = None


__all__ = ["MabraxConfig", "MabraxEnv", "TASKS"]
