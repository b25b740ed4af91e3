"""The results tools: `marl_diff.report curves` on hand-made run directories, and the update
benchmark's table (its shape, not its speed)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from marl_diff import bench, report
from marl_diff.errors import ConfigError, MarlDiffError


def make_run(
    run_dir, agent: str, curve: dict[int, float], updates_per_s: float = 10.0, x="env_steps"
):
    """A finished run as the runner leaves it: config.yaml and metrics.jsonl (`x` "updates" for
    an offline run)."""
    run_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"agent": {"name": agent}, "seed": 0}), run_dir / "config.yaml")
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as handle:
        for step, value in curve.items():
            record = {x: step, "wall_time": step / 100, "eval/return": value}
            record["perf/updates_per_s"] = updates_per_s
            handle.write(json.dumps(record) + "\n")


def test_curves_average_seeds_per_agent(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs / "a" / "seed0", "gaussian", {1000: 1.0, 2000: 3.0})
    make_run(runs / "a" / "seed1", "gaussian", {1000: 3.0, 2000: 5.0})
    make_run(runs / "b" / "seed0", "ddpl", {1000: 0.0, 2000: 7.0}, updates_per_s=2.0)
    out = tmp_path / "out" / "study"
    text = report.curves([f"runs={runs}", f"out={out}"])
    assert (out.with_suffix(".png")).stat().st_size > 0
    assert out.with_suffix(".md").read_text() == text
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert "| 2 | 2000 | 4.000 +- 1.000 | 4.000 | 10.0 |" in rows["gaussian"]
    assert "| 1 | 2000 | 7.000 +- 0.000 | 7.000 | 2.0 |" in rows["ddpl"]
    assert "| 1000 | 0.000 | 2.000 |" in text  # per-evaluation means, groups sorted by name


def test_curves_group_by_folder_keeps_variants_of_one_agent_apart(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs / "dacer" / "seed0", "dacer", {1000: 1.0})
    make_run(runs / "dacer_rs1" / "seed0", "dacer", {1000: 5.0})
    by_agent = report.curves([f"runs={runs}", f"out={tmp_path / 'agent'}"])
    by_folder = report.curves([f"runs={runs}", "group=folder", f"out={tmp_path / 'folder'}"])
    assert "| dacer | 2 | 1000 | 3.000 +- 2.000 |" in by_agent
    assert "| dacer | 1 | 1000 | 1.000 +- 0.000 |" in by_folder
    assert "| dacer_rs1 | 1 | 1000 | 5.000 +- 0.000 |" in by_folder


def test_curves_of_offline_runs_are_over_updates_and_never_mixed_with_online_ones(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs / "dtql" / "seed0", "dtql", {500: -900.0, 1000: -300.0}, x="updates")
    make_run(runs / "dtql" / "seed1", "dtql", {500: -700.0, 1000: -500.0}, x="updates")
    text = report.curves([f"runs={runs}", f"out={tmp_path / 'offline'}"])
    assert "| agent.name | seeds | updates |" in text
    assert "| dtql | 2 | 1000 | -400.000 +- 100.000 |" in text
    make_run(runs / "gaussian" / "seed0", "gaussian", {1000: -200.0})
    with pytest.raises(MarlDiffError, match="mix online runs .* and offline runs"):
        report.curves([f"runs={runs}", f"out={tmp_path / 'mixed'}"])


def test_curves_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown argument 'colour=red'. Valid: .*runs"):
        report.curves(["colour=red"])
    with pytest.raises(ConfigError, match="runs=DIR is required"):
        report.curves([])
    with pytest.raises(MarlDiffError, match="no run directories"):
        report.curves([f"runs={tmp_path}"])


def finished(run_dir, scenario: str, agent: str, seed: int, evaluation: dict, per_mode=None):
    """A finished run's config.yaml and eval.json (and a `modes=all` evaluation)."""
    run_dir.mkdir(parents=True)
    config = {"scenario": {"name": scenario}, "agent": {"name": agent}, "seed": seed}
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    (run_dir / "eval.json").write_text(
        json.dumps({"episodes": 10, "env_steps": 4000, **evaluation})
    )
    if per_mode is not None:
        (run_dir / "evaluations").mkdir()
        modes = {"behaviour_modes": len(per_mode), "per_mode": per_mode}
        name = "sample_episodes10_envs10_seed9_steps4000_modes.json"
        (run_dir / "evaluations" / name).write_text(json.dumps(modes))


