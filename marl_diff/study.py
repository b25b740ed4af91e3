"""Studies: a grid of runs launched through Hydra's launcher, restartable, aggregated into one
table and a few plots.

`python -m marl_diff.study scaling scenario=NAME n_agents=1,2,4,8 [agents=gaussian,ddpl]
[seeds=0,1,2] [launcher=local|ray|slurm] [workers=K] [ray_address=ADDR] [threshold=X]
[out=DIR] [KEY=VALUE ...]`

Trains every agent at every agent count and seed, one run each, as a Hydra multirun of
`python -m marl_diff.run` (so each job gets its scenario's `agent_defaults`, and every
`KEY=VALUE`, e.g. `runner.total_steps=20000`, is checked against the catalog as `run` checks it):
- `launcher=local` (default): hydra-joblib-launcher, `workers` processes (default: one per CPU
  core), one torch thread each;
- `launcher=ray`: hydra-ray-launcher on a Ray instance it starts on this machine with `workers`
  CPUs, or on an existing cluster given `ray_address=HOST:PORT`; one CPU per run;
- `launcher=slurm`: hydra-submitit-launcher, one SLURM job per run (one CPU each, at most
  `workers` at once); pass its settings as `hydra.launcher.partition=...`,
  `hydra.launcher.timeout_min=...`, `hydra.launcher.gpus_per_node=...` etc.
Runs go to `out/runs/<agent>/n<N>/seed<S>` with `resume=auto`: invoked again, the study keeps
finished runs, resumes interrupted ones from their checkpoints and refuses (before launching
anything) a run folder made with another resolved config, and an `out` folder whose
`study.json` records another study, whose report this one would replace. Then it writes the
report.

`python -m marl_diff.study report DIR [threshold=X]`: the aggregation alone. `DIR/scaling.md`
has per agent and N the final evaluation return (mean +- std over seeds), the best mean return,
seconds until the return first reached `threshold`, env steps/s, ms per update and wall time
(plus success rate and goal combinations where the scenario reports them), and each agent's
difference from the baseline (gaussian, else the first agent) per N; `scaling.png` plots return,
difference and cost against N, `curves.png` the learning curves per N.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from statistics import mean, pstdev, stdev

from marl_diff import catalog, run
from marl_diff.bench import machine
from marl_diff.envs.agent_count import agent_count
from marl_diff.errors import ConfigError, MarlDiffError, choices, exit_cleanly_on_user_error
from marl_diff.report import (
    aggregate,
    final_value,
    find_runs,
    load_run,
    mean_positive,
    new_figure,
    plot_groups,
    save_figure,
)

LAUNCHERS = ("local", "ray", "slurm")
SETTINGS = {
    "scenario": None,
    "n_agents": None,
    "agents": "gaussian,ddpl",
    "seeds": "0,1,2",
    "launcher": "local",
    "workers": None,
    "ray_address": None,
    "threshold": None,
    "out": None,
}
# Settings of a run that the study itself sets for each job.
STUDY_OWNED = ("scenario", "agent", "scenario.n_agents", "seed", "run_dir", "resume", "threads")
BASELINE = "gaussian"
METRIC = "eval/return"


@dataclass(frozen=True)
class Job:
    agent: str
    n_agents: int
    seed: int
    run_dir: Path


@dataclass
class ScalingStudy:
    scenario: str
    n_agents: list[int]
    agents: list[str]
    seeds: list[int]
    out: Path
    launcher: str = "local"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    ray_address: str | None = None
    threshold: float | None = None
    overrides: list[str] = field(default_factory=list)  # given to every run
    command: str = ""  # the command line that made the study, for its report

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    def jobs(self) -> list[Job]:
        """The grid: every agent x agent count x seed."""
        return [
            Job(agent, n, seed, self.runs / agent / f"n{n}" / f"seed{seed}")
            for agent, n, seed in itertools.product(self.agents, self.n_agents, self.seeds)
        ]

    def _run_arguments(self, agent: str, n_agents: str, seed: str, run_dir: Path) -> list[str]:
        return [
            f"scenario={self.scenario}",
            f"agent={agent}",
            f"scenario.n_agents={n_agents}",
            f"seed={seed}",
            *self.overrides,
            f"run_dir={run_dir}",
            "resume=auto",
            "threads=1",
        ]

    def job_arguments(self, job: Job) -> list[str]:
        """`python -m marl_diff.run` arguments of one job (what the sweep gives it)."""
        return self._run_arguments(job.agent, str(job.n_agents), str(job.seed), job.run_dir)

    def sweep_arguments(self) -> list[str]:
        """The whole grid as one Hydra multirun of `marl_diff.run` on the chosen launcher."""
        grid = self._run_arguments(
            ",".join(self.agents),
            ",".join(map(str, self.n_agents)),
            ",".join(map(str, self.seeds)),
            self.runs / "${agent.name}" / "n${scenario.n_agents}" / "seed${seed}",
        )
        return [
            "-m",
            *grid,
            "runner.progress=false",
            f"hydra.sweep.dir={self.runs}",
            "hydra.sweep.subdir=.hydra/${hydra.job.num}",
            *self.launcher_arguments(),
        ]

    def launcher_arguments(self) -> list[str]:
        if self.launcher == "local":
            return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={self.workers}"]
        if self.launcher == "ray":
            init = [f"hydra.launcher.ray.init.address={self.ray_address or 'null'}"]
            if not self.ray_address:  # a Ray instance of our own, sized to `workers`
                init.append(f"++hydra.launcher.ray.init.num_cpus={self.workers}")
            return ["hydra/launcher=ray", *init, "++hydra.launcher.ray.remote.num_cpus=1"]
        return [
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.cpus_per_task=1",
            f"hydra.launcher.array_parallelism={self.workers}",
        ]

    def states(self) -> dict[Job, str]:
        """Each job's run folder: 'finished', 'interrupted' or 'new'; raises, before anything is
        launched, when a folder holds a run made with another resolved config."""
        return {
            job: run.check_rerun(run.compose(self.job_arguments(job)), job.run_dir)
            for job in self.jobs()
        }

    def check_out(self) -> None:
        """Raises when `out` holds another study's record: writing this study's report there
        would replace that one (a committed study's, say). The same study, resumed or grown,
        passes: the same scenario and run overrides, and a grid that keeps every agent, agent
        count and seed it recorded."""
        record = read_record(self.out)
        if not record:
            return
        same = (
            record.get("scenario") == self.scenario
            and sorted(record.get("overrides", [])) == sorted(self.overrides)
            and set(record.get("agents", [])) <= set(self.agents)
            and set(record.get("n_agents", [])) <= set(self.n_agents)
            and set(record.get("seeds", [])) <= set(self.seeds)
        )
        if not same:
            raise MarlDiffError(
                f"'{self.out}' holds another study ({record.get('command', 'its study.json')}),"
                " whose report this one would replace. Give this study its own folder with "
                "out=DIR, or grow that study there: its scenario and settings, and a grid that "
                "keeps its agents, agent counts and seeds."
            )

    def launch(self) -> None:
        states = self.states()
        self.check_out()
        counts = {
            s: sum(v == s for v in states.values()) for s in ("finished", "interrupted", "new")
        }
        print(
            f"study: {len(states)} runs in {self.runs}: {counts['finished']} finished (kept), "
            f"{counts['interrupted']} interrupted (resumed), {counts['new']} to start; "
            f"launcher {self.launcher}"
        )
        self.write_record()
        if counts["finished"] < len(states):
            os.environ["OMP_NUM_THREADS"] = "1"  # for the workers: one thread per run
            run.main(self.sweep_arguments())
        unfinished = [
            job.run_dir for job in self.jobs() if not (job.run_dir / "eval.json").is_file()
        ]
        if unfinished:
            raise MarlDiffError(
                f"{len(unfinished)} of {len(states)} runs did not finish (their errors are "
                f"above): {', '.join(map(str, unfinished))}. Invoke the study again to resume them."
            )

    def write_record(self) -> None:
        """study.json: the command, the grid and the machine, for the report."""
        self.out.mkdir(parents=True, exist_ok=True)
        record = {
            "command": self.command,
            "scenario": self.scenario,
            "agents": self.agents,
            "n_agents": self.n_agents,
            "seeds": self.seeds,
            "overrides": self.overrides,
            "launcher": self.launcher,
            "workers": self.workers,
            "threshold": self.threshold,
            "machine": f"{machine()}, one torch thread per run, {self.workers} runs at once",
            "date": date.today().isoformat(),
        }
        (self.out / "study.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def read_record(out: Path) -> dict:
    """The study.json that `ScalingStudy.write_record` left in `out`; {} when there is none."""
    record_file = out / "study.json"
    if not record_file.is_file():
        return {}
    return json.loads(record_file.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ command line
def _parse(args: list[str], allowed: dict) -> tuple[dict, list[str]]:
    """Split `key=value` arguments into study settings and overrides for every run."""
    values, overrides = dict(allowed), []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(
                f"expected key=value, got '{arg}'. Study settings: {choices(allowed)}"
            )
        if key in allowed:
            values[key] = value
        elif key.lstrip("+~") in STUDY_OWNED:
            raise ConfigError(
                f"'{key}' is set by the study for each run; choose the grid with "
                f"{choices(['scenario', 'agents', 'n_agents', 'seeds'])}"
            )
        else:
            overrides.append(arg)
    return values, overrides


def _ints(name: str, text: str | None, low: int) -> list[int]:
    try:
        numbers = [int(v) for v in str(text).split(",")]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < low:
        raise ConfigError(
            f"{name} must be a comma-separated list of integers >= {low}, not '{text}'"
        )
    return numbers


def scalable_scenarios() -> list[str]:
    return [
        name
        for name in catalog.names("scenario")
        if agent_count(catalog.load("scenario", name)).sweepable
    ]


def parse_scaling(args: list[str]) -> ScalingStudy:
    values, overrides = _parse(args, SETTINGS)
    scenario = values["scenario"]
    if not scenario:
        raise ConfigError(
            f"scenario=NAME is required; scalable scenarios: {choices(scalable_scenarios())}"
        )
    count = agent_count(catalog.load("scenario", scenario))  # raises for an unknown name
    if not count.sweepable:
        raise ConfigError(
            f"scenario '{scenario}' has a fixed agent count ({count.describe()}), so there is "
            f"nothing to scale. Scenarios whose scenario.n_agents sets it: "
            f"{choices(scalable_scenarios())}"
        )
    if values["n_agents"] is None:
        raise ConfigError("n_agents=N1,N2,... is required (the agent counts to compare)")
    agents = [a for a in str(values["agents"]).split(",") if a]
    for agent in agents:
        catalog.load("agent", agent)  # raises with the valid names
    if values["launcher"] not in LAUNCHERS:
        raise ConfigError(f"unknown launcher '{values['launcher']}'. Valid: {choices(LAUNCHERS)}")
    threshold = values["threshold"]
    try:
        threshold = None if threshold is None else float(threshold)
    except ValueError:
        raise ConfigError(f"threshold must be a number, not '{threshold}'") from None
    study = ScalingStudy(
        scenario=scenario,
        n_agents=_ints("n_agents", values["n_agents"], 1),
        agents=agents,
        seeds=_ints("seeds", values["seeds"], 0),
        out=Path(values["out"] or f"results/study/scaling_{scenario}"),
        launcher=values["launcher"],
        ray_address=values["ray_address"],
        threshold=threshold,
        overrides=overrides,
        command="python -m marl_diff.study scaling " + shlex.join(args),
    )
    if values["workers"] is not None:
        study.workers = _ints("workers", values["workers"], 1)[0]
    return study


# ------------------------------------------------------------------ aggregation
@dataclass
class Cell:
    """The runs of one agent at one agent count."""

    runs: list[dict] = field(default_factory=list)  # report.load_run dicts, curve over steps
    wall_curves: list[dict] = field(default_factory=list)  # the same, over wall seconds
    evals: list[dict] = field(default_factory=list)  # eval.json of each run

    def finals(self) -> list[float]:
        return [final_value(one) for one in self.runs]


def load_cells(runs_dir: Path) -> dict[tuple[str, int], Cell]:
    """Finished runs (eval.json written) under `runs_dir`, by (agent, agent count)."""
    cells: dict[tuple[str, int], Cell] = defaultdict(Cell)
    for run_dir in find_runs(runs_dir):
        if not (run_dir / "eval.json").is_file():
            continue
        loaded = load_run(run_dir, METRIC)
        if not loaded["curve"]:
            continue
        cfg = loaded["config"]
        cell = cells[(str(cfg.agent.name), agent_count(cfg.scenario).count or 0)]
        cell.runs.append(loaded)
        cell.wall_curves.append(load_run(run_dir, METRIC, axis="wall_time")["curve"])
        cell.evals.append(json.loads((run_dir / "eval.json").read_text(encoding="utf-8")))
    return dict(cells)


def _time_to(curve: dict, threshold: float) -> float | None:
    return next((t for t, value in curve.items() if value >= threshold), None)


def _mean_std(values: list[float], digits: int = 2) -> str:
    return f"{mean(values):.{digits}f} +- {pstdev(values):.{digits}f}"


def scaling_report(args: list[str]) -> str:
    if not args:
        raise ConfigError(
            "name the study folder: python -m marl_diff.study report DIR [threshold=X]"
        )
    out = Path(args[0])
    values, extra = _parse(args[1:], {"threshold": None})
    if extra:
        raise ConfigError(f"unknown argument '{extra[0]}'. Valid: {choices(['threshold'])}")
    record = read_record(out)
    threshold = values["threshold"] if values["threshold"] is not None else record.get("threshold")
    threshold = None if threshold is None else float(threshold)
    runs_dir = out / "runs" if (out / "runs").is_dir() else out
    cells = load_cells(runs_dir)
    if not cells:
        raise MarlDiffError(
            f"no finished runs (eval.json) under '{runs_dir}': run the study first "
            f"(python -m marl_diff.study scaling ... out={out}); a committed study keeps "
            "only its tables and plots"
        )
    text = _table(cells, record, threshold)
    _plots(cells, out)
    (out / "scaling.md").write_text(text, encoding="utf-8")
    return text


def _table(cells: dict[tuple[str, int], Cell], record: dict, threshold: float | None) -> str:
    agents = sorted({agent for agent, _ in cells})
    counts = sorted({n for _, n in cells})
    first = next(iter(cells.values())).runs[0]["config"]
    rc = first.runner
    title = record.get("scenario", str(first.scenario.name))
    lines = [f"# Scaling with the agent count: {title}", ""]
    if record:
        lines += [
            f"Command: `{record['command']}`",
            "",
            f"Machine: {record['machine']}; {record['date']}.",
            "",
        ]
    lines += [
        f"Budget per run: {rc.total_steps} env steps, {rc.num_envs} env copies, "
        f"{rc.utd_ratio} updates per env step, batch {rc.batch_size}, {rc.warmup_steps} warm-up "
        f"steps; final return over {rc.eval_episodes} evaluation episodes"
        + (
            f"; settings given to every run: `{' '.join(record['overrides'])}`"
            if record.get("overrides")
            else ""
        )
        + ".",
        "",
        "Mean +- std over seeds. Speeds are per run with one torch thread, several runs side "
        "by side: env steps/s over the whole run (warm-up and evaluations included), ms/update "
        "the host time per gradient update (batch sampling included).",
        "",
    ]
    extras = [
        key
        for key in ("success_rate", "goal_combinations")
        if any(key in e for cell in cells.values() for e in cell.evals)
    ]
    reach = f"s to return >= {threshold:g} (runs)" if threshold is not None else None
    header = ["agent", "N", "seeds", "final return", "best mean return"]
    header += [reach] if reach else []
    header += [
        "env steps/s",
        "ms/update",
        "act ms/step",
        "wall min/run",
        *(k.replace("_", " ") for k in extras),
    ]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for agent in agents:
        for n in counts:
            cell = cells.get((agent, n))
            if cell is None:
                continue
            row = [agent, str(n), str(len(cell.runs)), _mean_std(cell.finals())]
            row.append(f"{max(aggregate(cell.runs)[1]):.2f}")
            if reach:
                times = [t for c in cell.wall_curves if (t := _time_to(c, threshold)) is not None]
                row.append(
                    f"{mean(times):.0f} ({len(times)}/{len(cell.runs)})"
                    if times
                    else f"- (0/{len(cell.runs)})"
                )
            row += [
                f"{mean(max(r['curve']) / r['wall_time'] for r in cell.runs):.0f}",
                f"{mean_positive(cell.runs, 'perf/update_ms'):.1f}",
                f"{mean_positive(cell.runs, 'perf/act_ms_per_step'):.2f}",
                f"{mean(r['wall_time'] for r in cell.runs) / 60:.1f}",
            ]
            for key in extras:
                found = [float(e[key]) for e in cell.evals if key in e]
                row.append(_mean_std(found) if found else "")
            lines.append("| " + " | ".join(row) + " |")
    baseline = BASELINE if BASELINE in agents else agents[0]
    for agent in (a for a in agents if a != baseline):
        lines += [
            "",
            f"## {agent} minus {baseline}",
            "",
            "| N | final return difference | standard error |",
            "|---:|---:|---:|",
        ]
        for n, gap, error in _gaps(cells, agent, baseline, counts):
            lines.append(f"| {n} | {gap:+.2f} | {error:.2f} |")
    lines += ["", "Plots: `scaling.png` (return, difference and cost against N), `curves.png`."]
    return "\n".join(lines) + "\n"


def _gaps(cells, agent: str, baseline: str, counts: list[int]) -> list[tuple[int, float, float]]:
    """Per N: mean final return of `agent` minus `baseline`'s, and the standard error of that
    difference (seed spreads of both, sample std)."""
    rows = []
    for n in counts:
        if (agent, n) not in cells or (baseline, n) not in cells:
            continue
        a, b = cells[(agent, n)].finals(), cells[(baseline, n)].finals()
        error = sum(stdev(x) ** 2 / len(x) if len(x) > 1 else 0.0 for x in (a, b)) ** 0.5
        rows.append((n, mean(a) - mean(b), error))
    return rows


def _plots(cells: dict[tuple[str, int], Cell], out: Path) -> None:
    agents = sorted({agent for agent, _ in cells})
    counts = sorted({n for _, n in cells})
    baseline = BASELINE if BASELINE in agents else agents[0]
    fig, (ret, gap, cost) = new_figure(3)
    for agent in agents:
        ns = [n for n in counts if (agent, n) in cells]
        finals = [cells[(agent, n)].finals() for n in ns]
        ret.errorbar(
            ns,
            [mean(f) for f in finals],
            yerr=[pstdev(f) for f in finals],
            marker="o",
            capsize=3,
            label=agent,
        )
        cost.plot(
            ns,
            [mean_positive(cells[(agent, n)].runs, "perf/update_ms") for n in ns],
            marker="o",
            label=agent,
        )
        if agent != baseline:
            rows = _gaps(cells, agent, baseline, counts)
            gap.errorbar(
                [r[0] for r in rows],
                [r[1] for r in rows],
                yerr=[r[2] for r in rows],
                marker="o",
                capsize=3,
                label=f"{agent} - {baseline}",
            )
    gap.axhline(0.0, color="grey", lw=0.8)
    titles = ("final return, mean +- std over seeds", f"difference from {baseline} +- s.e.", "cost")
    for ax, label, title in zip(
        (ret, gap, cost),
        ("final eval return", "return difference", "ms per update"),
        titles,
        strict=True,
    ):
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.set_xlabel("agents N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    save_figure(fig, out / "scaling.png")

    fig, axes = new_figure(len(counts))
    for ax, n in zip(axes if len(counts) > 1 else [axes], counts, strict=True):
        groups = {agent: cells[(agent, n)].runs for agent in agents if (agent, n) in cells}
        plot_groups(ax, groups, METRIC, title=f"N = {n}", x_label="env steps")
    save_figure(fig, out / "curves.png")


# ------------------------------------------------------------------ entry point
def scaling(args: list[str]) -> str:
    study = parse_scaling(args)
    study.launch()
    return scaling_report([str(study.out)])


COMMANDS = {"scaling": scaling, "report": scaling_report}


@exit_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        raise ConfigError(f"name a study command first. Valid choices: {choices(COMMANDS)}")
    print(COMMANDS[args[0]](args[1:]))


if __name__ == "__main__":
    main()
