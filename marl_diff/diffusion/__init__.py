"""The diffusion core shared by every diffusion agent: noise schedules, the stacked per-agent
noise predictor and the policies (batched sampling and denoising score matching): DDPM/DDIM
(`DiffusionPolicy`), EDM (`EDMPolicy`) and the mean-reverting SDE (`MeanRevertingPolicy`)."""

from marl_diff.diffusion.denoiser import StackedDenoiser, sinusoidal_embedding
from marl_diff.diffusion.edm import EDMPolicy
from marl_diff.diffusion.mean_reverting import MeanRevertingPolicy, MeanRevertingSchedule
from marl_diff.diffusion.policy import CHAIN_SPACINGS, DiffusionPolicy
from marl_diff.diffusion.schedules import SCHEDULE_KINDS, NoiseSchedule, make_schedule

__all__ = [
    "CHAIN_SPACINGS",
    "SCHEDULE_KINDS",
    "DiffusionPolicy",
    "EDMPolicy",
    "MeanRevertingPolicy",
    "MeanRevertingSchedule",
    "NoiseSchedule",
    "StackedDenoiser",
    "make_schedule",
    "sinusoidal_embedding",
]
