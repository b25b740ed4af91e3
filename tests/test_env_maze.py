"""Maze backend (PointMaze / AntMaze with fixed multi-route layouts): interface, auto-reset,
success / truncation, route and goal outcomes with a scripted waypoint controller, errors,
outcome summaries and the catalog YAMLs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from marl_diff.envs import make_env
from marl_diff.envs.maze import MazeConfig, make_maze_task
from marl_diff.errors import ConfigError
from marl_diff.runners.evaluation import evaluate_episodes, summarize_outcomes

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
MAZE_YAMLS = ["pointmaze_two_routes", "pointmaze_two_goals", "antmaze_two_routes"]
# Waypoints (point-maze world coordinates, one cell = 1 unit, the map centred on the origin).
LEFT_ROUTE = [(-1.0, 1.0), (-1.0, -1.0), (0.0, -1.0)]
RIGHT_ROUTE = [(1.0, 1.0), (1.0, -1.0), (0.0, -1.0)]
TO_GOAL_0 = [(-3.0, 0.0)]
TO_GOAL_1 = [(3.0, 0.0)]


def maze(num_envs=2, seed=0, **overrides):
    scenario = {"name": "maze_test", "backend": "maze"} | overrides
    return make_env(scenario, num_envs=num_envs, device="cpu", seed=seed)


class Follower:
    """Scripted point-mass controller: a damped P-controller toward each env's next waypoint,
    restarting its route when that env's episode ends."""

    def __init__(self, routes, gain=4.0, damping=0.5, reach=0.15):
        self.routes = [np.asarray(route, dtype=np.float64) for route in routes]
        self.index = np.zeros(len(routes), dtype=int)
        self.gain, self.damping, self.reach = gain, damping, reach

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        xy, vel = obs[:, 0, :2].double().numpy(), obs[:, 0, 2:4].double().numpy()
        actions = np.zeros((len(self.routes), 2))
        for i, route in enumerate(self.routes):
            if np.linalg.norm(route[self.index[i]] - xy[i]) < self.reach:
                self.index[i] = min(self.index[i] + 1, len(route) - 1)
            target = route[self.index[i]]
            actions[i] = np.clip(self.gain * (target - xy[i]) - self.damping * vel[i], -1, 1)
        return torch.tensor(actions, dtype=torch.float32)[:, None, :]

    def episode_ended(self, done: torch.Tensor) -> None:
        self.index[done.numpy()] = 0


def run_first_episodes(env, follower, limit):
    """Step until every env finished its first episode; per env: (length, reward sum, the
    StepResult fields of the final step)."""
    obs, _ = env.reset()
    ended = {}
    returns = torch.zeros(env.num_envs)
    for t in range(1, limit + 1):
        out = env.step(follower(obs))
        returns += out.reward[:, 0]
        done = out.terminated | out.truncated
        for i in done.nonzero().flatten().tolist():
            if i not in ended:
                ended[i] = {
                    "length": t,
                    "return": float(returns[i]),
                    "reward": float(out.reward[i, 0]),
                    "terminated": bool(out.terminated[i]),
                    "truncated": bool(out.truncated[i]),
                    "success": float(out.info["success"][i]),
                    "mode": float(out.info["mode"][i]),
                    "final_xy": out.next_obs[i, 0, :2].clone(),
                    "next_start": out.obs[i, 0].clone(),
                }
        follower.episode_ended(done)
        obs = out.obs
        if len(ended) == env.num_envs:
            return ended
    raise AssertionError(f"only envs {sorted(ended)} finished within {limit} steps")


