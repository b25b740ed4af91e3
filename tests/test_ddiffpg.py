"""DDiffPG's parts by hand: the grouped stacked critic, the C51 projection, target-action
improvement, trajectories and modes from the observe hook, critic inheritance on reclustering."""

from __future__ import annotations

import pytest
import torch
from conftest import make_spec

from marl_diff.agents import make_agent
from marl_diff.agents.networks import CentralCritic
from marl_diff.buffer import Batch, ReplayBuffer
from marl_diff.envs.base import StepResult
from marl_diff.errors import ConfigError
from marl_diff.run import compose

pytest.importorskip("dtaidistance")


def agent_for(spec, **overrides):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose(["scenario=pendulum", "agent=ddiffpg"]).agent)
    tiny = {
        "actor_hidden": [16, 16],
        "critic_hidden": [16, 16],
        "diffusion_steps": 3,
        "max_modes": 3,
        "critic_atoms": 11,
        "mode_features": [0, 1],
        "recluster_every": 10**9,
    }
    cfg.update({**tiny, **overrides})
    return make_agent(cfg, spec, "cpu")


def test_grouped_critic_runs_each_group_on_its_own_rows_only():
    torch.manual_seed(0)
    critic = CentralCritic(5, 2, 3, [8], n_q=8, out_features=4)  # 4 groups of 2 allocated
    state, joint = torch.randn(3, 6, 5), torch.randn(3, 6, 2, 3)  # 3 groups in play
    out = critic.grouped_heads(state, joint, per_group=2)
    assert out.shape == (3, 2, 6, 4)
    flat = torch.cat([state, joint.flatten(-2)], -1)
    for g in range(3):
        full = critic.q(flat[g])  # every member on group g's rows
        torch.testing.assert_close(out[g], full[2 * g : 2 * g + 2])


def test_c51_projection_by_hand():
    spec = make_spec(n_agents=1, obs_dims=(2,), act_dims=(1,), state_dim=2)
    agent = agent_for(spec, critic_atoms=5, value_min=0.0, value_max=4.0, gamma=0.5)
    probs = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    # z = 2 -> 1 + 0.5 * 2 = 2 exactly; z = 4 -> 1 + 2 = 3; a terminal lands on the reward
    out = agent.project(torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0]), probs)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(out[1], torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0]))  # 0.5 split
    clipped = agent.project(torch.tensor([10.0]), torch.tensor([0.0]), probs[:1])
    torch.testing.assert_close(clipped[0], torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0]))
    random = torch.rand(7, 5).softmax(-1)
    mass = agent.project(torch.randn(7), torch.zeros(7), random).sum(-1)
    torch.testing.assert_close(mass, torch.ones(7))


def test_target_improvement_raises_each_groups_q_inside_the_box():
    torch.manual_seed(1)
    spec = make_spec(n_agents=2, obs_dims=(3, 2), act_dims=(2, 1), state_dim=4)
    agent = agent_for(spec, target_steps=20)
    state = torch.randn(3, 16, 4)
    start = (torch.rand(3, 16, 2, 2) * 2 - 1) * spec.act_mask()
    improved = agent.improve_targets(state, start)
    before, after = agent.group_q(state, start), agent.group_q(state, improved)
    assert (after.mean(-1) > before.mean(-1)).all(), (before.mean(-1), after.mean(-1))
    assert improved.abs().max() <= 1 and (improved[..., ~spec.act_mask()] == 0).all()
    assert all(p.requires_grad for p in agent.critic.parameters())


def step(state, next_state, done, success):
    b = state.shape[0]
    flags = torch.tensor(done)
    return StepResult(
        obs=next_state[:, None],
        state=next_state,
        reward=torch.zeros(b, 1),
        terminated=flags & torch.tensor(success),
        truncated=flags & ~torch.tensor(success),
        next_obs=next_state[:, None],
        next_state=next_state,
        info={"success": torch.tensor(success, dtype=torch.float32)},
    )


