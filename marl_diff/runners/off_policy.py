"""The off-policy CTDE training loop: random warm-up, batched env stepping, device-resident
replay, update-to-data ratio, periodic evaluation, logging and atomic checkpoints.

It drives any `Agent` through `act` / `update` and knows nothing of the algorithm.

A checkpoint holds everything the loop carries between steps: the agent, the counters, the
random streams, the metrics gathered since the last log event and, where the backend can
snapshot its simulator (`BatchedMultiAgentEnv.snapshot`), the episodes in flight. A run resumed
from it (with `save_buffer=true`) then continues exactly as the uninterrupted run would have.
Backends without snapshots start fresh episodes on resume.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from marl_diff.agents import make_agent
from marl_diff.buffer import Batch, ReplayBuffer
from marl_diff.checkpoint import checkpoint_paths, load_latest, save_checkpoint
from marl_diff.envs import make_env
from marl_diff.errors import ConfigError, MarlDiffError, TrainingDiverged
from marl_diff.logger import RunLogger
from marl_diff.runners.evaluation import EVAL_MODES, evaluate_episodes


@dataclass
class OffPolicyConfig:
    name: str = "off_policy"
    kind: str = "off_policy"
    total_steps: int = 20_000  # env steps, summed over the parallel copies
    num_envs: int = 1
    warmup_steps: int = 1_000  # uniform random actions before the policy acts
    buffer_size: int = 1_000_000
    batch_size: int = 256
    utd_ratio: float = 1.0  # gradient updates per collected transition (per env step)
    eval_every: int = 5_000
    eval_episodes: int = 10
    eval_num_envs: int = 10
    # "default": each agent's documented evaluation action; "sample": a draw from every agent's
    # policy (compares policy classes in the same mode, see runners/evaluation.py)
    eval_mode: str = "default"
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 3
    log_every: int = 1_000
    save_buffer: bool = False
    progress: bool = True


def _validate(cfg: OffPolicyConfig) -> None:
    positive = [
        "total_steps",
        "num_envs",
        "buffer_size",
        "batch_size",
        "eval_episodes",
        "eval_num_envs",
        "log_every",
    ]
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"runner.{key} must be positive, got {getattr(cfg, key)}")
    if cfg.utd_ratio < 0 or cfg.warmup_steps < 0:
        raise ConfigError("runner.utd_ratio and runner.warmup_steps must be >= 0")
    if cfg.eval_mode not in EVAL_MODES:
        raise ConfigError(
            f"runner.eval_mode must be one of {', '.join(EVAL_MODES)}, not '{cfg.eval_mode}'"
        )
    if cfg.num_envs > cfg.buffer_size:
        raise ConfigError("runner.buffer_size must hold at least one batch of runner.num_envs")


def eval_seed(seed: int) -> int:
    """The evaluation seed of a run with `seed` (the evaluate command's default too)."""
    return seed + 1_000_003


class OffPolicyRunner:
    def __init__(
        self, cfg: DictConfig, run_dir: Path, runner_cfg: OffPolicyConfig, device: torch.device
    ):
        self.cfg = cfg
        self.rc = runner_cfg
        _validate(runner_cfg)
        self.run_dir = run_dir
        self.device = device
        seed = int(cfg.seed)
        torch.manual_seed(seed)
        scenario = OmegaConf.to_container(cfg.scenario, resolve=True)
        self.env = make_env(scenario, runner_cfg.num_envs, device, seed)
        if self.env.single_instance:  # e.g. Isaac Lab: evaluate on the training env
            self.eval_env = self.env
        else:
            self.eval_env = make_env(scenario, runner_cfg.eval_num_envs, device, seed + 10_007)
        self.spec = self.env.spec
        self.agent = make_agent(OmegaConf.to_container(cfg.agent, resolve=True), self.spec, device)
        self.buffer = ReplayBuffer(runner_cfg.buffer_size, self.spec, device)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.env_steps = 0
        self.updates = 0
        self.episodes = 0
        self.update_credit = 0.0
        self.last_eval: dict | None = None
        # Gathered between log events: finished-episode sums [return, length, count] and the
        # update metrics' sums and counts, kept on the device and read only at log time, so
        # collection never waits for the host.
        self.finished = torch.zeros(3, device=device)
        self.metric_sums: dict[str, torch.Tensor] = {}
        self.metric_counts: dict[str, int] = {}
        self.checked_at = 0  # env step up to which the gathered metrics were found finite
        self.act_seconds, self.act_calls = 0.0, 0  # policy sampling time per env step

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_payload(self) -> dict:
        payload = {
            "format": 1,
            "env_steps": self.env_steps,
            "updates": self.updates,
            "episodes": self.episodes,
            "update_credit": self.update_credit,
            "spec": self.spec.summary(),
            "scenario": OmegaConf.to_container(self.cfg.scenario, resolve=True),
            "agent_config": OmegaConf.to_container(self.cfg.agent, resolve=True),
            "agent": self.agent.training_state(),
            "torch_rng": torch.get_rng_state(),
            "sampler_rng": self.generator.get_state(),
            "log_window": {
                "finished": self.finished,
                "metric_sums": dict(self.metric_sums),
                "metric_counts": dict(self.metric_counts),
            },
        }
        env_snapshot = self.env.snapshot()
        if env_snapshot is not None:
            payload["collection"] = {
                "env": env_snapshot,
                "obs": self.obs,
                "state": self.state,
                "ep_return": self.ep_return,
                "ep_length": self.ep_length,
            }
        return payload

    def save(self) -> None:
        save_checkpoint(
            self.run_dir / "checkpoints",
            self.env_steps,
            self.checkpoint_payload(),
            self.rc.keep_checkpoints,
        )
        if self.rc.save_buffer:
            tmp = self.run_dir / ".buffer.pt.tmp"
            torch.save(self.buffer.state_dict(), tmp)
            tmp.replace(self.run_dir / "buffer.pt")

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
        self.env_steps = int(state["env_steps"])
        self.updates = int(state["updates"])
        self.episodes = int(state["episodes"])
        self.update_credit = float(state["update_credit"])
        self.checked_at = self.env_steps
        torch.set_rng_state(state["torch_rng"].cpu())
        self.generator.set_state(state["sampler_rng"].cpu())
        window = state.get("log_window")  # absent in checkpoints of older versions
        if window is not None:
            self.finished.copy_(window["finished"])
            self.metric_sums = dict(window["metric_sums"])
            self.metric_counts = dict(window["metric_counts"])
        buffer_file = self.run_dir / "buffer.pt"
        if self.rc.save_buffer and buffer_file.exists():
            self.buffer.load_state_dict(torch.load(buffer_file, weights_only=True))
        collection = state.get("collection")
        if collection is None or self.env.num_envs != collection["obs"].shape[0]:
            return False
        self.env.restore_snapshot(collection["env"])
        self.obs, self.state = collection["obs"], collection["state"]
        self.ep_return, self.ep_length = collection["ep_return"], collection["ep_length"]
        return True

    # ---------------------------------------------------------------- collection
    def start_collection(self) -> None:
        """Reset the training envs and the per-episode statistics."""
        self.obs, self.state = self.env.reset(seed=int(self.cfg.seed) + self.env_steps)
        zeros = torch.zeros(self.env.num_envs, device=self.device)
        self.ep_return, self.ep_length = zeros.clone(), zeros.clone()

    def collect_step(self) -> None:
        """One batched env step with the exploring policy (uniform actions during warm-up)."""
        if self.env_steps < self.rc.warmup_steps:
            actions = self.env.random_actions(self.generator)
        else:
            start = time.perf_counter()
            actions = self.agent.act(self.obs, explore=True, state=self.state)
            self.act_seconds += time.perf_counter() - start
            self.act_calls += 1
        result = self.env.step(actions)
        self.buffer.add(
            Batch(
                self.obs,
                self.state,
                actions,
                result.reward,
                result.next_obs,
                result.next_state,
                result.terminated.float(),
            )
        )
        self.ep_return += result.reward.mean(-1)
        self.ep_length += 1
        done = (result.terminated | result.truncated).float()
        self.finished += torch.stack(
            [(self.ep_return * done).sum(), (self.ep_length * done).sum(), done.sum()]
        )
        self.ep_return *= 1.0 - done
        self.ep_length *= 1.0 - done
        self.obs, self.state = result.obs, result.state
        self.env_steps += self.env.num_envs

    def update_step(self) -> int:
        """The gradient updates this env step earns under the update-to-data ratio."""
        rc = self.rc
        if self.env_steps < rc.warmup_steps or self.buffer.size < rc.batch_size:
            return 0
        self.update_credit += rc.utd_ratio * self.env.num_envs
        n_updates = int(self.update_credit)
        self.update_credit -= n_updates
        for _ in range(n_updates):
            metrics = self.agent.update(self.buffer.sample(rc.batch_size, self.generator))
            sums, counts = self.metric_sums, self.metric_counts
            for key, value in metrics.items():
                sums[key] = sums[key] + value if key in sums else value
                counts[key] = counts.get(key, 0) + 1
        self.updates += n_updates
        return n_updates

    # ---------------------------------------------------------------- training
    def train(self, resume: bool = False) -> dict:
        rc = self.rc
        in_flight = self.restore() if resume else False
        logger = RunLogger(self.run_dir)
        if not in_flight:
            self.start_collection()
        next_log = self._next_multiple(rc.log_every)
        next_eval = self._next_multiple(rc.eval_every)
        next_ckpt = self._next_multiple(rc.checkpoint_every)
        window = (time.time(), self.env_steps, self.updates)
        bar = tqdm(
            total=rc.total_steps,
            initial=self.env_steps,
            disable=not rc.progress,
            unit="step",
            dynamic_ncols=True,
        )
        try:
            while self.env_steps < rc.total_steps:
                self.collect_step()
                self.update_step()
                bar.update(self.env.num_envs)

                if self.env_steps >= next_log or self.env_steps >= rc.total_steps:
                    next_log = self._next_multiple(rc.log_every)
                    scalars = self._train_scalars(window)
                    logger.log(self.env_steps, scalars)
                    if "train/episode_return" in scalars:
                        bar.set_postfix(
                            ret=f"{scalars['train/episode_return']:.2f}",
                            ups=f"{scalars['perf/updates_per_s']:.0f}",
                        )
                    window = (time.time(), self.env_steps, self.updates)

                if self.env_steps >= next_eval and self.env_steps < rc.total_steps:
                    next_eval = self._next_multiple(rc.eval_every)
                    self._evaluate(logger)
                    if self.eval_env is self.env:  # evaluation reset the training episodes
                        self.start_collection()

                if self.env_steps >= next_ckpt and self.env_steps < rc.total_steps:
                    next_ckpt = self._next_multiple(rc.checkpoint_every)
                    self._check_finite()
                    self._check_parameters()
                    self.save()

            self._check_finite()
            self._check_parameters()
            report = self._evaluate(logger)
            self.save()
            with open(self.run_dir / "eval.json", "w", encoding="utf-8") as handle:
                json.dump(report, handle, indent=1)
            return report
        finally:
            bar.close()
            logger.close()
            self.env.close()
            if self.eval_env is not self.env:
                self.eval_env.close()

    def _train_scalars(self, window) -> dict[str, float]:
        """The log event's scalars; empties the log window."""
        self._check_finite()
        start_time, start_steps, start_updates = window
        elapsed = max(time.time() - start_time, 1e-9)
        sums, counts = self.metric_sums, self.metric_counts
        scalars = {key: float(sums[key]) / counts[key] for key in sums}
        sums.clear(), counts.clear()
        scalars["perf/env_steps_per_s"] = (self.env_steps - start_steps) / elapsed
        scalars["perf/updates_per_s"] = (self.updates - start_updates) / elapsed
        scalars["perf/updates"] = self.updates
        ret_sum, len_sum, count = self.finished.tolist()
        if count > 0:
            self.episodes += int(count)
            scalars["train/episode_return"] = ret_sum / count
            scalars["train/episode_length"] = len_sum / count
        scalars["train/episodes"] = self.episodes
        if self.act_calls:
            scalars["perf/act_ms_per_step"] = 1e3 * self.act_seconds / self.act_calls
        self.finished.zero_()
        self.act_seconds, self.act_calls = 0.0, 0
        return scalars

    def _next_multiple(self, every: int) -> int:
        if every <= 0:
            return math.inf  # type: ignore[return-value]
        return (self.env_steps // every + 1) * every

    def _evaluate(self, logger: RunLogger) -> dict:
        report = evaluate_episodes(
            self.agent,
            self.eval_env,
            self.rc.eval_episodes,
            seed=eval_seed(int(self.cfg.seed)),
            mode=self.rc.eval_mode,
        )
        report["env_steps"] = self.env_steps
        scalars = {"eval/return": report["mean_return"], "eval/return_std": report["std_return"]}
        if "distinct_goals" in report:
            scalars["eval/distinct_goals"] = report["distinct_goals"]
            scalars["eval/modes_covered"] = report["modes_covered"]
        if "win_rate" in report:
            scalars["eval/win_rate"] = report["win_rate"]
        logger.log(self.env_steps, scalars)
        self.last_eval = report
        return report

    def _check_finite(self) -> None:
        """The update metrics gathered since the last check must be finite. Checked at log
        events and before checkpoints, not per update: reading a device value makes the host
        wait for the device, and one read per log event keeps the update loop asynchronous."""
        sums = self.metric_sums
        if sums and not bool(torch.isfinite(torch.stack(list(sums.values()))).all()):
            bad = [k for k, v in sums.items() if not torch.isfinite(v)]
            raise TrainingDiverged(
                self._diverged_message(
                    f"non-finite {', '.join(bad)} in the updates after env step {self.checked_at}"
                )
            )
        self.checked_at = self.env_steps

    def _check_parameters(self) -> None:
        for name, param in self.agent.named_parameters():
            if not bool(torch.isfinite(param).all()):
                raise TrainingDiverged(self._diverged_message(f"non-finite parameter {name}"))

    def _diverged_message(self, what: str) -> str:
        kept = checkpoint_paths(self.run_dir / "checkpoints")
        last = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written"
        return f"training diverged at env step {self.env_steps}: {what}; stopped, {last}."
