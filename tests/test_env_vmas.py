"""VMAS backend: spec, shapes, action scaling, auto-reset, heterogeneous agents, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("vmas")

from marl_diff.envs import make_env  # noqa: E402
from marl_diff.envs.base import unpad  # noqa: E402
from marl_diff.errors import ConfigError  # noqa: E402

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
VMAS_YAMLS = ["vmas_navigation", "vmas_balance", "vmas_transport", "vmas_simple_spread"]
B = 4


def vmas_cfg(scenario: str = "navigation", n_agents: int = 2, max_steps: int = 50, **kwargs):
    return {
        "name": f"test_{scenario}",
        "backend": "vmas",
        "scenario": scenario,
        "n_agents": n_agents,
        "max_steps": max_steps,
        "kwargs": kwargs,
    }


@pytest.mark.parametrize("stem", VMAS_YAMLS)
def test_yaml_loads_and_steps(stem):
    path = SCENARIOS / f"{stem}.yaml"
    assert path.read_text().startswith("#"), "scenario YAMLs open with a comment"
    cfg = OmegaConf.load(path)
    assert cfg.name == stem and cfg.backend == "vmas"
    env = make_env(cfg, B, "cpu", 0)
    spec = env.spec
    assert spec.n_agents == cfg.n_agents
    assert spec.max_episode_steps == cfg.max_steps
    assert spec.act_dims == (2,) * spec.n_agents
    assert spec.state_dim == sum(spec.obs_dims)
    assert torch.equal(spec.act_low, -torch.ones(spec.n_agents, 2))
    assert torch.equal(spec.act_high, torch.ones(spec.n_agents, 2))

    obs, state = env.reset()
    assert obs.shape == (B, spec.n_agents, spec.obs_dim) and obs.dtype == torch.float32
    assert state.shape == (B, spec.state_dim) and state.device.type == "cpu"
    for _ in range(3):
        res = env.step(env.random_actions())
    assert res.obs.shape == obs.shape and res.next_obs.shape == obs.shape
    assert res.state.shape == state.shape and res.next_state.shape == state.shape
    assert res.reward.shape == (B, spec.n_agents) and res.reward.dtype == torch.float32
    assert res.terminated.shape == (B,) and res.terminated.dtype == torch.bool
    assert res.truncated.shape == (B,) and res.truncated.dtype == torch.bool
    assert torch.isfinite(res.reward).all() and torch.isfinite(res.obs).all()
    for value in res.info.values():
        assert value.dtype == torch.float32 and value.shape in {(B,), (B, spec.n_agents)}
    # state is the concatenation of the unpadded observations
    assert torch.equal(res.next_state, torch.cat(unpad(res.next_obs, spec.obs_dims), dim=-1))


def test_action_bounds_are_scaled():
    # give_way has u_range 0.5 and a fixed count of 2 agents
    env = make_env(vmas_cfg("give_way", n_agents=2), B, "cpu", 0)
    assert torch.allclose(env.spec.act_high, torch.full((2, 2), 0.5))
    assert torch.allclose(env.spec.act_low, torch.full((2, 2), -0.5))
    seen = []
    original = env.env.step

    def spy(actions):
        seen.append([a.clone() for a in actions])
        return original(actions)

    env.env.step = spy
    actions = torch.tensor([1.0, -1.0]).expand(B, 2, 2).contiguous()
    actions[:, 1] = torch.tensor([0.5, 0.0])
    env.step(actions)  # +-1 is outside u_range unless scaled; VMAS would assert
    assert torch.allclose(seen[0][0], torch.tensor([0.5, -0.5]).expand(B, 2))
    assert torch.allclose(seen[0][1], torch.tensor([0.25, 0.0]).expand(B, 2))


def test_heterogeneous_agents_are_padded():
    # MPE speaker/listener: speaker obs 3 / act 5 (2 move + 3 comm in [0, 1]), listener 11 / 2
    env = make_env(vmas_cfg("simple_speaker_listener", n_agents=2), B, "cpu", 0)
    spec = env.spec
    assert spec.agent_names == ("speaker_0", "listener_0")
    assert spec.obs_dims == (3, 11) and spec.act_dims == (5, 2)
    assert not spec.homogeneous and spec.state_dim == 14
    assert torch.equal(spec.act_low[0], torch.tensor([-1.0, -1, 0, 0, 0]))
    assert torch.equal(spec.act_high[0], torch.ones(5))
    assert torch.equal(spec.act_low[1], -torch.ones(5))  # padding is -1 / 1
    obs, state = env.reset()
    assert obs.shape == (B, 2, 11)
    assert (obs[:, 0, 3:] == 0).all()
    assert torch.equal(state, torch.cat([obs[:, 0, :3], obs[:, 1, :]], dim=-1))
    actions = env.random_actions()
    assert (actions[:, 1, 2:] == 0).all()
    actions[:, 1, 2:] = 1.0  # padded entries are ignored
    res = env.step(actions)
    assert (res.next_obs[:, 0, 3:] == 0).all() and (res.obs[:, 0, 3:] == 0).all()
    assert res.reward.shape == (B, 2)


def test_truncation_auto_reset_all_envs():
    env = make_env(vmas_cfg("navigation", n_agents=2, max_steps=3), B, "cpu", 1)
    obs, _ = env.reset()
    zero = torch.zeros(B, 2, 2)
    for _ in range(2):
        res = env.step(env.random_actions())
        assert not res.truncated.any() and not res.terminated.any()
        assert torch.equal(res.obs, res.next_obs)
    res = env.step(env.random_actions())
    assert res.truncated.all() and not res.terminated.any()
    assert not torch.equal(res.obs, res.next_obs)  # reset observation vs true final one
    assert not torch.equal(res.state, res.next_state)
    assert (env.env.steps == 0).all()
    # obs now is the observation of the freshly reset simulator
    fresh = torch.stack(env._current_obs(), dim=1)
    assert torch.equal(res.obs, fresh)
    assert torch.equal(res.state, fresh.reshape(B, -1))
    res = env.step(zero)
    assert not res.truncated.any()


def test_partial_auto_reset_and_termination():
    env = make_env(vmas_cfg("navigation", n_agents=2, max_steps=3), B, "cpu", 2)
    env.reset()
    env.step(env.random_actions())
    env.env.reset_at(0)  # env 0 now lags one step behind the others
    env.step(env.random_actions())
    res = env.step(env.random_actions())
    assert res.truncated.tolist() == [False, True, True, True]
    assert torch.equal(res.obs[0], res.next_obs[0])
    for i in range(1, B):
        assert not torch.equal(res.obs[i], res.next_obs[i])
    assert env.env.steps.tolist() == [2, 0, 0, 0]

    # force a termination in env 2 only: terminated wins over truncated, env 2 resets
    real_done = env.env.scenario.done
    mask = torch.tensor([True, False, True, False])
    env.env.scenario.done = lambda: mask.clone()
    res = env.step(env.random_actions())
    env.env.scenario.done = real_done
    assert res.terminated.tolist() == [True, False, True, False]
    assert res.truncated.tolist() == [False, False, False, False]  # env 0 hit max_steps too
    assert env.env.steps.tolist() == [0, 1, 0, 1]
    assert not torch.equal(res.obs[2], res.next_obs[2])
    assert torch.equal(res.obs[1], res.next_obs[1])


def test_seed_reproducible():
    def rollout(seed):
        env = make_env(vmas_cfg("transport", n_agents=2), B, "cpu", seed)
        obs, _ = env.reset()
        gen = torch.Generator().manual_seed(0)
        out = [obs]
        for _ in range(4):
            out.append(env.step(env.random_actions(gen)).obs)
        return torch.stack(out)

    a, b, c = rollout(5), rollout(5), rollout(6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    env = make_env(vmas_cfg("balance", n_agents=2), B, "cpu", 0)
    first, state = env.reset(seed=7)
    env.step(env.random_actions())
    again, state_again = env.reset(seed=7)
    assert torch.equal(first, again) and torch.equal(state, state_again)


def test_each_env_keeps_its_own_random_stream():
    """VMAS shares one random stream between its instances: an evaluation env reseeded with the
    evaluation seed must neither change the training env's episodes nor make them repeat."""

    def episodes(env, evaluation=None):
        starts = []
        for _ in range(3):
            if evaluation is not None:  # an evaluation between the training episodes
                evaluation.reset(seed=1000003)
                evaluation.step(evaluation.random_actions())
            starts.append(env.reset()[0])
            # a partial auto-reset draws new positions from the stream too
            env.step(env.random_actions())
        return torch.stack(starts)

    config = vmas_cfg("navigation", n_agents=2)
    alone = episodes(make_env(config, B, "cpu", 0))
    beside = episodes(make_env(config, B, "cpu", 0), make_env(config, B, "cpu", 1))
    assert torch.equal(alone, beside)
    assert not torch.equal(beside[1], beside[2])  # the episodes after each evaluation differ


