"""DecSPG with Gaussian policies: per-agent tanh-Gaussian actors trained with the soft policy
gradient against the centralised twin soft Q, per-agent automatic temperature (MASAC/HASAC-like).

Agents are updated simultaneously in one batched call rather than sequentially in a random
order as HASAC does; with `others_actions=replay` each agent's Q_i uses the other agents'
replayed actions, which is the HASAC objective for one agent at a time; with `policy` all agents'
fresh actions form one joint action and Q is evaluated once (MASAC's loss, `own_q_sum`).

`compile_update` (catalog: off) makes each of its two losses (the critic's; the actor's and
temperature's, `actor_loss`), with its gradients, clips and Adam steps, one compiled graph
(`ActorCriticAgent.minimize`). At BenchMARL MASAC's settings on VMAS navigation (batch 128,
[256, 256] tanh networks, one thread of an AMD EPYC) an update took 0.63x the eager one with 2
agents and 0.67x with 4 (`bench update`, interleaved). In whole 60k-frame runs an iteration of
6,000 frames took 0.75-0.78x the eager one, and the first one 20-26 s longer on a cold inductor
cache (about 4 s on a warm one), so the runs ended at or before eager ones: 112 and 129 s against
122 and 140 s with 2 agents, 172 and 175 s against 203 and 174 s with 4 (alone, in the order
eager, compiled, compiled, eager). The peer benchmark with the switch read 1.75x MASAC's
frames/s (2 agents) and 1.61x (4) on a cold cache, 2.03-2.12x and 1.81-1.96x on a warm one
(two runs with 2 agents, seven with 4; results/compile_update/); with MASAC's schedule of
collecting an iteration before its updates as well (`runner.update_every`),
2.13-2.37x (2 agents, warm, five runs) and 1.86-1.99x (4, six runs). At the study's settings on
BenchMARL's task (3 seeds) its final evaluations, 0.76-0.85, fell within the eager runs'
0.78-0.88. The catalog leaves it off: the compiled gradients round differently and draw other
random numbers, so a seed no longer repeats the committed results, and the tests' and the
tour's short runs would spend more on compiling than they save.

`update_precision=bfloat16` (catalog: run) trains in mixed precision: the losses' forward
passes autocast their products to bfloat16 (`ActorCriticAgent.loss_precision`). At MASAC's
settings on the AMD EPYC an update took 0.74x (2 agents) and 0.69x (4) the float32 time
compiled, 0.93x and 0.81x eagerly (`bench update`, results/update_time_precision/), and with
`compile_update` the peer benchmark's gaussian made 2.20-2.55x MASAC's frames/s with 4 agents
(six runs; 1.86-1.99x in float32) and 2.49-2.93x with 2 (three). At the study's settings on
BenchMARL's task (compiled, seeds 0-4, 60k frames) it learned as float32 did: best evaluations
0.874 against 0.873 on average, final ones 0.830 against 0.844; the Pendulum learning test
passes with it. The catalog leaves it off: it rounds every update differently, MASAC computes
in float32 (so those ratios are not like for like), and at the study's small widths it saves
nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from marl_diff.agents.base import ActorCriticAgent, ActorCriticConfig, check_activation
from marl_diff.agents.networks import PerAgentMLP
from marl_diff.buffer import Batch
from marl_diff.envs.base import EnvSpec
from marl_diff.errors import ConfigError

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass
class GaussianConfig(ActorCriticConfig):
    actor_lr: float = 3e-4
    actor_hidden: list[int] = field(default_factory=lambda: [256, 256])
    actor_activation: str = "relu"
    share_parameters: bool = False
    auto_alpha: bool = True
    init_alpha: float = 0.2
    alpha_lr: float = 3e-4
    target_entropy_scale: float = 1.0  # target entropy of agent i = -scale * act_dim_i


class TanhGaussianPolicy(torch.nn.Module):
    """N per-agent tanh-squashed Gaussians evaluated in one stacked call."""

    def __init__(self, spec: EnvSpec, hidden, activation: str, share: bool):
        super().__init__()
        self.net = PerAgentMLP(
            spec.n_agents, spec.obs_dim, hidden, 2 * spec.act_dim, activation, share
        )
        self.register_buffer("act_mask", spec.act_mask().float())

    def forward(self, obs: torch.Tensor, deterministic: bool = False, with_log_prob: bool = True):
        """obs [..., N, D] -> action [..., N, A] (padded dims zero), log-prob [..., N] (or None)."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        if deterministic:
            return torch.tanh(mean) * self.act_mask, None
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        pre_tanh = mean + log_std.exp() * torch.randn_like(mean)
        if not with_log_prob:
            return torch.tanh(pre_tanh) * self.act_mask, None
        return torch.tanh(pre_tanh) * self.act_mask, self._log_prob(pre_tanh, mean, log_std)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log pi(action | obs) [..., N] of given actions in [-1, 1] (e.g. a dataset's; the
        edges, where atanh is infinite, are pulled in by 1e-6)."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        pre_tanh = torch.atanh(action.clamp(-1.0 + 1e-6, 1.0 - 1e-6))
        return self._log_prob(pre_tanh, mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX))

    def _log_prob(self, pre_tanh, mean, log_std) -> torch.Tensor:
        # log N(u; mean, std) - log |d tanh(u)/du|, per action dimension
        log_prob = (
            -0.5 * ((pre_tanh - mean) / log_std.exp()).pow(2)
            - log_std
            - 0.5 * math.log(2 * math.pi)
            - 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
        )
        return (log_prob * self.act_mask).sum(-1)


