"""QVPO: Q-weighted variational policy optimisation (NeurIPS 2024), one diffusion policy per
agent, trained against the centralised twin critic.

Actor update, per replay state and agent i (all agents batched in one call):
1. Draw `n_samples` (64) actions from agent i's *current* diffusion policy, no gradient. The
   training actions come from the policy, never from the replay buffer.
2. q_j = min(Q1, Q2)(s, a_i^(j), a_-i) with the centralised critic (`q_each_agent`). With N > 1
   the other agents' actions a_-i come from the replay batch ("replay", HASAC-style) or from a
   fresh sample of their current policies ("policy"), config `others_actions`.
3. Q weights w_j = clamp(q_j - mean_k q_k, min=0): never negative, zero at or below the mean.
4. `train_on`: "best" (the card's "keep the best action") trains on the arg-max-Q sample of each
   state with weight w_best = max_j w_j; "all" trains on all samples with their weights.
5. Entropy regularisation: `n_entropy_samples` (10) actions uniform in [-1, 1] per state and
   agent (padded entries zero) join the training set, each with weight
   entropy_alpha(u) * scale(s). entropy_alpha decays linearly from `entropy_alpha` (0.02) to
   `entropy_alpha_final` (0.002) over `entropy_decay_updates` gradient updates u.
   The card only says the uniform actions are weighted "entropy_alpha * q-scaled"; our reading
   (config `entropy_scale`): "advantage" (default) scales by the state's largest Q weight,
   max_j clamp(q_j - mean q, min=0), i.e. the weight of the kept best action. The entropy
   term is then a fixed fraction of the improvement term, whatever the reward scale or the
   level of Q (raw |Q| on Pendulum is ~100x the Q gaps between samples, and would make the
   uniform actions dominate). "abs_q" scales by the state's mean |q_j| over the samples, a
   literal "q-scaled" reading.
6. Loss: sum over the training set of weight * DSM (`policy.dsm_loss`), averaged over states,
   summed over agents.

Acting: the behaviour policy takes the best of `behavior_samples` (4) own samples by Q_i, and
evaluation the best of `eval_samples` (32), but only when the runner passes the global state.
Decentralised evaluation passes no state, and without it the centralised critic cannot be
evaluated, so agent i then returns a plain sample of pi_i(. | o_i). While choosing, the other
agents' actions are their first own sample.

Critic target: the next action is the best of `target_samples` (4) samples of the target policy
by the target critic's min(Q1', Q2') (per agent, the others held at their first sample; exact
arg-max for N = 1). The card says "target actor" without details; our reading (config
`target_actor`): "ema" (default) keeps a Polyak copy of the diffusion policy updated at rate
`policy_tau` after every update, "current" uses the current policy.

Update cost (the card's 64 samples x 256 states x T = 20 steps made one update 228x a Gaussian
update on a 2-core CPU). The catalog defaults, each a setting of `DiffusionActorCritic`:
- `actor_batch_size` 64: the 64 Q-weighted samples, the kept best and the 10 uniform actions
  for 64 of the batch's states; the critic still uses the whole batch. With 32 states the
  pendulum learning test ended at -754 (seed 0) and -207 (seed 1); the whole batch at -196
  (seed 0).
- `candidates_share_start` true: the candidates of a state share the chain's start and first
  step (marl_diff.diffusion.policy), about 12% off an update on Ant and VMAS; the Pendulum
  learning-test setting reached -250, -226, -176 against -222, -203, -237 (seeds 0-2); false
  restores independent starts.
- `candidate_steps` 5: the 64 samples, the best-of-K at acting and the target's best of 4 come
  from a 5-step respaced chain with ancestral noise. They are only ranked by Q, and the kept
  action is fitted by DSM on all T levels.
- `sample_steps` 10: plain policy samples on a 10-step respaced chain.
0 restores the card's setting for each.
- `compile_chains` true: the 64 samples per state and the target's samples, most of an
  update, run with the denoiser compiled and give the eager numbers bit for bit
  (`DiffusionPolicy`); false runs them eagerly, with the same results, more slowly.

No entropy bonus enters the critic target (the entropy acts through the uniform actions only),
so there is no temperature to log. Gradient clipping (`grad_clip`, 2.0) applies to the critic
and the diffusion policy alike.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from marl_diff.agents.base import best_candidate, check_at_least, check_choices
from marl_diff.agents.diffusion_actor import DiffusionActorConfig, DiffusionActorCritic
from marl_diff.buffer import Batch
from marl_diff.envs.base import EnvSpec
from marl_diff.errors import ConfigError

CHOICES = {
    "train_on": ("best", "all"),
    "entropy_scale": ("advantage", "abs_q"),
    "target_actor": ("ema", "current"),
}


@dataclass
class QVPOConfig(DiffusionActorConfig):
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    critic_activation: str = "mish"
    grad_clip: float = 2.0
    actor_lr: float = 1e-4
    schedule: str = "cosine"
    n_samples: int = 64  # policy samples per state and agent for the Q weights
    train_on: str = "best"
    n_entropy_samples: int = 10  # uniform actions per state and agent (0: no entropy term)
    entropy_alpha: float = 0.02  # initial coefficient
    entropy_alpha_final: float = 0.002
    entropy_decay_updates: int = 1_000_000
    entropy_scale: str = "advantage"
    behavior_samples: int = 4  # best of K by Q_i while training (needs the state)
    eval_samples: int = 32  # best of K by Q_i when evaluating with the state
    target_samples: int = 4  # best of K target-policy samples for the critic target
    target_actor: str = "ema"
    policy_tau: float = 0.005  # Polyak rate of the "ema" target policy


class QVPOAgent(DiffusionActorCritic):
    Config = QVPOConfig

    def __init__(self, config: QVPOConfig, spec: EnvSpec, device: torch.device):
        super().__init__(config, spec, device)
        check_choices(config, CHOICES)
        check_at_least(
            config,
            (
                "n_samples",
                "behavior_samples",
                "eval_samples",
                "target_samples",
                "entropy_decay_updates",
            ),
        )
        if config.n_entropy_samples < 0:
            raise ConfigError(
                f"agent.n_entropy_samples must be >= 0, got {config.n_entropy_samples}"
            )
        if config.entropy_alpha < 0 or config.entropy_alpha_final < 0:
            raise ConfigError("agent.entropy_alpha and agent.entropy_alpha_final must be >= 0")
        if not 0 < config.policy_tau <= 1:
            raise ConfigError(f"agent.policy_tau must be in (0, 1], got {config.policy_tau}")
        if config.target_actor == "ema":
            self.target_policy = copy.deepcopy(self.policy).requires_grad_(False)
        self.to(device)
        self.setup_optimizers()
        self.optimizers["actor"] = self.adam(self.policy.parameters(), config.actor_lr)

    # ---------------------------------------------------------------- helpers
    def entropy_alpha_at(self, update: int) -> float:
        """Linear decay from `entropy_alpha` to `entropy_alpha_final` over the decay updates."""
        cfg = self.config
        frac = min(max(update, 0) / cfg.entropy_decay_updates, 1.0)
        return cfg.entropy_alpha + frac * (cfg.entropy_alpha_final - cfg.entropy_alpha)

    @staticmethod
    def q_weights(q: torch.Tensor) -> torch.Tensor:
        """QVPO's clipped advantages over the samples of each state: q [K, B, N] -> [K, B, N],
        clamp(q - mean_k q_k, min=0)."""
        return (q - q.mean(0, keepdim=True)).clamp_min(0.0)

    # ---------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool, state: torch.Tensor | None = None):
        """Best of K own samples by Q_i (K = behavior_samples when exploring, eval_samples
        otherwise) when the global state is given; a plain policy sample without it (the
        centralised critic needs the state, which decentralised evaluation does not have)."""
        if state is None:
            return self.sample_policy(obs)
        k = self.config.behavior_samples if explore else self.config.eval_samples
        candidates = self.candidates(obs, k)  # [K, B, N, A]
        if k == 1:
            return candidates[0]
        q = self.q_each_agent(state, candidates[0], candidates)
        return best_candidate(candidates, q)

    @torch.no_grad()
    def target_action(self, next_obs: torch.Tensor, next_state: torch.Tensor):
        """Best of `target_samples` target-policy samples by the target critic's min Q (per
        agent, the others held at their first sample); no soft bonus."""
        cfg = self.config
        policy = self.target_policy if cfg.target_actor == "ema" else self.policy
        candidates = self.candidates(next_obs, cfg.target_samples, policy)
        no_bonus = next_obs.new_zeros(next_obs.shape[:-1])
        if cfg.target_samples == 1:
            return candidates[0], no_bonus
        q = self.q_each_agent(next_state, candidates[0], candidates, critic=self.critic_target)
        return best_candidate(candidates, q), no_bonus

    # ---------------------------------------------------------------- updates
    def training_set(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Actions [K, B, N, A] and weights [K, B, N] the weighted DSM is fitted to."""
        cfg = self.config
        with torch.no_grad():
            samples = self.candidates(batch.obs, cfg.n_samples)  # [M, B, N, A]
            base = batch.action if cfg.others_actions == "replay" else samples[0]
            q = self.q_each_agent(batch.state, base, samples)  # [M, B, N]
            weights = self.q_weights(q)
            best_weight = weights.max(0).values  # [B, N], the kept action's weight
            if cfg.train_on == "best":
                actions, action_weights = best_candidate(samples, q)[None], best_weight[None]
            else:
                actions, action_weights = samples, weights
            alpha = self.entropy_alpha_at(self.updates)
            if cfg.n_entropy_samples > 0:
                uniform = torch.rand(
                    (cfg.n_entropy_samples, *samples.shape[1:]),
                    device=samples.device,
                    dtype=samples.dtype,
                )
                uniform = (uniform * 2.0 - 1.0) * self.act_mask
                scale = best_weight if cfg.entropy_scale == "advantage" else q.abs().mean(0)
                entropy_weight = (alpha * scale)[None].expand(cfg.n_entropy_samples, -1, -1)
                actions = torch.cat([actions, uniform])
                action_weights = torch.cat([action_weights, entropy_weight])
        stats = {
            "qvpo/entropy_alpha": torch.tensor(alpha, device=q.device),
            "qvpo/positive_weight_fraction": (weights > 0).float().mean(),
            "qvpo/best_advantage": best_weight.mean(),
        }
        return actions, action_weights, stats

    def update_actor(self, batch: Batch) -> dict[str, torch.Tensor]:
        batch = self.actor_batch(batch)
        actions, weights, metrics = self.training_set(batch)
        with self.loss_precision():
            dsm = self.policy.dsm_loss(actions, batch.obs)  # [K, B, N]
        loss = (weights * dsm).sum(0).mean(0).sum()
        self.step_optimizer(loss, "actor")
        metrics["loss/actor"] = loss.detach()
        return metrics

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        metrics = super().update(batch)
        if self.config.target_actor == "ema":
            with torch.no_grad():
                torch._foreach_lerp_(
                    list(self.target_policy.parameters()),
                    list(self.policy.parameters()),
                    self.config.policy_tau,
                )
        return metrics
