"""What every diffusion-policy agent shares: the actor settings, building its policy, and the
sampling and batching choices that set an update's cost."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from marl_diff import precision
from marl_diff.agents.base import (
    ActorCriticAgent,
    ActorCriticConfig,
    AgentConfig,
    check_activation,
    check_at_least,
    check_choices,
)
from marl_diff.buffer import Batch
from marl_diff.diffusion import CHAIN_SPACINGS, SCHEDULE_KINDS, DiffusionPolicy, make_schedule
from marl_diff.envs.base import EnvSpec
from marl_diff.errors import ConfigError

CHAIN_PRECISIONS = ("run", *precision.SCOPED_MODES)


@dataclass
class DiffusionPolicyConfig(AgentConfig):
    """The settings of the agents' stacked diffusion policy (`make_diffusion_policy`)."""

    actor_lr: float = 3e-4
    actor_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    actor_activation: str = "mish"
    time_embed_dim: int = 16
    share_parameters: bool = False
    diffusion_steps: int = 20  # T: the noise levels the denoiser is trained on
    schedule: str = "vp"
    # Chain steps when sampling the policy (acting, critic-target actions): 0 = all T
    # (ancestral DDPM); K < T = a K-step respaced chain over the same T-level model.
    sample_steps: int = 0
    sample_eta: float = 1.0  # noise of a respaced chain's steps: 1 DDPM-like, 0 DDIM
    # The denoiser's hidden layers as one torch.compile graph (StackedMLP): the same function,
    # fewer passes over memory; needs a C++ compiler, else it runs eagerly with a warning.
    compile_denoiser: bool = False
    # Only the chains sampled without gradient (acting, candidates, critic-target actions)
    # compiled: on a CPU the same numbers as eager, bit for bit (DiffusionPolicy.compile_chains).
    compile_chains: bool = False
    # Those chains' whole loop of steps as one compiled graph per call shape, not only the
    # hidden layers: the random numbers are drawn eagerly, the arithmetic rounds otherwise
    # (DiffusionPolicy.compile_chain_loop; DiffusionActorCritic: measured).
    compile_chain_loop: bool = False
    # On a CUDA device, those chains captured as CUDA graphs and replayed (one per call shape;
    # DiffusionPolicy.graph_chains): at RL batch sizes a GPU chain is launch-bound. No effect on
    # a CPU (DiffusionActorCritic: measured).
    graph_chains: bool = False
    # The float32 matrix-product precision (`marl_diff.precision`) of the chains sampled without
    # gradient (acting, candidates, critic-target actions); "run": the run's `matmul_precision`.
    # "medium" computes them from bfloat16 inputs on a GPU or a CPU with AMX (float32-accurate
    # on AVX512-BF16 alone, `marl_diff.precision`), while the gradient steps keep the run's
    # precision (DiffusionActorCritic: measured).
    chain_precision: str = "run"


@dataclass
class DiffusionActorConfig(ActorCriticConfig, DiffusionPolicyConfig):
    # Chain steps for the candidates an update weights or chooses among by Q (ISSM proposals,
    # QVPO's Q-weighted samples, best-of-K): 0 = `sample_steps`.
    candidate_steps: int = 0
    # Where a respaced candidates' chain (`candidate_steps` < T) puts its steps among the T
    # levels (`DiffusionPolicy.chain`): "even", or "quadratic", dense near the data end (DDIM's
    # "quad" skip). On multigoal's soft target 4 even steps covered at most one goal of 4,
    # 4 quadratic ones as many as 5 steps did (`agent=ddpl_fast_bfloat16` takes them; ddpl.py:
    # `candidate_steps`).
    candidate_spacing: str = "even"
    # The candidates of a state share their chain's start x_T and first step (see
    # `DiffusionPolicy.sample`): that step runs once per state instead of once per candidate.
    candidates_share_start: bool = False
    actor_batch_size: int = 0  # states per actor update, from the batch's front; 0 = all


