"""The mean-reverting SDE diffusion policy of "Entropy-regularized diffusion policy with
Q-ensembles for offline RL" (Zhang et al., NeurIPS 2024).

Forward process: da = -theta_t a dt + sqrt(2 theta_t) dW, a mean-reverting (Ornstein-Uhlenbeck)
SDE towards mu = 0 with stationary law N(0, I). The thetas are the cosine schedule's betas and dt
is rescaled so that exp(-sum_t theta_t dt) = 1e-3, so the last step is N(0, I) up to 1e-3 of the
action. The marginal is Gaussian in closed form,

    a_t = e^{-thetabar_t} a_0 + sqrt(1 - e^{-2 thetabar_t}) eps, thetabar_t = sum_{s<=t} theta_s dt,

and so is the posterior q(a_{t-1} | a_t, a_0). The reverse step predicts a_0 from the network's
eps and takes that exact posterior, which is why a chain of only T = 5 steps works: nothing is
discretised, every step is the optimal Gaussian step given the a_0 estimate. (With
alpha_bar_t = e^{-2 thetabar_t} this is a DDPM with betas 1 - e^{-2 theta_t dt}; the tables here
keep the paper's parameterisation.)

Entropy. Every reverse transition is Gaussian, so log-densities are tractable:
`sample_with_log_prob` returns the log-density of the sampled chain, and `entropy` the paper's
one-shot estimate used in the actor loss (see each for what exactly is estimated).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from marl_diff.diffusion.denoiser import Conditioning
from marl_diff.diffusion.policy import DiffusionPolicy, _add_noise
from marl_diff.diffusion.schedules import cosine_betas

TERMINAL_DECAY = 1e-3  # exp(-sum theta dt): what is left of a_0 at the last step
LOG_2PI = math.log(2 * math.pi)


def posterior_coefficients(decay_from, decay_to):
    """q(a_s | a_u, a_0) = N(coef_u a_u + coef_0 a_0, var) for levels s < u, given
    C = e^{-thetabar_s} (`decay_from`, 1 for the clean action) and B = e^{-thetabar_u}
    (`decay_to`); A = B / C is the transition's own decay. Floats or tensors."""
    a, b, c = decay_to / decay_from, decay_to, decay_from
    coef_u = a * (1 - c**2) / (1 - b**2)
    coef_0 = c * (1 - a**2) / (1 - b**2)
    var = (1 - a**2) * (1 - c**2) / (1 - b**2)
    return coef_u, coef_0, var


class MeanRevertingSchedule(nn.Module):
    """The SDE's per-step tables, computed in float64 and kept as float32 buffers (gathered by
    random steps in the loss) and as Python floats in `coef` (indexed by the sampler's int step).

    Tables (length T): thetas, thetabars, step_decay A = e^{-theta_t dt}, decay
    B = e^{-thetabar_t} (the marginal's mean coefficient), decay_prev C = e^{-thetabar_{t-1}}
    (1 at t = 0), stds sqrt(1 - B^2), and the reverse step's posterior_coef_xt, posterior_coef_a0,
    posterior_variance, posterior_std. `dt` is a float.
    """

    def __init__(self, steps: int = 5, cosine_s: float = 0.008):
        super().__init__()
        if steps < 2:
            raise ValueError(f"the mean-reverting schedule needs at least 2 steps, got {steps}")
        self.steps = steps
        thetas = cosine_betas(steps, cosine_s)
        self.dt = -math.log(TERMINAL_DECAY) / thetas.sum().item()
        thetabars = thetas.cumsum(0) * self.dt
        decay = torch.exp(-thetabars)
        decay_prev = torch.cat([decay.new_ones(1), decay[:-1]])
        coef_xt, coef_a0, variance = posterior_coefficients(decay_prev, decay)
        tables = {
            "thetas": thetas,
            "thetabars": thetabars,
            "step_decay": torch.exp(-thetas * self.dt),
            "decay": decay,
            "decay_prev": decay_prev,
            "stds": (1 - decay**2).sqrt(),
            "posterior_coef_xt": coef_xt,
            "posterior_coef_a0": coef_a0,
            "posterior_variance": variance,
            "posterior_std": variance.sqrt(),
        }
        for name, values in tables.items():
            self.register_buffer(name, values.float(), persistent=False)
        self.coef: dict[str, list[float]] = {k: v.tolist() for k, v in tables.items()}

    def extra_repr(self) -> str:
        return f"steps={self.steps}, dt={self.dt:.4f}"