def run_episodes(agent, buffer, sides, success=True):
    """One episode per env copy: 5 steps from (0, 0) up to (0, 5), bowing out to x = side
    on the way (two routes round a wall), all successful or all failed."""
    b = len(sides)
    xs = torch.tensor(sides, dtype=torch.float32)
    for k in range(5):
        bow = [0.0, 0.6, 1.0, 0.6, 0.0, 0.0]
        state = torch.stack([xs * bow[k], torch.full((b,), float(k))], -1)
        nxt = torch.stack([xs * bow[k + 1], torch.full((b,), float(k + 1))], -1)
        last = k == 4
        result = step(state, nxt, [last] * b, [last and success] * b)
        slots = buffer.add(
            Batch(
                state[:, None],
                state,
                torch.zeros(b, 1, 1),
                result.reward,
                result.next_obs,
                nxt,
                result.terminated.float(),
            )
        )
        agent.observe(buffer, slots, result)


def two_routes():
    """(spec, agent, buffer) after four successful episodes, two round each side of a wall."""
    spec = make_spec(n_agents=1, obs_dims=(2,), act_dims=(1,), state_dim=2)
    agent = agent_for(spec)
    buffer = ReplayBuffer(100, spec, torch.device("cpu"), agent.buffer_fields())
    run_episodes(agent, buffer, [-3.0, 3.0, -3.1, 3.1])
    return spec, agent, buffer


def test_trajectories_become_modes_and_groups_sample_their_own_transitions():
    torch.manual_seed(2)
    _, agent, buffer = two_routes()
    assert len(agent.trajectories) == 4 and all(t.success for t in agent.trajectories)
    assert agent.trajectories[0].path.shape == (6, 2) and agent.trajectories[0].slots.numel() == 5
    assert agent.n_modes == 1  # nothing clustered yet
    agent.recluster(buffer)
    assert agent.n_modes == 2
    left = {t.mode for t in agent.trajectories if t.path[2, 0] < 0}
    right = {t.mode for t in agent.trajectories if t.path[2, 0] > 0}
    assert len(left) == len(right) == 1 and left != right
    batch = agent.sample_batch(buffer, 30, torch.Generator().manual_seed(0))
    assert batch.slots.shape == (3, 10)  # exploration and two modes
    side = buffer.storage.state[:, 0].sign()
    for mode, expected in ((left.pop(), -1.0), (right.pop(), 1.0)):
        rows = batch.slots[mode + 1]
        picked = side[rows][buffer.storage.state[rows, 1] % 4 != 0]  # off the shared axis
        assert (picked == expected).all()
    # a later episode joins the mode of its route without a reclustering
    run_episodes(agent, buffer, [3.05])
    newest = agent.trajectories[-1]
    assert newest.mode == next(t.mode for t in agent.trajectories if t.path[2, 0] > 0)


def test_reclustering_hands_each_mode_the_critic_of_the_mode_it_overlaps():
    torch.manual_seed(3)
    _, agent, buffer = two_routes()
    groups = agent.groups_max

    def group_weights():
        weight = agent.critic.q.net[0].weight.detach()
        return weight.view(groups, -1, *weight.shape[1:]).clone()

    before = group_weights()
    buffer.extras["target"][:, 1] = 0.5  # mode 0's target-action slot before clustering
    agent.recluster(buffer)  # both new modes overlap the old single mode (group 1)
    after = group_weights()
    torch.testing.assert_close(after[0], before[0])  # exploration keeps its own
    torch.testing.assert_close(after[1], before[1])
    torch.testing.assert_close(after[2], before[1])
    assert (buffer.extras["target"][:, 2] == 0.5).all()


@pytest.mark.parametrize("balance", [True, False])
def test_reclustering_caps_each_modes_successes_and_failures(balance):
    """The authors' balancing: at most max_trajectories / (2 x modes) successes and as many
    failures per mode survive a clustering, the excess dropped at random."""
    torch.manual_seed(5)
    spec = make_spec(n_agents=1, obs_dims=(2,), act_dims=(1,), state_dim=2)
    agent = agent_for(spec, max_trajectories=12, balance_modes=balance)
    buffer = ReplayBuffer(200, spec, torch.device("cpu"), agent.buffer_fields())
    run_episodes(agent, buffer, [-3.0, -3.1, -2.9, -3.05, -2.95, 3.0, 3.1])  # 5 left, 2 right
    run_episodes(agent, buffer, [-3.0, -3.1, -2.9, -3.2, 3.0], success=False)  # 4 + 1
    agent.recluster(buffer)
    assert agent.n_modes == 2
    counts = {}
    for t in agent.trajectories:
        side = "left" if t.path[2, 0] < 0 else "right"
        counts[side, t.success] = counts.get((side, t.success), 0) + 1
    if balance:  # cap 12 // (2 x 2) = 3
        assert counts == {
            ("left", True): 3,
            ("right", True): 2,
            ("left", False): 3,
            ("right", False): 1,
        }
    else:
        assert counts == {
            ("left", True): 5,
            ("right", True): 2,
            ("left", False): 4,
            ("right", False): 1,
        }
    # the groups sample only what was kept
    batch = agent.sample_batch(buffer, 300, torch.Generator().manual_seed(0))
    kept = torch.cat([t.slots for t in agent.trajectories])
    assert torch.isin(batch.slots[1:], kept).all()


