"""The offline loop: gradient updates on batches drawn from a fixed dataset, with periodic
evaluation in the scenario, logging and atomic checkpoints. Progress is counted in updates.

The dataset (`runner.dataset`) is loaded by the composition root (marl_diff.experiment), which
also standardises observations by the dataset's statistics when `normalize_obs` is on and
saves those statistics with every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from marl_diff.errors import ConfigError
from marl_diff.runners.base import Runner, RunnerConfig


@dataclass
class OfflineConfig(RunnerConfig):
    name: str = "offline"
    kind: str = "offline"
    # A Minari id (local store, else downloaded), a Minari dataset folder, or an .npz file in
    # the OG-MARL layout (marl_diff.datasets).
    dataset: str = ""
    total_updates: int = 100_000
    # Standardise observations and states by the dataset's mean and std (saved with the
    # checkpoint). Off by default: the offline papers' locomotion settings do not normalise.
    normalize_obs: bool = False

    def validate(self) -> None:
        super().validate()
        if self.total_updates <= 0:
            raise ConfigError(f"runner.total_updates must be positive, got {self.total_updates}")


class OfflineRunner(Runner):
    regime = "offline"
    step_name = "update"
    step_key = "updates"

    @property
    def step(self) -> int:
        return self.updates

    @property
    def total(self) -> int:
        return self.rc.total_updates

    def advance(self) -> None:
        batch = self.agent.sample_batch(self.buffer, self.rc.batch_size, self.generator)
        self.record(self.agent.update(batch))
        self.updates += 1

    def evaluate(self, logger) -> dict:
        """The scenario's evaluation, plus the score normalised by the dataset's reference
        returns (random = 0, expert = 100, as D4RL and Minari report it) when it has them."""
        report = super().evaluate(logger)
        ref = self.parts.dataset.ref_scores if self.parts.dataset else None
        if ref is not None and "normalized_score" not in report:
            low, high = ref
            report["normalized_score"] = 100.0 * (report["mean_return"] - low) / (high - low)
            logger.log(self.step, {"eval/normalized_score": report["normalized_score"]})
        return report