@pytest.mark.parametrize(
    ("scenario", "n_agents", "expected"),
    [
        ("balance", 1, ">= 2"),
        ("navigation", 0, "1.."),
        ("navigation", 200, "1.."),  # would make VMAS's spawning loop forever
        ("transport", 0, ">= 1"),
        ("simple_spread", 0, ">= 1"),
        ("give_way", 3, "2..2"),  # fixed agent count
    ],
)
def test_bad_agent_count(scenario, n_agents, expected):
    with pytest.raises(ConfigError, match="valid range") as err:
        make_env(vmas_cfg(scenario, n_agents=n_agents), B, "cpu", 0)
    assert expected in str(err.value)


def test_bad_scenario_name_and_kwargs():
    with pytest.raises(ConfigError, match="navigation"):
        make_env(vmas_cfg("no_such_scenario"), B, "cpu", 0)
    with pytest.raises(ConfigError, match="not_a_kwarg"):
        make_env(vmas_cfg("navigation", not_a_kwarg=3), B, "cpu", 0)
    with pytest.raises(ConfigError, match="agents_with_same_goal"):
        make_env(vmas_cfg("navigation", n_agents=2, agents_with_same_goal=5), B, "cpu", 0)
    with pytest.raises(ConfigError, match="kwargs.n_agents"):
        make_env(vmas_cfg("navigation") | {"kwargs": {"n_agents": 2}}, B, "cpu", 0)
    with pytest.raises(ConfigError, match="bad_key"):
        make_env(vmas_cfg("navigation") | {"bad_key": 1}, B, "cpu", 0)
