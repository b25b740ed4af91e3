"""Peer benchmark: BenchMARL's MASAC and MAPPO against marl_diff agents on VMAS navigation.

`python -m marl_diff.bench peer [agents=2,4] [methods=auto]
[frames=60000] [threshold=1.0] [seeds=0] [settings=masac] [eval_episodes=0] [device=cpu]
[venv=.peer_venv] [runs=results/runs/peer] [out=results/peer.md] [agent.<key>=value ...]
[runner.<key>=value ...]`

In one run:
1. BenchMARL (1.5.2, with vmas) is made available in its own virtualenv `venv=`; when that
   venv lacks it, the venv is created and filled: first `torch==<this interpreter's torch>` (on
   the project's machines a local CPU wheel; installing anything else first makes pip fetch
   CUDA wheels), then `benchmarl==1.5.2 vmas` constrained to that torch.
2. BenchMARL's MASAC / MAPPO run at BenchMARL's own defaults (its shipped yaml files) through
   `results/peer/benchmarl_run.py` under the venv's python, with `frames=` as the budget and an
   evaluation after every collection iteration.
3. marl_diff agents (any online catalog agent, e.g. gaussian and ddpl) run as
   `python -m marl_diff.run` subprocesses with BenchMARL MASAC's settings mapped onto
   marl_diff's overrides (`marl_diff_overrides`), the same budget and the same evaluation
   interval. `settings=own` maps only BenchMARL's task and evaluation schedule
   (`task_overrides`) and leaves marl_diff's training settings at the catalog's: the frames/s
   comparison wants the same work per frame, time to quality each side at its own settings.
   `agent.*` and `runner.*` arguments come after the mapped settings, so they replace them in
   every marl_diff run (`agent.*` only where the agent has the key).
4. One table, a row per method, agent count and seed (`seeds=0,1,2`: every run once per
   seed): frames/s, final and best evaluation return, seconds until the evaluation return
   first reaches `threshold=`, and frames/s relative to MASAC at the same agent count and seed.
   A second table gathers the time to `threshold=` over the seeds (time to quality);
   `threshold=0.8,0.9,1.0` gives one such table per value (the results table takes the first).

`methods=auto` (the default) runs BenchMARL's masac and mappo, the catalog's gaussian and ddpl,
and the presets made for this machine's arithmetic (`fast_presets`); `methods=` names any of
them, or any online catalog agent, in the order given.

`eval_episodes=K` (0: BenchMARL's 10) sets the episodes of every evaluation on both sides. A
mean over 10 episodes of one policy varies by about +-0.3 on this task, so with 10 a run can
"reach" 1.0 by a lucky draw, or miss it at a policy whose mean is above it; more episodes make
time to quality a reading of the policy rather than of the draw, for both sides alike.

`device=cuda` runs both sides on a GPU: BenchMARL's sampling, training and replay-buffer devices
(BenchMARL's advice for VMAS on a GPU) and marl_diff's `device=`, so envs, buffer and updates sit
on the same device on both sides.

Returns are comparable: both frameworks report, per evaluation episode, the sum over steps of
the mean over agents of each agent's reward, and marl_diff gets BenchMARL's navigation task
arguments (notably `shared_rew=false`; marl_diff's own scenario keeps VMAS's default `true`,
whose per-agent reward is the whole team's progress).

Each run's raw output (JSON, metrics.jsonl, logs) stays under `runs=<folder>/<timestamp>/`,
with `summary.json` holding every result.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from marl_diff import precision
from marl_diff.bench import _header, _split, _write, agent_catalogs
from marl_diff.checkpoint import claim_new_dir
from marl_diff.errors import ConfigError, MarlDiffError, choices, exit_cleanly_on_user_error

PEER_SETTINGS = {
    "agents": "2,4",
    "methods": "auto",  # masac, mappo, gaussian, ddpl and `fast_presets`
    # 10 BenchMARL iterations per run. Measured here (2 cores, two torch threads, AMD EPYC Zen
    # 4), the whole default benchmark takes about 25 min, a third of it the catalog's ddpl:
    # raise it where that is cheap.
    "frames": "60000",
    "threshold": "1.0",  # comma-separated: a time-to-quality table per value
    "seeds": "0",  # comma-separated; time to quality wants several
    "settings": "masac",  # marl_diff's training settings: MASAC's mapped, or `own` (catalog)
    "eval_episodes": "0",  # episodes per evaluation on both sides; 0: BenchMARL's default
    "device": "cpu",  # both sides' envs, buffers and updates
    "venv": ".peer_venv",
    "runs": "results/runs/peer",
    "out": "results/peer.md",
}
BENCHMARL_METHODS = ("masac", "mappo")
CATALOG_METHODS = ("gaussian", "ddpl")
SETTINGS_MODES = ("masac", "own")
DEVICES = ("cpu", "cuda")
BENCHMARL_VERSION = "1.5.2"
SCRIPT = Path(__file__).resolve().parent.parent / "results" / "peer" / "benchmarl_run.py"
OUTPUT_TAIL = 30  # lines of a failed subprocess's output quoted in the error


# --------------------------------------------------------------------------- settings mapping
def _value(value) -> str:
    """A value as a marl_diff command-line override writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def task_overrides(settings: dict, n_agents: int) -> list[str]:
    """marl_diff overrides for BenchMARL's navigation task (agents, episode length, task
    arguments) and its evaluation schedule: what both `settings=` modes share."""
    frames_per_iter = int(settings["frames_per_iteration"])
    episodes = int(settings["evaluation_episodes"])
    return [
        f"scenario.n_agents={n_agents}",
        f"scenario.max_steps={settings['max_steps']}",
        *(f"scenario.kwargs.{k}={_value(v)}" for k, v in settings["task_kwargs"].items()),
        f"runner.eval_every={frames_per_iter}",
        f"runner.eval_episodes={episodes}",
        f"runner.eval_num_envs={episodes}",
        f"runner.log_every={frames_per_iter}",
        "runner.checkpoint_every=0",  # BenchMARL's checkpoint_interval is 0
    ]


