"""Isaac Lab backend: multi-agent `DirectMARLEnv` tasks (e.g. Isaac-Cart-Double-Pendulum-Direct-v0,
Isaac-Shadow-Hand-Over-Direct-v0) behind the batched interface.

Isaac Sim and Isaac Lab come from NVIDIA's own package index, not PyPI, so they are not part of
any extra and IsaacLab runs are not exercised in CI. Importing this module never needs them: only
`IsaacLabEnv(config, num_envs, device, seed)` imports them, in the order Isaac Lab requires (the
app launcher first, headless by default, then `isaaclab_tasks`, `parse_env_cfg` and `gym.make`),
and raises `BackendMissing` with install instructions when they are missing.

All conversion logic lives in `IsaacLabEnv` itself and needs nothing but an object that follows
the documented `DirectMARLEnv` interface; `IsaacLabEnv.from_marl_env(env)` wraps any such object
(the tests use a small torch-only stand-in). What the adapter relies on:
- `possible_agents` (fixed order of the agent axis), `observation_spaces` / `action_spaces`
  (dicts of gymnasium spaces per agent), `state_space` (None when the task has no state),
  `num_envs`, `device`, `max_episode_length`, and `cfg.state_space` (a negative int means "the
  state is the concatenated observations").
- `reset(seed=...) -> (obs_dict, extras)`, `step(action_dict) -> (obs_dict, reward_dict,
  terminated_dict, time_out_dict, extras)` and `state()`, all torch tensors [num_envs, ...] on
  the sim device.

Conventions (see `base.py` for the shared ones):
- Observations: Box spaces are flattened; Discrete / MultiDiscrete observations (integer tensors)
  become their float index values. Composite (Dict / Tuple) observations are refused. An agent
  missing from the returned observation dict (Isaac Lab's `agents` can shrink) gets zeros and
  zero reward.
- Actions: a Box agent with finite bounds gets the [-1, 1] actions scaled to its bounds. A Box
  with infinite bounds, which is what Isaac Lab builds from an int action spec (both named tasks
  do this and scale actions themselves), gets the [-1, 1] actions unchanged. A Discrete(n) agent
  is presented as n action scores in [-1, 1] and receives `discrete_from_logits(scores)` as an
  int64 tensor [B, 1] (plus the space's `start`), the shape Isaac Lab samples for Discrete
  spaces; a MultiDiscrete agent gets one score block per component and an int64 [B, k] tensor.
  Isaac Lab has no documented action-availability mask, so all actions count as available.
- Done flags: Isaac Lab resets an env when *all* its agents terminated or *all* timed out
  (`reset_buf = prod(terminated) | prod(time_outs)`); the adapter reports the same envs as done,
  `terminated` = all agents terminated, `truncated` = all timed out and not terminated, so a
  time-out is never a terminal.
- Auto-reset: Isaac Lab resets finished envs inside `step` before computing observations, so the
  returned observations of those envs are already the first ones of the next episode (`obs`).
  The true final observation exists only where the task config has `compute_final_obs` (newer
  Isaac Lab releases, opt-in; the constructor switches it on when the field exists), published
  per agent as `extras[agent]["final_obs"]`; then `next_obs` holds it for the envs that finished.
  Otherwise `next_obs` of a finished env is its reset observation: terminal transitions are
  unaffected (they do not bootstrap), but a time-out bootstraps from the next episode's first
  observation, a known Isaac Lab limitation shared by its own RL wrappers. `next_state` uses the
  final observations when the state is their concatenation, else the post-reset `state()`.
- State: `state()` when the task defines its own; the concatenated (unpadded) observations when
  it has none or uses `state_space = -1`.
- Episode limit: `max_steps > 0` sets the task's `episode_length_s` so `max_episode_length` equals
  it; the task decides when the time-out fires (many Direct tasks time out one step earlier).
- Isaac Lab allows one simulation (one `DirectMARLEnv`) per process, so a second IsaacLabEnv in
  the same process fails with a ConfigError until the first is closed; `single_instance` tells
  the runner to evaluate on the training env.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
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
from marl_diff.errors import BackendMissing, ConfigError, missing_package

INSTALL_DOCS = "https://isaac-sim.github.io/IsaacLab/main/source/setup/installation/index.html"
_REQUIRED_MODULES = ("isaacsim", "isaaclab", "isaaclab_tasks")


@dataclass
class IsaacLabConfig(ScenarioConfig):
    backend: str = "isaaclab"
    default_runner: str = "vmas"
    task: str = "Isaac-Cart-Double-Pendulum-Direct-v0"  # gym id of a DirectMARLEnv task
    headless: bool = True  # start the Isaac Sim app without a window
    # Set on the parsed env cfg before the env is built, by attribute path, e.g.
    # {"scene.env_spacing": 6.0} or {"scene": {"env_spacing": 6.0}}.
    env_cfg_overrides: dict[str, Any] = field(default_factory=dict)
    max_steps: int = 0  # episode limit in env steps; 0 keeps the task's episode_length_s


# ------------------------------------------------------------------------------ per-agent spaces


@dataclass(frozen=True)
class _ActionSlot:
    """How one agent's padded [-1, 1] action row becomes what its action space expects."""

    kind: str  # "box" | "discrete" | "multidiscrete"
    dim: int  # width of the agent's row in the padded action tensor
    shape: tuple[int, ...] = ()  # Box: the env's action shape
    nvec: tuple[int, ...] = ()  # Discrete (n,) / MultiDiscrete component sizes
    start: tuple[int, ...] = ()  # the spaces' `start` offsets
    low: tuple[float, ...] = ()  # Box: bounds actions are scaled to ([-1, 1] where unbounded)
    high: tuple[float, ...] = ()


