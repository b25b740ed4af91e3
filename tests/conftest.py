"""Shared test setup: one CPU thread (the test machine has 2 shared cores, and torch with more
threads than cores is many times slower), tiny training budgets and CLI helpers."""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("MKL_NUM_THREADS", "1")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def make_spec(n_agents=2, obs_dims=(3, 3), act_dims=(1, 1), state_dim=4):
    """An EnvSpec for agent unit tests: actions in [-1, 1], padded to the largest agent."""
    from marl_diff.envs.base import EnvSpec

    a = max(act_dims)
    return EnvSpec(
        tuple(f"agent_{i}" for i in range(n_agents)),
        obs_dims,
        act_dims,
        state_dim,
        10,
        -torch.ones(n_agents, a),
        torch.ones(n_agents, a),
    )


# A training run that takes about a second on one CPU core: 300 pendulum steps, updates from
# step 100, tiny networks, 2 short evaluations.
TINY_ARGS = [
    "scenario=pendulum",
    "agent=gaussian",
    "runner.total_steps=300",
    "runner.warmup_steps=100",
    "runner.batch_size=32",
    "runner.buffer_size=1000",
    "runner.eval_episodes=2",
    "runner.eval_num_envs=2",
    "runner.eval_every=1000",
    "runner.log_every=100",
    "runner.checkpoint_every=100",
    "runner.progress=false",
    "agent.actor_hidden=[32,32]",
    "agent.critic_hidden=[32,32]",
    "device=cpu",
]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def run_module(module: str, args: list[str], cwd: Path, timeout: float = 120):
    """`python -m module args...` in `cwd`; returns the CompletedProcess (text mode)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def tiny_args() -> list[str]:
    """A fresh copy of the tiny-budget argument list (callers may append overrides)."""
    return list(TINY_ARGS)


@pytest.fixture
def run_cli():
    """run_cli(args, cwd, module="marl_diff.run") -> CompletedProcess."""

    def _run(args: list[str], cwd: Path, module: str = "marl_diff.run"):
        return run_module(module, args, cwd)

    return _run


@pytest.fixture
def compose_config():
    """compose_config(args) -> (DictConfig, Hydra overrides) as the CLI would build them."""

    def _compose(args: list[str]):
        from marl_diff.run import compose, prepare_arguments

        return compose(args), [a for a in prepare_arguments(args) if not a.startswith("-")]

    return _compose


def train_run(run_dir: Path, args: list[str]) -> tuple[dict, list[dict]]:
    """Train in-process as `python -m marl_diff.run args` would, quietly on the CPU; returns the
    final evaluation report and the metrics.jsonl records."""
    from marl_diff.run import compose, launch

    cfg = compose([*args, f"run_dir={run_dir}", "runner.progress=false", "device=cpu"])
    report = launch(cfg, user_overrides=[])
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as handle:
        return report, [json.loads(line) for line in handle]