def test_modes_report_counts_routes_and_goals_over_seeds(tmp_path):
    runs = tmp_path / "runs"
    maze = {"mean_return": 10.0, "success_rate": 1.0}
    finished(
        runs / "m" / "a" / "s0",
        "maze",
        "ddiffpg",
        0,
        {**maze, "distinct_modes": 2, "mode_shares": {"0": 0.6, "1": 0.4}},
        per_mode={
            "0": {"mean_return": 9.0, "success_rate": 0.9, "mode_shares": {"0": 0.9}},
            "1": {"mean_return": 8.0, "success_rate": 0.8, "mode_shares": {"1": 0.8}},
        },
    )
    finished(
        runs / "m" / "a" / "s1",
        "maze",
        "ddiffpg",
        1,
        {**maze, "distinct_modes": 1, "mode_shares": {"0": 1.0}},
    )
    finished(
        runs / "m" / "b" / "s0",
        "maze",
        "gaussian",
        0,
        {"mean_return": 5.0, "success_rate": 0.5, "distinct_modes": 1, "mode_shares": {"1": 0.5}},
    )
    finished(
        runs / "g" / "a" / "s0",
        "multigoal",
        "ddpl",
        0,
        {
            "mean_return": 1.0,
            "distinct_goals": 4,
            "modes_covered": 3,
            "goal_shares": {"0": 0.5, "1": 0.3, "2": 0.15, "3": 0.05},
        },
    )
    text = report.modes([f"runs={runs}", f"out={tmp_path / 'modes'}"])
    assert (tmp_path / "modes.md").read_text() == text
    assert "## maze" in text and "## multigoal" in text
    assert (
        "| ddiffpg | 2 | 4000 | 10 | 10.00 +- 0.00 | 1.00 +- 0.00 | 1.50 +- 0.50 "
        "| 1.50 +- 0.50 | 0: 80%, 1: 20% | 2, 1 |" in text
    )
    assert (
        "| gaussian | 1 | 4000 | 10 | 5.00 +- 0.00 | 0.50 +- 0.00 | 1.00 +- 0.00 "
        "| 1.00 +- 0.00 | 1: 50% | 1 |" in text
    )
    # multigoal: the goal with 5% of the episodes is reached but not covered; no success column
    assert (
        "| ddpl | 1 | 4000 | 10 | 1.00 +- 0.00 |  | 4.00 +- 0.00 | 3.00 +- 0.00 "
        "| 0: 50%, 1: 30%, 2: 15%, 3: 5% | 4 |" in text
    )
    assert "| ddiffpg | 0 | 2 | 0 | 9.00 | 90% | 0: 90% |" in text
    assert "| ddiffpg | 0 | 2 | 1 | 8.00 | 80% | 1: 80% |" in text


def test_mode_reports_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="runs=DIR is required"):
        report.modes([])
    with pytest.raises(ConfigError, match="not a folder"):
        report.modes([f"runs={tmp_path / 'none'}"])
    with pytest.raises(MarlDiffError, match="no finished runs"):
        report.trajectories([f"runs={tmp_path}"])
    with pytest.raises(ConfigError, match="integers"):
        report.trajectories([f"runs={tmp_path}", "seed=first"])


def test_update_benchmark_writes_one_row_per_agent(tmp_path):
    out = tmp_path / "update.md"
    text = bench.update(
        [
            "scenario=pendulum",
            "agents=gaussian,dacer",
            "batch_size=8",
            "updates=1",
            "repeats=1",
            "agent.actor_hidden=[16,16]",
            "agent.critic_hidden=[16,16]",
            "agent.diffusion_steps=2",
            f"out={out}",
        ]
    )
    assert out.read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| gaussian", "| dacer"]
    assert "actor_hidden=[16, 16], critic_hidden=[16, 16], diffusion_steps=2" in rows[1]
    assert rows[0].endswith("| 1.00 |")  # the first agent is the reference
    assert float(rows[1].split(" | ")[2].replace(",", "")) > 0


def test_update_benchmark_times_an_agent_on_the_batches_it_draws_itself(tmp_path):
    """DDiffPG's update takes its own grouped batch (`sample_batch`), not a plain one."""
    text = bench.update(
        [
            "scenario=multigoal",
            "agents=gaussian,ddiffpg",
            "batch_size=8",
            "updates=1",
            "repeats=1",
            "agent.actor_hidden=[16,16]",
            "agent.critic_hidden=[16,16]",
            f"out={tmp_path / 'update.md'}",
        ]
    )
    rows = [line for line in text.splitlines() if line.startswith("| ddiffpg")]
    assert len(rows) == 1 and float(rows[0].split(" | ")[2].replace(",", "")) > 0


