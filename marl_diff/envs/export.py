"""Export the project's batched scenarios as standard PettingZoo ParallelEnv objects.

`export("vmas_navigation")` builds a catalog scenario with `num_envs=1` and wraps it; the
result passes `pettingzoo.test.parallel_api_test` and plugs into other PettingZoo tools.
`to_parallel_env(env, index)` wraps an already built batched env instead.

Semantics of the wrapper (`BatchedParallelEnv`):
- Agents: `possible_agents` is `spec.agent_names`. Each agent's observation space is
  `Box(-inf, inf, (obs_dim_i,), float32)` (its unpadded observation) and its action space is
  `Box(-1, 1, (act_dim_i,), float32)`: the normalised actions the framework itself uses (the
  backend scales them to the simulator's bounds; a discrete agent takes one score per action,
  see `base.discrete_from_logits`). A missing action for a live agent counts as zeros.
- `reset(seed, options)` calls the backend's `reset(seed)` and starts a fresh episode; it
  returns ({agent: obs float32}, {agent: {}}). `options` is accepted and ignored.
- `step(actions)` advances the episode by one step and returns per-agent dicts (observations,
  rewards, terminations, truncations, infos). The batched interface ends episodes for the whole
  team, so every agent gets the same termination / truncation flag (a timeout is a truncation,
  never a termination) and `agents` empties on the final step. The batched env auto-resets
  internally on that step; the wrapper hides it: it returns the true final observation
  (`next_obs`), and the next episode starts only with the next `reset()`, which resets the
  backend. Stepping after the episode ended raises RuntimeError. Backend `info` entries of
  shape [B] or [B, N] appear as floats in each agent's info dict (e.g. multigoal's "goal", the
  PettingZoo backend's "alive"); agents that left an inner PettingZoo env early stay in `agents`
  (with zero observations, zero reward and "alive" 0) until the team's episode ends.
- `state()` is the global state the framework's critic sees (`next_state` after a step, so the
  final state at episode end). `render_mode` is None; `metadata["name"]` is the scenario name.
- With `num_envs > 1` the wrapper shows copy `index` only but each `step` steps the whole batch
  (the other copies receive zero actions) and `reset` resets all of them; prefer `export`,
  which builds a single copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from gymnasium.spaces import Box
from omegaconf import DictConfig, OmegaConf
from pettingzoo.utils.env import ParallelEnv

from marl_diff.envs.base import BatchedMultiAgentEnv


class BatchedParallelEnv(ParallelEnv):
    """One copy of a `BatchedMultiAgentEnv` as a PettingZoo ParallelEnv (module docstring)."""

    render_mode = None

    def __init__(self, env: BatchedMultiAgentEnv, index: int = 0, name: str | None = None):
        if not 0 <= index < env.num_envs:
            raise ValueError(f"index must be in [0, {env.num_envs}), got {index}")
        self.env = env
        self.index = int(index)
        spec = env.spec
        self.possible_agents = list(spec.agent_names)
        self.agents: list[str] = []
        self._slot = {a: i for i, a in enumerate(spec.agent_names)}
        self.observation_spaces = {
            a: Box(-np.inf, np.inf, (d,), np.float32)
            for a, d in zip(spec.agent_names, spec.obs_dims, strict=True)
        }
        self.action_spaces = {
            a: Box(-1.0, 1.0, (d,), np.float32)
            for a, d in zip(spec.agent_names, spec.act_dims, strict=True)
        }
        self.state_space = Box(-np.inf, np.inf, (spec.state_dim,), np.float32)
        label = name or getattr(getattr(env, "config", None), "name", None) or type(env).__name__
        self.metadata = {"name": str(label), "render_modes": [], "is_parallelizable": True}
        self._state: np.ndarray | None = None

    # ---------------------------------------------------------------- PettingZoo API

    def observation_space(self, agent: str) -> Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> Box:
        return self.action_spaces[agent]

    def reset(
        self, seed: int | None = None, options: dict | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        obs, state = self.env.reset(seed=seed)
        self.agents = list(self.possible_agents)
        self._state = _numpy(state[self.index])
        return self._obs_dict(obs), {a: {} for a in self.agents}

    def step(self, actions: Mapping[str, Any]):
        if not self.agents:
            raise RuntimeError("the episode has ended (or never started); call reset() first")
        spec = self.env.spec
        batch = torch.zeros(self.env.num_envs, spec.n_agents, spec.act_dim)
        for agent, action in actions.items():
            if agent not in self.agents:
                continue  # PettingZoo ignores actions for agents that are not live
            i = self._slot[agent]
            a = np.asarray(action, dtype=np.float32).reshape(-1)
            if a.size != spec.act_dims[i]:
                raise ValueError(
                    f"action for '{agent}' must have {spec.act_dims[i]} entries, got {a.size}"
                )
            batch[self.index, i, : a.size] = torch.from_numpy(a)
        result = self.env.step(batch.to(self.env.device))

        k, live = self.index, self.agents
        terminated = bool(result.terminated[k])
        truncated = bool(result.truncated[k]) and not terminated
        obs = self._obs_dict(result.next_obs, live)
        reward_row = _numpy(result.reward[k])
        rewards = {a: float(reward_row[self._slot[a]]) for a in live}
        terminations = dict.fromkeys(live, terminated)
        truncations = dict.fromkeys(live, truncated)
        infos = self._infos(result.info, live)
        self._state = _numpy(result.next_state[k])
        if terminated or truncated:
            self.agents = []
        return obs, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        if self._state is None:
            raise RuntimeError("call reset() before state()")
        return self._state.copy()

    def close(self) -> None:
        self.env.close()

    # ---------------------------------------------------------------- helpers

    def _obs_dict(self, obs: torch.Tensor, agents: list[str] | None = None) -> dict:
        row = _numpy(obs[self.index])
        dims = self.env.spec.obs_dims
        return {
            a: row[self._slot[a], : dims[self._slot[a]]].copy()
            for a in (self.agents if agents is None else agents)
        }

    def _infos(self, info: Mapping[str, torch.Tensor], agents: list[str]) -> dict:
        out: dict[str, dict] = {a: {} for a in agents}
        n = self.env.spec.n_agents
        for key, value in info.items():
            if not isinstance(value, torch.Tensor) or value.ndim == 0:
                continue
            v = _numpy(value[self.index])
            for a in agents:
                if v.ndim == 0:
                    out[a][key] = float(v)
                elif v.shape[0] == n:
                    entry = v[self._slot[a]]
                    out[a][key] = float(entry) if entry.ndim == 0 else entry.copy()
        return out


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy()


def to_parallel_env(
    env: BatchedMultiAgentEnv, index: int = 0, name: str | None = None
) -> BatchedParallelEnv:
    """Wrap copy `index` of a built batched env (see the module docstring for batch effects)."""
    return BatchedParallelEnv(env, index=index, name=name)


def export(
    scenario: str | Mapping[str, Any] | DictConfig,
    seed: int = 0,
    device: torch.device | str = "cpu",
    **overrides: Any,
) -> BatchedParallelEnv:
    """A catalog scenario (name, e.g. "vmas_navigation", or a scenario mapping) as a single-copy
    PettingZoo ParallelEnv. Keyword overrides replace top-level scenario keys (e.g. max_steps)."""
    from marl_diff import catalog
    from marl_diff.envs import make_env

    node = catalog.load("scenario", scenario) if isinstance(scenario, str) else scenario
    if isinstance(node, DictConfig):
        config = OmegaConf.to_container(node, resolve=True)
    else:
        config = dict(node)
    assert isinstance(config, dict)
    config.update(overrides)
    env = make_env(config, num_envs=1, device=device, seed=seed)
    return BatchedParallelEnv(env, index=0, name=str(config.get("name", "")) or None)


__all__ = ["BatchedParallelEnv", "export", "to_parallel_env"]