def marl_diff_overrides(
    settings: dict, agent: str, n_agents: int, agent_keys: set[str] | None = None
) -> list[str]:
    """marl_diff overrides that reproduce BenchMARL's (MASAC) `settings` as far as marl_diff
    has the knob. `settings` is what `benchmarl_run.py --settings-only` reports. `agent.*`
    overrides are kept only for keys in `agent_keys` (the agent's config) when it is given.

    The Gaussian agent is the MASAC counterpart, so it also takes MASAC's actor activation,
    temperature settings and actor loss (torchrl's SAC loss evaluates Q once at the joint action
    freshly sampled for all agents: `others_actions=policy`); other agents keep their own policy
    network, temperature and Q_i, which mean something else there (a diffusion denoiser, DDPL's
    weight temperature, its candidates' Q_i against the replayed actions).

    Not mapped: MASAC's critic has one output per agent, learned from each agent's own reward,
    and its actor loss sums them at the joint action. marl_diff's nearest is
    `agent.critic_rewards=per_agent`, where each agent ascends its own Q_i instead, which with
    fresh actions takes N critic rows per state; the frames/s comparison keeps the team
    critic, one row per state as in MASAC. Pass it as an argument to compare learning."""
    frames_per_iter = int(settings["frames_per_iteration"])
    overrides = [
        *task_overrides(settings, n_agents),
        f"runner.num_envs={settings['n_envs']}",
        f"runner.utd_ratio={settings['updates_per_iteration'] / frames_per_iter!r}",
        f"runner.update_every={frames_per_iter}",  # collect an iteration, then its updates
        f"runner.batch_size={settings['minibatch_size']}",
        f"runner.buffer_size={settings['buffer_size']}",
        f"runner.warmup_steps={settings['prefill_frames']}",  # 0: the policy acts from step 0
    ]
    agent_values = {
        "gamma": settings["gamma"],
        "tau": settings["tau"],
        "actor_hidden": settings["actor_hidden"],
        "critic_hidden": settings["critic_hidden"],
        "critic_activation": settings["activation"],
        "actor_lr": settings["lr"],
        "critic_lr": settings["lr"],
        "grad_clip": float(settings["clip_grad_val"]) if settings["clip_grad_norm"] else 0.0,
        "share_parameters": settings["share_policy_params"],
    }
    if agent == "gaussian":
        agent_values.update(
            actor_activation=settings["activation"],
            alpha_lr=settings["lr"],
            init_alpha=settings["alpha_init"],
            others_actions="policy",
        )
    for key, value in agent_values.items():
        if agent_keys is None or key in agent_keys:
            overrides.append(f"agent.{key}={_value(value)}")
    return overrides