def test_checkpoint_round_trip_keeps_the_modes():
    torch.manual_seed(4)
    spec, agent, buffer = two_routes()
    agent.recluster(buffer)
    state = agent.training_state()
    fresh = agent_for(spec)
    fresh.load_training_state(state)
    assert fresh.n_modes == agent.n_modes == 2
    assert [(t.id, t.mode, t.success) for t in fresh.trajectories] == [
        (t.id, t.mode, t.success) for t in agent.trajectories
    ]
    for a, b in zip(fresh.trajectories, agent.trajectories, strict=True):
        assert (a.path == b.path).all() and torch.equal(a.slots, b.slots)


def test_a_scenario_without_mode_features_is_a_clear_error():
    spec = make_spec()
    with pytest.raises(ConfigError, match="mode_features"):
        agent_for(spec, mode_features=[])
    with pytest.raises(ConfigError, match="mode_features"):
        agent_for(spec, mode_features=[9])


def test_evaluation_can_ask_for_each_mode_only_with_embeddings():
    """With embeddings, the chosen mode's vector conditions every agent's action (the same
    noise gives different actions for different modes), and with none chosen the env copies
    take the modes in turn; without embeddings there is nothing to choose, and a mode the agent
    does not have is refused."""
    spec = make_spec(n_agents=2, obs_dims=(3, 2), act_dims=(2, 1), state_dim=4)
    agent = agent_for(spec, mode_embeddings=True)
    agent.n_modes = 2
    assert agent.behaviour_modes() == 2
    obs = torch.randn(5, 2, 3)
    actions = {}
    for mode in (None, 0, 1):
        agent.select_mode(mode)
        torch.manual_seed(0)
        actions[mode] = agent.act(obs, explore=False)
    assert not torch.equal(actions[0], actions[1])
    # no mode chosen: env copy b plays mode b mod 2 (eval_embedding=modes, the default)
    torch.testing.assert_close(actions[None][0::2], actions[0][0::2])
    torch.testing.assert_close(actions[None][1::2], actions[1][1::2])
    agent.select_mode(None)
    torch.manual_seed(0)
    torch.testing.assert_close(agent.sample_policy(obs), actions[None])
    agent.config.eval_embedding = "zero"  # the card's zero vector: neither mode's actions
    torch.manual_seed(0)
    zero = agent.sample_policy(obs)
    assert not torch.equal(zero[0::2], actions[0][0::2]) and not torch.equal(zero, actions[1])
    with pytest.raises(ConfigError, match="2 modes"):
        agent.select_mode(2)
    plain = agent_for(spec)
    assert plain.behaviour_modes() == 0
    with pytest.raises(ConfigError, match="mode_embeddings"):
        plain.select_mode(0)


