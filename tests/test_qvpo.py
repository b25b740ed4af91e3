"""QVPO: clipped-advantage weights and best-sample selection on hand-computable cases, the
uniform entropy actions and their decaying coefficient, best-of-K acting, heterogeneous agents,
checkpoints, and learning on pendulum."""

from __future__ import annotations

import pytest
import torch
from conftest import make_spec, train_run

from marl_diff.agents import make_agent
from marl_diff.buffer import Batch
from marl_diff.errors import ConfigError
from marl_diff.nn import COMPILED_MIN_ROWS, compiler_available

TINY_QVPO = {
    "algorithm": "qvpo",
    "name": "qvpo",
    "actor_hidden": [16, 16],
    "critic_hidden": [16, 16],
    "diffusion_steps": 3,
    "n_samples": 4,
    "n_entropy_samples": 3,
}


def agent(env_spec=None, **overrides):
    return make_agent({**TINY_QVPO, **overrides}, env_spec or make_spec(), "cpu")


def batch(b=1, n=2, d=3, a=1, s=4) -> Batch:
    return Batch(
        torch.zeros(b, n, d),
        torch.zeros(b, s),
        torch.zeros(b, n, a),
        torch.zeros(b, n),
        torch.zeros(b, n, d),
        torch.zeros(b, s),
        torch.zeros(b),
    )


# ---------------------------------------------------------------------------- weights by hand
def test_weights_are_the_clipped_advantage_never_negative_and_zero_below_the_mean():
    q = torch.tensor([1.0, 2.0, 3.0, 6.0])[:, None, None]  # [M=4, B=1, N=1], mean 3
    weights = agent().q_weights(q)
    assert weights.flatten().tolist() == pytest.approx([0.0, 0.0, 0.0, 3.0])
    random_q = torch.randn(64, 32, 3) * 100 - 50
    weights = agent().q_weights(random_q)
    assert (weights >= 0).all()
    below = random_q <= random_q.mean(0, keepdim=True)
    assert (weights[below] == 0).all() and (weights[~below] > 0).all()


def patched(monkeypatch, qvpo, samples, q):
    monkeypatch.setattr(qvpo.policy, "sample", lambda obs, candidates=None, **kw: samples)
    monkeypatch.setattr(qvpo, "q_each_agent", lambda state, base, own: q)


SAMPLES = torch.tensor([[[[0.1], [0.9]]], [[[0.5], [0.2]]], [[[0.7], [-0.4]]], [[[-0.3], [0.0]]]])
Q = torch.tensor([[[1.0, 5.0]], [[2.0, 1.0]], [[6.0, 1.0]], [[3.0, 1.0]]])  # [M=4, B=1, N=2]


def test_best_sample_is_kept_with_its_clipped_advantage(monkeypatch):
    qvpo = agent(n_samples=4, n_entropy_samples=0, train_on="best")
    patched(monkeypatch, qvpo, SAMPLES, Q)
    actions, weights, stats = qvpo.training_set(batch())
    assert actions.shape == (1, 1, 2, 1)
    assert actions.flatten().tolist() == pytest.approx([0.7, 0.9])  # the arg-max-Q samples
    # agent 0: mean 3, best 6 -> 3; agent 1: mean 2, best 5 -> 3
    assert weights.flatten().tolist() == pytest.approx([3.0, 3.0])
    assert stats["qvpo/positive_weight_fraction"].item() == pytest.approx(2 / 8)


def test_train_on_all_keeps_every_sample_with_its_weight(monkeypatch):
    qvpo = agent(n_samples=4, n_entropy_samples=0, train_on="all")
    patched(monkeypatch, qvpo, SAMPLES, Q)
    actions, weights, _ = qvpo.training_set(batch())
    assert torch.equal(actions, SAMPLES)
    assert weights[:, 0, 0].tolist() == pytest.approx([0.0, 0.0, 3.0, 0.0])
    assert weights[:, 0, 1].tolist() == pytest.approx([3.0, 0.0, 0.0, 0.0])


def test_actor_loss_is_the_weighted_dsm_summed_over_agents(monkeypatch):
    qvpo = agent(n_samples=4, n_entropy_samples=0, train_on="all")
    patched(monkeypatch, qvpo, SAMPLES, Q)
    dsm = torch.tensor([[[1.0, 2.0]], [[4.0, 8.0]], [[0.5, 16.0]], [[32.0, 64.0]]])
    dsm.requires_grad_(True)
    monkeypatch.setattr(qvpo.policy, "dsm_loss", lambda actions, obs: dsm * 1.0)
    metrics = qvpo.update_actor(batch())
    assert metrics["loss/actor"].item() == pytest.approx(3 * 0.5 + 3 * 2.0)


# ---------------------------------------------------------------------------- entropy term
def test_entropy_coefficient_decays_linearly_over_updates():
    qvpo = agent(entropy_alpha=0.02, entropy_alpha_final=0.002, entropy_decay_updates=1000)
    assert qvpo.entropy_alpha_at(0) == pytest.approx(0.02)
    assert qvpo.entropy_alpha_at(500) == pytest.approx(0.011)
    assert qvpo.entropy_alpha_at(1000) == pytest.approx(0.002)
    assert qvpo.entropy_alpha_at(5000) == pytest.approx(0.002)


