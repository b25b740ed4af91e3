"""Multimodality reports over finished runs (results/multimodal), two kinds of
`python -m marl_diff.report`:

`modes runs=DIR [out=PREFIX]`: per scenario and agent, over seeds, the final evaluation's return,
success rate, routes or goals reached at least once (`distinct`) and by at least MODE_SHARE of
the episodes (`covered`), and each route's or goal's share of the episodes. For runs evaluated
once per learned mode (`python -m marl_diff.evaluate modes=all`: DDiffPG with mode embeddings),
also each asked-for mode's success and the routes or goals it took, which shows whether asking
for a mode gets that behaviour. Writes PREFIX.md.

`trajectories runs=DIR [seed=0] [episodes=20] [out=PREFIX]`: replays `episodes` evaluation
episodes of every agent's run of seed `seed` from its checkpoint, drawing from each policy (as the
study evaluates), and draws the paths in the plane of the first two mode features
(`EnvSpec.mode_features`: x-y in the mazes, the first agent's position in multigoal) with the
scenario's walls and goals (`landmarks`), one panel per agent: PREFIX_<scenario>.png.
"""

from __future__ import annotations

import json
import shlex
from collections import defaultdict
from pathlib import Path
from statistics import mean, pstdev

import torch
from omegaconf import OmegaConf

from marl_diff.envs.base import episode_success
from marl_diff.errors import ConfigError, MarlDiffError
from marl_diff.runners.base import eval_seed
from marl_diff.runners.evaluation import MODE_SHARE, outcome_shares
from marl_diff.typed_config import key_values

MODES_SETTINGS = {"runs": None, "out": None}
TRAJECTORY_SETTINGS = {"runs": None, "seed": "0", "episodes": "20", "out": None}


def finished_runs(root: Path) -> dict[tuple[str, str], list[tuple[Path, dict]]]:
    """(scenario, agent) -> [(run dir, config)] of every run under `root` with an eval.json,
    ordered by seed."""
    if not root.is_dir():
        raise ConfigError(f"runs='{root}' is not a folder")
    groups: dict[tuple[str, str], list[tuple[Path, dict]]] = defaultdict(list)
    for path in sorted(root.rglob("eval.json")):
        if (path.parent / "config.yaml").exists():
            cfg = OmegaConf.load(path.parent / "config.yaml")
            groups[(str(cfg.scenario.name), str(cfg.agent.name))].append((path.parent, cfg))
    if not groups:
        raise MarlDiffError(f"no finished runs (config.yaml + eval.json) under '{root}'")
    for runs in groups.values():
        runs.sort(key=lambda run: int(run[1].seed))
    return groups


def _mean_std(values: list[float]) -> str:
    return f"{mean(values):.2f} +- {pstdev(values):.2f}"