def test_update_benchmark_times_whole_policy_delay_cycles(tmp_path, monkeypatch):
    """A block of updates=3 at policy delay 2 would hold 2 or 1 policy updates by where it
    starts; rounded up to 4, each holds 2. Two warm-up updates per block."""
    from marl_diff.agents.dacer import DACERAgent
    from marl_diff.agents.gaussian import GaussianAgent

    calls = {"gaussian": 0, "dacer": 0}
    for name, cls in (("gaussian", GaussianAgent), ("dacer", DACERAgent)):

        def counted(self, batch, name=name, update=cls.update):
            calls[name] += 1
            return update(self, batch)

        monkeypatch.setattr(cls, "update", counted)
    text = bench.update(
        [
            "scenario=pendulum",
            "agents=gaussian,dacer",
            "batch_size=8",
            "updates=3",
            "repeats=2",
            "agent.actor_hidden=[16,16]",
            "agent.critic_hidden=[16,16]",
            "agent.diffusion_steps=2",
            f"out={tmp_path / 'update.md'}",
        ]
    )
    assert calls == {"gaussian": 2 * (2 + 3), "dacer": 2 * (2 + 4)}
    assert "policy_delay=2" in [line for line in text.splitlines() if "| dacer" in line][0]


def test_update_benchmark_times_each_value_of_a_varied_key(tmp_path):
    args = ["scenario=pendulum", "agents=gaussian", "batch_size=8", "updates=1", "repeats=1"]
    text = bench.update(
        [
            *args,
            "vary=adam_impl:for_loop,fused",
            "agent.actor_hidden=[16,16]",
            f"out={tmp_path / 'u'}",
        ]
    )
    rows = [line for line in text.splitlines() if line.startswith("| gaussian")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| gaussian, adam_impl=for_loop",
        "| gaussian, adam_impl=fused",
    ]
    assert "adam_impl=fused, compile_update=False |" in rows[1]
    # an agent without the key gets one row, at its catalog's settings
    text = bench.update(
        [
            *args[:1],
            "agents=gaussian,diffusion_bc",
            *args[2:],
            "vary=others_actions:replay,policy",
            "agent.actor_hidden=[16,16]",
            f"out={tmp_path / 'bc'}",
        ]
    )
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ")][1:]
    assert rows == [
        "| gaussian, others_actions=replay",
        "| gaussian, others_actions=policy",
        "| diffusion_bc",
    ]
    with pytest.raises(ConfigError, match="adam_impl must be one of auto, for_loop"):
        bench.update([*args, "vary=adam_impl:apex", f"out={tmp_path / 'v'}"])
    with pytest.raises(ConfigError, match="unknown key 'agent.adam_impls'"):
        bench.update([*args, "vary=adam_impls:fused", f"out={tmp_path / 'w'}"])
    with pytest.raises(ConfigError, match="vary must be KEY:VALUE"):
        bench.update([*args, "vary=adam_impl", f"out={tmp_path / 'x'}"])


def test_machine_line_names_the_cpu_model_and_its_bfloat16_extensions():
    two_cores = (
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
        "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu\n"
    )
    assert bench.cpu_model(two_cores) == "Intel(R) Xeon(R) Processor (AMX-BF16, AVX512-BF16)"
    plain = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 fma\n"
    assert bench.cpu_model(plain) == "AMD EPYC 7B13"
    assert bench.cpu_model() in bench.machine()


def test_benchmarks_reject_unknown_arguments():
    with pytest.raises(ConfigError, match="unknown argument 'steps=3'.*agents="):
        bench.update(["steps=3"])
    with pytest.raises(ConfigError, match="batch_size, updates and repeats must be integers"):
        bench.update(["updates=many"])
    # an agent key is applied where an agent has it; one that none has is an error, not ignored
    with pytest.raises(ConfigError, match="'agent.graph_chain': none of the agents.*graph_chains"):
        bench.update(["scenario=pendulum", "agents=gaussian,ddpl", "agent.graph_chain=true"])


def test_curves_against_wall_time_interpolate_seeds_on_a_shared_range(tmp_path):
    """Seeds evaluate at different seconds: both curves are read on the range both cover."""
    runs = tmp_path / "runs"
    make_run(runs / "a" / "seed0", "ddpl", {1000: 0.0, 2000: 2.0})  # at 10 s and 20 s
    make_run(runs / "a" / "seed1", "ddpl", {1500: 1.0, 3000: 4.0})  # at 15 s and 30 s
    text = report.curves([f"runs={runs}", "x=wall_time", f"out={tmp_path / 'wall'}"])
    assert "| agent.name | seeds | wall time s |" in text
    # 15 s: seed0 1.0, seed1 1.0; 20 s: seed0 2.0, seed1 2.0 -> mean 2.0 at the shared end
    assert "| 15 | 1.000 |" in text and "| 20 | 2.000 |" in text
    assert "| ddpl | 2 | 20 | 3.000 +- 1.000 |" in text  # finals are each run's last value
    with pytest.raises(ConfigError, match="unknown x-axis x=time. Valid: .*wall_time"):
        report.curves([f"runs={runs}", "x=time"])
