"""Shared test setup: one CPU thread (the test machine has 2 shared cores, and torch with more
threads than cores is many times slower), tiny training budgets and CLI helpers."""

from __future__ import annotations

import os
import tempfile

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Every process (xdist worker, CLI subprocess) would compile each SMAX / MABrax env anew, tens
# of seconds each; JAX's persistent cache, shared on disk, compiles each once per machine.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "marl_diff-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import json  # noqa: E402
import re  # noqa: E402
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


# Tiny agents that still run every part of each algorithm's update (lagged proposal, best-of-K
# acting and fresh others' actions for ddpl, alpha refits for dacer, best-of-K targets for qvpo).
TINY_NETS = {"actor_hidden": [16, 16], "critic_hidden": [16, 16]}
TINY_AGENTS = {
    "gaussian": {},
    "ddpl": {
        "diffusion_steps": 3,
        "n_candidates": 3,
        "proposal": "lagged",
        "action_selection": "best_of_k",
        "best_of_k": 2,
        "others_actions": "policy",
    },
    "dacer": {
        "diffusion_steps": 3,
        "entropy_states": 2,
        "entropy_samples": 8,
        "alpha_update_every": 1,
        "gmm_iterations": 3,
    },
    "qvpo": {
        "diffusion_steps": 3,
        "n_samples": 4,
        "behavior_samples": 2,
        "eval_samples": 2,
        "target_samples": 2,
        "n_entropy_samples": 2,
    },
    "ddiffpg": {
        "diffusion_steps": 3,
        "max_modes": 3,
        "mode_features": [0, 1],
        "recluster_every": 20,
        "target_steps": 2,
        "critic_atoms": 11,
    },
}


def make_tiny_agent(algorithm: str, device: str = "cpu", seed: int = 0, **overrides):
    """`algorithm` for make_spec()'s two agents at the suite's tiny settings (TINY_NETS,
    TINY_AGENTS) with `overrides` on top, built after `torch.manual_seed(seed)`."""
    from marl_diff.agents import make_agent

    torch.manual_seed(seed)
    config = {"name": algorithm, "algorithm": algorithm, **TINY_NETS}
    config.update(TINY_AGENTS.get(algorithm, {}), **overrides)
    return make_agent(config, make_spec(), torch.device(device))


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


# The multimodality comparison on the catalog's multigoal task (ddpl keeps its agent_defaults:
# soft target, entropy target +1 nat) for every agent alike; each override is there for the
# suite's 2-core budget or for measuring shares of goals.
MULTIGOAL = {
    "scenario=multigoal": "",
    "runner.total_steps=3000": "budget",
    "runner.batch_size=128": "budget",
    "runner.eval_every=0": "budget: only the final evaluation",
    "runner.eval_episodes=100": "enough episodes to measure shares of 10%",
    "runner.eval_num_envs=100": "all 100 episodes in one batch",
    "runner.eval_mode=sample": "every agent samples: a Gaussian's mean reaches one goal by design",
    "agent.actor_hidden=[64,64]": "budget",
    "agent.critic_hidden=[64,64]": "budget",
    "agent.actor_lr=1e-3": "3000 steps instead of the catalog's 20000",
    "agent.critic_lr=1e-3": "3000 steps instead of the catalog's 20000",
}


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
def compiled_calls(monkeypatch) -> list:
    """The networks whose compiled graph ran, one entry per call (torch.compile'd StackedMLP
    layers): shows a test that the compiled path, not the eager one, produced its numbers."""
    from marl_diff import nn as stacked

    calls, compiled_for = [], stacked._compiled_after_first

    def spy(mlp):
        calls.append(mlp)
        return compiled_for(mlp)

    monkeypatch.setattr(stacked, "_compiled_after_first", spy)
    return calls


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
def run_main(monkeypatch, capsys):
    """run_main(args, cwd) -> CompletedProcess of `python -m marl_diff.run args` run in this
    process, Hydra included: the entry point's own error handling without the seconds a
    subprocess costs (the run_cli tests show the same in a real process)."""
    from marl_diff import run

    def _run(args: list[str], cwd: Path):
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["marl_diff.run"])
        code = 0
        try:
            run.main(args)
        except SystemExit as stop:
            code = stop.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

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


# ------------------------------------------------------------------ CI: no silent import skips
# Why: a `pytest.importorskip("vmas")` (or a skip on BackendMissing) turns a broken or partial
# install into a green run with a few skips that nobody reads. CI installs `.[all,dev]`, so
# there every backend must import. With CI=true (set by CI and by .ci/run), a skip whose reason
# says that something could not be imported or is not installed is reported as a failure (a
# collection error for a module-level skip), unless what is missing cannot exist on a CPU-only
# CI machine: Isaac Lab / Isaac Sim (and Omniverse's omni, carb, pxr) and CUDA / a GPU.
pytest_plugins = ["pytester"]  # for tests/test_ci_skip_guard.py

IMPORT_SKIP = re.compile(
    r"could not import|cannot import|no module named|not installed|importerror|backendmissing|"
    r"not available",
    re.IGNORECASE,
)
CI_MAY_LACK = re.compile(r"isaac|\bomni\b|\bcarb\b|\bpxr\b|cuda|\bgpu\b", re.IGNORECASE)


def ci_forbids_skip(reason: str) -> bool:
    """Whether CI must fail a test skipped for `reason` (an import skip it is not allowed)."""
    return bool(IMPORT_SKIP.search(reason)) and not CI_MAY_LACK.search(reason)


class CISkipGuard:
    """Plugin: with CI=true, import skips outside CI_MAY_LACK become failures."""

    @staticmethod
    def check(report):
        if os.environ.get("CI", "").lower() != "true":
            return
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        longrepr = report.longrepr
        reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
        if ci_forbids_skip(reason):
            report.outcome = "failed"
            report.longrepr = (
                f"CI=true forbids this import skip: {reason}\nCI installs '.[all,dev]', so a "
                f"module that cannot be imported means a broken install (or a test that skips "
                f"on a missing import by mistake). Only Isaac Lab / Isaac Sim and CUDA may be "
                f"missing in CI (CI_MAY_LACK in tests/conftest.py)."
            )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        self.check(report)
        return report

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector):
        report = yield
        self.check(report)
        return report


def pytest_configure(config):
    config.pluginmanager.register(CISkipGuard(), "ci_skip_guard")
    # With `-n 2`, whole modules go to a worker, in the order sorted below: a module's fixtures
    # (a trained run, compiled JAX envs) are then built once, and the modules holding the
    # longest training runs start first, one per worker.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadscope"
        config.option.loadscopereorder = False


# ------------------------------------------------------------------ scheduling
def pytest_collection_modifyitems(config, items):
    """Training runs (marker `learning(seconds=...)`) first, longest first: they are most of
    the suite's time, and started last they would leave one worker idle at the end. Their
    modules come first in that order too (see pytest_configure)."""

    def expected_seconds(item) -> float:
        marker = item.get_closest_marker("learning")
        return marker.kwargs.get("seconds", 60) if marker else 0

    items.sort(key=expected_seconds, reverse=True)  # stable: the rest keep their order
