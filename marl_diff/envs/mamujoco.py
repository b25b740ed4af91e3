"""MaMuJoCo (gymnasium_robotics.mamujoco_v1) behind the batched multi-agent interface.

Fast path: instead of stepping `num_envs` PettingZoo envs that each rebuild every agent's local
observation in Python, this runs the single-agent MuJoCo env that MaMuJoCo factorises (e.g.
"Ant-v5") in a Gymnasium vector env, and builds all local observations for the whole batch with
one precomputed numpy gather (plus a clip) on the stacked batch,
then hands everything to torch in a single conversion.

Each copy is wrapped so its observation vector is `X = [single-agent obs | raw MuJoCo data]`,
where the raw part holds `data.qpos`, `data.qvel` and whichever of `cinert`, `cvel`,
`qfrc_actuator`, `cfrc_ext` the scenario's observation categories use. The single-agent obs is
the global state (what MaMuJoCo's `state()` returns). The raw data is needed because local
observations are not always a slice of the single-agent obs: Walker2d's local observations carry
unclipped joint velocities while its single-agent obs clips them to [-10, 10], and the
ManySegmentAnt factorisation reads the world body's contact force, which the single-agent obs
drops. (gymnasium_robotics' own `map_global_state_to_local_observations` is wrong for both.)

The gather indices into `X` and the per-entry clip bounds are found by running MaMuJoCo's own
observation builder (`obsk.build_obs`, the code the genuine env uses) on probe data whose entries
encode their own position, so every scenario's factorisation -- including its `extra_obs`
overrides and clipping `body_fn`s -- is reproduced without hand-written tables. The result is then
checked against the genuine env's observations on real states; if a scenario's builder is not a
pure gather + clip of those fields (e.g. Reacher's fingertip distance), the wrapper instead
appends the genuine local observations computed by MaMuJoCo itself in each copy (slower, still
correct).
"""

from __future__ import annotations

import functools
import os
import tempfile
import types
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from marl_diff.envs.base import BatchedMultiAgentEnv, EnvSpec, ScenarioConfig, StepResult
from marl_diff.envs.gymnasium import (
    DropInfo,
    build_vector_env,
    done_flags,
    final_observations,
    quiet_mujoco_warnings,
    to_torch,
)
from marl_diff.errors import ConfigError, unknown

FIXED_SCENARIOS = (
    "Ant",
    "HalfCheetah",
    "Hopper",
    "HumanoidStandup",
    "Humanoid",
    "Reacher",
    "Swimmer",
    "Pusher",
    "Walker2d",
    "InvertedPendulum",
    "InvertedDoublePendulum",
    "CoupledHalfCheetah",
)
MANY_SEGMENT = {"ManySegmentAnt": "Ant-v5", "ManySegmentSwimmer": "Swimmer-v5"}
SCENARIOS = FIXED_SCENARIOS + tuple(MANY_SEGMENT)
# MuJoCo data fields an observation category can read, in the order they are laid out in X.
RAW_FIELDS = ("qpos", "qvel", "cinert", "cvel", "qfrc_actuator", "cfrc_ext")


@dataclass
class Config(ScenarioConfig):
    scenario: str = "Ant"
    agent_conf: str = "2x4"
    agent_obsk: int = 1
    n_agents: int = 0  # 0 = derived from agent_conf
    segments_per_agent: int = 0  # ManySegment*: 0 = taken from agent_conf
    max_steps: int = 1000
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    vectorization: str = "sync"


def resolve_agent_conf(config: Config) -> str:
    """The agent_conf to build, applying n_agents / segments_per_agent for ManySegment*."""
    conf = str(config.agent_conf)
    if config.scenario not in MANY_SEGMENT:
        if config.segments_per_agent:
            raise ConfigError(
                f"'scenario.segments_per_agent' only applies to {', '.join(MANY_SEGMENT)}; "
                f"scenario '{config.scenario}' has a fixed body."
            )
        return conf
    try:
        agents_str, segs_str = conf.lower().split("x")
        n_agents, segs = int(agents_str), int(segs_str)
    except ValueError:
        raise ConfigError(
            f"bad 'scenario.agent_conf' '{conf}' for {config.scenario}: expected "
            "'<agents>x<segments per agent>', e.g. '2x3'."
        ) from None
    if config.n_agents:
        n_agents = config.n_agents
    if config.segments_per_agent:
        segs = config.segments_per_agent
    if n_agents < 1 or segs < 1:
        raise ConfigError(
            f"{config.scenario} needs at least one agent and one segment per agent "
            f"(got {n_agents} agents x {segs} segments)."
        )
    return f"{n_agents}x{segs}"


