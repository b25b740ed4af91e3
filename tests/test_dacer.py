"""DACER: acting and updating on heterogeneous agents, the gradient through the chain, alpha's
schedule and its only role (scaling the added noise), checkpoints, and learning on pendulum and
the multi-goal task. The mixture entropy estimate itself is tested in test_gmm.py."""

from __future__ import annotations

import pytest
import torch
from conftest import MULTIGOAL, make_spec, train_run

from marl_diff.agents import make_agent
from marl_diff.buffer import Batch
from marl_diff.envs.base import EnvSpec
from marl_diff.errors import ConfigError
from marl_diff.nn import COMPILED_MIN_ROWS, compiler_available

TINY_DACER = {
    "algorithm": "dacer",
    "name": "dacer",
    "actor_hidden": [16, 16],
    "critic_hidden": [16, 16],
    "diffusion_steps": 3,
    "entropy_states": 4,
    "entropy_samples": 20,
    "gmm_iterations": 5,
}


def hetero_spec() -> EnvSpec:
    # agent 0: 2-D actions; agent 1: 1-D actions, its second entry padded
    return make_spec(obs_dims=(3, 2), act_dims=(2, 1), state_dim=5)


def agent(**overrides):
    return make_agent({**TINY_DACER, **overrides}, hetero_spec(), "cpu")