def test_evaluate_reports_each_mode_asked_for(tmp_path, capsys):
    """`evaluate modes=all` on a trained run plays the same seeded episodes once per mode (two
    here: the checkpoint is given a second mode), and `mode=K` one of them, in its own file;
    `report trajectories` draws the run's paths."""
    from conftest import train_run

    from marl_diff import evaluate

    run_dir = tmp_path / "run"
    train_run(
        run_dir,
        [
            "scenario=pointmaze_two_routes",
            "agent=ddiffpg",
            "runner.total_steps=200",
            "runner.warmup_steps=100",
            "runner.batch_size=32",
            "runner.eval_every=0",
            "runner.eval_episodes=2",
            "runner.eval_num_envs=2",
            "scenario.max_steps=30",
            "scenario.reward=dense",
            "agent.mode_embeddings=true",
            "agent.actor_hidden=[16,16]",
            "agent.critic_hidden=[16,16]",
            "agent.diffusion_steps=3",
            "agent.critic_atoms=11",
        ],
    )
    checkpoint = sorted((run_dir / "checkpoints").iterdir())[-1]
    state = torch.load(checkpoint, weights_only=True)
    state["agent"]["modes"]["n_modes"] = 2
    torch.save(state, checkpoint)

    report, out = evaluate.evaluate_run(run_dir, episodes=2, device="cpu", behaviour_mode="all")
    assert out.name.endswith("_modes.json") and report["behaviour_modes"] == 2
    assert set(report["per_mode"]) == {"0", "1"}
    assert all("success_rate" in entry for entry in report["per_mode"].values())
    returns = [entry["mean_return"] for entry in report["per_mode"].values()]
    assert returns[0] != returns[1]  # different embeddings on the same seeded episodes
    one, out = evaluate.evaluate_run(run_dir, episodes=2, device="cpu", behaviour_mode=1)
    assert out.name.endswith("_mode1.json") and one["behaviour_mode"] == 1
    assert one["mean_return"] == report["per_mode"]["1"]["mean_return"]
    with pytest.raises(SystemExit) as info:
        evaluate.main([f"run_dir={run_dir}", "mode=2", "device=cpu"])
    assert info.value.code == 2
    assert "mode=0..1" in capsys.readouterr().err

    # the trajectory picture of the same run: paths from the reset cell, 30 steps at most
    from marl_diff.mode_report import play_paths, trajectories

    episodes, landmarks = play_paths(run_dir, 3)
    assert len(episodes) == 3 and len(landmarks["walls"]) == 17
    for path, _ in episodes:
        assert 2 <= len(path) <= 31 and abs(path[0][0]) < 0.3 and abs(path[0][1] - 1) < 0.3
    written = trajectories([f"runs={tmp_path}", "episodes=3", f"out={tmp_path / 't'}"])
    assert written == str(tmp_path / "t_pointmaze_two_routes.png")
    assert (tmp_path / "t_pointmaze_two_routes.png").stat().st_size > 0


# The slow multigoal checks' setting (the README's ddiffpg command): small networks, 4 envs,
# a clustering every 1000 env steps, 100 evaluation episodes at the end.
MULTIGOAL_STUDY = [
    "scenario=multigoal",
    "agent=ddiffpg",
    "runner.warmup_steps=500",
    "runner.num_envs=4",
    "runner.eval_every=0",
    "runner.eval_episodes=100",
    "runner.eval_num_envs=100",
    "agent.recluster_every=1000",
    "agent.actor_hidden=[64,64]",
    "agent.critic_hidden=[64,64]",
]


@pytest.mark.slow
def test_ddiffpg_reaches_at_least_three_goals_on_multigoal(tmp_path):
    """The issue's check: from scratch on the 4-goal task, >= 3 distinct goals over 100
    evaluation episodes. Measured (seed 0, this setting, one CPU core, about 3 min): passes; with
    40 evaluation episodes the same run reached all 4 goals (6, 3, 16 and 9 episodes), with 2 to
    4 modes found by the reclusterings every 1000 env steps."""
    from conftest import train_run

    report, _ = train_run(tmp_path / "run", [*MULTIGOAL_STUDY, "runner.total_steps=4000"])
    assert report["distinct_goals"] >= 3, report["goal_counts"]


@pytest.mark.slow
def test_ddiffpg_team_of_two_finds_several_goal_combinations_on_multigoal(tmp_path):
    """N = 2: each agent its own actor, modes clustered on the joint positions. Measured (seed 0,
    this setting, about 13 min on one free CPU core): all 4 goals reached, 4 modes, both agents at
    a goal in 76 of 100 episodes, 8 distinct goal pairs among them."""
    from conftest import train_run

    report, _ = train_run(
        tmp_path / "run",
        [*MULTIGOAL_STUDY, "scenario.n_agents=2", "runner.total_steps=6000"],
    )
    pairs = [tuple(int(g) for g in episode) for episode in report["outcomes"]["goal"]]
    both = [pair for pair in pairs if min(pair) >= 0]
    assert report["distinct_goals"] >= 3, report["goal_counts"]
    assert len(both) >= 50 and len(set(both)) >= 3, pairs