def test_spec_shapes_and_outcome_keys():
    env = maze(num_envs=3, layout="two_routes", max_steps=50)
    try:
        spec = env.spec
        assert spec.n_agents == 1 and spec.obs_dims == (4,) and spec.act_dims == (2,)
        assert spec.state_dim == 4 and spec.max_episode_steps == 50
        assert env.spec.mode_features == (0, 1)
        assert torch.allclose(env.goals, torch.tensor([[0.0, -1.0]]))
        obs, state = env.reset()
        assert obs.shape == (3, 1, 4) and state.shape == (3, 4) and obs.dtype == torch.float32
        assert torch.equal(obs[:, 0], state)
        # the reset cell's centre (0, 1) plus at most 0.25 of noise per axis, at rest
        assert (obs[:, 0, :2] - torch.tensor([0.0, 1.0])).abs().max() <= 0.25
        assert torch.equal(obs[:, 0, 2:], torch.zeros(3, 2))
        out = env.step(env.random_actions())
        assert out.obs.shape == (3, 1, 4) and out.next_obs.shape == (3, 1, 4)
        assert out.state.shape == (3, 4) and out.next_state.shape == (3, 4)
        assert out.reward.shape == (3, 1) and out.reward.dtype == torch.float32
        assert out.terminated.dtype == torch.bool and out.truncated.shape == (3,)
        assert set(out.info) == {"success", "mode"}
        for value in out.info.values():
            assert value.shape == (3,) and value.dtype == torch.float32
        assert torch.equal(out.obs, out.next_obs)  # nothing ended yet
        assert torch.equal(out.reward, torch.zeros(3, 1))  # sparse, far from the goal
    finally:
        env.close()


def test_actions_are_clipped_to_the_bounds_and_match_the_raw_env():
    env = maze(num_envs=1, seed=7, layout="two_goals")
    raw = make_maze_task(MazeConfig(layout="two_goals"))
    try:
        assert torch.equal(env.spec.act_low, -torch.ones(1, 2))
        assert torch.equal(env.spec.act_high, torch.ones(1, 2))
        obs, _ = env.reset()
        raw_obs, _ = raw.reset(seed=7)  # the vector env seeds its first copy with the seed
        np.testing.assert_allclose(obs[0, 0].numpy(), raw_obs, rtol=1e-6)
        for action in ([0.5, -0.25], [3.0, -3.0], [-1.0, 1.0]):
            out = env.step(torch.tensor([[action]]))
            raw_obs, raw_reward, *_ = raw.step(np.clip(np.array(action, np.float32), -1, 1))
            np.testing.assert_allclose(out.next_obs[0, 0].numpy(), raw_obs, rtol=1e-5, atol=1e-6)
            assert out.reward[0, 0].item() == raw_reward
    finally:
        env.close()
        raw.close()


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_truncation_at_max_steps_with_true_final_obs(vectorization):
    env = maze(num_envs=2, seed=3, max_steps=6, vectorization=vectorization)
    raw = make_maze_task(MazeConfig(max_steps=6))
    try:
        env.reset()
        raw.reset(seed=3)
        push = torch.tensor([[[-1.0, 0.0]], [[-1.0, 0.0]]])
        for t in range(6):
            out = env.step(push)
            raw_obs, _, raw_term, raw_trunc, _ = raw.step(np.array([-1.0, 0.0], np.float32))
            assert bool(out.truncated[0]) == raw_trunc == (t == 5)
            assert not out.terminated.any() and not raw_term
        assert out.truncated.all() and not out.terminated.any()
        assert torch.equal(out.info["success"], torch.zeros(2))
        assert torch.equal(out.info["mode"], -torch.ones(2))  # never reached the wall's row
        # next_obs: the true final observation (moving left); obs: the next episode's start
        np.testing.assert_allclose(out.next_obs[0, 0].numpy(), raw_obs, rtol=1e-5, atol=1e-6)
        assert torch.equal(out.next_state, out.next_obs[:, 0])
        assert (out.next_obs[:, 0, 2] < -1.0).all()
        raw_start, _ = raw.reset()  # auto-reset continues the copy's random stream
        np.testing.assert_allclose(out.obs[0, 0].numpy(), raw_start, rtol=1e-6)
        assert torch.equal(out.obs[:, 0, 2:], torch.zeros(2, 2))
        out = env.step(push)
        assert not (out.truncated | out.terminated).any()
    finally:
        env.close()
        raw.close()


def test_landmarks_are_the_maps_walls_and_goals_in_world_coordinates():
    """The 5x5 map has 17 wall cells (16 border, 1 centre); one cell is one unit, centred on
    the origin, so the centre wall is the unit box around (0, 0) and the goal cell is (0, -1)."""
    env = maze(num_envs=1, layout="two_routes")
    try:
        marks = env.landmarks()
    finally:
        env.close()
    assert len(marks["walls"]) == 17
    assert (-0.5, -0.5, 0.5, 0.5) in [tuple(round(v, 6) for v in box) for box in marks["walls"]]
    assert marks["goals"] == [[0.0, -1.0]]
    xs = [v for box in marks["walls"] for v in box[::2]]
    assert min(xs) == -2.5 and max(xs) == 2.5


