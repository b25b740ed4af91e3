"""The entropy-regularised diffusion policy with Q-ensembles (Zhang et al., NeurIPS 2024),
offline, every agent its own mean-reverting SDE policy, one centralised critic ensemble.

- Policy: a `MeanRevertingPolicy` per agent, T = 5. Its denoiser is our 3x256 mish network
  with a 16-d time embedding, the same as the other diffusion agents' (not the official MLP).
- Critic: the base `CentralCritic` with 64 members, `critic_targets: own` (member k regresses to
  r + gamma Q'_k(s', a'), no min and no LCB in the targets, which keeps members diverse) and
  `critic_reduction: lcb`, Q_LCB = mean - 4 std over members, wherever the agents use Q. a'
  comes from the EMA actor's full chain (`target_action`).
- EMA actor: a Polyak copy of the policy (`ema_decay` 0.995), refreshed every `ema_every` (5)
  updates from update `ema_start` (1000) on; the official code's schedule (the card names the
  rate and period only). Before that it is the initial policy, as there.
- Actor loss, from one forward pass: `MeanRevertingPolicy.one_shot` noises the dataset action to
  a random step and predicts a0 from it. The loss is
  `bc + eta * (-Q_LCB / scale) + entropy_weight * (-H / mean|H|)`, bc being that prediction's
  eps MSE and Q and H taken at the one-shot a0, not at a chain's sample; the scales are detached
  batch means (detached so they only set the terms' weights). Per agent i (Q_i at agent
  i's own a0, the others' actions from `others_actions`), then summed over agents, so each
  agent gets the single-agent loss. Like the official code, the BC error is a mean over action
  entries, and the Q scale is the mean |Q_k| over members and states (`q_scale: members`;
  `lcb` divides by mean |Q_LCB| instead).
- Entropy (`entropy`): "chain" is `MeanRevertingPolicy.entropy`, the paper's and official code's
  Gaussian stand-in for -log pi(a0 | o). a0 enters it scaled by 1e-3: we measured the gradient
  norm of its normalised term on the policy at 3e-10 against 0.17 for the BC loss (6-d actions,
  batch 256, initial networks), so the term is inert, as in the official code. "knn", our reading
  that gives the term a gradient: a Kozachenko-Leonenko estimate over `entropy_samples` one-shot
  predictions per state (each its own step and noise; the first is the BC and Q term's), which
  pushes a state's predictions apart; its normalised term's gradient measured 0.94 (so 6% of the
  BC gradient at weight 0.01), at 4x the actor loss's cost with 16 samples. "none" drops the
  term. The default is "chain": it reproduces the official algorithm (in effect without an
  entropy regulariser); what "knn" does to the scores is untested.
- Critic gradient clipping: the base sums the members' losses where the official code averages
  them, so the critic's gradient is K times larger; its norm is clipped at K * `grad_clip`,
  which with Adam is the same update as the official clip of the mean.
- Acting: `act_samples` (50) chain samples, one drawn by a softmax over the target ensemble's
  LCB, for a single agent whose state is its observation. With N > 1 the critic needs the global
  state, which decentralised execution does not have, so each agent samples its own policy.

The official code keeps the best evaluation over training (online model selection); the runner
reports the final score. The official locomotion BC loss is the "MLL" form (the one-step reverse
update against the optimal one); `MeanRevertingPolicy` has the eps MSE only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from marl_diff.agents.base import (
    ActorCriticAgent,
    ActorCriticConfig,
    check_activation,
    check_at_least,
    check_choices,
    resample,
)
from marl_diff.agents.networks import substitute_each_agent
from marl_diff.buffer import Batch
from marl_diff.diffusion.entropy import knn_entropy
from marl_diff.diffusion.mean_reverting import MeanRevertingPolicy, MeanRevertingSchedule
from marl_diff.envs.base import EnvSpec
from marl_diff.errors import ConfigError

CHOICES = {"entropy": ("chain", "knn", "none"), "q_scale": ("members", "lcb")}


@dataclass
class QEnsembleConfig(ActorCriticConfig):
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    critic_activation: str = "mish"
    critic_members: int = 64
    critic_reduction: str = "lcb"
    critic_targets: str = "own"
    grad_clip: float = 4.0
    # the policy
    actor_lr: float = 3e-4
    actor_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    actor_activation: str = "mish"
    time_embed_dim: int = 16
    share_parameters: bool = False
    diffusion_steps: int = 5
    # the actor loss
    eta: float = 1.0  # weight of the normalised Q term (1 on locomotion)
    q_scale: str = "members"
    entropy: str = "chain"
    entropy_weight: float = 0.01
    entropy_samples: int = 16  # one-shot predictions per state for "knn"
    # the EMA actor that draws the critic targets' next actions
    ema_decay: float = 0.995
    ema_every: int = 5
    ema_start: int = 1000
    # acting
    act_by_q: bool = True
    act_samples: int = 50


class QEnsembleAgent(ActorCriticAgent):
    Config = QEnsembleConfig
    CRITIC_REWARDS = ("team",)  # its actor loss reads the team Q's members directly
    UPDATE_PRECISIONS = ("run",)  # its actor loss is its own (no loss_precision)
    regime = "offline"

    def __init__(self, config: QEnsembleConfig, spec: EnvSpec, device: torch.device):
        super().__init__(config, spec, device)
        check_choices(config, CHOICES)
        check_activation("agent.actor_activation", config.actor_activation)
        check_at_least(config, ("diffusion_steps", "entropy_samples"), minimum=2)
        check_at_least(config, ("ema_every", "act_samples"))
        check_at_least(config, ("ema_start",), minimum=0)
        if not 0.0 <= config.ema_decay <= 1.0:
            raise ConfigError(f"agent.ema_decay must be in [0, 1], got {config.ema_decay}")
        self.policy = MeanRevertingPolicy(
            spec.n_agents,
            spec.obs_dim,
            spec.act_dim,
            spec.act_mask(),
            MeanRevertingSchedule(config.diffusion_steps),
            hidden=config.actor_hidden,
            activation=config.actor_activation,
            time_embed_dim=config.time_embed_dim,
            share=config.share_parameters,
        )
        self.ema_policy = copy.deepcopy(self.policy).requires_grad_(False)
        self.register_buffer("act_dims", self.act_mask.sum(-1), persistent=False)
        # Q-based acting needs the global state; only a single agent's observation is it
        self.select_by_q = config.act_by_q and spec.n_agents == 1 and spec.state_dim == spec.obs_dim
        self.to(device)
        self.setup_optimizers()
        self.optimizers["actor"] = self.adam(self.policy.parameters(), config.actor_lr)

    # ---------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool, state: torch.Tensor | None = None):
        if not self.select_by_q:
            return self.sample_policy(obs)
        candidates = self.policy.sample(obs, candidates=self.config.act_samples)  # [M, B, 1, A]
        q = self.critic_target.value(obs[None, :, 0], candidates)  # [M, B], the LCB
        return resample(candidates, torch.softmax(q, 0)[..., None], 1)[0]

    @torch.no_grad()
    def sample_policy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy.sample(obs)

    @torch.no_grad()
    def target_action(self, next_obs: torch.Tensor, next_state: torch.Tensor):
        """The EMA actor's chain sample; no soft bonus (the entropy is only in the actor loss)."""
        return self.ema_policy.sample(next_obs), next_obs.new_zeros(next_obs.shape[:-1])

    # ---------------------------------------------------------------- updates
    def grad_clip_for(self, optimizer: str) -> float:
        """The critic's loss sums its K members' (the official code averages): clip at K times
        `grad_clip` so the clip acts as the official one does."""
        clip = super().grad_clip_for(optimizer)
        return clip * self.critic.n_q if optimizer == "critic" else clip

    def member_q(self, batch: Batch, action: torch.Tensor) -> torch.Tensor:
        """Every member's Q_i(s, a_i, a_-i) [K, B, N] at the agents' own `action` [B, N, A].

        a_-i comes from the batch (`others_actions: replay`) or is `action` itself, detached
        ("policy"), so agent i's a_i gets dQ_i/da_i alone. The members are needed, not just
        `own_q_sum`'s reduced value, for the official Q scale (mean |Q_k|).
        """
        others = batch.action if self.config.others_actions == "replay" else action.detach()
        return self.critic(batch.state[:, None], substitute_each_agent(others, action))

    def actor_terms(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """The actor loss's parts, with their graph: "bc", "q_loss", "entropy_loss" (each summed
        over agents, before its weight), and what they are made of: the one-shot "a0"
        [B, N, A], "q_lcb" [B, N], "entropy" [B, N] and the detached scales "q_scale" and
        "entropy_scale" [N]. Without an entropy term "entropy_loss" is zero and the entropy
        entries are absent."""
        cfg = self.config
        actions, obs = batch.action, batch.obs
        knn = cfg.entropy == "knn"
        if knn:  # M one-shot predictions per state; the first is the BC and Q term's
            m = cfg.entropy_samples
            actions, obs = actions.expand(m, *actions.shape), obs.expand(m, *obs.shape)
        bc, a0 = self.policy.one_shot(actions, obs, generator)
        samples = a0
        if knn:
            bc, a0 = bc[0], a0[0]
        terms = {"bc": (bc / self.act_dims).mean(0).sum(), "a0": a0}
        q = self.member_q(batch, a0)
        lcb = self.critic.reduce(q)  # [B, N]
        scale = (q if cfg.q_scale == "members" else lcb[None]).abs().mean((0, 1)).detach()
        terms.update(q_lcb=lcb, q_scale=scale, q_loss=-(lcb.mean(0) / scale).sum())
        if cfg.entropy == "none":
            terms["entropy_loss"] = lcb.new_zeros(())
            return terms
        if knn:
            entropy = knn_entropy(samples, self.act_dims)
        else:
            entropy = self.policy.entropy(a0, generator)
        entropy_scale = entropy.abs().mean(0).detach()
        terms.update(
            entropy=entropy,
            entropy_scale=entropy_scale,
            entropy_loss=-(entropy.mean(0) / entropy_scale).sum(),
        )
        return terms

    def update_actor(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        terms = self.actor_terms(batch)
        loss = terms["bc"] + cfg.eta * terms["q_loss"] + cfg.entropy_weight * terms["entropy_loss"]
        self.step_optimizer(loss, "actor")
        metrics = {
            "loss/actor": loss.detach(),
            "loss/bc": terms["bc"].detach(),
            "loss/q": terms["q_loss"].detach(),
            "q/lcb": terms["q_lcb"].detach().mean(),
        }
        if "entropy" in terms:
            metrics["loss/entropy"] = terms["entropy_loss"].detach()
            metrics["qensemble/entropy"] = terms["entropy"].detach().mean()
        return metrics

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        step = self.updates
        metrics = super().update(batch)
        cfg = self.config
        if step >= cfg.ema_start and step % cfg.ema_every == 0:
            with torch.no_grad():
                torch._foreach_lerp_(
                    list(self.ema_policy.parameters()),
                    list(self.policy.parameters()),
                    1.0 - cfg.ema_decay,
                )
        return metrics
