"""Single-agent Gymnasium backend (N=1): shapes, bounds, same-step auto-reset, errors, YAMLs."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from marl_diff.envs import make_env
from marl_diff.errors import ConfigError

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
GYM_YAMLS = ["gymnasium", "pendulum", "hopper", "halfcheetah", "walker2d", "ant", "humanoid"]


def pendulum(num_envs=3, seed=0, **overrides):
    scenario = {"name": "pendulum", "backend": "gymnasium", "env_id": "Pendulum-v1"}
    scenario.update(overrides)
    return make_env(scenario, num_envs=num_envs, device="cpu", seed=seed)


def test_shapes_dtypes_and_spec():
    env = pendulum(num_envs=3, max_steps=200)
    try:
        assert env.spec.n_agents == 1
        assert env.spec.obs_dims == (3,) and env.spec.act_dims == (1,)
        assert env.spec.state_dim == 3 and env.spec.max_episode_steps == 200
        obs, state = env.reset()
        assert obs.shape == (3, 1, 3) and state.shape == (3, 3)
        assert obs.dtype == torch.float32 and torch.equal(obs[:, 0], state)
        out = env.step(env.random_actions())
        assert out.obs.shape == (3, 1, 3) and out.next_obs.shape == (3, 1, 3)
        assert out.state.shape == (3, 3) and out.next_state.shape == (3, 3)
        assert out.reward.shape == (3, 1) and out.reward.dtype == torch.float32
        assert out.terminated.shape == (3,) and out.terminated.dtype == torch.bool
        assert out.truncated.dtype == torch.bool
        assert torch.equal(out.obs, out.next_obs)  # nothing ended yet
    finally:
        env.close()


def test_action_bounds_scaling_matches_raw_env():
    env = pendulum(num_envs=1, seed=5)
    raw = gym.make("Pendulum-v1")
    try:
        assert torch.allclose(env.spec.act_low, torch.tensor([[-2.0]]))
        assert torch.allclose(env.spec.act_high, torch.tensor([[2.0]]))
        obs, _ = env.reset()
        raw_obs, _ = raw.reset(seed=5)
        np.testing.assert_allclose(obs[0, 0].numpy(), raw_obs, rtol=1e-6)
        for a in (-1.0, 1.0, 0.25, 3.0):  # 3.0 is clipped to the upper bound
            out = env.step(torch.full((1, 1, 1), a))
            raw_obs, raw_reward, *_ = raw.step(np.array([2.0 * min(a, 1.0)], dtype=np.float32))
            np.testing.assert_allclose(out.next_obs[0, 0].numpy(), raw_obs, rtol=1e-5, atol=1e-6)
            assert out.reward[0, 0].item() == pytest.approx(raw_reward, rel=1e-5, abs=1e-6)
    finally:
        env.close()
        raw.close()


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_truncation_auto_reset_same_step(vectorization):
    env = pendulum(num_envs=2, seed=1, max_steps=4, vectorization=vectorization)
    raw = gym.make("Pendulum-v1", max_episode_steps=4)
    try:
        env.reset()
        raw.reset(seed=1)  # same seed as the vector env's first copy
        actions = torch.zeros(2, 1, 1)
        for t in range(4):
            out = env.step(actions)
            raw_obs, _, raw_term, raw_trunc, _ = raw.step(np.zeros(1, dtype=np.float32))
            assert bool(out.truncated[0]) == raw_trunc == (t == 3)
            assert not out.terminated.any() and not raw_term
        assert out.truncated.all()
        # next_obs is the true final observation, obs already the next episode's first one
        np.testing.assert_allclose(out.next_obs[0, 0].numpy(), raw_obs, rtol=1e-5, atol=1e-6)
        assert torch.equal(out.next_state, out.next_obs[:, 0])
        raw_reset, _ = raw.reset()  # the vector env auto-resets from the same RNG stream
        np.testing.assert_allclose(out.obs[0, 0].numpy(), raw_reset, rtol=1e-6)
        assert not torch.allclose(out.obs, out.next_obs)
        out = env.step(actions)
        assert not out.truncated.any()
    finally:
        env.close()
        raw.close()


def test_termination_is_kept_apart_from_truncation():
    # Hopper falls over quickly under strong random actions: terminated, not truncated.
    env = make_env(
        {"backend": "gymnasium", "env_id": "Hopper-v5", "max_steps": 500}, 2, "cpu", seed=0
    )
    try:
        env.reset()
        gen = torch.Generator().manual_seed(0)
        terminated_seen = False
        for _ in range(300):
            out = env.step(env.random_actions(gen).sign())
            assert not (out.terminated & out.truncated).any()
            if out.terminated.any():
                terminated_seen = True
                done = out.terminated
                assert not torch.allclose(out.obs[done], out.next_obs[done])
                break
        assert terminated_seen
    finally:
        env.close()


def test_bad_env_id_raises_config_error():
    with pytest.raises(ConfigError, match="NoSuchEnv-v0"):
        make_env({"backend": "gymnasium", "env_id": "NoSuchEnv-v0"}, 1, "cpu", 0)


def test_discrete_action_space_rejected():
    with pytest.raises(ConfigError, match="Box"):
        make_env({"backend": "gymnasium", "env_id": "CartPole-v1"}, 1, "cpu", 0)


def test_unknown_key_and_bad_vectorization():
    with pytest.raises(ConfigError, match="bogus"):
        make_env({"backend": "gymnasium", "bogus": 1}, 1, "cpu", 0)
    with pytest.raises(ConfigError, match="vectorization"):
        pendulum(num_envs=1, vectorization="threads")


@pytest.mark.parametrize("name", GYM_YAMLS)
def test_catalog_yaml_loads_and_steps(name):
    cfg = OmegaConf.to_container(OmegaConf.load(SCENARIOS / f"{name}.yaml"))
    assert cfg["name"] == name and cfg["backend"] == "gymnasium"
    env = make_env(cfg, num_envs=2, device="cpu", seed=0)
    try:
        obs, state = env.reset()
        assert obs.shape == (2, 1, env.spec.obs_dim)
        for _ in range(3):
            out = env.step(env.random_actions())
        assert torch.isfinite(out.obs).all() and out.reward.shape == (2, 1)
        if name == "pendulum":
            assert env.spec.max_episode_steps == 200
    finally:
        env.close()
