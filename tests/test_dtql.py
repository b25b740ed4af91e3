"""DTQL: the IQL critic by hand, the trust-region loss's gradient path, the pretraining phase,
acting by Q for a single agent and decentralised sampling for several, and the tanh-Gaussian's
log-density of given actions."""

from __future__ import annotations

import pytest
import torch
from conftest import make_spec
from omegaconf import OmegaConf

from marl_diff.agents import make_agent
from marl_diff.agents.dtql import expectile_loss
from marl_diff.buffer import Batch
from marl_diff.run import compose

TINY = [
    "agent.actor_hidden=[16,16]",
    "agent.critic_hidden=[16,16]",
    "agent.bc_hidden=[16,16]",
    "agent.value_hidden=[16,16]",
    "agent.act_samples=8",
]


def dtql(spec, *overrides: str):
    cfg = compose(["scenario=pendulum", "agent=dtql", "runner=offline", *TINY, *overrides])
    return make_agent(OmegaConf.to_container(cfg.agent, resolve=True), spec, "cpu")


def random_batch(spec, b: int = 16, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    n, d, a, s = spec.n_agents, spec.obs_dim, spec.act_dim, spec.state_dim

    def rand(*shape):
        return torch.rand(*shape, generator=gen) * 2 - 1

    terminated = (torch.rand(b, generator=gen) < 0.3).float()
    mask = spec.act_mask().float()
    return Batch(
        rand(b, n, d),
        rand(b, s),
        rand(b, n, a) * mask,
        rand(b, n),
        rand(b, n, d),
        rand(b, s),
        terminated,
    )


def test_expectile_loss_by_hand():
    diff = torch.tensor([2.0, -1.0, 0.0])
    assert expectile_loss(diff, 0.7).tolist() == pytest.approx([0.7 * 4, 0.3 * 1, 0.0])


def test_iql_critic_update_by_hand():
    """V regresses by expectile toward the target critic's min Q at dataset actions; every Q
    member toward r + gamma (1 - done) V(s'). Learning rates 0 keep the networks fixed, so both
    losses can be computed beforehand."""
    spec = make_spec(2, (3, 2), (1, 2), 5)
    agent = dtql(spec)
    for name in ("critic", "value"):
        for group in agent.optimizers[name].param_groups:
            group["lr"] = 0.0
    batch = random_batch(spec)
    with torch.no_grad():
        q_data = agent.critic_target(batch.state, batch.action).min(0).values
        diff = q_data - agent.value(batch.state)[0, :, 0]
        value_loss = (torch.where(diff < 0, 0.3, 0.7) * diff.square()).mean()
        next_v = agent.value(batch.next_state)[0, :, 0]
        target = batch.reward.mean(-1) + 0.99 * (1 - batch.terminated) * next_v
        q = agent.critic(batch.state, batch.action)  # [2, B]
        critic_loss = (q - target).pow(2).mean(-1).sum()
    metrics = agent.update_critic(batch)
    torch.testing.assert_close(metrics["loss/value"], value_loss)
    torch.testing.assert_close(metrics["loss/critic"], critic_loss)


def test_trust_region_trains_only_the_one_step_policy_after_pretraining():
    spec = make_spec(1, (3,), (1,), 3)
    agent = dtql(spec, "agent.pretrain_updates=2", "agent.alpha=1.0")
    batch = random_batch(spec, 32)

    def snapshot(module):
        return [p.detach().clone() for p in module.parameters()]

    policy0, behaviour0 = snapshot(agent.policy), snapshot(agent.behaviour)
    for _ in range(2):  # pretraining: behaviour model and critic only
        metrics = agent.update(batch)
    assert "loss/actor" not in metrics
    assert all(torch.equal(a, b) for a, b in zip(policy0, snapshot(agent.policy), strict=True))
    assert not all(
        torch.equal(a, b) for a, b in zip(behaviour0, snapshot(agent.behaviour), strict=True)
    )
    # the trust-region loss's gradient reaches the policy only, never the behaviour model
    agent.behaviour.zero_grad(set_to_none=True)
    action, _ = agent.policy(batch.obs, with_log_prob=False)
    agent.behaviour.requires_grad_(False)
    trust = agent.behaviour.dsm_loss(action, batch.obs).mean()
    agent.behaviour.requires_grad_(True)
    trust.backward()
    assert all(p.grad is None for p in agent.behaviour.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.policy.parameters())
    agent.policy.zero_grad(set_to_none=True)
    metrics = agent.update(batch)
    assert {"loss/actor", "loss/trust", "loss/behaviour"} <= set(metrics)
    assert torch.isfinite(torch.stack(list(metrics.values()))).all()
    assert not all(torch.equal(a, b) for a, b in zip(policy0, snapshot(agent.policy), strict=True))


def test_single_agent_acts_by_the_critic_and_several_agents_sample_their_own_policy(monkeypatch):
    spec = make_spec(1, (3,), (1,), 3)
    agent = dtql(spec, "agent.act_samples=64")
    assert agent.select_by_q
    # a critic that loves actions near 0.5: the softmax pick lands there
    monkeypatch.setattr(
        agent.critic_target, "value", lambda s, a: -1e4 * (a[..., 0, 0] - 0.5).square()
    )
    obs = torch.rand(5, 1, 3) * 2 - 1
    action = agent.act(obs, explore=False)
    assert action.shape == (5, 1, 1)
    candidates_spread = agent.sample_policy(obs.expand(64, 5, 1, 3)).std()
    assert candidates_spread > 0.05  # the pick is not just the policy collapsing there
    assert (action - 0.5).abs().max() < 0.5 * candidates_spread

    hetero = make_spec(2, (3, 2), (1, 2), 5)
    agent = dtql(hetero)
    assert not agent.select_by_q  # no global state at execution
    action = agent.act(torch.rand(7, 2, 3), explore=False)
    assert action.shape == (7, 2, 2) and action.abs().max() <= 1
    assert torch.all(action[:, 0, 1] == 0)  # agent 0's padded action entry


def test_tanh_gaussian_log_prob_of_given_actions_matches_its_samples():
    from marl_diff.agents.gaussian import TanhGaussianPolicy

    torch.manual_seed(0)
    spec = make_spec(2, (3, 3), (1, 2), 4)
    policy = TanhGaussianPolicy(spec, [16], "relu", False)
    obs = torch.rand(6, 2, 3)
    action, log_prob = policy(obs)
    torch.testing.assert_close(policy.log_prob(obs, action), log_prob, atol=2e-3, rtol=1e-4)
