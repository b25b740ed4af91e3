"""EDMPolicy (DTQL's behaviour model): preconditioning and loss against their formulas, gradients
into the actions (DTQL's trust-region term), padding, the Heun sampler and a bimodal fit."""

from __future__ import annotations

import math

import pytest
import torch

from marl_diff.diffusion.edm import EDMPolicy

N, OBS, ACT = 2, 3, 2
MASK = torch.tensor([[True, False], [True, True]])  # agent 0's second entry is padding


def small_policy(act_mask=None, **kwargs):
    torch.manual_seed(0)
    return EDMPolicy(N, OBS, ACT, act_mask, hidden=(32, 32), **kwargs)


def by_hand(sigma: float, sd: float = 0.5) -> tuple[float, float, float, float]:
    total = sigma**2 + sd**2
    return sd**2 / total, sigma * sd / math.sqrt(total), 1 / math.sqrt(total), math.log(sigma) / 4


@pytest.mark.parametrize("sigma", [0.002, 0.1, 0.5, 3.0, 80.0])
def test_preconditioning_and_denoiser_match_the_formulas(sigma):
    policy = small_policy()
    coefs = policy.preconditioning(torch.tensor(sigma, dtype=torch.float64))
    for got, want in zip(coefs, by_hand(sigma), strict=True):
        assert got.item() == pytest.approx(want, rel=1e-12)
    c_skip, c_out, c_in, c_noise = by_hand(sigma)
    x, obs = 3 * torch.randn(7, N, ACT), torch.randn(7, N, OBS)
    net = policy.denoiser(c_in * x, obs, torch.full((7,), c_noise))
    want = (c_skip * x + c_out * net).clamp(-1, 1)
    with torch.no_grad():
        torch.testing.assert_close(policy.denoised(x, obs, sigma), want)
        torch.testing.assert_close(policy.denoised(x, obs, torch.full((7,), sigma)), want)


def test_per_agent_sigmas_and_the_clamp():
    """A per-agent sigma [..., N] conditions each agent on its own level; outputs stay in the
    box even where c_skip x alone leaves it."""
    policy = small_policy()
    x, obs = 4 * torch.randn(5, N, ACT), torch.randn(5, N, OBS)
    sigmas = torch.tensor([0.05, 2.0])
    with torch.no_grad():
        got = policy.denoised(x, obs, sigmas.expand(5, N))
        for i, s in enumerate(sigmas.tolist()):
            torch.testing.assert_close(got[:, i], policy.denoised(x, obs, s)[:, i])
    c_skip = by_hand(0.05)[0]
    assert (c_skip * x[:, 0]).abs().max() > 1  # the clamp is exercised
    assert got.abs().max() <= 1


