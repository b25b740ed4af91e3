"""MaMuJoCo backend: equivalence with the genuine mamujoco_v1.parallel_env, heterogeneous agents,
bounds, same-step auto-reset, agent-count handling, errors and the catalog YAMLs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from marl_diff.envs import make_env
from marl_diff.errors import ConfigError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from gymnasium_robotics import mamujoco_v1

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
MAMUJOCO_YAMLS = [
    "mamujoco_ant_2x4",
    "mamujoco_halfcheetah_6x1",
    "mamujoco_walker2d_2x3",
    "mamujoco_humanoid_9_8",
    "mamujoco_manysegment_ant",
]


def mamujoco(scenario, agent_conf, num_envs=1, seed=0, **overrides):
    cfg = {"backend": "mamujoco", "scenario": scenario, "agent_conf": agent_conf}
    cfg.update(overrides)
    return make_env(cfg, num_envs=num_envs, device="cpu", seed=seed)


def assert_matches_genuine(env, genuine, obs, state, genuine_obs, batch_index=0):
    for i, agent in enumerate(genuine.possible_agents):
        d = env.spec.obs_dims[i]
        np.testing.assert_allclose(
            obs[batch_index, i, :d].double().numpy(), genuine_obs[agent], rtol=1e-5, atol=1e-5
        )
        assert (obs[batch_index, i, d:] == 0).all()  # padding stays zero
    np.testing.assert_allclose(
        state[batch_index].double().numpy(), genuine.state(), rtol=1e-5, atol=1e-5
    )


def genuine_actions(env, genuine, actions, batch_index=0):
    scaled = env.scale_actions(actions)
    return {
        agent: scaled[batch_index, i, : env.spec.act_dims[i]].double().numpy()
        for i, agent in enumerate(genuine.possible_agents)
    }


@pytest.mark.parametrize(
    ("scenario", "agent_conf", "steps"),
    [
        ("Ant", "2x4", 60),
        ("HalfCheetah", "6x1", 60),
        ("Walker2d", "2x3", 60),
        ("Humanoid", "9|8", 15),
        ("ManySegmentAnt", "2x3", 15),
    ],
)
def test_equivalent_to_genuine_parallel_env(scenario, agent_conf, steps):
    """Same seed and actions: identical local observations, state, rewards and terminations.

    Walker2d (unclipped joint velocities in the local obs) and ManySegmentAnt (world-body contact
    force) are the cases where local observations are not a slice of the single-agent obs.
    """
    seed = 7
    env = mamujoco(scenario, agent_conf, num_envs=2, seed=seed)
    genuine = mamujoco_v1.parallel_env(scenario, agent_conf, agent_obsk=1)
    try:
        assert env.uses_fast_path
        assert list(env.spec.agent_names) == genuine.possible_agents
        assert env.spec.obs_dims == tuple(
            genuine.observation_space(a).shape[0] for a in genuine.possible_agents
        )
        assert env.spec.state_dim == genuine.state().shape[0]
        obs, state = env.reset()
        genuine_obs, _ = genuine.reset(seed=seed)  # copy 0 of the vector env is seeded with seed
        assert_matches_genuine(env, genuine, obs, state, genuine_obs)
        gen = torch.Generator().manual_seed(0)
        for _ in range(steps):
            actions = env.random_actions(gen)
            out = env.step(actions)
            genuine_obs, rewards, terms, truncs, _ = genuine.step(
                genuine_actions(env, genuine, actions)
            )
            agent = genuine.possible_agents[0]
            assert_matches_genuine(env, genuine, out.next_obs, out.next_state, genuine_obs)
            assert out.reward[0].tolist() == pytest.approx(
                [rewards[a] for a in genuine.possible_agents], rel=1e-5, abs=1e-5
            )
            assert bool(out.terminated[0]) == terms[agent]
            assert bool(out.truncated[0]) == truncs[agent]
            if terms[agent] or truncs[agent]:
                genuine_obs, _ = genuine.reset()
                assert_matches_genuine(env, genuine, out.obs, out.state, genuine_obs)
    finally:
        env.close()
        genuine.close()


def test_heterogeneous_halfcheetah_6x1():
    env = mamujoco("HalfCheetah", "6x1", num_envs=3)
    try:
        assert env.spec.obs_dims == (9, 9, 8, 9, 9, 8)
        assert env.spec.act_dims == (1,) * 6 and env.spec.state_dim == 17
        obs, state = env.reset()
        assert obs.shape == (3, 6, 9) and obs.dtype == torch.float32 and state.shape == (3, 17)
        assert (obs[:, 2, 8] == 0).all() and (obs[:, 5, 8] == 0).all()
        out = env.step(env.random_actions())
        assert out.reward.shape == (3, 6) and out.terminated.shape == (3,)
        assert out.terminated.dtype == torch.bool and out.truncated.dtype == torch.bool
    finally:
        env.close()


def test_heterogeneous_humanoid_bounds_and_action_mapping():
    env = mamujoco("Humanoid", "9|8", num_envs=2)
    genuine = mamujoco_v1.parallel_env("Humanoid", "9|8", agent_obsk=1)
    try:
        assert env.spec.act_dims == (9, 8) and env.spec.obs_dims == (242, 170)
        assert env.spec.state_dim == 348
        mask = env.spec.act_mask()
        assert torch.allclose(env.spec.act_low[mask], torch.tensor(-0.4))
        assert torch.allclose(env.spec.act_high[mask], torch.tensor(0.4))
        actions = env.random_actions(torch.Generator().manual_seed(1))
        assert (actions[:, 1, 8] == 0).all()
        mine = env.global_action(actions)
        for b in range(2):
            ref = genuine.map_local_actions_to_global_action(
                genuine_actions(env, genuine, actions, batch_index=b)
            )
            np.testing.assert_allclose(mine[b], ref, rtol=1e-6)
        assert np.abs(mine).max() <= 0.4 + 1e-6
    finally:
        env.close()
        genuine.close()


def test_action_scaling_extremes():
    env = mamujoco("Ant", "2x4", num_envs=1)
    try:
        full = env.global_action(torch.ones(1, 2, 4))
        assert np.allclose(full, 1.0)
        assert np.allclose(env.global_action(-2.0 * torch.ones(1, 2, 4)), -1.0)  # clipped
    finally:
        env.close()


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_truncation_auto_reset(vectorization):
    seed, horizon = 3, 5
    env = mamujoco(
        "Ant", "2x4", num_envs=2, seed=seed, max_steps=horizon, vectorization=vectorization
    )
    genuine = mamujoco_v1.parallel_env("Ant", "2x4", agent_obsk=1, max_episode_steps=horizon)
    try:
        env.reset()
        genuine.reset(seed=seed)
        gen = torch.Generator().manual_seed(0)
        for t in range(horizon):
            actions = env.random_actions(gen)
            out = env.step(actions)
            genuine_obs, _, terms, truncs, _ = genuine.step(genuine_actions(env, genuine, actions))
            assert out.truncated.tolist() == [t == horizon - 1] * 2
            assert not out.terminated.any()
        assert truncs["agent_0"] and not terms["agent_0"]
        # next_obs / next_state: the true final observation of the episode
        assert_matches_genuine(env, genuine, out.next_obs, out.next_state, genuine_obs)
        # obs / state: the first observation of the next episode (same RNG stream)
        genuine_obs, _ = genuine.reset()
        assert_matches_genuine(env, genuine, out.obs, out.state, genuine_obs)
        assert not torch.allclose(out.obs, out.next_obs)
        out = env.step(env.random_actions(gen))
        assert not out.truncated.any()
    finally:
        env.close()
        genuine.close()


def test_agent_count_handling():
    env = mamujoco("ManySegmentAnt", "2x3", n_agents=4)
    try:
        assert env.spec.n_agents == 4 and env.spec.act_dims == (12,) * 4
        obs, _ = env.reset()
        assert obs.shape == (1, 4, env.spec.obs_dim)
    finally:
        env.close()
    env = mamujoco("ManySegmentAnt", "2x3", n_agents=3, segments_per_agent=1)
    try:
        assert env.spec.n_agents == 3 and env.spec.act_dims == (4,) * 3
    finally:
        env.close()
    env = mamujoco("Ant", "2x4", n_agents=2)
    env.close()
    with pytest.raises(ConfigError, match="has 2 agents"):
        mamujoco("Ant", "2x4", n_agents=3)


def test_config_errors():
    with pytest.raises(ConfigError, match="Antt"):
        mamujoco("Antt", "2x4")
    with pytest.raises(ConfigError, match="7x7"):
        mamujoco("Ant", "7x7")
    with pytest.raises(ConfigError, match="agent_conf"):
        mamujoco("ManySegmentAnt", "lots")
    with pytest.raises(ConfigError, match="vectorization"):
        mamujoco("Ant", "2x4", vectorization="threads")


@pytest.mark.parametrize("name", MAMUJOCO_YAMLS)
def test_catalog_yaml_loads_and_steps(name):
    cfg = OmegaConf.to_container(OmegaConf.load(SCENARIOS / f"{name}.yaml"))
    assert cfg["name"] == name and cfg["backend"] == "mamujoco"
    env = make_env(cfg, num_envs=2, device="cpu", seed=0)
    try:
        obs, state = env.reset()
        assert obs.shape == (2, env.spec.n_agents, env.spec.obs_dim)
        assert state.shape == (2, env.spec.state_dim)
        for _ in range(2):
            out = env.step(env.random_actions())
        assert torch.isfinite(out.obs).all() and out.reward.shape == (2, env.spec.n_agents)
    finally:
        env.close()