def test_two_routes_left_is_mode_0_and_right_is_mode_1():
    env = maze(num_envs=2, seed=1, layout="two_routes", max_steps=250)
    try:
        ends = run_first_episodes(env, Follower([LEFT_ROUTE, RIGHT_ROUTE]), 250)
        for i, mode in ((0, 0.0), (1, 1.0)):
            end = ends[i]
            assert end["terminated"] and not end["truncated"]
            assert end["success"] == 1.0 and end["mode"] == mode
            assert end["reward"] == 10.0 and end["return"] == 10.0  # sparse: only on success
            assert torch.linalg.vector_norm(end["final_xy"] - torch.tensor([0.0, -1.0])) <= 0.5
            # auto-reset: the next episode starts at rest in the reset cell
            assert (end["next_start"][:2] - torch.tensor([0.0, 1.0])).abs().max() <= 0.25
            assert torch.equal(end["next_start"][2:], torch.zeros(2))
            assert 80 <= end["length"] <= 130
    finally:
        env.close()


def test_two_routes_mode_is_the_side_of_the_last_wall_crossing():
    # down the left side past the wall's row, back up, then round the right: mode 1
    detour = [(-1.0, 1.0), (-1.0, -0.4), (-1.0, 1.0), (1.0, 1.0), (1.0, -1.0), (0.0, -1.0)]
    env = maze(num_envs=1, seed=2, layout="two_routes", max_steps=400)
    try:
        end = run_first_episodes(env, Follower([detour]), 400)[0]
        assert end["success"] == 1.0 and end["mode"] == 1.0
    finally:
        env.close()


def test_two_goals_each_goal_ends_the_episode_with_its_index():
    env = maze(num_envs=2, seed=4, layout="two_goals", max_steps=150)
    try:
        assert torch.allclose(env.goals, torch.tensor([[-3.0, 0.0], [3.0, 0.0]]))
        ends = run_first_episodes(env, Follower([TO_GOAL_0, TO_GOAL_1]), 150)
        for i in (0, 1):
            end = ends[i]
            assert end["terminated"] and not end["truncated"]
            assert end["success"] == 1.0 and end["mode"] == float(i)
            assert end["reward"] == 10.0 and end["return"] == 10.0
            assert torch.linalg.vector_norm(end["final_xy"] - env.goals[i]) <= 0.5
            assert end["next_start"][:2].abs().max() <= 0.25  # back in the middle
            assert 45 <= end["length"] <= 80
    finally:
        env.close()


def test_dense_reward_is_minus_the_distance_to_the_nearest_goal():
    env = maze(num_envs=3, layout="two_goals", reward="dense", success_reward=5.0)
    try:
        env.reset()
        out = env.step(torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]], [[0.0, 0.0]]]))
        xy = out.next_obs[:, 0, :2]
        expected = -torch.cdist(xy, env.goals).min(dim=1).values
        assert torch.allclose(out.reward[:, 0], expected, atol=1e-5)
    finally:
        env.close()


def test_evaluation_reports_success_rate_and_modes():
    class ScriptedAgent:
        def __init__(self, follower):
            self.follower = follower

        def act(self, obs, explore=False):
            return self.follower(obs)

    env = maze(num_envs=2, seed=5, layout="two_goals", max_steps=150)
    try:
        # each copy plays its own goal; a finished copy restarts its route (index reset below)
        follower = Follower([TO_GOAL_0, TO_GOAL_1])
        agent = ScriptedAgent(follower)
        original_step = env.step

        def step(actions):
            out = original_step(actions)
            follower.episode_ended(out.terminated | out.truncated)
            return out

        env.step = step
        report = evaluate_episodes(agent, env, episodes=4, seed=0)
    finally:
        env.close()
    assert report["success_rate"] == 1.0
    assert report["distinct_modes"] == 2
    assert report["mode_counts"] == {"0": 2, "1": 2}
    assert report["mode_shares"] == {"0": 0.5, "1": 0.5}