# --------------------------------------------------------------------------- results
def summarize(result: dict, threshold: float) -> dict:
    """Final and best evaluation return, and the first point of the curve at or above
    `threshold` (None when never), from a run's `curve` of (frames, seconds, return)."""
    curve = result["curve"]
    returns = [point[2] for point in curve]
    reached = next((point for point in curve if point[2] >= threshold), None)
    return {
        "final": returns[-1] if returns else math.nan,
        "best": max(returns) if returns else math.nan,
        "reached_s": reached[1] if reached else None,
        "reached_frames": reached[0] if reached else None,
    }


def _reached(summary: dict) -> str:
    if summary["reached_s"] is None:
        return "not reached"
    return f"{summary['reached_s']:,.0f} s ({summary['reached_frames']:,} frames)"


def results_table(results: list[dict], threshold: float) -> list[str]:
    """Markdown rows, one per (method, n_agents, seed), in the order of `results`; the frames/s
    ratio is to the MASAC run of the same agent count and seed."""
    masac = {
        (r["n_agents"], r["seed"]): r["frames_per_s"]
        for r in results
        if r["method"] == "masac" and "error" not in r
    }
    lines = [
        f"| method | framework | agents | seed | frames | train s | frames/s | frames/s / "
        f"MASAC's | final eval return | best eval return | time to eval return >= "
        f"{threshold:g} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        row = f"| {r['method']} | {r['framework']} | {r['n_agents']} | {r['seed']} |"
        if "error" in r:
            lines.append(f"{row} failed: see `{r['log']}` | | | | | | |")
            continue
        s = summarize(r, threshold)
        base = masac.get((r["n_agents"], r["seed"]))
        ratio = f"{r['frames_per_s'] / base:.2f}" if base else "n/a (no MASAC run)"
        lines.append(
            f"{row} {r['frames']:,} | {r['train_seconds']:,.0f} | {r['frames_per_s']:,.0f} | "
            f"{ratio} | {s['final']:.3f} | {s['best']:.3f} | {_reached(s)} |"
        )
    return lines


def time_to_quality_table(results: list[dict], threshold: float) -> list[str]:
    """Markdown rows, one per (method, n_agents): how many seeds' evaluation return reached
    `threshold` within the budget, the median seconds of those that did, and each seed's
    time. The median is over the seeds that reached it only, so read it with the count."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["n_agents"]), []).append(r)
    lines = [
        f"| method | agents | seeds reaching {threshold:g} | median s of those | per seed |",
        "|---|---:|---:|---:|---|",
    ]
    for (method, n), runs in groups.items():
        done = [r for r in runs if "error" not in r]
        summaries = {r["seed"]: summarize(r, threshold) for r in done}
        times = [s["reached_s"] for s in summaries.values() if s["reached_s"] is not None]
        per_seed = "; ".join(
            f"seed {r['seed']}: " + ("failed" if "error" in r else _reached(summaries[r["seed"]]))
            for r in runs
        )
        median = f"{statistics.median(times):,.0f}" if times else "-"
        lines.append(f"| {method} | {n} | {len(times)} of {len(runs)} | {median} | {per_seed} |")
    return lines


def read_metrics(path: Path) -> dict:
    """frames, training seconds and the eval curve of a marl_diff run's metrics.jsonl."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    if not records:
        raise MarlDiffError(f"{path} holds no log events")
    curve = [
        (int(r["env_steps"]), float(r["wall_time"]), float(r["eval/return"]))
        for r in records
        if "eval/return" in r
    ]
    frames = max(int(r["env_steps"]) for r in records)
    seconds = max(float(r["wall_time"]) for r in records)
    return {
        "frames": frames,
        "train_seconds": seconds,
        "frames_per_s": frames / max(seconds, 1e-9),
        "curve": curve,
    }


# --------------------------------------------------------------------------- subprocesses
def _run(command: list[str], log: Path, what: str) -> None:
    """Run `command`, its output into `log`; a failure quotes the end of the log."""
    print(f"peer: {what} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        tail = "\n".join(lines[-OUTPUT_TAIL:])
        raise MarlDiffError(f"{what} failed (exit code {code}); the end of {log}:\n{tail}")
    print(f"peer: {what} done in {time.perf_counter() - start:,.0f} s", file=sys.stderr)


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _has_benchmarl(python: Path) -> bool:
    if not python.exists():
        return False
    check = f"import benchmarl, vmas; assert benchmarl.__version__ == '{BENCHMARL_VERSION}'"
    return subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0


def install_commands(venv: Path, torch_version: str, constraints: Path) -> list[list[str]]:
    """The commands that give `venv` BenchMARL next to this interpreter's torch version."""
    python = str(_venv_python(venv))
    return [
        [sys.executable, "-m", "venv", str(venv)],
        [python, "-m", "pip", "install", f"torch=={torch_version}"],
        [
            python,
            "-m",
            "pip",
            "install",
            f"benchmarl=={BENCHMARL_VERSION}",
            "vmas",
            "-c",
            str(constraints),
        ],
    ]


def ensure_venv(venv: Path, log_dir: Path) -> Path:
    """The python of `venv`, after installing BenchMARL there if it lacks it."""
    python = _venv_python(venv)
    if _has_benchmarl(python):
        return python
    torch_version = torch.__version__.split("+")[0]  # the public version; pip picks the wheel
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(f"torch=={torch_version}\n", encoding="utf-8")
        for i, command in enumerate(install_commands(venv, torch_version, constraints)):
            if i == 0 and python.exists():
                continue  # the venv exists, it only lacks the packages
            _run(command, log_dir / f"install_{i}.log", " ".join(command[1:4]) + " ...")
    if not _has_benchmarl(python):
        raise MarlDiffError(f"{venv} still lacks benchmarl {BENCHMARL_VERSION} after installing")
    return python


def _benchmarl_json(python: Path, args: list[str], log: Path, what: str) -> dict:
    if not SCRIPT.exists():
        raise MarlDiffError(f"{SCRIPT} is missing: run the peer benchmark from a source checkout")
    out = log.with_suffix(".json")
    _run([str(python), str(SCRIPT), *args, "--out", str(out)], log, what)
    return json.loads(out.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the benchmark
def fast_presets(device: str) -> list[str]:
    """The catalog's presets made for MASAC's frames/s on `device`: the bfloat16 ones where
    matrix products take bfloat16 tensors (a GPU; a CPU with AVX512-BF16 or AMX), else
    `ddpl_fast`, float32 (bfloat16 products run about 100x slower there). The catalog's
    gaussian and ddpl stay in the default run beside them: the presets round otherwise, and
    `ddpl_fast` learns less than ddpl."""
    if device == "cuda" or precision.cpu_has_bfloat16_kernels():
        return ["gaussian_bfloat16", "ddpl_fast_bfloat16"]
    return ["ddpl_fast"]


def _parse(args: list[str]) -> tuple[dict, list[str]]:
    from marl_diff.experiment import agent_names

    values, passthrough = _split(args, PEER_SETTINGS, ("agent", "runner"))
    valid_methods = (*BENCHMARL_METHODS, *agent_names("online"))
    if values["methods"] == "auto":
        methods = [*BENCHMARL_METHODS, *CATALOG_METHODS, *fast_presets(values["device"])]
    else:
        methods = [m for m in values["methods"].split(",") if m]
    for method in methods:
        if method not in valid_methods:
            raise ConfigError(f"unknown method '{method}'. Valid choices: {choices(valid_methods)}")
    if not methods:
        raise ConfigError(f"methods= names none. Valid choices: {choices(valid_methods)}")
    try:
        agents = [int(a) for a in values["agents"].split(",") if a]
        seeds = [int(s) for s in values["seeds"].split(",") if s]
        frames = int(values["frames"])
        eval_episodes = int(values["eval_episodes"])
        thresholds = [float(t) for t in values["threshold"].split(",") if t]
    except ValueError:
        raise ConfigError(
            "agents and seeds must be comma-separated lists of integers, frames and "
            "eval_episodes integers and threshold a comma-separated list of numbers"
        ) from None
    if not thresholds:
        raise ConfigError("threshold= names no return, e.g. threshold=1.0 or threshold=0.8,1.0")
    if not agents or min(agents) < 1 or frames <= 0:
        raise ConfigError("agents must list positive agent counts and frames must be positive")
    if eval_episodes < 0:
        raise ConfigError(
            f"eval_episodes must be 0 (BenchMARL's default) or positive, got {eval_episodes}"
        )
    if not seeds or len(set(seeds)) < len(seeds):
        raise ConfigError("seeds= must name one or more different integers, e.g. seeds=0,1,2")
    if values["settings"] not in SETTINGS_MODES:
        raise ConfigError(
            f"unknown settings '{values['settings']}'. Valid choices: {choices(SETTINGS_MODES)}"
        )
    agent_catalogs([m for m in methods if m not in BENCHMARL_METHODS], passthrough)
    if values["device"] not in DEVICES:
        raise ConfigError(f"unknown device '{values['device']}'. Valid choices: {choices(DEVICES)}")
    if values["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda, but torch sees no CUDA GPU here. Valid choices here: cpu")
    parsed = dict(
        values,
        methods=methods,
        agents=agents,
        frames=frames,
        seeds=seeds,
        thresholds=thresholds,
        eval_episodes=eval_episodes,
    )
    return parsed, passthrough


SETTINGS_SHOWN = (
    "n_envs",
    "frames_per_iteration",
    "updates_per_iteration",
    "minibatch_size",
    "buffer_size",
    "prefill_frames",
    "actor_hidden",
    "critic_hidden",
    "activation",
    "lr",
    "adam_eps",
    "gamma",
    "tau",
    "clip_grad_norm",
    "clip_grad_val",
    "share_policy_params",
    "share_param_critic",
    "max_steps",
    "task_kwargs",
    "evaluation_episodes",
    "evaluation_deterministic_actions",
    "alpha_init",
    "target_entropy",
    "num_qvalue_nets",
    "clip_epsilon",
    "entropy_coef",
    "lmbda",
)


def settings_table(masac: dict, mappo: dict) -> list[str]:
    """BenchMARL's settings side by side; blank where an algorithm does not have the key."""
    lines = ["| BenchMARL setting | MASAC | MAPPO |", "|---|---|---|"]
    for key in SETTINGS_SHOWN:
        cells = [_cell(s[key]) if key in s else "" for s in (masac, mappo)]
        lines.append(f"| {key} | {cells[0]} | {cells[1]} |")
    return lines


def _cell(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items())
    return _value(value)


def _run_benchmarl(
    python: Path, method: str, n: int, values: dict, seed: int, runs: Path, log: Path
) -> dict:
    frames = values["frames"]
    args = ["--algorithm", method, "--n-agents", str(n), "--frames", str(frames)]
    args += ["--device", values["device"], *_evaluation_option(values)]
    folder = runs / f"benchmarl_{method}_n{n}_seed{seed}"
    args += ["--seed", str(seed), "--folder", str(folder)]
    what = f"BenchMARL {method}, {n} agents, seed {seed}, {frames:,} frames"
    return _benchmarl_json(python, args, log, what)


def _evaluation_option(values: dict) -> list[str]:
    """benchmarl_run.py's episodes per evaluation, where `eval_episodes=` sets them."""
    episodes = values["eval_episodes"]
    return ["--evaluation-episodes", str(episodes)] if episodes > 0 else []


def marl_diff_arguments(
    masac: dict,
    method: str,
    n: int,
    seed: int,
    values: dict,
    passthrough: list[str],
    run_dir: Path,
) -> list[str]:
    """`python -m marl_diff.run` arguments of one run: MASAC's settings mapped (or, with
    `settings=own`, its task and evaluation schedule only), then the command line's `runner.*`
    overrides and those `agent.*` ones the agent has a key for."""
    from marl_diff import catalog

    keys = set(catalog.load("agent", method).keys())
    own = values["settings"] == "own"
    return [
        "scenario=vmas_navigation",
        f"agent={method}",
        *(task_overrides(masac, n) if own else marl_diff_overrides(masac, method, n, keys)),
        *(
            a
            for a in passthrough
            if a.startswith("runner.") or a.partition("=")[0].removeprefix("agent.") in keys
        ),
        f"runner.total_steps={values['frames']}",
        "runner.progress=false",
        f"device={values['device']}",
        f"seed={seed}",
        f"run_dir={run_dir}",
    ]


def _run_marl_diff(
    masac: dict, method: str, n: int, seed: int, values: dict, passthrough: list[str], log: Path
) -> dict:
    run_dir = log.with_suffix("")
    arguments = marl_diff_arguments(masac, method, n, seed, values, passthrough, run_dir)
    command = [sys.executable, "-m", "marl_diff.run", *arguments]
    _run(command, log, f"marl_diff {method}, {n} agents, seed {seed}, {values['frames']:,} frames")
    result = read_metrics(run_dir / "metrics.jsonl")
    result.update(framework="marl_diff", command=arguments)
    return result


def peer(args: list[str]) -> str:
    values, passthrough = _parse(args)
    methods, agents, frames = values["methods"], values["agents"], values["frames"]
    runs = claim_new_dir(Path(values["runs"]) / time.strftime("%Y%m%d-%H%M%S"))

    python = ensure_venv(Path(values["venv"]), runs)
    settings = {
        method: _benchmarl_json(
            python,
            [
                "--settings-only",
                *("--algorithm", method, "--n-agents", str(agents[0])),
                *_evaluation_option(values),
            ],
            runs / f"settings_{method}.log",
            f"reading BenchMARL's {method} defaults",
        )
        for method in BENCHMARL_METHODS
    }
    versions = settings["masac"]["versions"]
    settings = {method: s["settings"] for method, s in settings.items()}
    for method in [m for m in methods if m in BENCHMARL_METHODS] or ["masac"]:
        per_iter = settings[method]["frames_per_iteration"]
        if frames % per_iter:
            raise ConfigError(
                f"frames must be a multiple of BenchMARL {method}'s frames per iteration "
                f"({per_iter}), e.g. {max(1, round(frames / per_iter)) * per_iter}"
            )

    results = []
    for n in agents:
        for seed in values["seeds"]:
            for method in methods:
                log = runs / f"{method}_n{n}_seed{seed}.log"
                try:
                    if method in BENCHMARL_METHODS:
                        result = _run_benchmarl(python, method, n, values, seed, runs, log)
                        result["framework"] = f"BenchMARL {versions['benchmarl']}"
                    else:
                        result = _run_marl_diff(
                            settings["masac"], method, n, seed, values, passthrough, log
                        )
                except MarlDiffError as err:  # one failed run should not cost the others
                    print(f"peer: {err}", file=sys.stderr)
                    framework = "BenchMARL" if method in BENCHMARL_METHODS else "marl_diff"
                    result = {"error": str(err), "log": str(log), "framework": framework}
                result.update(method=method, n_agents=n, seed=seed)
                results.append(result)
                summary = json.dumps(results, indent=1)
                (runs / "summary.json").write_text(summary, encoding="utf-8")

    report = _report(args, values, passthrough, versions, settings, results, runs)
    return _write(report, values["out"])


def _report(args, values, passthrough, versions, settings, results, runs) -> list[str]:
    import vmas

    methods, frames, thresholds = values["methods"], values["frames"], values["thresholds"]
    masac = settings["masac"]
    per_iter = masac["frames_per_iteration"]
    run_bm = [m for m in BENCHMARL_METHODS if m in methods]
    lines = _header(
        "Peer benchmark: BenchMARL vs marl_diff on VMAS navigation",
        "peer",
        args,
        torch.device(values["device"]),
        f"Seeds {', '.join(map(str, values['seeds']))}, {frames:,} frames (env steps summed "
        f"over the parallel envs) per run, an evaluation every {per_iter:,} frames, runs one "
        f"after another. Raw outputs: `{runs}`.",
    )
    lines += [
        f"BenchMARL side (own venv `{values['venv']}`): "
        + ", ".join(f"{name} {version}" for name, version in versions.items())
        + f". marl_diff side: torch {torch.__version__}, vmas {vmas.__version__}.",
        "",
        "## Results",
        "",
        *results_table(results, thresholds[0]),
        "",
        "frames/s = frames / training wall-clock seconds, from the start of training (after "
        "building envs and networks) to the end of the last evaluation; both sides' times "
        "include their evaluations. Time to threshold: wall-clock seconds at the first "
        "evaluation whose mean return reaches it.",
        "",
        *(
            line
            for threshold in thresholds
            for line in (
                f"## Time to an evaluation return of {threshold:g}, over the seeds",
                "",
                *time_to_quality_table(results, threshold),
                "",
            )
        ),
        "## Settings",
        "",
        "BenchMARL runs its shipped defaults (experiment/base_experiment.yaml, "
        "algorithm/masac.yaml / mappo.yaml, task/vmas/navigation.yaml, model/layers/mlp.yaml for "
        f"actor and critic), changing only max_n_frames={frames}, "
        f"evaluation_interval={per_iter} (default {masac['evaluation_interval']:,}), "
        + (
            f"evaluation_episodes={values['eval_episodes']} (default 10), "
            if values["eval_episodes"]
            else ""
        )
        + "loggers=[csv] (not wandb) and render=false"
        + (
            f", and sampling_device, train_device and buffer_device={values['device']}."
            if values["device"] != "cpu"
            else "."
        ),
        "",
        *settings_table(masac, settings["mappo"]),
        "",
        *_marl_diff_settings(values, masac, passthrough, run_bm),
        "",
        "## How the returns compare",
        "",
        "Both report, per evaluation episode, the sum over its steps of the mean over agents of "
        "each agent's reward (BenchMARL's logger: each agent's rewards summed over the episode, "
        "then averaged over agents; marl_diff: the team reward, mean over agents, summed over "
        f"steps), averaged over the evaluation episodes ({masac['evaluation_episodes']} on both "
        "sides). The marl_diff runs "
        "get BenchMARL's task arguments, so the reward is the same function: with "
        "shared_rew=false an agent earns its own progress to its goal, plus a shared 0.01 "
        "when all agents are on their goals and -1 per collision. (marl_diff's own "
        "`vmas_navigation` keeps VMAS's default shared_rew=true, where each agent earns the "
        "whole team's progress, so its returns there are about n_agents times larger.) A "
        "perfect episode scores about the agent's start distance to its goal: 1.09 on average "
        "with 2 and with 4 agents (measured over 2,000 VMAS resets), so a threshold of 1.0 "
        "asks for nearly every agent to reach its goal without collisions.",
        "",
        "Evaluation actions: BenchMARL's deterministic action of its tanh-normal policy "
        "(evaluation_deterministic_actions=true) for MASAC / MAPPO; "
        "marl_diff's `default` mode (gaussian: tanh of the mean; ddpl: a sample of the "
        "diffusion policy). BenchMARL evaluates on fresh random episodes each time "
        "(evaluation_static=false); marl_diff replays the same evaluation seed.",
        "",
        "## What this does not show",
        "",
        f"- {len(values['seeds'])} seed(s) per method and agent count, no confidence "
        "intervals: each row's returns and time to threshold are one draw, and frames/s varies "
        "with whatever else runs on the machine, including over the time the runs take.",
        (
            f"- CPU only, {torch.get_num_threads()} torch thread(s) in this process (the runs "
            "inherit the environment, OMP_NUM_THREADS included); a GPU changes the balance "
            "between collection and updates, and both frameworks' speeds."
            if values["device"] == "cpu"
            else "- One GPU, one machine: the balance between collection and updates, and so "
            "each side's frames/s, differs on another GPU or with other env counts."
        ),
        f"- A short budget ({frames:,} frames against BenchMARL's default 3,000,000): early "
        "learning speed, not final performance.",
        "- Default settings of each side, untuned for this task"
        + (" (marl_diff's as replaced by the overrides above)" if passthrough else "")
        + "; MAPPO is on-policy and spends its frames differently from the off-policy "
        "methods.",
    ]
    return lines


def _marl_diff_settings(values, masac, passthrough, run_bm) -> list[str]:
    """The report's account of what the marl_diff runs were given, for either `settings=`."""
    n, frames = values["agents"][0], values["frames"]
    if values["settings"] == "own":
        mapped, which = task_overrides(masac, n), "BenchMARL's task only"
        said = (
            "marl_diff agents run at their own catalog settings (`agents/<agent>.yaml`, "
            "`runners/vmas.yaml`, the scenario's `agent_defaults`) on BenchMARL's task: agent "
            "count, episode length, task arguments and the evaluation schedule are BenchMARL's, "
            "none of MASAC's training settings is."
        )
    else:
        mapped = marl_diff_overrides(masac, "gaussian", n)
        which = (
            "other agents take the keys they have; MASAC's activation, temperature and actor "
            "loss go to gaussian only"
        )
        said = (
            "marl_diff agents (gaussian, ddpl, ...) take MASAC's settings: envs, episode length, "
            "task arguments, updates per frame (runner.utd_ratio = updates per iteration / "
            "frames per iteration), minibatch, buffer, no random prefill "
            "(runner.warmup_steps=0; updates start once the buffer holds one minibatch), "
            "widths, lr, gamma, tau, grad-norm clip, parameter sharing and the evaluation "
            "episodes, and its schedule: a whole iteration collected, then all its updates "
            "(runner.update_every = frames per iteration). Not mapped: Adam eps (BenchMARL "
            "1e-6, marl_diff torch's 1e-8) and BenchMARL's std mapping (biased softplus). "
            "Equal already: twin Q networks (num_qvalue_nets=2), target entropy "
            "-act_dim per agent ('auto'), centralised critic. gaussian takes MASAC's actor "
            "loss: Q once at the joint action sampled afresh for all agents "
            "(`agent.others_actions=policy`, marl_diff's default being HASAC's replayed "
            "others). ddpl keeps its own denoiser (activation, diffusion steps and candidates "
            "of `agents/ddpl.yaml` and the scenario's `agent_defaults`), its own temperature "
            "and its candidates' Q_i against the replayed actions; its hidden layers (MASAC's "
            "[256, 256] instead of its own 3 x 256), lr, gamma, tau, clip and sharing follow "
            "MASAC."
        )
    return [
        f"The marl_diff command line for gaussian with {n} agents (`settings="
        f"{values['settings']}`: {which}):",
        "",
        "`python -m marl_diff.run scenario=vmas_navigation agent=gaussian "
        + " ".join(mapped)
        + f" runner.total_steps={frames}`",
        "",
        said + _not_run(run_bm) + _replaced(passthrough),
    ]


def _replaced(passthrough: list[str]) -> str:
    if not passthrough:
        return ""
    given = " ".join(passthrough)
    return (
        " The command line's overrides, applied after these in every marl_diff run (`agent.*` "
        f"where the agent has the key): `{given}`."
    )


def _not_run(run_bm: list[str]) -> str:
    if run_bm:
        return ""
    return " (No BenchMARL method ran: the ratio column has no MASAC to compare with.)"


@exit_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    """`python -m marl_diff.peer [key=value ...]`, the same as `marl_diff.bench peer`."""
    print(peer(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
