"""`matmul_precision=`: torch's float32 matrix-product setting, applied per process by the run
and the update benchmark."""

import pytest
import torch

from marl_diff import bench, precision
from marl_diff.errors import ConfigError


@pytest.fixture(autouse=True)
def keep_torch_setting():
    """The setting is process-wide: give it back to the tests after."""
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_unknown_mode_names_the_choices():
    with pytest.raises(ConfigError, match="matmul_precision must be one of high, highest, medium"):
        precision.configure("bf16")


@pytest.mark.parametrize("mode", precision.MODES)
def test_each_mode_reaches_torch(mode):
    precision.configure("highest" if mode != "highest" else "medium")
    precision.configure(mode)
    assert torch.get_float32_matmul_precision() == mode


def test_update_benchmark_applies_and_reports_the_precision(tmp_path):
    text = bench.update(
        [
            "scenario=pendulum",
            "agents=gaussian",
            "batch_size=8",
            "updates=1",
            "repeats=1",
            "agent.actor_hidden=[16,16]",
            "agent.critic_hidden=[16,16]",
            "matmul_precision=medium",
            f"out={tmp_path / 'update.md'}",
        ]
    )
    assert "matmul_precision=medium" in text
    assert torch.get_float32_matmul_precision() == "medium"
    with pytest.raises(ConfigError, match="matmul_precision.*'fast'"):
        bench.update(["matmul_precision=fast"])


def test_a_run_keeps_its_precision_and_evaluate_and_collect_apply_it(run_cli, tiny_args, tmp_path):
    """The run saves its precision; evaluate applies it, so it replays the final evaluation,
    and collect plays the policy as it was trained."""
    import json

    from omegaconf import OmegaConf

    from marl_diff.collect import collect_episodes
    from marl_diff.evaluate import evaluate_run

    run_dir = tmp_path / "run"
    proc = run_cli([*tiny_args, "matmul_precision=medium", f"run_dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert OmegaConf.load(run_dir / "config.yaml").matmul_precision == "medium"
    torch.set_float32_matmul_precision("highest")
    report, _ = evaluate_run(run_dir, device="cpu")
    assert torch.get_float32_matmul_precision() == "medium"
    assert report["returns"] == json.loads((run_dir / "eval.json").read_text())["returns"]
    torch.set_float32_matmul_precision("highest")
    records, _ = collect_episodes(run_dir, 1, num_envs=1, device="cpu", progress=False)
    assert len(records) == 1
    assert torch.get_float32_matmul_precision() == "medium"