def test_dsm_loss_is_the_weighted_edm_loss(monkeypatch):
    policy = small_policy()
    actions, obs = torch.rand(6, N, ACT) * 2 - 1, torch.randn(6, N, OBS)
    sigma = torch.rand(6, N) * 3 + 0.01
    monkeypatch.setattr(policy, "train_sigma", lambda shape, like, generator=None: sigma)
    loss = policy.dsm_loss(actions, obs, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(actions.shape, generator=torch.Generator().manual_seed(3))
    want = torch.empty(6, N)
    for i in range(N):
        for b in range(6):
            s = sigma[b, i].item()
            c_skip, c_out, c_in, c_noise = by_hand(s)
            x = actions[b] + s * noise[b]  # only agent i's row is used below
            net = policy.denoiser(c_in * x[None], obs[b : b + 1], torch.full((1, N), c_noise))
            d = (c_skip * x[i] + c_out * net[0, i]).clamp(-1, 1)
            want[b, i] = ((d - actions[b, i]) ** 2).sum() * (s**2 + 0.25) / (s * 0.5) ** 2
    torch.testing.assert_close(loss, want)
    weights = torch.rand(6, N)
    weighted = policy.dsm_loss(actions, obs, weights, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(weighted, want * weights)


def test_training_sigmas_are_log_logistic_around_sigma_data():
    policy = small_policy()
    sigma = policy.train_sigma((200_000,), torch.empty(0), torch.Generator().manual_seed(0))
    assert sigma.min() >= 0.002 and sigma.max() <= 80.0
    log_sigma = sigma.log()
    assert log_sigma.median().item() == pytest.approx(math.log(0.5), abs=0.01)
    assert log_sigma.std().item() == pytest.approx(0.5 * math.pi / math.sqrt(3), rel=0.02)


def test_gradients_reach_the_actions_through_a_frozen_model():
    """DTQL's trust-region term: the loss on a one-step policy's actions trains that policy
    only."""
    policy = small_policy()
    policy.requires_grad_(False)
    actions = (torch.rand(8, N, ACT) * 1.8 - 0.9).requires_grad_()
    policy.dsm_loss(actions, torch.randn(8, N, OBS)).sum().backward()
    assert torch.isfinite(actions.grad).all() and actions.grad.abs().sum() > 0
    assert all(p.grad is None for p in policy.parameters())


def test_padded_entries_are_zero_and_never_enter_the_loss():
    policy = small_policy(MASK)
    obs = torch.randn(9, N, OBS)
    samples = policy.sample(obs, candidates=3, generator=torch.Generator().manual_seed(0))
    assert (samples[..., 0, 1] == 0).all() and (samples[..., 0, 0] != 0).any()
    with torch.no_grad():
        assert (policy.denoised(torch.randn(9, N, ACT), obs, 0.7)[..., 0, 1] == 0).all()
    actions = torch.rand(9, N, ACT) * 2 - 1
    changed = actions.clone()
    changed[..., 0, 1] = -actions[..., 0, 1] + 0.5
    loss = policy.dsm_loss(actions, obs, generator=torch.Generator().manual_seed(1))
    again = policy.dsm_loss(changed, obs, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss, again)


def test_karras_noise_levels():
    policy = small_policy(rho=7.0, sample_steps=10)
    levels = policy.chain()
    assert len(levels) == 11 and policy.steps == 10
    assert levels[0] == pytest.approx(80.0) and levels[-2] == pytest.approx(0.002)
    assert levels[-1] == 0.0
    assert all(a > b for a, b in zip(levels, levels[1:], strict=False))
    mid = (80 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert policy.chain(3)[1] == pytest.approx(mid)
    assert policy.chain(1) == [80.0, 0.0]
    with pytest.raises(ValueError):
        policy.chain(0)


def test_sampler_shapes_bounds_and_options():
    policy = small_policy()
    obs = torch.randn(5, N, OBS)
    one = policy.sample(obs)
    assert one.shape == (5, N, ACT) and not one.requires_grad
    many = policy.sample(obs, candidates=4, shared_start=True, steps=3, eta=0.0)
    assert many.shape == (4, 5, N, ACT)
    for out in (one, many):
        assert out.abs().max() <= 1
    # Deterministic given x_T, so the noise options of the base change nothing.
    seeded = [
        policy.sample(obs, steps=4, generator=torch.Generator().manual_seed(2), **options)
        for options in ({}, {"eta": 0.0, "noise_scale": 0.0, "deterministic": True})
    ]
    torch.testing.assert_close(seeded[0], seeded[1], rtol=0, atol=0)
    assert policy.sample(obs, grad=True).requires_grad
    with pytest.raises(ValueError, match="clip_x0"):
        policy.sample(obs, clip_x0=False)


def test_the_sampler_is_heun_then_euler():
    """Two levels written out: x_T at sigma_max, a Heun step to sigma_1, an Euler step to 0."""
    policy = small_policy()
    obs = torch.randn(5, N, OBS)
    got = policy.sample(obs, steps=2, generator=torch.Generator().manual_seed(4))
    s0, s1 = 80.0, 0.002
    with torch.no_grad():
        x = s0 * torch.randn(5, N, ACT, generator=torch.Generator().manual_seed(4))
        d0 = (x - policy.denoised(x, obs, s0)) / s0
        euler = x + (s1 - s0) * d0
        d1 = (euler - policy.denoised(euler, obs, s1)) / s1
        x = x + (s1 - s0) * (d0 + d1) / 2
        want = policy.denoised(x, obs, s1)
    torch.testing.assert_close(got, want)


def test_edm_training_learns_a_bimodal_policy():
    """The EDM loss on actions +-0.6 (equally likely, constant obs) gives samples at both modes."""
    torch.manual_seed(0)
    policy = EDMPolicy(1, 1, 1, hidden=(64, 64))
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    obs = torch.zeros(256, 1, 1)
    for _ in range(400):
        actions = 0.6 * (torch.randint(0, 2, (256, 1, 1)) * 2.0 - 1.0)
        loss = policy.dsm_loss(actions, obs).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    samples = policy.sample(torch.zeros(512, 1, 1), generator=torch.Generator().manual_seed(0))
    samples = samples.flatten()
    assert ((samples - 0.6).abs() < 0.2).float().mean() >= 0.25
    assert ((samples + 0.6).abs() < 0.2).float().mean() >= 0.25
    assert ((samples.abs() - 0.6).abs() < 0.2).float().mean() >= 0.85  # little mass between
