"""The noise predictor eps_theta(a_t, o, t) of every agent, evaluated in one batched call."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from marl_diff.agents.networks import PerAgentMLP


def sinusoidal_embedding(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Transformer-style embedding of (integer) steps: t [...] -> [..., 2 * len(freqs)]."""
    args = t.to(freqs.dtype).unsqueeze(-1) * freqs
    return torch.cat([args.sin(), args.cos()], dim=-1)


class StackedDenoiser(nn.Module):
    """eps_theta for N agents: a_t [..., N, A], obs [..., N, D], step t -> eps [..., N, A].

    As in Diffusion-QL / DACER, the step's sinusoidal embedding goes through a small MLP
    (emb -> 2 emb -> emb, mish) and is concatenated with a_t and the observation before the main
    MLP. Both MLPs are `PerAgentMLP`s, so every agent owns its parameters (or, with `share=True`,
    all agents share them and see a one-hot id) and all agents and all leading dims (batch,
    candidates) run in one call.
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256, 256),
        activation: str = "mish",
        time_embed_dim: int = 16,
        share: bool = False,
    ):
        super().__init__()
        if time_embed_dim < 2 or time_embed_dim % 2:
            raise ValueError(f"time_embed_dim must be even and >= 2, got {time_embed_dim}")
        self.n_agents, self.obs_dim, self.act_dim = n_agents, obs_dim, act_dim
        self.time_embed_dim = time_embed_dim
        half = time_embed_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.time_mlp = PerAgentMLP(
            n_agents, time_embed_dim, (2 * time_embed_dim,), time_embed_dim, "mish", share
        )
        self.net = PerAgentMLP(
            n_agents, act_dim + obs_dim + time_embed_dim, hidden, act_dim, activation, share
        )

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """Per-agent time features: t [..., N] long -> [..., N, time_embed_dim].

        Depends on t alone, so a sampler can compute it once for all T steps and reuse it.
        """
        return self.time_mlp(sinusoidal_embedding(t, self.freqs))

    def forward(
        self,
        a_t: torch.Tensor,
        obs: torch.Tensor,
        t: torch.Tensor | None = None,
        *,
        time_feat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise in a_t.

        `t` is a long tensor of step indices, either one per sample ([...], shared by its agents)
        or one per agent ([..., N]). Instead of t, precomputed `time_features` may be passed
        (anything broadcastable to [..., N, time_embed_dim]). `obs` broadcasts against a_t's
        leading dims (e.g. a leading candidate dim).
        """
        lead = a_t.shape[:-1]  # [..., N]
        if time_feat is None:
            if t is None:
                raise ValueError("pass either t or time_feat")
            if t.dim() == a_t.dim() - 2:  # one step per sample: same for all its agents
                t = t.unsqueeze(-1)
            time_feat = self.time_features(t.expand(lead))
        x = torch.cat(
            [
                a_t,
                obs.expand(*lead, obs.shape[-1]),
                time_feat.expand(*lead, time_feat.shape[-1]),
            ],
            dim=-1,
        )
        return self.net(x)