def batch(b=8, seed=0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    mask = hetero_spec().act_mask().float()
    obs = torch.randn(b, 2, 3, generator=gen)
    obs[..., 1, 2] = 0.0  # agent 1's padded observation entry
    action = (torch.rand(b, 2, 2, generator=gen) * 2 - 1) * mask
    return Batch(
        obs,
        torch.randn(b, 5, generator=gen),
        action,
        torch.randn(b, 2, generator=gen),
        torch.randn(b, 2, 3, generator=gen),
        torch.randn(b, 5, generator=gen),
        torch.zeros(b),
    )


def test_acts_and_updates_on_heterogeneous_agents_with_padding_zero():
    torch.manual_seed(0)
    dacer = agent(others_actions="policy")
    mask = hetero_spec().act_mask()
    for explore in (True, False):
        action = dacer.act(batch().obs, explore=explore)
        assert action.shape == (8, 2, 2)
        assert (action.abs() <= 1).all() and (action[:, ~mask] == 0).all()
    metrics = {}
    for _ in range(2):  # the actor updates on even counts (policy_delay 2)
        metrics.update(dacer.update(batch()))
    assert {"loss/actor", "loss/critic", "q/mean", "alpha/mean"} <= set(metrics)
    assert all(torch.isfinite(v) for v in metrics.values())


def test_policy_gradient_reaches_the_denoisers_first_layer_through_the_chain():
    torch.manual_seed(0)
    dacer = agent(diffusion_steps=4)
    b = batch()
    dacer.critic.requires_grad_(False)
    for p in dacer.policy.parameters():
        p.grad = None
    action = dacer.policy.sample(b.obs, grad=True)
    q = dacer.q_each_agent(b.state, b.action, action)
    (-q.mean(0).sum()).backward()
    first = dacer.policy.denoiser.net.mlp.net[0].weight.grad
    assert first is not None and first.abs().sum() > 0
    # both agents' slices of the stacked first layer get a gradient
    assert (first.abs().sum((1, 2)) > 0).all()


def test_update_actor_changes_the_policy_and_not_alpha():
    torch.manual_seed(0)
    dacer = agent(policy_delay=1, alpha_update_every=1000)
    before = [p.detach().clone() for p in dacer.policy.parameters()]
    alpha = dacer.log_alpha.detach().clone()
    dacer.update(batch())
    assert any(
        not torch.equal(a, p) for a, p in zip(before, dacer.policy.parameters(), strict=True)
    )
    assert torch.equal(dacer.log_alpha.detach(), alpha)


def test_alpha_moves_only_on_its_schedule():
    torch.manual_seed(0)
    dacer = agent(alpha_update_every=3)
    history = [dacer.log_alpha.detach().clone()]
    entropies = []
    for i in range(7):
        metrics = dacer.update(batch(seed=i))
        history.append(dacer.log_alpha.detach().clone())
        entropies.append("policy/entropy" in metrics)
    changed = [not torch.equal(a, b) for a, b in zip(history[:-1], history[1:], strict=True)]
    assert changed == [False, False, True, False, False, True, False]
    assert entropies == changed  # the GMM estimate is computed (and logged) only then
    # toward the target: an estimated entropy above -0.9 act_dim lowers alpha, else raises it
    dacer.log_alpha.data.zero_()
    entropy = dacer.estimate_entropy(batch().obs)
    dacer.update_alpha(batch())
    direction = torch.sign(dacer.target_entropy - entropy)
    assert torch.equal(torch.sign(dacer.log_alpha.detach()), direction)


def test_alpha_only_scales_the_added_exploration_noise():
    dacer = agent(diffusion_steps=4)
    obs = batch().obs

    def spread(explore: bool, log_alpha: float) -> torch.Tensor:
        dacer.log_alpha.data.fill_(log_alpha)
        torch.manual_seed(1)
        greedy = dacer.act(obs, explore=False)
        torch.manual_seed(1)  # same sampler noise, so the difference is the added noise
        action = dacer.act(obs, explore=explore)
        return (action - greedy)[:, 0].std()

    assert spread(False, 0.0) == 0  # evaluation adds nothing, whatever alpha
    assert spread(False, 3.0) == 0
    small, large = spread(True, -3.0), spread(True, 0.0)
    assert small < 0.02 and 0.05 < large < 0.2  # N(0, 1) * alpha * 0.1, clipped
    # the sampler's own noise stays in evaluation
    torch.manual_seed(2)
    a = dacer.act(obs, explore=False)
    torch.manual_seed(3)
    assert not torch.equal(a, dacer.act(obs, explore=False))


def test_distributional_critic_heads_and_training_state_round_trip():
    torch.manual_seed(0)
    dacer = agent(alpha_update_every=2)
    b = batch()
    mean, std = dacer.critic.distribution(b.state, b.action)
    assert mean.shape == std.shape == (2, 8) and (std > 0).all()
    for i in range(4):
        dacer.update(batch(seed=i))
    state = dacer.training_state()
    fresh = agent(alpha_update_every=2)
    fresh.load_training_state(state)
    for key, value in dacer.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    assert int(fresh.updates) == 4
    assert set(state["optimizers"]) == {"critic", "actor", "alpha"}
    assert fresh.optimizers["alpha"].state_dict()["state"]  # Adam moments restored
    torch.manual_seed(5)
    m1 = dacer.update(batch(seed=9))
    torch.manual_seed(5)
    m2 = fresh.update(batch(seed=9))
    assert torch.equal(m1["loss/critic"], m2["loss/critic"])


@pytest.mark.skipif(not compiler_available(), reason="torch.compile needs a C++ compiler")
def test_compile_chains_compiles_the_sampled_chains_and_learns_eagers_numbers(compiled_calls):
    """`compile_chains`: the chains without gradient (the critic target's actions, acting, the
    entropy estimate's samples) run compiled, the policy gradient's chain eagerly, and updates
    leave the eager agent's parameters bit for bit: the catalog's switch changes no result."""
    data = batch(b=COMPILED_MIN_ROWS)  # enough rows to run compiled
    compiled, eager = agent(compile_chains=True, alpha_update_every=2), agent(alpha_update_every=2)
    eager.load_state_dict(compiled.state_dict())
    targets = []
    for dacer in (compiled, eager):
        torch.manual_seed(0)
        targets.append(dacer.target_action(data.next_obs, data.next_state)[0])
    assert torch.equal(targets[0], targets[1])
    mlp = compiled.policy.denoiser.net.mlp
    assert len(compiled_calls) == 3 and all(called is mlp for called in compiled_calls)
    compiled.update_actor(data)  # the chain with gradient
    assert len(compiled_calls) == 3 and not mlp.compiled
    compiled.act(data.obs, explore=True)
    assert len(compiled_calls) == 6
    compiled, eager = agent(compile_chains=True, alpha_update_every=2), agent(alpha_update_every=2)
    eager.load_state_dict(compiled.state_dict())
    for dacer in (compiled, eager):
        torch.manual_seed(1)
        for seed in range(4):  # critic, actor and (at the second) alpha steps
            dacer.update(batch(b=COMPILED_MIN_ROWS, seed=seed))
    for key, value in compiled.state_dict().items():
        assert torch.equal(value, eager.state_dict()[key]), key


def test_bad_settings_are_config_errors():
    for bad in (
        {"schedule": "sigmoid"},
        {"entropy_source": "critic"},
        {"alpha_update_every": 0},
        {"init_alpha": 0.0},
        {"entropy_samples": 2},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            agent(**bad)


# ---------------------------------------------------------------------------- learning


SMALL = {
    "agent.actor_hidden=[64,64]": "budget: 2x64 instead of 3x256",
    "agent.critic_hidden=[64,64]": "budget: 2x64 instead of 3x256",
    "agent.actor_lr=1e-3": "a few thousand updates instead of the card's 1.5M",
    "agent.critic_lr=1e-3": "a few thousand updates instead of the card's 1.5M",
    "agent.policy_delay=1": "a few thousand updates: every one updates the policy",
    "agent.alpha_update_every=250": "alpha must move within the run (card: every 10000)",
}


@pytest.mark.learning(seconds=60)
def test_dacer_learns_pendulum(tmp_path):
    # a uniform-random / untrained policy scores about -1200 on Pendulum; solved is about -150.
    overrides = {
        "runner.total_steps=3500": "budget (catalog: 20000); reached -216",
        "runner.warmup_steps=500": "budget (catalog: 1000)",
        "runner.batch_size=128": "budget (catalog: 256)",
        "runner.eval_every=0": "budget: only the final evaluation",
        "agent.reward_scale=1.0": "at the card's 0.2, Q grows too slowly for this budget "
        "(still -1460 after 5000 steps)",
        **SMALL,
        "agent.diffusion_steps=3": "budget (card: T=20)",
    }
    report, records = train_run(tmp_path, ["scenario=pendulum", "agent=dacer", *overrides])
    first_train = next(r["train/episode_return"] for r in records if "train/episode_return" in r)
    assert first_train < -900
    assert report["mean_return"] > -600, report["mean_return"]
    assert any("policy/entropy" in r for r in records)


@pytest.mark.slow  # 12 min of a 2-core CPU alone: the catalog run itself
@pytest.mark.learning(seconds=900)
def test_dacer_covers_most_goals_on_multigoal_sql(tmp_path):
    """DACER's own multimodality demo: on multigoal_sql (the soft Q-learning reward, squared
    distance and action cost 30), the catalog's run (the card's settings, 20k steps), >= 10% of
    100 episodes reach each of 3 goals. On an Intel Xeon with AMX (2026-12-04) seeds 0-3
    covered 4, 2, 3, 4 goals (seed 0: 21/21/31/27%) with the catalog's compiled denoiser and
    3, 2, 3, 4 eagerly. At small settings (2x64 networks, lr 1e-3, T=5, batch 64, 10k steps),
    this check's earlier form, DACER covered 3 goals in 1 seed of 12 (3, 0, 2, 1, 2, 1, 2, 1, 2,
    2, 1, 1) and 20k steps did not help (seeds 0-3: 2, 2, 1, 1): there the pass hung on the
    float rounding of seed 0's run, not on what DACER learns."""
    overrides = {
        "runner.eval_every=0": "only the final evaluation",
        "runner.eval_episodes=100": "enough episodes to measure shares of 10%",
        "runner.eval_num_envs=100": "all 100 episodes in one batch",
    }
    report, _ = train_run(tmp_path, ["scenario=multigoal_sql", "agent=dacer", *overrides])
    assert report["modes_covered"] >= 3, report["goal_shares"]
    # Reaching a goal at the best pace scores about -115; standing still costs 25 * 30 = -750.
    assert report["mean_return"] > -200, report["mean_return"]


@pytest.mark.learning(seconds=55)
@pytest.mark.xfail(
    strict=True,
    reason="DACER's multimodality claim does not hold on `multigoal` (weak action cost): the "
    "-Q gradient drives every sample into one corner of the action box, where the clipping "
    "zeroes the gradient; seed 0 sent 100% of the episodes to one goal",
)
def test_dacer_covers_most_goals_on_multigoal(tmp_path):
    """The paper's claim on the catalog's multigoal task, at the budget and settings under which
    DDPL covers 3 goals (tests/test_ddpl.py), both sampling. Strict: if DACER starts to pass,
    the xfail must go."""
    report, _ = train_run(tmp_path, [*MULTIGOAL, "agent=dacer", "agent.diffusion_steps=10"])
    assert report["modes_covered"] >= 3, report["goal_shares"]
