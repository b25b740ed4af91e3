"""DACER (Diffusion Actor-Critic with Entropy Regulator), one diffusion policy per agent, with
the centralised distributional twin critic.

- Policy loss: -min(Q1, Q2)(s, a_i, a_-i) averaged over states and summed over agents, where
  a_i comes from agent i's full reverse chain WITH gradient (`DiffusionPolicy.sample(grad=True)`,
  so the gradient reaches the denoiser through all T steps). a_-i comes from the replay batch
  or from the other agents' current policies (`others_actions`). Q is the critic's mean head.
- Acting: a_i = sample(o_i) + N(0, I) * exp(log_alpha_i) * noise_scale, clipped to [-1, 1],
  padded entries zero. Evaluation (explore=False) adds nothing; the sampler's own noise stays.
- alpha is in NO loss: it only scales that added noise. Every `alpha_update_every` updates it
  takes one Adam step (lr `alpha_lr`) on -log_alpha_i * (target_entropy_i - H_i), with
  target_entropy_i = -target_entropy_scale * act_dim_i. H_i: for `entropy_states` states of the
  batch, `entropy_samples` actions per state, a `gmm_components`-component full-covariance
  Gaussian mixture fitted per state and agent (batched EM, marl_diff.diffusion.gmm), the
  mixture entropy formula, averaged over states. Our reading (`entropy_source`): the actions
  are the behaviour policy's ("behaviour": sample + the alpha-scaled noise, clipped), so that
  raising alpha raises H and the update has a fixed point; "policy" measures the bare sampler.
- Critic: distributional twin Q, DSAC-T style. Each head outputs a mean and a log-std. Our
  simplified, documented version of DSAC-T's variance-based update:
  * target mean y = r_scaled + gamma (1 - terminated) min_k mu'_k(s', a'), a' ~ pi(.|o')
    (no entropy term: DACER has none);
  * target sample z = r_scaled + gamma (1 - terminated) (mu'_j + sigma'_j * clip(N(0,1), +-b))
    with j the head of the smaller target mean, and per head the clipped
    z_k = mu_k + clip(z - mu_k, -b sigma_k, b sigma_k) (b = `td_bound`, mu_k and sigma_k
    detached);
  * mean loss (mu_k - y)^2, optionally weighted as DSAC-T by (running mean of sigma^2 + eps) /
    (sigma_k^2 + eps) (`variance_weighting`);
  * std loss: the Gaussian NLL of z_k in sigma_k with the mean detached, log sigma_k +
    (mu_k - z_k)^2 / (2 sigma_k^2), whose gradient (sigma^2 - (mu - z)^2) / sigma^3 is
    DSAC-T's std update: sigma_k tracks the spread of the clipped TD targets.
  The policy uses the mean heads only.
- Update cost: the policy loss backpropagates through all T = 20 steps of the chain, which made
  an update 8.5x a Gaussian one on a 2-core CPU. The catalog's `actor_batch_size` 64 computes
  the policy loss on 64 of the batch's states (the critic still uses all 256): our choice, a
  noisier policy gradient at a quarter of the cost; `actor_batch_size=0` is the card's 256.
  The chain itself stays the card's T = 20 ancestral chain (`sample_steps` 0): DACER has no
  denoising loss, its policy is that chain, and a respaced chain would be another policy.
- `compile_chains` (catalog: on): the chains without gradient (the critic-target actions,
  about half of an update, acting and the entropy estimate's samples) run with the denoiser
  compiled, and give the eager numbers bit for bit on a CPU (tests/test_dacer.py). It matters
  when `compile_denoiser` is off.
- `compile_denoiser` (catalog: on): the policy-gradient chain compiled too, whose compiled
  backward rounds differently from eager's. On Ant an update goes from 4.91x, 4.89x to 4.62x,
  4.59x a Gaussian one (Intel Xeon with AMX, two runs each, 2026-12-04). At the card's
  settings on multigoal_sql (20k steps, 3x256, T=20, lr 1e-4) seeds 0-3 covered 4, 2, 3, 4
  goals compiled against 3, 2, 3, 4 eager, with final returns within 3 of each other. It was off
  while the multigoal_sql check ran at small settings (2x64, T=5, 10k steps), where DACER
  covers 3 goals in 1 seed of 12 and any rounding change moves seed 0; that check now runs at
  the card's settings (results/speed.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from marl_diff.agents.base import check_at_least, check_choices
from marl_diff.agents.diffusion_actor import DiffusionActorConfig, DiffusionActorCritic
from marl_diff.agents.networks import CentralCritic
from marl_diff.buffer import Batch
from marl_diff.diffusion.gmm import mixture_entropy
from marl_diff.envs.base import EnvSpec
from marl_diff.errors import ConfigError

LOG_STD_MIN, LOG_STD_MAX = -6.0, 4.0
VARIANCE_EPS = 0.1  # DSAC-T's bias in the variance weights
STD_RATE = 0.005  # update rate of the running mean of sigma^2 (variance weighting)
ENTROPY_SOURCES = ("behaviour", "policy")


class DistributionalCritic(CentralCritic):
    """Twin (n-fold) Gaussian Q over (global state, joint action): each head a mean and a
    log-std, all heads stacked in one call. `forward` returns the means [n_q, ...] so the
    shared machinery (`q_each_agent`) sees a plain twin critic; `distribution` returns both."""

    def __init__(self, state_dim, n_agents, act_dim, hidden, n_q=2, activation="relu", **reduce):
        super().__init__(
            state_dim, n_agents, act_dim, hidden, n_q, activation, out_features=2, **reduce
        )

    def distribution(self, state: torch.Tensor, joint_action: torch.Tensor):
        """state [..., S], joint_action [..., N, A] -> mean, std, each [n_q, ...]."""
        mean, log_std = self.heads(state, joint_action).unbind(-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()


@dataclass
class DACERConfig(DiffusionActorConfig):
    actor_lr: float = 1e-4
    clip_x0: bool = True
    noise_scale: float = 0.1  # added exploration noise = N(0, I) * alpha * noise_scale
    init_alpha: float = 3.0
    auto_alpha: bool = True
    alpha_lr: float = 3e-2
    alpha_update_every: int = 10_000  # agent updates between alpha steps
    target_entropy_scale: float = 0.9  # target entropy of agent i = -scale * act_dim_i
    entropy_source: str = "behaviour"
    entropy_states: int = 32  # states per entropy estimate
    entropy_samples: int = 200  # actions per state for the mixture fit
    gmm_components: int = 3
    gmm_iterations: int = 50
    gmm_reg: float = 1e-3  # added to the covariance diagonals (clipped actions pile up)
    td_bound: float = 3.0  # clip of the critic's sampled targets, in units of sigma
    variance_weighting: bool = True  # DSAC-T's 1 / sigma^2 weights on the mean loss


class DACERAgent(DiffusionActorCritic):
    Config = DACERConfig
    critic_class = DistributionalCritic
    CRITIC_REWARDS = ("team",)  # the distributional critic's update learns the team reward
    # bfloat16 losses unmeasured for its distributional critic (a log of the learned std) and
    # its actor loss through the differentiable chain
    UPDATE_PRECISIONS = ("run",)

    def __init__(self, config: DACERConfig, spec: EnvSpec, device: torch.device):
        super().__init__(config, spec, device)
        check_choices(
            config,
            # its distributional critic's target takes the head of the smaller mean (twin min)
            {
                "entropy_source": ENTROPY_SOURCES,
                "critic_reduction": ("min",),
                "critic_targets": ("reduced",),
            },
        )
        check_at_least(
            config, ("alpha_update_every", "entropy_states", "gmm_components", "gmm_iterations")
        )
        if config.entropy_samples < config.gmm_components:
            raise ConfigError(
                f"agent.entropy_samples ({config.entropy_samples}) must be >= "
                f"agent.gmm_components ({config.gmm_components})"
            )
        for key in ("init_alpha", "td_bound"):
            if getattr(config, key) <= 0:
                raise ConfigError(f"agent.{key} must be positive, got {getattr(config, key)}")
        if config.noise_scale < 0 or config.gmm_reg < 0:
            raise ConfigError("agent.noise_scale and agent.gmm_reg must be >= 0")
        self.log_alpha = nn.Parameter(
            torch.full((spec.n_agents,), math.log(config.init_alpha)),
            requires_grad=config.auto_alpha,
        )
        act_dims = torch.tensor(spec.act_dims, dtype=torch.float32)
        self.register_buffer("target_entropy", -config.target_entropy_scale * act_dims)
        self.register_buffer("mean_variance", torch.full((2,), -1.0))  # < 0: not yet measured
        self.to(device)
        self.setup_optimizers()
        self.optimizers["actor"] = self.adam(self.policy.parameters(), config.actor_lr)
        if config.auto_alpha:
            self.optimizers["alpha"] = self.adam([self.log_alpha], config.alpha_lr)

    # ---------------------------------------------------------------- acting
    def exploration_noise(self, action: torch.Tensor) -> torch.Tensor:
        """Behaviour action: action + N(0, I) * alpha_i * noise_scale, clipped, padding zero."""
        scale = self.log_alpha.detach().exp()[:, None] * self.config.noise_scale  # [N, 1]
        noisy = action + torch.randn_like(action) * scale
        return noisy.clamp(-1.0, 1.0) * self.act_mask

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool, state: torch.Tensor | None = None):
        action = self.sample_policy(obs)
        return self.exploration_noise(action) if explore else action

    def chain_options(self) -> dict:
        return {**super().chain_options(), "clip_x0": self.config.clip_x0}

    # ---------------------------------------------------------------- updates
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        metrics = super().update(batch)  # critic, actor every policy_delay, target, counter
        if self.updates % self.config.alpha_update_every == 0:
            metrics.update(self.update_alpha(batch))
        metrics["alpha/mean"] = self.log_alpha.detach().exp().mean()
        return metrics

    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        bound = cfg.td_bound
        with torch.no_grad():
            next_action, _ = self.next_targets(batch)
            next_mean, next_std = self.critic_target.distribution(batch.next_state, next_action)
            pick = next_mean.argmin(0, keepdim=True)  # head of the smaller target mean
            next_mean = next_mean.gather(0, pick)[0]
            next_std = next_std.gather(0, pick)[0]
            team_reward = batch.reward.mean(-1) * cfg.reward_scale
            discount = self.bootstrap_factor(batch)
            target_mean = team_reward + discount * next_mean  # [B]
            z = torch.randn_like(next_mean).clamp(-bound, bound)
            target_sample = team_reward + discount * (next_mean + next_std * z)
        mean, std = self.critic.distribution(batch.state, batch.action)  # [2, B]
        mean_d, std_d = mean.detach(), std.detach()
        clipped = mean_d + (target_sample - mean_d).clamp(-bound * std_d, bound * std_d)
        squared = (mean - target_mean).square()
        if cfg.variance_weighting:
            with torch.no_grad():
                variance = std_d.square().mean(-1)  # [2]
                first = self.mean_variance < 0
                self.mean_variance.copy_(
                    torch.where(first, variance, self.mean_variance.lerp(variance, STD_RATE))
                )
                weight = (self.mean_variance[:, None] + VARIANCE_EPS) / (
                    std_d.square() + VARIANCE_EPS
                )
            squared = squared * weight
        nll = std.log() + (mean_d - clipped).square() / (2.0 * std.square())
        loss = (squared + nll).mean(-1).sum()
        return loss, {
            "loss/critic": loss.detach(),
            "q/mean": mean_d.mean(),
            "q/std": std_d.mean(),
        }

    def update_actor(self, batch: Batch) -> dict[str, torch.Tensor]:
        batch = self.actor_batch(batch)
        action = self.policy.sample(batch.obs, grad=True, **self.chain_options())
        loss = -self.own_q_sum(batch, action).mean()
        self.step_optimizer(loss, "actor")
        return {"loss/actor": loss.detach()}

    @torch.no_grad()
    def estimate_entropy(self, obs: torch.Tensor) -> torch.Tensor:
        """Per-agent GMM entropy [N] of the actions at obs [B, N, D] (first `entropy_states`)."""
        cfg = self.config
        obs = obs[: cfg.entropy_states]
        samples = self.policy.sample(obs, candidates=cfg.entropy_samples, **self.chain_options())
        if cfg.entropy_source == "behaviour":
            samples = self.exploration_noise(samples)
        entropy = mixture_entropy(
            samples, self.act_mask.bool(), cfg.gmm_components, cfg.gmm_iterations, cfg.gmm_reg
        )  # [B, N]
        return entropy.mean(0)

    def update_alpha(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One step of -log_alpha * (target_entropy - H) per agent (alpha is in no other loss)."""
        entropy = self.estimate_entropy(batch.obs)
        metrics = {"policy/entropy": entropy.mean()}
        if self.config.auto_alpha:
            alpha_loss = -(self.log_alpha * (self.target_entropy - entropy)).sum()
            self.step_optimizer(alpha_loss, "alpha")
            metrics["loss/alpha"] = alpha_loss.detach()
        return metrics
