"""The RL learning logic checked against values computed by hand: every critic's TD target
(team and per agent), the soft bonus, DACER's distributional critic loss, the kNN entropy
estimate, the direction of every temperature / jitter update, DDPL's lagged proposal, the
Polyak targets, the runner's update-to-data accounting and the transitions it stores at
terminations and truncations."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_spec
from torch.distributions import Normal

import marl_diff.agents.ddpl as ddpl_module
import marl_diff.experiment as experiment
from marl_diff.agents import make_agent
from marl_diff.agents.networks import CentralCritic, substitute_each_agent
from marl_diff.buffer import Batch
from marl_diff.diffusion.entropy import knn_entropy, knn_log_distances
from marl_diff.envs.base import BatchedMultiAgentEnv, StepResult
from marl_diff.errors import ConfigError

TINY = {"actor_hidden": [16, 16], "critic_hidden": [16, 16]}
TINY_DIFFUSION = {**TINY, "diffusion_steps": 3}
CONFIGS = {
    "gaussian": {"algorithm": "gaussian", "name": "gaussian", **TINY},
    "ddpl": {"algorithm": "ddpl", "name": "ddpl", "n_candidates": 3, **TINY_DIFFUSION},
    "qvpo": {
        "algorithm": "qvpo",
        "name": "qvpo",
        "n_samples": 4,
        "n_entropy_samples": 3,
        **TINY_DIFFUSION,
    },
    "dacer": {
        "algorithm": "dacer",
        "name": "dacer",
        "entropy_states": 4,
        "entropy_samples": 20,
        "gmm_iterations": 5,
        **TINY_DIFFUSION,
    },
}


def agent(algorithm: str, spec=None, **overrides):
    return make_agent({**CONFIGS[algorithm], **overrides}, spec or make_spec(), "cpu")


def random_batch(b: int = 8, seed: int = 0, n: int = 2, d: int = 3, a: int = 1, s: int = 4):
    g = torch.Generator().manual_seed(seed)
    return Batch(
        torch.randn(b, n, d, generator=g),
        torch.randn(b, s, generator=g),
        torch.rand(b, n, a, generator=g) * 2 - 1,
        torch.randn(b, n, generator=g),
        torch.randn(b, n, d, generator=g),
        torch.randn(b, s, generator=g),
        torch.zeros(b),
    )


# The hand-computable critic case shared by the twin and the distributional critic: 3
# transitions, 2 agents; the second transition is a true termination.
REWARD = torch.tensor([[1.0, 3.0], [2.0, -2.0], [0.5, 0.5]])  # team mean: 2, 0, 0.5
TERMINATED = torch.tensor([0.0, 1.0, 0.0])
GAMMA, REWARD_SCALE = 0.9, 2.0  # team reward x 2: 4, 0, 1
NEXT_Q = [[1.0, 5.0, -2.0], [3.0, -1.0, 4.0]]  # target heads; min: 1, -1, -2 (head 0, 1, 0)
Q = [[5.0, 1.0, 0.0], [6.0, -1.0, -2.0]]  # online heads


def critic_batch() -> Batch:
    g = torch.Generator().manual_seed(7)
    return Batch(
        torch.randn(3, 2, 3, generator=g),
        torch.randn(3, 4, generator=g),
        torch.rand(3, 2, 1, generator=g) * 2 - 1,
        REWARD,
        torch.randn(3, 2, 3, generator=g),
        torch.randn(3, 4, generator=g),
        TERMINATED,
    )


# ---------------------------------------------------------------------------- twin TD targets
@pytest.mark.parametrize("algorithm", ["gaussian", "ddpl", "qvpo"])
def test_twin_critic_target_is_scaled_team_reward_plus_discounted_min_head_plus_bonus(
    algorithm, monkeypatch
):
    """y = scale * mean_i r_i + gamma (1 - term) (min_k Q'_k(s', a') + sum_i bonus_i); loss sums
    heads."""
    ac = agent(algorithm, gamma=GAMMA, reward_scale=REWARD_SCALE)
    batch = critic_batch()
    next_action = torch.full((3, 2, 1), 0.25)
    bonus = torch.tensor([[0.25, 0.25], [0.5, -0.25], [-1.5, 0.5]])  # per agent; sums 0.5, 0.25, -1
    q = torch.tensor(Q, requires_grad=True)
    seen = {}

    def target_action(next_obs, next_state):
        seen["target_action"] = (next_obs, next_state)
        return next_action, bonus

    def target_critic(state, joint_action):
        seen["critic_target"] = (state, joint_action)
        return torch.tensor(NEXT_Q)

    def critic(state, joint_action):
        seen["critic"] = (state, joint_action)
        return q

    monkeypatch.setattr(ac, "target_action", target_action)
    monkeypatch.setattr(ac.critic_target, "forward", target_critic)
    monkeypatch.setattr(ac.critic, "forward", critic)
    metrics = ac.update_critic(batch)

    # by hand: next value = min head + bonus = 1.5, -0.75, -3; the terminal one not bootstrapped
    target = [4.0 + 0.9 * 1.5, 0.0 + 0.0, 1.0 + 0.9 * -3.0]  # 5.35, 0, -1.7
    loss = sum(sum((q_k[b] - target[b]) ** 2 for b in range(3)) / 3 for q_k in Q)
    assert metrics["loss/critic"].item() == pytest.approx(loss, rel=1e-6)  # 5.525 / 3
    # d loss / d q_kb = 2 (q_kb - y_b) / B recovers each transition's target, for both heads
    recovered = q.detach() - q.grad * 3 / 2
    assert torch.allclose(recovered, torch.tensor([target, target]), atol=1e-6)
    # the mean or the max of the heads would give other targets
    assert not torch.allclose(recovered[0, 0], torch.tensor(4.0 + 0.9 * (2.0 + 0.5)))
    assert seen["target_action"][0] is batch.next_obs
    assert seen["target_action"][1] is batch.next_state
    assert seen["critic_target"][0] is batch.next_state
    assert seen["critic_target"][1] is next_action
    assert seen["critic"][0] is batch.state and seen["critic"][1] is batch.action


def test_gaussian_soft_bonus_is_minus_alpha_weighted_log_prob_per_agent():
    """bonus_i = -alpha_i log pi_i(a_i'|o_i') with the tanh-corrected log density (the team
    critic adds their sum)."""
    torch.manual_seed(0)
    spec = make_spec(act_dims=(2, 1))  # agent 1's second action entry is padding
    gauss = agent("gaussian", spec)
    with torch.no_grad():
        gauss.log_alpha.copy_(torch.tensor([math.log(0.1), math.log(0.5)]))
    next_obs, next_state = torch.randn(5, 2, 3), torch.randn(5, 4)
    torch.manual_seed(42)
    action, bonus = gauss.target_action(next_obs, next_state)

    with torch.no_grad():
        mean, log_std = gauss.policy.net(next_obs).double().chunk(2, dim=-1)
        std = log_std.clamp(-5.0, 2.0).exp()
        torch.manual_seed(42)
        u = mean + std * torch.randn_like(mean.float()).double()
        per_dim = Normal(mean, std).log_prob(u) - torch.log1p(-torch.tanh(u).square())
        log_pi = torch.stack([per_dim[:, 0, :2].sum(-1), per_dim[:, 1, 0]], dim=-1)  # [B, N]
        expected = -torch.stack([0.1 * log_pi[:, 0], 0.5 * log_pi[:, 1]], dim=-1)
    assert bonus.shape == (5, 2)
    assert torch.allclose(bonus.double(), expected, atol=1e-4)
    assert torch.allclose(action[:, 0].double(), torch.tanh(u[:, 0]), atol=1e-6)
    assert torch.allclose(action[:, 1, 0].double(), torch.tanh(u[:, 1, 0]), atol=1e-6)
    assert (action[:, 1, 1] == 0).all()


def test_ddpl_target_is_a_current_policy_sample_with_zero_bonus():
    """DDPL's critic target: a' ~ current pi (not the lagged proposal), no entropy bonus."""
    torch.manual_seed(0)
    ddpl = agent("ddpl", proposal="lagged")
    with torch.no_grad():  # make the lagged copy differ from the current policy
        for p in ddpl.old_policy.parameters():
            p.add_(1.0)
    next_obs, next_state = torch.randn(6, 2, 3), torch.randn(6, 4)
    torch.manual_seed(3)
    action, bonus = ddpl.target_action(next_obs, next_state)
    torch.manual_seed(3)
    expected = ddpl.policy.sample(next_obs)
    torch.manual_seed(3)
    lagged = ddpl.old_policy.sample(next_obs)
    assert torch.equal(action, expected) and not torch.allclose(action, lagged)
    assert torch.equal(bonus, torch.zeros(6, 2))
    torch.manual_seed(4)
    assert not torch.equal(ddpl.target_action(next_obs, next_state)[0], action)  # stochastic


@pytest.mark.parametrize("targets", ["reduced", "own"])
def test_critic_target_averages_q_over_sampled_next_actions(targets, monkeypatch):
    """M next actions per state ([M, B, N, A], ddpl's `candidate_states=next`): the members
    reduce per sample, then the M values average (not the members' means reduced)."""
    ac = agent("ddpl", critic_targets=targets)
    next_q = torch.tensor([[[1.0, 0.0], [5.0, 2.0]], [[3.0, 4.0], [-1.0, 2.0]]])  # [K, M, B]
    next_state, samples = torch.randn(2, 4), torch.rand(2, 2, 2, 1)  # [B, S], [M, B, N, A]
    seen = {}

    def target_critic(state, joint_action):
        seen["state"], seen["action"] = state, joint_action
        return next_q.flatten(1)  # rows sample-major, as the flattened inputs

    monkeypatch.setattr(ac.critic_target, "forward", target_critic)
    value = ac.target_value(next_state, samples)
    assert torch.equal(seen["state"], next_state.repeat(2, 1))
    assert torch.equal(seen["action"], samples.flatten(0, 1))
    # reduced: per state, the mean over samples of the min head: (1 - 1) / 2, (0 + 2) / 2
    expected = [0.0, 1.0] if targets == "reduced" else [[3.0, 1.0], [1.0, 3.0]]
    assert value.tolist() == expected


# ---------------------------------------------------------------------------- DACER's critic
DACER_NEXT_STD = [[1.5, 2.0, 1.0], [0.5, 0.1, 0.3]]  # the smaller-mean head's: 1.5, 0.1, 1.0
DACER_STD = [[0.5, 1.0, 2.0], [1.0, 0.25, 0.5]]
DACER_Z = [0.5, -3.0, 2.5]  # N(0, 1) draws; td_bound 2 clips them to 0.5, -2, 2
VARIANCE_EPS = 0.1


def dacer_by_hand(weighting: bool, stds=DACER_STD, mean_variance=None):
    """DACER's critic loss and its gradients in plain floats, from the constants above (online
    stds `stds`; the running mean of sigma^2 defaults to the first batch's)."""
    bound = 2.0
    team = [4.0, 0.0, 1.0]
    discount = [0.9, 0.0, 0.9]
    heads = [min(range(2), key=lambda k: NEXT_Q[k][b]) for b in range(3)]  # 0, 1, 0
    mu_next = [NEXT_Q[heads[b]][b] for b in range(3)]
    sd_next = [DACER_NEXT_STD[heads[b]][b] for b in range(3)]
    z = [max(-bound, min(bound, v)) for v in DACER_Z]
    y = [team[b] + discount[b] * mu_next[b] for b in range(3)]
    sample = [team[b] + discount[b] * (mu_next[b] + sd_next[b] * z[b]) for b in range(3)]
    if mean_variance is None:
        mean_variance = [sum(s**2 for s in stds[k]) / 3 for k in range(2)]
    loss, grad_mean, grad_std = 0.0, [], []
    for k in range(2):
        head, gm, gs = 0.0, [], []
        for b in range(3):
            mu, sd = Q[k][b], stds[k][b]
            clipped = mu + max(-bound * sd, min(bound * sd, sample[b] - mu))
            w = (mean_variance[k] + VARIANCE_EPS) / (sd**2 + VARIANCE_EPS) if weighting else 1.0
            head += w * (mu - y[b]) ** 2 + math.log(sd) + (mu - clipped) ** 2 / (2 * sd**2)
            gm.append(2 * w * (mu - y[b]) / 3)
            gs.append((1 / sd - (mu - clipped) ** 2 / sd**3) / 3)
        loss += head / 3
        grad_mean.append(gm)
        grad_std.append(gs)
    return loss, grad_mean, grad_std, y, sample


@pytest.mark.parametrize("weighting", [True, False])
def test_dacer_distributional_critic_loss_by_hand(weighting, monkeypatch):
    """y from the min-mean target head, sample with that head's std, clip, weights, NLL."""
    dacer = agent(
        "dacer",
        gamma=GAMMA,
        reward_scale=REWARD_SCALE,
        td_bound=2.0,
        variance_weighting=weighting,
    )
    batch = critic_batch()
    mean = torch.tensor(Q, requires_grad=True)
    std = torch.tensor(DACER_STD, requires_grad=True)
    next_action = torch.full((3, 2, 1), -0.5)
    seen = {}

    def target_distribution(state, joint_action):
        seen["target"] = (state, joint_action)
        return torch.tensor(NEXT_Q), torch.tensor(DACER_NEXT_STD)

    monkeypatch.setattr(dacer, "target_action", lambda o, s: (next_action, torch.zeros(3)))
    monkeypatch.setattr(dacer.critic_target, "distribution", target_distribution)
    monkeypatch.setattr(dacer.critic, "distribution", lambda state, action: (mean, std))
    monkeypatch.setattr(torch, "randn_like", lambda x: torch.tensor(DACER_Z))
    metrics = dacer.update_critic(batch)

    loss, grad_mean, grad_std, _, _ = dacer_by_hand(weighting)
    assert metrics["loss/critic"].item() == pytest.approx(loss, rel=1e-5)
    # the mean heads are pulled to y (weighted), the stds by the NLL of the clipped sample
    assert torch.allclose(mean.grad, torch.tensor(grad_mean), atol=1e-5)
    assert torch.allclose(std.grad, torch.tensor(grad_std), atol=1e-5)
    assert seen["target"][0] is batch.next_state and seen["target"][1] is next_action
    if weighting:  # the first batch initialises the running mean of sigma^2 per head
        first = [sum(s**2 for s in DACER_STD[k]) / 3 for k in range(2)]
        assert dacer.mean_variance.tolist() == pytest.approx(first)
        # the next batch moves it at rate 0.005, and weighs with the moved value
        mean.grad = std.grad = None
        dacer.update_critic(batch)
        assert dacer.mean_variance.tolist() == pytest.approx(first)  # same stds: unchanged
        with torch.no_grad():
            std.mul_(2.0)
        metrics = dacer.update_critic(batch)
        moved = [0.995 * v + 0.005 * 4 * v for v in first]
        assert dacer.mean_variance.tolist() == pytest.approx(moved, rel=1e-6)
        doubled = [[2 * s for s in row] for row in DACER_STD]
        loss = dacer_by_hand(True, doubled, moved)[0]
        assert metrics["loss/critic"].item() == pytest.approx(loss, rel=1e-5)


def test_dacer_sampled_target_uses_the_std_of_the_smaller_mean_head(monkeypatch):
    """Head 0 has the smaller target mean (1 < 3) but the larger std (2 > 0.1): its std is used."""
    dacer = agent("dacer", gamma=0.5, variance_weighting=False)
    batch = (
        critic_batch()
        .map(lambda x: x[:1])
        ._replace(reward=torch.zeros(1, 2), terminated=torch.zeros(1))
    )
    mean = torch.tensor([[0.5], [0.5]], requires_grad=True)  # = y, so only the NLL pulls
    std = torch.tensor([[2.0], [2.0]], requires_grad=True)  # wide: td_bound 3 does not clip
    monkeypatch.setattr(dacer, "target_action", lambda o, s: (torch.zeros(1, 2, 1), torch.zeros(1)))
    monkeypatch.setattr(
        dacer.critic_target,
        "distribution",
        lambda s, a: (torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [0.1]])),
    )
    monkeypatch.setattr(dacer.critic, "distribution", lambda s, a: (mean, std))
    monkeypatch.setattr(torch, "randn_like", lambda x: torch.ones_like(x))
    dacer.update_critic(batch)
    # y = 0.5 * 1 = 0.5; sample z = 0.5 * (1 + 2 * 1) = 1.5 (head 1's std would give 0.55)
    assert mean.grad.abs().max() < 1e-7  # the mean loss is at its minimum: y = 0.5
    # d NLL / d sigma = 1 / sigma - (mu - z)^2 / sigma^3  =>  (mu - z)^2 = sigma^3 (1/sigma - g)
    spread = (8.0 * (0.5 - std.grad)).sqrt()
    assert torch.allclose(spread, torch.full((2, 1), 1.0), atol=1e-4)


# ---------------------------------------------------------------------------- kNN entropy
def gaussian_entropy(d: int, sigma: float) -> float:
    return 0.5 * d * math.log(2 * math.pi * math.e * sigma**2)


@pytest.mark.parametrize("d", [1, 2, 6])
@pytest.mark.parametrize("sigma", [0.1, 1.0])
def test_knn_entropy_of_gaussians(d, sigma):
    """H = d/2 log(2 pi e sigma^2), from M = 16 samples per state (DDPL's regime), 2000 states."""
    g = torch.Generator().manual_seed(d)
    samples = torch.randn(16, 2000, d, generator=g) * sigma
    estimate = knn_entropy(samples)
    assert estimate.shape == (2000,)
    # measured errors of the mean over states: |err| <= 0.12 (d = 6: +0.07..+0.12, d <= 2:
    # -0.08..-0.02) over 4 seeds. 0.2 is well below the size of a factor error: a missing
    # log c_d (0.69, 1.14, 1.64 nats for d = 1, 2, 6), a missing psi(k) (0.58), d off by one
    # (|mean log r| > 2 at sigma 0.1).
    assert estimate.mean().item() == pytest.approx(gaussian_entropy(d, sigma), abs=0.2)


@pytest.mark.parametrize("width", [0.2, 2.0])
def test_knn_entropy_of_a_uniform_interval(width):
    """H = log width, from M = 16 samples per state, 2000 states."""
    g = torch.Generator().manual_seed(1)
    samples = torch.rand(16, 2000, 1, generator=g) * width - 0.3
    # measured: +0.01..+0.03 over 4 seeds
    assert knn_entropy(samples).mean().item() == pytest.approx(math.log(width), abs=0.15)


def test_knn_entropy_of_a_uniform_box_from_two_thousand_samples_in_float64():
    """H = sum log widths for one distribution of 2000 samples (float64)."""
    g = torch.Generator().manual_seed(2)
    widths = torch.tensor([0.5, 3.0], dtype=torch.float64)
    samples = torch.rand(2000, 1, 2, generator=g, dtype=torch.float64) * widths - 0.3
    # measured: -0.02..+0.07 over 4 seeds; 0.15 tolerance, a missing log c_2 is 1.14
    expected = widths.log().sum().item()
    assert knn_entropy(samples).item() == pytest.approx(expected, abs=0.15)
    gaussian = torch.randn(2000, 1, 2, generator=g, dtype=torch.float64) * 0.5
    # measured: -0.05..0.00
    assert knn_entropy(gaussian).item() == pytest.approx(gaussian_entropy(2, 0.5), abs=0.15)


def test_knn_entropy_of_two_thousand_float32_samples():
    """Many float32 samples (M > 25) give the same known answer as float64 ones: cdist's
    matrix-product form, which it uses above 25 points, lost close pairs in float32 (1.2 nats
    low here)."""
    g = torch.Generator().manual_seed(0)
    samples = torch.rand(2000, 1, 1, generator=g) * 2.0
    assert knn_entropy(samples.double()).mean().item() == pytest.approx(math.log(2.0), abs=0.1)
    assert knn_entropy(samples).mean().item() == pytest.approx(math.log(2.0), abs=0.1)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_knn_log_distances_are_each_samples_kth_nearest_neighbour(k):
    """Against a brute-force sort of every sample's distances to the other samples of its
    state (k = 1 takes the minimum, other k kthvalue), to float rounding: the brute force
    computes the distances in another order."""
    g = torch.Generator().manual_seed(k)
    samples = torch.rand(8, 5, 3, 2, generator=g)  # [M, ..., d]
    points = samples.movedim(0, -2)  # [..., M, d]
    distances = (points[..., :, None, :] - points[..., None, :, :]).square().sum(-1).sqrt()
    others = distances.sort(-1).values[..., 1:]  # the zero self-distance first
    expected = others[..., k - 1].log().movedim(-1, 0)
    torch.testing.assert_close(knn_log_distances(samples, k), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="need 1 <= k < M"):
        knn_log_distances(samples, 8)


def test_knn_entropy_of_zero_padded_samples_counts_only_the_real_dims():
    """dims = real dimension: zero-padded entries change neither distances nor d."""
    g = torch.Generator().manual_seed(3)
    real = torch.randn(16, 1000, 2, 2, generator=g) * 0.3  # [M, B, N agents, 2 real dims]
    padded = torch.cat([real, torch.zeros(16, 1000, 2, 3)], dim=-1)  # padded to 5 dims
    estimate = knn_entropy(padded, torch.tensor([2.0, 2.0]))
    assert torch.allclose(estimate, knn_entropy(real), atol=1e-5)
    assert estimate.mean(0).tolist() == pytest.approx([gaussian_entropy(2, 0.3)] * 2, abs=0.2)
    # heterogeneous agents: agent 0 has 2 real dims, agent 1 only 1 (its 2nd entry padded)
    mixed = real.clone()
    mixed[..., 1, 1] = 0.0
    estimate = knn_entropy(mixed, torch.tensor([2.0, 1.0]))
    assert torch.allclose(estimate[:, 1], knn_entropy(real[..., 1:, :1])[:, 0], atol=1e-5)
    assert estimate.mean(0)[1].item() == pytest.approx(gaussian_entropy(1, 0.3), abs=0.2)
    # without dims every padded entry would count as a dimension
    assert (knn_entropy(padded) - estimate).abs().min() > 1.0


# ---------------------------------------------------------------------------- temperatures
def test_gaussian_alpha_rises_below_target_entropy_and_falls_above():
    """Agent 0 (log std -5, H ~ -3.6) below the target -1: alpha up; agent 1 (std 1) down."""
    torch.manual_seed(0)
    lr = 1e-2
    gauss = agent("gaussian", alpha_lr=lr)
    last = gauss.policy.net.mlp.net[-1]  # outputs (mean, log std) per agent
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([[[0.0, -5.0]], [[0.0, 0.0]]]))
        _, log_prob = gauss.policy(torch.randn(256, 2, 3))
    entropy = -log_prob.mean(0)
    assert entropy[0] < -1.0 < entropy[1]  # the premise, measured
    before = gauss.log_alpha.detach().clone()
    gauss.update_actor(random_batch(64))
    # Adam's first step is lr * sign(gradient)
    assert (gauss.log_alpha.detach() - before).tolist() == pytest.approx([lr, -lr], rel=1e-3)


