"""The noise predictor eps_theta(a_t, o, t) of every agent, evaluated in one batched call."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from marl_diff.agents.networks import PerAgentMLP


def sinusoidal_embedding(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Transformer-style embedding of (integer) steps: t [...] -> [..., 2 * len(freqs)]."""
    args = t.to(freqs.dtype).unsqueeze(-1) * freqs
    return torch.cat([args.sin(), args.cos()], dim=-1)


class Conditioning(NamedTuple):
    """What a reverse chain's steps share, computed once per chain by
    `StackedDenoiser.condition`: the first layer's pre-activation share of the observation and
    bias, laid out as the chain's samples ([members, rows, H]), and the share of each step's time
    features (and, with parameter sharing, of the agent id): [T, N, 1, H]."""

    obs_part: torch.Tensor
    time_parts: torch.Tensor


class StackedDenoiser(nn.Module):
    """eps_theta for N agents: a_t [..., N, A], obs [..., N, D], step t -> eps [..., N, A].

    As in Diffusion-QL / DACER, the step's sinusoidal embedding goes through a small MLP
    (emb -> 2 emb -> emb, mish) and is concatenated with a_t and the observation before the main
    MLP. Both MLPs are `PerAgentMLP`s, so every agent owns its parameters (or, with `share=True`,
    all agents share them and see a one-hot id) and all agents and all leading dims (batch,
    candidates) run in one call.

    A reverse chain evaluates the network T times at the same observation, and its time features
    depend on the step alone. `condition` computes their share of the first layer once per chain,
    so each step (`predict`) multiplies only the action's few columns: on MaMuJoCo Ant 2x4 (63
    observation features) this removes about 90% of the first layer's work, about 3% of a
    whole step (the hidden layers and their mish dominate). `compiled` compiles the main MLP's
    layers after the first (`StackedMLP`), where that work is.
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
        compiled: bool = False,
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
            n_agents,
            act_dim + obs_dim + time_embed_dim,
            hidden,
            act_dim,
            activation,
            share,
            compiled,
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
        t: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the noise in a_t.

        `t` is a long tensor of step indices, either one per sample ([...], shared by its agents)
        or one per agent ([..., N]). `obs` broadcasts against a_t's leading dims (e.g. a leading
        candidate dim). A reverse chain uses `condition` and `predict` instead.
        """
        lead = a_t.shape[:-1]  # [..., N]
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

    def condition(self, obs: torch.Tensor, lead: torch.Size, steps: int) -> Conditioning:
        """Precompute the shared first-layer terms of a chain over `steps` steps: obs [..., N, D],
        broadcastable to the chain's samples [*lead, N, D] (e.g. candidates over states)."""
        net = self.net
        first = net.mlp.net[0]
        a, d = self.act_dim, self.obs_dim
        n = self.n_agents
        w_obs = first.weight[:, a : a + d]
        w_time = first.weight[:, a + d : a + d + self.time_embed_dim]
        members = first.weight.shape[0]  # N, or 1 with parameter sharing
        obs_rows = obs.reshape(-1, n, d).transpose(0, 1).reshape(members, -1, d)
        obs_part = torch.baddbmm(first.bias, obs_rows, w_obs).reshape(n, -1, w_obs.shape[-1])
        obs_part = obs_part.transpose(0, 1).reshape(*obs.shape[:-1], -1)  # [..., N, H]
        obs_part = obs_part.expand(*lead, n, obs_part.shape[-1])
        obs_part = obs_part.reshape(-1, n, obs_part.shape[-1]).transpose(0, 1)  # [N, rows, H]
        step_ids = torch.arange(steps, device=obs.device)
        time_feats = self.time_features(step_ids[:, None].expand(-1, n))  # [T, N, E]
        if net.share:
            ids = first.weight[0, a + d + self.time_embed_dim :]  # [N, H]
            time_parts = time_feats @ w_time[0] + ids
            obs_part = obs_part.reshape(1, -1, obs_part.shape[-1])
        else:
            time_parts = torch.einsum("tne,neh->tnh", time_feats, w_time)
        return Conditioning(obs_part.contiguous(), time_parts[:, :, None, :])

    def predict(self, a_t: torch.Tensor, cond: Conditioning, t: int) -> torch.Tensor:
        """The noise in a_t [..., N, A] at Python-int step t, from a chain's `condition`."""
        net = self.net
        first = net.mlp.net[0]
        x = a_t.reshape(-1, self.n_agents, self.act_dim).transpose(0, 1)  # [N, rows, A]
        if net.share:
            x = x.reshape(1, -1, self.act_dim)
        h = torch.baddbmm(cond.obs_part, x, first.weight[:, : self.act_dim])
        h.view(self.n_agents, -1, h.shape[-1]).add_(cond.time_parts[t])
        return net.agents_last(net.mlp.after_first(h), a_t.shape[:-2])
