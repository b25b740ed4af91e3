"""The one batched multi-agent environment interface every backend implements.

Conventions (all tensors on the env's torch device, batch first):
- Agents may be heterogeneous. Per-agent observations and actions are padded to the largest
  agent's size and stacked: obs [B, N, D_max], actions [B, N, A_max]. `EnvSpec.obs_dims` /
  `act_dims` say how much of each row is real; padded entries are always zero.
- Actions enter `step` normalised to [-1, 1]; the backend scales them to its own bounds.
- `state` [B, S] is the global state for the centralised critic: the env's own state where it
  has one, else the concatenated (unpadded) observations.
- `reward` is [B, N]; `terminated` and `truncated` are [B] booleans kept apart, so a timeout
  is never treated as a terminal when bootstrapping.
- Auto-reset happens inside `step`, in the same call: for every env that finished, `next_obs`
  / `next_state` hold the true final observation (for the replay buffer) while `obs` / `state`
  already hold the first observation of the next episode (for acting).
- `info` holds per-env episode outcomes (e.g. which goal was reached) as float tensors of shape
  [B] or [B, N]; they are meaningful only where the episode ended on this step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch


@dataclass
class ScenarioConfig:
    """Keys every scenario YAML has; each backend's `Config` extends this."""

    name: str = "unnamed"
    backend: str = "unknown"
    default_runner: str = "off_policy"  # runner YAML used when the command line names none
    # Per-family agent hyperparameters, {agent name: {key: value}}, applied unless the command
    # line sets the same `agent.<key>` (e.g. the multi-goal task's entropy target for ddpl).
    agent_defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EnvSpec:
    agent_names: tuple[str, ...]
    obs_dims: tuple[int, ...]
    act_dims: tuple[int, ...]
    state_dim: int
    max_episode_steps: int
    # Per-agent env action bounds [N, A_max]; padded entries are -1 / 1.
    act_low: torch.Tensor = field(repr=False, compare=False)
    act_high: torch.Tensor = field(repr=False, compare=False)
    # Which state dims describe the team's behaviour mode (positions: a maze's x-y, every point
    # mass of multigoal), for agents that cluster trajectories into modes; () where unknown.
    mode_features: tuple[int, ...] = ()

    @property
    def n_agents(self) -> int:
        return len(self.agent_names)

    @property
    def obs_dim(self) -> int:
        return max(self.obs_dims)

    @property
    def act_dim(self) -> int:
        return max(self.act_dims)

    @property
    def homogeneous(self) -> bool:
        return len(set(self.obs_dims)) == 1 and len(set(self.act_dims)) == 1

    def obs_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[N, D_max] bool: which observation entries are real."""
        return _dims_mask(self.obs_dims, device)

    def act_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[N, A_max] bool: which action entries are real."""
        return _dims_mask(self.act_dims, device)

    def summary(self) -> dict:
        """Plain description, stored in checkpoints to detect incompatible resumes."""
        return {
            "agent_names": list(self.agent_names),
            "obs_dims": list(self.obs_dims),
            "act_dims": list(self.act_dims),
            "state_dim": self.state_dim,
        }


def _dims_mask(dims: Sequence[int], device) -> torch.Tensor:
    return (
        torch.arange(max(dims), device=device)[None, :] < torch.tensor(dims, device=device)[:, None]
    )


class StepResult(NamedTuple):
    obs: torch.Tensor  # [B, N, D] observation to act on next (already reset where done)
    state: torch.Tensor  # [B, S]
    reward: torch.Tensor  # [B, N]
    terminated: torch.Tensor  # [B] bool
    truncated: torch.Tensor  # [B] bool
    next_obs: torch.Tensor  # [B, N, D] true successor observation (for the buffer)
    next_state: torch.Tensor  # [B, S]
    info: dict[str, torch.Tensor]


def episode_success(result: StepResult) -> torch.Tensor:
    """[B] bool: which copies' episodes ending at this step succeeded: the scenario's `success`
    outcome (the mazes), else every agent at a goal (`goal`, multigoal), else termination."""
    info = result.info
    if "success" in info:
        return info["success"] > 0.5
    if "goal" in info:
        goal = info["goal"]
        return (goal >= 0).all(-1) if goal.dim() > 1 else goal >= 0
    return result.terminated


def pad_stack(per_agent: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """Stack per-agent [B, d_i] tensors into [B, N, width], zero-padding the last dim."""
    if all(x.shape[-1] == width for x in per_agent):
        return torch.stack(list(per_agent), dim=1)
    return torch.stack(
        [torch.nn.functional.pad(x, (0, width - x.shape[-1])) for x in per_agent], dim=1
    )


def unpad(stacked: torch.Tensor, dims: Sequence[int]) -> list[torch.Tensor]:
    """Inverse of pad_stack: [B, N, width] -> list of [B, d_i]."""
    return [stacked[:, i, :d] for i, d in enumerate(dims)]


def discrete_from_logits(
    logits: torch.Tensor, available: torch.Tensor | None = None
) -> torch.Tensor:
    """The continuous relaxation every backend uses for discrete action spaces.

    A discrete agent with n actions is presented to the agents as an n-dim continuous action in
    [-1, 1] (one score per action), so diffusion and Gaussian policies need no special case. The
    env takes the best-scoring available action: logits [..., n], available [..., n] bool ->
    action index [...] (long). A state with no available action falls back to index 0.
    """
    if available is not None:
        logits = logits.masked_fill(~available, float("-inf"))
    return logits.argmax(-1)


class BatchedMultiAgentEnv(ABC):
    """A batch of `num_envs` copies of one multi-agent task (see the module docstring)."""

    spec: EnvSpec
    num_envs: int
    device: torch.device
    # True for simulators that allow one instance per process (Isaac Lab): the runner then
    # evaluates on the training env instead of building a second one.
    single_instance: bool = False

    @abstractmethod
    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reset every copy; returns (obs [B, N, D], state [B, S])."""

    @abstractmethod
    def step(self, actions: torch.Tensor) -> StepResult:
        """Advance every copy by one step with actions [B, N, A] in [-1, 1]."""

    def close(self) -> None:
        """Release simulator resources (processes, GPU memory)."""

    def landmarks(self) -> dict[str, list]:
        """What a picture of the plane of the mode features (`EnvSpec.mode_features`) should
        show behind the agents' paths: `goals` [(x, y)] and `walls` [(x_min, y_min, x_max,
        y_max)]; empty where the scenario has no such plane."""
        return {}

    def snapshot(self) -> dict[str, torch.Tensor] | None:
        """The episodes in flight (simulator state, step counters, random streams) as tensors,
        so that a resumed run continues them exactly; None where the simulator cannot be
        captured this way (a resumed run then starts fresh episodes)."""
        return None

    def restore_snapshot(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Put back what `snapshot` returned (same scenario and number of copies)."""
        raise NotImplementedError(f"{type(self).__name__} has no snapshots")

    def scale_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Map [-1, 1] actions to the env's bounds (padded entries stay meaningless)."""
        low = self.spec.act_low.to(actions.device)
        high = self.spec.act_high.to(actions.device)
        return low + (actions.clamp(-1.0, 1.0) + 1.0) * 0.5 * (high - low)

    def random_actions(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform actions in [-1, 1] with padded entries zeroed, [B, N, A]."""
        shape = (self.num_envs, self.spec.n_agents, self.spec.act_dim)
        actions = torch.rand(shape, device=self.device, generator=generator) * 2.0 - 1.0
        if not self.spec.homogeneous:
            actions = actions * self.spec.act_mask(self.device)
        return actions
