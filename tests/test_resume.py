"""Checkpoints, resume, NaN handling and determinism of the off-policy runner, in-process
(configs composed exactly as `python -m marl_diff.run` composes them)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_AGENTS, TINY_NETS

from marl_diff.agents.gaussian import GaussianAgent
from marl_diff.checkpoint import checkpoint_paths, claim_new_dir, load_latest, save_checkpoint
from marl_diff.errors import MarlDiffError, TrainingDiverged
from marl_diff.experiment import make_runner
from marl_diff.run import launch, resumed_config
from marl_diff.runners import base as runner_base
from marl_diff.runners.off_policy import OffPolicyRunner

TIMING_KEYS = (
    "wall_time",
    "perf/env_steps_per_s",
    "perf/updates_per_s",
    "perf/act_ms_per_step",
    "perf/update_ms",
)


def train(compose_config, args: list[str]) -> dict:
    cfg, overrides = compose_config(args)
    return launch(cfg, overrides)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_tensors(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a.cpu(), b.cpu()), where
    else:
        assert a == b, where


# ---------------------------------------------------------------------------- atomic files
def test_save_checkpoint_keeps_last_k_and_ignores_partial_files(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (100, 200, 300, 400):
        save_checkpoint(folder, step, {"env_steps": step, "w": torch.full((2,), step)}, keep=2)
    assert [p.name for p in checkpoint_paths(folder)] == [
        "step_000000000300.pt",
        "step_000000000400.pt",
    ]
    assert sorted(p.name for p in folder.iterdir()) == [
        "step_000000000300.pt",
        "step_000000000400.pt",
    ]  # no temp file left behind
    # a write killed half-way leaves only a temp file, which is never picked up
    (folder / ".step_000000000500.pt.tmp").write_bytes(b"\x80\x02partial")
    (folder / "step_000000000600.pt.tmp").write_bytes(b"partial")
    state = load_latest(folder)
    assert state["env_steps"] == 400 and torch.equal(state["w"], torch.full((2,), 400))
    save_checkpoint(folder, 700, {"env_steps": 700}, keep=0)  # keep=0: keep everything
    assert len(checkpoint_paths(folder)) == 3


def test_claim_new_dir_never_hands_out_a_taken_folder(tmp_path):
    """Two runs started in the same second ask for the same timestamped name: each gets a
    folder of its own, created at once, and what an earlier run wrote is left alone."""
    base = tmp_path / "runs" / "20261205-070037"
    first = claim_new_dir(base)
    (first / "metrics.jsonl").write_text("{}\n")
    second, third = claim_new_dir(base), claim_new_dir(base)
    assert (first.name, second.name, third.name) == tuple(
        base.name + suffix for suffix in ("", "-1", "-2")
    )
    assert all(path.is_dir() for path in (second, third))
    assert (first / "metrics.jsonl").read_text() == "{}\n"


def test_load_latest_errors_are_clean(tmp_path):
    with pytest.raises(MarlDiffError, match="no checkpoint"):
        load_latest(tmp_path / "missing")
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "step_000000000100.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MarlDiffError, match="cannot load checkpoint"):
        load_latest(folder)


# ---------------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """300 steps with checkpoints every 150 and the replay buffer saved."""
    from conftest import TINY_ARGS

    from marl_diff.run import compose

    run_dir = tmp_path_factory.mktemp("resume") / "run"
    args = [
        *TINY_ARGS,
        "runner.checkpoint_every=150",
        "runner.save_buffer=true",
        f"run_dir={run_dir}",
    ]
    launch(compose(args), [])
    return run_dir


def test_resume_restores_agent_optimizers_alpha_and_buffer(first_run, compose_config):
    ckpt = load_latest(first_run / "checkpoints")
    assert ckpt["env_steps"] == 300
    # naming the run's own scenario and agent again is fine; no runner named keeps the saved one
    args = [f"resume={first_run}", "scenario=pendulum", "agent=gaussian", "runner.total_steps=600"]
    cfg, overrides = compose_config(args)
    cfg, run_dir = resumed_config(cfg, overrides)
    assert run_dir == first_run and cfg.runner.total_steps == 600
    assert list(cfg.agent.actor_hidden) == [32, 32]  # from the saved config, not the YAML
    runner = make_runner(cfg, run_dir, "cpu")
    fresh_alpha = runner.agent.log_alpha.detach().clone()
    runner.restore()
    try:
        state = runner.agent.training_state()
        assert_same_tensors(state["modules"], ckpt["agent"]["modules"], "modules")
        assert_same_tensors(state["optimizers"], ckpt["agent"]["optimizers"], "optimizers")
        assert set(state["optimizers"]) == {"critic", "actor", "alpha"}
        adam = runner.agent.optimizers["actor"].state_dict()["state"]
        assert adam and all(int(s["step"]) == ckpt["updates"] for s in adam.values())
        assert torch.equal(runner.agent.log_alpha.detach(), ckpt["agent"]["modules"]["log_alpha"])
        assert not torch.equal(runner.agent.log_alpha.detach(), fresh_alpha)  # it was learned
        assert runner.env_steps == 300 and runner.updates == ckpt["updates"] > 0
        assert runner.buffer.size == 300
        saved_buffer = torch.load(first_run / "buffer.pt", weights_only=True)
        assert torch.equal(runner.buffer.storage.obs[:300], saved_buffer["obs"])
    finally:
        runner.env.close()
        runner.eval_env.close()


def test_resume_continues_training_and_metrics(first_run, compose_config, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(first_run, run_dir)
    before = metrics(run_dir)
    train(compose_config, [f"resume={run_dir}", "runner.total_steps=600"])
    after = metrics(run_dir)
    assert after[: len(before)] == before  # appended, not rewritten
    new = after[len(before) :]
    assert new and all(r["env_steps"] > 300 for r in new)
    assert new[-1]["env_steps"] == 600 and "eval/return" in new[-1]
    assert any("loss/critic" in r for r in new)
    assert load_latest(run_dir / "checkpoints")["env_steps"] == 600
    assert json.loads((run_dir / "eval.json").read_text())["env_steps"] == 600
    assert (run_dir / "config.yaml").read_text().count("total_steps: 600") == 1


# ---------------------------------------------------------------------------- exact resume
# The tiny agents of conftest, with the lagged proposal refreshed and alpha refit a few times
# before and after the checkpoint.
REFRESHES = {"ddpl": {"lag_updates": 5}, "dacer": {"alpha_update_every": 7}}
RESUME_AGENTS = {
    name: {**TINY_NETS, **settings, **REFRESHES.get(name, {})}
    for name, settings in TINY_AGENTS.items()
}
# Two env copies, episodes of 20 steps: the checkpoint at env step 60 falls mid-episode, between
# two log events (every 25) and after the 50-slot buffer wrapped; 0.75 updates per env step
# leaves a fractional update credit there.
EXACT_RESUME_RUN = [
    "scenario=multigoal",
    "scenario.max_steps=20",
    "runner.total_steps=120",
    "runner.num_envs=2",
    "runner.warmup_steps=30",
    "runner.utd_ratio=0.75",
    "runner.batch_size=16",
    "runner.buffer_size=50",
    "runner.eval_every=40",
    "runner.eval_episodes=2",
    "runner.eval_num_envs=2",
    "runner.log_every=25",
    "runner.checkpoint_every=60",
    "runner.keep_checkpoints=0",
    "runner.save_buffer=true",
    "runner.progress=false",
    "device=cpu",
]


class Killed(Exception):
    """Stands in for the process being killed right after a checkpoint."""


@pytest.mark.parametrize(
    "agent_name, runner_args",
    [
        *((name, []) for name in sorted(RESUME_AGENTS)),
        # update phases at env steps 50, 100 and 120: the checkpoint at 60 holds earned updates
        ("gaussian", ["runner.update_every=50"]),
        # n-step returns: the links across the checkpoint, the agent's episodes_continue flag
        ("ddpl", ["agent.n_step=3"]),
    ],
)
def test_a_run_killed_and_resumed_equals_the_uninterrupted_run(
    agent_name, runner_args, compose_config, tmp_path, monkeypatch
):
    settings = RESUME_AGENTS[agent_name]
    args = [
        *EXACT_RESUME_RUN,
        *runner_args,
        f"agent={agent_name}",
        *(f"agent.{key}={json.dumps(value)}" for key, value in settings.items()),
    ]
    whole = tmp_path / "whole"
    train(compose_config, [*args, f"run_dir={whole}"])

    real_save = OffPolicyRunner.save

    def save_then_die(self):
        real_save(self)
        raise Killed

    killed = tmp_path / "killed"
    with monkeypatch.context() as patch:
        patch.setattr(OffPolicyRunner, "save", save_then_die)
        with pytest.raises(Killed):
            train(compose_config, [*args, f"run_dir={killed}"])
    assert load_latest(killed / "checkpoints")["env_steps"] == 60
    assert not (killed / "eval.json").exists()
    train(compose_config, [f"resume={killed}"])

    assert without_timing(metrics(killed)) == without_timing(metrics(whole))
    assert json.loads((killed / "eval.json").read_text()) == json.loads(
        (whole / "eval.json").read_text()
    )
    final = [load_latest(run / "checkpoints") for run in (whole, killed)]
    assert_same_tensors(final[1]["agent"], final[0]["agent"], "agent")
    assert_same_tensors(final[1]["torch_rng"], final[0]["torch_rng"], "torch_rng")


# ---------------------------------------------------------------------------- divergence
def test_nan_loss_raises_with_step_and_keeps_last_checkpoint(compose_config, tmp_path, monkeypatch):
    written: dict[Path, str] = {}
    real_save = runner_base.save_checkpoint

    def recording_save(*args, **kwargs):
        path = real_save(*args, **kwargs)
        written[path] = sha(path)
        return path

    real_update = GaussianAgent.update
    calls = {"n": 0}

    def poisoned_update(self, batch):
        out = real_update(self, batch)
        calls["n"] += 1
        if calls["n"] > 150:  # updates start at env step 100: this is env step 250, found at the
            # log event of step 300 (metrics are checked per log window, not per update)
            out["loss/critic"] = torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(runner_base, "save_checkpoint", recording_save)
    monkeypatch.setattr(GaussianAgent, "update", poisoned_update)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        train(compose_config, [f"run_dir={run_dir}", *_tiny()])
    message = str(info.value)
    assert "env step 300" in message and "loss/critic" in message
    assert "after env step 200" in message
    last = run_dir / "checkpoints" / "step_000000000200.pt"
    assert str(last) in message
    assert checkpoint_paths(run_dir / "checkpoints") == [
        run_dir / "checkpoints" / "step_000000000100.pt",
        last,
    ]
    assert sha(last) == written[last]  # unchanged since it was written
    state = torch.load(last, weights_only=True)
    assert state["env_steps"] == 200
    for name, tensor in state["agent"]["modules"].items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name
    assert not (run_dir / "eval.json").exists()


def test_nan_parameters_are_caught_before_checkpointing(compose_config, tmp_path, monkeypatch):
    real_update = GaussianAgent.update
    calls = {"n": 0}

    def poisoned_update(self, batch):
        out = real_update(self, batch)
        calls["n"] += 1
        if calls["n"] == 101:  # env step 200, just before the checkpoint; losses stay finite
            with torch.no_grad():
                next(self.policy.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(GaussianAgent, "update", poisoned_update)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"env step 200: non-finite parameter policy\."):
        train(compose_config, [f"run_dir={run_dir}", *_tiny()])
    assert [p.name for p in checkpoint_paths(run_dir / "checkpoints")] == ["step_000000000100.pt"]
    state = torch.load(run_dir / "checkpoints" / "step_000000000100.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["agent"]["modules"].values())


def _tiny() -> list[str]:
    from conftest import TINY_ARGS

    return list(TINY_ARGS)


# ---------------------------------------------------------------------------- determinism
def test_same_seed_same_results_and_other_seed_differs(compose_config, tmp_path):
    reports, records = [], []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_dir = tmp_path / name
        reports.append(train(compose_config, [*_tiny(), f"seed={seed}", f"run_dir={run_dir}"]))
        records.append(without_timing(metrics(run_dir)))
    assert records[0] == records[1]
    assert reports[0]["returns"] == reports[1]["returns"]
    eval_a = json.loads((tmp_path / "a" / "eval.json").read_text())
    eval_b = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert eval_a["returns"] == eval_b["returns"]
    assert records[0] != records[2]
    assert reports[0]["returns"] != reports[2]["returns"]
