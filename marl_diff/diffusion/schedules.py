"""Discrete-time DDPM / VP noise schedules.

Step indices run 0..T-1; index t is the (t+1)-th forward noising step, so `alpha_bars[0]` is the
least noisy level and `alpha_bars[T-1]` is close to pure noise. Every quantity the sampler and
the denoising loss need is precomputed once, in float64, and kept twice: as float32 buffers (so
they move with `.to(device)` and can be gathered by a tensor of random steps during training)
and as plain Python floats in `coef` (so a sampling step indexed by a Python int needs neither a
tensor gather nor a device sync).

Other forward processes keep their own coefficient tables beside their policy: EDM's continuous
sigmas (`edm.py`) and the mean-reverting SDE's (`mean_reverting.py`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEDULE_KINDS = ("linear", "cosine", "vp")

# Names of the per-step coefficient tables (each a float32 buffer of length T).
COEFFICIENTS = (
    "betas",
    "alphas",
    "alpha_bars",
    "alpha_bars_prev",
    "sqrt_alpha_bars",
    "sqrt_one_minus_alpha_bars",
    "sqrt_alpha_bars_prev",
    "sqrt_one_minus_alpha_bars_prev",
    "sqrt_recip_alpha_bars",
    "sqrt_recipm1_alpha_bars",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "posterior_variance",
    "posterior_log_variance_clipped",
)


def linear_betas(steps: int, beta_start: float | None, beta_end: float | None) -> torch.Tensor:
    """DDPM's linear betas. Unless the ends are given, DDPM's 1000-step ends (1e-4, 2e-2) are
    scaled by 1000 / T (the improved-DDPM extension), so the last level is close to pure noise
    for any T. Explicit ends are used as given: `beta_start=1e-4, beta_end=2e-2` is the unscaled
    linear schedule of Diffusion-QL / DPMD-style code."""
    scale = 1000.0 / steps
    start = 1e-4 * scale if beta_start is None else beta_start
    end = 2e-2 * scale if beta_end is None else beta_end
    return torch.linspace(start, end, steps, dtype=torch.float64).clamp(max=0.999)


def cosine_betas(steps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2)."""
    x = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
    f = torch.cos((x / steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bars = f / f[0]
    return (1 - alpha_bars[1:] / alpha_bars[:-1]).clamp(max=0.999)


def vp_betas(steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> torch.Tensor:
    """The continuous VP SDE discretised to T steps, as in Diffusion-QL and DACER:
    alpha_t = exp(-beta_min / T - 0.5 (beta_max - beta_min) (2t - 1) / T^2), t = 1..T."""
    t = torch.arange(1, steps + 1, dtype=torch.float64)
    alphas = torch.exp(-beta_min / steps - 0.5 * (beta_max - beta_min) * (2 * t - 1) / steps**2)
    return 1 - alphas


class NoiseSchedule(nn.Module):
    """A variance-preserving forward process q(a_t | a_0) = N(sqrt(ab_t) a_0, (1 - ab_t) I).

    Holds no parameters; it is a module only so its tables follow the policy across devices.
    """

    def __init__(
        self,
        kind: str = "vp",
        steps: int = 20,
        *,
        beta_start: float | None = None,
        beta_end: float | None = None,
        beta_min: float = 0.1,
        beta_max: float = 10.0,
        cosine_s: float = 0.008,
    ):
        super().__init__()
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; valid kinds: {list(SCHEDULE_KINDS)}")
        if steps < 1:
            raise ValueError(f"a schedule needs at least one step, got steps={steps}")
        self.kind = kind
        self.steps = steps
        if kind == "linear":
            betas = linear_betas(steps, beta_start, beta_end)
        elif kind == "cosine":
            betas = cosine_betas(steps, cosine_s)
        else:
            betas = vp_betas(steps, beta_min, beta_max)

        alphas = 1 - betas
        alpha_bars = torch.cumprod(alphas, 0)
        alpha_bars_prev = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])
        posterior_variance = betas * (1 - alpha_bars_prev) / (1 - alpha_bars)
        # The variance is 0 at t=0 (no noise is added there); DDPM logs the next step's value
        # instead so the log stays finite.
        log_var_source = posterior_variance.clone()
        if steps > 1:
            log_var_source[0] = posterior_variance[1]
        tables = {
            "betas": betas,
            "alphas": alphas,
            "alpha_bars": alpha_bars,
            "alpha_bars_prev": alpha_bars_prev,
            "sqrt_alpha_bars": alpha_bars.sqrt(),
            "sqrt_one_minus_alpha_bars": (1 - alpha_bars).sqrt(),
            "sqrt_alpha_bars_prev": alpha_bars_prev.sqrt(),
            "sqrt_one_minus_alpha_bars_prev": (1 - alpha_bars_prev).sqrt(),
            "sqrt_recip_alpha_bars": alpha_bars.rsqrt(),
            "sqrt_recipm1_alpha_bars": (1 / alpha_bars - 1).sqrt(),
            "posterior_mean_coef1": betas * alpha_bars_prev.sqrt() / (1 - alpha_bars),
            "posterior_mean_coef2": (1 - alpha_bars_prev) * alphas.sqrt() / (1 - alpha_bars),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": log_var_source.clamp(min=1e-20).log(),
        }
        for name, values in tables.items():
            self.register_buffer(name, values.float(), persistent=False)
        # Python floats for the sampler, indexed by a Python int step.
        self.coef: dict[str, list[float]] = {k: v.tolist() for k, v in tables.items()}

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, steps={self.steps}"


def make_schedule(kind: str = "vp", steps: int = 20, **kwargs) -> NoiseSchedule:
    """Build a schedule by name ("linear", "cosine" or "vp"); ValueError lists the valid kinds."""
    return NoiseSchedule(kind, steps, **kwargs)
