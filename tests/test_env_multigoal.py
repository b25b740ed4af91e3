"""Multi-goal point-mass backend: geometry, rewards, freezing, auto-reset, seeding, padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from marl_diff.envs import make_env
from marl_diff.envs.base import EnvSpec, pad_stack, unpad
from marl_diff.errors import ConfigError

YAML = Path(__file__).resolve().parents[1] / "scenarios" / "multigoal.yaml"
DIRECTIONS = {0: (1.0, 0.0), 1: (0.0, 1.0), 2: (-1.0, 0.0), 3: (0.0, -1.0)}


def cfg(**overrides):
    base = {"name": "multigoal_test", "backend": "multigoal", "init_noise": 0.0}
    return base | overrides


def push(env, direction, agents=None):
    """Actions [B, N, 2] moving every (or the listed) agent(s) in `direction`."""
    actions = torch.zeros(env.num_envs, env.spec.n_agents, 2)
    for i in range(env.spec.n_agents) if agents is None else agents:
        actions[:, i] = torch.tensor(direction)
    return actions


def test_yaml_spec_and_shapes():
    assert YAML.read_text().startswith("#")
    scenario = OmegaConf.load(YAML)
    assert scenario.name == "multigoal" and scenario.backend == "multigoal"
    env = make_env(scenario, 8, "cpu", 0)
    spec = env.spec
    assert spec.n_agents == 1 and spec.obs_dims == (2,) and spec.act_dims == (2,)
    assert spec.state_dim == 2 and spec.max_episode_steps == 30 and spec.homogeneous
    obs, state = env.reset()
    assert obs.shape == (8, 1, 2) and state.shape == (8, 2)
    assert obs.dtype == torch.float32 and obs.device.type == "cpu"
    assert obs.abs().max() < 1.0  # near the origin (small noise)
    res = env.step(env.random_actions())
    assert res.reward.shape == (8, 1) and res.reward.dtype == torch.float32
    assert res.terminated.shape == (8,) and res.terminated.dtype == torch.bool
    assert res.truncated.shape == (8,) and res.truncated.dtype == torch.bool
    assert res.info["goal"].shape == (8, 1) and res.info["goal"].dtype == torch.float32


def test_goal_layout():
    env = make_env(cfg(), 2, "cpu", 0)
    expected = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, 0.0], [0.0, -5.0]])
    assert torch.allclose(env.goals, expected, atol=1e-6)
    assert torch.allclose(torch.tensor(env.landmarks()["goals"]), expected, atol=1e-6)


def test_straight_to_plus_x_goal():
    env = make_env(cfg(), 3, "cpu", 0)
    start, _ = env.reset()
    assert torch.equal(start, torch.zeros(3, 1, 2))
    rewards = []
    for step in range(1, 5):
        res = env.step(push(env, (1.0, 0.0)))
        rewards.append(res.reward[0, 0].item())
        if step < 4:
            assert not res.terminated.any() and not res.truncated.any()
            assert torch.allclose(res.next_obs[:, 0], torch.tensor([float(step), 0.0]))
            assert (res.info["goal"] == -1).all()
    assert res.terminated.all() and not res.truncated.any()
    assert (res.info["goal"] == 0).all()
    assert torch.allclose(res.next_obs[:, 0], torch.tensor([4.0, 0.0]))
    assert torch.allclose(res.next_state, torch.tensor([4.0, 0.0]).expand(3, 2))
    # -0.1 * distance - 0.05 * |a|^2, plus the bonus of 10 on arrival
    assert rewards == pytest.approx([-0.45, -0.35, -0.25, -0.15 + 10.0])
    # auto-reset: obs is a fresh start state
    assert torch.equal(res.obs, start) and torch.equal(res.state, start.reshape(3, 2))
    res = env.step(torch.zeros(3, 1, 2))
    assert not res.terminated.any()
    assert torch.allclose(res.reward, torch.full((3, 1), -0.5))


@pytest.mark.parametrize("goal", sorted(DIRECTIONS))
def test_every_goal_reachable(goal):
    env = make_env(cfg(), 2, "cpu", 0)
    for _ in range(4):
        res = env.step(push(env, DIRECTIONS[goal]))
    assert res.terminated.all()
    assert (res.info["goal"] == goal).all()
    assert res.reward[0, 0].item() == pytest.approx(-0.15 + 10.0)  # every goal is equally good


def test_squared_distance_reward_of_the_sql_catalog_entry():
    scenario = OmegaConf.load(YAML.with_name("multigoal_sql.yaml"))
    env = make_env(OmegaConf.to_container(scenario) | {"init_noise": 0.0}, 2, "cpu", 0)
    res = env.step(push(env, (0.0, -0.5)))
    # -1 * (distance to the nearest goal)^2 - 30 * |a|^2: -(4.5^2) - 30 * 0.25
    assert res.reward[0, 0].item() == pytest.approx(-20.25 - 7.5)
    for _ in range(7):
        res = env.step(push(env, (0.0, -0.5)))
    assert res.terminated.all() and (res.info["goal"] == 3).all()
    assert res.reward[0, 0].item() == pytest.approx(-1.0 - 7.5 + 10.0)


def test_truncation_and_partial_reset():
    env = make_env(cfg(max_steps=5), 2, "cpu", 0)
    env.reset()
    actions = torch.zeros(2, 1, 2)
    actions[0, 0] = torch.tensor([0.0, -1.0])  # env 0 heads to goal 3, env 1 stays put
    for _ in range(3):
        res = env.step(actions)
    res = env.step(actions)
    assert res.terminated.tolist() == [True, False] and not res.truncated.any()
    assert res.info["goal"][:, 0].tolist() == [3.0, -1.0]
    assert torch.equal(res.obs[0], torch.zeros(1, 2))  # env 0 restarted
    assert torch.equal(res.obs[1], res.next_obs[1])  # env 1 untouched
    res = env.step(torch.zeros(2, 1, 2))
    assert res.truncated.tolist() == [False, True] and not res.terminated.any()
    assert res.info["goal"][1, 0].item() == -1.0
    res = env.step(torch.zeros(2, 1, 2))  # env 0 is at t=2 of 5, env 1 restarted
    assert not res.truncated.any()


def test_multi_agent_freeze_and_team_reward():
    env = make_env(cfg(n_agents=2), 1, "cpu", 0)
    assert env.spec.state_dim == 4 and env.spec.agent_names == ("agent_0", "agent_1")
    for _ in range(4):
        res = env.step(push(env, (-1.0, 0.0), agents=[0]))
    assert not res.terminated.any()  # agent 1 has not reached a goal
    # team reward: mean of agent 0 (arrival) and agent 1 (idle at distance 5)
    expected = ((-0.15 + 10.0) + (-0.5)) / 2
    assert torch.allclose(res.reward, torch.full((1, 2), expected))
    assert res.info["goal"].tolist() == [[2.0, -1.0]]
    # agent 0 is frozen at (-4, 0) and earns 0; agent 1 now walks up to goal 1
    for _ in range(4):
        res = env.step(push(env, (0.0, 1.0)))
    assert torch.allclose(res.next_obs[0, 0], torch.tensor([-4.0, 0.0]))
    assert torch.allclose(res.next_obs[0, 1], torch.tensor([0.0, 4.0]))
    assert res.terminated.all()
    assert res.info["goal"].tolist() == [[2.0, 1.0]]
    assert torch.allclose(res.reward, torch.full((1, 2), (-0.15 + 10.0) / 2))


def test_action_scaling_and_clipping():
    env = make_env(cfg(step_size=0.5, bound=6.0, goal_radius=5.0), 1, "cpu", 0)
    assert torch.equal(env.spec.act_high, torch.full((1, 2), 0.5))
    assert torch.equal(env.spec.act_low, torch.full((1, 2), -0.5))
    res = env.step(torch.tensor([[[3.0, 0.5]]]))  # clamped to 1 before scaling
    assert torch.allclose(res.next_obs[0, 0], torch.tensor([0.5, 0.25]))
    assert res.reward.item() == pytest.approx(
        -0.1 * torch.tensor([4.5, 0.25]).norm().item() - 0.05 * 1.25
    )


def test_seed_reproducibility():
    def rollout(seed):
        env = make_env(cfg(init_noise=0.3), 16, "cpu", seed)
        gen = torch.Generator().manual_seed(1)
        obs, _ = env.reset()
        out = [obs]
        for _ in range(40):  # crosses the 30-step truncation and resets
            out.append(env.step(env.random_actions(gen)).obs)
        return torch.stack(out)

    a, b, c = rollout(3), rollout(3), rollout(4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    env = make_env(cfg(init_noise=0.3), 4, "cpu", 0)
    first, _ = env.reset(seed=9)
    env.step(env.random_actions())
    again, _ = env.reset(seed=9)
    assert torch.equal(first, again)


def test_bad_config():
    with pytest.raises(ConfigError, match="n_agents"):
        make_env(cfg(n_agents=0), 1, "cpu", 0)
    with pytest.raises(ConfigError, match="goal_tolerance"):
        make_env(cfg(goal_tolerance=0.0), 1, "cpu", 0)
    with pytest.raises(ConfigError, match="not_a_key"):
        make_env(cfg(not_a_key=1), 1, "cpu", 0)
    with pytest.raises(ConfigError, match="n_goals"):
        make_env(cfg(n_goals="four"), 1, "cpu", 0)
    with pytest.raises(ConfigError, match="distance_power must be > 0"):
        make_env(cfg(distance_power=0.0), 1, "cpu", 0)


def test_pad_stack_unpad_heterogeneous_fake():
    # No multigoal agent is heterogeneous; check the shared padding helpers with fake agents.
    per_agent = [torch.randn(3, 2), torch.randn(3, 5), torch.randn(3, 1)]
    stacked = pad_stack(per_agent, 5)
    assert stacked.shape == (3, 3, 5)
    assert (stacked[:, 0, 2:] == 0).all() and (stacked[:, 2, 1:] == 0).all()
    for original, back in zip(per_agent, unpad(stacked, (2, 5, 1)), strict=True):
        assert torch.equal(original, back)
    spec = EnvSpec(
        agent_names=("a", "b", "c"),
        obs_dims=(2, 5, 1),
        act_dims=(1, 3, 3),
        state_dim=8,
        max_episode_steps=10,
        act_low=-torch.ones(3, 3),
        act_high=torch.ones(3, 3),
    )
    assert not spec.homogeneous and spec.obs_dim == 5 and spec.act_dim == 3
    assert spec.obs_mask().sum(dim=1).tolist() == [2, 5, 1]
    assert spec.act_mask()[0].tolist() == [True, False, False]
