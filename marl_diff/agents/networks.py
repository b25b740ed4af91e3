"""Building blocks shared by every agent: per-agent networks and the centralised critic."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from marl_diff.nn import StackedMLP


class PerAgentMLP(nn.Module):
    """One MLP per agent, all evaluated in one batched call.

    x [..., N, in] -> [..., N, out]. With `share=True` the agents share one network and a one-hot
    agent id is appended to the input (parameter sharing is an option, not the default).
    `compiled`: see `StackedMLP`.
    """

    def __init__(
        self,
        n_agents: int,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
        share: bool = False,
        compiled: bool = False,
    ):
        super().__init__()
        self.n_agents = n_agents
        self.share = share
        extra = n_agents if share else 0
        members = 1 if share else n_agents
        self.mlp = StackedMLP(
            members, in_features + extra, hidden, out_features, activation, compiled=compiled
        )

    def agents_first(self, x: torch.Tensor) -> torch.Tensor:
        """[..., N, F] -> [N, rows, F], rows = the flattened leading dims, in the member-major
        layout the stacked layers take (one member with `share`: [1, N * rows, F + N])."""
        n, features = x.shape[-2], x.shape[-1]
        agents_first = x.reshape(-1, n, features).transpose(0, 1)
        if not self.share:
            return agents_first
        ids = torch.eye(n, device=x.device, dtype=x.dtype)[:, None, :]
        agents_first = torch.cat([agents_first, ids.expand(-1, agents_first.shape[1], -1)], -1)
        return agents_first.reshape(1, -1, agents_first.shape[-1])

    def agents_last(self, out: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        """The inverse layout: [members, rows', O] -> [*lead, N, O]."""
        out = out.reshape(self.n_agents, -1, out.shape[-1])
        return out.transpose(0, 1).reshape(*lead, self.n_agents, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.agents_last(self.mlp(self.agents_first(x)), x.shape[:-2])


CRITIC_REDUCTIONS = ("min", "mean", "lcb")


class CentralCritic(nn.Module):
    """K Q networks over (global state, joint action), stacked in one call, and the reduction
    that turns their K estimates into the one value the agents use.

    Reductions: "min" over the members (the clipped double-Q of SAC / TD3 with K = 2), "mean",
    or "lcb", the lower confidence bound mean - `lcb_beta` std over the members (the Q-ensemble
    policy's pessimism; std with Bessel's correction, as torch's default). Joint actions are the
    padded per-agent actions flattened [N * A]; padded entries are always zero so they carry no
    information. `heads` gives each network's `out_features` outputs. `layer_norm` puts a
    LayerNorm after every hidden layer (DTQL's Q heads).

    `per_agent`: each network outputs one value per agent, Q_i for agent i's own reward, from
    the same centralised input (MADDPG's and MASAC's critics with individual rewards);
    `forward` and `value` then end in an agent dim [..., N]. Otherwise one value, the team's.
    """

    def __init__(
        self,
        state_dim: int,
        n_agents: int,
        act_dim: int,
        hidden: Sequence[int],
        n_q: int = 2,
        activation: str = "relu",
        out_features: int = 1,
        reduction: str = "min",
        lcb_beta: float = 4.0,
        layer_norm: bool = False,
        per_agent: bool = False,
    ):
        super().__init__()
        if per_agent and out_features != 1:
            raise ValueError("a per-agent critic has one output per agent (out_features=1)")
        if reduction not in CRITIC_REDUCTIONS:
            raise ValueError(
                f"critic reduction must be one of {', '.join(CRITIC_REDUCTIONS)}, not {reduction!r}"
            )
        if reduction == "lcb" and n_q < 2:
            raise ValueError("the lcb reduction needs at least 2 critic members")
        self.n_q = n_q
        self.state_dim = state_dim
        self.per_agent = per_agent
        self.reduction, self.lcb_beta = reduction, lcb_beta
        outputs = n_agents if per_agent else out_features
        self.q = StackedMLP(
            n_q, state_dim + n_agents * act_dim, hidden, outputs, activation, layer_norm
        )

    def reduce(self, q: torch.Tensor) -> torch.Tensor:
        """The members' estimates [K, ...] -> the value [...] the agents use; one member's
        estimate is the value as it is (TD3's actor reads Q1 alone)."""
        if q.shape[0] == 1:
            return q[0]
        if self.reduction == "min":
            return q.min(0).values
        if self.reduction == "mean":
            return q.mean(0)
        return q.mean(0) - self.lcb_beta * q.std(0)

    def value(
        self, state: torch.Tensor, joint_action: torch.Tensor, members: int | None = None
    ) -> torch.Tensor:
        """The reduced Q: state [..., S], joint_action [..., N, A] -> [...] ([..., N] per
        agent). `members`: only the first that many networks run, and their estimates are
        reduced."""
        return self.reduce(self(state, joint_action, members))

    def heads(
        self, state: torch.Tensor, joint_action: torch.Tensor, members: int | None = None
    ) -> torch.Tensor:
        """state [..., S], joint_action [..., N, A] -> [n_q, ..., out_features] ([members,
        ...] for the first `members` networks only).

        `state` may have size-1 (or fewer) leading dims where the joint actions vary, e.g. one
        state for many candidate joint actions: the state's share of the first layer is then
        computed once per state and broadcast, not once per joint action.
        """
        k = self.n_q if members is None else members
        lead = joint_action.shape[:-2]
        first = self.q.net[0]
        weight, bias = first.weight[:k], first.bias[:k]
        s = self.state_dim
        state_rows = state.reshape(1, -1, s).expand(k, -1, -1)
        state_part = torch.baddbmm(bias, state_rows, weight[:, :s])  # [k, rows, H]
        state_lead = (1,) * (len(lead) - (state.dim() - 1)) + tuple(state.shape[:-1])
        actions = joint_action.reshape(1, -1, weight.shape[1] - s).expand(k, -1, -1)
        h = torch.bmm(actions, weight[:, s:])  # [k, rows, H]
        h = h.view(k, *lead, -1).add_(state_part.view(k, *state_lead, -1))
        out = self.q.after_first(h.view(k, -1, h.shape[-1]))
        return out.view(k, *lead, -1)

    def forward(
        self, state: torch.Tensor, joint_action: torch.Tensor, members: int | None = None
    ) -> torch.Tensor:
        """state [..., S], joint_action [..., N, A] -> Q values [n_q, ...] ([n_q, ..., N] per
        agent; `members` in place of n_q for the first that many networks only)."""
        out = self.heads(state, joint_action, members)
        return out if self.per_agent else out[..., 0]

    def grouped_heads(
        self, state: torch.Tensor, joint_action: torch.Tensor, per_group: int
    ) -> torch.Tensor:
        """Members in consecutive groups of `per_group`, each group on its own rows:
        state [G, b, S], joint_action [G, b, N, A] -> outputs [G, per_group, b, out_features],
        group g evaluated by members g * per_group ... (g + 1) * per_group - 1 only (DDiffPG: a
        twin critic per mode on that mode's share of the batch, in one call). Members past the
        G groups are not run."""
        groups, rows = state.shape[:2]
        x = torch.cat([state, joint_action.flatten(-2)], -1).repeat_interleave(per_group, 0)
        out = self.q(x, members=groups * per_group)
        return out.view(groups, per_group, rows, out.shape[-1])


def substitute_each_agent(base: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Joint actions in which agent i plays `own[..., i]` and the others play `base`.

    base [B, N, A], own [..., B, N, A] -> [..., B, N(i), N, A], entry i holding the joint action
    used to evaluate Q_i(s, a_i) (the other agents' actions come from `base`).
    """
    n = base.shape[-2]
    eye = torch.eye(n, dtype=torch.bool, device=base.device)[:, :, None]  # [N(i), N, 1]
    return torch.where(eye, own.unsqueeze(-3), base.unsqueeze(-3))
