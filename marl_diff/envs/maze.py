"""Multi-route point / ant mazes (DDiffPG's multimodality tasks) as the N=1 case of the batched
interface, on gymnasium-robotics' PointMaze / AntMaze with a custom `maze_map`.

Layouts (cell (row, col); `#` wall, `.` free, `r` reset cell, `g` goal cell; world x grows to the
right, y upwards, one cell is 1 unit for the point and 4 units for the ant, the map's centre is
the origin):

two_routes (5x5, one goal behind a centre wall, reachable around it on the left or the right)::

    # # # # #
    # . r . #      r = (1, 2): the start, (0, +1) for the point
    # . # . #      the centre wall (2, 2) at (0, 0); left route via (-1, 0), right via (+1, 0)
    # . g . #      g = (3, 2): the goal, (0, -1) for the point
    # # # # #

two_goals (3x9, a corridor with the start in the middle and a goal of equal value at each end)::

    # # # # # # # # #
    # 0 . . r . . 1 #  goal 0 = (1, 1) at (-3, 0), goal 1 = (1, 7) at (+3, 0)
    # # # # # # # # #  r = (1, 4) at (0, 0); the goal cells are free cells in the maze_map

The goals are fixed per layout, so they are not part of the observation: the point's observation
is gymnasium-robotics' `observation` entry (x, y, vx, vy); the ant's is (x, y) followed by its
`observation` entry (the Ant-v5 vector without the x-y position, which AntMaze moves to
`achieved_goal`). Either way the first two dims are the x-y position: the spec's
`mode_features` are (0, 1), the state dims that describe the path (for trajectory clustering).
state = observation.

The task is episodic: the wrapped env is built with `continuing_task=False` (so it never moves
its goal), but its own goal test (within 0.45 of one noisy goal cell) and reward are replaced by
ours: an episode terminates on the first step the x-y position is within `goal_tolerance` of a
goal cell's centre (any goal of the layout), and is truncated after `max_steps`. Reward: "sparse"
gives `success_reward` on that step and 0 otherwise; "dense" (for debugging) is minus the
Euclidean distance to the nearest goal on every step. The start is the reset cell's centre plus
gymnasium-robotics' uniform noise of +-0.25 cell per axis.

Outcomes in `info` (float [B], meaningful on the step an episode ends): `success` (1 / 0) and
`mode`: on two_routes the route taken, 0 = left of the wall, 1 = right, -1 = never crossed the
wall's row (decided by the x of the last crossing of the horizontal line through the wall's
centre, so a path that turns back and goes round the other side counts as the other side; a
failed episode that crossed reports its side too, and the evaluation summaries count modes of
successful episodes only); on two_goals the index of the goal reached (-1 none).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import gymnasium as gym
import gymnasium_robotics  # noqa: F401  (registers the PointMaze / AntMaze ids)
import numpy as np
import torch

from marl_diff.envs.base import EnvSpec, ScenarioConfig
from marl_diff.envs.gymnasium import (
    VECTORIZATION_MODES,
    SingleAgentVectorEnv,
    build_vector_env,
    quiet_mujoco_warnings,
)
from marl_diff.errors import ConfigError

# robot -> registered gymnasium-robotics id whose constructor takes a custom `maze_map`
ROBOTS = {"point": "PointMaze_UMaze-v3", "ant": "AntMaze_UMaze-v5"}
REWARDS = ("sparse", "dense")


@dataclass(frozen=True)
class Layout:
    maze_map: tuple[tuple[int | str, ...], ...]  # 1 wall, 0 free, "r" reset, "g" goal (drawn)
    reset_cell: tuple[int, int]
    goal_cells: tuple[tuple[int, int], ...]
    wall_cell: tuple[int, int] | None = None  # the centre wall whose sides are the routes


LAYOUTS = {
    "two_routes": Layout(
        maze_map=(
            (1, 1, 1, 1, 1),
            (1, 0, "r", 0, 1),
            (1, 0, 1, 0, 1),
            (1, 0, "g", 0, 1),
            (1, 1, 1, 1, 1),
        ),
        reset_cell=(1, 2),
        goal_cells=((3, 2),),
        wall_cell=(2, 2),
    ),
    # The goal cells are plain free cells: gymnasium-robotics draws one "g" per reset, so the
    # goals are tested here instead.
    "two_goals": Layout(
        maze_map=(
            (1, 1, 1, 1, 1, 1, 1, 1, 1),
            (1, 0, 0, 0, "r", 0, 0, 0, 1),
            (1, 1, 1, 1, 1, 1, 1, 1, 1),
        ),
        reset_cell=(1, 4),
        goal_cells=((1, 1), (1, 7)),
    ),
}


@dataclass
class MazeConfig(ScenarioConfig):
    backend: str = "maze"
    robot: str = "point"  # point | ant
    layout: str = "two_routes"  # two_routes | two_goals
    max_steps: int = 300  # episode length (truncation)
    success_reward: float = 10.0  # sparse reward on the step a goal is reached
    goal_tolerance: float = 0.5  # success radius around a goal cell's centre, world units
    reward: str = "sparse"  # sparse | dense (minus the distance to the nearest goal)
    vectorization: str = "sync"  # sync | async


def _validate(cfg: MazeConfig) -> None:
    problems = []
    for key, valid in (
        ("robot", tuple(ROBOTS)),
        ("layout", tuple(LAYOUTS)),
        ("reward", REWARDS),
        ("vectorization", VECTORIZATION_MODES),
    ):
        value = getattr(cfg, key)
        if value not in valid:
            problems.append(
                f"bad value for 'scenario.{key}': '{value}'. Valid choices: {', '.join(valid)}"
            )
    if cfg.max_steps < 1:
        problems.append(f"'scenario.max_steps' must be >= 1, got {cfg.max_steps}")
    if not cfg.goal_tolerance > 0:
        problems.append(f"'scenario.goal_tolerance' must be > 0, got {cfg.goal_tolerance}")
    if not cfg.success_reward > 0:
        problems.append(f"'scenario.success_reward' must be > 0, got {cfg.success_reward}")
    if problems:
        raise ConfigError("invalid maze scenario: " + "; ".join(problems) + ".")


class MazeTask(gym.Wrapper):
    """One maze env with a fixed start cell and the layout's goals tested here: flat Box
    observations ((x, y) first), our reward, termination on success and truncation at the time
    limit (never both)."""

    def __init__(self, env: gym.Env, robot: str, layout: Layout, cfg: MazeConfig):
        super().__init__(env)
        maze = env.unwrapped.maze
        self.cell_size = float(maze.maze_size_scaling)
        self.goals = np.stack([maze.cell_rowcol_to_xy(np.array(c)) for c in layout.goal_cells])
        self.wall_xy = (
            None if layout.wall_cell is None else maze.cell_rowcol_to_xy(np.array(layout.wall_cell))
        )
        half = self.cell_size / 2
        self.wall_boxes = [
            (x - half, y - half, x + half, y + half)
            for i, row in enumerate(layout.maze_map)
            for j, cell in enumerate(row)
            if cell == 1
            for x, y in [maze.cell_rowcol_to_xy(np.array((i, j))).tolist()]
        ]
        self._robot = robot
        self._options = {"reset_cell": layout.reset_cell, "goal_cell": layout.goal_cells[0]}
        self._tolerance = float(cfg.goal_tolerance)
        self._dense = cfg.reward == "dense"
        self._success_reward = float(cfg.success_reward)
        inner = env.observation_space["observation"].shape[0]
        dim = inner + (2 if robot == "ant" else 0)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float64)

    def _flat(self, obs: dict) -> np.ndarray:
        if self._robot == "ant":
            return np.concatenate([obs["achieved_goal"], obs["observation"]])
        return obs["observation"]

    def reset(self, *, seed=None, options=None):
        obs, _ = self.env.reset(seed=seed, options=dict(self._options))
        return self._flat(obs), {}

    def step(self, action):
        obs, _, _, truncated, _ = self.env.step(action)
        distance = float(np.linalg.norm(self.goals - obs["achieved_goal"], axis=-1).min())
        success = distance <= self._tolerance
        if self._dense:
            reward = -distance
        else:
            reward = self._success_reward if success else 0.0
        return self._flat(obs), reward, success, bool(truncated) and not success, {}


def make_maze_task(cfg: MazeConfig) -> MazeTask:
    """One wrapped maze env for `cfg` (picklable through functools.partial for async workers)."""
    quiet_mujoco_warnings()
    layout = LAYOUTS[cfg.layout]
    env = gym.make(
        ROBOTS[cfg.robot],
        maze_map=[list(row) for row in layout.maze_map],
        continuing_task=False,
        reset_target=False,
        max_episode_steps=cfg.max_steps,
    )
    # gymnasium-robotics writes the generated MJCF to a file in the temp dir and leaves it there;
    # the model is loaded by now.
    xml = getattr(env.unwrapped, "tmp_xml_file_path", None)
    if xml and os.path.exists(xml):
        os.remove(xml)
    return MazeTask(env, cfg.robot, layout, cfg)


class MazeEnv(SingleAgentVectorEnv):
    """`num_envs` copies of one maze task, seen as one agent (see the module docstring)."""

    Config = MazeConfig

    def __init__(self, config: MazeConfig, num_envs: int, device: torch.device, seed: int):
        _validate(config)
        self.config = config
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self._seed: int | None = seed
        self.layout = LAYOUTS[config.layout]
        make = functools.partial(make_maze_task, config)
        probe = make()
        act_space, obs_space = probe.action_space, probe.observation_space
        self.cell_size = probe.cell_size
        goals, wall_xy, self._wall_boxes = probe.goals, probe.wall_xy, probe.wall_boxes
        probe.close()
        self.goals = torch.tensor(goals, dtype=torch.float32, device=self.device)  # [G, 2]
        self._goals = goals
        self._wall = wall_xy  # (x, y) of the centre wall on two_routes, else None
        self._act_shape, self._act_dtype = act_space.shape, act_space.dtype
        obs_dim = int(obs_space.shape[0])
        low = np.asarray(act_space.low, dtype=np.float32).reshape(-1)
        high = np.asarray(act_space.high, dtype=np.float32).reshape(-1)
        self.spec = EnvSpec(
            agent_names=("agent_0",),
            obs_dims=(obs_dim,),
            act_dims=(int(low.size),),
            state_dim=obs_dim,
            max_episode_steps=config.max_steps,
            act_low=torch.from_numpy(low)[None, :],
            act_high=torch.from_numpy(high)[None, :],
            mode_features=(0, 1),  # the x-y path
        )
        self._xy = np.zeros((self.num_envs, 2))  # position before the coming step
        self._side = np.full(self.num_envs, -1.0)  # two_routes: side of the last wall crossing
        self._venv = build_vector_env([make] * self.num_envs, config.vectorization)

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        obs, state = super().reset(seed)
        self._xy = state[:, :2].cpu().numpy().astype(np.float64)
        self._side.fill(-1.0)
        return obs, state

    def landmarks(self) -> dict[str, list]:
        return {"goals": self._goals.tolist(), "walls": list(self._wall_boxes)}

    def outcomes(
        self, obs: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray, done: np.ndarray
    ) -> dict[str, np.ndarray]:
        """`success` and `mode` for the step from self._xy to next_obs's x-y; then the
        positions the next step starts from (new episodes undecided)."""
        next_xy = np.asarray(next_obs[:, :2], dtype=np.float64)
        success = terminated.astype(np.float64)
        if self._wall is None:
            nearest = np.linalg.norm(next_xy[:, None, :] - self._goals, axis=-1).argmin(-1)
            mode = np.where(terminated, nearest, -1).astype(np.float64)
        else:
            wall_x, wall_y = self._wall
            crossed = (self._xy[:, 1] > wall_y) != (next_xy[:, 1] > wall_y)
            x = 0.5 * (self._xy[:, 0] + next_xy[:, 0])
            self._side = np.where(crossed, (x >= wall_x).astype(np.float64), self._side)
            mode = self._side.copy()
            self._side[done] = -1.0
        self._xy = np.array(obs[:, :2], dtype=np.float64)
        return {"success": success, "mode": mode}


__all__ = ["LAYOUTS", "ROBOTS", "MazeConfig", "MazeEnv", "MazeTask", "make_maze_task"]