def test_summarize_outcomes_counts_modes():
    summary = summarize_outcomes(
        {"success": [1.0, 1.0, 0.0, 1.0, 0.0], "mode": [0.0, 1.0, -1.0, 0.0, -1.0]}
    )
    assert summary["success_rate"] == pytest.approx(0.6)
    assert summary["distinct_modes"] == 2
    assert summary["mode_counts"] == {"0": 2, "1": 1}
    assert summary["mode_shares"] == {"0": pytest.approx(0.4), "1": pytest.approx(0.2)}
    assert "goal_counts" not in summary and "win_rate" not in summary
    assert summarize_outcomes({"mode": [-1.0, -1.0]})["distinct_modes"] == 0
    # a failed episode that went round the wall on the right has not reached mode 1
    failed = summarize_outcomes({"success": [1.0, 0.0], "mode": [0.0, 1.0]})
    assert failed["distinct_modes"] == 1 and failed["mode_counts"] == {"0": 1}
    assert failed["mode_shares"] == {"0": 0.5} and failed["success_rate"] == 0.5
    # without success flags every mode >= 0 counts
    assert summarize_outcomes({"mode": [0.0, 1.0, 1.0]})["mode_counts"] == {"0": 1, "1": 2}
    # the existing keys are unchanged
    goals = summarize_outcomes({"goal": [[0.0], [2.0]]})
    assert goals["distinct_goals"] == 2 and "distinct_modes" not in goals
    assert goals["goal_combinations"] == 2


def test_goal_combinations_count_team_outcomes_where_every_agent_reached_a_goal():
    team = [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [2.0, -1.0], [3.0, 3.0]]
    summary = summarize_outcomes({"goal": team})
    assert summary["goal_combinations"] == 3  # (0, 1), (1, 0), (3, 3); (2, -1) is no team goal
    assert summary["distinct_goals"] == 4


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("robot", "car", ["scenario.robot", "'car'", "point", "ant"]),
        ("layout", "three_routes", ["scenario.layout", "two_routes", "two_goals"]),
        ("reward", "shaped", ["scenario.reward", "sparse", "dense"]),
        ("vectorization", "threads", ["scenario.vectorization", "sync", "async"]),
        ("max_steps", 0, ["max_steps", ">= 1"]),
        ("goal_tolerance", 0.0, ["goal_tolerance", "> 0"]),
        ("success_reward", -1.0, ["success_reward", "> 0"]),
        ("bogus", 1, ["scenario.bogus", "layout", "robot"]),
    ],
)
def test_bad_config_values_raise_config_error(key, value, named):
    with pytest.raises(ConfigError) as info:
        maze(num_envs=1, **{key: value})
    for text in named:
        assert text in str(info.value)


def test_several_problems_are_reported_together():
    with pytest.raises(ConfigError, match="robot.*layout"):
        maze(num_envs=1, robot="car", layout="spiral")


@pytest.mark.parametrize("name", MAZE_YAMLS)
def test_catalog_yaml_loads_and_steps(name):
    cfg = OmegaConf.to_container(OmegaConf.load(SCENARIOS / f"{name}.yaml"))
    assert cfg["name"] == name and cfg["backend"] == "maze"
    env = make_env(cfg, num_envs=2, device="cpu", seed=0)
    try:
        obs, state = env.reset()
        ant = cfg["robot"] == "ant"
        assert env.spec.obs_dims == ((107,) if ant else (4,))
        assert env.spec.act_dims == ((8,) if ant else (2,))
        assert obs.shape == (2, 1, env.spec.obs_dim) and state.shape == (2, env.spec.state_dim)
        # the first two dims are x, y: in the reset cell (4 units wide for the ant)
        cell = 4.0 if ant else 1.0
        start = torch.tensor([0.0, cell] if cfg["layout"] == "two_routes" else [0.0, 0.0])
        assert (obs[:, 0, :2] - start).abs().max() <= 0.25 * cell + 1e-6
        for _ in range(3):
            out = env.step(env.random_actions())
        assert torch.isfinite(out.obs).all() and out.reward.shape == (2, 1)
        assert env.spec.max_episode_steps == cfg["max_steps"]
    finally:
        env.close()
