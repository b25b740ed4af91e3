"""`python -m marl_diff.evaluate run_dir=DIR [episodes=K] [sample=true|false] [seed=S]
[num_envs=E] [device=cpu|cuda|auto] [mode=M | modes=all]`

Loads the latest checkpoint of a run and plays K episodes with decentralised execution (each
agent acts from its own observation). Unset settings are the run's own evaluation settings
(`runner.eval_episodes`, `runner.eval_num_envs`, `runner.eval_mode`, the run's evaluation
seed and its `matmul_precision`), so with none given it repeats the run's final evaluation.
`sample=true` draws every agent's action from its policy, the Gaussian's included (see
runners/evaluation.py).

`mode=M` asks an agent that learned behaviour modes it can be conditioned on (DDiffPG with
`agent.mode_embeddings=true`) for its mode M (0-based), and `modes=all` plays the same seeded
episodes once per mode: the report's `per_mode` holds each mode's return, success rate and
which routes or goals it took, which shows whether asking for a mode gets that behaviour.

The report goes to
DIR/evaluations/<sample|default>_episodes<K>_envs<E>_seed<S>_<progress>[_mode<M>|_modes].json,
<progress> being the checkpoint's `steps<N>` (env steps; offline runs: `updates<N>`). The name
holds everything that decides the reading: E env copies with one seed play other episodes than
one copy does, and a resumed run's later checkpoint is another policy, so no reading
overwrites a different one. The run's own eval.json is never touched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from marl_diff import precision
from marl_diff.errors import ConfigError, exit_cleanly_on_user_error
from marl_diff.experiment import load_run, run_config, runner_setup
from marl_diff.run import resolve_device, saved_top_level
from marl_diff.runners.base import eval_seed
from marl_diff.runners.evaluation import evaluate_episodes, outcome_shares
from marl_diff.typed_config import key_values

# None: the run's own setting
SETTINGS = {
    "run_dir": None,
    "episodes": None,
    "sample": None,
    "seed": None,
    "num_envs": None,
    "device": "auto",
    "mode": None,
    "modes": None,
}
# what one mode's entry of a `modes=all` report keeps
PER_MODE_KEYS = (
    "mean_return",
    "std_return",
    "success_rate",
    "distinct_modes",
    "mode_shares",
    "modes_covered",
    "goal_shares",
)
BOOLEANS = {"true": True, "false": False}


def parse(args: list[str]) -> dict:
    values = key_values(args, SETTINGS)
    if values["run_dir"] is None:
        raise ConfigError("run_dir=DIR is required (a directory made by marl_diff.run)")
    for key in ("episodes", "seed", "num_envs", "mode"):
        if values[key] is None:
            continue
        try:
            values[key] = int(values[key])
        except ValueError:
            raise ConfigError(f"{key} must be an integer, not '{values[key]}'") from None
        if key not in ("seed", "mode") and values[key] <= 0:
            raise ConfigError(f"{key} must be positive")
    if values["mode"] is not None and values["mode"] < 0:
        raise ConfigError("mode must be a mode's index, 0 or more")
    if values["modes"] not in (None, "all"):
        raise ConfigError(f"modes can only be 'all', not '{values['modes']}'")
    if values["mode"] is not None and values["modes"] is not None:
        raise ConfigError("give mode=M (one mode) or modes=all, not both")
    if values["sample"] is not None:
        if values["sample"].lower() not in BOOLEANS:
            raise ConfigError(f"sample must be true or false, not '{values['sample']}'")
        values["sample"] = BOOLEANS[values["sample"].lower()]
    return values


def evaluate_run(
    run_dir: Path,
    episodes: int | None = None,
    device: str = "auto",
    seed: int | None = None,
    num_envs: int | None = None,
    sample: bool | None = None,
    behaviour_mode: int | str | None = None,
) -> tuple[dict, Path]:
    """Evaluate a run's latest checkpoint; returns the report and the file it was written to.
    `behaviour_mode`: a mode index to ask the agent for, or "all" to evaluate each in turn."""
    cfg = run_config(run_dir)
    _, runner = runner_setup(cfg)
    precision.configure(saved_top_level(cfg, "matmul_precision"))  # the run's own products
    episodes = runner.eval_episodes if episodes is None else episodes
    seed = eval_seed(int(cfg.seed)) if seed is None else seed
    num_envs = runner.eval_num_envs if num_envs is None else num_envs
    mode = runner.eval_mode if sample is None else ("sample" if sample else "default")
    loaded = load_run(run_dir, resolve_device(device), min(num_envs, episodes), seed)
    suffix = ""
    try:
        if behaviour_mode is None:
            report = evaluate_episodes(loaded.agent, loaded.env, episodes, seed, mode)
        else:
            asked = _asked_modes(loaded.agent, behaviour_mode, cfg)
            per_mode = {}
            for k in asked:
                loaded.agent.select_mode(k)
                per_mode[str(k)] = evaluate_episodes(loaded.agent, loaded.env, episodes, seed, mode)
            if behaviour_mode == "all":
                report = {
                    "mode": mode,
                    "episodes": episodes,
                    "behaviour_modes": len(asked),
                    "per_mode": {
                        k: {key: r[key] for key in PER_MODE_KEYS if key in r}
                        for k, r in per_mode.items()
                    },
                }
                suffix = "_modes"
            else:
                report = {**per_mode[str(behaviour_mode)], "behaviour_mode": behaviour_mode}
                suffix = f"_mode{behaviour_mode}"
    finally:
        loaded.env.close()
    progress = {
        k: int(loaded.checkpoint[k]) for k in ("env_steps", "updates") if k in loaded.checkpoint
    }
    report.update(progress, seed=seed, num_envs=loaded.env.num_envs)
    at = (
        f"steps{progress['env_steps']}"
        if "env_steps" in progress
        else f"updates{progress.get('updates', 0)}"
    )
    name = f"{mode}_episodes{episodes}_envs{loaded.env.num_envs}_seed{seed}_{at}{suffix}.json"
    out = run_dir / "evaluations" / name
    out.parent.mkdir(exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    return report, out


def _asked_modes(agent, behaviour_mode: int | str, cfg) -> list[int]:
    """The mode indices to evaluate, after checking the run's agent can be asked for them."""
    count = agent.behaviour_modes()
    if count == 0:
        raise ConfigError(
            f"mode=/modes= need an agent conditioned on learned modes (agent=ddiffpg "
            f"agent.mode_embeddings=true); this run's agent ({cfg.agent.algorithm}) has none"
        )
    if behaviour_mode == "all":
        return list(range(count))
    if behaviour_mode >= count:
        raise ConfigError(
            f"mode={behaviour_mode} is out of range: this run's agent has {count} modes "
            f"(mode=0..{count - 1})"
        )
    return [behaviour_mode]


@exit_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    values = parse(sys.argv[1:] if argv is None else argv)
    report, out = evaluate_run(
        Path(values["run_dir"]),
        values["episodes"],
        values["device"],
        values["seed"],
        values["num_envs"],
        values["sample"],
        values["mode"] if values["modes"] is None else values["modes"],
    )
    if "per_mode" in report:
        for k, entry in report["per_mode"].items():
            print(f"mode {k}: {_summary_line(entry, report)}")
        print(f"-> {out}")
    else:
        print(f"{_summary_line(report, report)} -> {out}")


def _summary_line(entry: dict, report: dict) -> str:
    extra = f", {entry['modes_covered']} goals covered" if "modes_covered" in entry else ""
    if "success_rate" in entry:
        extra += f", success {entry['success_rate']:.0%}"
    if "distinct_modes" in entry:
        extra += f", {entry['distinct_modes']} distinct modes"
    shares = outcome_shares(entry)
    if shares:
        extra += " (" + ", ".join(f"{m}: {share:.0%}" for m, share in shares.items()) + ")"
    return (
        f"return {entry['mean_return']:.3f} +- {entry['std_return']:.3f} over "
        f"{report['episodes']} episodes ({report['mode']}{extra})"
    )


if __name__ == "__main__":
    main()