def test_ddpl_alpha_and_jitter_rise_below_target_entropy_and_fall_above(monkeypatch):
    """kNN entropy -3 (agent 0) and +2 (agent 1) against the target -0.9."""
    torch.manual_seed(0)
    ddpl = agent("ddpl", alpha_lr=1e-2, jitter_lr=2e-2)
    calls = []

    def fixed_entropy(samples, dims):
        calls.append(samples.shape)
        return torch.tensor([-3.0, 2.0]).expand(samples.shape[1], -1)

    monkeypatch.setattr(ddpl_module, "knn_entropy", fixed_entropy)
    alpha, jitter = ddpl.log_alpha.detach().clone(), ddpl.log_jitter.detach().clone()
    assert ddpl.target_entropy.tolist() == pytest.approx([-0.9, -0.9])
    metrics = ddpl.update_actor(random_batch(8))
    assert calls == [(3, 8, 2, 1)]  # the M candidates of every state and agent
    assert metrics["policy/entropy"].item() == pytest.approx(-0.5)
    assert (ddpl.log_alpha.detach() - alpha).tolist() == pytest.approx([1e-2, -1e-2], rel=1e-3)
    assert (ddpl.log_jitter.detach() - jitter).tolist() == pytest.approx([2e-2, -2e-2], rel=1e-3)


