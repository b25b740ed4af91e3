"""Evaluation with decentralised execution: deterministic per-agent actions from local
observations, on env copies separate from training."""

from __future__ import annotations

import math

import torch

from marl_diff.agents.base import Agent
from marl_diff.envs.base import BatchedMultiAgentEnv


@torch.no_grad()
def evaluate_episodes(agent: Agent, env: BatchedMultiAgentEnv, episodes: int, seed: int) -> dict:
    """Run until `episodes` episodes have finished; returns per-episode team returns (sum of the
    mean agent reward), lengths and the scenario's outcomes (e.g. which goal was reached)."""
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
        result = env.step(agent.act(obs, explore=False))
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
    """Scenario-specific summaries; `goal` lists (one entry per agent) become goal counts, and
    `won` flags (e.g. SMAX) become the win rate over the finished episodes."""
    summary: dict = {}
    if outcomes.get("won"):
        summary["win_rate"] = sum(float(w) for w in outcomes["won"]) / len(outcomes["won"])
    if "goal" in outcomes:
        reached = [g for episode in outcomes["goal"] for g in _as_list(episode) if g >= 0]
        summary["distinct_goals"] = len(set(int(g) for g in reached))
        summary["goal_counts"] = {str(int(g)): reached.count(g) for g in sorted(set(reached))}
    return summary


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]
