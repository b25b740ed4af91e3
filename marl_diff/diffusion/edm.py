"""EDM diffusion policies (Karras et al. 2022), the behaviour model of DTQL.

EDM noises a clean action a to x = a + sigma n, n ~ N(0, I), at a continuous noise level sigma
in [sigma_min, sigma_max], and learns the denoiser D(x; sigma) ~ E[a | x] through a
preconditioned network: D = c_skip x + c_out F(c_in x, c_noise), whose coefficients keep the
network's input and regression target at unit scale at every sigma. Here F is the same
`StackedDenoiser` as the DDPM policies (its time embedding takes the float c_noise), so agents
stay stacked, padded action entries stay at zero, and candidates batch as in `DiffusionPolicy`.

DTQL (Diffusion Trusted Q-Learning) fits this model to the dataset's actions by `dsm_loss`, then
freezes it and reuses the same loss on a one-step policy's actions as its trust-region term, so
the loss is differentiable in the actions it is given. Sampling solves the probability-flow ODE
with Heun's method on the Karras noise levels.
"""

from __future__ import annotations

import math

import torch

from marl_diff.diffusion.policy import DiffusionPolicy


class EDMPolicy(DiffusionPolicy):
    """N agents' EDM policies: D(x; sigma) clamped to [-1, 1], trained by the 1/c_out^2-weighted
    denoising loss, sampled by Heun's method.

    `sigma_data` 0.5 and sigmas in [0.002, 80] are DTQL's. Training sigmas are log-logistic:
    log sigma ~ Logistic(`log_sigma_loc`, `log_sigma_scale`), clamped to [sigma_min, sigma_max];
    the location defaults to log(sigma_data) and the scale to 0.5, our reading of DTQL's "around
    0.5". `sample_steps` (default 10, i.e. 19 network calls) is the number of noise levels of a
    chain; `rho` shapes their spacing (EDM's 7). Further keyword arguments (hidden, activation,
    time_embed_dim, share) go to `StackedDenoiser`, as in `DiffusionPolicy`; DTQL's network is
    hidden=(256,) * 4 with mish and a 16-d time embedding.

    There is no discrete `NoiseSchedule`: `steps`, `chain`, `denoise_step` and `_initial_noise`
    are redefined on sigmas.
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        act_dim: int,
        act_mask: torch.Tensor | None = None,
        *,
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        sample_steps: int = 10,
        log_sigma_loc: float | None = None,
        log_sigma_scale: float = 0.5,
        **denoiser_kwargs,
    ):
        super().__init__(n_agents, obs_dim, act_dim, act_mask, **denoiser_kwargs)
        del self.schedule  # the base's default VP schedule; EDM's noise levels are continuous
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if sigma_data <= 0 or rho <= 0 or log_sigma_scale <= 0:
            raise ValueError("sigma_data, rho and log_sigma_scale must be positive")
        if sample_steps < 1:
            raise ValueError(f"a chain needs at least one step, got sample_steps={sample_steps}")
        self.sigma_data = sigma_data
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.rho = rho
        self.sample_steps = sample_steps
        self.log_sigma_loc = math.log(sigma_data) if log_sigma_loc is None else log_sigma_loc
        self.log_sigma_scale = log_sigma_scale

    def extra_repr(self) -> str:
        return (
            f"sigma_data={self.sigma_data}, sigma=[{self.sigma_min}, {self.sigma_max}], "
            f"rho={self.rho}, sample_steps={self.sample_steps}"
        )

    @property
    def steps(self) -> int:
        """The number of noise levels of a default chain (`sample_steps`)."""
        return self.sample_steps

    def chain(self, steps: int | None = None) -> list[float]:
        """The noise levels a chain of `steps` levels (default `sample_steps`) visits, in the
        order visited: Karras et al.'s sigma_i = (smax^(1/rho) + i/(K-1) (smin^(1/rho) -
        smax^(1/rho)))^rho from sigma_max down to sigma_min, then 0. Python floats, so a step
        needs no device sync. A one-level chain is [sigma_max, 0]."""
        k = self.sample_steps if steps is None else steps
        if k < 1:
            raise ValueError(f"a chain needs at least one step, got steps={k}")
        if k == 1:
            return [self.sigma_max, 0.0]
        hi, lo = self.sigma_max ** (1 / self.rho), self.sigma_min ** (1 / self.rho)
        return [(hi + i / (k - 1) * (lo - hi)) ** self.rho for i in range(k)] + [0.0]

    def preconditioning(
        self, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """EDM's (c_skip, c_out, c_in, c_noise) at `sigma`, elementwise."""
        sd2 = self.sigma_data**2
        total = sigma.square() + sd2
        return sd2 / total, sigma * self.sigma_data * total.rsqrt(), total.rsqrt(), sigma.log() / 4

    def denoised(
        self, x: torch.Tensor, obs: torch.Tensor, sigma: torch.Tensor | float
    ) -> torch.Tensor:
        """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise), clamped to [-1, 1], padded entries
        zero: x [..., N, A] -> [..., N, A]. `sigma` is a float, or a tensor with one level per
        sample ([...], shared by its agents) or per agent ([..., N]); `obs` broadcasts against
        x's leading dims."""
        x = self._mask(x)
        if not isinstance(sigma, torch.Tensor):
            sigma = x.new_full((), sigma)
        elif sigma.dim() == x.dim() - 2:
            sigma = sigma.unsqueeze(-1)
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        out = self.denoiser(c_in.unsqueeze(-1) * x, obs, c_noise)
        out = c_skip.unsqueeze(-1) * x + c_out.unsqueeze(-1) * out
        return self._mask(out.clamp(-1.0, 1.0))

    def train_sigma(self, shape, like: torch.Tensor, generator=None) -> torch.Tensor:
        """Training noise levels of `shape`: log-logistic, clamped to [sigma_min, sigma_max]."""
        u = torch.rand(shape, device=like.device, dtype=like.dtype, generator=generator)
        log_sigma = self.log_sigma_loc + self.log_sigma_scale * (u.log() - (-u).log1p())
        return log_sigma.exp().clamp(self.sigma_min, self.sigma_max)

    def dsm_loss(
        self,
        actions: torch.Tensor,
        obs: torch.Tensor,
        weights: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """EDM's denoising loss per sample and agent: actions [..., N, A] -> loss [..., N].

        A fresh sigma (`train_sigma`) and noise n per sample and agent; the loss is
        (sigma^2 + sd^2) / (sigma sd)^2 * ||D(a + sigma n; sigma) - a||^2 over real action
        entries (the 1/c_out^2 weight makes it F's unit-scale regression), times `weights`
        [..., N] if given. Callers average. Differentiable in `actions` (DTQL's trust-region term
        evaluates it on a one-step policy's actions through the frozen model). `obs` broadcasts
        against the actions' leading dims.
        """
        actions = self._mask(actions)
        sigma = self.train_sigma(actions.shape[:-1], actions, generator)
        noise = torch.randn(
            actions.shape, device=actions.device, dtype=actions.dtype, generator=generator
        )
        noised = actions + sigma.unsqueeze(-1) * self._mask(noise)
        err = (self.denoised(noised, obs, sigma) - actions).square().sum(-1)
        loss = (sigma.square() + self.sigma_data**2) / (sigma * self.sigma_data).square() * err
        return loss if weights is None else loss * weights

    def _initial_noise(self, shape, like: torch.Tensor, generator) -> torch.Tensor:
        """x_T ~ N(0, sigma_max^2 I)."""
        return self.sigma_max * super()._initial_noise(shape, like, generator)

    def denoise_step(
        self, x: torch.Tensor, obs: torch.Tensor, sigma: float, sigma_next: float
    ) -> torch.Tensor:
        """One probability-flow ODE step x(sigma) -> x(sigma_next), dx/dsigma = (x - D) / sigma:
        Heun's second-order step, or Euler when sigma_next is 0 (where D is the answer)."""
        slope = (x - self.denoised(x, obs, sigma)) / sigma
        out = x + (sigma_next - sigma) * slope
        if sigma_next > 0:
            slope_next = (out - self.denoised(out, obs, sigma_next)) / sigma_next
            out = x + (sigma_next - sigma) / 2 * (slope + slope_next)
        return self._mask(out)

    def sample(
        self,
        obs: torch.Tensor,
        *,
        deterministic: bool = False,
        clip_x0: bool = True,
        grad: bool = False,
        noise_scale: float = 1.0,
        candidates: int | None = None,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        eta: float = 1.0,
        shared_start: bool = False,
    ) -> torch.Tensor:
        """EDM's deterministic sampler: obs [..., N, D] -> actions [..., N, A] in [-1, 1].

        From x_T ~ N(0, sigma_max^2 I), Heun steps over `chain(steps)`; the randomness is x_T
        alone (EDM's stochastic churn is not implemented). `candidates=M` gives M independent
        samples per state, [M, ..., N, A]; `grad=True` keeps the graph through the chain,
        otherwise it runs under `chain_context`.

        The base's signature is kept so callers can swap policies. Its noise options act only on
        noise a step injects, which this sampler never does, so `deterministic`, `eta`,
        `noise_scale` and `shared_start` have no effect here (as in the base's deterministic
        chains; each candidate keeps its own x_T). The clamp of the denoised action is part of
        this model, so `clip_x0=False` is rejected.
        """
        if not clip_x0:
            raise ValueError("EDMPolicy always clamps its denoised actions; clip_x0=False")
        self._check_obs(obs)
        lead = obs.shape[:-2] if candidates is None else (candidates, *obs.shape[:-2])
        shape = (*lead, self.n_agents, self.act_dim)
        sigmas = self.chain(steps)
        with self.chain_context(grad):
            x = self._mask(self._initial_noise(shape, obs, generator))
            for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
                x = self.denoise_step(x, obs, sigma, sigma_next)
            return x.clamp(-1.0, 1.0)
