"""The diffusion core: schedules, the stacked denoiser, batched sampling and the DSM loss."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from marl_diff.diffusion import (
    SCHEDULE_KINDS,
    DiffusionPolicy,
    NoiseSchedule,
    StackedDenoiser,
    make_schedule,
)
from marl_diff.nn import COMPILED_MIN_ROWS, compiler_available

N, OBS, ACT = 3, 5, 3
# Heterogeneous agents: 3, 1 and 2 real action entries, the rest padding.
MASK = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
SMALL = {"hidden": (32, 32), "time_embed_dim": 8}


def small_policy(kind: str = "vp", steps: int = 5, seed: int = 0, **kwargs) -> DiffusionPolicy:
    torch.manual_seed(seed)
    return DiffusionPolicy(N, OBS, ACT, MASK, make_schedule(kind, steps), **SMALL, **kwargs)


def agent_copy(policy: DiffusionPolicy, i: int) -> DiffusionPolicy:
    """A standalone single-agent policy holding member i of the stacked parameters."""
    single = DiffusionPolicy(
        1, OBS, ACT, policy.act_mask[i : i + 1].bool(), make_schedule("vp", policy.steps), **SMALL
    )
    single.schedule = policy.schedule
    with torch.no_grad():
        for name, param in single.named_parameters():
            param.copy_(policy.get_parameter(name)[i : i + 1])
    return single


def run_chain(policy, obs, x_t, noises, deterministic):
    """The reverse chain written out with `denoise_step` and given noise."""
    with torch.no_grad():
        for t in reversed(range(policy.steps)):
            noise = noises.get(t) if noises is not None else None
            x_t = policy.denoise_step(x_t, obs, t, noise, deterministic=deterministic)
    return x_t.clamp(-1, 1)


# ---------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
@pytest.mark.parametrize("steps", [1, 5, 20])
def test_schedule_tables(kind, steps):
    s = make_schedule(kind, steps)
    assert s.steps == steps
    for name in ("betas", "alpha_bars", "posterior_variance", "posterior_log_variance_clipped"):
        assert getattr(s, name).shape == (steps,)
        assert len(s.coef[name]) == steps
    assert ((s.betas > 0) & (s.betas < 1)).all()
    assert ((s.alpha_bars > 0) & (s.alpha_bars <= 1)).all()
    assert (s.alpha_bars[1:] < s.alpha_bars[:-1]).all()
    total = s.sqrt_alpha_bars**2 + s.sqrt_one_minus_alpha_bars**2
    torch.testing.assert_close(total, torch.ones(steps))
    assert s.posterior_variance[0] == 0 and (s.posterior_variance >= 0).all()
    assert torch.isfinite(s.posterior_log_variance_clipped).all()
    # Posterior mean of x_{t-1} given x_t and x0 must equal x0 when x_t is x0 noised with 0 noise
    # at t=0 (coef1 + coef2 * sqrt(alpha_0) == 1 because alpha_bar_prev is 1 there).
    assert math.isclose(
        s.coef["posterior_mean_coef1"][0] + s.coef["posterior_mean_coef2"][0], 1.0, rel_tol=1e-6
    )


def test_schedule_values():
    t = 10
    vp = make_schedule("vp", t)
    expected = [math.exp(-0.1 / t - 0.5 * 9.9 * (2 * k - 1) / t**2) for k in range(1, t + 1)]
    torch.testing.assert_close(vp.alphas, torch.tensor(expected))
    cos = make_schedule("cosine", t)
    assert cos.betas.max() <= 0.999 and cos.alpha_bars[-1] < 1e-3
    linear = make_schedule("linear", 1000)
    betas = linear.coef["betas"]
    assert math.isclose(betas[0], 1e-4) and math.isclose(betas[-1], 2e-2)
    unscaled = make_schedule("linear", 20, beta_start=1e-4, beta_end=2e-2)
    assert math.isclose(unscaled.coef["betas"][-1], 2e-2)
    assert make_schedule("linear", 20).alpha_bars[-1] < 1e-3  # scaled ends: noise at any T


def test_unknown_schedule_lists_kinds():
    with pytest.raises(ValueError, match="cosine"):
        make_schedule("sigmoid", 10)


def test_schedule_follows_module_device_and_dtype():
    policy = small_policy().to(torch.float64)
    assert isinstance(policy.schedule, NoiseSchedule)
    assert policy.schedule.alpha_bars.dtype == torch.float64
    assert "schedule.alpha_bars" in dict(policy.named_buffers())


# ---------------------------------------------------------------------------- denoiser


@pytest.mark.parametrize("share", [False, True])
def test_denoiser_shapes(share):
    net = StackedDenoiser(N, OBS, ACT, share=share, **SMALL)
    a, obs = torch.randn(7, N, ACT), torch.randn(7, N, OBS)
    t = torch.randint(0, 5, (7,))
    out = net(a, obs, t)
    assert out.shape == (7, N, ACT)
    torch.testing.assert_close(net(a, obs, t[:, None].expand(7, N)), out)  # per-agent t
    # A leading candidate dim, observations broadcast over it.
    cand = torch.randn(4, 7, N, ACT)
    assert net(cand, obs, torch.randint(0, 5, (4, 7, N))).shape == (4, 7, N, ACT)
    torch.testing.assert_close(net(cand, obs, t.expand(4, 7))[2], net(cand[2], obs, t))


def test_agents_own_parameters():
    """Changing one agent's input changes only that agent's output."""
    net = StackedDenoiser(N, OBS, ACT, **SMALL)
    a, obs, t = torch.randn(4, N, ACT), torch.randn(4, N, OBS), torch.zeros(4, dtype=torch.long)
    obs2 = obs.clone()
    obs2[:, 1] += 1.0
    diff = (net(a, obs2, t) - net(a, obs, t)).abs().sum((0, 2))
    assert diff[1] > 0 and diff[0] == 0 and diff[2] == 0


# ---------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("deterministic", [False, True])
def test_sample_shapes_bounds_and_padding(deterministic):
    policy = small_policy()
    obs = torch.randn(6, N, OBS)
    out = policy.sample(obs, deterministic=deterministic)
    assert out.shape == (6, N, ACT)
    cand = policy.sample(obs, deterministic=deterministic, candidates=4)
    assert cand.shape == (4, 6, N, ACT)
    for x in (out, cand):
        assert (x.abs() <= 1).all()
        assert (x[..., ~MASK] == 0).all()  # exactly zero, not just small
        assert (x[..., MASK] != 0).all()
    # Candidates are independent draws, not copies.
    assert not torch.allclose(cand[0], cand[1])
    # Several leading dims work too.
    assert policy.sample(torch.randn(2, 3, N, OBS)).shape == (2, 3, N, ACT)


def test_sample_is_the_denoise_step_chain():
    """`sample` is x_T then `denoise_step` for t = T-1..0 with fresh noise, then a clamp."""
    policy = small_policy()
    obs = torch.randn(5, N, OBS)
    shape = (5, N, ACT)
    for deterministic in (False, True):
        out = policy.sample(
            obs, deterministic=deterministic, generator=torch.Generator().manual_seed(3)
        )
        g = torch.Generator().manual_seed(3)
        x_t = torch.randn(shape, generator=g) * MASK
        noises = None
        if not deterministic:
            noises = {t: torch.randn(shape, generator=g) for t in reversed(range(1, policy.steps))}
        torch.testing.assert_close(out, run_chain(policy, obs, x_t, noises, deterministic))


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
@pytest.mark.parametrize("deterministic", [False, True])
def test_stacked_sampling_equals_per_agent_sampling(kind, deterministic):
    policy = small_policy(kind, steps=6)
    singles = [agent_copy(policy, i) for i in range(N)]
    obs = torch.randn(8, N, OBS)
    x_t = torch.randn(8, N, ACT) * MASK
    noises = None if deterministic else {t: torch.randn(8, N, ACT) for t in range(6)}
    stacked = run_chain(policy, obs, x_t, noises, deterministic)
    for i, single in enumerate(singles):
        own = None if noises is None else {t: n[:, i : i + 1] for t, n in noises.items()}
        alone = run_chain(single, obs[:, i : i + 1], x_t[:, i : i + 1], own, deterministic)
        torch.testing.assert_close(stacked[:, i : i + 1], alone, rtol=1e-5, atol=1e-6)
    # DDIM through the public sampler: per-agent sampling of the same x_T agrees too.
    if deterministic:
        out = policy.sample(obs, deterministic=True, generator=torch.Generator().manual_seed(1))
        x_all = torch.randn(8, N, ACT, generator=torch.Generator().manual_seed(1)) * MASK
        for i, single in enumerate(singles):
            alone = run_chain(single, obs[:, i : i + 1], x_all[:, i : i + 1], None, True)
            torch.testing.assert_close(out[:, i : i + 1], alone, rtol=1e-5, atol=1e-6)


def test_grad_flows_through_the_chain_only_when_asked():
    policy = small_policy()
    obs = torch.randn(4, N, OBS)
    out = policy.sample(obs)
    assert not out.requires_grad and out.grad_fn is None
    out = policy.sample(obs, grad=True)
    (out**2).sum().backward()
    for name, param in policy.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # The first layer of every agent gets a gradient (not just a shared graph tail).
    first = policy.denoiser.net.mlp.net[0].weight.grad
    assert (first.abs().sum((1, 2)) > 0).all()


def test_noise_scale_zero_is_deterministic_given_x_t():
    policy = small_policy()
    obs = torch.randn(4, N, OBS)
    a = policy.sample(obs, noise_scale=0.0, generator=torch.Generator().manual_seed(0))
    b = policy.sample(obs, noise_scale=0.0, generator=torch.Generator().manual_seed(0))
    c = policy.sample(obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


# ---------------------------------------------------------------------------- DSM loss


def test_dsm_loss_masks_and_weights():
    policy = small_policy()
    obs = torch.randn(6, N, OBS)
    actions = (torch.rand(6, N, ACT) * 2 - 1) * MASK

    def loss(acts, weights=None, o=obs):
        return policy.dsm_loss(acts, o, weights, generator=torch.Generator().manual_seed(5))

    base = loss(actions)
    assert base.shape == (6, N) and (base >= 0).all()
    garbage = actions + 5.0 * (~MASK)  # only padded entries change
    torch.testing.assert_close(loss(garbage), base)
    weights = torch.rand(6, N)
    torch.testing.assert_close(loss(actions, weights), base * weights)
    # Candidates as a leading dim, observations broadcast over them.
    cand = (torch.rand(4, 6, N, ACT) * 2 - 1) * MASK
    assert loss(cand).shape == (4, 6, N)
    loss(cand, torch.rand(4, 6, N)).mean().backward()
    assert policy.denoiser.net.mlp.net[0].weight.grad.abs().sum() > 0


def test_dsm_training_learns_a_bimodal_policy():
    """DSM on actions +-0.8 (equally likely, constant obs) gives samples in both modes, which a
    Gaussian policy cannot; a second agent trained on a single mode stays unimodal."""
    torch.manual_seed(0)
    policy = DiffusionPolicy(2, 1, 1, schedule=make_schedule("vp", 10), hidden=(64, 64))
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    obs = torch.zeros(256, 2, 1)
    for _ in range(600):
        signs = torch.randint(0, 2, (256, 1)) * 2.0 - 1.0
        actions = torch.stack([0.8 * signs, torch.full_like(signs, 0.3)], dim=1)
        loss = policy.dsm_loss(actions, obs).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    samples = policy.sample(torch.zeros(1000, 2, 1), generator=torch.Generator().manual_seed(0))
    bimodal, single = samples[:, 0, 0], samples[:, 1, 0]
    assert (bimodal > 0.4).float().mean() > 0.25
    assert (bimodal < -0.4).float().mean() > 0.25
    assert ((bimodal.abs() - 0.8).abs() < 0.25).float().mean() > 0.75  # mass sits on the modes
    assert (single - 0.3).abs().mean() < 0.15


# ---------------------------------------------------------------------------- fast chains


@pytest.mark.parametrize("share", [False, True])
def test_conditioned_prediction_equals_the_full_forward(share):
    """`condition` once per chain + `predict` per step is the same network as `forward`, with
    the observation broadcast over a leading candidate dim."""
    net = StackedDenoiser(N, OBS, ACT, share=share, **SMALL)
    obs, cand = torch.randn(7, N, OBS), torch.randn(4, 7, N, ACT)
    cond = net.condition(obs, torch.Size((4, 7)), 5)
    for t in (0, 3):
        expected = net(cand, obs, torch.full((4, 7), t))
        torch.testing.assert_close(net.predict(cand, cond, t), expected, rtol=1e-5, atol=1e-6)


def test_respaced_chains_visit_evenly_spaced_steps():
    policy = small_policy(steps=20)
    assert policy.chain() == policy.chain(20) == policy.chain(50) == list(range(20))
    assert policy.chain(5) == [0, 5, 10, 14, 19]
    assert policy.chain(1) == [19]
    with pytest.raises(ValueError, match="at least one step"):
        policy.chain(0)


def test_quadratically_spaced_chains_crowd_their_steps_near_the_data_end():
    """(i / (K-1))^2 (T-1), rounded: VMAS's T = 10 in 4 steps visits 0, 1, 4, 9 against the
    even 0, 3, 6, 9; a full or one-step chain is the same either way."""
    policy = small_policy(steps=10)
    assert policy.chain(4, "quadratic") == [0, 1, 4, 9]
    assert policy.chain(4) == policy.chain(4, "even") == [0, 3, 6, 9]
    assert policy.chain(5, "quadratic") == [0, 1, 2, 5, 9]
    assert policy.chain(10, "quadratic") == list(range(10))
    assert policy.chain(1, "quadratic") == [9]
    with pytest.raises(ValueError, match="valid: \\['even', 'quadratic'\\]"):
        policy.chain(4, "log")
    obs = torch.randn(3, N, OBS)

    def sample(**spacing):
        generator = torch.Generator().manual_seed(5)
        return policy.sample(obs, steps=4, eta=0.0, generator=generator, **spacing)

    # From one x_T, the spacing alone changes the sample; "even" is the default.
    assert torch.equal(sample(spacing="even"), sample())
    assert not torch.equal(sample(spacing="quadratic"), sample())


def test_a_respaced_ddim_chain_is_the_written_out_strided_chain():
    policy = small_policy(steps=20)
    obs = torch.randn(5, N, OBS)
    out = policy.sample(obs, steps=4, eta=0.0, generator=torch.Generator().manual_seed(3))
    x_t = torch.randn((5, N, ACT), generator=torch.Generator().manual_seed(3)) * MASK
    visited = policy.chain(4)
    with torch.no_grad():
        for i in reversed(range(4)):
            prev = visited[i - 1] if i else -1
            x_t = policy.denoise_step(x_t, obs, visited[i], t_prev=prev, deterministic=True)
    torch.testing.assert_close(out, x_t.clamp(-1, 1))
    # The full chain through the same argument is the default sampler, draw for draw.
    torch.testing.assert_close(
        policy.sample(obs, steps=20, generator=torch.Generator().manual_seed(4)),
        policy.sample(obs, generator=torch.Generator().manual_seed(4)),
    )


FOUR_MODES = torch.tensor([[0.5, 0.0], [-0.5, 0.0], [0.0, 0.5], [0.0, -0.5]])


@functools.cache
def four_mode_policy() -> tuple[DiffusionPolicy, torch.Tensor]:
    """A one-agent 20-level VP policy trained by DSM on 4 equally likely modes at +-0.5 on each
    axis (constant observation), and the modes."""
    torch.manual_seed(0)
    policy = DiffusionPolicy(1, 1, 2, schedule=make_schedule("vp", 20), hidden=(64, 64))
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(800):
        target = FOUR_MODES[torch.randint(0, 4, (256,))] + 0.08 * torch.randn(256, 2)
        loss = policy.dsm_loss(target[:, None], torch.zeros(256, 1, 1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy.requires_grad_(False), FOUR_MODES


def test_a_respaced_chain_samples_what_the_full_chain_learned():
    """Trained by DSM on 4 modes at +-0.5 on each axis, a 10-step respaced chain of the 20-level
    model puts each mode's share within 5 points of the full chain's and spreads as much;
    ancestral noise (eta = 1) is what keeps a 5-step chain's shares (measured: eta = 0 skews
    them by up to 16 points on the cosine schedule)."""
    policy, modes = four_mode_policy()

    def shares_and_spread(steps):
        x = policy.sample(
            torch.zeros(4000, 1, 1), steps=steps, generator=torch.Generator().manual_seed(1)
        )[:, 0]
        nearest = torch.cdist(x, modes).argmin(1)
        shares = torch.bincount(nearest, minlength=4) / len(x)
        return shares, (x - modes[nearest]).norm(dim=-1).mean()

    full_shares, full_spread = shares_and_spread(None)
    assert (full_shares > 0.15).all(), full_shares  # the model learned all 4 modes
    for steps, tolerance in ((10, 0.05), (5, 0.08)):
        shares, spread = shares_and_spread(steps)
        assert (shares - full_shares).abs().max() < tolerance, (steps, shares, full_shares)
        assert abs(spread - full_spread) < 0.25 * full_spread, (steps, spread, full_spread)


def test_candidates_sharing_a_start_run_its_step_once_per_state_and_keep_the_modes(monkeypatch):
    """With `shared_start` the first step of a 5-step candidate chain runs on one row per state
    and the other steps on every candidate. The candidates keep the chain's mode shares, and a
    state's 8 candidates reach about as many distinct modes as 8 independent draws (measured:
    3.54 and 3.53 of 4, shares within a point)."""
    policy, modes = four_mode_policy()
    states, m = 500, 8
    rows, predict = [], policy.denoiser.predict

    def recording(a_t, cond, t):
        rows.append(tuple(a_t.shape[:-2]))
        return predict(a_t, cond, t)

    monkeypatch.setattr(policy.denoiser, "predict", recording)

    def draw(shared):
        rows.clear()
        x = policy.sample(
            torch.zeros(states, 1, 1),
            candidates=m,
            steps=5,
            shared_start=shared,
            generator=torch.Generator().manual_seed(2),
        )[..., 0, :]  # [M, states, 2]
        nearest = torch.cdist(x.reshape(-1, 2), modes).argmin(1).view(m, states)
        shares = torch.bincount(nearest.flatten(), minlength=4) / nearest.numel()
        distinct = torch.stack([(nearest == k).any(0) for k in range(4)]).sum(0).float().mean()
        return list(rows), shares, distinct

    rows_shared, shares, distinct = draw(True)
    rows_independent, shares_independent, distinct_independent = draw(False)
    assert rows_shared == [(states,)] + [(m, states)] * 4
    assert rows_independent == [(m, states)] * 5
    assert (shares - shares_independent).abs().max() < 0.03, (shares, shares_independent)
    assert distinct > 0.95 * distinct_independent, (distinct, distinct_independent)
    # A chain whose first step adds no noise would give M copies: every candidate starts alone.
    ddim = policy.sample(torch.zeros(3, 1, 1), candidates=4, steps=5, eta=0.0, shared_start=True)
    assert not torch.allclose(ddim[0], ddim[1])


@pytest.mark.skipif(not compiler_available(), reason="torch.compile needs a C++ compiler")
def test_compile_chains_samples_the_eager_chains_bit_for_bit(compiled_calls):
    """`compile_chains`: the chains without gradient (full, respaced candidates from a shared
    start) run compiled with the eager numbers, bit for bit; a chain with gradient and the
    DSM loss stay eager."""
    eager = small_policy("vp", steps=10)
    compiled = small_policy("vp", steps=10, compile_chains=True)
    obs = torch.randn(COMPILED_MIN_ROWS, N, OBS)
    for options in ({}, {"candidates": 4, "steps": 5, "shared_start": True}):
        a, b = (
            p.sample(obs, generator=torch.Generator().manual_seed(1), **options)
            for p in (eager, compiled)
        )
        assert torch.equal(b, a)
    assert len(compiled_calls) == 10 + 5
    compiled.sample(obs, grad=True)
    compiled.dsm_loss(torch.zeros(COMPILED_MIN_ROWS, N, ACT), obs)
    assert len(compiled_calls) == 15 and not compiled.denoiser.net.mlp.compiled


@pytest.mark.skipif(not compiler_available(), reason="torch.compile needs a C++ compiler")
def test_compile_chain_loop_samples_what_the_eager_chain_does(monkeypatch):
    """`compile_chain_loop`: the no-gradient chain's whole loop runs as one compiled graph, at
    any number of rows, from the random numbers the eager chain draws (its outputs agree to
    float rounding, where another seed's differ by far more); padded entries stay exactly zero,
    and chains with gradient stay eager."""
    from marl_diff.diffusion import policy as policy_module
    from marl_diff.diffusion.mean_reverting import MeanRevertingPolicy

    runs = []
    compiled_reverse = policy_module._compiled_reverse
    monkeypatch.setattr(
        policy_module, "_compiled_reverse", lambda p: runs.append(p) or compiled_reverse(p)
    )
    eager = small_policy("vp", steps=10)
    looped = small_policy("vp", steps=10, compile_chain_loop=True)
    obs = torch.randn(4, N, OBS)  # acting in a few envs: below COMPILED_MIN_ROWS
    options = (
        {},
        {"candidates": 4, "steps": 5, "shared_start": True},
        {"steps": 5, "deterministic": True},
        {"noise_scale": 0.5},
    )
    for option in options:
        a, b, other = (
            p.sample(obs, generator=torch.Generator().manual_seed(seed), **option)
            for p, seed in ((eager, 1), (looped, 1), (eager, 2))
        )
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        assert (b * ~MASK == 0).all()
        if not option.get("deterministic"):
            assert (other - a).abs().max() > 0.1
    assert len(runs) == len(options)
    with_grad = looped.sample(obs, grad=True)
    assert with_grad.requires_grad and len(runs) == len(options)
    torch.manual_seed(0)
    reverting = MeanRevertingPolicy(N, OBS, ACT, MASK, compile_chain_loop=True, **SMALL)
    torch.manual_seed(0)
    reverting_eager = MeanRevertingPolicy(N, OBS, ACT, MASK, **SMALL)
    a, b = (
        p.sample(obs, candidates=3, generator=torch.Generator().manual_seed(1))
        for p in (reverting_eager, reverting)
    )
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    assert len(runs) == len(options) + 1


@pytest.mark.skipif(not compiler_available(), reason="torch.compile needs a C++ compiler")
def test_compile_chain_loop_takes_a_compiled_denoiser_into_its_graph():
    """With the denoiser's layers compiled as well (`compiled`: ddpl's `compile_denoiser`), the
    chain's loop stays one graph: the layers join it rather than call their own compiled copy,
    which broke the loop at every step (each step's frame then recompiled per step index until
    Dynamo's limit left it eager). The samples agree with the eager chain's."""
    from torch._dynamo.utils import counters

    eager = small_policy("vp", steps=10)
    looped = small_policy("vp", steps=10, compiled=True, compile_chain_loop=True)
    obs = torch.randn(COMPILED_MIN_ROWS, N, OBS)  # rows at which the compiled layers would run
    counters.clear()
    for options in ({}, {"candidates": 2, "steps": 5, "shared_start": True}):
        a, b = (
            p.sample(obs, generator=torch.Generator().manual_seed(1), **options)
            for p in (eager, looped)
        )
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.skipif(not compiler_available(), reason="torch.compile needs a C++ compiler")
@pytest.mark.parametrize("share", [False, True])
def test_compiled_and_eager_chains_agree(share, compiled_calls):
    """`compiled` changes how the denoiser runs, not what the chain samples or the loss."""
    eager = small_policy("vp", steps=10, share=share)
    compiled = small_policy("vp", steps=10, share=share, compiled=True)
    assert compiled.denoiser.net.mlp.compiled and not eager.denoiser.net.mlp.compiled
    obs = torch.randn(COMPILED_MIN_ROWS, N, OBS)  # enough rows to run compiled
    for options in ({}, {"candidates": 4, "steps": 5, "shared_start": True}):
        a, b = (
            p.sample(obs, generator=torch.Generator().manual_seed(1), **options)
            for p in (eager, compiled)
        )
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    assert len(compiled_calls) == 10 + 5
    actions = torch.rand(COMPILED_MIN_ROWS, N, ACT) * 2 - 1
    losses = [
        p.dsm_loss(actions, obs, generator=torch.Generator().manual_seed(2))
        for p in (eager, compiled)
    ]
    torch.testing.assert_close(losses[1], losses[0])
    grads = [
        torch.autograd.grad(loss.sum(), list(p.parameters()))
        for loss, p in zip(losses, (eager, compiled), strict=True)
    ]
    for g, e in zip(grads[1], grads[0], strict=True):  # float32 sums over the rows, reordered
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert len(compiled_calls) == 16