def _obs_dim(agent: str, space: Any) -> int:
    if isinstance(space, gymnasium.spaces.Box):
        return max(1, int(np.prod(space.shape)))
    if isinstance(space, gymnasium.spaces.Discrete):
        return 1
    if isinstance(space, gymnasium.spaces.MultiDiscrete):
        return int(np.prod(space.shape))
    raise ConfigError(
        f"Isaac Lab agent '{agent}' has observation space {space}; only Box, Discrete and "
        f"MultiDiscrete observations are supported (not composite Dict / Tuple spaces)."
    )


def _action_slot(agent: str, space: Any) -> _ActionSlot:
    if isinstance(space, gymnasium.spaces.Box):
        low = np.asarray(space.low, dtype=np.float64).reshape(-1)
        high = np.asarray(space.high, dtype=np.float64).reshape(-1)
        bounded = np.isfinite(low) & np.isfinite(high)
        # Unbounded dimensions (Isaac Lab's int specs) take the [-1, 1] action as it is.
        low = np.where(bounded, low, -1.0)
        high = np.where(bounded, high, 1.0)
        return _ActionSlot(
            kind="box",
            dim=max(1, low.size),
            shape=tuple(int(s) for s in space.shape),
            low=tuple(float(x) for x in low),
            high=tuple(float(x) for x in high),
        )
    if isinstance(space, gymnasium.spaces.Discrete):
        return _ActionSlot(
            kind="discrete", dim=int(space.n), nvec=(int(space.n),), start=(int(space.start),)
        )
    if isinstance(space, gymnasium.spaces.MultiDiscrete) and len(space.shape) == 1:
        nvec = tuple(int(n) for n in space.nvec)
        start = tuple(int(s) for s in np.broadcast_to(space.start, space.shape))
        return _ActionSlot(kind="multidiscrete", dim=sum(nvec), nvec=nvec, start=start)
    raise ConfigError(
        f"Isaac Lab agent '{agent}' has action space {space}; only Box, Discrete and 1-D "
        f"MultiDiscrete action spaces are supported."
    )


def _state_dim(space: Any) -> int:
    if isinstance(space, gymnasium.spaces.Box):
        return max(1, int(np.prod(space.shape)))
    raise ConfigError(
        f"Isaac Lab state space {space} is not supported; the state must be a Box (a flat "
        f"tensor [num_envs, S])."
    )


# ------------------------------------------------------------------------------ the adapter