def make_single_agent_env(
    scenario: str, agent_conf: str, max_steps: int, env_kwargs: dict[str, Any]
) -> gym.Env:
    """The single-agent MuJoCo env MaMuJoCo factorises (built like MaMuJoCo builds it, except that
    ManySegment* assets go to a private temporary file, so parallel workers never collide)."""
    quiet_mujoco_warnings()
    kwargs = dict(env_kwargs)
    if max_steps > 0:
        kwargs["max_episode_steps"] = max_steps
    if scenario in MANY_SEGMENT:
        from gymnasium_robotics.envs.multiagent_mujoco import many_segment_ant, many_segment_swimmer

        agents_str, segs_str = agent_conf.lower().split("x")
        n_segs = int(agents_str) * int(segs_str)
        gen = many_segment_ant if scenario == "ManySegmentAnt" else many_segment_swimmer
        handle, path = tempfile.mkstemp(suffix=".xml", prefix=f"marl_diff_{scenario}_")
        os.close(handle)
        try:
            gen.gen_asset(n_segs=n_segs, asset_path=path)
            return gym.make(MANY_SEGMENT[scenario], xml_file=path, **kwargs)
        finally:
            os.remove(path)
    if scenario == "CoupledHalfCheetah":
        from gymnasium_robotics.envs.multiagent_mujoco.coupled_half_cheetah import (
            CoupledHalfCheetahEnv,
        )

        if kwargs.pop("max_episode_steps", None) is None:
            max_steps = 1000
        return gym.wrappers.TimeLimit(CoupledHalfCheetahEnv(None, **kwargs), max_steps)
    return gym.make(f"{scenario}-v5", **kwargs)


def _multi_agent_env(scenario: str, agent_conf: str, agent_obsk: int, single: gym.Env):
    from gymnasium_robotics.envs.multiagent_mujoco.mujoco_multi import MultiAgentMujocoEnv

    return MultiAgentMujocoEnv(scenario, agent_conf, agent_obsk=agent_obsk, gym_env=single)


class RawDataObservation(gym.ObservationWrapper):
    """Observation = [single-agent obs | raw MuJoCo data fields], all float64."""

    def __init__(self, env: gym.Env, fields: tuple[str, ...]):
        super().__init__(env)
        self._fields = fields
        data = env.unwrapped.data
        size = int(np.prod(env.observation_space.shape)) + sum(
            getattr(data, name).size for name in fields
        )
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float64)

    def observation(self, observation):
        data = self.env.unwrapped.data
        parts = [np.asarray(observation, dtype=np.float64).reshape(-1)]
        parts += [getattr(data, name).reshape(-1) for name in self._fields]
        return np.concatenate(parts)


class GenuineLocalObservation(gym.ObservationWrapper):
    """Fallback: observation = [single-agent obs | every agent's local obs, built by MaMuJoCo]."""

    def __init__(self, env: gym.Env, scenario: str, agent_conf: str, agent_obsk: int):
        super().__init__(env)
        self._multi = _multi_agent_env(scenario, agent_conf, agent_obsk, env)
        size = int(np.prod(env.observation_space.shape)) + sum(
            space.shape[0] for space in self._multi.observation_spaces.values()
        )
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float64)

    def observation(self, observation):
        parts = [np.asarray(observation, dtype=np.float64).reshape(-1)]
        parts += [
            np.asarray(self._multi._get_obs_agent(i), dtype=np.float64).reshape(-1)
            for i in range(self._multi.num_agents)
        ]
        return np.concatenate(parts)


