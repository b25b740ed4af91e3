"""What every training loop shares: the schedule of log, evaluation and checkpoint events, the
update metrics gathered between log events, divergence checks, and atomic checkpoints of the
agent, the counters and the random streams.

A runner receives its parts (agent, evaluation env, replay buffer or dataset, and for online
runners the training env) from the composition root (`marl_diff.experiment.build`) and only
loops. Subclasses say what one iteration is (`advance`: an env step and the updates it earns,
or one update from a dataset), which counter measures progress (`step`), and what else a
checkpoint must hold.
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from marl_diff.checkpoint import checkpoint_paths, load_latest, save_checkpoint
from marl_diff.errors import ConfigError, MarlDiffError, TrainingDiverged
from marl_diff.logger import RunLogger
from marl_diff.runners.evaluation import EVAL_MODES, evaluate_episodes

if TYPE_CHECKING:
    from marl_diff.experiment import Parts

REGIMES = ("online", "offline")


@dataclass
class RunnerConfig:
    """Settings of every runner kind; each kind's config extends it."""

    name: str = "runner"
    kind: str = "off_policy"
    batch_size: int = 256
    eval_every: int = 5_000
    eval_episodes: int = 10
    eval_num_envs: int = 10
    # "default": each agent's documented evaluation action; "sample": a draw from every agent's
    # policy (compares policy classes in the same mode, see runners/evaluation.py)
    eval_mode: str = "default"
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 3
    log_every: int = 1_000
    progress: bool = True

    def validate(self) -> None:
        for key in ("batch_size", "eval_episodes", "eval_num_envs", "log_every"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"runner.{key} must be positive, got {getattr(self, key)}")
        if self.eval_mode not in EVAL_MODES:
            raise ConfigError(
                f"runner.eval_mode must be one of {', '.join(EVAL_MODES)}, not '{self.eval_mode}'"
            )


def eval_seed(seed: int) -> int:
    """The evaluation seed of a run with `seed` (the evaluate command's default too)."""
    return seed + 1_000_003