def test_dacer_alpha_rises_below_target_entropy_and_falls_above(monkeypatch):
    """Estimated entropy -3 (agent 0) and +2 (agent 1) against the target -0.9."""
    dacer = agent("dacer", alpha_lr=3e-2)
    monkeypatch.setattr(dacer, "estimate_entropy", lambda obs: torch.tensor([-3.0, 2.0]))
    before = dacer.log_alpha.detach().clone()
    dacer.update_alpha(random_batch(8))
    assert (dacer.log_alpha.detach() - before).tolist() == pytest.approx([3e-2, -3e-2], rel=1e-3)


# ---------------------------------------------------------------------------- lagged proposal
def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddpl_lagged_proposal_refreshes_every_lag_updates():
    """lag_updates=3: the proposal is frozen for updates 1-2 and is the policy after update 3."""
    torch.manual_seed(0)
    ddpl = agent("ddpl", proposal="lagged", lag_updates=3)
    initial = snapshot(ddpl.policy)
    assert same(snapshot(ddpl.old_policy), initial)
    for update in (1, 2):
        ddpl.update(random_batch(8, seed=update))
        assert same(snapshot(ddpl.old_policy), initial), update
        assert not same(snapshot(ddpl.policy), initial)
    ddpl.update(random_batch(8, seed=3))
    after_three = snapshot(ddpl.policy)
    assert same(snapshot(ddpl.old_policy), after_three)
    ddpl.update(random_batch(8, seed=4))
    assert same(snapshot(ddpl.old_policy), after_three)
    assert not same(snapshot(ddpl.policy), after_three)


