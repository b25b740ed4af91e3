"""The agent interface the runner drives without knowing the algorithm, and the shared
off-policy actor-critic machinery (centralised twin critic, target network, Q_i evaluation)."""

from __future__ import annotations

import contextlib
import copy
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.optim.adam import adam as functional_adam

from marl_diff import precision
from marl_diff.agents.networks import CRITIC_REDUCTIONS, CentralCritic, substitute_each_agent
from marl_diff.buffer import LINK_FIELDS, Batch, ReplayBuffer, gather_n_step, link_env_step
from marl_diff.envs.base import EnvSpec, StepResult
from marl_diff.errors import ConfigError
from marl_diff.nn import ACTIVATIONS, compile_own_copy, compiler_available


def check_activation(key: str, name: str) -> None:
    if name not in ACTIVATIONS:
        raise ConfigError(f"{key} must be one of {', '.join(sorted(ACTIVATIONS))}, not '{name}'")


def check_choices(config, choices: dict[str, tuple[str, ...]]) -> None:
    """Each `agent.<key>` named in `choices` must be one of its valid values."""
    for key, valid in choices.items():
        if getattr(config, key) not in valid:
            raise ConfigError(
                f"agent.{key} must be one of {', '.join(valid)}, not '{getattr(config, key)}'"
            )


def check_at_least(config, keys: tuple[str, ...], minimum: int = 1) -> None:
    for key in keys:
        if getattr(config, key) < minimum:
            raise ConfigError(f"agent.{key} must be >= {minimum}, got {getattr(config, key)}")


@dataclass
class AgentConfig:
    name: str = "agent"
    algorithm: str = "unknown"
    # Which of torch's Adam implementations trains the agent's networks (`Agent.adam`).
    adam_impl: str = "auto"


# torch.optim.Adam's implementations: "for_loop" steps one tensor at a time, "foreach" runs
# each op over all tensors at once, "fused" one kernel per step; "auto" is torch's own choice
# (foreach on a GPU, the for-loop on a CPU). The same update rule; they differ in float
# rounding and speed only. The catalog keeps "auto": on a 2-core CPU "fused" moved updates by
# -9% to +4% (results/speed.md); on a GPU it is the one to measure.
ADAM_IMPLS = ("auto", "for_loop", "foreach", "fused")