def _make_wrapped(
    scenario: str,
    agent_conf: str,
    agent_obsk: int,
    max_steps: int,
    env_kwargs: dict[str, Any],
    fields: tuple[str, ...] | None,
) -> gym.Env:
    """One vector-env copy; `fields=None` selects the genuine-observation fallback."""
    single = make_single_agent_env(scenario, agent_conf, max_steps, env_kwargs)
    if fields is None:
        return DropInfo(GenuineLocalObservation(single, scenario, agent_conf, agent_obsk))
    return DropInfo(RawDataObservation(single, fields))


def _probe_gather(multi, fields: tuple[str, ...], state_dim: int):
    """Per-agent (index into X, clip low, clip high) arrays reproducing MaMuJoCo's local obs.

    Runs MaMuJoCo's `build_obs` on probe data: with small position codes (inside any clip range)
    each output names the raw entry it reads; with huge positive / negative codes an output that
    does not come back unchanged reveals the clip bound applied to it. Returns None when the
    builder is not a pure gather + clip of the raw fields.
    """
    from gymnasium_robotics.envs.multiagent_mujoco.obsk import build_obs

    data = multi.single_agent_env.unwrapped.data
    shapes = [getattr(data, name).shape for name in fields]
    sizes = [int(np.prod(s)) for s in shapes]
    total = sum(sizes)
    codes = np.arange(1, total + 1, dtype=np.float64)
    eps = 0.5 / (total + 1)
    big = 1e6

    def probe(values: np.ndarray, agent_id: int) -> np.ndarray:
        fake, start = types.SimpleNamespace(), 0
        for name, shape, size in zip(fields, shapes, sizes, strict=True):
            setattr(fake, name, values[start : start + size].reshape(shape).copy())
            start += size
        return np.asarray(
            build_obs(
                fake,
                multi.k_dicts[agent_id],
                multi.local_categories,
                multi.mujoco_globals,
                multi.global_categories,
                False,
            ),
            dtype=np.float64,
        ).reshape(-1)

    result = []
    try:
        for agent_id in range(multi.num_agents):
            small = probe(codes * eps, agent_id)
            positions = np.rint(small / eps) - 1
            if (
                not np.allclose(small, (positions + 1) * eps, rtol=0, atol=eps * 1e-3)
                or (positions < 0).any()
                or (positions >= total).any()
            ):
                return None
            positions = positions.astype(np.int64)
            upper, lower = probe(codes * big, agent_id), probe(-codes * big, agent_id)
            exp_upper, exp_lower = codes[positions] * big, -codes[positions] * big
            high = np.where(upper == exp_upper, np.inf, upper)
            low = np.where(lower == exp_lower, -np.inf, lower)
            if (high < small).any() or (low > small).any():
                return None
            result.append((positions + state_dim, low, high))
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return result


def _gather_matches(multi, wrapper: RawDataObservation, gather, seed: int) -> bool:
    """Check the gather against MaMuJoCo's own local observations on a few real states."""
    env = multi.single_agent_env
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    for _ in range(5):
        x = wrapper.observation(obs)
        if not np.allclose(x[: obs.size], multi.state(), rtol=1e-12, atol=1e-12):
            return False
        for agent_id, (index, lo, hi) in enumerate(gather):
            mine = np.clip(x[index], lo, hi)
            if not np.allclose(mine, multi._get_obs_agent(agent_id), rtol=1e-9, atol=1e-9):
                return False
        obs, *_ = env.step(rng.uniform(low, high))
    return True