def make_diffusion_policy(config: DiffusionPolicyConfig, spec: EnvSpec) -> DiffusionPolicy:
    """The agents' stacked diffusion policy, after checking the policy settings."""
    check_choices(config, {"schedule": SCHEDULE_KINDS, "chain_precision": CHAIN_PRECISIONS})
    check_activation("agent.actor_activation", config.actor_activation)
    check_at_least(config, ("diffusion_steps",))
    check_at_least(config, ("sample_steps",), minimum=0)
    if not 0.0 <= config.sample_eta <= 1.0:
        raise ConfigError(f"agent.sample_eta must be in [0, 1], got {config.sample_eta}")
    return DiffusionPolicy(
        spec.n_agents,
        spec.obs_dim,
        spec.act_dim,
        spec.act_mask(),
        make_schedule(config.schedule, config.diffusion_steps),
        hidden=config.actor_hidden,
        activation=config.actor_activation,
        time_embed_dim=config.time_embed_dim,
        share=config.share_parameters,
        compiled=config.compile_denoiser,
        compile_chains=config.compile_chains,
        compile_chain_loop=config.compile_chain_loop,
        graph_chains=config.graph_chains,
        chain_precision=None if config.chain_precision == "run" else config.chain_precision,
    )


class DiffusionActorCritic(ActorCriticAgent):
    """The centralised twin critic with a diffusion policy per agent (`self.policy`).

    The cost of a diffusion agent's update is rows x chain steps through the denoiser, so the
    two ways of sampling and the actor's batch are settings here, the same for every agent:
    `sample_policy` draws what the agent executes and bootstraps from (`sample_steps`),
    `candidates` draws what an update weights or chooses among by Q (`candidate_steps`), and
    `actor_batch` is the part of the replay batch the actor update uses (`actor_batch_size`).
    A respaced chain samples the same T-level model on fewer steps (DDIM; improved DDPM's
    respacing), which leaves what is learned unchanged and changes only how it is sampled.
    `compile_denoiser` runs the denoiser's hidden layers as one torch.compile graph
    (`marl_diff.nn.StackedMLP`): the same function, with each layer's bias and mish fused into
    one pass. `bench update` on a 2-core CPU, eager / compiled (two runs, each agent's ratio to
    a Gaussian update within its run): ddpl 5.0x / 4.4x on Ant, 5.3x / 4.6x on VMAS and 6.0x /
    5.1x on MPE; qvpo 21.2x / 17.8x on Ant; dacer 5.6x / 5.2x on Ant. It is off in the catalog:
    it changes only float rounding, yet in the vmas_navigation study setting (before the VMAS
    stream fix) ddpl's final policies, re-evaluated on 256 episodes, returned 1.32 on average
    compiled (8 seeds) against 1.41 eager (11 seeds), lower in each of the 8 seeds run both
    ways. The gap comes from the candidate chain: with only the critic-target actions compiled,
    ddpl learned as eager. Why a rounding change there lowers the return is not known
    (results/speed.md). The compiled mish then rounded differently from the eager one; it no
    longer does, and `compile_chains` compiles only the chains sampled without gradient
    (acting, candidates, critic-target actions; `DiffusionPolicy.chain_context`), which on a
    CPU then give the eager numbers bit for bit: a run learns exactly what it learns eagerly
    (tests/test_dacer.py compares the parameters after updates), and the catalog sets it for
    ddpl, dacer and qvpo. `bench update` on Ant, Intel Xeon with AMX, the arms alternated, five
    runs each, eager / `compile_chains`: ddpl 4.07-4.18x / 3.57-3.74x, dacer 5.36-5.49x /
    5.00-5.06x, qvpo 15.6-15.8x / 13.3-13.7x a Gaussian update (results/speed.md,
    results/update_time_compile_chains/).
    `chain_precision` gives the chains sampled without gradient (acting, candidates,
    critic-target actions) their own matrix-product precision; the gradient steps keep the
    run's `matmul_precision`. With "medium" they take bfloat16 inputs where the hardware has
    them (a GPU; a CPU with AMX). On a CPU with AVX512-BF16 alone (the project's AMD EPYC)
    oneDNN keeps them float32-accurate, to 4e-7 over a 10-step chain, at about 0.9x the
    float32 products' time; elsewhere nothing changes. On an Intel Xeon with
    AMX (`bench update`, one thread, two runs each; ratio to a float32 Gaussian update), float32
    chains / bfloat16 chains: ddpl 4.61x, 4.55x / 4.14x, 4.25x on Ant and 5.34x, 5.32x / 4.79x,
    4.80x on MPE; qvpo 18.9x, 18.8x / 15.5x, 16.1x and 23.1x, 23.5x / 18.8x, 19.3x; dacer 5.53x,
    5.49x / 4.98x, 5.00x and 3.60x, 3.59x / 3.13x, 3.20x (results/update_time_precision/:
    `*_amx_float32_chains_*`, `*_amx_chain_medium_*`). Learning, the same machine: ddpl's
    vmas_navigation study setting, seeds 0-5, returned 1.34 with bfloat16 chains against 1.29
    with float32 ones (final policies on 256 episodes; higher in 4 of 6 seeds), where bfloat16 in
    the whole update (`matmul_precision=medium`) had cost about 0.1 in each of six seeds; qvpo's
    Pendulum learning test, seeds 0-5, -367 against -417 (10 episodes each, the spread of seeds
    is wider). The catalog sets "medium" for ddpl and qvpo. dacer keeps "run": with bfloat16
    chains its multigoal_sql check (seed 0) covered 2 goals instead of 3 (64/35/1%).
    "bfloat16" autocasts those chains' products to bfloat16 tensors, results included (one
    rounding more than "medium"; the chain's state and actions stay float32), which a CPU with
    AVX512-BF16 alone computes at about twice float32's rate. On the AMD EPYC (`bench update`,
    one thread, ratio of each agent's update time to its "medium" one in the same run, two runs
    each on VMAS navigation and on Ant): ddpl 0.90x, 0.88x and 0.89x, 0.93x; qvpo 0.79x, 0.80x
    and 0.79x, 0.81x; dacer 0.89x, 0.90x and 0.85x, 0.80x
    (results/update_time_precision/*_bfloat16_chains_epyc_*).
    Learning: ddpl's vmas_navigation study setting, seeds 0-5, its final policies on 256
    episodes, 1.386 with bfloat16 chains against 1.330 with "medium" (higher in 4 of 6 seeds);
    qvpo's Pendulum learning test, seeds 0-5, -425 against -420 (10 episodes each, the spread
    of seeds far wider). dacer's multigoal_sql check covered 2 goals (6/54/34/6%) against 4
    (41/25/12/22%) with its catalog chains at seed 0, as "medium" chains had cost it a goal,
    and 2 against 2 at seed 1.
    Not in the catalog: measured on one CPU, its learning on one task each; on a GPU its casts
    are extra kernels in a launch-bound chain, not measured.
    `compile_chain_loop` compiles those chains' whole loop of steps, not only the hidden layers
    (`DiffusionPolicy.compile_chain_loop`): a chain in a few rows is some 40 small operations a
    step, each paying its dispatch. On BenchMARL's navigation task with the README's
    time-to-quality settings (2 agents, [128, 128] denoiser, 16 envs; AMD EPYC, one thread):
    an update took 0.81x its time (`bench update`, results/update_time_compile_chain_loop/),
    and in twelve seeds' runs, each beside the same seed's run without it, each 6,000 frames
    took 0.77-0.88x as long, after 0.2-4.3 s more at the start, where each chain shape is
    traced. It rounds otherwise (to about 5e-7 over a chain), so a seed follows another
    trajectory; over those twelve seeds the frames to a return of 0.8 spread alike with and
    without it (results/speed.md). Not in the catalog: at the families' catalog defaults, whose
    chains are wide enough to be bound by arithmetic, it takes an update only to 0.92-0.97x
    (ddpl, dacer, qvpo on VMAS; ddpl on Ant), and it would make every catalog result another
    trajectory.
    `graph_chains` replays those chains from CUDA graphs on a GPU, where a chain at these batch
    sizes is a few hundred small kernels, bound by launches and the Python issuing them. The
    replayed chain samples what the eager one does from the same generator state
    (tests/test_cuda_graphs.py, run on an H200). `bench update` on VMAS navigation on an H200
    (results/gpu/h200/, two runs minutes apart on one machine), ratio to a Gaussian update at
    the catalog defaults without / with it: ddpl 1.55x / 0.80x, dacer 2.33x / 1.82x, qvpo 2.52x
    / 1.70x. ddpl at MASAC's peer settings ran 12,000 frames in 67.6 s without graphs and 25.8 s
    with them, on two H200 machines (results/gpu/README.md). The catalog sets it for ddpl,
    dacer and qvpo; it does nothing on a CPU. DDiffPG leaves it off, since its per-mode groups
    change shape from batch to batch.
    """

    Config = DiffusionActorConfig

    def __init__(self, config: DiffusionActorConfig, spec: EnvSpec, device: torch.device):
        super().__init__(config, spec, device)
        check_at_least(config, ("candidate_steps", "actor_batch_size"), minimum=0)
        check_choices(config, {"candidate_spacing": CHAIN_SPACINGS})
        self.policy = make_diffusion_policy(config, spec)

    def chain_options(self) -> dict:
        """Keyword arguments of `DiffusionPolicy.sample` for the policy's own samples."""
        cfg = self.config
        return {"steps": cfg.sample_steps or None, "eta": cfg.sample_eta}

    def sample_policy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy.sample(obs, **self.chain_options())

    def target_action(self, next_obs: torch.Tensor, next_state: torch.Tensor):
        """The current policy's own sample at next_obs, no soft bonus (DDPL, DACER)."""
        return self.sample_policy(next_obs), next_obs.new_zeros(next_obs.shape[:-1])

    def update_critic(self, batch: Batch) -> dict[str, torch.Tensor]:
        """With `compile_update`, the target actions are drawn first (`drawn_targets`), so the
        compiled critic loss does not trace into the sampled chain: there the chain's graph
        breaks split the loss into pieces, and Dynamo restarts at each on the first call.
        Drawn before, the loss is one graph. The draws come from the same generator in the
        same order; a scratch probe at BenchMARL MASAC's peer settings timed ddpl's update at
        about 0.88x (results/speed.md). Eagerly nothing changes."""
        if not self.compiles_update:
            return super().update_critic(batch)
        with torch.no_grad():
            self.drawn_targets = self.target_action(batch.next_obs, batch.next_state)
        try:
            return super().update_critic(batch)
        finally:
            self.drawn_targets = None

    def candidates(
        self, obs: torch.Tensor, count: int, policy: DiffusionPolicy | None = None
    ) -> torch.Tensor:
        """`count` samples per state of `policy` (default: the current one), no gradient:
        obs [B, N, D] -> [count, B, N, A], on the `candidate_steps` chain (spaced by
        `candidate_spacing`)."""
        options = self.chain_options()
        if self.config.candidate_steps:
            options["steps"] = self.config.candidate_steps
            options["spacing"] = self.config.candidate_spacing
        policy = self.policy if policy is None else policy
        return policy.sample(
            obs, candidates=count, shared_start=self.config.candidates_share_start, **options
        )

    def actor_batch(self, batch: Batch) -> Batch:
        """The first `actor_batch_size` transitions (replay batches are drawn at random, so
        these are a random subset); the whole batch when 0 or larger."""
        size = self.config.actor_batch_size
        if size == 0 or size >= batch.obs.shape[0]:
            return batch
        return batch.map(lambda field: field[:size])
