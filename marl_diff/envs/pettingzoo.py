"""Any PettingZoo ParallelEnv (MPE via mpe2, user envs) behind the batched interface.

`num_envs` copies of the ParallelEnv are stepped in a Python loop with numpy (these envs are
CPU-bound anyway); each step's results are gathered into preallocated numpy arrays and turned
into torch tensors once (one `torch.from_numpy` per returned tensor), then moved to `device`.

Semantics (see `base.py` for the shared conventions):
- Agents are the env's `possible_agents`, in that order. Observation spaces are flattened
  (Box: reshape; Dict/Tuple/Discrete observations via `gymnasium.spaces.flatten`). A Dict
  observation with an "observation" key (the PettingZoo action-mask convention) contributes
  only its "observation" part. Heterogeneous sizes are zero-padded like `pad_stack`, so agents
  with Box and Discrete actions mix freely.
- Action spaces: bounded Boxes (scaled from [-1, 1] to the bounds), Discrete and MultiBinary.
  Discrete(n) uses the project's continuous relaxation (`base.discrete_from_logits`): the agent
  emits n scores in [-1, 1] (act_low / act_high are -1 / 1, no scaling) and the env takes the
  best-scoring *available* action (plus the space's `start`). Availability comes from the env's
  action mask, read in either PettingZoo convention: the agent's observation is a dict with an
  "action_mask" entry, or its info dict has "action_mask" (the observation form wins when both
  exist). The mask read with an observation applies to the action taken on that observation; an
  agent without a mask has every action available. `avail_actions` holds the current
  masks [B, N, A_max] (bool; True on every real entry of a Box / MultiBinary agent) for policies
  that want to mask scores themselves. MultiBinary(n) takes n scores, bit = score > 0.
- An agent that has left `env.agents` mid-episode gets zero observations and zero reward, and
  its action is not sent to the env. `info["alive"]` [B, N] (float) is 1 for each agent that
  acted on this step (was in `env.agents` before it) and 0 for one that had already left, so
  learners can mask the padded rows out of their losses.
- An env copy is done when all agents it acted for reported terminated or truncated (or
  `env.agents` became empty). The copy counts as `truncated` when at least one agent was cut by
  the time limit (truncated without being terminated) on that final step, since its team still
  had a future to bootstrap from; otherwise it is `terminated`. So a timeout is never a terminal.
  Our own `max_steps` counter, if set, truncates an episode still running after that many steps.
- Global state is `env.state()` when the env implements it, else the concatenated (unpadded)
  observations.
- Seeding: copy k is reset with `seed + k` on the first reset (or with `seed + k` for an
  explicit `reset(seed)`); auto-resets inside `step` continue each copy's own RNG stream.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np
import torch

from marl_diff.envs.base import (
    BatchedMultiAgentEnv,
    EnvSpec,
    ScenarioConfig,
    StepResult,
    discrete_from_logits,
    pad_stack,
)
from marl_diff.errors import BackendMissing, ConfigError, choices, missing_package

EXAMPLE_ENVS = (
    "mpe2.simple_spread_v3",
    "mpe2.simple_reference_v3",
    "mpe2.simple_tag_v3",
    "my_package.my_module:my_parallel_env_factory",
)

# top-level package -> pip install target, for optional packages a user may be missing
PIP_HINTS: dict[str, str] = {
    "mpe2": "marl_diff[mpe]",
    "pettingzoo": "marl_diff[mpe]",
    "supersuit": "marl_diff[mpe]",
    "gymnasium_robotics": "marl_diff[mamujoco]",
    "mujoco": "marl_diff[mamujoco]",
    "pygame": "pygame",
}

# SuperSuit wrappers that take a ParallelEnv and keep its Box spaces usable here.
SUPERSUIT_WRAPPERS: tuple[str, ...] = (
    "agent_indicator_v0",
    "clip_actions_v0",
    "clip_reward_v0",
    "delay_observations_v0",
    "dtype_v0",
    "frame_skip_v0",
    "frame_stack_v1",
    "normalize_obs_v0",
    "pad_action_space_v0",
    "pad_observations_v0",
    "scale_actions_v0",
    "sticky_actions_v0",
)


@dataclass
class PettingZooConfig(ScenarioConfig):
    # importable module with a `parallel_env` factory, or "module:factory"
    env: str = "mpe2.simple_spread_v3"
    # keyword arguments for the factory
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    # our own episode limit (0 = only the env's own limit)
    max_steps: int = 0
    # expected agent count (0 = whatever the env has); passed as env_kwargs[n_agents_kwarg]
    n_agents: int = 0
    # factory kwarg that sets the agent count ("" = only validate the count)
    n_agents_kwarg: str = "N"
    # SuperSuit wrappers applied in order: "name" or {name: ..., <kwarg>: ...}
    wrappers: list[Any] = field(default_factory=list)


class PettingZooEnv(BatchedMultiAgentEnv):
    Config = PettingZooConfig

    def __init__(
        self,
        config: PettingZooConfig,
        num_envs: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ):
        if num_envs < 1:
            raise ConfigError(f"num_envs must be at least 1, got {num_envs}.")
        if config.max_steps < 0:
            raise ConfigError(f"scenario.max_steps must be >= 0, got {config.max_steps}.")
        self.config = config
        self.num_envs = num_envs
        self.device = torch.device(device)
        self._seed = seed
        self._needs_seed = True

        factory = _load_factory(config.env)
        kwargs = _factory_kwargs(config)
        wrappers = _parse_wrappers(config.wrappers)
        self.envs = [_build(factory, kwargs, wrappers, config.env) for _ in range(num_envs)]

        first = self.envs[0]
        agents = tuple(first.possible_agents)
        if config.n_agents and len(agents) != config.n_agents:
            raise ConfigError(
                f"scenario.n_agents is {config.n_agents} but '{config.env}' created "
                f"{len(agents)} agents ({', '.join(agents)}). Set n_agents to {len(agents)}, "
                f"to 0 to accept the env's count, or check n_agents_kwarg "
                f"('{config.n_agents_kwarg}')."
            )
        self.agents = agents
        self._index = {a: i for i, a in enumerate(agents)}
        raw_obs_spaces = [first.observation_space(a) for a in agents]
        # Dict observations {"observation": ..., "action_mask": ...}: keep the observation part
        self._obs_in_dict = [_is_masked_dict(s) for s in raw_obs_spaces]
        self._obs_spaces = [
            s["observation"] if nested else s
            for s, nested in zip(raw_obs_spaces, self._obs_in_dict, strict=True)
        ]
        self._act_spaces = [first.action_space(a) for a in agents]
        obs_dims = tuple(int(gymnasium.spaces.flatdim(s)) for s in self._obs_spaces)
        act_dims, lows, highs = [], [], []
        # per agent: "box", "discrete" or "multibinary"
        self._act_kinds = [
            _action_kind(a, s, config.env) for a, s in zip(agents, self._act_spaces, strict=True)
        ]
        for agent, space in zip(agents, self._act_spaces, strict=True):
            low, high = _action_bounds(agent, space, config.env)
            act_dims.append(low.size)
            lows.append(torch.as_tensor(low, dtype=torch.float32)[None])
            highs.append(torch.as_tensor(high, dtype=torch.float32)[None])
        a_max = max(act_dims)
        # padded bound entries are -1 / 1 so scaling leaves them unchanged
        real = torch.arange(a_max)[None, :] < torch.tensor(act_dims)[:, None]
        act_low = torch.where(real, pad_stack(lows, a_max)[0], -1.0)
        act_high = torch.where(real, pad_stack(highs, a_max)[0], 1.0)
        self._box_obs = [isinstance(s, gymnasium.spaces.Box) for s in self._obs_spaces]
        self._act_shapes = [s.shape for s in self._act_spaces]
        self._act_dtypes = [s.dtype for s in self._act_spaces]

        # Probe the global state on a seeded reset of copy 0 (reset again by `reset`).
        first.reset(seed=seed)
        self._has_state = _env_state(first) is not None
        state_dim = int(np.asarray(first.state()).size) if self._has_state else int(sum(obs_dims))

        env_limit = _env_step_limit(first, kwargs)
        for name, wkwargs in wrappers:
            if name == "frame_skip_v0" and env_limit:  # each of our steps is >= n env steps
                n = wkwargs.get("num_frames", 1)
                n = min(n) if isinstance(n, list | tuple) else n
                env_limit = -(-env_limit // max(int(n), 1))
        limits = [x for x in (config.max_steps, env_limit) if x > 0]
        self.spec = EnvSpec(
            agent_names=agents,
            obs_dims=obs_dims,
            act_dims=tuple(act_dims),
            state_dim=state_dim,
            max_episode_steps=min(limits) if limits else 0,
            act_low=act_low,
            act_high=act_high,
        )
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._obs: torch.Tensor | None = None
        # action availability for the observation each copy acts on next, [B, N, A_max]
        real_entries = self.spec.act_mask().numpy()
        self._all_available = np.repeat(real_entries[None], num_envs, axis=0)
        self._masks = self._all_available.copy()

    # ---------------------------------------------------------------- interface

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if seed is None and self._needs_seed:
            seed = self._seed
        self._needs_seed = False
        obs = self._zeros_obs()
        states = self._zeros_state() if self._has_state else None
        for k, env in enumerate(self.envs):
            self._reset_copy(k, env, None if seed is None else seed + k, obs, states)
        self._steps[:] = 0
        obs_t = self._to_torch(obs)
        state_t = self._state_tensor(obs, states)
        self._obs = obs_t
        return obs_t, state_t

    @property
    def avail_actions(self) -> torch.Tensor:
        """[B, N, A_max] bool: the actions each agent may take on the current observation.

        From the env's action masks for Discrete agents; every real entry for the others.
        """
        return torch.from_numpy(self._masks.copy()).to(self.device)

    def step(self, actions: torch.Tensor) -> StepResult:
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        expected = (self.num_envs, self.spec.n_agents, self.spec.act_dim)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions must have shape {expected}, got {tuple(actions.shape)}")
        acts = self._env_actions(actions.detach())

        B, N = self.num_envs, self.spec.n_agents
        next_obs = self._zeros_obs()
        next_states = self._zeros_state() if self._has_state else None
        reward = np.zeros((B, N), dtype=np.float32)
        alive = np.zeros((B, N), dtype=np.float32)
        terminated = np.zeros(B, dtype=bool)
        truncated = np.zeros(B, dtype=bool)
        index = self._index
        for k, env in enumerate(self.envs):
            live = list(env.agents)
            action_dict = {}
            for agent in live:
                i = index[agent]
                action_dict[agent] = acts[i][k]
                alive[k, i] = 1.0
            o, r, term, trunc, infos = env.step(action_dict)
            self._write_obs(next_obs[k], o)
            self._read_masks(k, o, infos)
            for agent, value in r.items():
                reward[k, index[agent]] = value
            if next_states is not None:
                next_states[k] = np.asarray(env.state(), dtype=np.float32).reshape(-1)
            done = not env.agents or all(
                bool(term.get(a, False)) or bool(trunc.get(a, False)) for a in live
            )
            self._steps[k] += 1
            if done:
                timeout = any(
                    bool(trunc.get(a, False)) and not bool(term.get(a, False)) for a in live
                )
                truncated[k] = timeout
                terminated[k] = not timeout
            elif self.config.max_steps and self._steps[k] >= self.config.max_steps:
                truncated[k] = True

        done_any = terminated | truncated
        next_obs_t = self._to_torch(next_obs)
        next_state_t = self._state_tensor(next_obs, next_states)
        if done_any.any():
            obs = next_obs.copy()
            states = None if next_states is None else next_states.copy()
            for k in np.flatnonzero(done_any):
                self._reset_copy(k, self.envs[k], None, obs, states)
                self._steps[k] = 0
            obs_t = self._to_torch(obs)
            state_t = self._state_tensor(obs, states)
        else:
            # nothing reset: obs / state are the very same tensors as next_obs / next_state
            obs_t, state_t = next_obs_t, next_state_t
        self._obs = obs_t
        return StepResult(
            obs=obs_t,
            state=state_t,
            reward=self._to_torch(reward),
            terminated=self._to_torch(terminated),
            truncated=self._to_torch(truncated),
            next_obs=next_obs_t,
            next_state=next_state_t,
            info={"alive": self._to_torch(alive)},
        )

    def close(self) -> None:
        for env in self.envs:
            try:
                env.close()
            except Exception:  # closing is best-effort
                pass

    # ---------------------------------------------------------------- helpers

    def _zeros_obs(self) -> np.ndarray:
        return np.zeros((self.num_envs, self.spec.n_agents, self.spec.obs_dim), np.float32)

    def _zeros_state(self) -> np.ndarray:
        return np.zeros((self.num_envs, self.spec.state_dim), np.float32)

    def _env_actions(self, actions: torch.Tensor) -> list[np.ndarray]:
        """Per agent, the [B, ...] actions in the env's own form (Box scaled to its bounds,
        Discrete as the best available index, MultiBinary as bits)."""
        scaled = self.scale_actions(actions).to("cpu", torch.float32)
        out = []
        for i, kind in enumerate(self._act_kinds):
            d = self.spec.act_dims[i]
            space = self._act_spaces[i]
            scores = scaled[:, i, :d]
            if kind == "discrete":
                available = torch.from_numpy(self._masks[:, i, :d])
                choice = discrete_from_logits(scores, available).numpy() + int(space.start)
                out.append(choice.astype(space.dtype))
            elif kind == "multibinary":
                bits = (scores > 0).numpy().astype(space.dtype)
                out.append(bits.reshape(-1, *space.shape))
            else:
                a = scores.numpy().reshape(-1, *self._act_shapes[i])
                out.append(a.astype(self._act_dtypes[i], copy=False))
        return out

    def _read_masks(self, k: int, obs: dict, infos: dict | None) -> None:
        """Store copy k's action masks for the observation just returned."""
        self._masks[k] = self._all_available[k]
        for i, kind in enumerate(self._act_kinds):
            if kind != "discrete":
                continue
            agent = self.agents[i]
            mask = None
            value = obs.get(agent)
            if isinstance(value, dict):
                mask = value.get("action_mask")
            if mask is None and infos:
                info = infos.get(agent)
                if isinstance(info, dict):
                    mask = info.get("action_mask")
            if mask is not None:
                d = self.spec.act_dims[i]
                self._masks[k, i, :d] = np.asarray(mask).reshape(-1)[:d].astype(bool)

    def _reset_copy(self, k, env, seed, obs: np.ndarray, states: np.ndarray | None) -> None:
        result = env.reset(seed=seed)
        o = result[0] if isinstance(result, tuple) else result
        infos = result[1] if isinstance(result, tuple) and len(result) > 1 else None
        obs[k] = 0.0
        self._write_obs(obs[k], o)
        self._read_masks(k, o, infos)
        if states is not None:
            states[k] = np.asarray(env.state(), dtype=np.float32).reshape(-1)

    def _write_obs(self, row: np.ndarray, obs: dict) -> None:
        """Fill row [N, D_max] from one copy's {agent: obs} dict (missing agents stay zero)."""
        for agent, value in obs.items():
            i = self._index.get(agent)
            if i is None:  # extra keys some envs add (e.g. "common")
                continue
            if self._obs_in_dict[i]:
                value = value["observation"]
            if self._box_obs[i]:
                flat = np.asarray(value).reshape(-1)
            else:
                flat = gymnasium.spaces.flatten(self._obs_spaces[i], value)
            row[i, : flat.size] = flat

    def _state_tensor(self, obs: np.ndarray, states: np.ndarray | None) -> torch.Tensor:
        if states is not None:
            return self._to_torch(states)
        dims = self.spec.obs_dims
        if self.spec.homogeneous:
            flat = obs.reshape(self.num_envs, -1)
        else:
            flat = np.concatenate([obs[:, i, :d] for i, d in enumerate(dims)], axis=1)
        return self._to_torch(np.ascontiguousarray(flat))

    def _to_torch(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)


