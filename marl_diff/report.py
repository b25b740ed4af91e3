"""Aggregate finished runs into results: `python -m marl_diff.report curves runs=DIR
[out=PREFIX] [metric=eval/return] [group=agent.name|folder|<config key>] [x=steps|wall_time]`.

Every run directory under `runs` (any folder holding config.yaml and metrics.jsonl) is grouped
by its agent name, by `group=<config key>` (e.g. `group=scenario.n_agents` for a scaling
study) or, with `group=folder`, by the folder holding it (`runs/<variant>/seed0`: two settings of
one agent stay apart); seeds are averaged, and PREFIX.png (mean +- std over seeds against env
steps, or updates for offline runs, or with `x=wall_time` against seconds of training) and
PREFIX.md (final value per group, speeds, the command) are written.

`modes` and `trajectories` report the routes and goals runs take (marl_diff.mode_report);
`distill` the distillation study, normalised return per task by paired samples
(marl_diff.distill_report).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean, pstdev

import numpy as np
from omegaconf import OmegaConf

from marl_diff.distill_report import distill
from marl_diff.errors import ConfigError, MarlDiffError, choices, exit_cleanly_on_user_error
from marl_diff.mode_report import modes, trajectories

CURVES_SETTINGS = {
    "runs": None,
    "out": None,
    "metric": "eval/return",
    "group": "agent.name",
    "x": "steps",
}
X_AXES = ("steps", "wall_time")
SPEEDS = ("perf/updates_per_s", "perf/env_steps_per_s", "perf/act_ms_per_step", "perf/update_ms")


def find_runs(root: Path) -> list[Path]:
    """Every run directory (config.yaml + metrics.jsonl) under `root`."""
    return sorted(
        p.parent for p in root.rglob("metrics.jsonl") if (p.parent / "config.yaml").exists()
    )


def load_run(run_dir: Path, metric: str, axis: str = "steps") -> dict:
    """A run's `metric` curve against its progress counter (`axis="steps"`: env steps for online
    runs, updates for offline ones, named by `x`) or against its training seconds
    (`axis="wall_time"`), its throughput figures and its wall time. A resumed run's records
    after its last checkpoint appear twice; the later one counts."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    by_step, speeds, wall, x = {}, defaultdict(list), 0.0, "env_steps"
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            wall = max(wall, record["wall_time"])
            x = "env_steps" if "env_steps" in record else "updates"
            if metric in record:
                by_step[record[x]] = (record["wall_time"], record[metric])
            for key in SPEEDS:
                if key in record:
                    speeds[key].append(record[key])
    if axis == "wall_time":
        curve = {at: value for at, value in sorted(by_step.values())}
    else:
        curve = {step: value for step, (_, value) in sorted(by_step.items())}
    return {"config": cfg, "curve": curve, "speeds": speeds, "wall_time": wall, "x": x}