class Runner(ABC):
    """The loop skeleton; see the module docstring."""

    regime: ClassVar[str]  # "online" (collects with its agent) or "offline" (from a dataset)
    step_name: ClassVar[str]  # what `step` counts, for logs and messages ("env step", "update")
    step_key: ClassVar[str]  # its key in metrics.jsonl and eval reports

    def __init__(self, cfg: DictConfig, run_dir: Path, runner_cfg: RunnerConfig, parts: Parts):
        runner_cfg.validate()
        self.cfg = cfg
        self.rc = runner_cfg
        self.run_dir = run_dir
        self.parts = parts
        self.device = parts.device
        self.spec = parts.spec
        self.agent = parts.agent
        self.eval_env = parts.eval_env
        self.buffer = parts.buffer
        self.generator = torch.Generator(device=self.device).manual_seed(int(cfg.seed))
        self.updates = 0
        self.last_eval: dict | None = None
        # The update metrics' sums and counts between log events, kept on the device and read
        # only at log time, so the loop never waits for the device.
        self.metric_sums: dict[str, torch.Tensor] = {}
        self.metric_counts: dict[str, int] = {}
        self.checked_at = 0  # `step` up to which the gathered metrics were found finite

    # ---------------------------------------------------------------- what a kind defines
    @property
    @abstractmethod
    def step(self) -> int:
        """The progress counter the budget, logs, evaluations and checkpoints refer to."""

    @property
    @abstractmethod
    def total(self) -> int:
        """The budget in `step` units."""

    @abstractmethod
    def advance(self) -> None:
        """One iteration of the loop."""

    def begin(self, in_flight: bool) -> None:
        """Before the loop (`in_flight`: a resume put back the episodes being collected)."""

    def after_evaluation(self) -> None:
        """After a periodic evaluation."""

    def loop_scalars(self, elapsed: float, window: tuple[float, int, int]) -> dict[str, float]:
        """The kind's own scalars of a log event (throughput, training episodes)."""
        return {}

    def restore_extra(self, state: dict) -> bool:
        """Put back what a kind adds to `checkpoint_payload`; True when the episodes in flight
        came back."""
        return False

    # ---------------------------------------------------------------- the loop
    def train(self, resume: bool = False) -> dict:
        rc = self.rc
        in_flight = self.restore() if resume else False
        logger = RunLogger(self.run_dir, self.step_key)
        self.begin(in_flight)
        next_log = self._next_multiple(rc.log_every)
        next_eval = self._next_multiple(rc.eval_every)
        next_ckpt = self._next_multiple(rc.checkpoint_every)
        window = (time.time(), self.step, self.updates)
        bar = tqdm(
            total=self.total,
            initial=self.step,
            disable=not rc.progress,
            unit=self.step_name.split()[-1],
            dynamic_ncols=True,
        )
        try:
            while self.step < self.total:
                before = self.step
                self.advance()
                bar.update(self.step - before)

                if self.step >= next_log or self.step >= self.total:
                    next_log = self._next_multiple(rc.log_every)
                    scalars = self._log_scalars(window)
                    logger.log(self.step, scalars)
                    bar.set_postfix(self.postfix(scalars))
                    window = (time.time(), self.step, self.updates)

                if self.step >= next_eval and self.step < self.total:
                    next_eval = self._next_multiple(rc.eval_every)
                    self.evaluate(logger)
                    self.after_evaluation()

                if self.step >= next_ckpt and self.step < self.total:
                    next_ckpt = self._next_multiple(rc.checkpoint_every)
                    self._check_finite()
                    self._check_parameters()
                    self.save()

            self._check_finite()
            self._check_parameters()
            report = self.evaluate(logger)
            self.save()
            with open(self.run_dir / "eval.json", "w", encoding="utf-8") as handle:
                json.dump(report, handle, indent=1)
            return report
        finally:
            bar.close()
            logger.close()
            self.parts.close()

    def record(self, metrics: dict[str, torch.Tensor]) -> None:
        """Add one update's metrics to the log window (device tensors, no host read), summed in
        float32: a metric of a bfloat16 loss (`update_precision`) would lose its sum's digits."""
        sums, counts = self.metric_sums, self.metric_counts
        for key, value in metrics.items():
            sums[key] = sums[key] + value if key in sums else value.float()
            counts[key] = counts.get(key, 0) + 1

    def postfix(self, scalars: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows beside the ETA."""
        return {"ups": f"{scalars['perf/updates_per_s']:.0f}"}

    def _log_scalars(self, window: tuple[float, int, int]) -> dict[str, float]:
        """The log event's scalars; empties the log window."""
        self._check_finite()
        elapsed = max(time.time() - window[0], 1e-9)
        sums, counts = self.metric_sums, self.metric_counts
        scalars = {key: float(sums[key]) / counts[key] for key in sums}
        sums.clear(), counts.clear()
        scalars["perf/updates_per_s"] = (self.updates - window[2]) / elapsed
        scalars["perf/updates"] = self.updates
        scalars.update(self.loop_scalars(elapsed, window))
        return scalars

    def _next_multiple(self, every: int) -> int:
        if every <= 0:
            return math.inf  # type: ignore[return-value]
        return (self.step // every + 1) * every

    def evaluate(self, logger: RunLogger) -> dict:
        report = evaluate_episodes(
            self.agent,
            self.eval_env,
            self.rc.eval_episodes,
            seed=eval_seed(int(self.cfg.seed)),
            mode=self.rc.eval_mode,
        )
        report[self.step_key] = self.step
        scalars = {"eval/return": report["mean_return"], "eval/return_std": report["std_return"]}
        if "distinct_goals" in report:
            scalars["eval/distinct_goals"] = report["distinct_goals"]
            scalars["eval/modes_covered"] = report["modes_covered"]
        for key in ("win_rate", "success_rate", "distinct_modes"):
            if key in report:
                scalars[f"eval/{key}"] = report[key]
        logger.log(self.step, scalars)
        self.last_eval = report
        return report

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_payload(self) -> dict:
        return {
            "format": 1,
            "updates": self.updates,
            "spec": self.spec.summary(),
            "scenario": OmegaConf.to_container(self.cfg.scenario, resolve=True),
            "agent_config": OmegaConf.to_container(self.cfg.agent, resolve=True),
            "agent": self.agent.training_state(),
            "torch_rng": torch.get_rng_state(),
            "sampler_rng": self.generator.get_state(),
            "log_window": {
                "metric_sums": dict(self.metric_sums),
                "metric_counts": dict(self.metric_counts),
            },
            **self.parts.checkpoint_extras(),
        }

    def save(self) -> None:
        payload = self.checkpoint_payload()
        save_checkpoint(self.run_dir / "checkpoints", self.step, payload, self.rc.keep_checkpoints)

    def restore(self) -> bool:
        """Load the latest checkpoint; True when it also put back the episodes in flight."""
        state = load_latest(self.run_dir / "checkpoints", map_location=self.device)
        if state.get("spec") != self.spec.summary():
            raise MarlDiffError(
                "checkpoint from an incompatible config: it was made for agents/spaces "
                f"{state.get('spec')}, but this scenario has {self.spec.summary()}"
            )
        try:
            self.agent.load_training_state(state["agent"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise MarlDiffError(
                f"checkpoint from an incompatible agent config: {str(err).splitlines()[0]}"
            ) from None
        self.updates = int(state["updates"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.generator.set_state(state["sampler_rng"].cpu())
        window = state.get("log_window")  # absent in checkpoints of older versions
        if window is not None:
            self.metric_sums = dict(window["metric_sums"])
            self.metric_counts = dict(window["metric_counts"])
        in_flight = self.restore_extra(state)
        self.checked_at = self.step
        return in_flight

    # ---------------------------------------------------------------- divergence
    def _check_finite(self) -> None:
        """The update metrics gathered since the last check must be finite. Checked at log
        events and before checkpoints, not per update: reading a device value makes the host
        wait for the device, and one read per log event keeps the update loop asynchronous."""
        sums = self.metric_sums
        if sums and not bool(torch.isfinite(torch.stack(list(sums.values()))).all()):
            bad = [k for k, v in sums.items() if not torch.isfinite(v)]
            raise TrainingDiverged(
                self._diverged_message(
                    f"non-finite {', '.join(bad)} in the updates after {self.step_name} "
                    f"{self.checked_at}"
                )
            )
        self.checked_at = self.step

    def _check_parameters(self) -> None:
        for name, param in self.agent.named_parameters():
            if not bool(torch.isfinite(param).all()):
                raise TrainingDiverged(self._diverged_message(f"non-finite parameter {name}"))

    def _diverged_message(self, what: str) -> str:
        kept = checkpoint_paths(self.run_dir / "checkpoints")
        last = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written"
        return f"training diverged at {self.step_name} {self.step}: {what}; stopped, {last}."