class MeanRevertingPolicy(DiffusionPolicy):
    """N agents' mean-reverting SDE policies (eps-prediction) over a `MeanRevertingSchedule`.

    Reuses the base's `sample` (candidates, masking, grad), with this process's reverse step. The
    chain starts from the base's N(0, I), which is the SDE's stationary law. Only the full T-step
    chain exists: the closed-form step is between consecutive steps.
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        act_dim: int,
        act_mask: torch.Tensor | None = None,
        schedule: MeanRevertingSchedule | None = None,
        **denoiser_kwargs,
    ):
        schedule = schedule if schedule is not None else MeanRevertingSchedule(5)
        super().__init__(n_agents, obs_dim, act_dim, act_mask, schedule, **denoiser_kwargs)

    def denoise_step(
        self,
        x: torch.Tensor,
        obs: torch.Tensor,
        t: int,
        noise: torch.Tensor | None = None,
        *,
        t_prev: int | None = None,
        deterministic: bool = False,
        clip_x0: bool = True,
        eta: float = 1.0,
        cond: Conditioning | None = None,
    ) -> torch.Tensor:
        """One reverse step a_t -> a_{t-1}: a0_hat = (a_t - std_t eps_hat) e^{thetabar_t}
        (clamped to [-1, 1] when `clip_x0`), then the mean of q(a_{t-1} | a_t, a0_hat) plus its std
        times `noise` (none at t = 0, with `noise` None or `deterministic`). At t = 0 the mean is
        a0_hat. `eta` is accepted for the base's signature and unused (it only shapes respaced
        steps); a respaced step (t_prev != t - 1) raises ValueError.
        """
        if t_prev is not None and t_prev != t - 1:
            raise ValueError(
                "the mean-reverting policy has no respaced chain (its closed-form step joins "
                f"consecutive steps); got step {t} -> {t_prev}, use steps=None"
            )
        c = self.schedule.coef
        if cond is None:
            cond = self.denoiser.condition(obs, x.shape[:-2], self.steps)
        eps = self.denoiser.predict(x, cond, t)
        x0 = torch.add(x, eps, alpha=-c["stds"][t]) / c["decay"][t]
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        out = torch.add(c["posterior_coef_xt"][t] * x, x0, alpha=c["posterior_coef_a0"][t])
        if t > 0 and noise is not None and not deterministic:
            out = _add_noise(out, noise, c["posterior_std"][t])
        return self._mask(out)

    def _noised_prediction(self, actions, obs, generator):
        """Noise dataset actions to a uniform step per sample and agent through the marginal and
        predict the noise: (t [..., N], eps, a_t, eps_hat [..., N, A])."""
        actions = self._mask(actions)
        s = self.schedule
        t = torch.randint(
            0, s.steps, actions.shape[:-1], device=actions.device, generator=generator
        )
        eps = self._mask(
            torch.randn(
                actions.shape, device=actions.device, dtype=actions.dtype, generator=generator
            )
        )
        a_t = s.decay[t].unsqueeze(-1) * actions + s.stds[t].unsqueeze(-1) * eps
        return t, eps, a_t, self.denoiser(a_t, obs, t)

    def dsm_loss(
        self,
        actions: torch.Tensor,
        obs: torch.Tensor,
        weights: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Eps-prediction loss on this SDE's marginal: actions [..., N, A] -> [..., N], squared
        error summed over real entries, times `weights` [..., N] if given. Callers average."""
        _, eps, _, eps_hat = self._noised_prediction(actions, obs, generator)
        loss = self._real_sum((eps_hat - eps).square())
        return loss if weights is None else loss * weights

    def one_shot(
        self,
        actions: torch.Tensor,
        obs: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor loss's shared forward pass: from dataset actions [..., N, A], the BC loss
        [..., N] (exactly `dsm_loss`'s, same draws for the same generator state) and the one-shot
        a0_hat [..., N, A] = (a_t - std_t eps_hat) e^{thetabar_t}, clamped to [-1, 1], padding
        zero. The paper evaluates Q and `entropy` on this a0_hat rather than on a full chain."""
        t, eps, a_t, eps_hat = self._noised_prediction(actions, obs, generator)
        s = self.schedule
        a0_hat = (a_t - s.stds[t].unsqueeze(-1) * eps_hat) / s.decay[t].unsqueeze(-1)
        bc = self._real_sum((eps_hat - eps).square())
        return bc, self._mask(a0_hat.clamp(-1.0, 1.0))

    def entropy(self, a0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The paper's one-shot entropy estimate of a0 [..., N, A] (e.g. `one_shot`'s a0_hat):
        -log q(a_s | a_u, a0) with s the first and u the last step, a_u ~ N(0, I) and
        a_s = e^{-thetabar_s} a0 (a0's noise-free forward step), summed over real entries
        -> [..., N]. A tractable Gaussian stand-in for -log pi(a0 | o): the whole reverse chain
        collapsed into the single posterior jump from (near) stationarity to the first step,
        conditioned on a0. Our reading of the official code, with its step indices taken as the
        clean first and last steps. Differentiable in a0, but barely: a_s minus the posterior
        mean is proportional to e^{-thetabar_u} a0 - a_u, so a0 enters scaled by 1e-3 and
        |dH/da0| is ~1e-9 at T = 5; as a regulariser this estimate is nearly constant.
        """
        c = self.schedule.coef
        decay_s = c["decay"][0]
        coef_u, coef_0, var = posterior_coefficients(decay_s, c["decay"][-1])
        a_u = torch.randn(a0.shape, device=a0.device, dtype=a0.dtype, generator=generator)
        diff = decay_s * a0 - (coef_u * a_u + coef_0 * a0)
        return self._real_sum(0.5 * diff.square() / var + 0.5 * (LOG_2PI + math.log(var)))

    def sample_with_log_prob(
        self,
        obs: torch.Tensor,
        *,
        candidates: int | None = None,
        grad: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample the full stochastic chain: obs [..., N, D] -> (actions [..., N, A] in [-1, 1],
        log_prob [..., N]), with a leading M under `candidates=M` as in `sample`.

        log_prob is log N(a_T; 0, I) + sum_{t>=1} log N(a_{t-1}; mean_t, var_t) over real
        entries: the joint log-density of the chain's stochastic states (a_T, ..., a_1) under the
        model; a_0 is the deterministic mean of the last step and adds no density. So -log_prob
        is a one-sample estimate of the chain's joint entropy H(a_T, ..., a_1 | o) with every
        normalising constant kept (no constant dropped), not the marginal entropy of a_0.
        Because each transition's variance is fixed, each term is -|z|^2 / 2 - log std -
        log(2 pi) / 2 of the injected noise z: the value does not depend on the parameters, and
        only the actions carry a graph under `grad=True` (otherwise the chain runs under
        `chain_context`).
        """
        self._check_obs(obs)
        lead = obs.shape[:-2] if candidates is None else (candidates, *obs.shape[:-2])
        shape = (*lead, self.n_agents, self.act_dim)
        std = self.schedule.coef["posterior_std"]
        with self.chain_context(grad):
            x = self._mask(self._initial_noise(shape, obs, generator))
            squares = x.square()
            cond = self.denoiser.condition(obs, torch.Size(lead), self.steps)
            for t in reversed(range(self.steps)):
                noise = None
                if t > 0:
                    noise = torch.randn(shape, device=x.device, dtype=x.dtype, generator=generator)
                    squares = squares + noise.square()
                x = self.denoise_step(x, obs, t, noise, cond=cond)
            log_norm = 0.5 * self.steps * LOG_2PI + sum(math.log(s) for s in std[1:])
            n_real = self.act_mask.sum(-1)
            log_prob = -0.5 * self._real_sum(squares) - log_norm * n_real
            return x.clamp(-1.0, 1.0), log_prob