class Agent(nn.Module, ABC):
    """Decentralised actors (agent i acts from o_i only) trained from replay batches.

    `update` returns detached scalar tensors keyed by their TensorBoard tag; the runner
    averages them between log events (no host sync per update).
    """

    Config: type[AgentConfig] = AgentConfig
    # "online": trained from its own experience by an online runner; "offline": from a dataset
    # by the offline runner (checked when a run is built, marl_diff.experiment).
    regime: ClassVar[str] = "online"

    def __init__(self, config: AgentConfig, spec: EnvSpec, device: torch.device):
        super().__init__()
        self.config = config
        self.spec = spec
        self.device = device
        check_choices(config, {"adam_impl": ADAM_IMPLS})
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def adam(self, params, lr: float) -> torch.optim.Adam:
        """An Adam optimiser for this agent's parameters, in the configured implementation."""
        impl = self.config.adam_impl
        if impl == "auto":
            return torch.optim.Adam(params, lr=lr)
        return torch.optim.Adam(params, lr=lr, foreach=impl == "foreach", fused=impl == "fused")

    @abstractmethod
    def act(
        self, obs: torch.Tensor, explore: bool, state: torch.Tensor | None = None
    ) -> torch.Tensor:
        """obs [B, N, D] -> actions [B, N, A] in [-1, 1], padded entries zero.

        Agent i's action depends on o_i alone (decentralised execution). During training the
        runner also passes the global `state` [B, S], which an agent may use to pick among its
        own samples with the centralised critic (e.g. best-of-K); evaluation never passes it.
        """

    @abstractmethod
    def sample_policy(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [B, N, D] -> one draw a_i ~ pi_i(. | o_i) per agent, [B, N, A]: no exploration
        noise and no choice among samples by Q.

        Evaluation with `sample=true` uses it so that policy classes are compared in the same
        mode: each agent's default evaluation action differs in kind (a Gaussian's is its
        tanh(mean), a single point, while a diffusion policy samples).
        """

    @abstractmethod
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient update from a replay batch (what `sample_batch` drew)."""

    # Hooks for agents that keep more than transitions (DDiffPG: episodes, modes, target
    # actions). The defaults are those of a plain replay agent.
    def buffer_fields(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Extra per-transition fields the replay buffer keeps for this agent, name -> (shape,
        dtype); zero for every new transition (`ReplayBuffer.extras`)."""
        return {}

    def observe(self, buffer: ReplayBuffer, slots: torch.Tensor, result: StepResult) -> None:
        """Called by the online runner after it stored one batched env step at `slots` (warm-up
        included): `result` is the env's step, with its outcomes in `result.info`."""

    def reset_episodes(self) -> None:
        """Called when the runner resets its training envs: episodes in flight are gone."""

    def sample_batch(
        self, buffer: ReplayBuffer, batch_size: int, generator: torch.Generator | None = None
    ):
        """The batch the next `update` learns from: by default uniform transitions."""
        return buffer.sample(batch_size, generator)

    def behaviour_modes(self) -> int:
        """How many learned behaviour modes `select_mode` can ask for; 0: the agent's policy is
        not conditioned on a mode (every agent but DDiffPG with mode embeddings)."""
        return 0

    def select_mode(self, mode: int | None) -> None:
        """Act in mode `mode` (0-based, below `behaviour_modes()`) whenever not exploring
        (`act(explore=False)`, `sample_policy`); None: unconditioned, the default."""
        if mode is not None:
            raise ConfigError(f"agent '{self.config.algorithm}' has no behaviour modes to select")

    def training_state(self) -> dict:
        """Everything needed to resume: parameters, optimiser states, counters."""
        return {
            "modules": self.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
        }

    def load_training_state(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(_with_implementation(state["optimizers"][name], opt))


def _with_implementation(saved: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A saved optimiser state with the live optimiser's implementation flags (`foreach`,
    `fused`): torch's `load_state_dict` would otherwise restore the saving run's flags, and
    the implementation is this process's choice, not part of the training state."""
    flags = {
        key: optimizer.defaults[key] for key in ("foreach", "fused") if key in optimizer.defaults
    }
    return {**saved, "param_groups": [{**group, **flags} for group in saved["param_groups"]]}


@dataclass
class ActorCriticConfig(AgentConfig):
    gamma: float = 0.99
    tau: float = 0.005  # polyak rate of the target critic
    reward_scale: float = 1.0
    critic_lr: float = 3e-4
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256])
    critic_activation: str = "relu"
    critic_layer_norm: bool = False  # LayerNorm after every hidden layer of the Q networks
    critic_members: int = 2  # K Q networks in the critic ensemble
    # How the K estimates become one value (networks.CentralCritic): min, mean, or lcb
    # (mean - lcb_beta std); the catalog's online agents use the twin min.
    critic_reduction: str = "min"
    lcb_beta: float = 4.0
    # Critic regression targets: "reduced", every member regresses to r + gamma reduce(Q'),
    # the clipped double-Q target; "own", member k to r + gamma Q'_k, its own target network
    # (the Q-ensemble policy's choice: no min and no LCB in the targets keeps members diverse).
    critic_targets: str = "reduced"
    # What the critic learns (`ActorCriticAgent`): "team", one Q of the team reward (the mean of
    # the agents' rewards) that every agent ascends; "per_agent", one Q_i per agent of its own
    # reward, agent i ascending Q_i (MADDPG's and MASAC's critics with individual rewards).
    critic_rewards: str = "team"
    # Where the other agents' actions come from when evaluating Q_i(s, a_i, a_-i):
    # "replay" (HASAC-style, the batch's actions) or "policy" (fresh samples of their policies);
    # DDPL adds "candidates" (the others' own ISSM candidates of the same index).
    others_actions: str = "replay"
    policy_delay: int = 1  # actor updates once every `policy_delay` critic updates
    # The critic's TD targets over up to `n_step` env steps of the same episode (n-step
    # returns, HASAC's `n_step`): the discounted rewards of the steps taken, then gamma^k times
    # the bootstrapped value of the k-th next state (its soft bonus included), with no
    # off-policy correction, as HASAC. 1: one-step targets, the catalog's results.
    n_step: int = 1
    grad_clip: float = 0.0  # 0 = no clipping
    # torch.compile (`ActorCriticAgent.minimize`): the critic's loss with its gradients, clip and
    # Adam step as one graph where the agent's critic update is `critic_loss` (all but DTQL's
    # and DDiffPG's), the same for the actor's loss where the agent defines one (`actor_loss`:
    # the Gaussian), and every other optimiser step as a graph of its own (`clip_and_step`).
    compile_update: bool = False
    # The forward pass of the update's losses (`ActorCriticAgent.loss_precision`): "run", the
    # run's `matmul_precision`; "bfloat16", its products autocast to bfloat16 (mixed precision:
    # float32 parameters, gradients and Adam). Opt-in, measured in results/speed.md.
    update_precision: str = "run"