def test_ddpl_lagged_candidates_come_from_the_old_policy(monkeypatch):
    """update_actor draws its M candidates from old_policy, never from the current policy."""
    torch.manual_seed(0)
    ddpl = agent("ddpl", proposal="lagged", lag_updates=5, n_candidates=4)
    calls = {"old": [], "current": []}

    def recorder(name, sample):
        def wrapped(obs, **kwargs):
            calls[name].append((obs, kwargs.get("candidates")))
            return sample(obs, **kwargs)

        return wrapped

    monkeypatch.setattr(ddpl.old_policy, "sample", recorder("old", ddpl.old_policy.sample))
    monkeypatch.setattr(ddpl.policy, "sample", recorder("current", ddpl.policy.sample))
    batch = random_batch(8)
    ddpl.update_actor(batch)
    assert len(calls["old"]) == 1
    assert calls["old"][0][0] is batch.obs and calls["old"][0][1] == 4
    assert calls["current"] == []  # others_actions=replay: no fresh samples needed


# ---------------------------------------------------------------------------- Polyak targets
def parameters_of(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def assert_polyak_step(old_target, old_online, target, online, rate: float) -> int:
    """Every target parameter is now (1 - rate) * its old value + rate * the updated online
    one, and takes no gradient. Returns how many online parameters the update moved."""
    moved = 0
    for old_t, old_o, new_o, new_t in zip(
        old_target, old_online, online.parameters(), target.parameters(), strict=True
    ):
        moved += not torch.equal(new_o, old_o)
        assert torch.allclose(new_t, (1 - rate) * old_t + rate * new_o.detach(), atol=1e-7)
        assert not new_t.requires_grad
    return moved


def test_gaussian_critic_target_is_polyak_averaged_after_one_update():
    """critic_target <- (1 - tau) critic_target + tau critic (the updated critic)."""
    torch.manual_seed(0)
    gauss = agent("gaussian", tau=0.3)
    old_target, old_online = parameters_of(gauss.critic_target), parameters_of(gauss.critic)
    gauss.update(random_batch(16))
    moved = assert_polyak_step(old_target, old_online, gauss.critic_target, gauss.critic, 0.3)
    assert moved == len(old_online)  # the critic did move, every parameter


def test_qvpo_target_policy_is_polyak_averaged_with_policy_tau():
    """target_policy <- (1 - policy_tau) target_policy + policy_tau policy; critic with tau."""
    torch.manual_seed(0)
    qvpo = agent("qvpo", tau=0.3, policy_tau=0.2)
    old_policy_target, old_policy = parameters_of(qvpo.target_policy), parameters_of(qvpo.policy)
    old_critic_target, old_critic = parameters_of(qvpo.critic_target), parameters_of(qvpo.critic)
    qvpo.update(random_batch(16))
    moved = assert_polyak_step(old_policy_target, old_policy, qvpo.target_policy, qvpo.policy, 0.2)
    assert moved > 0
    assert_polyak_step(old_critic_target, old_critic, qvpo.critic_target, qvpo.critic, 0.3)


def test_qvpo_current_target_actor_has_no_target_policy(monkeypatch):
    """target_actor=current keeps no EMA copy and samples the critic target from the policy."""
    qvpo = agent("qvpo", target_actor="current", target_samples=1)
    assert not hasattr(qvpo, "target_policy")
    assert not any(k.startswith("target_policy.") for k in qvpo.state_dict())
    drawn = torch.full((2, 2, 1), 0.3)
    calls = []

    def sample(obs, candidates=None, **kwargs):
        calls.append(candidates)
        return drawn[None].expand(candidates, -1, -1, -1)

    monkeypatch.setattr(qvpo.policy, "sample", sample)
    action, bonus = qvpo.target_action(torch.zeros(2, 2, 3), torch.zeros(2, 4))
    assert calls == [1] and torch.equal(action, drawn) and torch.equal(bonus, torch.zeros(2, 2))


# ---------------------------------------------------------------------------- the runner
def make_runner(tmp_path, *args: str):
    from marl_diff.experiment import make_runner
    from marl_diff.run import compose

    cfg = compose(
        [
            "scenario=multigoal",
            "agent=gaussian",
            "agent.actor_hidden=[16,16]",
            "agent.critic_hidden=[16,16]",
            "runner.buffer_size=1000",
            "runner.eval_num_envs=2",
            "runner.progress=false",
            "device=cpu",
            f"run_dir={tmp_path}",
            *args,
        ]
    )
    return make_runner(cfg, tmp_path, "cpu")


def close(runner) -> None:
    runner.env.close()
    if runner.eval_env is not runner.env:
        runner.eval_env.close()


def counted_updates(runner, monkeypatch) -> list[int]:
    sizes = []

    def update(batch):
        sizes.append(batch.obs.shape[0])
        return {}

    monkeypatch.setattr(runner.agent, "update", update)
    return sizes


def collect_and_update(runner, steps: int) -> tuple[list[int], list[float]]:
    """From fresh episodes, `steps` batched env steps each followed by its updates; returns the
    updates each step earned and the credit left after it."""
    runner.start_collection()
    returned, credit = [], []
    for _ in range(steps):
        runner.collect_step()
        returned.append(runner.update_step())
        credit.append(runner.update_credit)
    return returned, credit


@pytest.mark.parametrize("warmup, batch_size", [(4, 6), (6, 2)])
def test_utd_quarter_gives_one_update_per_four_env_steps_after_warmup_and_a_full_batch(
    tmp_path, monkeypatch, warmup, batch_size
):
    """utd 0.25, 1 env: credit from step max(warmup, batch) = 6 on, an update every 4th step."""
    runner = make_runner(
        tmp_path,
        "runner.utd_ratio=0.25",
        "runner.num_envs=1",
        f"runner.warmup_steps={warmup}",
        f"runner.batch_size={batch_size}",
    )
    try:
        sizes = counted_updates(runner, monkeypatch)
        returned, credit = collect_and_update(runner, 13)
        # env steps 1..5 earn nothing (warm-up or too few transitions); 6, 7, 8, 9 earn 0.25
        # each, so step 9 updates once; the credit carries over to 13
        assert returned == [0] * 8 + [1] + [0] * 3 + [1]
        assert credit == [0.0] * 5 + [0.25, 0.5, 0.75, 0.0, 0.25, 0.5, 0.75, 0.0]
        assert sizes == [batch_size, batch_size] and runner.updates == 2
        assert runner.env_steps == 13
    finally:
        close(runner)


def test_utd_half_with_three_envs_carries_the_fractional_credit(tmp_path, monkeypatch):
    """utd 0.5 x 3 envs = 1.5 updates per batched step: 1, 2, 1 updates, credit 0.5 left."""
    runner = make_runner(
        tmp_path,
        "runner.utd_ratio=0.5",
        "runner.num_envs=3",
        "runner.warmup_steps=0",
        "runner.batch_size=3",
    )
    try:
        sizes = counted_updates(runner, monkeypatch)
        returned, credit = collect_and_update(runner, 3)
        assert returned == [1, 2, 1] and credit == [0.5, 0.0, 0.5]
        assert len(sizes) == runner.updates == 4 and runner.env_steps == 9
    finally:
        close(runner)


def test_update_every_holds_the_earned_updates_until_a_multiple_of_it_then_runs_them(
    tmp_path, monkeypatch
):
    """utd 1/6 (no binary fraction, as the peer benchmark's) x 1 env, update_every 6: six env
    steps earn one update, run at the step that reaches the multiple, not lost to rounding."""
    runner = make_runner(
        tmp_path,
        f"runner.utd_ratio={1 / 6!r}",
        "runner.num_envs=1",
        "runner.update_every=6",
        "runner.warmup_steps=0",
        "runner.batch_size=1",
    )
    try:
        sizes = counted_updates(runner, monkeypatch)
        returned, credit = collect_and_update(runner, 12)
        assert returned == [0] * 5 + [1] + [0] * 5 + [1]
        assert credit[:6] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 0.0], abs=1e-9)
        assert len(sizes) == runner.updates == 2 and runner.env_steps == 12
    finally:
        close(runner)


