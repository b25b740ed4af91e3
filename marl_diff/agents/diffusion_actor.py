"""What every diffusion-policy agent shares: the actor settings and building its policy."""

from __future__ import annotations

from dataclasses import dataclass, field

from marl_diff.agents.base import (
    ActorCriticConfig,
    check_activation,
    check_at_least,
    check_choices,
)
from marl_diff.diffusion import SCHEDULE_KINDS, DiffusionPolicy, make_schedule
from marl_diff.envs.base import EnvSpec


@dataclass
class DiffusionActorConfig(ActorCriticConfig):
    actor_lr: float = 3e-4
    actor_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    actor_activation: str = "mish"
    time_embed_dim: int = 16
    share_parameters: bool = False
    diffusion_steps: int = 20  # T
    schedule: str = "vp"


def make_diffusion_policy(config: DiffusionActorConfig, spec: EnvSpec) -> DiffusionPolicy:
    """The agents' stacked diffusion policy, after checking the actor settings."""
    check_choices(config, {"schedule": SCHEDULE_KINDS})
    check_activation("agent.actor_activation", config.actor_activation)
    check_at_least(config, ("diffusion_steps",))
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
    )