class IsaacLabEnv(BatchedMultiAgentEnv):
    Config = IsaacLabConfig
    single_instance = True

    def __init__(self, config: IsaacLabConfig, num_envs: int, device: torch.device, seed: int):
        marl_env = _make_isaaclab_env(config, int(num_envs), torch.device(device), int(seed))
        self._attach(marl_env, config, torch.device(device))

    @classmethod
    def from_marl_env(
        cls,
        marl_env: Any,
        config: IsaacLabConfig | None = None,
        device: torch.device | str | None = None,
    ) -> IsaacLabEnv:
        """Wrap an already built object that follows the `DirectMARLEnv` interface (it may be a
        gymnasium wrapper around one). Results are moved to `device` (default: the env's)."""
        self = cls.__new__(cls)
        self._attach(marl_env, config or IsaacLabConfig(), device)
        return self

    def _attach(self, marl_env: Any, config: IsaacLabConfig, device) -> None:
        self.config = config
        self.env = marl_env  # reset/step go through any gymnasium wrappers gym.make added
        self.raw = getattr(marl_env, "unwrapped", marl_env)  # spaces, state() and settings
        raw = self.raw
        self.num_envs = int(raw.num_envs)
        self.env_device = torch.device(str(raw.device))
        self.device = torch.device(device) if device is not None else self.env_device

        self.agents: tuple[str, ...] = tuple(raw.possible_agents)
        if not self.agents:
            raise ConfigError(f"Isaac Lab task '{config.task}' has no agents.")
        obs_dims = tuple(_obs_dim(a, raw.observation_spaces[a]) for a in self.agents)
        self._slots = tuple(_action_slot(a, raw.action_spaces[a]) for a in self.agents)
        act_dims = tuple(slot.dim for slot in self._slots)

        width = max(act_dims)
        act_low = -torch.ones(len(self.agents), width)
        act_high = torch.ones(len(self.agents), width)
        for i, slot in enumerate(self._slots):
            if slot.kind == "box":
                act_low[i, : slot.dim] = torch.tensor(slot.low)
                act_high[i, : slot.dim] = torch.tensor(slot.high)

        cfg_state = getattr(getattr(raw, "cfg", None), "state_space", None)
        state_space = getattr(raw, "state_space", None)
        # Isaac Lab's own state() for state_space = -1 is exactly the concatenated observations;
        # building it here as well lets next_state use the final observations.
        self._state_from_obs = state_space is None or (
            isinstance(cfg_state, int) and not isinstance(cfg_state, bool) and cfg_state < 0
        )
        state_dim = sum(obs_dims) if self._state_from_obs else _state_dim(state_space)

        self.spec = EnvSpec(
            agent_names=self.agents,
            obs_dims=obs_dims,
            act_dims=act_dims,
            state_dim=state_dim,
            max_episode_steps=int(raw.max_episode_length),
            act_low=act_low.to(self.device),
            act_high=act_high.to(self.device),
        )
        self._obs_width = max(obs_dims)
        self.final_obs_available = False  # set once a step has shown extras[agent]["final_obs"]

    # -- interface ----------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        obs_dict, _extras = self.env.reset(seed=seed)
        return self._pack(obs_dict)

    def step(self, actions: torch.Tensor) -> StepResult:
        obs_dict, rewards, terminated_dict, time_out_dict, extras = self.env.step(
            self.to_env_actions(actions)
        )
        obs, state = self._pack(obs_dict)
        reward = torch.stack([self._per_env(rewards, a, torch.float32) for a in self.agents], 1)
        terminated = self._all_agents(terminated_dict)
        truncated = self._all_agents(time_out_dict) & ~terminated
        done = terminated | truncated

        next_obs, next_state = obs, state
        if bool(done.any()):
            final = self._final_obs(extras)
            if final is not None:
                final_obs, final_state = self._pack(final, with_state=self._state_from_obs)
                next_obs = torch.where(done[:, None, None], final_obs, obs)
                if final_state is not None:
                    next_state = torch.where(done[:, None], final_state, state)

        return StepResult(
            obs=obs,
            state=state,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            next_obs=next_obs,
            next_state=next_state,
            info=self._info(extras),
        )

    def close(self) -> None:
        env, self.env = getattr(self, "env", None), None
        if env is None:
            return
        try:
            env.close()
        finally:
            if env in _LIVE:  # frees the process's single Isaac Lab slot
                _LIVE.remove(env)

    # -- conversions --------------------------------------------------------------------------

    def to_env_actions(self, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """[B, N, A] actions in [-1, 1] -> {agent: tensor in the agent's action space}."""
        scaled = self.scale_actions(actions)  # identity on unbounded and discrete rows
        out: dict[str, torch.Tensor] = {}
        for i, (agent, slot) in enumerate(zip(self.agents, self._slots, strict=True)):
            row = scaled[:, i, : slot.dim]
            if slot.kind == "box":
                value = row.reshape(self.num_envs, *slot.shape).float()
            elif slot.kind == "discrete":
                value = (discrete_from_logits(row) + slot.start[0]).unsqueeze(-1)
            else:
                blocks = torch.split(row, list(slot.nvec), dim=-1)
                index = [
                    discrete_from_logits(b) + s for b, s in zip(blocks, slot.start, strict=True)
                ]
                value = torch.stack(index, dim=-1)
            out[agent] = value.to(self.env_device)
        return out

    def _pack(
        self, obs_dict: Mapping[str, Any], with_state: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        per_agent = []
        for agent, dim in zip(self.agents, self.spec.obs_dims, strict=True):
            value = obs_dict.get(agent)
            if value is None:  # the agent is not active in this step
                per_agent.append(torch.zeros(self.num_envs, dim, device=self.device))
            else:
                per_agent.append(
                    torch.as_tensor(value)
                    .reshape(self.num_envs, dim)
                    .to(self.device, torch.float32)
                )
        obs = pad_stack(per_agent, self._obs_width)
        if not with_state:
            return obs, None
        if self._state_from_obs:
            return obs, torch.cat(per_agent, dim=-1)
        state = self.raw.state()
        if state is None:
            raise ConfigError(
                f"Isaac Lab task '{self.config.task}' declares a state space but state() "
                f"returned None."
            )
        state = torch.as_tensor(state).reshape(self.num_envs, self.spec.state_dim)
        return obs, state.to(self.device, torch.float32).clone()

    def _per_env(self, values: Mapping[str, Any], agent: str, dtype) -> torch.Tensor:
        value = values.get(agent)
        if value is None:
            return torch.zeros(self.num_envs, dtype=dtype, device=self.device)
        return torch.as_tensor(value).reshape(self.num_envs).to(self.device, dtype)

    def _all_agents(self, flags: Mapping[str, Any]) -> torch.Tensor:
        """Isaac Lab's reset rule: an env is done when every agent in the dict says so."""
        if not flags:
            return torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        per_agent = [
            torch.as_tensor(v).reshape(self.num_envs).to(self.device, torch.bool)
            for v in flags.values()
        ]
        return torch.stack(per_agent, dim=0).all(dim=0)

    def _final_obs(self, extras: Any) -> dict[str, Any] | None:
        if not isinstance(extras, Mapping):
            return None
        final = {}
        for agent in self.agents:
            agent_extras = extras.get(agent)
            if isinstance(agent_extras, Mapping) and agent_extras.get("final_obs") is not None:
                final[agent] = agent_extras["final_obs"]
        self.final_obs_available = bool(final)
        return final or None

    def _info(self, extras: Any) -> dict[str, torch.Tensor]:
        """Per-env tensors in `extras`: per-agent keys present for every agent -> [B, N],
        top-level keys -> [B]. Scalars (e.g. the "log" means) and final_obs are left out."""
        out: dict[str, torch.Tensor] = {}
        if not isinstance(extras, Mapping):
            return out

        def per_env(value) -> bool:
            return isinstance(value, torch.Tensor) and value.numel() == self.num_envs

        per_agent = [extras.get(a) for a in self.agents]
        if all(isinstance(e, Mapping) for e in per_agent):
            for key, value in per_agent[0].items():
                if key == "final_obs" or not per_env(value):
                    continue
                values = [e.get(key) for e in per_agent]
                if all(per_env(v) for v in values):
                    out[key] = torch.stack(
                        [v.reshape(self.num_envs).to(self.device, torch.float32) for v in values], 1
                    )
        for key, value in extras.items():
            if key not in self.agents and per_env(value):
                out[str(key)] = value.reshape(self.num_envs).to(self.device, torch.float32)
        return out


# ------------------------------------------------------------------------------ construction

_LIVE: list[Any] = []  # the one Isaac Lab env this process may hold
_APP: list[Any] = []  # the Isaac Sim app, launched once per process


def missing_modules() -> list[str]:
    """The Isaac Sim / Isaac Lab modules this interpreter cannot import."""
    missing = []
    for name in _REQUIRED_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def install_hint(missing: list[str]) -> str:
    return (
        f"the 'isaaclab' backend needs NVIDIA Isaac Sim and Isaac Lab, which are not installed "
        f"(cannot import: {', '.join(missing)}). They come from NVIDIA's package index, not PyPI, "
        f"and need Linux, an NVIDIA GPU and the Python version of the release (3.11 for Isaac "
        f"Lab 2.2+ with Isaac Sim 5, 3.10 for Isaac Lab 2.0/2.1 with Isaac Sim 4.5). For example: "
        f"pip install 'isaaclab[isaacsim,all]==2.2.0' --extra-index-url https://pypi.nvidia.com "
        f"(or pip install 'isaacsim[all,extscache]==5.0.0' --extra-index-url "
        f"https://pypi.nvidia.com, then pip install isaaclab, or Isaac Lab from source). See "
        f"{INSTALL_DOCS}. IsaacLab scenarios are not exercised in CI."
    )


def apply_overrides(cfg: Any, overrides: Mapping[str, Any], task: str = "?") -> None:
    """Set `overrides` on an Isaac Lab config object by attribute path ("a.b.c": value, or nested
    mappings that descend into config objects). Unknown attributes raise ConfigError."""
    for key, value in overrides.items():
        parts = str(key).split(".")
        target = cfg
        for depth, part in enumerate(parts[:-1]):
            target = _child(target, part, ".".join(parts[: depth + 1]), task)
        last = parts[-1]
        current = _child(target, last, str(key), task)
        if isinstance(value, Mapping) and not isinstance(current, Mapping) and current is not None:
            apply_overrides(current, value, task)  # descend into a nested config object
        elif isinstance(target, dict):
            target[last] = value
        else:
            setattr(target, last, value)


def _child(obj: Any, name: str, path: str, task: str) -> Any:
    if isinstance(obj, dict):
        if name in obj:
            return obj[name]
    elif hasattr(obj, name):
        return getattr(obj, name)
    raise ConfigError(
        f"scenario.env_cfg_overrides: the env config of Isaac Lab task '{task}' has no "
        f"attribute '{path}'."
    )


def _sim_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index or 0}"
    return str(device)


def _make_isaaclab_env(config: IsaacLabConfig, num_envs: int, device: torch.device, seed: int):
    missing = missing_modules()
    if missing:
        raise BackendMissing(install_hint(missing))
    if config.max_steps < 0:
        raise ConfigError(f"scenario.max_steps must be >= 0, got {config.max_steps}.")
    if _LIVE:
        raise ConfigError(
            "Isaac Lab runs one simulation per process and an IsaacLab env is already open; "
            "close it before building another (e.g. evaluate on the training env)."
        )
    sim_device = _sim_device(device)
    try:
        from isaaclab.app import AppLauncher  # must start before any other isaaclab import

        if not _APP:
            launcher = AppLauncher(headless=bool(config.headless), device=sim_device)
            _APP.append(launcher.app)

        import isaaclab_tasks  # noqa: F401  (registers the Isaac-* gym ids)
        from isaaclab.envs import DirectMARLEnv
        from isaaclab_tasks.utils import parse_env_cfg
    except ImportError as err:
        package = missing_package(err)
        if package is None:
            raise  # installed but broken (or a bug here): not a missing backend
        raise BackendMissing(install_hint([package])) from None

    try:
        env_cfg = parse_env_cfg(config.task, device=sim_device, num_envs=num_envs)
    except (gymnasium.error.Error, KeyError, ValueError, AttributeError) as err:
        raise ConfigError(
            f"unknown or unloadable Isaac Lab task '{config.task}' (scenario.task): "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}. "
            f"Multi-agent tasks include Isaac-Cart-Double-Pendulum-Direct-v0 and "
            f"Isaac-Shadow-Hand-Over-Direct-v0."
        ) from None
    env_cfg.seed = seed
    if config.max_steps > 0:
        step_dt = float(env_cfg.sim.dt) * int(env_cfg.decimation)
        # ceil(episode_length_s / step_dt) == max_steps, safe against rounding either way
        env_cfg.episode_length_s = (config.max_steps - 0.5) * step_dt
    if hasattr(env_cfg, "compute_final_obs"):
        env_cfg.compute_final_obs = True  # true final observations for time-out bootstrapping
    apply_overrides(env_cfg, config.env_cfg_overrides, config.task)

    env = gymnasium.make(config.task, cfg=env_cfg)
    if not isinstance(env.unwrapped, DirectMARLEnv):
        env.close()
        raise ConfigError(
            f"Isaac Lab task '{config.task}' is a single-agent task "
            f"({type(env.unwrapped).__name__}); the isaaclab backend runs multi-agent "
            f"DirectMARLEnv tasks such as Isaac-Cart-Double-Pendulum-Direct-v0."
        )
    if config.max_steps > 0 and env.unwrapped.max_episode_length != config.max_steps:
        length = env.unwrapped.max_episode_length
        env.close()
        raise ConfigError(
            f"scenario.max_steps={config.max_steps} gave an episode of {length} steps; "
            f"set env_cfg_overrides.episode_length_s instead."
        )
    _LIVE.append(env)
    return env


__all__ = ["IsaacLabConfig", "IsaacLabEnv", "apply_overrides", "install_hint", "missing_modules"]
