"""Training loops by kind. A runner YAML names its `kind`."""

from marl_diff.runners.off_policy import OffPolicyConfig, OffPolicyRunner

RUNNERS = {"off_policy": (OffPolicyRunner, OffPolicyConfig)}

__all__ = ["RUNNERS", "OffPolicyConfig", "OffPolicyRunner"]
