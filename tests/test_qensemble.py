"""The Q-ensemble diffusion agent: per-member critic targets from the EMA actor, the LCB, the EMA
schedule, the actor loss's gradients and detached scales, acting, checkpoints and an offline
run end to end."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from conftest import make_spec, train_run
from omegaconf import OmegaConf

from marl_diff import catalog
from marl_diff.agents import make_agent
from marl_diff.buffer import Batch

# Tiny networks with every part of the update running: 4 members, EMA from the first update.
TINY = {
    "actor_hidden": [16, 16],
    "critic_hidden": [16, 16],
    "critic_members": 4,
    "ema_start": 0,
    "act_samples": 4,
}


def build(spec, seed: int = 0, **overrides):
    """The catalog agent with `TINY` and `overrides` on top."""
    torch.manual_seed(seed)
    config = {**OmegaConf.to_container(catalog.load("agent", "qensemble")), **TINY, **overrides}
    return make_agent(config, spec, "cpu")


def random_batch(spec, b: int = 8, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    n, d, a, s = spec.n_agents, spec.obs_dim, spec.act_dim, spec.state_dim
    obs_mask, act_mask = spec.obs_mask().float(), spec.act_mask().float()
    return Batch(
        torch.randn(b, n, d, generator=gen) * obs_mask,
        torch.randn(b, s, generator=gen),
        (torch.rand(b, n, a, generator=gen) * 2 - 1) * act_mask,
        torch.randn(b, n, generator=gen),
        torch.randn(b, n, d, generator=gen) * obs_mask,
        torch.randn(b, s, generator=gen),
        (torch.rand(b, generator=gen) < 0.25).float(),
    )


def pendulum_spec():
    return make_spec(1, (3,), (1,), 3)


def params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(left, right) -> bool:
    return all(torch.equal(x, y) for x, y in zip(left, right, strict=True))


# ---------------------------------------------------------------- critic targets and the LCB
def test_each_member_regresses_to_its_own_target_with_the_ema_actors_next_action():
    spec = pendulum_spec()
    agent = build(spec)
    with torch.no_grad():  # an EMA actor that differs from the policy
        for p in agent.ema_policy.parameters():
            p.add_(torch.randn_like(p))
    batch = random_batch(spec)
    torch.manual_seed(1)
    next_action = agent.ema_policy.sample(batch.next_obs)
    torch.manual_seed(1)
    assert not torch.allclose(agent.policy.sample(batch.next_obs), next_action)
    with torch.no_grad():
        q_next = agent.critic_target(batch.next_state, next_action)  # [K=4, B]
        target = batch.reward.mean(-1) + 0.99 * (1 - batch.terminated) * q_next
        q = agent.critic(batch.state, batch.action)
    expected = sum(((q[k] - target[k]) ** 2).mean() for k in range(4))
    torch.manual_seed(1)
    loss = agent.update_critic(batch)["loss/critic"]
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("q_scale", ["members", "lcb"])
def test_actor_q_term_is_the_lcb_over_members_by_hand(monkeypatch, q_scale):
    spec = pendulum_spec()
    agent = build(spec, q_scale=q_scale, entropy="none")
    members = torch.tensor([[1.0, -2.0], [3.0, 0.0], [2.0, 4.0], [6.0, 2.0]])  # [K=4, B=2]

    def fixed(state, joint):  # [K, B, N=1], still a function of the actions
        return members[..., None] + 0.0 * joint.sum((-1, -2))

    monkeypatch.setattr(agent.critic, "forward", fixed)
    terms = agent.actor_terms(random_batch(spec, b=2))
    lcb = torch.tensor([3.0 - 4.0 * math.sqrt(14 / 3), 1.0 - 4.0 * math.sqrt(20 / 3)])
    torch.testing.assert_close(terms["q_lcb"][:, 0], lcb)
    scale = 20 / 8 if q_scale == "members" else lcb.abs().mean().item()
    torch.testing.assert_close(terms["q_loss"], -lcb.mean() / scale)


def test_bc_is_each_agents_mean_over_its_real_action_entries():
    """As the official mean squared error per action entry, whatever each agent's size."""
    spec = make_spec(2, (3, 2), (1, 2), 5)
    agent = build(spec)
    batch = random_batch(spec)
    terms = agent.actor_terms(batch, torch.Generator().manual_seed(2))
    dsm = agent.policy.dsm_loss(batch.action, batch.obs, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(terms["bc"], (dsm / torch.tensor([1.0, 2.0])).mean(0).sum())


def test_critic_clip_is_k_times_the_actors(monkeypatch):
    """The critic's loss sums its K members' losses: clipping at K x grad_clip is the official
    clip of their mean."""
    spec = pendulum_spec()
    agent = build(spec)
    seen = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):
        seen.append(max_norm)
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    agent.update(random_batch(spec))
    assert seen == [4.0 * 4, 4.0]  # critic (K = 4 members), then actor


