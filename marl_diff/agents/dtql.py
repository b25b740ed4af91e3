"""DTQL, Diffusion Trusted Q-Learning (Chen et al., NeurIPS 2024), offline, every agent its own
behaviour model and one-step policy, one centralised IQL critic.

Three parts learn from every dataset batch:
- The behaviour model: an EDM diffusion model per agent (`marl_diff.diffusion.edm`), fitted to
  the dataset's actions by the preconditioned denoising loss.
- The critic: IQL. V(s) by expectile regression toward the reduced (twin min) target critic's
  Q(s, a) at dataset actions, then Q_k(s, a) toward r + gamma (1 - done) V(s') with the V just
  updated, so no action outside the data is ever bootstrapped. That is IQL's own order and
  target; DTQL's code takes the online critic's min Q and steps V and Q together, a difference
  we keep as a reading rather than a switch. For N > 1 Q and V are centralised over the global
  state (and joint action), with the team reward, like the online agents' critic.
- The one-step policy: a tanh-Gaussian per agent (a_i from o_i) trained with
  `alpha * L_trust(a) - Q(s, a) + nll_weight * NLL(dataset action)`. L_trust is the behaviour
  model's own denoising loss evaluated on the policy's action as the clean sample (fresh sigma
  and noise), with the behaviour model frozen: it is low where the behaviour model puts mass,
  so it keeps the policy inside the data's support (the diffusion trust region), at one network
  call per action instead of a chain. With N > 1 agent i's Q term is Q_i(s, a_i, a_-i), the
  others' actions from the batch (`others_actions`), as the online agents do.

For the first `pretrain_updates` updates only the behaviour model and the critic learn (the
card's 50k); then all three. Acting (N = 1, whose state is its observation): `act_samples`
one-step samples, one drawn by a softmax over the target critic's Q. With N > 1 the critic
needs the global state, which decentralised execution does not have, so each agent samples its
one-step policy. Our readings, each a setting: the behaviour model keeps training after the
pretraining (`bc_after_pretrain`); the card's Q heads put a LayerNorm before every mish
(`critic_layer_norm: true`), which we leave off by default because at our CPU budgets it learned
less: 0.34 of the data's return range against 0.77 without, on the slow test's mixed Pendulum
data (10k updates, [64, 64], seed 0). The Hopper and navigation results in results/offline ran
with it on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from marl_diff.agents.base import (
    ActorCriticAgent,
    ActorCriticConfig,
    check_activation,
    resample,
)
from marl_diff.agents.gaussian import TanhGaussianPolicy
from marl_diff.buffer import Batch
from marl_diff.diffusion.edm import EDMPolicy
from marl_diff.envs.base import EnvSpec
from marl_diff.errors import ConfigError
from marl_diff.nn import StackedMLP


@dataclass
class DTQLConfig(ActorCriticConfig):
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    critic_activation: str = "mish"
    # the one-step policy
    actor_lr: float = 3e-4
    actor_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    actor_activation: str = "relu"
    share_parameters: bool = False
    alpha: float = 5.0  # weight of the trust-region loss (card: 1 to 50 per dataset)
    nll_weight: float = 0.0  # the card's gamma: NLL of the dataset action (0 on locomotion)
    # the behaviour model
    bc_lr: float = 3e-4
    bc_hidden: list[int] = field(default_factory=lambda: [256, 256, 256, 256])
    bc_activation: str = "mish"
    time_embed_dim: int = 16
    sigma_data: float = 0.5
    bc_after_pretrain: bool = True
    pretrain_updates: int = 50_000
    # the IQL value
    value_lr: float = 3e-4
    value_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    expectile: float = 0.7  # 0.7 locomotion, 0.9 AntMaze
    # acting
    act_by_q: bool = True
    act_samples: int = 1024


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL's asymmetric square |expectile - 1(diff < 0)| diff^2, elementwise."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.square()


class DTQLAgent(ActorCriticAgent):
    Config = DTQLConfig
    CRITIC_REWARDS = ("team",)  # IQL's Q and V of the team reward
    UPDATE_PRECISIONS = ("run",)  # its IQL and actor losses are its own (no loss_precision)
    regime = "offline"

    def __init__(self, config: DTQLConfig, spec: EnvSpec, device: torch.device):
        super().__init__(config, spec, device)
        check_activation("agent.actor_activation", config.actor_activation)
        check_activation("agent.bc_activation", config.bc_activation)
        if not 0.0 < config.expectile < 1.0:
            raise ConfigError(f"agent.expectile must be in (0, 1), got {config.expectile}")
        if config.act_samples < 1 or config.pretrain_updates < 0:
            raise ConfigError("agent.act_samples must be >= 1 and agent.pretrain_updates >= 0")
        self.policy = TanhGaussianPolicy(
            spec, config.actor_hidden, config.actor_activation, config.share_parameters
        )
        self.behaviour = EDMPolicy(
            spec.n_agents,
            spec.obs_dim,
            spec.act_dim,
            spec.act_mask(),
            sigma_data=config.sigma_data,
            hidden=config.bc_hidden,
            activation=config.bc_activation,
            time_embed_dim=config.time_embed_dim,
            share=config.share_parameters,
        )
        self.value = StackedMLP(1, spec.state_dim, config.value_hidden, 1, config.critic_activation)
        # Q-based acting needs the global state; only a single agent's observation is it
        self.select_by_q = config.act_by_q and spec.n_agents == 1 and spec.state_dim == spec.obs_dim
        self.to(device)
        self.setup_optimizers()
        self.optimizers["actor"] = self.adam(self.policy.parameters(), config.actor_lr)
        self.optimizers["behaviour"] = self.adam(self.behaviour.parameters(), config.bc_lr)
        self.optimizers["value"] = self.adam(self.value.parameters(), config.value_lr)

    # ---------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool, state: torch.Tensor | None = None):
        if not self.select_by_q:
            return self.sample_policy(obs)
        k = self.config.act_samples
        candidates = self.policy(obs.expand(k, *obs.shape), with_log_prob=False)[0]
        q = self.critic_target.value(obs[None, :, 0], candidates)  # [K, B]
        return resample(candidates, torch.softmax(q, 0)[..., None], 1)[0]

    @torch.no_grad()
    def sample_policy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(obs, with_log_prob=False)[0]

    # ---------------------------------------------------------------- updates
    def update_critic(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        with torch.no_grad():
            q_data = self.critic_target.value(batch.state, batch.action)
        v = self.value(batch.state)[0, :, 0]
        value_loss = expectile_loss(q_data - v, cfg.expectile).mean()
        self.step_optimizer(value_loss, "value")
        with torch.no_grad():
            next_v = self.value(batch.next_state)[0, :, 0]
            team_reward = batch.reward.mean(-1) * cfg.reward_scale
            target = team_reward + cfg.gamma * (1.0 - batch.terminated) * next_v
        q = self.critic(batch.state, batch.action)  # [K, B]
        loss = (q - target).pow(2).mean(-1).sum()
        self.step_optimizer(loss, "critic")
        return {
            "loss/critic": loss.detach(),
            "loss/value": value_loss.detach(),
            "q/mean": q.detach().mean(),
        }

    def update_actor(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        pretraining = self.updates < cfg.pretrain_updates
        metrics = {}
        if pretraining or cfg.bc_after_pretrain:
            bc_loss = self.behaviour.dsm_loss(batch.action, batch.obs).mean(0).sum()
            self.step_optimizer(bc_loss, "behaviour")
            metrics["loss/behaviour"] = bc_loss.detach()
        if pretraining:
            return metrics
        action, _ = self.policy(batch.obs, with_log_prob=False)
        self.behaviour.requires_grad_(False)
        trust = self.behaviour.dsm_loss(action, batch.obs).mean(0).sum()
        self.behaviour.requires_grad_(True)
        q = self.own_q_sum(batch, action).mean()
        loss = cfg.alpha * trust - q
        if cfg.nll_weight > 0:
            nll = -self.policy.log_prob(batch.obs, batch.action).mean(0).sum()
            loss = loss + cfg.nll_weight * nll
        self.step_optimizer(loss, "actor")
        metrics.update({"loss/actor": loss.detach(), "loss/trust": trust.detach()})
        return metrics
