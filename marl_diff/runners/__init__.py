"""Training loops by kind. A runner YAML names its `kind`."""

from marl_diff.runners.base import Runner, RunnerConfig, eval_seed
from marl_diff.runners.off_policy import OffPolicyConfig, OffPolicyRunner
from marl_diff.runners.offline import OfflineConfig, OfflineRunner

RUNNERS = {
    "off_policy": (OffPolicyRunner, OffPolicyConfig),
    "offline": (OfflineRunner, OfflineConfig),
}

__all__ = [
    "RUNNERS",
    "OffPolicyConfig",
    "OffPolicyRunner",
    "OfflineConfig",
    "OfflineRunner",
    "Runner",
    "RunnerConfig",
    "eval_seed",
]
