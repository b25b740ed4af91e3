"""The mean-reverting SDE policy: schedule, marginal, closed-form reverse step, log-densities."""

from __future__ import annotations

import math

import pytest
import torch

from marl_diff.diffusion.mean_reverting import MeanRevertingPolicy, MeanRevertingSchedule
from marl_diff.diffusion.schedules import cosine_betas

N, OBS, ACT = 3, 5, 3
# Heterogeneous agents: 3, 1 and 2 real action entries, the rest padding.
MASK = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
# A point-mass target per agent, inside [-1, 1], zero on padding.
TARGET = torch.tensor([[0.5, -0.3, 0.8], [-0.7, 0.0, 0.0], [0.2, 0.9, 0.0]])


def small_policy(seed: int = 0) -> MeanRevertingPolicy:
    torch.manual_seed(seed)
    return MeanRevertingPolicy(N, OBS, ACT, MASK, hidden=(32, 32), time_embed_dim=8)


def thetabars(policy) -> list[float]:
    return policy.schedule.coef["thetabars"]


def install_oracle(policy, monkeypatch, target=TARGET):
    """Replace the network by the exact eps of a point-mass target, for chains and for the
    one-shot loss."""
    c = policy.schedule.coef
    s = policy.schedule

    def predict(a_t, cond, t):
        return (a_t - c["decay"][t] * target) / c["stds"][t]

    def forward(a_t, obs, t):
        return (a_t - s.decay[t].unsqueeze(-1) * target) / s.stds[t].unsqueeze(-1)

    monkeypatch.setattr(policy.denoiser, "predict", predict)
    monkeypatch.setattr(policy.denoiser, "forward", forward)


def bayes_posterior(x_u, a0, tb_s, tb_u):
    """q(a_s | a_u, a0) by Bayes rule from the prior a_s | a0 ~ N(e^{-tb_s} a0, 1 - e^{-2 tb_s})
    and the forward transition a_u | a_s ~ N(A a_s, 1 - A^2), A = e^{-(tb_u - tb_s)}."""
    m_s, a = math.exp(-tb_s), math.exp(-(tb_u - tb_s))
    v_s, v_trans = 1 - m_s**2, 1 - a**2
    var = 1 / (1 / v_s + a**2 / v_trans)
    mean = var * (m_s * a0 / v_s + a * x_u / v_trans)
    return mean, var


def gaussian_log_density(x, mean, var):
    return -0.5 * ((x - mean) ** 2 / var + math.log(2 * math.pi * var))