def test_the_end_of_training_runs_the_updates_earned_since_the_last_phase(tmp_path, monkeypatch):
    """utd 0.5 x 2 envs, update_every 6, 10 env steps in all: 3 updates at env step 6, and the
    2 earned after it at env step 10, the last, short of the next multiple."""
    runner = make_runner(
        tmp_path,
        "runner.utd_ratio=0.5",
        "runner.num_envs=2",
        "runner.update_every=6",
        "runner.total_steps=10",
        "runner.warmup_steps=0",
        "runner.batch_size=2",
    )
    try:
        counted_updates(runner, monkeypatch)
        returned, credit = collect_and_update(runner, 5)
        assert returned == [0, 0, 3, 0, 2] and credit == [1.0, 2.0, 0.0, 1.0, 0.0]
    finally:
        close(runner)


def test_update_every_runs_an_iterations_updates_at_once_where_interleaving_spreads_them(
    tmp_path, monkeypatch
):
    """The same ratio and env steps, with and without phases: the same total, at other steps."""
    counts = {}
    for every in (0, 12):
        runner = make_runner(
            tmp_path / str(every),
            "runner.utd_ratio=0.5",
            "runner.num_envs=3",
            f"runner.update_every={every}",
            "runner.warmup_steps=0",
            "runner.batch_size=3",
        )
        try:
            counted_updates(runner, monkeypatch)
            counts[every] = collect_and_update(runner, 8)[0]
        finally:
            close(runner)
    assert counts[0] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert counts[12] == [0, 0, 0, 6, 0, 0, 0, 6]


