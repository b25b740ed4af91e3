"""DDiffPG, Deep Diffusion Policy Gradient (Li et al., NeurIPS 2024): discovering behaviour
modes from scratch and keeping each one with its own critic. Online; every agent its own
diffusion policy, critics centralised over the global state and joint action.

- Actor: plain diffusion behaviour cloning (eps-prediction DSM) toward *target actions* kept in
  the replay buffer (`ReplayBuffer.extras["target"]`, one slot per batch group); no Q gradient
  reaches the actor. A target starts as the executed action; every update improves the sampled
  targets by `target_steps` Adam steps (lr `target_lr`) of ascent on the min of the twin heads
  of *their group's* critic, clamped to [-1, 1] after each step, and writes them back. With
  N > 1 the team's joint target action is improved on the joint critic and each agent clones its
  own part of it.
- Groups: group 0 is exploration (uniform over all data, its critic learns the intrinsic reward
  only); group k + 1 is mode k (its trajectories only, extrinsic + intrinsic reward). The batch
  is split equally over the groups in play, and all critics are members of one stacked
  `CentralCritic`, `critic_members` (2, the double Q) per group, run group by group on their own
  share of the batch in one call (`CentralCritic.grouped_heads`); groups not yet in play are not
  run. Each is a C51 distributional head (`critic_atoms` 51 on [`value_min`, `value_max`]),
  trained by cross-entropy to the projected target distribution of the twin with the smaller
  expected Q'. The bounded support is what keeps a mode's critic, trained on that mode's few
  trajectories while bootstrapping from the shared policy's actions, from diverging: twin MSE
  heads in its place grew to |Q| ~ 100 on multigoal within 2k env steps.
- Modes (`marl_diff.modes`): finished episodes are kept as trajectories (their mode-feature path,
  the buffer slots they wrote, success); the successful ones are clustered by DTW with average
  linkage every `recluster_every` env steps, the failed ones join the nearest cluster, and each
  new mode inherits the critic, target-action slot and embedding of the old mode it shares most
  trajectories with. Until the first clustering all trajectories are one mode. An episode that
  ends between reclusterings joins the nearest current mode. Success is the scenario's `success`
  outcome (mazes), else every agent reaching a goal (`goal`, multigoal), else termination.
  Mode features are the scenario's positions (`EnvSpec.mode_features`) or `mode_features`.
- Intrinsic reward: NovelD over RND on the state with its positions NeRF-encoded
  (`agents.novelty`), recomputed on every sampled batch.
- Critic targets: r + gamma (1 - done) Z'(s', a') of the pessimistic twin, a' from the actor
  itself (with the group's embedding) plus TD3 smoothing noise (`target_noise`, clipped at
  `target_noise_clip`).
- Mode embeddings (`mode_embeddings`, off by default as in the card): a fixed N(0, I) vector per
  group appended to every agent's observation, so a mode can be asked for at run time
  (`select_mode`; `python -m marl_diff.evaluate run_dir=... mode=K` or `modes=all`);
  collection uses the exploration group's vector. Evaluation without a chosen mode
  (`eval_embedding`): "modes" gives env copy b the embedding of mode b mod (modes found), so
  every learned mode is played; "zero" is the card's zero vector. The actor never sees the
  zero vector in training, and on pointmaze_two_goals (seed 0, 20k env steps) it reached no
  goal in 50 episodes, while each of the two modes, asked for, reached its own goal in 50 of 50.
- Exploration: Gaussian noise on the sampled actions, its std spaced linearly over
  [`explore_noise_min`, `explore_noise_max`] across the env copies.

Our readings, each a setting or documented here: the card takes the element-wise min of the two
projected target distributions, which is not a distribution; we take the pessimistic twin's;
the card's support is [0, 5] for its 10-reward tasks (its reward scale is not on the card), ours
is a setting, [-10, 10] by default; collection with embeddings uses the exploration group's
vector for every env copy.

Trajectories kept: at most `max_trajectories` (the oldest leave first), and, as the authors'
buffer does at each reclustering, at most max_trajectories / (2 x modes) successes and as many
failures per mode, the excess dropped at random (`balance_modes`), so that a route found early
and taken often does not crowd the others out of the mode groups' batches. The authors' buffer
is indexed by trajectory and deletes what it drops; ours is a ring of transitions, so a dropped
trajectory leaves its mode's group while its transitions stay in the exploration group's uniform
draws until the ring overwrites them. `balance_modes=false` keeps every trajectory up to
`max_trajectories`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from marl_diff.agents.base import (
    ActorCriticAgent,
    ActorCriticConfig,
    check_at_least,
    check_choices,
)
from marl_diff.agents.diffusion_actor import DiffusionPolicyConfig, make_diffusion_policy
from marl_diff.agents.novelty import NoveltyReward
from marl_diff.buffer import Batch, ReplayBuffer
from marl_diff.envs.base import EnvSpec, StepResult, episode_success
from marl_diff.errors import ConfigError
from marl_diff.modes import ModeDiscoveryConfig, assign_to_clusters, discover

NOVELTY = ("noveld", "rnd", "none")


@dataclass
class DDiffPGConfig(ActorCriticConfig, DiffusionPolicyConfig):
    tau: float = 0.05
    critic_lr: float = 5e-4
    critic_hidden: list[int] = field(default_factory=lambda: [512, 256, 128])
    critic_activation: str = "elu"
    grad_clip: float = 1.0
    diffusion_steps: int = 5
    schedule: str = "cosine"
    # modes
    max_modes: int = 10  # critics allocated; more clusters than this count as one mode
    mode_features: list[int] = field(default_factory=list)  # state dims; [] = the scenario's
    recluster_every: int = 25_600  # env steps between clusterings
    cut_fraction: float = 0.7
    members_per_cluster: int = 3
    min_successes: int = 2
    max_trajectories: int = 2000
    balance_modes: bool = True  # per-mode caps on successes and failures at each clustering
    # target actions
    target_steps: int = 20
    target_lr: float = 0.03
    target_noise: float = 0.2
    target_noise_clip: float = 0.5
    # distributional critics (C51): atoms evenly spaced on [value_min, value_max]
    critic_atoms: int = 51
    value_min: float = -10.0
    value_max: float = 10.0
    # intrinsic reward
    novelty: str = "noveld"
    novelty_scale: float = 0.01
    novelty_lr: float = 1e-4
    novelty_frequencies: int = 10
    # exploration and mode embeddings
    explore_noise_min: float = 0.05
    explore_noise_max: float = 0.6
    mode_embeddings: bool = False
    embed_dim: int = 5
    eval_embedding: str = "modes"  # modes | zero (see the module docstring)


class ModeBatch(NamedTuple):
    """A replay batch split into groups: transitions [G * b, ...] (group-major), their buffer
    slots [G, b] and the target actions the update starts from [G, b, N, A]."""

    transitions: Batch
    slots: torch.Tensor
    targets: torch.Tensor
    buffer: ReplayBuffer  # where the improved targets are written back


@dataclass
class Trajectory:
    id: int
    path: np.ndarray  # [T + 1, F] mode features, start to final state
    slots: torch.Tensor  # [T] buffer slots, on the CPU
    success: bool
    mode: int = 0


class DDiffPGAgent(ActorCriticAgent):
    Config = DDiffPGConfig
    CRITIC_REWARDS = ("team",)  # a distributional twin per mode, of the team reward
    UPDATE_PRECISIONS = ("run",)  # its critic and actor updates are its own (no loss_precision)
    N_STEP_RETURNS = False  # its batches are its own (per mode) and so are its critics' targets

    def __init__(self, config: DDiffPGConfig, spec: EnvSpec, device: torch.device):
        super().__init__(config, spec, device)
        check_at_least(config, ("max_modes", "max_trajectories", "members_per_cluster"))
        check_at_least(config, ("target_steps", "novelty_frequencies"), minimum=0)
        check_at_least(config, ("min_successes",), minimum=2)
        check_choices(config, {"novelty": NOVELTY, "eval_embedding": ("modes", "zero")})
        self.features = tuple(config.mode_features) or spec.mode_features
        if not self.features:
            raise ConfigError(
                "ddiffpg clusters trajectories on the scenario's mode features (positions), and "
                "this scenario declares none: name the state dims, e.g. agent.mode_features=[0,1]"
            )
        if not all(0 <= i < spec.state_dim for i in self.features):
            raise ConfigError(
                f"agent.mode_features must index the state's {spec.state_dim} dims, "
                f"got {list(self.features)}"
            )
        self.groups_max = config.max_modes + 1
        support = torch.linspace(config.value_min, config.value_max, config.critic_atoms)
        self.register_buffer("support", support, persistent=False)
        self.embed_dim = config.embed_dim if config.mode_embeddings else 0
        widened = dataclasses.replace(
            spec, obs_dims=tuple(d + self.embed_dim for d in spec.obs_dims)
        )
        self.policy = make_diffusion_policy(config, widened)
        self.register_buffer("embeddings", torch.randn(self.groups_max, self.embed_dim))
        self.novelty = None
        if config.novelty != "none":
            self.novelty = NoveltyReward(
                spec.state_dim,
                self.features,
                frequencies=config.novelty_frequencies,
                kind=config.novelty,
                scale=config.novelty_scale,
                lr=config.novelty_lr,
            )
        self.discovery = ModeDiscoveryConfig(
            config.cut_fraction, config.max_modes, config.members_per_cluster, config.min_successes
        )
        self.rng = np.random.default_rng(int(torch.randint(2**31, ())))
        self.n_modes = 1  # one mode holds everything until the first clustering
        self.trajectories: list[Trajectory] = []
        self.next_id = 1  # 0 marks buffer slots written before tracking began
        self.steps_since_clustering = 0
        self.clustered = False
        self._in_flight: list[tuple[int, list, list]] | None = None  # per env copy
        self._group_slots: list[torch.Tensor] | None = None
        self.eval_group: int | None = None  # the group whose embedding evaluation acts with
        self.to(device)
        self.setup_optimizers()
        self.optimizers["actor"] = self.adam(self.policy.parameters(), config.actor_lr)
        if self.novelty is not None:
            self.optimizers["novelty"] = self.novelty.optimizer

    def build_critic(self, config: DDiffPGConfig, spec: EnvSpec, **overrides):
        if config.critic_atoms < 2 or not config.value_min < config.value_max:
            raise ConfigError(
                "agent.critic_atoms must be >= 2 and agent.value_min < agent.value_max, got "
                f"{config.critic_atoms} atoms on [{config.value_min}, {config.value_max}]"
            )
        members = config.critic_members * (config.max_modes + 1)
        return super().build_critic(config, spec, n_q=members, out_features=config.critic_atoms)

    def buffer_fields(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        shape = (self.groups_max, self.spec.n_agents, self.spec.act_dim)
        return {
            "episode": ((), torch.long),
            "target": (shape, torch.float32),
            "improved": ((self.groups_max,), torch.bool),
        }

    # ---------------------------------------------------------------- acting
    def _with_embedding(self, obs: torch.Tensor, groups: torch.Tensor | int | None) -> torch.Tensor:
        """obs [..., N, D] with each row's group embedding appended ([..., N, D + E]); `groups`
        an int for all rows, a tensor of the rows' leading shape, or None for the zero vector."""
        if not self.embed_dim:
            return obs
        if groups is None:
            vec = obs.new_zeros(*obs.shape[:-1], self.embed_dim)
        else:
            vec = self.embeddings[groups]
            vec = vec.view(*vec.shape[:-1], *([1] * (obs.dim() - vec.dim())), self.embed_dim)
            vec = vec.expand(*obs.shape[:-1], self.embed_dim)
        return torch.cat([obs, vec], -1)

    def sample_policy(self, obs: torch.Tensor) -> torch.Tensor:
        groups = self.eval_group
        if groups is None and self.config.eval_embedding == "modes":
            groups = 1 + torch.arange(obs.shape[0], device=obs.device) % self.n_modes
        return self.policy.sample(self._with_embedding(obs, groups))

    def behaviour_modes(self) -> int:
        return self.n_modes if self.embed_dim else 0

    def select_mode(self, mode: int | None) -> None:
        if mode is not None and not 0 <= mode < self.behaviour_modes():
            raise ConfigError(
                f"mode {mode} is not one of this agent's {self.behaviour_modes()} modes"
                + ("" if self.embed_dim else " (trained without agent.mode_embeddings)")
            )
        self.eval_group = None if mode is None else mode + 1

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool, state: torch.Tensor | None = None):
        if not explore:
            return self.sample_policy(obs)
        cfg = self.config
        action = self.policy.sample(self._with_embedding(obs, 0))
        envs = obs.shape[0]
        std = torch.linspace(cfg.explore_noise_min, cfg.explore_noise_max, envs, device=obs.device)
        if envs == 1:
            std = std.new_full((1,), 0.5 * (cfg.explore_noise_min + cfg.explore_noise_max))
        noisy = action + std.view(-1, 1, 1) * torch.randn_like(action)
        return noisy.clamp(-1.0, 1.0) * self.act_mask

    # ---------------------------------------------------------------- episodes and modes
    def reset_episodes(self) -> None:
        self._in_flight = None

    def observe(self, buffer: ReplayBuffer, slots: torch.Tensor, result: StepResult) -> None:
        envs = slots.shape[0]
        if self._in_flight is None or len(self._in_flight) != envs:
            self._in_flight = [(self._new_id(), [], []) for _ in range(envs)]
        ids = torch.tensor([ep[0] for ep in self._in_flight], device=buffer.device)
        buffer.extras["episode"][slots] = ids
        features = list(self.features)
        f = len(features)
        columns = [
            buffer.storage.state[slots][:, features],
            result.next_state[:, features],
            (result.terminated | result.truncated)[:, None],
            episode_success(result)[:, None],
            slots[:, None],
        ]
        # one copy to the host per env step: positions, flags and slots together
        host = torch.cat([c.double() for c in columns], -1).cpu().numpy()
        done, success = host[:, 2 * f] > 0.5, host[:, 2 * f + 1] > 0.5
        for b, (episode, path, written) in enumerate(self._in_flight):
            path.append(host[b, :f])
            written.append(int(host[b, -1]))
            if done[b]:
                path.append(host[b, f : 2 * f])
                self._store(
                    Trajectory(episode, np.stack(path), torch.tensor(written), bool(success[b]))
                )
                self._in_flight[b] = (self._new_id(), [], [])
        self.steps_since_clustering += envs
        if self.steps_since_clustering >= self.config.recluster_every:
            self.recluster(buffer)

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _store(self, trajectory: Trajectory) -> None:
        if self.clustered and self.n_modes > 1:
            members = [t for t in self.trajectories if t.success]
            if members:
                trajectory.mode = int(
                    assign_to_clusters(
                        [trajectory.path],
                        [t.path for t in members],
                        np.array([t.mode for t in members]),
                        self.config.members_per_cluster,
                        rng=self.rng,
                    )[0]
                )
        self.trajectories.append(trajectory)
        del self.trajectories[: -self.config.max_trajectories]
        self._group_slots = None

    def _prune(self, buffer: ReplayBuffer) -> None:
        """Drop trajectories whose buffer slots were overwritten (the ring wrapped over them)."""
        if not self.trajectories:
            return
        first = torch.stack([t.slots[0] for t in self.trajectories]).to(buffer.device)
        alive = (
            buffer.extras["episode"][first].cpu() == torch.tensor([t.id for t in self.trajectories])
        ).tolist()
        if not all(alive):
            self.trajectories = [
                t for t, keep in zip(self.trajectories, alive, strict=True) if keep
            ]
            self._group_slots = None

    def recluster(self, buffer: ReplayBuffer) -> None:
        """Cluster the stored trajectories into modes and hand each new mode its critic."""
        self.steps_since_clustering = 0
        self._prune(buffer)
        if not self.trajectories:
            return
        wins = [t for t in self.trajectories if t.success]
        losses = [t for t in self.trajectories if not t.success]
        found = discover(
            [t.path for t in wins],
            [t.id for t in wins],
            [t.path for t in losses],
            [t.id for t in losses],
            previous=([t.id for t in self.trajectories], [t.mode for t in self.trajectories]),
            config=self.discovery,
            rng=self.rng,
        )
        source = [0] + [0 if old is None else old + 1 for _, old in sorted(found.inherited.items())]
        self._regroup(buffer, source)
        for t in self.trajectories:
            t.mode = found.labels[t.id]
        self.n_modes, self.clustered = found.n_modes, True
        if self.config.balance_modes and len(wins) >= self.config.min_successes:
            self._balance()
        self._group_slots = None

    def _balance(self) -> None:
        """Keep at most max_trajectories / (2 x modes) successes and as many failures per
        mode, dropping the excess at random (the authors' buffer balancing)."""
        cap = max(self.config.max_trajectories // (2 * self.n_modes), 1)
        dropped: set[int] = set()
        for mode in range(self.n_modes):
            for success in (True, False):
                ids = [t.id for t in self.trajectories if t.mode == mode and t.success == success]
                if len(ids) > cap:
                    dropped.update(self.rng.choice(ids, len(ids) - cap, replace=False).tolist())
        self.trajectories = [t for t in self.trajectories if t.id not in dropped]

    @torch.no_grad()
    def _regroup(self, buffer: ReplayBuffer, source: list[int]) -> None:
        """Group g takes over what group source[g] had: its critic members (and their target
        and Adam state), its target-action slot and its embedding (a fresh embedding where an
        earlier group already took that one, so no two groups share a vector)."""
        index = torch.tensor(source, device=self.device)
        count = len(source)

        def take(tensor: torch.Tensor) -> None:
            grouped = tensor.view(self.groups_max, -1, *tensor.shape[1:])
            grouped[:count] = grouped[index].clone()

        states = self.optimizers["critic"].state
        for param, target in zip(
            self.critic.parameters(), self.critic_target.parameters(), strict=True
        ):
            take(param.data)
            take(target.data)
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in states.get(param, {}):
                    take(states[param][moment])
        for name in ("target", "improved"):
            store = buffer.extras[name]
            store[:, :count] = store[:, index].clone()
        if self.embed_dim:
            fresh = torch.randn(count, self.embed_dim, device=self.device)
            seen: set[int] = set()
            rows = []
            for g, src in enumerate(source):
                rows.append(self.embeddings[src] if g and src and src not in seen else fresh[g])
                seen.add(src)
            rows[0] = self.embeddings[0]
            self.embeddings[:count] = torch.stack(rows)

    # ---------------------------------------------------------------- updates
    def sample_batch(
        self, buffer: ReplayBuffer, batch_size: int, generator: torch.Generator | None = None
    ) -> ModeBatch:
        groups = 1 + self.n_modes
        rows = max(batch_size // groups, 1)
        if self._group_slots is None:
            self._prune(buffer)
            self._group_slots = [
                torch.cat(
                    [t.slots for t in self.trajectories if t.mode == k]
                    or [torch.zeros(0, dtype=torch.long)]
                ).to(buffer.device)
                for k in range(self.n_modes)
            ]
        picks = [buffer.sample_slots(rows, generator)]
        for members in self._group_slots:
            if members.numel() == 0:  # a mode with no stored transition yet: uniform
                picks.append(buffer.sample_slots(rows, generator))
            else:
                pick = torch.randint(
                    members.numel(), (rows,), device=buffer.device, generator=generator
                )
                picks.append(members[pick])
        slots = torch.stack(picks)
        group = torch.arange(groups, device=buffer.device)[:, None].expand(groups, rows)
        transitions = buffer.gather(slots.flatten())
        improved = buffer.extras["improved"][slots, group]
        stored = buffer.extras["target"][slots, group]
        executed = transitions.action.view(groups, rows, *transitions.action.shape[1:])
        targets = torch.where(improved[..., None, None], stored, executed)
        return ModeBatch(transitions, slots, targets, buffer)

    def _grouped(self, batch: ModeBatch) -> tuple[Batch, torch.Tensor]:
        """The transitions as [G, b, ...] and each row's group [G, b]."""
        groups, rows = batch.slots.shape
        grouped = batch.transitions.map(lambda x: x.view(groups, rows, *x.shape[1:]))
        group = torch.arange(groups, device=self.device)[:, None].expand(groups, rows)
        return grouped, group

    def update(self, batch: ModeBatch) -> dict[str, torch.Tensor]:
        metrics = super().update(batch)
        metrics["modes/count"] = torch.tensor(float(self.n_modes))
        return metrics

    def update_critic(self, batch: ModeBatch) -> dict[str, torch.Tensor]:
        """Every group's twin critic on its share of the batch; exploration learns the intrinsic
        reward only, the modes the extrinsic plus the intrinsic one."""
        cfg = self.config
        t, group = self._grouped(batch)
        reward = t.reward.mean(-1) * cfg.reward_scale
        intrinsic = torch.zeros_like(reward)
        if self.novelty is not None:
            intrinsic = self.novelty.reward(t.state, t.next_state)
        reward = torch.cat([intrinsic[:1], reward[1:] + intrinsic[1:]])
        per_group = cfg.critic_members
        with torch.no_grad():
            next_action = self.policy.sample(self._with_embedding(t.next_obs, group))
            noise = (cfg.target_noise * torch.randn_like(next_action)).clamp(
                -cfg.target_noise_clip, cfg.target_noise_clip
            )
            next_action = (next_action + noise).clamp(-1.0, 1.0) * self.act_mask
            next_probs = self.critic_target.grouped_heads(
                t.next_state, next_action, per_group
            ).softmax(-1)  # [G, K, b, atoms]
            pessimist = (next_probs @ self.support).argmin(1)  # [G, b]: the twin with min Q'
            chosen = next_probs.gather(
                1, pessimist[:, None, :, None].expand(-1, 1, -1, next_probs.shape[-1])
            )[:, 0]
            target = self.project(reward, t.terminated, chosen)  # [G, b, atoms]
        logits = self.critic.grouped_heads(t.state, t.action, per_group)  # [G, K, b, atoms]
        cross_entropy = -(target[:, None] * logits.log_softmax(-1)).sum(-1)
        loss = cross_entropy.mean(-1).sum()
        self.step_optimizer(loss, "critic")
        q = logits.detach().softmax(-1) @ self.support
        metrics = {"loss/critic": loss.detach(), "q/mean": q.mean().detach()}
        metrics["reward/intrinsic"] = intrinsic.mean().detach()
        if self.novelty is not None:
            metrics.update(self.novelty.update(t.state.flatten(0, 1)))
        return metrics

    def update_actor(self, batch: ModeBatch) -> dict[str, torch.Tensor]:
        """Improve the batch's target actions on their groups' critics, write them back, and
        clone them (each row with its group's embedding)."""
        t, group = self._grouped(batch)
        targets = self.improve_targets(t.state, batch.targets)
        batch.buffer.extras["target"][batch.slots, group] = targets
        batch.buffer.extras["improved"][batch.slots, group] = True
        obs = self._with_embedding(t.obs, group)
        loss = self.policy.dsm_loss(targets, obs).mean((0, 1)).sum()
        self.step_optimizer(loss, "actor")
        moved = (targets - t.action).square().sum((-2, -1)).sqrt().mean()
        return {"loss/actor": loss.detach(), "targets/distance_from_executed": moved.detach()}

    def project(
        self, reward: torch.Tensor, terminated: torch.Tensor, probs: torch.Tensor
    ) -> torch.Tensor:
        """The distribution of r + gamma (1 - done) Z' projected onto the support (C51): each
        shifted atom's mass split between its two neighbouring atoms, clipped at the ends.
        reward, terminated [...], probs [..., atoms] -> [..., atoms]."""
        cfg = self.config
        z = self.support
        shifted = reward[..., None] + cfg.gamma * (1.0 - terminated[..., None]) * z
        position = (shifted.clamp(cfg.value_min, cfg.value_max) - cfg.value_min) / (z[1] - z[0])
        lower = position.floor().clamp(max=z.numel() - 1)
        upper_weight = position - lower  # 0 where the atom lands exactly on lower
        out = torch.zeros_like(probs)
        out.scatter_add_(-1, lower.long(), probs * (1.0 - upper_weight))
        upper = (lower + 1).clamp(max=z.numel() - 1).long()
        out.scatter_add_(-1, upper, probs * upper_weight)
        return out

    def group_q(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Each group's value: the min over its twin of the expected return, [G, b]."""
        logits = self.critic.grouped_heads(state, action, self.config.critic_members)
        return (logits.softmax(-1) @ self.support).min(1).values

    def grad_clip_for(self, optimizer: str) -> float:
        """The card clips the actor's gradient norm at 1; the critics are not clipped."""
        return self.config.grad_clip if optimizer == "actor" else 0.0

    def improve_targets(self, state: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """`target_steps` Adam steps of ascent on each group's min Q from `start` [G, b, N, A],
        clamped to the action box after every step. `update` calls it with the critic frozen."""
        cfg = self.config
        action = start.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([action], lr=cfg.target_lr)
        for _ in range(cfg.target_steps):
            q = self.group_q(state, action)
            opt.zero_grad(set_to_none=True)
            (-q.sum()).backward()
            opt.step()
            with torch.no_grad():
                action.clamp_(-1.0, 1.0).mul_(self.act_mask)
        return action.detach()

    # ---------------------------------------------------------------- checkpoints
    def training_state(self) -> dict:
        modes = {
            "n_modes": self.n_modes,
            "clustered": self.clustered,
            "next_id": self.next_id,
            "steps_since_clustering": self.steps_since_clustering,
            "rng": self.rng.bit_generator.state,
            "in_flight": None
            if self._in_flight is None
            else [
                {
                    "id": episode,
                    "path": torch.from_numpy(np.array(path).reshape(len(path), len(self.features))),
                    "slots": torch.tensor(written, dtype=torch.long),
                }
                for episode, path, written in self._in_flight
            ],
            "trajectories": [
                {
                    "id": t.id,
                    "path": torch.from_numpy(t.path),
                    "slots": t.slots,
                    "success": t.success,
                    "mode": t.mode,
                }
                for t in self.trajectories
            ],
        }
        return {**super().training_state(), "modes": modes}

    def load_training_state(self, state: dict) -> None:
        super().load_training_state(state)
        modes = state["modes"]
        self.n_modes, self.clustered = int(modes["n_modes"]), bool(modes["clustered"])
        self.next_id = int(modes["next_id"])
        self.steps_since_clustering = int(modes["steps_since_clustering"])
        self.rng.bit_generator.state = modes["rng"]
        self.trajectories = [
            Trajectory(
                int(t["id"]), t["path"].numpy(), t["slots"], bool(t["success"]), int(t["mode"])
            )
            for t in modes["trajectories"]
        ]
        self._in_flight = None
        if modes["in_flight"] is not None:  # episodes the runner may continue (env snapshots)
            self._in_flight = [
                (int(ep["id"]), list(ep["path"].numpy()), ep["slots"].tolist())
                for ep in modes["in_flight"]
            ]
        self._group_slots = None