# ---------------------------------------------------------------- the EMA actor
def test_ema_actor_moves_at_its_rate_every_fifth_update_from_its_start():
    spec = pendulum_spec()
    agent = build(spec, ema_start=5, ema_every=5)
    batch = random_batch(spec, b=16)
    ema = params(agent.ema_policy)
    for _ in range(5):  # updates 0-4: before the start
        agent.update(batch)
    assert same(params(agent.ema_policy), ema)
    for step in range(5, 11):
        agent.update(batch)
        now = params(agent.ema_policy)
        if step % 5:
            assert same(now, ema), step
            continue
        actor = params(agent.policy)
        for e, old, p in zip(now, ema, actor, strict=True):
            torch.testing.assert_close(e, 0.995 * old + 0.005 * p)
        assert not same(now, ema)
        ema = now


# ---------------------------------------------------------------- the actor loss
@pytest.mark.parametrize("entropy", ["chain", "knn", "none"])
def test_actor_loss_trains_the_policy_only_and_every_part_is_finite(entropy):
    spec = make_spec(2, (3, 2), (1, 2), 5)
    agent = build(spec, entropy=entropy, entropy_samples=4)
    batch = random_batch(spec)
    agent.critic.requires_grad_(False)  # as `update` does around the actor step
    terms = agent.actor_terms(batch)
    for key in ("bc", "q_loss", "entropy_loss"):
        assert torch.isfinite(terms[key]), key
    loss = terms["bc"] + terms["q_loss"] + 0.01 * terms["entropy_loss"]
    loss.backward()
    grads = [p.grad for p in agent.policy.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in agent.critic.parameters())
    assert {id(p) for g in agent.optimizers["actor"].param_groups for p in g["params"]} == {
        id(p) for p in agent.policy.parameters()
    }
    critic, target, ema, policy = (
        params(m) for m in (agent.critic, agent.critic_target, agent.ema_policy, agent.policy)
    )
    metrics = agent.update_actor(batch)
    assert all(torch.isfinite(v) for v in metrics.values())
    assert ("loss/entropy" in metrics) == (entropy != "none")
    assert same(params(agent.critic), critic) and same(params(agent.critic_target), target)
    assert same(params(agent.ema_policy), ema) and not same(params(agent.policy), policy)


def test_normalisations_divide_by_detached_means():
    """The gradient of each normalised term is the term's own gradient over a constant scale:
    recomputing it with the scale detached by hand gives the same gradients."""
    spec = make_spec(2, (3, 2), (1, 2), 5)
    agent = build(spec, entropy="knn", entropy_samples=4)
    batch = random_batch(spec)
    weights = list(agent.policy.parameters())
    terms = agent.actor_terms(batch, torch.Generator().manual_seed(3))
    assert not terms["q_scale"].requires_grad and not terms["entropy_scale"].requires_grad
    again = agent.actor_terms(batch, torch.Generator().manual_seed(3))
    members = agent.member_q(batch, again["a0"])
    q_scale = members.abs().mean((0, 1)).detach()
    h_scale = again["entropy"].abs().mean(0).detach()
    torch.testing.assert_close(terms["q_scale"], q_scale)
    torch.testing.assert_close(terms["entropy_scale"], h_scale)
    by_hand = {
        "q_loss": -(agent.critic.reduce(members).mean(0) / q_scale).sum(),
        "entropy_loss": -(again["entropy"].mean(0) / h_scale).sum(),
    }
    for key, expected in by_hand.items():
        got = torch.autograd.grad(terms[key], weights, retain_graph=True, allow_unused=True)
        want = torch.autograd.grad(expected, weights, retain_graph=True, allow_unused=True)
        for g, w in zip(got, want, strict=True):
            if w is None:
                assert g is None or not g.any(), key
            else:
                torch.testing.assert_close(g, w, msg=key)
        assert any(w is not None and w.any() for w in want), key


def test_chain_entropy_has_no_useful_gradient_and_knn_has_one():
    """Why `entropy: chain` is inert (the documented measurement, on a tiny case)."""
    spec = pendulum_spec()
    batch = random_batch(spec, b=64)
    norms = {}
    for entropy in ("chain", "knn"):
        agent = build(spec, entropy=entropy, entropy_samples=8)
        terms = agent.actor_terms(batch, torch.Generator().manual_seed(0))
        for key in ("bc", "entropy_loss"):
            grads = torch.autograd.grad(
                terms[key], list(agent.policy.parameters()), retain_graph=True, allow_unused=True
            )
            norms[entropy, key] = math.sqrt(sum(float(g.square().sum()) for g in grads))
    assert norms["chain", "entropy_loss"] < 1e-6 * norms["chain", "bc"]
    assert norms["knn", "entropy_loss"] > 1e-2 * norms["knn", "bc"]