def test_negative_update_every_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="runner.update_every"):
        make_runner(tmp_path, "runner.update_every=-1")


class ScriptedEnv(BatchedMultiAgentEnv):
    """2 agents; env e's episode k at time t observes (e, k, t) (agent i adds 100 i to t) and
    has state (e, k, t, 1). Env 0 terminates after 3 steps, env 1 is truncated after 4.
    Agent i's reward for the step from t is 10 e + t + i."""

    EPISODE = (3, 4)

    def __init__(self, num_envs: int, device):
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.spec = make_spec(n_agents=2, obs_dims=(3, 3), act_dims=(1, 1), state_dim=4)
        self.actions: list[torch.Tensor] = []

    def observe(self):
        envs = torch.arange(self.num_envs, dtype=torch.float32)
        base = torch.stack([envs, self.k, self.t], dim=-1)  # [B, 3]
        obs = base[:, None, :].repeat(1, 2, 1)
        obs[:, 1, 2] += 100.0
        return obs, torch.cat([base, torch.ones(self.num_envs, 1)], dim=-1)

    def reset(self, seed=None):
        self.t = torch.zeros(self.num_envs)
        self.k = torch.zeros(self.num_envs)
        return self.observe()

    def step(self, actions):
        self.actions.append(actions.clone())
        envs = torch.arange(self.num_envs, dtype=torch.float32)
        reward = (10 * envs + self.t)[:, None] + torch.tensor([0.0, 1.0])
        self.t = self.t + 1
        next_obs, next_state = self.observe()
        ended = self.t == torch.tensor(self.EPISODE, dtype=torch.float32)
        terminated = ended & (envs == 0)
        truncated = ended & (envs == 1)
        self.k = torch.where(ended, self.k + 1, self.k)
        self.t = torch.where(ended, torch.zeros_like(self.t), self.t)
        obs, state = self.observe()
        return StepResult(obs, state, reward, terminated, truncated, next_obs, next_state, {})


