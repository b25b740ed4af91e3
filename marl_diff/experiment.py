"""The composition root: builds a run's parts from its config, and loads a trained agent back
from a run folder. Runners, `evaluate`, `collect` and `bench` get their parts here instead of
assembling them (BenchMARL's `Experiment._setup_*` sequence is the model).

Building checks the agent's regime against the runner's (an offline agent needs the offline
runner and a dataset; an online agent an online runner), so a mismatch is one clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from marl_diff import catalog
from marl_diff.agents import agent_class, make_agent
from marl_diff.agents.base import Agent
from marl_diff.buffer import ReplayBuffer
from marl_diff.checkpoint import load_file, load_latest
from marl_diff.datasets import NormalizedEnv, ObservationNormalizer, Transitions, load_transitions
from marl_diff.envs import make_env
from marl_diff.envs.base import BatchedMultiAgentEnv, EnvSpec
from marl_diff.errors import ConfigError, MarlDiffError, choices
from marl_diff.runners import DEFAULT_KIND, RUNNERS
from marl_diff.runners.base import Runner, RunnerConfig
from marl_diff.typed_config import to_dataclass


@dataclass
class Parts:
    """What a runner loops over. `buffer` is the replay buffer an online runner fills, or the
    dataset an offline runner samples; `env` (the training env) exists for online runs only."""

    device: torch.device
    spec: EnvSpec
    agent: Agent
    eval_env: BatchedMultiAgentEnv
    buffer: ReplayBuffer
    env: BatchedMultiAgentEnv | None = None
    normalizer: ObservationNormalizer | None = None
    dataset: Transitions | None = None

    def checkpoint_extras(self) -> dict:
        """What a checkpoint needs besides the runner's state to load the agent back."""
        return {"obs_normalizer": self.normalizer.state_dict()} if self.normalizer else {}

    def close(self) -> None:
        if self.env is not None and self.env is not self.eval_env:
            self.env.close()
        self.eval_env.close()


def runner_setup(cfg: DictConfig) -> tuple[type[Runner], RunnerConfig]:
    """The runner class of `cfg.runner.kind` and its validated config."""
    kind = str(cfg.runner.get("kind", DEFAULT_KIND))
    if kind not in RUNNERS:
        raise ConfigError(f"unknown runner kind '{kind}'. Valid choices: {choices(RUNNERS)}.")
    runner_cls, config_cls = RUNNERS[kind]
    runner_cfg = to_dataclass(cfg.runner, config_cls, "runner")
    runner_cfg.validate()
    return runner_cls, runner_cfg


def runner_names(regime: str) -> list[str]:
    """The catalog's runners of a regime."""
    names = []
    for name in catalog.names("runner"):
        kind = str(catalog.load("runner", name).get("kind", DEFAULT_KIND))
        if kind in RUNNERS and RUNNERS[kind][0].regime == regime:
            names.append(name)
    return names


def agent_names(regime: str) -> list[str]:
    """The catalog's agents of a regime."""
    return [
        name
        for name in catalog.names("agent")
        if agent_class(str(catalog.load("agent", name).algorithm)).regime == regime
    ]


def check_regime(algorithm: str, runner_cls: type[Runner], agent_name: str) -> None:
    regime = agent_class(algorithm).regime
    if regime == runner_cls.regime:
        return
    valid = ", ".join(f"runner={name}" for name in runner_names(regime))
    how = " with runner.dataset=ID_OR_PATH" if regime == "offline" else ""
    raise ConfigError(
        f"agent '{agent_name}' trains {regime} but the chosen runner is {runner_cls.regime}; "
        f"use {valid}{how}"
    )


