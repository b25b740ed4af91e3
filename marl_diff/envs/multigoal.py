"""The multi-goal task (a multimodality check), batched in pure torch.

Each agent is a 2-D point mass that starts near the origin. `n_goals` goals sit evenly on a
circle of radius `goal_radius` (goal k at angle 2*pi*k/n_goals, so with 4 goals: index 0 is
(+r, 0), 1 is (0, +r), 2 is (-r, 0), 3 is (0, -r)). The action is a velocity in [-1, 1]^2, moved
`step_size` per unit per step. Every goal is equally good, so an optimal stochastic policy
reaches all of them; a unimodal policy collapses onto one or two.

Per-agent reward of an agent still moving: `-distance_cost * (distance to nearest goal) **
distance_power - action_cost * |a|^2`, plus `bonus` on the step it comes within
`goal_tolerance` of a goal. `distance_power: 2` with costs 1 and 30 is the original
MultiGoalEnv of soft Q-learning (Haarnoja et al. 2017), the one DACER's multimodality demo uses.
An agent that reached a goal is frozen there and earns 0 afterwards. The team reward (given to
every agent) is the mean of the per-agent rewards. The episode terminates once every agent has
reached a goal and is truncated after `max_steps`. `info["goal"]` [B, N] is the index of the goal
each agent reached (-1 if none), meaningful on the step the episode ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from marl_diff.envs.base import BatchedMultiAgentEnv, EnvSpec, ScenarioConfig, StepResult
from marl_diff.errors import ConfigError


@dataclass
class MultiGoalConfig(ScenarioConfig):
    backend: str = "multigoal"
    n_agents: int = 1
    n_goals: int = 4
    goal_radius: float = 5.0
    goal_tolerance: float = 1.0
    step_size: float = 1.0  # displacement per step at |action| = 1 (per axis)
    max_steps: int = 30
    distance_cost: float = 0.1  # c1
    distance_power: float = 1.0  # 1: linear distance cost, 2: squared
    action_cost: float = 0.05  # c2, on the normalised action in [-1, 1]^2
    bonus: float = 10.0
    init_noise: float = 0.1  # std of the start position around the origin
    bound: float = 7.0  # positions are clipped to [-bound, bound]^2


def _validate(cfg: MultiGoalConfig) -> None:
    problems = []
    if cfg.n_agents < 1:
        problems.append(f"n_agents must be >= 1 (valid range: 1 and up), got {cfg.n_agents}")
    if cfg.n_goals < 1:
        problems.append(f"n_goals must be >= 1, got {cfg.n_goals}")
    if cfg.max_steps < 1:
        problems.append(f"max_steps must be >= 1, got {cfg.max_steps}")
    for key in ("goal_radius", "goal_tolerance", "step_size"):
        if getattr(cfg, key) <= 0:
            problems.append(f"{key} must be > 0, got {getattr(cfg, key)}")
    if cfg.distance_power <= 0:
        problems.append(f"distance_power must be > 0, got {cfg.distance_power}")
    for key in ("distance_cost", "action_cost", "bonus", "init_noise"):
        if getattr(cfg, key) < 0:
            problems.append(f"{key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.bound < cfg.goal_radius:
        problems.append(f"bound ({cfg.bound}) must be >= goal_radius ({cfg.goal_radius})")
    if problems:
        raise ConfigError("invalid multigoal scenario: " + "; ".join(problems) + ".")


class MultiGoalEnv(BatchedMultiAgentEnv):
    Config = MultiGoalConfig

    def __init__(self, config: MultiGoalConfig, num_envs: int, device: torch.device, seed: int):
        _validate(config)
        self.config = config
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        n = config.n_agents
        self.spec = EnvSpec(
            agent_names=tuple(f"agent_{i}" for i in range(n)),
            obs_dims=(2,) * n,
            act_dims=(2,) * n,
            state_dim=2 * n,
            max_episode_steps=config.max_steps,
            act_low=torch.full((n, 2), -config.step_size, device=self.device),
            act_high=torch.full((n, 2), config.step_size, device=self.device),
            mode_features=tuple(range(2 * n)),  # every point mass's position
        )
        angles = torch.arange(config.n_goals, dtype=torch.float64) * (2 * math.pi / config.n_goals)
        goals = config.goal_radius * torch.stack([angles.cos(), angles.sin()], dim=-1)
        # Exact zeros / radii on the axes (cos(pi/2) is 6e-17 otherwise).
        goals = torch.where(goals.abs() < 1e-9, torch.zeros_like(goals), goals)
        self.goals = goals.to(torch.float32).to(self.device)  # [G, 2]
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(int(seed))
        shape = (self.num_envs, n)
        self._pos = torch.zeros(*shape, 2, device=self.device)
        self._reached = torch.zeros(shape, dtype=torch.bool, device=self.device)
        self._goal = torch.full(shape, -1, dtype=torch.long, device=self.device)
        self._t = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.reset()

    def _start_positions(self) -> torch.Tensor:
        shape = (self.num_envs, self.config.n_agents, 2)
        if self.config.init_noise > 0:
            return self.config.init_noise * torch.randn(
                shape, generator=self._gen, device=self.device
            )
        return torch.zeros(shape, device=self.device)

    def _observe(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._pos.clone(), self._pos.reshape(self.num_envs, -1).clone()

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if seed is not None:
            self._gen.manual_seed(int(seed))
        self._pos = self._start_positions()
        self._reached.zero_()
        self._goal.fill_(-1)
        self._t.zero_()
        return self._observe()

    def landmarks(self) -> dict[str, list]:
        return {"goals": self.goals.tolist()}

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {
            "pos": self._pos.clone(),
            "reached": self._reached.clone(),
            "goal": self._goal.clone(),
            "t": self._t.clone(),
            "generator": self._gen.get_state(),
        }

    def restore_snapshot(self, snapshot: dict[str, torch.Tensor]) -> None:
        self._pos = snapshot["pos"].to(self.device)
        self._reached = snapshot["reached"].to(self.device)
        self._goal = snapshot["goal"].to(self.device)
        self._t = snapshot["t"].to(self.device)
        self._gen.set_state(snapshot["generator"].cpu())

    def step(self, actions: torch.Tensor) -> StepResult:
        cfg = self.config
        unit = actions.clamp(-1.0, 1.0)
        active = ~self._reached  # [B, N]
        move = self.scale_actions(actions) * active[..., None]
        pos = (self._pos + move).clamp(-cfg.bound, cfg.bound)
        dist = torch.linalg.vector_norm(pos[:, :, None, :] - self.goals, dim=-1)  # [B, N, G]
        nearest, goal_index = dist.min(dim=-1)
        newly = active & (nearest <= cfg.goal_tolerance)
        per_agent = (
            -cfg.distance_cost * nearest.pow(cfg.distance_power)
            - cfg.action_cost * unit.square().sum(dim=-1)
            + cfg.bonus * newly.float()
        ) * active.float()
        team = per_agent.mean(dim=1, keepdim=True).expand(-1, cfg.n_agents).contiguous()

        reached = self._reached | newly
        goal = torch.where(newly, goal_index, self._goal)
        t = self._t + 1
        terminated = reached.all(dim=1)
        truncated = (t >= cfg.max_steps) & ~terminated
        done = terminated | truncated

        next_obs = pos.clone()
        next_state = pos.reshape(self.num_envs, -1).clone()
        info = {"goal": goal.float()}

        # Auto-reset the finished envs (branch-free: no device sync).
        keep = ~done
        self._pos = torch.where(done[:, None, None], self._start_positions(), pos)
        self._reached = reached & keep[:, None]
        self._goal = torch.where(done[:, None], torch.full_like(goal, -1), goal)
        self._t = t * keep
        obs, state = self._observe()
        return StepResult(
            obs=obs,
            state=state,
            reward=team,
            terminated=terminated,
            truncated=truncated,
            next_obs=next_obs,
            next_state=next_state,
            info=info,
        )


__all__ = ["MultiGoalConfig", "MultiGoalEnv"]