def test_schedule_dt_and_thetabar():
    s = MeanRevertingSchedule(5)
    thetas = cosine_betas(5)
    dt = -math.log(1e-3) / thetas.sum().item()
    assert s.dt == pytest.approx(dt)
    assert math.exp(-sum(s.coef["thetas"]) * s.dt) == pytest.approx(1e-3, rel=1e-9)
    assert math.exp(-s.coef["thetabars"][-1]) == pytest.approx(1e-3, rel=1e-9)
    assert torch.allclose(s.thetas.double(), thetas, atol=1e-7)
    assert (s.thetabars.diff() > 0).all() and s.coef["thetabars"][0] > 0
    # At t = 0 the posterior is the point a0_hat: no x_t part, no variance.
    assert s.coef["posterior_coef_xt"][0] == 0.0 and s.coef["posterior_variance"][0] == 0.0
    assert s.coef["posterior_coef_a0"][0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        MeanRevertingSchedule(1)


def test_marginal_matches_exact_forward_simulation():
    s = MeanRevertingSchedule(5)
    gen = torch.Generator().manual_seed(0)
    a0 = 0.7
    x = torch.full((200_000,), a0, dtype=torch.float64)
    for t in range(s.steps):
        step = s.coef["step_decay"][t]
        noise = torch.randn(x.shape, dtype=torch.float64, generator=gen)
        x = step * x + math.sqrt(1 - step**2) * noise
        decay = math.exp(-s.coef["thetabars"][t])
        assert x.mean().item() == pytest.approx(a0 * decay, abs=0.01)
        assert x.var().item() == pytest.approx(1 - decay**2, abs=0.01)
        assert s.coef["decay"][t] == pytest.approx(decay, rel=1e-6)


def test_reverse_step_is_the_exact_posterior(monkeypatch):
    policy = small_policy()
    install_oracle(policy, monkeypatch)
    tb = thetabars(policy)
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(4, N, OBS, generator=gen)
    x_t = torch.randn(4, N, ACT, generator=gen) * MASK
    zeros, ones = torch.zeros_like(x_t), torch.ones_like(x_t)
    with torch.no_grad():
        for t in range(1, policy.steps):
            mean = policy.denoise_step(x_t, obs, t, zeros)
            std = policy.denoise_step(x_t, obs, t, ones) - mean
            exp_mean, exp_var = bayes_posterior(x_t.double(), TARGET.double(), tb[t - 1], tb[t])
            assert torch.allclose(mean.double(), exp_mean * MASK, atol=1e-4)
            assert torch.allclose(std.double(), math.sqrt(exp_var) * MASK.double(), atol=1e-5)
        # The last step returns a0_hat, here the target, noise or not.
        assert torch.allclose(policy.denoise_step(x_t, obs, 0, ones), TARGET, atol=1e-4)
        out = policy.sample(obs, candidates=8, generator=gen)
    assert torch.allclose(out, TARGET.expand_as(out), atol=1e-4)
    with pytest.raises(ValueError, match="respaced"):
        policy.sample(obs, steps=3)


def test_chain_log_prob_is_the_sum_of_gaussian_transitions(monkeypatch):
    policy = small_policy()
    install_oracle(policy, monkeypatch)
    tb = thetabars(policy)
    steps = []
    step_fn = policy.denoise_step

    def recording_step(x, obs, t, noise=None, **kwargs):
        out = step_fn(x, obs, t, noise, **kwargs)
        steps.append((t, x.double(), out.double()))
        return out

    monkeypatch.setattr(policy, "denoise_step", recording_step)
    gen = torch.Generator().manual_seed(2)
    obs = torch.randn(6, N, OBS, generator=gen)
    actions, log_prob = policy.sample_with_log_prob(obs, candidates=5, generator=gen)
    assert log_prob.shape == (5, 6, N)
    assert torch.allclose(actions, TARGET.expand_as(actions), atol=1e-4)

    mask = MASK.double()
    x_start = steps[0][1]
    expected = (gaussian_log_density(x_start, 0.0, 1.0) * mask).sum(-1)
    for t, x_in, out in steps:
        if t == 0:
            continue
        mean, var = bayes_posterior(x_in, TARGET.double(), tb[t - 1], tb[t])
        expected += (gaussian_log_density(out, mean, var) * mask).sum(-1)
    assert [t for t, _, _ in steps] == list(reversed(range(policy.steps)))
    assert torch.allclose(log_prob.double(), expected, atol=1e-3)


def test_chain_entropy_estimate_matches_analytic_entropy():
    policy = small_policy()
    obs = torch.randn(1, N, OBS)
    _, log_prob = policy.sample_with_log_prob(obs, candidates=4000)
    gauss = 0.5 * math.log(2 * math.pi * math.e)
    per_entry = gauss + sum(
        gauss + 0.5 * math.log(v) for v in policy.schedule.coef["posterior_variance"][1:]
    )
    analytic = per_entry * MASK.sum(-1).double()
    assert torch.allclose(-log_prob.double().mean(0)[0], analytic, atol=0.15)


def test_one_shot_entropy_against_bayes():
    policy = small_policy()
    tb = thetabars(policy)
    a0 = torch.rand(7, N, ACT, generator=torch.Generator().manual_seed(3)) * 2 - 1
    a0 = a0 * MASK
    entropy = policy.entropy(a0, generator=torch.Generator().manual_seed(4))
    a_u = torch.randn(a0.shape, generator=torch.Generator().manual_seed(4)).double()
    mean, var = bayes_posterior(a_u, a0.double(), tb[0], tb[-1])
    point = math.exp(-tb[0]) * a0.double()
    expected = -(gaussian_log_density(point, mean, var) * MASK).sum(-1)
    assert entropy.shape == (7, N)
    assert torch.allclose(entropy.double(), expected, atol=1e-4)


def test_one_shot_with_oracle_recovers_a0(monkeypatch):
    policy = small_policy()
    gen = torch.Generator().manual_seed(5)
    obs = torch.randn(64, N, OBS, generator=gen)
    with torch.no_grad():
        bc_net, _ = policy.one_shot(
            TARGET.expand(64, N, ACT), obs, torch.Generator().manual_seed(6)
        )
        dsm = policy.dsm_loss(
            TARGET.expand(64, N, ACT), obs, generator=torch.Generator().manual_seed(6)
        )
    assert torch.equal(bc_net, dsm)
    install_oracle(policy, monkeypatch)
    bc, a0_hat = policy.one_shot(TARGET.expand(64, N, ACT), obs, gen)
    assert bc.shape == (64, N) and bc.max() < 1e-8
    assert torch.allclose(a0_hat, TARGET.expand_as(a0_hat), atol=1e-3)


def test_shapes_bounds_padding_and_gradients():
    policy = small_policy()
    gen = torch.Generator().manual_seed(7)
    obs = torch.randn(4, N, OBS, generator=gen)
    out = policy.sample(obs, candidates=6, generator=gen)
    actions, log_prob = policy.sample_with_log_prob(obs, candidates=6, grad=True, generator=gen)
    for a in (out, actions):
        assert a.shape == (6, 4, N, ACT)
        assert a.abs().max() <= 1.0 and (a[..., ~MASK] == 0).all()
    assert log_prob.shape == (6, 4, N) and torch.isfinite(log_prob).all()
    actions.square().sum().backward()
    grads = [p.grad for p in policy.denoiser.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)

    policy.zero_grad()
    data = torch.rand(4, N, ACT, generator=gen) * 2 - 1
    bc, a0_hat = policy.one_shot(data, obs, gen)
    entropy = policy.entropy(a0_hat, gen)
    assert a0_hat.shape == (4, N, ACT) and a0_hat.abs().max() <= 1.0
    assert (a0_hat[..., ~MASK] == 0).all() and entropy.shape == (4, N)
    (bc.mean() + a0_hat.sum() - entropy.mean()).backward()
    assert policy.denoiser.net.mlp.net[0].weight.grad.abs().sum() > 0


def test_learns_a_bimodal_target():
    """DSM on +-0.6 (constant obs) puts samples on both modes. The chain has 20 steps because
    with the exact eps the 5-step chain puts only ~14% of samples within 0.2 of each mode (its
    first noise level has std 0.65 and every step uses E[a0 | a_t]); 20 steps put ~49%."""
    torch.manual_seed(0)
    policy = MeanRevertingPolicy(1, 1, 1, schedule=MeanRevertingSchedule(20), hidden=(64, 64))
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    obs = torch.zeros(256, 1, 1)
    for _ in range(800):
        modes = torch.where(torch.rand(256, 1, 1) < 0.5, -0.6, 0.6)
        loss = policy.dsm_loss(modes, obs).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    samples = policy.sample(torch.zeros(1, 1), candidates=512).flatten()
    for mode in (-0.6, 0.6):
        assert ((samples - mode).abs() < 0.2).float().mean() >= 0.25
