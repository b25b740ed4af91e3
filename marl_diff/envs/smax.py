"""SMAX backend: jaxmarl's JAX StarCraft-like micromanagement (allies vs the heuristic enemy),
batched with one jitted, vmapped call per step (see `jax_bridge.py`).

The step, all on the JAX side in one `jax.jit(jax.vmap(...))` over the env copies:
1. split each copy's PRNG key (carried in the JAX-side state) into step / reset / next keys;
2. turn the incoming actions into SMAX actions (below);
3. `HeuristicEnemySMAX.step_env` (the enemy's heuristic acts inside it);
4. split the episode end into terminated (a team is wiped out) and truncated (the step limit,
   `max_steps` steps exactly, with both teams alive), and compute `won` (every enemy dead, an
   ally alive);
5. same-step auto-reset: a fresh episode is selected where the copy finished, while the true
   final observation / world state is returned as `next_obs` / `next_state`;
6. the availability masks of the new state, used to mask the next step's actions.
The outputs cross to torch by DLPack (zero-copy on CPU and on the matching GPU).

Actions (`action_type`):
- `discrete` (SMAX's default): the project's continuous relaxation (`base.discrete_from_logits`).
  An ally with n = 5 + n_enemies actions (4 moves, stop, attack enemy j) gets an n-dim action
  in [-1, 1] holding one score per action; the env takes the best-scoring *available* action:
  a masked argmax over SMAX's `get_avail_actions`, done inside the jitted step (the masks are
  on the JAX side already, so this costs nothing and no mask crosses to torch to act). Stop is
  always available, so every agent has an available action. Gaussian and diffusion policies
  sample scores as they sample any continuous action; the masking happens after sampling.
  With `avail_in_obs` the 0/1 masks of the state being acted on are appended to each
  observation, so the policy can learn which scores matter; `avail_actions` holds the last
  masks as a [B, N, n] bool tensor.
- `continuous`: SMAX's own continuous option, 4 numbers in [0, 1] per ally (shoot the last
  target, move-or-shoot probability, radius and angle of the move / aim point; SMAX samples the
  two binary choices); our [-1, 1] actions are mapped onto [0, 1]. No masks are involved.

Observations are SMAX's per-ally unit lists (all allies have the same size); `state` is SMAX's
world state. The reward is SMAX's team reward (damage dealt plus the win bonus), the same for
every ally. `info["won"]` is 1.0 where the allies won the episode that ended on this step.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import jaxmarl
import torch
from jaxmarl.environments.smax import smax_env as _smax_env

from marl_diff.envs.base import BatchedMultiAgentEnv, EnvSpec, ScenarioConfig, StepResult
from marl_diff.envs.jax_bridge import JaxBatch, step_result
from marl_diff.errors import ConfigError, choices

ACTION_TYPES = ("discrete", "continuous")


@dataclass
class SmaxConfig(ScenarioConfig):
    backend: str = "smax"
    map: str = "3m"  # any SMAX map name (jaxmarl's MAP_NAME_TO_SCENARIO)
    max_steps: int = 0  # episode step limit (truncation); 0 = SMAX's default (100)
    action_type: str = "discrete"  # discrete (masked relaxation) | continuous (SMAX's option)
    avail_in_obs: bool = True  # discrete only: append the availability masks to observations
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # extra SMAX / heuristic kwargs


def known_maps() -> list[str]:
    return list(_smax_env.MAP_NAME_TO_SCENARIO)


def _check(config: SmaxConfig) -> None:
    if config.map not in _smax_env.MAP_NAME_TO_SCENARIO:
        raise ConfigError(
            f"unknown SMAX map '{config.map}'. Valid choices: {choices(known_maps())}."
        )
    if config.action_type not in ACTION_TYPES:
        raise ConfigError(
            f"unknown scenario.action_type '{config.action_type}'. "
            f"Valid choices: {choices(ACTION_TYPES)}."
        )
    if config.max_steps < 0:
        raise ConfigError(f"scenario.max_steps must be >= 0, got {config.max_steps}.")
    reserved = {"scenario", "max_steps", "action_type"} & set(config.env_kwargs)
    if reserved:
        raise ConfigError(
            f"set {sorted(reserved)} with scenario.map / max_steps / action_type, "
            "not scenario.env_kwargs."
        )
    valid = _valid_kwargs()
    unknown = set(config.env_kwargs) - valid
    if unknown:
        raise ConfigError(
            f"SMAX does not take env_kwargs {sorted(unknown)}. Valid choices: {choices(valid)}."
        )


def _valid_kwargs() -> set[str]:
    names = set()
    for fn in (jaxmarl.environments.smax.HeuristicEnemySMAX.__init__, _smax_env.SMAX.__init__):
        names |= {p for p in inspect.signature(fn).parameters if p not in ("self", "env_kwargs")}
    return names - {"scenario", "num_allies", "num_enemies"}


class SmaxEnv(BatchedMultiAgentEnv):
    Config = SmaxConfig

    def __init__(self, config: SmaxConfig, num_envs: int, device: torch.device, seed: int):
        _check(config)
        self.config = config
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self._seed = int(seed)
        kwargs = dict(config.env_kwargs)
        if config.max_steps > 0:
            kwargs["max_steps"] = config.max_steps
        try:
            self.env = jaxmarl.make(
                "HeuristicEnemySMAX",
                scenario=_smax_env.map_name_to_scenario(config.map),
                action_type=config.action_type,
                **kwargs,
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(f"SMAX rejected scenario.env_kwargs={kwargs}: {err}") from None

        env = self.env
        self.discrete = config.action_type == "discrete"
        self.n_allies, self.n_enemies = env.num_allies, env.num_enemies
        self.agents = list(env.agents)
        self.n_actions = env.num_ally_actions
        act_dim = self.n_actions if self.discrete else len(env.continuous_action_dims)
        self._with_avail = self.discrete and config.avail_in_obs
        obs_dim = env.obs_size + (self.n_actions if self._with_avail else 0)
        n = self.n_allies
        self.spec = EnvSpec(
            agent_names=tuple(self.agents),
            obs_dims=(obs_dim,) * n,
            act_dims=(act_dim,) * n,
            state_dim=int(env.state_size),
            max_episode_steps=int(env.max_steps),
            act_low=-torch.ones(n, act_dim, device=self.device),
            act_high=torch.ones(n, act_dim, device=self.device),
        )
        self.batch = JaxBatch(self._reset_one, self._step_one, self.num_envs, self.device)
        self.avail_actions: torch.Tensor | None = None

    # -- per-copy JAX functions (vmapped and jitted by JaxBatch) --------------------------------

    def _avail(self, env_state) -> jax.Array:
        masks = self.env.get_avail_actions(env_state)
        return jnp.stack([masks[a] for a in self.agents]).astype(bool)  # [N, n]

    def _observe(self, obs: dict, avail: jax.Array) -> jax.Array:
        stacked = jnp.stack([obs[a] for a in self.agents])  # [N, D]
        if self._with_avail:
            stacked = jnp.concatenate([stacked, avail.astype(stacked.dtype)], axis=-1)
        return stacked

    def _reset_one(self, key):
        key, reset_key = jax.random.split(key)
        obs, env_state = self.env.reset(reset_key)
        avail = self._avail(env_state)
        out = {"obs": self._observe(obs, avail), "state": obs["world_state"], "avail": avail}
        return (key, env_state, avail), out

    def _step_one(self, carry, action):
        key, env_state, avail = carry
        key, step_key, reset_key = jax.random.split(key, 3)
        if self.discrete:
            # the relaxation, masked on the JAX side: best-scoring available action
            chosen = jnp.argmax(jnp.where(avail, action, -jnp.inf), axis=-1)
        else:
            chosen = (jnp.clip(action, -1.0, 1.0) + 1.0) * 0.5  # SMAX's continuous range [0, 1]
        actions = {a: chosen[i] for i, a in enumerate(self.agents)}
        obs, next_state, rewards, _, _ = self.env.step_env(step_key, env_state, actions)

        alive = next_state.state.unit_alive
        allies_dead = ~jnp.any(alive[: self.n_allies])
        enemies_dead = ~jnp.any(alive[self.n_allies :])
        terminated = allies_dead | enemies_dead
        # SMAX's own `done` tests the step limit before counting the step (so its episodes last
        # max_steps + 1 steps); the limit here is exactly spec.max_episode_steps steps
        truncated = (next_state.state.step >= self.spec.max_episode_steps) & ~terminated
        done = terminated | truncated
        won = (enemies_dead & ~allies_dead).astype(jnp.float32)
        next_avail = self._avail(next_state)
        next_obs = self._observe(obs, next_avail)

        fresh_obs, fresh_state = self.env.reset(reset_key)
        fresh_avail = self._avail(fresh_state)
        env_state = jax.tree.map(lambda f, s: jnp.where(done, f, s), fresh_state, next_state)
        avail = jnp.where(done, fresh_avail, next_avail)
        out = {
            "obs": jnp.where(done, self._observe(fresh_obs, fresh_avail), next_obs),
            "state": jnp.where(done, fresh_obs["world_state"], obs["world_state"]),
            "reward": jnp.stack([rewards[a] for a in self.agents]).astype(jnp.float32),
            "terminated": terminated,
            "truncated": truncated,
            "next_obs": next_obs,
            "next_state": obs["world_state"],
            "won": won,
            "avail": avail,
            "action": chosen,
        }
        return (key, env_state, avail), out

    # -- interface ----------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if seed is not None:
            self._seed = int(seed)
        out = self.batch.reset(self._seed)
        self._seed += 1  # a later reset() without a seed starts new episodes
        self.avail_actions = out["avail"]
        return out["obs"], out["state"]

    def step(self, actions: torch.Tensor) -> StepResult:
        if self.batch.carry is None:
            self.reset()
        out = self.batch.step(actions.to(dtype=torch.float32))
        self.avail_actions = out["avail"]
        self.last_actions = out["action"]  # what SMAX was given: indices, or [0, 1] vectors
        return step_result(out, info={"won": out["won"]})

    def close(self) -> None:
        self.batch.carry = None


__all__ = ["SmaxConfig", "SmaxEnv", "known_maps"]
