"""`agent.critic_rewards=per_agent`: a centralised critic with one Q_i per agent of its own
reward. Its TD targets by hand, Q_i read from agent i's head at agent i's substitution, each
agent's actor gradient from its own Q_i only, and the agents that learn the team reward alone
refusing it."""

from __future__ import annotations

import pytest
import torch
from conftest import make_spec
from test_semantics import CONFIGS, GAMMA, REWARD, REWARD_SCALE, TERMINATED, critic_batch

from marl_diff.agents import make_agent
from marl_diff.agents.networks import CentralCritic, substitute_each_agent
from marl_diff.errors import ConfigError

PER_AGENT = ["gaussian", "ddpl", "qvpo"]


def agent(algorithm: str, **overrides):
    config = {**CONFIGS[algorithm], "critic_rewards": "per_agent", **overrides}
    return make_agent(config, make_spec(), "cpu")


def test_a_per_agent_critic_has_one_value_per_agent_from_the_joint_input():
    torch.manual_seed(0)
    critic = CentralCritic(4, 2, 1, [8], n_q=3, per_agent=True)
    state, joint = torch.randn(5, 4), torch.rand(5, 2, 1)
    assert critic(state, joint).shape == (3, 5, 2)
    assert torch.equal(critic.value(state, joint), critic(state, joint).min(0).values)
    # agent 1's Q_1 depends on agent 0's action too: the input is the joint action
    moved = joint.clone()
    moved[:, 0] += 0.5
    assert not torch.allclose(critic(state, moved)[..., 1], critic(state, joint)[..., 1])
    with pytest.raises(ValueError, match="one output per agent"):
        CentralCritic(4, 2, 1, [8], out_features=2, per_agent=True)


@pytest.mark.parametrize("algorithm", PER_AGENT)
def test_per_agent_target_is_each_agents_scaled_reward_plus_its_discounted_min_and_bonus(
    algorithm, monkeypatch
):
    """y_i = scale * r_i + gamma (1 - term) (min_k Q'_ki(s', a') + bonus_i); no mean over agents."""
    ac = agent(algorithm, gamma=GAMMA, reward_scale=REWARD_SCALE)
    batch = critic_batch()
    bonus = torch.tensor([[0.5, -0.5], [1.0, 1.0], [0.0, 2.0]])
    next_q = torch.tensor(  # [K=2, B=3, N=2]
        [[[1.0, 4.0], [0.0, 0.0], [-2.0, 3.0]], [[2.0, 3.0], [5.0, 5.0], [-1.0, 1.0]]]
    )
    q = torch.zeros(2, 3, 2, requires_grad=True)
    monkeypatch.setattr(ac, "target_action", lambda obs, state: (batch.action, bonus))
    monkeypatch.setattr(ac.critic_target, "forward", lambda state, joint: next_q)
    monkeypatch.setattr(ac.critic, "forward", lambda state, joint: q)
    metrics = ac.update_critic(batch)

    not_done = (1.0 - TERMINATED)[:, None]
    expected = REWARD_SCALE * REWARD + GAMMA * not_done * (next_q.min(0).values + bonus)
    # by hand for transition 0: agent 0 2 * 1 + 0.9 (1 + 0.5), agent 1 2 * 3 + 0.9 (3 - 0.5)
    assert expected[0].tolist() == pytest.approx([3.35, 8.25])
    assert torch.equal(expected[1], 2.0 * REWARD[1])  # terminal: no bootstrap
    loss = 2 * expected.square().mean()  # q = 0 for both members
    assert metrics["loss/critic"].item() == pytest.approx(loss.item(), rel=1e-6)
    # d loss / d q_kbi = 2 (q - y) / (B N) recovers every agent's own target
    recovered = -q.grad * expected.numel() / 2
    assert torch.allclose(recovered, expected.expand(2, -1, -1), atol=1e-6)


def test_per_agent_q_each_agent_reads_agent_is_head_at_agent_is_substitution():
    torch.manual_seed(1)
    ac = agent("ddpl")
    state, base = torch.randn(4, 4), torch.rand(4, 2, 1) * 2 - 1
    own = torch.rand(3, 4, 2, 1) * 2 - 1  # 3 candidates per state
    q = ac.q_each_agent(state, base, own)
    assert q.shape == (3, 4, 2)
    for i in range(2):
        joint = base.expand(3, -1, -1, -1).clone()
        joint[:, :, i] = own[:, :, i]
        expected = ac.critic.value(state.expand(3, -1, -1), joint)[..., i]
        torch.testing.assert_close(q[..., i], expected)
    # the team critic at the same joint actions would need only one output
    team = make_agent({**CONFIGS["ddpl"]}, make_spec(), "cpu")
    assert team.q_each_agent(state, base, own).shape == (3, 4, 2)
    assert team.critic.q.net[-1].weight.shape[-1] == 1
    assert ac.critic.q.net[-1].weight.shape[-1] == 2


@pytest.mark.parametrize("others_actions", ["replay", "policy"])
def test_per_agent_actor_gradient_of_each_action_is_its_own_q_only(others_actions):
    """d own_q_sum / d a_i = d Q_i(s, a_i, a_-i) / d a_i, with a_-i from `others_actions`
    held fixed: agent j's Q_j does not pull on agent i's action."""
    torch.manual_seed(2)
    ac = agent("gaussian", others_actions=others_actions)
    batch = critic_batch()
    action = (torch.rand(3, 2, 1) * 2 - 1).requires_grad_(True)
    ac.own_q_sum(batch, action).sum().backward()
    others = batch.action if others_actions == "replay" else action.detach()
    for i in range(2):
        own = action.detach().clone().requires_grad_(True)
        joint = substitute_each_agent(others, own)[:, i]  # [B, N, A], agent i's substitution
        ac.critic.value(batch.state, joint)[..., i].sum().backward()
        torch.testing.assert_close(action.grad[:, i], own.grad[:, i])


@pytest.mark.parametrize("algorithm", PER_AGENT)
def test_per_agent_critics_train_and_act(algorithm):
    """A few full updates with per-agent critics: finite losses, actions in the box."""
    torch.manual_seed(3)
    ac = agent(algorithm)
    for _ in range(3):
        metrics = ac.update(critic_batch())
    assert all(torch.isfinite(value).all() for value in metrics.values())
    action = ac.act(torch.randn(5, 2, 3), explore=True, state=torch.randn(5, 4))
    assert action.shape == (5, 2, 1) and action.abs().max() <= 1.0


@pytest.mark.parametrize("algorithm", ["dacer", "ddiffpg", "dtql", "qensemble"])
def test_agents_that_learn_the_team_reward_only_refuse_per_agent_critics(algorithm):
    with pytest.raises(ConfigError, match="agent.critic_rewards must be one of team, not"):
        make_agent({"algorithm": algorithm, "critic_rewards": "per_agent"}, make_spec(), "cpu")


def test_an_unknown_critic_rewards_value_names_the_choices():
    with pytest.raises(ConfigError, match="must be one of team, per_agent, not 'own'"):
        make_agent({**CONFIGS["gaussian"], "critic_rewards": "own"}, make_spec(), "cpu")
