"""The distillation study's report, `python -m marl_diff.report distill runs=DIR [out=PREFIX]`:
every finished distillation under DIR (config.yaml + eval.json of `marl_diff.distill`), grouped
by its paired samples per task, averaged over seeds. Writes PREFIX.md (per task and over the
tasks: normalised return of every row, mean +- std over seeds, expert = 1 and random = 0) and
PREFIX.png (the same against the paired count, one panel per task and one for the mean).
"""

from __future__ import annotations

import json
import shlex
from collections import defaultdict
from pathlib import Path
from statistics import mean, pstdev

from omegaconf import OmegaConf

from marl_diff.errors import ConfigError, MarlDiffError
from marl_diff.typed_config import key_values

SETTINGS = {"runs": None, "out": None}
BUDGET_KEYS = (
    "unlabeled",
    "unlabeled_from",
    "expert_mode",
    "specialist_hidden",
    "specialist_updates",
    "generalist_hidden",
    "generalist_updates",
    "batch_size",
    "lr",
    "diffusion_steps",
    "eval_episodes",
)
MEAN = "mean over tasks"


def finished_distillations(root: Path) -> dict[int, list[tuple[dict, dict]]]:
    """paired count -> [(config, eval report)] of every finished distillation under `root`,
    ordered by seed."""
    if not root.is_dir():
        raise ConfigError(f"runs='{root}' is not a folder")
    found: dict[int, list[tuple[dict, dict]]] = defaultdict(list)
    for path in sorted(root.rglob("eval.json")):
        config = path.parent / "config.yaml"
        if not config.is_file():
            continue
        cfg = OmegaConf.to_container(OmegaConf.load(config))
        if "paired" in cfg and "tasks" in cfg:
            found[int(cfg["paired"])].append((cfg, json.loads(path.read_text())))
    if not found:
        raise MarlDiffError(f"no finished distillation (config.yaml + eval.json) under '{root}'")
    for runs in found.values():
        runs.sort(key=lambda run: int(run[0]["seed"]))
    return dict(sorted(found.items()))


def normalised(runs: list[tuple[dict, dict]]) -> dict[str, dict[str, list[float]]]:
    """task (and MEAN) -> row -> normalised return of each seed."""
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _, report in runs:
        for task, entry in report["tasks"].items():
            for row, result in entry["rows"].items():
                out[task][row].append(result["normalized"])
        for row, value in report["rows"].items():
            out[MEAN][row].append(value)
    return out


def distill(args: list[str]) -> str:
    values = key_values(args, SETTINGS)
    if not values["runs"]:
        raise ConfigError("runs=DIR is required (a folder holding distillation run folders)")
    root = Path(values["runs"])
    by_count = finished_distillations(root)
    table = {count: normalised(runs) for count, runs in by_count.items()}
    tasks = list(dict.fromkeys(t for per_task in table.values() for t in per_task if t != MEAN))
    rows = list(dict.fromkeys(r for per in table.values() for t in per.values() for r in t))
    first_cfg, first_report = next(iter(by_count.values()))[0]
    out = Path(values["out"] or root / "report")
    out.parent.mkdir(parents=True, exist_ok=True)

    command = "python -m marl_diff.report distill " + " ".join(shlex.quote(a) for a in args)
    budget = ", ".join(f"{k}={first_cfg[k]}" for k in BUDGET_KEYS if k in first_cfg)
    lines = [
        f"# Distillation: normalised return by paired samples per task ({root.name})",
        "",
        f"Command: `{command}`",
        "",
        f"Settings of the first run: {budget}.",
        "",
        "Normalised per task on the same seeded evaluation episodes: uniform random = 0, the "
        "expert = 1. Mean +- std over seeds.",
        "",
        "| task | expert return | random return |",
        "|---|---:|---:|",
    ]
    for task, entry in first_report["tasks"].items():
        lines.append(f"| {task} | {entry['expert']:.2f} | {entry['random']:.2f} |")
    for task in [*tasks, MEAN]:
        lines += ["", f"## {task}", "", "| paired per task | seeds | " + " | ".join(rows) + " |"]
        lines.append("|---:|---:|" + "---:|" * len(rows))
        for count, per_task in table.items():
            cells = [
                f"{mean(v):.2f} +- {pstdev(v):.2f}" if (v := per_task[task].get(row)) else ""
                for row in rows
            ]
            seeds = len(by_count[count])
            lines.append(f"| {count} | {seeds} | " + " | ".join(cells) + " |")
    _plot(table, [*tasks, MEAN], rows, out.with_suffix(".png"))
    lines += ["", f"Plot: `{out.with_suffix('.png').name}`."]
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    return text


def _plot(table: dict, panels: list[str], rows: list[str], path: Path) -> None:
    from marl_diff.report import new_figure, save_figure

    fig, axes = new_figure(len(panels))
    axes = axes if len(panels) > 1 else [axes]
    counts = list(table)
    for ax, task in zip(axes, panels, strict=True):
        for row in rows:
            points = [(k, table[k][task][row]) for k in counts if table[k][task].get(row)]
            if points:
                ax.errorbar(
                    [k for k, _ in points],
                    [mean(v) for _, v in points],
                    yerr=[pstdev(v) for _, v in points],
                    marker="o",
                    capsize=3,
                    label=row,
                )
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(k) for k in counts])  # the counts run, not log-scale minors
        ax.minorticks_off()
        ax.set_title(task)
        ax.set_xlabel("paired samples per task")
        ax.set_ylabel("normalised return")
    axes[0].legend()
    save_figure(fig, path)