def build(cfg: DictConfig, runner_cls: type[Runner], rc: RunnerConfig, device) -> Parts:
    """The parts of a run of `cfg` under runner `runner_cls` with settings `rc`.

    The global torch seed is set first, and the parts are made in a fixed order (training env,
    evaluation env, agent, buffer), so a run's random streams depend on its seed alone.
    """
    check_regime(str(cfg.agent.algorithm), runner_cls, str(cfg.agent.name))
    seed = int(cfg.seed)
    torch.manual_seed(seed)
    scenario = OmegaConf.to_container(cfg.scenario, resolve=True)
    agent_cfg = OmegaConf.to_container(cfg.agent, resolve=True)
    if runner_cls.regime == "online":
        env = make_env(scenario, rc.num_envs, device, seed)
        # a single-instance simulator (e.g. Isaac Lab) evaluates on the training env
        eval_env = (
            env
            if env.single_instance
            else make_env(scenario, rc.eval_num_envs, device, seed + 10_007)
        )
        agent = make_agent(agent_cfg, env.spec, device)
        buffer = ReplayBuffer(rc.buffer_size, env.spec, device, agent.buffer_fields())
        return Parts(device, env.spec, agent, eval_env, buffer, env=env)
    eval_env = make_env(scenario, rc.eval_num_envs, device, seed + 10_007)
    try:
        dataset = load_transitions(rc.dataset, eval_env.spec)
    except Exception:
        eval_env.close()
        raise
    normalizer = None
    if rc.normalize_obs:
        normalizer = ObservationNormalizer.fit(dataset.batch, eval_env.spec.obs_mask())
        dataset.batch = normalizer.batch(dataset.batch)
        normalizer = ObservationNormalizer.from_state_dict(normalizer.state_dict(), device)
        eval_env = NormalizedEnv(eval_env, normalizer)
    agent = make_agent(agent_cfg, eval_env.spec, device)
    buffer = dataset.to_buffer(eval_env.spec, device)
    return Parts(
        device, eval_env.spec, agent, eval_env, buffer, normalizer=normalizer, dataset=dataset
    )


def make_runner(cfg: DictConfig, run_dir: Path, device) -> Runner:
    """The runner `cfg` names, over parts built from `cfg`, writing to `run_dir`."""
    runner_cls, runner_cfg = runner_setup(cfg)
    parts = build(cfg, runner_cls, runner_cfg, torch.device(device))
    return runner_cls(cfg, run_dir, runner_cfg, parts)


@dataclass
class LoadedRun:
    """A trained run brought back: its config, its agent (eval mode, latest or chosen
    checkpoint), an env of its scenario wrapped as the agent saw it, and the checkpoint."""

    cfg: DictConfig
    agent: Agent
    env: BatchedMultiAgentEnv
    checkpoint: dict


def run_config(run_dir: Path) -> DictConfig:
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise MarlDiffError(f"'{config_file}' does not exist: run_dir must be a training run")
    return OmegaConf.load(config_file)  # type: ignore[return-value]


def load_run(
    run_dir: Path, device, num_envs: int, seed: int, checkpoint: Path | None = None
) -> LoadedRun:
    """The agent of `run_dir` with an env of `num_envs` copies of its scenario, seeded `seed`.
    `checkpoint` picks one file of the run's checkpoints (default: the latest)."""
    cfg = run_config(run_dir)
    if checkpoint is None:
        state = load_latest(run_dir / "checkpoints", map_location=device)
    else:
        state = load_file(checkpoint, device)
    env = make_env(OmegaConf.to_container(cfg.scenario, resolve=True), num_envs, device, seed)
    try:
        if state.get("spec") != env.spec.summary():
            raise MarlDiffError(
                "checkpoint does not match the run's scenario (agents or spaces differ)"
            )
        if "obs_normalizer" in state:
            env = NormalizedEnv(
                env, ObservationNormalizer.from_state_dict(state["obs_normalizer"], device)
            )
        agent = make_agent(OmegaConf.to_container(cfg.agent, resolve=True), env.spec, device)
        agent.load_training_state(state["agent"])
        agent.eval()
    except Exception:
        env.close()
        raise
    return LoadedRun(cfg, agent, env, state)