@pytest.mark.parametrize("updates, alpha", [(0, 0.02), (50, 0.011), (100, 0.002)])
def test_uniform_entropy_actions_join_the_training_set(monkeypatch, updates, alpha):
    qvpo = agent(
        make_spec(act_dims=(2, 1)),
        n_samples=4,
        n_entropy_samples=3,
        entropy_decay_updates=100,
        train_on="best",
    )
    samples = torch.cat([SAMPLES, torch.zeros(4, 1, 2, 1)], -1)  # agent 1's 2nd entry padded
    samples[:, :, 0, 1] = 0.25
    patched(monkeypatch, qvpo, samples, Q)
    qvpo.updates = updates
    actions, weights, stats = qvpo.training_set(batch(a=2))
    assert actions.shape == (4, 1, 2, 2)  # the best sample + 3 uniform actions
    uniform = actions[1:]
    assert (uniform.abs() <= 1).all() and (uniform[:, :, 1, 1] == 0).all()
    assert uniform[:, :, 0].std() > 0  # random, not the policy's samples
    # each uniform action's weight: alpha times the state's best clipped advantage (3)
    assert torch.allclose(weights[1:], torch.full((3, 1, 2), 3 * alpha))
    assert stats["qvpo/entropy_alpha"].item() == pytest.approx(alpha)


def test_abs_q_entropy_scale(monkeypatch):
    qvpo = agent(n_samples=4, n_entropy_samples=2, entropy_scale="abs_q", entropy_alpha=0.1)
    patched(monkeypatch, qvpo, SAMPLES, -Q)
    _, weights, _ = qvpo.training_set(batch())
    assert torch.allclose(weights[1:], torch.tensor([0.3, 0.2]).expand(2, 1, 2))


# ---------------------------------------------------------------------------- acting
@pytest.mark.parametrize("explore, k", [(True, 4), (False, 32)])
def test_best_of_k_acting_with_the_state_and_a_plain_sample_without(monkeypatch, explore, k):
    qvpo = agent()
    drawn = []

    def sample(obs, candidates=None, **kw):
        drawn.append(candidates)
        if candidates is None:
            return SAMPLES[0]
        return SAMPLES[torch.arange(candidates) % 4]

    monkeypatch.setattr(qvpo.policy, "sample", sample)
    monkeypatch.setattr(
        qvpo,
        "q_each_agent",
        lambda state, base, own, critic=None: own[..., 0] * torch.tensor([1.0, -1.0]),
    )
    action = qvpo.act(torch.zeros(1, 2, 3), explore=explore, state=torch.zeros(1, 4))
    assert drawn == [k]
    assert action.flatten().tolist() == pytest.approx([0.7, -0.4])  # agent 1 minimises own
    # decentralised execution: no state, so no critic, just a sample of pi_i(. | o_i)
    action = qvpo.act(torch.zeros(1, 2, 3), explore=explore)
    assert drawn[-1] is None
    assert action.flatten().tolist() == pytest.approx([0.1, 0.9])


def test_critic_target_takes_the_best_target_policy_sample_by_target_q(monkeypatch):
    qvpo = agent(target_samples=4)
    monkeypatch.setattr(qvpo.target_policy, "sample", lambda obs, candidates=None, **kw: SAMPLES)
    seen = []

    def q_of(state, base, own, critic=None):
        seen.append(critic)
        return own[..., 0]

    monkeypatch.setattr(qvpo, "q_each_agent", q_of)
    action, bonus = qvpo.target_action(torch.zeros(1, 2, 3), torch.zeros(1, 4))
    assert seen == [qvpo.critic_target]
    assert action.flatten().tolist() == pytest.approx([0.7, 0.9])
    assert bonus.tolist() == [[0.0, 0.0]]


@pytest.mark.skipif(not compiler_available(), reason="torch.compile needs a C++ compiler")
def test_compile_chains_compiles_the_target_policys_chain_and_the_candidates(compiled_calls):
    """With the EMA target actor, `compile_chains` compiles the target policy's denoiser for
    the critic target's samples and the current one's for the candidates, each with the eager
    numbers; the weighted DSM loss (with gradient) runs eagerly."""
    qvpo, eager = agent(compile_chains=True), agent()
    eager.load_state_dict(qvpo.state_dict())
    obs = torch.randn(COMPILED_MIN_ROWS, 2, 3)
    for calls, run in (
        (3, lambda a: a.target_action(obs, torch.zeros(COMPILED_MIN_ROWS, 4))[0]),
        (6, lambda a: a.candidates(obs, 4)),
    ):
        results = []
        for each in (qvpo, eager):
            torch.manual_seed(0)
            results.append(run(each))
        assert torch.equal(results[0], results[1])
        assert len(compiled_calls) == calls
    target_mlp = qvpo.target_policy.denoiser.net.mlp
    assert compiled_calls[:3] == [target_mlp] * 3
    assert compiled_calls[3:] == [qvpo.policy.denoiser.net.mlp] * 3
    qvpo.policy.dsm_loss(torch.zeros(COMPILED_MIN_ROWS, 2, 1), obs)
    assert len(compiled_calls) == 6