# -------------------------------------------------------------------- construction helpers


def _load_factory(target: str):
    module_name, _, attr = target.partition(":")
    attr = attr or "parallel_env"
    examples = choices(EXAMPLE_ENVS)
    if not module_name:
        raise ConfigError(f"scenario.env is empty. Examples of valid values: {examples}.")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        top = missing.split(".")[0]
        requested_top = module_name.split(".")[0]
        requested = module_name == missing or module_name.startswith(missing + ".")
        if top == "marl_diff" and not requested:
            raise  # a bug inside marl_diff, not a problem with scenario.env
        if (top and top != requested_top) or (top in PIP_HINTS and missing == top):
            # a dependency of the module (or a known optional package) cannot be imported:
            # a missing backend only if that package is genuinely not installed
            if missing_package(err) is None:
                raise
            hint = PIP_HINTS.get(top, top)
            raise BackendMissing(
                f"scenario.env '{target}' needs the package '{top}', which is not installed. "
                f"Install it with: pip install '{hint}'"
            ) from None
        raise ConfigError(
            f"cannot import module '{module_name}' named by scenario.env ({err}). "
            f"Examples of valid values: {examples}."
        ) from None
    except ImportError as err:
        if (err.name or "").split(".")[0] == "marl_diff":
            raise  # a bug inside marl_diff (or code using it wrongly): keep the traceback
        raise ConfigError(
            f"cannot import module '{module_name}' named by scenario.env: {err} "
            f"Examples of valid values: {examples}."
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(
            f"module '{module_name}' (scenario.env) has no callable '{attr}'; a PettingZoo "
            f"environment module provides `parallel_env`, or name a factory as "
            f"'module:function'. Examples of valid values: {examples}."
        )
    return factory


def _factory_kwargs(config: PettingZooConfig) -> dict[str, Any]:
    kwargs = dict(config.env_kwargs)
    if config.n_agents < 0:
        raise ConfigError(f"scenario.n_agents must be >= 0, got {config.n_agents}.")
    if config.n_agents and config.n_agents_kwarg:
        key = config.n_agents_kwarg
        if key in kwargs and kwargs[key] != config.n_agents:
            raise ConfigError(
                f"scenario.n_agents is {config.n_agents} but scenario.env_kwargs.{key} is "
                f"{kwargs[key]}; set only one of them."
            )
        kwargs[key] = config.n_agents
    return kwargs


def _parse_wrappers(items: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    parsed = []
    for item in items:
        if isinstance(item, str):
            name, kwargs = item, {}
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            kwargs = {k: v for k, v in item.items() if k != "name"}
            name = item["name"]
        else:
            raise ConfigError(
                f"bad entry in scenario.wrappers: {item!r}. Each entry is a wrapper name or a "
                f"mapping {{name: <wrapper>, <kwarg>: <value>, ...}}."
            )
        if name not in SUPERSUIT_WRAPPERS:
            raise ConfigError(
                f"unknown SuperSuit wrapper '{name}' in scenario.wrappers. "
                f"Valid choices: {choices(SUPERSUIT_WRAPPERS)}."
            )
        parsed.append((name, kwargs))
    return parsed


def _build(factory, kwargs: dict[str, Any], wrappers, target: str):
    try:
        env = factory(**kwargs)
    except TypeError as err:
        raise ConfigError(f"bad scenario.env_kwargs for '{target}': {err}") from None
    if not hasattr(env, "possible_agents") or not hasattr(env, "step"):
        raise ConfigError(
            f"'{target}' did not return a PettingZoo ParallelEnv (got {type(env).__name__})."
        )
    if not wrappers:
        return env
    try:
        import supersuit
    except ImportError as err:
        if missing_package(err) is None:
            raise  # SuperSuit is installed but broken: show the real error
        raise BackendMissing(
            f"scenario.wrappers needs SuperSuit, which cannot import '{err.name}' (not "
            f"installed). Install it with: pip install 'marl_diff[mpe]'"
        ) from None
    for name, wkwargs in wrappers:
        try:
            env = getattr(supersuit, name)(env, **wkwargs)
            for agent in env.possible_agents:  # surface space errors here, not mid-run
                env.observation_space(agent)
                env.action_space(agent)
        except (AssertionError, TypeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"SuperSuit wrapper '{name}' (scenario.wrappers) cannot wrap '{target}': {first}"
            ) from None
    return env


def _is_masked_dict(space) -> bool:
    return isinstance(space, gymnasium.spaces.Dict) and "observation" in space.spaces


def _action_kind(agent: str, space, target: str) -> str:
    if isinstance(space, gymnasium.spaces.Box):
        return "box"
    if isinstance(space, gymnasium.spaces.Discrete):
        return "discrete"
    if isinstance(space, gymnasium.spaces.MultiBinary):
        return "multibinary"
    raise ConfigError(
        f"'{target}' has action space {space} for agent '{agent}'; supported action spaces are "
        f"Box, Discrete and MultiBinary."
    )


def _action_bounds(agent: str, space, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Env bounds of the agent's [-1, 1] action entries ([-1, 1] for relaxed discrete ones)."""
    if _action_kind(agent, space, target) != "box":
        n = (
            int(space.n)
            if isinstance(space, gymnasium.spaces.Discrete)
            else int(np.prod(space.shape))
        )
        return -np.ones(n), np.ones(n)
    low = np.asarray(space.low, dtype=np.float64).reshape(-1)
    high = np.asarray(space.high, dtype=np.float64).reshape(-1)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ConfigError(
            f"'{target}' has an unbounded action space for agent '{agent}' ({space}); actions "
            f"are scaled from [-1, 1] to the env's bounds, so they must be finite."
        )
    return low, high


def _env_state(env) -> np.ndarray | None:
    try:
        return np.asarray(env.state())
    except (NotImplementedError, AttributeError):
        return None


def _env_step_limit(env, kwargs: dict[str, Any]) -> int:
    for source in (kwargs, getattr(getattr(env, "unwrapped", env), "__dict__", {})):
        for key in ("max_cycles", "max_steps", "max_episode_steps"):
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return 0
