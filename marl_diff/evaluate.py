"""`python -m marl_diff.evaluate run_dir=DIR [episodes=K] [device=cpu|cuda|auto] [seed=S]`

Loads the latest checkpoint of a run, plays K episodes with decentralised execution
(deterministic actions from each agent's own observation) and writes DIR/eval.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from marl_diff.agents import make_agent
from marl_diff.checkpoint import load_latest
from marl_diff.envs import make_env
from marl_diff.errors import ConfigError, MarlDiffError, choices, exit_cleanly_on_user_error
from marl_diff.run import resolve_device
from marl_diff.runners.evaluation import evaluate_episodes

SETTINGS = {"run_dir": None, "episodes": 10, "device": "auto", "seed": 12345, "num_envs": 10}


def parse(args: list[str]) -> dict:
    values = dict(SETTINGS)
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in SETTINGS:
            raise ConfigError(
                f"unknown argument '{arg}'. Valid: {choices(k + '=' for k in SETTINGS)}"
            )
        values[key] = value
    if values["run_dir"] is None:
        raise ConfigError("run_dir=DIR is required (a directory made by marl_diff.run)")
    for key in ("episodes", "seed", "num_envs"):
        try:
            values[key] = int(values[key])
        except ValueError:
            raise ConfigError(f"{key} must be an integer, not '{values[key]}'") from None
        if key != "seed" and values[key] <= 0:
            raise ConfigError(f"{key} must be positive")
    return values


def evaluate_run(run_dir: Path, episodes: int, device: str, seed: int, num_envs: int) -> dict:
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise MarlDiffError(f"'{config_file}' does not exist: run_dir must be a training run")
    cfg = OmegaConf.load(config_file)
    torch_device = resolve_device(device)
    env = make_env(
        OmegaConf.to_container(cfg.scenario, resolve=True),
        min(num_envs, episodes),
        torch_device,
        seed,
    )
    agent = make_agent(OmegaConf.to_container(cfg.agent, resolve=True), env.spec, torch_device)
    state = load_latest(run_dir / "checkpoints", map_location=torch_device)
    if state.get("spec") != env.spec.summary():
        raise MarlDiffError(
            "checkpoint does not match the run's scenario (agents or spaces differ)"
        )
    agent.load_training_state(state["agent"])
    agent.eval()
    try:
        report = evaluate_episodes(agent, env, episodes, seed)
    finally:
        env.close()
    report["env_steps"] = int(state["env_steps"])
    with open(run_dir / "eval.json", "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    return report


@exit_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    values = parse(sys.argv[1:] if argv is None else argv)
    run_dir = Path(values["run_dir"])
    report = evaluate_run(
        run_dir, values["episodes"], values["device"], values["seed"], values["num_envs"]
    )
    print(
        f"return {report['mean_return']:.3f} +- {report['std_return']:.3f} over "
        f"{report['episodes']} episodes -> {run_dir / 'eval.json'}"
    )


if __name__ == "__main__":
    main()