# ---------------------------------------------------------------- acting
def test_single_agent_acts_by_a_softmax_over_the_target_lcb(monkeypatch):
    spec = pendulum_spec()
    agent = build(spec, act_samples=5)
    assert agent.select_by_q
    obs = torch.randn(7, 1, 3)
    fixed = torch.linspace(-0.8, 0.8, 5)[:, None, None, None].expand(5, 7, 1, 1)

    def sample(o, candidates=None):
        assert candidates == 5
        return fixed

    monkeypatch.setattr(agent.policy, "sample", sample)

    def q(state, action, members=None):  # every member Q = 1000 a: std 0, LCB = Q, near one-hot
        return (1000.0 * action[..., 0, 0]).expand(4, *action.shape[:-2])

    monkeypatch.setattr(agent.critic_target, "forward", q)
    action = agent.act(obs, explore=False)
    assert action.shape == (7, 1, 1)
    torch.testing.assert_close(action, torch.full((7, 1, 1), 0.8))


def test_acting_shapes_single_and_heterogeneous_agents():
    spec = pendulum_spec()
    agent = build(spec)
    action = agent.act(torch.randn(6, 1, 3), explore=True)
    assert action.shape == (6, 1, 1) and action.abs().max() <= 1
    spec = make_spec(2, (3, 2), (1, 2), 5)
    agent = build(spec)
    assert not agent.select_by_q
    obs = torch.randn(6, 2, 3) * spec.obs_mask().float()
    for action in (agent.act(obs, explore=False), agent.sample_policy(obs)):
        assert action.shape == (6, 2, 2) and action.abs().max() <= 1
        assert torch.all(action[:, 0, 1] == 0)  # agent 0's padded entry


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_restores_the_ema_actor_and_all_64_target_members():
    spec = pendulum_spec()
    overrides = {"critic_members": 64, "critic_hidden": [8]}
    agent = build(spec, **overrides)
    batch = random_batch(spec, b=16)
    for _ in range(2):
        agent.update(batch)
    buffer = io.BytesIO()
    torch.save(agent.training_state(), buffer)
    buffer.seek(0)
    fresh = build(spec, seed=1, **overrides)
    assert not same(params(fresh.ema_policy), params(agent.ema_policy))
    fresh.load_training_state(torch.load(buffer, weights_only=False))
    assert fresh.critic_target.q.net[0].weight.shape[0] == 64
    for name in ("ema_policy", "critic_target", "critic", "policy"):
        assert same(params(getattr(fresh, name)), params(getattr(agent, name))), name
    assert fresh.updates == agent.updates == 2
    torch.manual_seed(5)
    expected = agent.target_action(batch.next_obs, batch.next_state)[0]
    torch.manual_seed(5)
    torch.testing.assert_close(fresh.target_action(batch.next_obs, batch.next_state)[0], expected)


# ---------------------------------------------------------------- an offline run
def pendulum_episode(rng, steps: int):
    from marl_diff.datasets import EpisodeRecord

    obs = rng.normal(size=(steps + 1, 1, 3)).astype(np.float32)
    return EpisodeRecord(
        obs=obs,
        state=obs[:, 0],
        actions=rng.uniform(-2, 2, (steps, 1, 1)).astype(np.float32),
        rewards=rng.normal(size=(steps, 1)).astype(np.float32),
        terminated=False,
    )


def test_offline_run_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("minari")
    from marl_diff.datasets import write_minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    rng = np.random.default_rng(0)
    write_minari(
        "test/qensemble-v0",
        [pendulum_episode(rng, 30), pendulum_episode(rng, 30)],
        pendulum_spec(),
        gym_id="Pendulum-v1",
        algorithm="random",
        description="random pendulum-shaped transitions",
        ref_scores=None,
    )
    tiny = [f"agent.{k}={v}".replace(" ", "") for k, v in TINY.items()]
    report, rows = train_run(
        tmp_path / "run",
        [
            "scenario=pendulum",
            "agent=qensemble",
            "runner=offline",
            "runner.dataset=test/qensemble-v0",
            "runner.total_updates=20",
            "runner.batch_size=32",
            "runner.log_every=10",
            "runner.eval_every=0",
            "runner.eval_episodes=2",
            "runner.eval_num_envs=2",
            *tiny,
        ],
    )
    logged = [r for r in rows if "loss/critic" in r]
    assert [r["updates"] for r in logged] == [10, 20]
    for row in logged:
        for key in ("loss/critic", "loss/actor", "loss/bc", "loss/q", "loss/entropy", "q/lcb"):
            assert math.isfinite(row[key]), key
    assert math.isfinite(report["mean_return"])