class ActorCriticAgent(Agent):
    """Centralised Q critic over (state, joint action) shared by every policy class: K members
    and a configured reduction (twin min by default, see `CentralCritic`).

    `critic_rewards`: with "team" the critic learns the team reward, the mean of the agents'
    rewards, and Q_i(s, a_i, a_-i) is that one Q with agent i's action substituted: the
    cooperative reading, right when the agents share a reward. With "per_agent" it learns one
    Q_i per agent from agent i's own reward, and agent i ascends its own Q_i. Where rewards
    are individual (VMAS navigation with `shared_rew=false`, BenchMARL's setting), the team Q
    mixes every agent's reward into each agent's gradient; per agent, each Q_i carries its
    own. There, 2 agents, 3 seeds, 60k frames (results/speed.md, made before the VMAS stream
    fix), the mean of the last three evaluations rose from 0.83 to 0.92 for gaussian and from
    0.63 to 0.74 for ddpl, at the same cost. The team Q stays the default: it is the DDPL
    paper's cooperative setting, and the catalog's results were made with it.
    `n_step` > 1: TD targets over up to n env steps of an episode (HASAC's n-step returns,
    without an off-policy correction, as HASAC). On BenchMARL's 2-agent navigation task at the
    study's settings with per-agent critics (results/speed.md, 3 seeds, 60k frames, the arms
    side by side), n_step 5 against 1: ddpl's final evaluations 0.77, 0.86, 0.99 against 0.21,
    0.74, 0.80, and none of its early collapses (-1.9, -6.8 and -1.2 at 6k frames against
    0.60, 0.45, 0.11); the gaussian's curves rose sooner to the same plateau (best 0.99, 1.05,
    1.00 against 0.98, 1.05, 0.98). The cost per update is the same. It is no free gain: at
    ddpl's vmas_navigation study setting (shared reward, team critic) n = 5 ended 0.12 lower
    (1.21 against 1.33, 6 seeds, 256 episodes each) where n = 3 held it (1.32) and still
    gained on BenchMARL's task (0.88); on Pendulum at the learning tests' settings (3 seeds)
    n = 3 took the gaussian's final return from -308 to -195 on average but qvpo's from -319
    to -552. For ddpl, n = 3 kept multigoal's goals (3 and 3 of 4, 2 seeds) and did not help
    on MaMuJoCo Ant at the study's settings (3 seeds: 721 against 692 at the end, 670 against
    756 over the curve). So the catalog keeps 1.
    Subclasses provide the policy: how to act, how to draw next actions (with any soft-value
    bonus) for the critic target, and the actor update.
    """

    Config = ActorCriticConfig
    OTHERS_ACTIONS = ("replay", "policy")
    CRITIC_TARGETS = ("reduced", "own")
    # Agents whose critic update is their own (a distributional or IQL critic, DDiffPG's per
    # mode) narrow this to ("team",).
    CRITIC_REWARDS = ("team", "per_agent")
    # Agents whose losses all run under `loss_precision`; the others narrow this to ("run",).
    UPDATE_PRECISIONS = ("run", precision.BFLOAT16)
    # Whether `n_step` > 1 is offered: it needs the online runner's episode links (offline
    # agents never have them) and the shared TD target (`bootstrap_factor`); online agents
    # whose batches or targets are their own set False.
    N_STEP_RETURNS = True
    critic_class: type[nn.Module] = CentralCritic  # built from (state, agents, act dims, hidden)

    def __init__(self, config: ActorCriticConfig, spec: EnvSpec, device: torch.device):
        super().__init__(config, spec, device)
        check_choices(
            config,
            {
                "others_actions": self.OTHERS_ACTIONS,
                "critic_reduction": CRITIC_REDUCTIONS,
                "critic_targets": self.CRITIC_TARGETS,
                "critic_rewards": self.CRITIC_REWARDS,
                "update_precision": self.UPDATE_PRECISIONS,
            },
        )
        check_activation("agent.critic_activation", config.critic_activation)
        check_at_least(config, ("policy_delay", "n_step"))
        if config.n_step > 1 and not (self.N_STEP_RETURNS and self.regime == "online"):
            raise ConfigError(
                f"agent.n_step must be 1 for agent '{config.algorithm}' (it learns from single "
                f"steps only), got {config.n_step}"
            )
        check_at_least(
            config, ("critic_members",), minimum=2 if config.critic_reduction == "lcb" else 1
        )
        self.critic = self.build_critic(config, spec)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("act_mask", spec.act_mask().float())
        if config.n_step > 1:
            # whether the training envs' episodes go on from the last observed step (False
            # after a reset), saved with the agent so a resumed run links as it would have
            self.register_buffer("episodes_continue", torch.tensor(False))
        # A Python int, not a device tensor: the update schedule (policy delay, refreshes,
        # decays) branches on it every update, and reading a GPU tensor would wait for the GPU.
        self.updates = 0
        # The target actions and bonus of the update in progress, where an agent draws them
        # before its compiled critic loss (`DiffusionActorCritic.update_critic`); else None.
        self.drawn_targets: tuple[torch.Tensor, torch.Tensor] | None = None

    def build_critic(self, config: ActorCriticConfig, spec: EnvSpec, **overrides) -> nn.Module:
        """The stacked critic from the config; `overrides` (e.g. n_q, out_features) let an agent
        with another layout (DDiffPG: a distributional twin per mode) change what it needs."""
        settings = {
            "n_q": config.critic_members,
            "activation": config.critic_activation,
            "reduction": config.critic_reduction,
            "lcb_beta": config.lcb_beta,
            "layer_norm": config.critic_layer_norm,
            "per_agent": config.critic_rewards == "per_agent",
            **overrides,
        }
        return self.critic_class(
            spec.state_dim, spec.n_agents, spec.act_dim, config.critic_hidden, **settings
        )

    def setup_optimizers(self) -> None:
        """Call at the end of a subclass __init__, after `.to(device)`."""
        self.optimizers["critic"] = self.adam(self.critic.parameters(), self.config.critic_lr)

    def target_action(
        self, next_obs: torch.Tensor, next_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next joint action [B, N, A] for the critic target, or [M, B, N, A] (M samples per
        state, whose Q' the target averages), and each agent's soft bonus [B, N] added to the
        reduced Q' (e.g. -alpha_i log pi_i; zero for policies without an entropy term): the
        team critic adds their sum, agent i's own critic its own.
        `next_state` is there for agents that choose the action by Q' (QVPO's best of K).
        Agents whose critic learns another target (IQL's V) override `update_critic`."""
        raise NotImplementedError(f"{type(self).__name__} defines no TD target action")

    @abstractmethod
    def update_actor(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One policy update (and temperature update, if any)."""

    @property
    def steps_actor(self) -> bool:
        """Whether this update steps the actor too (every `policy_delay` updates)."""
        return self.updates % self.config.policy_delay == 0

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        metrics = self.update_critic(batch)
        if self.steps_actor:
            self.critic.requires_grad_(False)
            metrics.update(self.update_actor(batch))
            self.critic.requires_grad_(True)
        self.soft_update_target()
        self.updates += 1
        return metrics

    def training_state(self) -> dict:
        return {**super().training_state(), "updates": self.updates}

    def load_training_state(self, state: dict) -> None:
        modules = dict(state["modules"])
        legacy = modules.pop("updates", None)  # checkpoints before the counter left the device
        super().load_training_state({**state, "modules": modules})
        self.updates = int(state["updates"] if "updates" in state else legacy)

    def minimize(self, loss: str, inputs, *optimizers: str) -> dict[str, torch.Tensor]:
        """One step of the named optimisers on the loss method `loss` (`critic_loss` and
        `actor_loss` take a Batch, ddpl's `fit_loss` its fitted candidates and `entropy_loss`
        its entropy shortfall: inputs -> (loss, metrics)); returns its metrics.

        Eagerly: the loss, one backward, and each optimiser's clip and Adam step. With
        `compile_update` all of it is one compiled function (`_minimize`), one graph where the
        loss traces whole (the Gaussian's two, ddpl's score matching, and a diffusion policy's
        critic loss, whose target actions it draws first), built at the first call: about 25 s
        for a Gaussian update on a cold inductor cache, about 4 s on a warm one (AOTAutograd's
        cache then holds the whole graph, so nothing in it may be a custom autograd.Function).
        Eagerly, a Gaussian update at BenchMARL MASAC's settings is about a thousand small ops,
        and on a CPU half of its time goes to dispatching them and to passes over memory between
        the matmuls; compiled, the loss's forward and backward, the clip and the Adam step are a
        few fused kernels around the matmuls. The gradients are the same function rounded
        differently, and random draws inside the loss come from the compiler's generator: a seed
        gives another trajectory than eagerly. Without a C++ compiler it runs eagerly, with a
        warning.
        """
        if self.compiles_update:
            return self._compiled(loss, _minimize)(
                self, loss, inputs, [self._adam_step_inputs(name) for name in optimizers]
            )
        with self.loss_precision():
            value, metrics = getattr(self, loss)(inputs)
        self.step_optimizer(value, *optimizers)
        return metrics

    def loss_precision(self) -> contextlib.AbstractContextManager:
        """The precision of a loss's forward pass in the update (`update_precision`); its
        backward follows the forward's dtypes, outside the block, as autocast asks.

        "bfloat16" is mixed-precision training: the products of the networks' forward passes
        take bfloat16 tensors (results included), and so their backward does, while parameters,
        their gradients and Adam's state stay float32. The critic loss's target actions are
        part of its forward pass, so a diffusion policy samples them in bfloat16 whatever its
        `chain_precision`. Measured on an AMD EPYC, one thread (results/speed.md): a Gaussian
        update at BenchMARL MASAC's settings took 0.69-0.74x its float32 time compiled, and ddpl
        at the vmas_navigation study setting ended at 1.32 against 1.33 (6 seeds, 256 episodes
        each). Off by default: it is another rounding of every update, and the catalog's
        results were made in float32."""
        return precision.setting_scope(self.config.update_precision, torch.device(self.device).type)

    @functools.cached_property
    def compiles_update(self) -> bool:
        return self.config.compile_update and compiler_available()

    @functools.cached_property
    def _compiled_functions(self) -> dict[str, Callable]:
        return {}

    def _compiled(self, key: str, function: Callable) -> Callable:
        """This agent's compiled copy of `function` for `key`, built at its first call: a copy
        per key keeps each graph, and Dynamo's limit of graphs per function, its own. Fixed
        shapes: Dynamo shares what it learns of shapes among copies of one function (by file,
        line and name), so another agent's batch size would otherwise turn this copy dynamic,
        which the score-matching loss's `torch.randint` cannot trace; a new shape is a new
        graph instead."""
        if key not in self._compiled_functions:
            compiled = compile_own_copy(function, dynamic=False)
            # Dynamo traces `torch.autograd.grad` into the graph only with this option
            self._compiled_functions[key] = torch._dynamo.config.patch(trace_autograd_ops=True)(
                compiled
            )
        return self._compiled_functions[key]

    def _adam_step_inputs(self, name: str) -> tuple:
        """What the compiled step of optimiser `name` reads and updates: its parameters, its
        Adam state (created where missing as torch's Adam creates it at its first step;
        `capturable`'s layout, the step count on the parameters' device, off the CPU), its
        hyper-parameters and its gradient clip. Rebuilt at every call: loading a checkpoint
        replaces the state's tensors."""
        optimizer = self.optimizers[name]
        (group,) = optimizer.param_groups
        params = group["params"]
        capturable = params[0].device.type != "cpu"
        for param in params:
            state = optimizer.state[param]
            if not state:
                state["step"] = torch.zeros((), device=param.device if capturable else "cpu")
                for key in ("exp_avg", "exp_avg_sq"):
                    state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
            elif capturable:
                state["step"] = state["step"].to(param.device)
        states = [optimizer.state[param] for param in params]
        return (
            params,
            *([state[key] for state in states] for key in ("exp_avg", "exp_avg_sq", "step")),
            {key: group[key] for key in ("lr", "betas", "eps", "weight_decay", "maximize")},
            self.grad_clip_for(name),
            capturable,
        )

    # ---------------------------------------------------------------- n-step returns
    def buffer_fields(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return dict(LINK_FIELDS) if self.config.n_step > 1 else {}

    def observe(self, buffer: ReplayBuffer, slots: torch.Tensor, result: StepResult) -> None:
        if self.config.n_step > 1:
            link_env_step(
                buffer, slots, result.terminated | result.truncated, self.episodes_continue
            )
            self.episodes_continue.fill_(True)

    def reset_episodes(self) -> None:
        if self.config.n_step > 1:
            self.episodes_continue.fill_(False)

    def sample_batch(
        self, buffer: ReplayBuffer, batch_size: int, generator: torch.Generator | None = None
    ) -> Batch:
        """Uniform transitions; with `n_step` > 1 each extended to its n-step return."""
        if self.config.n_step == 1:
            return buffer.sample(batch_size, generator)
        slots = buffer.sample_slots(batch_size, generator)
        return gather_n_step(buffer, slots, self.config.n_step, self.config.gamma)

    def bootstrap_factor(self, batch: Batch) -> torch.Tensor:
        """[B] what multiplies the bootstrapped next value in the TD target: gamma^k (the
        batch's `discount`, or gamma for single steps) where the episode goes on, 0 where it
        terminated."""
        discount = self.config.gamma if batch.discount is None else batch.discount
        return discount * (1.0 - batch.terminated)

    def update_critic(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.minimize("critic_loss", batch, "critic")

    def next_targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The target actions and soft bonus at the batch's next states for the critic's loss:
        those drawn before it (`drawn_targets`), else `target_action`'s."""
        if self.drawn_targets is not None:
            return self.drawn_targets
        return self.target_action(batch.next_obs, batch.next_state)

    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The TD loss of the critic's members and its metrics."""
        cfg = self.config
        with torch.no_grad():
            next_action, bonus = self.next_targets(batch)
            next_q = self.target_value(batch.next_state, next_action)
            reward, factor = batch.reward * cfg.reward_scale, self.bootstrap_factor(batch)
            if self.critic.per_agent:
                factor = factor[:, None]
            else:
                reward, bonus = reward.mean(-1), bonus.sum(-1)
            target = reward + factor * (next_q + bonus)
        q = self.critic(batch.state, batch.action)
        loss = (q - target).pow(2).flatten(1).mean(-1).sum()
        return loss, {"loss/critic": loss.detach(), "q/mean": q.mean().detach()}

    def target_value(self, next_state: torch.Tensor, next_action: torch.Tensor) -> torch.Tensor:
        """Q' at the target actions ([B, N, A], or [M, B, N, A] whose M values per state it
        averages): [B] or [B, N] reduced over the critic's members, [K, B] or [K, B, N] with
        `critic_targets=own`. With M samples the members reduce per sample, then average."""
        reduced = self.config.critic_targets == "reduced"
        if next_action.dim() == 3:
            next_q = self.critic_target(next_state, next_action)  # [K, B(, N)]
            return self.critic_target.reduce(next_q) if reduced else next_q
        count = next_action.shape[0]
        states = next_state.expand(count, *next_state.shape).flatten(0, 1)
        next_q = self.critic_target(states, next_action.flatten(0, 1)).unflatten(1, (count, -1))
        return self.critic_target.reduce(next_q).mean(0) if reduced else next_q.mean(1)

    def grad_clip_for(self, optimizer: str) -> float:
        """The gradient-norm clip of one optimiser's step (0: none)."""
        return self.config.grad_clip

    def step_optimizer(self, loss: torch.Tensor, *optimizers: str) -> None:
        """One backward of `loss`, then each named optimiser's clip and step (`clip_and_step`)."""
        for name in optimizers:
            self.optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        for name in optimizers:
            self.clip_and_step(name)

    def clip_and_step(self, name: str) -> None:
        """Clip the gradients of optimiser `name`'s parameters (`grad_clip_for(name)`) and step
        it; with `compile_update` as one compiled graph per optimiser (`_clip_and_adam`)."""
        if self.compiles_update:
            self._compiled(f"step:{name}", _clip_and_adam)(*self._adam_step_inputs(name))
            return
        optimizer = self.optimizers[name]
        clip = self.grad_clip_for(name)
        if clip > 0:
            nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], clip)
        optimizer.step()

    @torch.no_grad()
    def soft_update_target(self) -> None:
        torch._foreach_lerp_(
            list(self.critic_target.parameters()), list(self.critic.parameters()), self.config.tau
        )

    def own_q_sum(self, batch: Batch, action: torch.Tensor) -> torch.Tensor:
        """sum_i Q_i(s, a_i, a_-i) [B] for the agents' fresh actions `action` [B, N, A], with
        a_-i from `others_actions`; its gradient with respect to each a_i is dQ_i/da_i.

        With `others_actions=policy` and the team critic every Q_i is evaluated at the same
        joint action, so one critic call on B rows (MASAC's actor loss) replaces N substitutions
        on N x B: its value is N Q(s, a), and the straight-through term gives each a_i the
        gradient dQ(s, a)/da_i, exactly what Q_i with the others' actions detached gives it.
        Per-agent critics take the substitutions, each a_i getting dQ_i/da_i alone.
        """
        if self.config.others_actions == "replay":
            return self.q_each_agent(batch.state, batch.action, action).sum(-1)
        if self.critic.per_agent:
            return self.q_each_agent(batch.state, action.detach(), action).sum(-1)
        q = self.critic.value(batch.state, action)
        return q + (self.spec.n_agents - 1) * q.detach()

    def q_each_agent(
        self,
        state: torch.Tensor,
        base: torch.Tensor,
        own: torch.Tensor,
        critic: nn.Module | None = None,
        members: int | None = None,
    ) -> torch.Tensor:
        """Q_i(s, own_i, base_-i), reduced over the critic's members, for every agent at once
        (agent i's own Q_i with per-agent critics, the team Q otherwise).

        state [B, S], base [B, N, A], own [..., B, N, A] (e.g. M candidates) -> [..., B, N].
        `critic` defaults to the online critic (the target critic for critic targets);
        `members` as in `CentralCritic.value`.
        """
        critic = self.critic if critic is None else critic
        joint = substitute_each_agent(base, own)  # [..., B, N, N, A]
        # [B, 1, S]: each state's share of the critic is computed once, for all its joint actions
        q = critic.value(state[:, None], joint, members)  # [..., B, N(i)], per agent [..., N(i), N]
        return q.diagonal(dim1=-2, dim2=-1) if critic.per_agent else q


def _minimize(agent: ActorCriticAgent, loss: str, inputs, steps: list[tuple]) -> dict:
    """`ActorCriticAgent.minimize` as one graph: the loss, its gradients for the optimisers'
    parameters (None, as after an eager backward, for those it does not reach), and each
    optimiser's `_clip_and_adam`. torch's `Optimizer.step` breaks a graph on purpose, so the
    step is torch's functional Adam on the optimiser's own state tensors."""
    with agent.loss_precision():
        value, metrics = getattr(agent, loss)(inputs)
    params = [param for step in steps for param in step[0]]
    grads = torch.autograd.grad(value, params, allow_unused=True)
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad
    for step in steps:
        _clip_and_adam(*step)
    return metrics


def _clip_and_adam(
    params: list,
    exp_avgs: list,
    exp_avg_sqs: list,
    step_counts: list,
    hyper: dict,
    clip: float,
    capturable: bool,
) -> None:
    """Clip `params`' gradients to norm `clip` (0: no clip) and take torch's Adam step from
    them, skipping parameters without a gradient as `Adam.step` does (the agents' Adam: no
    amsgrad)."""
    stepped = [i for i, param in enumerate(params) if param.grad is not None]
    params, exp_avgs, exp_avg_sqs, step_counts = (
        [values[i] for i in stepped] for values in (params, exp_avgs, exp_avg_sqs, step_counts)
    )
    if clip > 0:
        nn.utils.clip_grad_norm_(params, clip)
    beta1, beta2 = hyper["betas"]
    with torch.no_grad():
        functional_adam(
            params,
            [param.grad for param in params],
            exp_avgs,
            exp_avg_sqs,
            [],  # amsgrad's maxima
            step_counts,
            foreach=False,
            capturable=capturable,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=hyper["lr"],
            weight_decay=hyper["weight_decay"],
            eps=hyper["eps"],
            maximize=hyper["maximize"],
        )


def best_candidate(candidates: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Each state's and agent's highest-Q candidate: [K, B, N, A], q [K, B, N] -> [B, N, A]."""
    best = q.argmax(0)[None, ..., None].expand(1, *candidates.shape[1:])
    return candidates.gather(0, best)[0]


def resample(candidates: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
    """k of each state's and agent's candidates [M, B, N, A], drawn with replacement with
    probabilities `weights` [M, B, N] -> [k, B, N, A]."""
    m, *lead = weights.shape
    rows = weights.reshape(m, -1).T  # [B * N, M]
    index = torch.multinomial(rows, k, replacement=True).T.reshape(k, *lead)  # [k, B, N]
    return candidates.gather(0, index.unsqueeze(-1).expand(*index.shape, candidates.shape[-1]))