def curves(args: list[str]) -> str:
    values = dict(CURVES_SETTINGS)
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in CURVES_SETTINGS:
            raise ConfigError(f"unknown argument '{arg}'. Valid: {choices(CURVES_SETTINGS)}")
        values[key] = value
    if not values["runs"]:
        raise ConfigError("runs=DIR is required (a folder holding run directories)")
    if values["x"] not in X_AXES:
        raise ConfigError(f"unknown x-axis x={values['x']}. Valid: {choices(X_AXES)}")
    root = Path(values["runs"])
    run_dirs = find_runs(root)
    if not run_dirs:
        raise MarlDiffError(f"no run directories (config.yaml + metrics.jsonl) under '{root}'")
    metric, group_key, axis = values["metric"], values["group"], values["x"]
    groups: dict[str, list[dict]] = defaultdict(list)
    for run_dir in run_dirs:
        run = load_run(run_dir, metric, axis)
        if run["curve"]:
            name = (
                run_dir.parent.name
                if group_key == "folder"
                else str(OmegaConf.select(run["config"], group_key))
            )
            groups[name].append(run)
    if not groups:
        raise MarlDiffError(f"no run under '{root}' logged '{metric}'")
    axes = {run["x"] for runs in groups.values() for run in runs}
    if len(axes) > 1:
        raise MarlDiffError(
            f"the runs under '{root}' mix online runs (env steps) and offline runs (updates); "
            "report them separately"
        )
    x_label = axes.pop().replace("_", " ") if axis == "steps" else "wall time s"
    out = Path(values["out"] or root / "report")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = new_figure()
    plot_groups(ax, groups, metric, title=root.name, x_label=x_label)
    save_figure(fig, out.with_suffix(".png"))

    command = "python -m marl_diff.report curves " + " ".join(shlex.quote(a) for a in args)
    lines = [
        f"# {metric} by {group_key}: {root.name}",
        "",
        f"Command: `{command}`",
        "",
        f"Plot: `{out.with_suffix('.png').name}` (mean +- std over seeds).",
        "",
        f"| {group_key} | seeds | {x_label} | final {metric} (mean +- std) | best mean "
        "| updates/s | env steps/s | act ms/step | wall min/run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    stats = {name: aggregate(runs) for name, runs in groups.items()}
    for name, runs in sorted(groups.items()):
        steps, means, _ = stats[name]
        finals = [final_value(run) for run in runs]
        speed = {k: mean_positive(runs, k) for k in SPEEDS}
        lines.append(
            f"| {name} | {len(runs)} | {_number(steps[-1])} "
            f"| {mean(finals):.3f} +- {pstdev(finals):.3f} "
            f"| {max(means):.3f} | {speed['perf/updates_per_s']:.1f} "
            f"| {speed['perf/env_steps_per_s']:.0f} | {speed['perf/act_ms_per_step']:.2f} "
            f"| {mean(run['wall_time'] for run in runs) / 60:.1f} |"
        )
    lines += [
        "",
        f"{metric} at each evaluation (mean over seeds):",
        "",
        f"| {x_label} | " + " | ".join(sorted(groups)) + " |",
        "|---:|" + "---:|" * len(groups),
    ]
    per_group = {name: dict(zip(*stats[name][:2], strict=True)) for name in groups}
    for step in sorted({s for table in per_group.values() for s in table}):
        cells = [
            f"{per_group[g][step]:.3f}" if step in per_group[g] else "" for g in sorted(groups)
        ]
        lines.append(f"| {_number(step)} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    return text


def _number(x: float) -> str:
    """An x value for a table: whole steps as integers, seconds to one decimal."""
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def final_value(run: dict) -> float:
    """The metric at the end of a run's curve (its last evaluation)."""
    return run["curve"][max(run["curve"])]


def mean_positive(runs: list[dict], key: str) -> float:
    """Mean of a speed over every log event of every run, skipping the warm-up's zeros."""
    values = [v for run in runs for v in run["speeds"].get(key, []) if v > 0]
    return mean(values) if values else 0.0


def aggregate(runs: list[dict], points: int = 25) -> tuple[list[float], list[float], list[float]]:
    """Mean and std over seeds at the x values every run evaluated at; where runs share too
    few (wall-clock seconds differ from run to run), at `points` values spread over the range
    all runs cover, each run's curve interpolated linearly."""
    common = sorted(set.intersection(*(set(run["curve"]) for run in runs)))
    if len(common) < min(len(run["curve"]) for run in runs):
        start = max(min(run["curve"]) for run in runs)
        stop = min(max(run["curve"]) for run in runs)
        common = list(np.linspace(start, stop, points)) if stop > start else [stop]
    table = [np.interp(common, list(run["curve"]), list(run["curve"].values())) for run in runs]
    means = [float(v) for v in np.mean(table, axis=0)]
    stds = [float(v) for v in np.std(table, axis=0)]
    return common, means, stds


def new_figure(panels: int = 1):
    """A figure with `panels` side-by-side axes (one axes when 1), drawn off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, panels, figsize=(1 + 5 * panels, 4))


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_groups(ax, groups: dict[str, list[dict]], metric: str, title: str, x_label: str) -> None:
    """Mean +- std over seeds of each group's curve on `ax`."""
    for name, runs in sorted(groups.items()):
        steps, means, stds = aggregate(runs)
        ax.plot(steps, means, label=f"{name} ({len(runs)} seeds)")
        ax.fill_between(
            steps,
            [m - s for m, s in zip(means, stds, strict=False)],
            [m + s for m, s in zip(means, stds, strict=False)],
            alpha=0.2,
        )
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)


REPORTS = {"curves": curves, "modes": modes, "trajectories": trajectories, "distill": distill}


@exit_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in REPORTS:
        raise ConfigError(f"name a report first. Valid choices: {choices(REPORTS)}")
    print(REPORTS[args[0]](args[1:]))


if __name__ == "__main__":
    main()