class GaussianAgent(ActorCriticAgent):
    Config = GaussianConfig

    def __init__(self, config: GaussianConfig, spec: EnvSpec, device: torch.device):
        super().__init__(config, spec, device)
        check_activation("agent.actor_activation", config.actor_activation)
        if config.init_alpha <= 0:
            raise ConfigError(f"agent.init_alpha must be positive, got {config.init_alpha}")
        self.policy = TanhGaussianPolicy(
            spec, config.actor_hidden, config.actor_activation, config.share_parameters
        )
        self.log_alpha = torch.nn.Parameter(
            torch.full((spec.n_agents,), math.log(config.init_alpha)),
            requires_grad=config.auto_alpha,
        )
        self.register_buffer(
            "target_entropy",
            -config.target_entropy_scale * torch.tensor(spec.act_dims, dtype=torch.float32),
        )
        self.to(device)
        self.setup_optimizers()
        self.optimizers["actor"] = self.adam(self.policy.parameters(), config.actor_lr)
        if config.auto_alpha:
            self.optimizers["alpha"] = self.adam([self.log_alpha], config.alpha_lr)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool, state: torch.Tensor | None = None):
        return self.policy(obs, deterministic=not explore, with_log_prob=False)[0]

    @torch.no_grad()
    def sample_policy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(obs, with_log_prob=False)[0]

    def target_action(self, next_obs: torch.Tensor, next_state: torch.Tensor):
        action, log_prob = self.policy(next_obs)
        return action, -self.log_alpha.exp() * log_prob

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The soft policy-gradient loss plus, with `auto_alpha`, the temperature's loss, and
        their metrics. Each term reaches only its own parameters (alpha is detached in the
        first, log pi in the second), so one backward of the sum gives each optimiser the
        gradient of its own loss."""
        action, log_prob = self.policy(batch.obs)
        alpha = self.log_alpha.exp().detach()
        actor_loss = (alpha * log_prob).mean(0).sum() - self.own_q_sum(batch, action).mean()
        metrics = {
            "loss/actor": actor_loss.detach(),
            "policy/entropy": -log_prob.detach().mean(),
            "alpha/mean": alpha.mean(),
        }
        if not self.config.auto_alpha:
            return actor_loss, metrics
        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean(0).sum()
        metrics["loss/alpha"] = alpha_loss.detach()
        return actor_loss + alpha_loss, metrics

    def update_actor(self, batch: Batch) -> dict[str, torch.Tensor]:
        stepped = ("actor", "alpha") if self.config.auto_alpha else ("actor",)
        return self.minimize("actor_loss", batch, *stepped)
