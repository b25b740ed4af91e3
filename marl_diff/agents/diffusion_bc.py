"""Diffusion behaviour cloning: each agent's diffusion policy fitted to the dataset's actions by
denoising score matching, with no critic. It is the baseline the offline RL agents must beat:
on mixed-quality data it reproduces the mixture, while DTQL and the Q-ensemble policy lean
toward the better actions.

Acting samples the policy (decentralised: agent i's action depends on o_i alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from marl_diff.agents.base import Agent
from marl_diff.agents.diffusion_actor import DiffusionPolicyConfig, make_diffusion_policy
from marl_diff.buffer import Batch
from marl_diff.envs.base import EnvSpec


@dataclass
class DiffusionBCConfig(DiffusionPolicyConfig):
    grad_clip: float = 0.0  # 0 = no clipping


class DiffusionBCAgent(Agent):
    Config = DiffusionBCConfig
    regime = "offline"

    def __init__(self, config: DiffusionBCConfig, spec: EnvSpec, device: torch.device):
        super().__init__(config, spec, device)
        self.policy = make_diffusion_policy(config, spec)
        self.to(device)
        self.optimizers["actor"] = self.adam(self.policy.parameters(), config.actor_lr)

    def sample_policy(self, obs: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return self.policy.sample(obs, steps=cfg.sample_steps or None, eta=cfg.sample_eta)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool, state: torch.Tensor | None = None):
        return self.sample_policy(obs)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        loss = self.policy.dsm_loss(batch.action, batch.obs).mean(0).sum()
        opt = self.optimizers["actor"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip)
        opt.step()
        return {"loss/bc": loss.detach()}
