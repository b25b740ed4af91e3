"""Training loops by kind. A runner YAML names its `kind`."""

from marl_diff.runners.base import Runner, RunnerConfig, eval_seed
from marl_diff.runners.off_policy import OffPolicyConfig, OffPolicyRunner
from marl_diff.runners.offline import OfflineConfig, OfflineRunner

DEFAULT_KIND = "off_policy"  # the kind of a runner YAML that names none
RUNNERS = {
    "off_policy": (OffPolicyRunner, OffPolicyConfig),
    "offline": (OfflineRunner, OfflineConfig),
}

__all__ = [
    "DEFAULT_KIND",
    "RUNNERS",
    "OffPolicyConfig",
    "OffPolicyRunner",
    "OfflineConfig",
    "OfflineRunner",
    "Runner",
    "RunnerConfig",
    "eval_seed",
]
