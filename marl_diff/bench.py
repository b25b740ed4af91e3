"""Benchmarks whose tables go to `results/` with the command that made them.

`python -m marl_diff.bench rollout [scenario=vmas_navigation] [agent=gaussian] [num_envs=1024]
[steps=50] [repeats=3] [device=cpu] [out=results/rollout_throughput.md] [key=value ...]`

Measures, in one process and interleaved over the repeats (this machine is noisy):
- raw: the simulator's own batched stepping with its own random actions (VMAS directly; for
  other backends, the marl_diff backend with uniform random actions);
- env: the marl_diff backend with uniform random actions (wrapper overhead);
- runner: the training runner's collection step (policy forward, env step, replay insert,
  episode statistics) with the agent's exploring policy.
Extra `scenario.*` / `agent.*` overrides pass through to the config.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from statistics import median

import torch
from omegaconf import OmegaConf

from marl_diff.errors import ConfigError, choices, exit_cleanly_on_user_error

ROLLOUT_SETTINGS = {
    "scenario": "vmas_navigation",
    "agent": "gaussian",
    "num_envs": "1024",
    "steps": "50",
    "repeats": "3",
    "device": "cpu",
    "out": "results/rollout_throughput.md",
}


def _split(args: list[str], settings: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    values, passthrough = dict(settings), []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in settings:
            values[key] = value
        elif sep and key.split(".")[0] in ("scenario", "agent"):
            passthrough.append(arg)
        else:
            raise ConfigError(
                f"unknown argument '{arg}'. Valid: {choices(k + '=' for k in settings)}, "
                "scenario.<key>=, agent.<key>="
            )
    return values, passthrough


def _time_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls, after two warm-up calls."""
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _raw_stepper(scenario: dict, num_envs: int, device: torch.device, seed: int):
    """The simulator itself with its own random actions, or None when it has no batched API."""
    if scenario["backend"] != "vmas":
        return None
    import vmas

    env = vmas.make_env(
        scenario["scenario"],
        num_envs=num_envs,
        device=device,
        continuous_actions=True,
        max_steps=scenario["max_steps"],
        seed=seed,
        n_agents=scenario["n_agents"],
        **scenario["kwargs"],
    )
    env.reset()

    def step() -> None:
        _, _, dones, _ = env.step(env.get_random_actions())
        if bool(dones.all()):
            env.reset()

    return step


def rollout(args: list[str]) -> str:
    from marl_diff.envs import make_env
    from marl_diff.run import compose, resolve_device
    from marl_diff.runners import OffPolicyConfig, OffPolicyRunner

    values, passthrough = _split(args, ROLLOUT_SETTINGS)
    try:
        num_envs, steps, repeats = (int(values[k]) for k in ("num_envs", "steps", "repeats"))
    except ValueError:
        raise ConfigError("num_envs, steps and repeats must be integers") from None
    device = resolve_device(values["device"])
    cfg = compose(
        [
            f"scenario={values['scenario']}",
            f"agent={values['agent']}",
            f"device={device.type}",
            *passthrough,
        ]
    )
    scenario = OmegaConf.to_container(cfg.scenario, resolve=True)
    runner_cfg = OffPolicyConfig(
        num_envs=num_envs,
        warmup_steps=0,
        eval_num_envs=1,
        buffer_size=num_envs * (steps + 2) * repeats,
        progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        runner = OffPolicyRunner(cfg, Path(tmp), runner_cfg, device)
        runner.start_collection()
        env = make_env(scenario, num_envs, device, seed=1)
        env.reset(seed=1)
        raw = _raw_stepper(scenario, num_envs, device, seed=2)
        steppers: dict[str, Callable[[], None]] = {
            "env": lambda: env.step(env.random_actions()),
            "runner": runner.collect_step,
        }
        if raw is not None:
            steppers = {"raw": raw, **steppers}
        seconds: dict[str, list[float]] = {name: [] for name in steppers}
        with torch.no_grad():
            for _ in range(repeats):
                for name, step in steppers.items():
                    seconds[name].append(_time_steps(step, steps, device))
        env.close()
        runner.env.close()
        runner.eval_env.close()

    rate = {name: num_envs * steps / median(times) for name, times in seconds.items()}
    base = "raw" if "raw" in rate else "env"
    labels = {
        "raw": f"raw {scenario['backend']} (its own random actions)",
        "env": "marl_diff env (uniform random actions)",
        "runner": f"runner collection, {cfg.agent.name} policy",
    }
    command = "python -m marl_diff.bench rollout " + " ".join(shlex.quote(a) for a in args)
    lines = [
        f"# Rollout throughput: {cfg.scenario.name}, {num_envs} envs, {device.type}",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} torch threads, device {device}; "
        f"{date.today().isoformat()}. Median of {repeats} interleaved repeats of {steps} "
        "batched steps each.",
        "",
        f"| what | env-steps/s | ratio to {base} |",
        "|---|---:|---:|",
    ]
    for name in steppers:
        lines.append(f"| {labels[name]} | {rate[name]:,.0f} | {rate[name] / rate[base]:.2f} |")
    table = "\n".join(lines) + "\n"
    out = values["out"]
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table, encoding="utf-8")
    return table


BENCHMARKS = {"rollout": rollout}


@exit_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in BENCHMARKS:
        raise ConfigError(f"name a benchmark first. Valid choices: {choices(BENCHMARKS)}")
    print(BENCHMARKS[args[0]](args[1:]))


if __name__ == "__main__":
    main()
