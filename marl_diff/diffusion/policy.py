"""Per-agent diffusion policies pi_i(a_i | o_i), all agents stacked in one module.

Every diffusion agent (DDPL/ISSM, DACER, QVPO, DDiffPG, BC for the offline methods) uses the two
operations here: `sample` (the reverse chain, optionally differentiable for DACER, optionally
drawing M candidates per state for ISSM / QVPO / best-of-N) and `dsm_loss` (per-sample,
optionally weighted denoising score matching). Execution stays decentralised: agent i's actions
depend only on o_i and agent i's parameters, the stacking is only a batching device.

Actions live in [-1, 1]. Padded action entries (heterogeneous agents, see `EnvSpec.act_mask`)
are held at exactly zero along the whole chain and never enter the loss.

Extension points. The forward process is the `schedule` object and one reverse step is
`denoise_step`; `dsm_loss` is the matching training objective. The EDM model of DTQL
(`edm.EDMPolicy`: sigma_data = 0.5, preconditioned denoiser, Heun sampler) and the
mean-reverting SDE of the Q-ensemble policy (`mean_reverting.MeanRevertingPolicy`: closed-form
reverse step, tractable entropy) subclass this with their own noise levels, overriding those
methods and reusing the candidate batching, masking and gradient handling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from marl_diff import precision
from marl_diff.diffusion.cuda_graphs import ChainGraphs
from marl_diff.diffusion.denoiser import Conditioning, StackedDenoiser
from marl_diff.diffusion.schedules import NoiseSchedule, make_schedule
from marl_diff.nn import compiled_for, compiler_available

# How a respaced chain of K < T steps places its steps among the T levels (`chain`).
CHAIN_SPACINGS = ("even", "quadratic")


class DiffusionPolicy(nn.Module):
    """N agents' DDPM policies with eps-prediction, over a shared `NoiseSchedule`.

    `act_mask` [N, A] bool marks real action entries (default: all real). `chain_precision`
    (a `marl_diff.precision` mode, or "bfloat16": products of bfloat16 tensors) is the float32
    matrix-product precision of the chains sampled without gradient (None: the process's); the
    chain's own state and its output stay float32. `compile_chains`: those chains run with the
    denoiser's hidden layers compiled (`compiling`). Without gradient the compiled layers
    compute what the eager ones do, in the same order: on a CPU the numbers are the same bit for
    bit with mish, relu, tanh or silu layers (tests/test_diffusion.py, tests/test_nn.py; ELU to
    float rounding), so this changes the speed and nothing that is learned. The gradient chains
    stay eager, since the compiler derives its own backward, another rounding. On a GPU the
    compiled kernels' transcendentals may round otherwise (not measured). `compile_chain_loop`:
    those chains' whole loop of steps runs as one compiled graph per call shape and options
    (`_compiled_reverse`), the step arithmetic and first layer fused with the hidden layers. A
    chain in a few rows (acting) is otherwise bound by the per-operation cost of some 40 small
    operations a step. Its random numbers are drawn eagerly first, in the eager chain's order,
    so a generator gives the same draws; the fused arithmetic rounds otherwise (about 5e-7 over
    a chain), so unlike `compile_chains` it changes a run's trajectory. Each new shape is a
    graph traced at its first call, about a second each. `graph_chains`: on a
    CUDA device those chains (without gradient and without an explicit `generator`) are
    captured as CUDA graphs, one per call signature, and replayed (`cuda_graphs.ChainGraphs`:
    a GPU chain at these batch sizes is launch-bound); elsewhere it changes nothing.
    Further keyword arguments (hidden, activation, time_embed_dim, share, compiled) go to
    `StackedDenoiser`.
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        act_dim: int,
        act_mask: torch.Tensor | None = None,
        schedule: NoiseSchedule | None = None,
        *,
        chain_precision: str | None = None,
        compile_chains: bool = False,
        compile_chain_loop: bool = False,
        graph_chains: bool = False,
        **denoiser_kwargs,
    ):
        super().__init__()
        if chain_precision is not None and chain_precision not in precision.SCOPED_MODES:
            raise ValueError(
                f"chain_precision must be one of {', '.join(precision.SCOPED_MODES)} or None, "
                f"got {chain_precision!r}"
            )
        self.chain_precision = chain_precision
        self.compile_chains = compile_chains
        self.compile_chain_loop = compile_chain_loop and compiler_available()
        self.graph_chains = graph_chains
        self.chain_graphs = ChainGraphs()
        self.n_agents, self.obs_dim, self.act_dim = n_agents, obs_dim, act_dim
        self.schedule = schedule if schedule is not None else make_schedule("vp", 20)
        self.denoiser = StackedDenoiser(n_agents, obs_dim, act_dim, **denoiser_kwargs)
        if act_mask is None:
            act_mask = torch.ones(n_agents, act_dim, dtype=torch.bool)
        if tuple(act_mask.shape) != (n_agents, act_dim):
            raise ValueError(
                f"act_mask must be [{n_agents}, {act_dim}], got {list(act_mask.shape)}"
            )
        self.register_buffer("act_mask", act_mask.to(torch.float32), persistent=False)
        self.padded = not bool(act_mask.all())

    @property
    def steps(self) -> int:
        return self.schedule.steps

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.act_mask if self.padded else x

    def _real_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over real action entries: [..., N, A] -> [..., N]."""
        return (x * self.act_mask).sum(-1) if self.padded else x.sum(-1)

    def chain_context(self, grad: bool) -> contextlib.AbstractContextManager:
        """What a sampled chain runs under: with `grad`, the caller's settings (the graph is
        kept); otherwise no_grad and, when set, `chain_precision` for its matrix products and
        the compiled denoiser (`compile_chains`)."""
        if grad:
            return contextlib.nullcontext()
        context = contextlib.ExitStack()
        context.enter_context(torch.no_grad())
        if self.chain_precision is not None:
            context.enter_context(precision.scoped(self.chain_precision, self.act_mask.device.type))
        if self.compile_chains and not self.compile_chain_loop:
            context.enter_context(self.compiling())
        return context

    def compiling(self) -> contextlib.AbstractContextManager:
        """Within the block the denoiser's hidden layers run compiled (`StackedMLP.compiling`)."""
        return self.denoiser.net.mlp.compiling()

    def _check_obs(self, obs: torch.Tensor) -> None:
        if obs.shape[-2:] != (self.n_agents, self.obs_dim):
            raise ValueError(
                f"obs must end in [{self.n_agents}, {self.obs_dim}], got {list(obs.shape)}"
            )

    def _initial_noise(self, shape, like: torch.Tensor, generator) -> torch.Tensor:
        """x_T ~ N(0, I) (a VP process ends at the standard normal)."""
        return torch.randn(shape, device=like.device, dtype=like.dtype, generator=generator)

    def chain(self, steps: int | None = None, spacing: str = "even") -> list[int]:
        """The schedule steps a reverse chain visits, ascending: all T (`steps` None or >= T),
        or `steps` of them from 0 to T-1 (a respaced chain, as in DDIM and improved DDPM: the
        model is trained on all T noise levels and sampled on fewer). `spacing` "even" spaces
        them evenly; "quadratic" at (i / (K-1))^2 (T-1), dense near the data end (DDIM's
        "quad" skip), where a step's error reaches the sample least smoothed. Rounded to
        levels, steps that fall on one level merge: K near T visits fewer than K."""
        if spacing not in CHAIN_SPACINGS:
            raise ValueError(f"unknown chain spacing {spacing!r}; valid: {list(CHAIN_SPACINGS)}")
        if steps is None or steps >= self.steps:
            return list(range(self.steps))
        if steps < 1:
            raise ValueError(f"a chain needs at least one step, got steps={steps}")
        if steps == 1:
            return [self.steps - 1]
        if spacing == "quadratic":
            return sorted({round((i / (steps - 1)) ** 2 * (self.steps - 1)) for i in range(steps)})
        return sorted({round(i * (self.steps - 1) / (steps - 1)) for i in range(steps)})

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
        """One reverse step x_t -> x_{t_prev} at Python-int steps (t_prev defaults to t - 1;
        -1 is the clean end of the chain).

        The model predicts eps, hence x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t), clamped to
        [-1, 1] when `clip_x0` (actions are bounded, and the clamp keeps short chains stable).
        Ancestral (DDPM, t_prev = t - 1): the posterior mean of q(x_{t-1} | x_t, x0) plus
        sigma_t * `noise` (no noise at t = 0; `noise` None means no noise). Otherwise the
        generalised DDIM step, with eps re-derived from the clamped x0:
        x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - s^2) eps + s * noise, where
        s = eta sqrt((1 - ab_prev) / (1 - ab_t) (1 - ab_t / ab_prev)); `deterministic` is
        eta = 0 (DDIM), and eta = 1 on a full chain equals the ancestral step. `cond` is the
        chain's precomputed `StackedDenoiser.condition` (computed here when not given). `noise`
        may have more leading dims than x (one x, several noise draws: see `sample`'s
        `shared_start`).
        """
        c = self.schedule.coef
        t_prev = t - 1 if t_prev is None else t_prev
        if cond is None:
            cond = self.denoiser.condition(obs, x.shape[:-2], self.steps)
        eps = self.denoiser.predict(x, cond, t)
        x0 = torch.add(
            c["sqrt_recip_alpha_bars"][t] * x, eps, alpha=-c["sqrt_recipm1_alpha_bars"][t]
        )
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        if not deterministic and t_prev == t - 1:
            out = torch.add(
                c["posterior_mean_coef1"][t] * x0, x, alpha=c["posterior_mean_coef2"][t]
            )
            if t > 0 and noise is not None:
                out = _add_noise(out, noise, c["posterior_variance"][t] ** 0.5)
            return self._mask(out)
        if clip_x0:
            eps = (c["sqrt_recip_alpha_bars"][t] * x - x0) / c["sqrt_recipm1_alpha_bars"][t]
        ab_t = c["alpha_bars"][t]
        ab_prev = c["alpha_bars"][t_prev] if t_prev >= 0 else 1.0
        sigma = 0.0
        if not deterministic and noise is not None and t_prev >= 0:
            sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)) ** 0.5
        out = ab_prev**0.5 * x0 + max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            out = _add_noise(out, noise, sigma)
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
        spacing: str = "even",
    ) -> torch.Tensor:
        """Run the reverse chain: obs [..., N, D] -> actions [..., N, A] in [-1, 1].

        With `candidates=M`, M independent actions per state come from the same batched call:
        [M, ..., N, A]. `noise_scale` scales the noise injected by each stochastic step (not
        x_T; 0 makes the chain deterministic given x_T). `steps` K < T runs the respaced chain
        of `chain(K, spacing)` with generalised DDIM steps of noise `eta` (1: DDPM-like, 0: DDIM);
        the default is the full T-step ancestral chain. `grad=True` keeps the graph through
        every step (DACER's policy loss backpropagates through the whole chain); otherwise the
        chain runs under `chain_context`. The only Python loop is over the steps.

        `shared_start` (with `candidates`): the M candidates of a state start from one x_T, so
        the chain's first step runs once per state, and they part at that step's noise. Each
        candidate is still an exact sample of the chain; only candidates of the same state are
        no longer independent. That first step's noise dominates what it produces: on a 5-step
        respaced VP chain x_prev = 0.24 x0 + 0.32 eps + 0.92 noise, with x0 and eps predicted
        from x_T, so the shared x_T carries about a tenth of each candidate's variance there.
        Applies only when that step adds noise (a stochastic chain of two or more steps).
        """
        self._check_obs(obs)
        options = dict(
            deterministic=deterministic,
            clip_x0=clip_x0,
            noise_scale=noise_scale,
            candidates=candidates,
            steps=steps,
            eta=eta,
            shared_start=shared_start,
            spacing=spacing,
        )
        if self.graph_chains and obs.is_cuda and not grad and generator is None:
            return self.chain_graphs.replay(self._chain, obs, options)
        return self._chain(obs, grad=grad, generator=generator, **options)

    def _chain(
        self,
        obs: torch.Tensor,
        *,
        deterministic: bool,
        clip_x0: bool,
        noise_scale: float,
        candidates: int | None,
        steps: int | None,
        eta: float,
        shared_start: bool,
        spacing: str,
        grad: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """`sample`'s reverse chain: its random numbers drawn first, in the order the steps use
        them, then the steps (`_reverse`; compiled as one graph with `compile_chain_loop`)."""
        lead = obs.shape[:-2] if candidates is None else (candidates, *obs.shape[:-2])
        shape = (*lead, self.n_agents, self.act_dim)
        visited = self.chain(steps, spacing)
        full = len(visited) == self.steps
        with self.chain_context(grad):
            stochastic = not deterministic and noise_scale != 0 and (full or eta != 0)
            shared = shared_start and candidates is not None and stochastic and len(visited) > 1
            start = shape[1:] if shared else shape
            x = self._mask(self._initial_noise(start, obs, generator))
            noises: list[torch.Tensor | None] = [None] * len(visited)  # none at the last step
            for i in range(len(visited) - 1 if stochastic else 0):
                noises[i] = torch.randn(shape, device=x.device, dtype=x.dtype, generator=generator)
                if noise_scale != 1.0:
                    noises[i] = noises[i] * noise_scale
            reverse = type(self)._reverse
            if self.compile_chain_loop and not grad:
                reverse = _compiled_reverse(self)
            return reverse(
                self,
                obs,
                x,
                noises,
                tuple(visited),
                torch.Size(lead),
                deterministic=deterministic,
                clip_x0=clip_x0,
                eta=eta,
            )

    def _reverse(
        self,
        obs: torch.Tensor,
        x: torch.Tensor,
        noises: list[torch.Tensor | None],
        visited: tuple[int, ...],
        lead: torch.Size,
        *,
        deterministic: bool,
        clip_x0: bool,
        eta: float,
    ) -> torch.Tensor:
        """The chain's steps from x_T down `visited` (ascending), `noises` one per step (None
        where a step adds none). x_T [*lead, N, A], or [*lead[1:], N, A] for candidates that
        share their start: then the first step's noise parts them."""
        cond = self.denoiser.condition(obs, lead, self.steps)
        first_cond = (
            cond if x.shape[:-2] == lead else self.denoiser.condition(obs, x.shape[:-2], self.steps)
        )
        for i, noise in zip(reversed(range(len(visited))), noises, strict=True):
            x = self.denoise_step(
                x,
                obs,
                visited[i],
                noise,
                t_prev=visited[i - 1] if i > 0 else -1,
                deterministic=deterministic,
                clip_x0=clip_x0,
                eta=eta,
                cond=cond if x.shape[:-2] == lead else first_cond,
            )
        return x.clamp(-1.0, 1.0)

    def dsm_loss(
        self,
        actions: torch.Tensor,
        obs: torch.Tensor,
        weights: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Denoising score matching per sample and agent: actions [..., N, A] -> loss [..., N].

        A fresh uniform step t and noise eps per sample and agent; the squared error of the eps
        prediction is summed over real action entries only, then multiplied by `weights`
        [..., N] if given (ISSM importance weights, QVPO's Q weights). Callers average. `obs`
        broadcasts against the actions' leading dims (e.g. candidates [M, B, N, A] with
        obs [B, N, D]).
        """
        actions = self._mask(actions)
        lead = actions.shape[:-1]
        s = self.schedule
        t = torch.randint(0, s.steps, lead, device=actions.device, generator=generator)
        eps = self._mask(
            torch.randn(
                actions.shape, device=actions.device, dtype=actions.dtype, generator=generator
            )
        )
        noised = (
            s.sqrt_alpha_bars[t].unsqueeze(-1) * actions
            + s.sqrt_one_minus_alpha_bars[t].unsqueeze(-1) * eps
        )
        err = (self.denoiser(noised, obs, t) - eps).square()
        loss = self._real_sum(err)
        return loss if weights is None else loss * weights


def _compiled_reverse(policy: DiffusionPolicy) -> Callable:
    """The compiled `_reverse` of the policy's class that every policy of its denoiser's
    structure shares (`marl_diff.nn.compiled_for`; a policy and its target copy share graphs),
    one static graph per call shape and options."""
    denoiser = policy.denoiser
    structure = (
        type(policy),  # a subclass's steps (`denoise_step`) are graphs of their own
        denoiser.net.mlp.structure,
        (denoiser.n_agents, denoiser.obs_dim, denoiser.act_dim, denoiser.time_embed_dim),
    )
    return compiled_for(type(policy)._reverse, structure, dynamic=False)


def _add_noise(x: torch.Tensor, noise: torch.Tensor, scale: float) -> torch.Tensor:
    """x + scale * noise, in place when the shapes agree; otherwise x broadcast over noise's
    extra leading dims (candidates parting from a shared start)."""
    if noise.shape == x.shape:
        return x.add_(noise, alpha=scale)
    return torch.add(x, noise, alpha=scale)
