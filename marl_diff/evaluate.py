"""`python -m marl_diff.evaluate run_dir=DIR [episodes=K] [sample=true|false] [seed=S]
[num_envs=E] [device=cpu|cuda|auto]`

Loads the latest checkpoint of a run and plays K episodes with decentralised execution (each
agent acts from its own observation). Unset settings are the run's own evaluation settings
(`runner.eval_episodes`, `runner.eval_num_envs`, `runner.eval_mode` and the run's evaluation
seed), so with none given it repeats the run's final evaluation. `sample=true` draws every
agent's action from its policy, the Gaussian's included (see runners/evaluation.py).

The report goes to DIR/evaluations/<mode>_episodes<K>_seed<S>.json; the run's own eval.json is
never touched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from marl_diff.errors import ConfigError, exit_cleanly_on_user_error
from marl_diff.experiment import load_run, run_config, runner_setup
from marl_diff.run import resolve_device
from marl_diff.runners.base import eval_seed
from marl_diff.runners.evaluation import evaluate_episodes
from marl_diff.typed_config import key_values

# None: the run's own setting
SETTINGS = {
    "run_dir": None,
    "episodes": None,
    "sample": None,
    "seed": None,
    "num_envs": None,
    "device": "auto",
}
BOOLEANS = {"true": True, "false": False}


def parse(args: list[str]) -> dict:
    values = key_values(args, SETTINGS)
    if values["run_dir"] is None:
        raise ConfigError("run_dir=DIR is required (a directory made by marl_diff.run)")
    for key in ("episodes", "seed", "num_envs"):
        if values[key] is None:
            continue
        try:
            values[key] = int(values[key])
        except ValueError:
            raise ConfigError(f"{key} must be an integer, not '{values[key]}'") from None
        if key != "seed" and values[key] <= 0:
            raise ConfigError(f"{key} must be positive")
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
) -> tuple[dict, Path]:
    """Evaluate a run's latest checkpoint; returns the report and the file it was written to."""
    cfg = run_config(run_dir)
    _, runner = runner_setup(cfg)
    episodes = runner.eval_episodes if episodes is None else episodes
    seed = eval_seed(int(cfg.seed)) if seed is None else seed
    num_envs = runner.eval_num_envs if num_envs is None else num_envs
    mode = runner.eval_mode if sample is None else ("sample" if sample else "default")
    loaded = load_run(run_dir, resolve_device(device), min(num_envs, episodes), seed)
    try:
        report = evaluate_episodes(loaded.agent, loaded.env, episodes, seed, mode)
    finally:
        loaded.env.close()
    progress = {
        k: int(loaded.checkpoint[k]) for k in ("env_steps", "updates") if k in loaded.checkpoint
    }
    report.update(progress, seed=seed, num_envs=loaded.env.num_envs)
    out = run_dir / "evaluations" / f"{mode}_episodes{episodes}_seed{seed}.json"
    out.parent.mkdir(exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    return report, out


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
    )
    modes = f", {report['modes_covered']} goals covered" if "modes_covered" in report else ""
    if "success_rate" in report:
        modes += f", success {report['success_rate']:.0%}"
    if "distinct_modes" in report:
        modes += f", {report['distinct_modes']} distinct modes"
    print(
        f"return {report['mean_return']:.3f} +- {report['std_return']:.3f} over "
        f"{report['episodes']} episodes ({report['mode']}{modes}) -> {out}"
    )


if __name__ == "__main__":
    main()
