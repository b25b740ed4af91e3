"""The diffusion core shared by every diffusion agent: noise schedules, the stacked per-agent
noise predictor and the policy (batched sampling and denoising score matching)."""

from marl_diff.diffusion.denoiser import StackedDenoiser, sinusoidal_embedding
from marl_diff.diffusion.policy import DiffusionPolicy
from marl_diff.diffusion.schedules import SCHEDULE_KINDS, NoiseSchedule, make_schedule

__all__ = [
    "SCHEDULE_KINDS",
    "DiffusionPolicy",
    "NoiseSchedule",
    "StackedDenoiser",
    "make_schedule",
    "sinusoidal_embedding",
]