def test_runner_stores_true_final_observations_and_terminal_flags(tmp_path, monkeypatch):
    """A termination stores terminated=1, a truncation 0; next_obs is the final observation."""
    monkeypatch.setattr(
        experiment, "make_env", lambda scenario, n, device, seed: ScriptedEnv(n, device)
    )
    runner = make_runner(tmp_path, "runner.num_envs=2", "runner.warmup_steps=4")
    try:
        acted = []

        def act(obs, explore, state=None):
            acted.append((obs.clone(), state.clone(), explore))
            return torch.full((2, 2, 1), 0.5)

        monkeypatch.setattr(runner.agent, "act", act)
        runner.start_collection()
        for _ in range(5):
            runner.collect_step()
        stored = runner.buffer.storage
        assert runner.buffer.size == 10

        def obs(e, k, t):
            return torch.tensor([[e, k, t], [e, k, t + 100.0]])

        def state(e, k, t):
            return torch.tensor([e, k, t, 1.0])

        # (env, episode, t) before and after each stored transition, in insertion order
        rows = [
            ((0, 0, 0), (0, 0, 1), 0.0),
            ((1, 0, 0), (1, 0, 1), 0.0),
            ((0, 0, 1), (0, 0, 2), 0.0),
            ((1, 0, 1), (1, 0, 2), 0.0),
            ((0, 0, 2), (0, 0, 3), 1.0),  # env 0 terminates: final obs t=3, no bootstrap
            ((1, 0, 2), (1, 0, 3), 0.0),
            ((0, 1, 0), (0, 1, 1), 0.0),  # env 0's new episode starts from its first obs
            ((1, 0, 3), (1, 0, 4), 0.0),  # env 1 is truncated: final obs t=4, still bootstraps
            ((0, 1, 1), (0, 1, 2), 0.0),
            ((1, 1, 0), (1, 1, 1), 0.0),
        ]
        for row, (before, after, terminal) in enumerate(rows):
            assert torch.equal(stored.obs[row], obs(*before)), row
            assert torch.equal(stored.state[row], state(*before)), row
            assert torch.equal(stored.next_obs[row], obs(*after)), row
            assert torch.equal(stored.next_state[row], state(*after)), row
            assert stored.terminated[row].item() == terminal, row
            e, _, t = before
            assert stored.reward[row].tolist() == [10 * e + t, 10 * e + t + 1], row
        actions = torch.cat(runner.env.actions)  # random during warm-up, then the agent's
        assert torch.equal(stored.action[:10], actions)
        assert torch.equal(actions[4:], torch.full((6, 2, 1), 0.5))
        # warm-up covers env steps 0 and 2; the agent acts from env step 4 with the reset obs
        assert len(acted) == 3 and all(explore for _, _, explore in acted)
        assert torch.equal(acted[0][0], torch.stack([obs(0, 0, 2), obs(1, 0, 2)]))
        assert torch.equal(acted[1][0], torch.stack([obs(0, 1, 0), obs(1, 0, 3)]))
        assert torch.equal(acted[2][0], torch.stack([obs(0, 1, 1), obs(1, 1, 0)]))
        assert torch.equal(acted[2][1], torch.stack([state(0, 1, 1), state(1, 1, 0)]))
        # finished episodes: env 0 returned 0.5 + 1.5 + 2.5 in 3 steps, env 1 10.5 + ... + 13.5
        # in 4; both count, and the running sums restart for the new episodes
        assert runner.finished.tolist() == pytest.approx([4.5 + 48.0, 7.0, 2.0])
        assert runner.ep_return.tolist() == pytest.approx([0.5 + 1.5, 10.5])
        assert runner.ep_length.tolist() == [2.0, 1.0]
    finally:
        close(runner)


# ---------------------------------------------------------------------------- update cost settings
def recorded_samples(policy, monkeypatch, also: tuple[str, ...] = ()) -> list[tuple]:
    """(states, candidates, chain steps, with gradient) of every `sample` call of a policy,
    then the keyword arguments named in `also` (None where a call leaves them out)."""
    calls, real = [], policy.sample

    def recording(obs, **kwargs):
        calls.append(
            (obs.shape[0], kwargs.get("candidates"), kwargs.get("steps"), kwargs.get("grad", False))
            + tuple(kwargs.get(name) for name in also)
        )
        return real(obs, **kwargs)

    monkeypatch.setattr(policy, "sample", recording)
    return calls


