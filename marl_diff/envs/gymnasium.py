"""Single-agent Gymnasium tasks as the N=1 case of the batched multi-agent interface.

Any Gymnasium env with a Box observation and a Box action space runs in a Gymnasium vector env
(sync or async) with same-step auto-reset, so a finished copy's true final observation arrives in
`info["final_obs"]` while the returned observation already starts the next episode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from marl_diff.envs.base import BatchedMultiAgentEnv, EnvSpec, ScenarioConfig, StepResult
from marl_diff.errors import ConfigError

VECTORIZATION_MODES = ("sync", "async")


@dataclass
class Config(ScenarioConfig):
    env_id: str = "Pendulum-v1"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    max_steps: int = 0  # 0 = the env's registered time limit
    vectorization: str = "sync"


def quiet_mujoco_warnings() -> None:
    """Route MuJoCo's C-level warnings through Python `warnings`, dropping the 'settotalmass'
    deprecation that every Gymnasium MuJoCo model load triggers with mujoco >= 4 (and which would
    otherwise also be appended to MUJOCO_LOG.TXT in the working directory)."""
    try:
        import mujoco
    except ImportError:
        return
    if mujoco.get_mju_user_warning() is not None:
        return  # someone (maybe us) already installed a handler

    def handler(message: str) -> None:
        if "settotalmass" in message:
            return
        import warnings

        warnings.warn(f"MuJoCo: {message.strip()}", RuntimeWarning, stacklevel=1)

    mujoco.set_mju_user_warning(handler)


class DropInfo(gym.Wrapper):
    """Returns empty info dicts: the vector env would otherwise batch every per-step info key
    (Gymnasium MuJoCo envs report about ten), which costs more than the bookkeeping is worth."""

    def reset(self, *, seed=None, options=None):
        obs, _ = self.env.reset(seed=seed, options=options)
        return obs, {}

    def step(self, action):
        obs, reward, terminated, truncated, _ = self.env.step(action)
        return obs, reward, terminated, truncated, {}


def build_vector_env(
    env_fns: Sequence[Callable[[], gym.Env]], vectorization: str
) -> gym.vector.VectorEnv:
    """A Gymnasium vector env over `env_fns` with same-step auto-reset."""
    if vectorization not in VECTORIZATION_MODES:
        raise ConfigError(
            f"bad value for 'scenario.vectorization': '{vectorization}'. "
            f"Valid choices: {', '.join(VECTORIZATION_MODES)}."
        )
    mode = gym.vector.AutoresetMode.SAME_STEP
    if vectorization == "async":
        return gym.vector.AsyncVectorEnv(list(env_fns), autoreset_mode=mode, copy=False)
    # copy=False: callers copy the batch into their own torch buffer before the next step.
    return gym.vector.SyncVectorEnv(list(env_fns), autoreset_mode=mode, copy=False)


def final_observations(obs: np.ndarray, info: dict, done: np.ndarray) -> np.ndarray:
    """[B, D] successor observations: `obs` with the true final obs where an episode ended."""
    if not done.any():
        return obs
    next_obs = obs.copy()
    final = info.get("final_obs")
    mask = info.get("_final_obs", done)
    if final is None:
        raise RuntimeError("vector env did not report final observations (autoreset mode?)")
    for i in np.flatnonzero(mask):
        next_obs[i] = np.asarray(final[i]).reshape(next_obs.shape[1:])
    return next_obs


def to_torch(blocks: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """One numpy -> torch conversion for everything a step returns: the arrays are packed into
    one float32 buffer, moved once, and handed back as contiguous views of their own shapes."""
    flat = np.concatenate([np.ravel(block) for block in blocks], dtype=np.float32)
    packed = torch.from_numpy(flat).to(device)
    views, start = [], 0
    for block in blocks:
        views.append(packed[start : start + block.size].view(block.shape))
        start += block.size
    return views


def done_flags(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[2, B] float (terminated, truncated) -> two [B] bool tensors."""
    terminated, truncated = (flags > 0.5).unbind(0)
    return terminated, truncated


def _make_single(env_id: str, max_steps: int, env_kwargs: dict[str, Any]) -> gym.Env:
    quiet_mujoco_warnings()
    kwargs = dict(env_kwargs)
    if max_steps > 0:
        kwargs["max_episode_steps"] = max_steps
    return DropInfo(gym.make(env_id, **kwargs))


