"""Run logging: TensorBoard event files plus metrics.jsonl (one JSON object per log event)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    """`step_key` names the x-axis each record carries: env steps for online runs, updates for
    offline ones."""

    def __init__(self, run_dir: Path, step_key: str = "env_steps"):
        self.step_key = step_key
        self.writer = SummaryWriter(log_dir=str(run_dir))
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.start = time.time()

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        record = {self.step_key: step, "wall_time": round(time.time() - self.start, 3)}
        record.update(scalars)
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        self.writer.close()
        self.jsonl.close()
