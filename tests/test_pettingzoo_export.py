"""Exporting batched scenarios as PettingZoo ParallelEnvs (marl_diff.envs.export)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.spaces import Box
from omegaconf import OmegaConf
from pettingzoo.test import parallel_api_test
from pettingzoo.utils.env import ParallelEnv

from marl_diff import catalog
from marl_diff.envs import make_env
from marl_diff.envs.export import BatchedParallelEnv, export, to_parallel_env
from marl_diff.errors import ConfigError

MPE_DISCRETE = {"env_kwargs": {"continuous_actions": False, "max_cycles": 25}}
CASES = {
    "vmas_navigation": ("vmas_navigation", {"max_steps": 20}),
    "multigoal": ("multigoal", {}),
    "mpe": ("mpe_simple_spread", {}),
    "mpe_discrete": ("mpe_simple_spread", MPE_DISCRETE),
}


def needs(case: str) -> None:
    package = {"vmas_navigation": "vmas", "mpe": "mpe2", "mpe_discrete": "mpe2"}.get(case)
    if package:
        pytest.importorskip(package)


def scenario(name: str, **overrides) -> dict:
    config = OmegaConf.to_container(catalog.load("scenario", name), resolve=True)
    assert isinstance(config, dict)
    return {**config, **overrides}


@pytest.mark.parametrize("case", list(CASES))
def test_parallel_api_test_passes(case):
    needs(case)
    name, overrides = CASES[case]
    env = export(name, seed=1, **overrides)
    assert isinstance(env, ParallelEnv) and env.metadata["name"] == name
    assert env.render_mode is None
    parallel_api_test(env, num_cycles=40)


@pytest.mark.slow  # jit compilation takes ~30 s on a shared 2-core CPU
def test_parallel_api_test_passes_for_smax():
    pytest.importorskip("jaxmarl")
    config = {"name": "smax_3m", "backend": "smax", "map": "3m", "max_steps": 20}
    env = export(config, seed=0)
    assert env.possible_agents == ["ally_0", "ally_1", "ally_2"]
    parallel_api_test(env, num_cycles=30)


def test_spaces_follow_the_spec_unpadded():
    pytest.importorskip("mpe2")
    env = export("mpe_simple_spread", **MPE_DISCRETE)
    spec = env.env.spec
    assert env.env.num_envs == 1
    assert env.possible_agents == list(spec.agent_names) and env.agents == []
    for agent, d_obs, d_act in zip(spec.agent_names, spec.obs_dims, spec.act_dims, strict=True):
        obs_space, act_space = env.observation_space(agent), env.action_space(agent)
        assert obs_space == Box(-np.inf, np.inf, (d_obs,), np.float32)
        assert act_space == Box(-1.0, 1.0, (d_act,), np.float32)  # 5 scores, one per action
    obs, infos = env.reset(seed=0)
    assert set(obs) == set(infos) == set(env.agents) == set(spec.agent_names)
    assert all(o.dtype == np.float32 and o.shape == (18,) for o in obs.values())


@pytest.mark.parametrize("case", ["vmas_navigation", "multigoal", "mpe", "mpe_discrete"])
def test_values_match_the_batched_env_over_an_episode(case):
    needs(case)
    name, overrides = CASES[case]
    seed = 4
    exported = export(name, seed=seed, **overrides)
    batched = make_env(scenario(name, **overrides), num_envs=1, device="cpu", seed=seed)
    agents = exported.possible_agents
    dims = batched.spec.obs_dims

    # seeded resets, each just before use (VMAS seeds torch's global RNG on reset)
    obs, _ = exported.reset(seed=seed)
    ref_obs, ref_state = batched.reset(seed=seed)
    for i, a in enumerate(agents):
        np.testing.assert_array_equal(obs[a], ref_obs[0, i, : dims[i]].numpy())
    np.testing.assert_array_equal(exported.state(), ref_state[0].numpy())

    gen = torch.Generator().manual_seed(0)
    steps, done = 0, False
    while not done:
        steps += 1
        actions = batched.random_actions(gen)
        obs, rew, term, trunc, infos = exported.step(
            {a: actions[0, i, : batched.spec.act_dims[i]].numpy() for i, a in enumerate(agents)}
        )
        ref = batched.step(actions)
        done = bool(ref.terminated[0] | ref.truncated[0])
        for i, a in enumerate(agents):
            np.testing.assert_array_equal(obs[a], ref.next_obs[0, i, : dims[i]].numpy())
            assert rew[a] == float(ref.reward[0, i])
            assert term[a] == bool(ref.terminated[0]) and trunc[a] == bool(ref.truncated[0])
        np.testing.assert_array_equal(exported.state(), ref.next_state[0].numpy())
        assert exported.agents == ([] if done else agents)
        assert steps <= batched.spec.max_episode_steps
    assert bool(ref.terminated[0]) or steps == batched.spec.max_episode_steps


def test_termination_maps_to_every_agent_and_ends_the_episode():
    # one full step right reaches goal 0 at (+5, 0) from near the origin
    env = export("multigoal", seed=0, n_agents=2, step_size=5.0)
    env.reset(seed=0)
    right = np.array([1.0, 0.0], np.float32)
    obs, rew, term, trunc, infos = env.step({a: right for a in env.agents})
    assert term == {"agent_0": True, "agent_1": True}
    assert trunc == {"agent_0": False, "agent_1": False}
    assert env.agents == []
    assert infos["agent_0"]["goal"] == 0.0 and infos["agent_1"]["goal"] == 0.0
    # the final observation, not the auto-reset one
    assert np.allclose(obs["agent_0"], [5.0, 0.0], atol=0.5)
    assert np.allclose(env.state()[:2], obs["agent_0"])
    with pytest.raises(RuntimeError, match="call reset"):
        env.step({})
    fresh, _ = env.reset()
    assert env.agents == ["agent_0", "agent_1"]
    assert np.linalg.norm(fresh["agent_0"]) < 1.0  # a new episode near the origin


def test_timeout_is_truncation_not_termination():
    env = export("multigoal", seed=0, max_steps=3)
    env.reset()
    still = {"agent_0": np.zeros(2, np.float32)}
    for _ in range(2):
        _, _, term, trunc, _ = env.step(still)
        assert not term["agent_0"] and not trunc["agent_0"] and env.agents == ["agent_0"]
    _, _, term, trunc, _ = env.step(still)
    assert trunc == {"agent_0": True} and term == {"agent_0": False} and env.agents == []


def test_state_is_the_inner_pettingzoo_state_and_alive_reaches_infos():
    pytest.importorskip("mpe2")
    env = export("mpe_simple_spread", seed=2)
    env.reset()
    inner = env.env.envs[0]
    np.testing.assert_array_equal(env.state(), inner.state())
    _, _, _, _, infos = env.step({a: env.action_space(a).sample() for a in env.agents})
    np.testing.assert_array_equal(env.state(), inner.state())
    assert env.state().shape == env.state_space.shape
    assert all(infos[a]["alive"] == 1.0 for a in env.possible_agents)


def test_to_parallel_env_shows_one_copy_of_a_batch():
    batched = make_env(scenario("multigoal", n_agents=2), num_envs=3, device="cpu", seed=0)
    env = to_parallel_env(batched, index=2)
    assert isinstance(env, BatchedParallelEnv) and env.metadata["name"] == "multigoal"
    obs, _ = env.reset(seed=5)
    twin = make_env(scenario("multigoal", n_agents=2), num_envs=3, device="cpu", seed=0)
    ref_obs, _ = twin.reset(seed=5)
    np.testing.assert_array_equal(obs["agent_1"], ref_obs[2, 1].numpy())
    with pytest.raises(ValueError, match="index"):
        to_parallel_env(batched, index=3)


def test_export_errors_and_mapping_input():
    with pytest.raises(ConfigError, match="unknown scenario 'nope'"):
        export("nope")
    env = export(scenario("multigoal"), n_agents=3)
    assert env.possible_agents == ["agent_0", "agent_1", "agent_2"]
    env.reset()
    with pytest.raises(ValueError, match="must have 2 entries"):
        env.step({"agent_0": np.zeros(3, np.float32)})