class SingleAgentVectorEnv(BatchedMultiAgentEnv):
    """One agent over a Gymnasium vector env with same-step auto-reset: the reset, step and close
    every such backend shares. Subclasses build `_venv`, `spec`, `_act_shape`, `_act_dtype` and
    `_seed` (used by the first reset), and report per-env episode outcomes in `outcomes`."""

    _venv: gym.vector.VectorEnv | None
    _seed: int | None

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if seed is None:
            seed, self._seed = self._seed, None
        obs, _ = self._venv.reset(seed=seed)
        obs = np.asarray(obs).reshape(self.num_envs, -1)
        t = torch.from_numpy(np.array(obs, dtype=np.float32)).to(self.device)  # own copy
        return t[:, None, :], t

    def outcomes(
        self, obs: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray, done: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Per-env outcomes [B] of this step, name -> values (`StepResult.info`); none here."""
        return {}

    def step(self, actions: torch.Tensor) -> StepResult:
        act = self.scale_actions(actions.detach().cpu())[:, 0, :].numpy()
        act = act.astype(self._act_dtype, copy=False).reshape((self.num_envs, *self._act_shape))
        obs, reward, terminated, truncated, info = self._venv.step(act)
        obs = np.asarray(obs).reshape(self.num_envs, -1)
        done = np.logical_or(terminated, truncated)
        next_obs = final_observations(obs, info, done)
        outcomes = self.outcomes(obs, next_obs, np.asarray(terminated), done)
        o, no, r, flags, *values = to_torch(
            [obs, next_obs, reward, np.stack([terminated, truncated]), *outcomes.values()],
            self.device,
        )
        te, tr = done_flags(flags)
        return StepResult(
            obs=o[:, None, :],
            state=o,
            reward=r[:, None],
            terminated=te,
            truncated=tr,
            next_obs=no[:, None, :],
            next_state=no,
            info=dict(zip(outcomes, values, strict=True)),
        )

    def close(self) -> None:
        venv = getattr(self, "_venv", None)
        if venv is not None:
            venv.close()
            self._venv = None


class GymnasiumEnv(SingleAgentVectorEnv):
    """`num_envs` copies of one single-agent Gymnasium task, seen as one agent."""

    Config = Config

    def __init__(self, config: Config, num_envs: int, device: torch.device, seed: int):
        self.config = config
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self._seed: int | None = seed
        if config.max_steps < 0:
            raise ConfigError("'scenario.max_steps' must be >= 0 (0 = the env's own limit).")
        try:
            registered = gym.spec(config.env_id)
        except gym.error.Error as err:
            raise ConfigError(
                f"unknown Gymnasium env_id '{config.env_id}' ({err}). "
                "Use a registered id such as 'Pendulum-v1' or 'Hopper-v5'."
            ) from None
        make = functools.partial(
            _make_single, config.env_id, config.max_steps, dict(config.env_kwargs)
        )
        try:
            probe = make()
        except (gym.error.Error, TypeError, ImportError) as err:
            raise ConfigError(
                f"could not create Gymnasium env '{config.env_id}' with env_kwargs "
                f"{dict(config.env_kwargs)}: {err}"
            ) from None
        act_space, obs_space = probe.action_space, probe.observation_space
        probe.close()
        if not isinstance(act_space, gym.spaces.Box):
            raise ConfigError(
                f"Gymnasium env '{config.env_id}' has a {type(act_space).__name__} action space; "
                "only continuous (Box) action spaces are supported."
            )
        if not isinstance(obs_space, gym.spaces.Box):
            raise ConfigError(
                f"Gymnasium env '{config.env_id}' has a {type(obs_space).__name__} observation "
                "space; only Box observation spaces are supported."
            )
        low = np.asarray(act_space.low, dtype=np.float64).reshape(-1)
        high = np.asarray(act_space.high, dtype=np.float64).reshape(-1)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ConfigError(
                f"Gymnasium env '{config.env_id}' has unbounded actions; actions are scaled from "
                "[-1, 1] to the action space bounds, so they must be finite."
            )
        self._act_shape = act_space.shape
        self._act_dtype = act_space.dtype
        obs_dim = int(np.prod(obs_space.shape))
        act_dim = int(low.size)
        max_steps = config.max_steps or int(registered.max_episode_steps or 0)
        self.spec = EnvSpec(
            agent_names=("agent_0",),
            obs_dims=(obs_dim,),
            act_dims=(act_dim,),
            state_dim=obs_dim,
            max_episode_steps=max_steps,
            act_low=torch.tensor(low, dtype=torch.float32)[None, :],
            act_high=torch.tensor(high, dtype=torch.float32)[None, :],
        )
        self._venv = build_vector_env([make] * self.num_envs, config.vectorization)