def modes(args: list[str]) -> str:
    values = key_values(args, MODES_SETTINGS)
    if not values["runs"]:
        raise ConfigError("runs=DIR is required (a folder holding run directories)")
    root = Path(values["runs"])
    groups = finished_runs(root)
    command = "python -m marl_diff.report modes " + " ".join(shlex.quote(a) for a in args)
    lines = [f"# Modes found: {root.name}", "", f"Command: `{command}`", ""]
    for scenario in sorted({s for s, _ in groups}):
        lines += [
            f"## {scenario}",
            "",
            "Final evaluation of each run; `distinct`: routes or goals reached at least once, "
            f"`covered`: by at least {MODE_SHARE:.0%} of the episodes; shares of the episodes "
            "by route or goal, mean over seeds.",
            "",
            "| agent | seeds | env steps | episodes | return | success | distinct | covered "
            "| shares | distinct per seed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        per_mode_lines: list[str] = []
        for (s, agent), runs in sorted(groups.items()):
            if s != scenario:
                continue
            reports = [json.loads((d / "eval.json").read_text()) for d, _ in runs]
            distinct = [r.get("distinct_modes", r.get("distinct_goals", 0)) for r in reports]
            covered = [
                sum(share >= MODE_SHARE for share in outcome_shares(r).values()) for r in reports
            ]
            keys = sorted({k for r in reports for k in outcome_shares(r)}, key=int)
            shares = ", ".join(
                f"{k}: {mean(outcome_shares(r).get(k, 0.0) for r in reports):.0%}" for k in keys
            )
            success = (
                _mean_std([r["success_rate"] for r in reports])
                if all("success_rate" in r for r in reports)
                else ""
            )
            lines.append(
                f"| {agent} | {len(runs)} | {reports[0].get('env_steps', '')} "
                f"| {reports[0]['episodes']} | {_mean_std([r['mean_return'] for r in reports])} "
                f"| {success} | {_mean_std(distinct)} | {_mean_std(covered)} | {shares or '-'} "
                f"| {', '.join(map(str, distinct))} |"
            )
            per_mode_lines += _per_mode_rows(agent, runs)
        if per_mode_lines:
            lines += [
                "",
                "Each learned mode asked for (`python -m marl_diff.evaluate run_dir=... "
                "modes=all`), same seeded episodes per mode:",
                "",
                "| agent | seed | modes learned | asked mode | return | success "
                "| routes or goals taken |",
                "|---|---:|---:|---:|---:|---:|---|",
                *per_mode_lines,
            ]
        lines.append("")
    text = "\n".join(lines)
    out = Path(values["out"] or root.parent / "modes")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    return text


def _per_mode_rows(agent: str, runs: list[tuple[Path, dict]]) -> list[str]:
    rows = []
    for run_dir, cfg in runs:
        files = sorted((run_dir / "evaluations").glob("*_modes.json"))
        if not files:
            continue
        report = json.loads(files[-1].read_text())
        for k, entry in report["per_mode"].items():
            success = f"{entry['success_rate']:.0%}" if "success_rate" in entry else ""
            taken = ", ".join(f"{m}: {s:.0%}" for m, s in outcome_shares(entry).items()) or "none"
            rows.append(
                f"| {agent} | {cfg.seed} | {report['behaviour_modes']} | {k} "
                f"| {entry['mean_return']:.2f} | {success} | {taken} |"
            )
    return rows


def trajectories(args: list[str]) -> str:
    values = key_values(args, TRAJECTORY_SETTINGS)
    if not values["runs"]:
        raise ConfigError("runs=DIR is required (a folder holding run directories)")
    try:
        seed, episodes = int(values["seed"]), int(values["episodes"])
    except ValueError:
        raise ConfigError("seed and episodes must be integers") from None
    if episodes <= 0:
        raise ConfigError("episodes must be positive")
    root = Path(values["runs"])
    by_scenario: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for (scenario, agent), runs in sorted(finished_runs(root).items()):
        for run_dir, cfg in runs:
            if int(cfg.seed) == seed:
                by_scenario[scenario].append((agent, run_dir))
    if not by_scenario:
        raise MarlDiffError(f"no finished run of seed {seed} under '{root}'")
    prefix = Path(values["out"] or root.parent / "trajectories")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for scenario, agents in by_scenario.items():
        panels = [(agent, *play_paths(run_dir, episodes)) for agent, run_dir in agents]
        path = prefix.parent / f"{prefix.name}_{scenario}.png"
        _draw(panels, path, f"{scenario}: {episodes} episodes per agent, seed {seed}")
        written.append(str(path))
    return "\n".join(written)


@torch.no_grad()
def play_paths(run_dir: Path, episodes: int) -> tuple[list, dict]:
    """`episodes` episodes of the run's checkpoint, one per env copy, every agent sampling its
    policy: each episode's path [(x, y)] in the first two mode features, whether it succeeded
    (`episode_success`), and the scenario's landmarks."""
    from marl_diff.experiment import load_run

    cfg = OmegaConf.load(run_dir / "config.yaml")
    seed = eval_seed(int(cfg.seed))
    loaded = load_run(run_dir, torch.device("cpu"), episodes, seed)
    env, agent = loaded.env, loaded.agent
    try:
        features = list(env.spec.mode_features[:2])
        if len(features) < 2:
            raise MarlDiffError(f"scenario '{cfg.scenario.name}' declares no x-y mode features")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            obs, state = env.reset(seed=seed)
            positions = [state[:, features]]
            ends = torch.full((episodes,), -1, dtype=torch.long)  # each copy's first episode end
            reached = torch.zeros(episodes, dtype=torch.bool)
            for step in range(1, (env.spec.max_episode_steps or 1000) + 1):
                result = env.step(agent.sample_policy(obs))
                positions.append(result.next_state[:, features])
                done = (result.terminated | result.truncated).cpu() & (ends < 0)
                ends[done] = step
                reached |= done & episode_success(result).cpu()
                obs = result.obs
                if (ends >= 0).all():
                    break
        landmarks = env.landmarks()
    finally:
        env.close()
    tracks = torch.stack(positions, 1).cpu()  # [episodes, steps + 1, 2]
    paths = [tracks[i, : int(end) + 1 if end >= 0 else None].tolist() for i, end in enumerate(ends)]
    return list(zip(paths, reached.tolist(), strict=True)), landmarks


def _draw(panels: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (agent, episodes, landmarks) in zip(axes[0], panels, strict=True):
        for x0, y0, x1, y1 in landmarks.get("walls", []):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, color="0.75", lw=0))
        for gx, gy in landmarks.get("goals", []):
            ax.plot(gx, gy, marker="*", color="gold", markersize=14, markeredgecolor="k")
        for points, reached in episodes:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, lw=0.8, alpha=0.7, color="tab:blue" if reached else "tab:red")
        wins = sum(reached for _, reached in episodes)
        ax.set_title(f"{agent} ({wins}/{len(episodes)} reached)", fontsize=9)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    fig.suptitle(title + " (blue: reached a goal, red: did not)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
