"""Evaluation with decentralised execution: per-agent actions from local observations, on env
copies separate from training.

Two modes. "default" plays each agent's documented evaluation action (`act(explore=False)`: the
Gaussian's tanh(mean), a diffusion policy's sample). "sample" draws from every agent's policy
(`sample_policy`), so policy classes are compared in the same mode, e.g. how many goals a
policy covers: a Gaussian's mean can only ever reach one.

Evaluation runs on its own random stream seeded by `seed` (forked from the global one), so it
is reproducible from the checkpoint alone and never perturbs the training run's randomness.
"""

from __future__ import annotations

import math

import torch

from marl_diff.agents.base import Agent
from marl_diff.envs.base import BatchedMultiAgentEnv

EVAL_MODES = ("default", "sample")
# A goal counts as a covered mode when at least this share of the episodes end there; a goal
# reached once in 100 episodes (a near-random walk can do that) is not a mode of the policy.
MODE_SHARE = 0.1


@torch.no_grad()
def evaluate_episodes(
    agent: Agent, env: BatchedMultiAgentEnv, episodes: int, seed: int, mode: str = "default"
) -> dict:
    """Run until `episodes` episodes have finished; returns per-episode team returns (sum of the
    mean agent reward), lengths and the scenario's outcomes (e.g. which goal was reached)."""
    if mode not in EVAL_MODES:
        raise ValueError(f"evaluation mode must be one of {', '.join(EVAL_MODES)}, not '{mode}'")
    devices = [env.device] if env.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        report = _play(agent, env, episodes, seed, mode)
    report["mode"] = mode
    return report


def _play(agent: Agent, env: BatchedMultiAgentEnv, episodes: int, seed: int, mode: str) -> dict:
    obs, _ = env.reset(seed=seed)
    returns = torch.zeros(env.num_envs, device=env.device)
    lengths = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)
    finished: dict[str, list] = {"returns": [], "lengths": []}
    outcomes: dict[str, list] = {}
    # every copy runs at most ceil(episodes / num_envs) episodes, so the result does not depend
    # on which copies happen to finish first
    per_copy = math.ceil(episodes / env.num_envs)
    done_count = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)
    while len(finished["returns"]) < episodes:
        actions = agent.sample_policy(obs) if mode == "sample" else agent.act(obs, explore=False)
        result = env.step(actions)
        returns += result.reward.mean(-1)
        lengths += 1
        done = (result.terminated | result.truncated) & (done_count < per_copy)
        if done.any():
            for i in done.nonzero().flatten().tolist():
                if len(finished["returns"]) == episodes:
                    break
                finished["returns"].append(float(returns[i]))
                finished["lengths"].append(int(lengths[i]))
                for key, value in result.info.items():
                    outcomes.setdefault(key, []).append(value[i].tolist())
            done_count += done.long()
        finished_now = result.terminated | result.truncated
        returns = torch.where(finished_now, torch.zeros_like(returns), returns)
        lengths = torch.where(finished_now, torch.zeros_like(lengths), lengths)
        obs = result.obs
    values = torch.tensor(finished["returns"])
    report = {
        "episodes": episodes,
        "returns": finished["returns"],
        "lengths": finished["lengths"],
        "mean_return": float(values.mean()),
        "std_return": float(values.std(unbiased=False)),
        "outcomes": outcomes,
    }
    report.update(summarize_outcomes(outcomes))
    return report


def summarize_outcomes(outcomes: dict[str, list]) -> dict:
    """Scenario-specific summaries. `won` flags (e.g. SMAX) become the win rate over the finished
    episodes. `goal` lists (one entry per agent, -1 for none) become per-goal counts and shares
    of the agent-episodes, `distinct_goals` (goals reached at least once) and `modes_covered`
    (goals with at least MODE_SHARE of the agent-episodes), and `goal_combinations`: distinct
    tuples of every agent's goal among the episodes in which all of them reached one (the
    team's modes at N > 1; `distinct_goals` when N = 1). `success` flags (the mazes) become
    `success_rate` over the finished episodes. `mode` values (the mazes: the route or goal an
    episode took, -1 for none) become `distinct_modes` (modes >= 0 reached at least once) and
    per-mode `mode_counts` and `mode_shares` (shares of all finished episodes, so they sum to at
    most 1). Where `success` flags come with them, only successful episodes count toward a
    mode: a failed episode that went round the wall on one side has not reached that mode."""
    summary: dict = {}
    if outcomes.get("won"):
        summary["win_rate"] = sum(float(w) for w in outcomes["won"]) / len(outcomes["won"])
    if "goal" in outcomes:
        counts, shares = _tally([int(g) for episode in outcomes["goal"] for g in _as_list(episode)])
        summary["distinct_goals"] = len(counts)
        summary["goal_counts"], summary["goal_shares"] = counts, shares
        summary["modes_covered"] = sum(share >= MODE_SHARE for share in shares.values())
        teams = {tuple(int(g) for g in _as_list(episode)) for episode in outcomes["goal"]}
        summary["goal_combinations"] = sum(min(team) >= 0 for team in teams)
    if outcomes.get("success"):
        flags = [float(f) for episode in outcomes["success"] for f in _as_list(episode)]
        summary["success_rate"] = sum(flags) / len(flags)
    if outcomes.get("mode"):
        modes = [int(m) for episode in outcomes["mode"] for m in _as_list(episode)]
        if outcomes.get("success") and len(flags) == len(modes):
            modes = [m if flag > 0.5 else -1 for m, flag in zip(modes, flags, strict=True)]
        counts, shares = _tally(modes)
        summary["distinct_modes"] = len(counts)
        summary["mode_counts"], summary["mode_shares"] = counts, shares
    return summary


def outcome_shares(summary: dict) -> dict[str, float]:
    """A summary's shares of the episodes by route or goal: `mode_shares` (the mazes, successful
    episodes only) or `goal_shares` (multigoal, agent-episodes); empty when it has neither."""
    return summary.get("mode_shares", summary.get("goal_shares", {}))


def _tally(values: list[int]) -> tuple[dict[str, int], dict[str, float]]:
    """Counts and shares (of all values) of each value >= 0 (-1: none reached), by str key."""
    counts = {v: values.count(v) for v in sorted(set(values)) if v >= 0}
    return (
        {str(v): count for v, count in counts.items()},
        {str(v): count / len(values) for v, count in counts.items()},
    )


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]
