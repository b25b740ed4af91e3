"""Runner behaviour that no single backend exercises."""

from __future__ import annotations

import json

import pytest
import torch

import marl_diff.experiment as experiment
from marl_diff.envs import make_env
from marl_diff.run import compose, launch


def test_single_instance_simulators_are_evaluated_on_the_training_env(tmp_path, monkeypatch):
    built = []

    def make_single_instance_env(*args, **kwargs):
        env = make_env(*args, **kwargs)
        env.single_instance = True  # as Isaac Lab: one simulation per process
        built.append(env)
        return env

    monkeypatch.setattr(experiment, "make_env", make_single_instance_env)
    cfg = compose(
        [
            "scenario=multigoal",
            "agent=gaussian",
            "runner.total_steps=400",
            "runner.warmup_steps=100",
            "runner.batch_size=32",
            "runner.eval_every=100",
            "runner.eval_episodes=2",
            "runner.log_every=100",
            "runner.progress=false",
            "agent.actor_hidden=[16]",
            "agent.critic_hidden=[16]",
            f"run_dir={tmp_path}",
        ]
    )
    report = launch(cfg, user_overrides=[])
    assert len(built) == 1
    assert len(report["returns"]) == 2
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl", encoding="utf-8")]
    assert sum("eval/return" in r for r in records) == 4  # at 100, 200, 300 and the final one
    # training episodes keep being counted across the evaluations that reset the env
    assert max(r.get("train/episodes", 0) for r in records) > 0
    assert torch.isfinite(
        torch.tensor([r["eval/return"] for r in records if "eval/return" in r])
    ).all()


def test_the_log_window_sums_bfloat16_metrics_in_float32():
    """A bfloat16 loss's metric (`update_precision=bfloat16`) summed in its own dtype stops
    growing once the sum's last digit outweighs it; the window sums in float32."""
    from types import SimpleNamespace

    from marl_diff.runners.base import Runner

    window = SimpleNamespace(metric_sums={}, metric_counts={})
    for _ in range(1000):
        Runner.record(window, {"loss/critic": torch.tensor(1.01, dtype=torch.bfloat16)})
    total = window.metric_sums["loss/critic"]
    assert total.dtype == torch.float32
    assert total.item() / window.metric_counts["loss/critic"] == pytest.approx(1.0078125)