class MaMuJoCoEnv(BatchedMultiAgentEnv):
    """`num_envs` copies of one MaMuJoCo task (see the module docstring for how it works)."""

    Config = Config

    def __init__(self, config: Config, num_envs: int, device: torch.device, seed: int):
        self.config = config
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self._seed: int | None = seed
        if config.scenario not in SCENARIOS:
            raise unknown("MaMuJoCo scenario", config.scenario, SCENARIOS)
        if config.agent_obsk < 0:
            raise ConfigError("'scenario.agent_obsk' must be >= 0.")
        if config.max_steps < 0:
            raise ConfigError("'scenario.max_steps' must be >= 0 (0 = the env's own limit).")
        agent_conf = resolve_agent_conf(config)
        env_kwargs = dict(config.env_kwargs)
        try:
            single = make_single_agent_env(
                config.scenario, agent_conf, config.max_steps, env_kwargs
            )
        except (gym.error.Error, TypeError, ValueError) as err:
            raise ConfigError(
                f"could not create the MuJoCo env for MaMuJoCo '{config.scenario}' with "
                f"env_kwargs {env_kwargs}: {err}"
            ) from None
        try:
            multi = _multi_agent_env(config.scenario, agent_conf, config.agent_obsk, single)
        except Exception as err:  # MaMuJoCo raises bare Exception for unknown factorisations
            single.close()
            raise ConfigError(
                f"bad MaMuJoCo agent_conf '{agent_conf}' for scenario '{config.scenario}': {err}"
            ) from None
        n_agents = multi.num_agents
        if config.n_agents and config.n_agents != n_agents:
            single.close()
            raise ConfigError(
                f"MaMuJoCo {config.scenario} '{agent_conf}' has {n_agents} agents, but "
                f"'scenario.n_agents' is {config.n_agents}: set n_agents to {n_agents} (or 0), "
                "or choose another agent_conf."
            )

        state_dim = int(np.prod(single.observation_space.shape))
        categories = set(multi.global_categories)
        for level in multi.local_categories:
            categories.update(level)
        fields = tuple(
            name for name in RAW_FIELDS if name in ("qpos", "qvel") or name in categories
        )
        gather = _probe_gather(multi, fields, state_dim)
        if gather is not None and not _gather_matches(
            multi, RawDataObservation(single, fields), gather, seed
        ):
            gather = None
        if gather is None:  # fall back to MaMuJoCo's own observation builder in each copy
            fields_arg = None
            gather, offset = [], state_dim
            for agent in multi.possible_agents:
                dim = multi.observation_spaces[agent].shape[0]
                index = np.arange(offset, offset + dim)
                gather.append((index, np.full(dim, -np.inf), np.full(dim, np.inf)))
                offset += dim
        else:
            fields_arg = fields
        self.uses_fast_path = fields_arg is not None

        # Observation gather (numpy, on the CPU batch): padded entries read X[:, 0] and are
        # clipped to [0, 0]; the clip is skipped when no real entry has a finite bound.
        obs_dims = tuple(len(index) for index, _, _ in gather)
        width = max(obs_dims)
        index = np.zeros((n_agents, width), dtype=np.int64)
        clip_low = np.zeros((n_agents, width), dtype=np.float64)
        clip_high = np.zeros((n_agents, width), dtype=np.float64)
        for i, (idx, lo, hi) in enumerate(gather):
            index[i, : len(idx)], clip_low[i, : len(idx)], clip_high[i, : len(idx)] = idx, lo, hi
        self._obs_index = index.reshape(-1)
        self._clip_low, self._clip_high = clip_low.reshape(-1), clip_high.reshape(-1)
        self._needs_clip = len(set(obs_dims)) > 1 or bool(
            np.isfinite(clip_low).any() or np.isfinite(clip_high).any()
        )
        self._obs_shape = (n_agents, width)
        self._state_dim = state_dim

        # Action scatter: global action g <- flattened padded local action src[g].
        global_dim = int(np.prod(single.action_space.shape))
        act_dims = tuple(len(part) for part in multi.agent_action_partitions)
        act_width = max(act_dims)
        source = np.full(global_dim, -1, dtype=np.int64)
        g_low = np.asarray(single.action_space.low, dtype=np.float64).reshape(-1)
        g_high = np.asarray(single.action_space.high, dtype=np.float64).reshape(-1)
        act_low = np.full((n_agents, act_width), -1.0, dtype=np.float32)
        act_high = np.full((n_agents, act_width), 1.0, dtype=np.float32)
        for i, part in enumerate(multi.agent_action_partitions):
            for j, node in enumerate(part):
                g = int(node.act_ids) % global_dim
                if source[g] >= 0:
                    raise ConfigError(
                        f"MaMuJoCo factorisation '{agent_conf}' drives action {g} twice."
                    )
                source[g] = i * act_width + j
                act_low[i, j], act_high[i, j] = g_low[g], g_high[g]
        if (source < 0).any():
            raise ConfigError(
                f"MaMuJoCo factorisation '{agent_conf}' leaves actions "
                f"{np.flatnonzero(source < 0).tolist()} undriven."
            )
        self._act_source = source
        self._act_low = act_low.reshape(-1)[source]
        self._act_span = (act_high - act_low).reshape(-1)[source]
        self._act_dtype = single.action_space.dtype

        for i, agent in enumerate(multi.possible_agents):
            assert obs_dims[i] == multi.observation_spaces[agent].shape[0], (agent, obs_dims)
        registered_limit = getattr(single.spec, "max_episode_steps", None) if single.spec else None
        self.spec = EnvSpec(
            agent_names=tuple(multi.possible_agents),
            obs_dims=obs_dims,
            act_dims=act_dims,
            state_dim=state_dim,
            max_episode_steps=int(config.max_steps or registered_limit or 0),
            act_low=torch.from_numpy(act_low),
            act_high=torch.from_numpy(act_high),
        )
        single.close()

        make = functools.partial(
            _make_wrapped,
            config.scenario,
            agent_conf,
            config.agent_obsk,
            config.max_steps,
            env_kwargs,
            fields_arg,
        )
        self._venv = build_vector_env([make] * self.num_envs, config.vectorization)

    # -- batched views -------------------------------------------------------------------

    def _local_obs(self, x: np.ndarray) -> np.ndarray:
        """[B, |X|] -> [B, N * D_max] padded local observations."""
        local = x[:, self._obs_index]
        if self._needs_clip:
            np.clip(local, self._clip_low, self._clip_high, out=local)
        return local

    def global_action(self, actions: torch.Tensor) -> np.ndarray:
        """[B, N, A] actions in [-1, 1] -> [B, G] single-agent env actions (numpy).

        Same arithmetic as `scale_actions` (float32), on the CPU batch, gathered per env action.
        """
        flat = actions.detach().to("cpu", torch.float32).reshape(actions.shape[0], -1).numpy()
        picked = np.clip(flat[:, self._act_source], -1.0, 1.0)
        scaled = self._act_low + (picked + 1.0) * 0.5 * self._act_span
        return scaled.astype(self._act_dtype, copy=False)

    # -- interface -----------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if seed is None:
            seed, self._seed = self._seed, None
        x, _ = self._venv.reset(seed=seed)
        x = np.asarray(x)
        obs, state = to_torch([self._local_obs(x), x[:, : self._state_dim]], self.device)
        return obs.view(self.num_envs, *self._obs_shape), state

    def step(self, actions: torch.Tensor) -> StepResult:
        x, reward, terminated, truncated, info = self._venv.step(self.global_action(actions))
        x = np.asarray(x)
        done = np.logical_or(terminated, truncated)
        next_x = final_observations(x, info, done)
        local = self._local_obs(x)
        next_local = self._local_obs(next_x) if done.any() else local
        n = self.spec.n_agents
        obs, next_obs, state, next_state, rew, flags = to_torch(
            [
                local,
                next_local,
                x[:, : self._state_dim],
                next_x[:, : self._state_dim],
                np.repeat(reward[:, None], n, axis=1),
                np.stack([terminated, truncated]),
            ],
            self.device,
        )
        te, tr = done_flags(flags)
        shape = (self.num_envs, *self._obs_shape)
        return StepResult(
            obs=obs.view(shape),
            state=state,
            reward=rew,
            terminated=te,
            truncated=tr,
            next_obs=next_obs.view(shape),
            next_state=next_state,
            info={},
        )

    def close(self) -> None:
        venv = getattr(self, "_venv", None)
        if venv is not None:
            venv.close()
            self._venv = None