SPEED = {"diffusion_steps": 3, "sample_steps": 2, "candidate_steps": 1, "actor_batch_size": 3}


@pytest.mark.parametrize(
    "algorithm, actor_call",
    [
        ("ddpl", (3, 3, 1, False)),  # M=3 candidates of the first 3 states, 1-step chain
        ("qvpo", (3, 4, 1, False)),  # 4 Q-weighted samples of the first 3 states
        ("dacer", (3, None, 2, True)),  # the policy's own 2-step chain, with gradient
    ],
)
def test_actor_updates_use_the_actor_batch_and_their_chains(algorithm, actor_call, monkeypatch):
    a = agent(algorithm, **SPEED)
    calls = recorded_samples(a.policy, monkeypatch)
    a.critic.requires_grad_(False)
    a.update_actor(random_batch(b=8))
    assert calls == [actor_call]


@pytest.mark.parametrize("algorithm", ["ddpl", "dacer"])
def test_critic_targets_use_the_policy_chain_on_the_whole_batch(algorithm, monkeypatch):
    a = agent(algorithm, **SPEED)
    calls = recorded_samples(a.policy, monkeypatch)
    a.update_critic(random_batch(b=8))
    assert calls == [(8, None, 2, False)]


def test_only_the_candidates_chain_takes_the_candidate_spacing(monkeypatch):
    """`candidate_spacing` spaces the `candidate_steps` chain; the critic target's chain, a
    `sample_steps` chain, stays evenly spaced."""
    a = agent(
        "ddpl", diffusion_steps=10, sample_steps=5, candidate_steps=4, candidate_spacing="quadratic"
    )
    calls = recorded_samples(a.policy, monkeypatch, also=("spacing",))
    a.update_critic(random_batch(b=8))
    a.critic.requires_grad_(False)
    a.update_actor(random_batch(b=8))
    # the critic target's chain on 8 next states; ddpl's 3 candidates on the 8 states
    assert calls == [(8, None, 5, False, None), (8, 3, 4, False, "quadratic")]


def test_policy_delay_skips_actor_updates_without_reading_the_device(monkeypatch):
    a = agent("ddpl", policy_delay=3)
    actor_updates = []
    monkeypatch.setattr(a, "update_actor", lambda batch: actor_updates.append(a.updates) or {})
    for _ in range(7):
        a.update(random_batch())
    assert actor_updates == [0, 3, 6]
    assert isinstance(a.updates, int) and a.updates == 7
    restored = agent("ddpl", policy_delay=3)
    restored.load_training_state(a.training_state())
    assert restored.updates == 7


@pytest.mark.parametrize(
    "override, message",
    [
        ({"sample_steps": -1}, "agent.sample_steps must be >= 0"),
        ({"candidate_steps": -2}, "agent.candidate_steps must be >= 0"),
        ({"actor_batch_size": -1}, "agent.actor_batch_size must be >= 0"),
        ({"sample_eta": 1.5}, r"agent.sample_eta must be in \[0, 1\]"),
        ({"candidate_spacing": "log"}, "agent.candidate_spacing must be one of even, quadratic"),
    ],
)
def test_bad_chain_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        agent("ddpl", **override)


# ---------------------------------------------------------------------------- per-agent critics
# `agent.critic_rewards=per_agent`: one Q_i per agent of its own reward. Its TD targets by hand,
# Q_i read from agent i's head at agent i's substitution, each agent's actor gradient from its
# own Q_i only, and the agents that learn the team reward alone refusing it.
PER_AGENT = ["gaussian", "ddpl", "qvpo"]


def per_agent(algorithm: str, **overrides):
    return agent(algorithm, critic_rewards="per_agent", **overrides)


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


@pytest.mark.parametrize("per_agent", [False, True])
def test_a_critic_can_run_its_first_members_only(per_agent):
    """`members=k`: the first k networks alone, their outputs those of the whole critic's first
    k; `value` reduces them, and one member's estimate is the value as it is."""
    torch.manual_seed(0)
    critic = CentralCritic(4, 2, 1, [8, 8], n_q=3, reduction="lcb", per_agent=per_agent)
    state, joint = torch.randn(5, 4), torch.rand(5, 2, 1)
    every = critic(state, joint)
    torch.testing.assert_close(critic(state, joint, members=2), every[:2])
    torch.testing.assert_close(critic.value(state, joint, members=1), every[0])
    torch.testing.assert_close(critic.value(state, joint, members=2), critic.reduce(every[:2]))
    assert torch.equal(critic.value(state, joint), critic.reduce(every))


@pytest.mark.parametrize("algorithm", PER_AGENT)
def test_per_agent_target_is_each_agents_scaled_reward_plus_its_discounted_min_and_bonus(
    algorithm, monkeypatch
):
    """y_i = scale * r_i + gamma (1 - term) (min_k Q'_ki(s', a') + bonus_i); no mean over agents."""
    ac = per_agent(algorithm, gamma=GAMMA, reward_scale=REWARD_SCALE)
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
    ac = per_agent("ddpl")
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
    team = agent("ddpl")
    assert team.q_each_agent(state, base, own).shape == (3, 4, 2)
    assert team.critic.q.net[-1].weight.shape[-1] == 1
    assert ac.critic.q.net[-1].weight.shape[-1] == 2


@pytest.mark.parametrize("others_actions", ["replay", "policy"])
def test_per_agent_actor_gradient_of_each_action_is_its_own_q_only(others_actions):
    """d own_q_sum / d a_i = d Q_i(s, a_i, a_-i) / d a_i, with a_-i from `others_actions`
    held fixed: agent j's Q_j does not pull on agent i's action."""
    torch.manual_seed(2)
    ac = per_agent("gaussian", others_actions=others_actions)
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
    ac = per_agent(algorithm)
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
        agent("gaussian", critic_rewards="own")
