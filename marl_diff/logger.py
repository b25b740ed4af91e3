"""Run logging: TensorBoard event files plus metrics.jsonl (one JSON object per log event)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    """`step_key` names the x-axis each record carries: env steps for online runs, updates for
    offline ones. `wall_time` runs on from the last record of a resumed run, so time-to-quality
    counts every second the run has trained (including work redone after an interruption)."""

    def __init__(self, run_dir: Path, step_key: str = "env_steps"):
        self.step_key = step_key
        self.writer = SummaryWriter(log_dir=str(run_dir))
        path = run_dir / "metrics.jsonl"
        self.start = time.time() - _last_wall_time(path)
        self.jsonl = open(path, "a", encoding="utf-8")

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


def _last_wall_time(path: Path) -> float:
    """The wall time of the last complete record in `path` (0 when there is none)."""
    if not path.is_file():
        return 0.0
    last = 0.0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                last = json.loads(line)["wall_time"]
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut short by a kill
    return last