# ---------------------------------------------------------------------------- heterogeneous
def test_acts_and_updates_on_a_heterogeneous_spec():
    het = make_spec(n_agents=3, obs_dims=(3, 5, 2), act_dims=(2, 1, 3), state_dim=6)
    for overrides in (
        {},
        {"train_on": "all", "others_actions": "policy", "target_actor": "current"},
    ):
        qvpo = agent(het, **overrides)
        mask = het.act_mask()
        obs, state = torch.randn(5, 3, 5), torch.randn(5, 6)
        for explore, st in ((True, state), (False, state), (False, None)):
            action = qvpo.act(obs, explore=explore, state=st)
            assert action.shape == (5, 3, 3)
            assert (action.abs() <= 1).all() and (action[:, ~mask] == 0).all()
        b = Batch(
            obs,
            state,
            qvpo.act(obs, True, state),
            torch.randn(5, 3),
            torch.randn(5, 3, 5),
            torch.randn(5, 6),
            torch.zeros(5),
        )
        actions, _, _ = qvpo.training_set(b)
        assert (actions[:, :, ~mask] == 0).all()
        before = [p.clone() for p in qvpo.policy.parameters()]
        metrics = qvpo.update(b)
        assert all(torch.isfinite(v) for v in metrics.values())
        assert {
            "loss/actor",
            "loss/critic",
            "q/mean",
            "qvpo/entropy_alpha",
            "qvpo/positive_weight_fraction",
        } <= set(metrics)
        assert any(
            not torch.equal(p, q) for p, q in zip(before, qvpo.policy.parameters(), strict=True)
        )


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip():
    qvpo = agent()
    b = Batch(
        torch.randn(8, 2, 3),
        torch.randn(8, 4),
        torch.rand(8, 2, 1) * 2 - 1,
        torch.randn(8, 2),
        torch.randn(8, 2, 3),
        torch.randn(8, 4),
        torch.zeros(8),
    )
    for _ in range(3):
        qvpo.update(b)
    state = qvpo.training_state()
    assert any(k.startswith("target_policy.") for k in state["modules"])
    restored = agent()
    restored.load_training_state(state)
    for key, value in qvpo.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    assert int(restored.updates) == 3
    assert restored.entropy_alpha_at(int(restored.updates)) == qvpo.entropy_alpha_at(3)
    obs, st = torch.randn(4, 2, 3), torch.randn(4, 4)
    torch.manual_seed(0)
    expected = qvpo.act(obs, True, st)
    torch.manual_seed(0)
    assert torch.equal(restored.act(obs, True, st), expected)
    # the optimiser states (Adam moments and step counts) come back too
    for name, opt in qvpo.optimizers.items():
        theirs = restored.optimizers[name].state_dict()["state"]
        for index, entry in opt.state_dict()["state"].items():
            for key, value in entry.items():
                assert torch.equal(theirs[index][key], value), (name, index, key)


def test_bad_settings_are_config_errors():
    for bad in (
        {"train_on": "mean"},
        {"entropy_scale": "q"},
        {"target_actor": "lagged"},
        {"n_samples": 0},
        {"schedule": "sigmoid"},
        {"n_entropy_samples": -1},
        {"policy_tau": 0.0},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            agent(**bad)


# ---------------------------------------------------------------------------- learning
@pytest.mark.learning(seconds=110)
def test_qvpo_learns_pendulum(tmp_path):
    # A uniform-random / untrained policy scores about -1200 on Pendulum; solved is about -150.
    overrides = {
        "runner.total_steps=5000": "budget (catalog: 20000)",
        "runner.warmup_steps=500": "budget (catalog: 1000)",
        "runner.batch_size=64": "budget (catalog: 256)",
        "runner.eval_every=0": "budget: only the final evaluation",
        "agent.actor_hidden=[64,64]": "budget: 2x64 instead of 3x256",
        "agent.critic_hidden=[64,64]": "budget: 2x64 instead of 3x256",
        "agent.actor_lr=1e-3": "a few thousand updates instead of the card's 1M",
        "agent.critic_lr=1e-3": "a few thousand updates instead of the card's 1M",
        "agent.diffusion_steps=3": "budget (card: T=20); reached -222 (T=5: -210 and -240)",
        "agent.n_samples=16": "budget (card: 64 samples per state)",
        "agent.entropy_decay_updates=2000": "the coefficient decays within the run",
        "agent.grad_clip=0": "the card's 2.0 slows the critic at this budget",
    }
    report, records = train_run(tmp_path, ["scenario=pendulum", "agent=qvpo", *overrides])
    first_train = next(r["train/episode_return"] for r in records if "train/episode_return" in r)
    assert first_train < -900
    assert report["mean_return"] > -600, report["mean_return"]
    assert any("qvpo/positive_weight_fraction" in r for r in records)
