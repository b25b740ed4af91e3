"""`marl_diff.study`: the grid, the launcher arguments, restarts (`resume=auto`), refused
scenarios, the aggregation from hand-made run folders (known numbers in, known table out), and
a 2 x 2 sweep with tiny budgets through the local launcher end to end."""

from __future__ import annotations

import json

import pytest
from conftest import run_module
from omegaconf import OmegaConf

from marl_diff import study
from marl_diff.errors import ConfigError, MarlDiffError
from marl_diff.run import check_rerun, compose, launch

SMALL = [
    "runner.total_steps=120",
    "runner.warmup_steps=60",
    "runner.batch_size=16",
    "runner.eval_every=60",
    "runner.eval_episodes=2",
    "runner.eval_num_envs=2",
    "runner.log_every=60",
    "runner.checkpoint_every=60",
    "agent.actor_hidden=[16,16]",
    "agent.critic_hidden=[16,16]",
]


# ---------------------------------------------------------------------------- the grid
def test_the_grid_is_every_agent_count_and_seed_with_one_folder_each(tmp_path):
    s = study.parse_scaling(
        [
            "scenario=vmas_navigation",
            "agents=gaussian,ddpl",
            "n_agents=1,2,4",
            "seeds=0,1",
            f"out={tmp_path}",
            "runner.total_steps=1000",
        ]
    )
    jobs = s.jobs()
    assert len(jobs) == 2 * 3 * 2 and len({job.run_dir for job in jobs}) == 12
    assert jobs[0].run_dir == tmp_path / "runs" / "gaussian" / "n1" / "seed0"
    assert {(j.agent, j.n_agents, j.seed) for j in jobs} == {
        (a, n, seed) for a in ("gaussian", "ddpl") for n in (1, 2, 4) for seed in (0, 1)
    }
    sweep = s.sweep_arguments()
    assert sweep[0] == "-m"
    for needle in (
        "scenario=vmas_navigation",
        "agent=gaussian,ddpl",
        "scenario.n_agents=1,2,4",
        "seed=0,1",
        "runner.total_steps=1000",
        "resume=auto",
        "threads=1",
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={s.workers}",
        f"run_dir={tmp_path}/runs/${{agent.name}}/n${{scenario.n_agents}}/seed${{seed}}",
    ):
        assert needle in sweep, needle
    one = s.job_arguments(jobs[-1])
    assert "agent=ddpl" in one and "scenario.n_agents=4" in one and "seed=1" in one


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            ["launcher=ray", "workers=3"],
            ["hydra/launcher=ray", "++hydra.launcher.ray.init.num_cpus=3"],
        ),
        (
            ["launcher=ray", "ray_address=10.0.0.1:6379"],
            ["hydra/launcher=ray", "hydra.launcher.ray.init.address=10.0.0.1:6379"],
        ),
        (
            ["launcher=slurm", "workers=16"],
            ["hydra/launcher=submitit_slurm", "hydra.launcher.array_parallelism=16"],
        ),
    ],
)
def test_each_launcher_gets_its_hydra_plugin(extra, expected):
    s = study.parse_scaling(["scenario=multigoal", "n_agents=1,2", *extra])
    arguments = s.launcher_arguments()
    for needle in expected:
        assert needle in arguments
    assert ("++hydra.launcher.ray.init.num_cpus=3" in arguments) == ("workers=3" in extra)


@pytest.mark.parametrize(
    "args, needles",
    [
        (
            ["scenario=pendulum", "n_agents=1,2"],
            ["fixed agent count", "vmas_navigation", "multigoal", "mamujoco_manysegment_ant"],
        ),
        (["scenario=smax_3m", "n_agents=1,2"], ["'smax_3m'", "3 agents (fixed)", "vmas_transport"]),
        (["n_agents=1,2"], ["scenario=NAME is required", "vmas_balance"]),
        (["scenario=multigoal"], ["n_agents=N1,N2"]),
        (["scenario=multigoal", "n_agents=0,2"], ["n_agents", ">= 1"]),
        (["scenario=multigoal", "n_agents=1", "seeds=a"], ["seeds", "integers"]),
        (["scenario=multigoal", "n_agents=1", "agents=ddpl,nope"], ["agent 'nope'", "gaussian"]),
        (
            ["scenario=multigoal", "n_agents=1", "launcher=k8s"],
            ["launcher 'k8s'", "local", "ray", "slurm"],
        ),
        (["scenario=multigoal", "n_agents=1", "seed=3"], ["'seed' is set by the study", "seeds"]),
        (["scenario=multigoal", "n_agents=1", "scenario.n_agents=3"], ["set by the study"]),
        (["scenario=multigoal", "n_agents=1", "threshold=high"], ["threshold must be a number"]),
    ],
)
def test_bad_studies_are_refused_with_the_valid_choices(args, needles):
    with pytest.raises(ConfigError) as err:
        study.parse_scaling(args)
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_a_refused_scenario_exits_cleanly_from_the_command_line(run_cli, tmp_path):
    proc = run_cli(
        ["scaling", "scenario=hopper", "n_agents=1,2"], tmp_path, module="marl_diff.study"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "error:" in proc.stderr and "vmas_navigation" in proc.stderr
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------- restarts
def test_resume_auto_keeps_finished_runs_and_refuses_another_config(tmp_path):
    run_dir = tmp_path / "run"
    args = ["scenario=multigoal", "agent=gaussian", *SMALL, f"run_dir={run_dir}", "resume=auto"]
    assert check_rerun(compose(args), run_dir) == "new"
    first = launch(compose(args), args)
    assert check_rerun(compose(args), run_dir) == "finished"
    records = (run_dir / "metrics.jsonl").read_text()
    again = launch(compose(args), args)  # kept, not retrained
    assert again["returns"] == first["returns"]
    assert (run_dir / "metrics.jsonl").read_text() == records
    # device and progress may differ; a budget may not
    assert (
        check_rerun(compose([*args, "device=cpu", "runner.progress=false"]), run_dir) == "finished"
    )
    longer = [a.replace("total_steps=120", "total_steps=180") for a in args]
    with pytest.raises(MarlDiffError, match=r"other settings \(runner.total_steps: 120 -> 180\)"):
        check_rerun(compose(longer), run_dir)
    # a run saved before settings existed was made with their defaults: it reruns, and asking
    # for another value than the default is still refused
    saved = OmegaConf.load(run_dir / "config.yaml")
    for node, key in ((saved.agent, "critic_rewards"), (saved.runner, "eval_mode")):
        del node[key]
    OmegaConf.save(saved, run_dir / "config.yaml")
    assert check_rerun(compose(args), run_dir) == "finished"
    with pytest.raises(MarlDiffError, match=r"\(agent.critic_rewards: 'team' -> 'per_agent'\)"):
        check_rerun(compose([*args, "agent.critic_rewards=per_agent"]), run_dir)


def test_resume_auto_resumes_an_interrupted_run_from_its_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = ["scenario=multigoal", "agent=gaussian", *SMALL, f"run_dir={run_dir}", "resume=auto"]
    launch(compose(args), args)
    (run_dir / "eval.json").unlink()  # as if killed after its last checkpoint
    last_wall = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["wall_time"]
    assert check_rerun(compose(args), run_dir) == "interrupted"
    report = launch(compose(args), args)
    assert (run_dir / "eval.json").is_file() and report["episodes"] == 2
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["wall_time"] >= last_wall  # the clock runs on across the restart
    with pytest.raises(ConfigError, match="resume=auto needs run_dir"):
        launch(compose([a for a in args if not a.startswith("run_dir")]), args)


def test_an_out_folder_holding_another_study_is_refused_before_anything_is_written(
    run_cli, tmp_path
):
    """A quick study pointed at a committed study's folder would replace its report: refused,
    from the command line too, while the same study resumed or grown is let through."""
    grid = ["scenario=multigoal", "agents=gaussian", "n_agents=1,2", "seeds=0"]
    recorded = study.parse_scaling([*grid, f"out={tmp_path}", *SMALL])
    recorded.write_record()
    before = (tmp_path / "study.json").read_text()
    grown = study.parse_scaling(
        [*grid[:3], "agents=gaussian,ddpl", "seeds=0,1", f"out={tmp_path}", *reversed(SMALL)]
    )
    grown.check_out()
    shorter = [a.replace("total_steps=120", "total_steps=60") for a in SMALL]
    for other in (
        [*grid, f"out={tmp_path}", *shorter],  # other settings
        [*grid[:3], "seeds=1", f"out={tmp_path}", *SMALL],  # a grid without seed 0
        ["scenario=vmas_navigation", *grid[1:], f"out={tmp_path}", *SMALL],
    ):
        with pytest.raises(MarlDiffError, match="holds another study") as err:
            study.parse_scaling(other).launch()
        assert recorded.command in str(err.value) and "out=DIR" in str(err.value)
    proc = run_cli(
        ["scaling", *grid, f"out={tmp_path}", *shorter], tmp_path, module="marl_diff.study"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "holds another study" in proc.stderr
    assert (tmp_path / "study.json").read_text() == before
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- aggregation
def fake_run(root, agent: str, n: int, seed: int, curve, update_ms: float, extra=None):
    """A finished run folder as the runner leaves it: `curve` is [(env steps, wall s, return)]."""
    run_dir = root / "runs" / agent / f"n{n}" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    runner = {
        "total_steps": 2000,
        "num_envs": 4,
        "utd_ratio": 0.5,
        "batch_size": 64,
        "warmup_steps": 100,
        "eval_episodes": 8,
    }
    cfg = {
        "agent": {"name": agent},
        "scenario": {"name": "vmas_navigation", "backend": "vmas", "n_agents": n},
        "runner": runner,
        "seed": seed,
    }
    OmegaConf.save(OmegaConf.create(cfg), run_dir / "config.yaml")
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as handle:
        for step, wall, value in curve:
            speeds = {"perf/env_steps_per_s": 100.0 * n, "perf/update_ms": update_ms}
            handle.write(json.dumps({"env_steps": step, "wall_time": wall - 1, **speeds}) + "\n")
            handle.write(
                json.dumps({"env_steps": step, "wall_time": wall, "eval/return": value}) + "\n"
            )
    report = {"mean_return": curve[-1][2], **(extra or {})}
    (run_dir / "eval.json").write_text(json.dumps(report))


def test_the_report_aggregates_known_runs_into_a_known_table(tmp_path):
    for seed, (g, d) in enumerate([(1.0, 4.0), (3.0, 6.0)]):
        fake_run(tmp_path, "gaussian", 1, seed, [(1000, 10, 0.5), (2000, 20, g)], 2.0)
        fake_run(tmp_path, "ddpl", 1, seed, [(1000, 30, 0.5), (2000, 60, d)], 8.0)
        fake_run(tmp_path, "gaussian", 2, seed, [(1000, 10, 0.0), (2000, 20, 2.0)], 3.0)
        fake_run(tmp_path, "ddpl", 2, seed, [(1000, 40, 3.0), (2000, 80, 2.0 + seed)], 12.0)
    unfinished = tmp_path / "runs" / "ddpl" / "n4" / "seed0"
    unfinished.mkdir(parents=True)  # no eval.json: not in the table
    text = study.scaling_report([str(tmp_path), "threshold=2.5"])
    assert (tmp_path / "scaling.md").read_text() == text
    assert (tmp_path / "scaling.png").stat().st_size > 0 and (
        tmp_path / "curves.png"
    ).stat().st_size > 0
    assert (
        "Budget per run: 2000 env steps, 4 env copies, 0.5 updates per env step, batch 64" in text
    )
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]

    def row(start: str) -> bool:
        return any(line.startswith(start) for line in rows)

    assert row("| gaussian | 1 | 2 | 2.00 +- 1.00 | 2.00 | 20 (1/2) | 100 | 2.0 |")
    assert row("| ddpl | 1 | 2 | 5.00 +- 1.00 | 5.00 | 60 (2/2) | 33 | 8.0 |")
    assert row("| gaussian | 2 | 2 | 2.00 +- 0.00 | 2.00 | - (0/2) | 100 | 3.0 |")
    # env steps/s over whole runs: 2000 steps in 20, 60 and 80 s
    # ddpl at N=2: 3.0 at the first evaluation in both seeds (40 s), best mean 3.0
    assert row("| ddpl | 2 | 2 | 2.50 +- 0.50 | 3.00 | 40 (2/2) | 25 | 12.0 |")
    assert not row("| ddpl | 4 |")
    # the difference: means 5 - 2 with standard error sqrt(2/2 + 2/2); at N=2, 2.5 - 2 with
    # sqrt(0.5/2 + 0)
    assert "## ddpl minus gaussian" in text
    assert "| 1 | +3.00 | 1.41 |" in rows and "| 2 | +0.50 | 0.50 |" in rows


def test_the_report_shows_goal_combinations_where_the_scenario_reports_them(tmp_path):
    fake_run(tmp_path, "ddpl", 2, 0, [(1000, 10, 1.0)], 5.0, {"goal_combinations": 3})
    fake_run(tmp_path, "ddpl", 2, 1, [(1000, 10, 1.0)], 5.0, {"goal_combinations": 5})
    text = study.scaling_report([str(tmp_path)])
    assert "goal combinations |" in text and "| 4.00 +- 1.00 |" in text
    assert "s to return" not in text  # no threshold, no column


def test_report_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="name the study folder"):
        study.scaling_report([])
    with pytest.raises(MarlDiffError, match="no finished runs .* run the study first"):
        study.scaling_report([str(tmp_path)])
    with pytest.raises(ConfigError, match="unknown argument 'colour=red'"):
        study.scaling_report([str(tmp_path), "colour=red"])


# ---------------------------------------------------------------------------- end to end
@pytest.mark.learning(seconds=60)
def test_a_two_by_two_study_through_the_local_launcher_then_a_restart(run_cli, tmp_path):
    """gaussian and ddpl at N = 1, 2 on multigoal, tiny budgets, 2 worker processes, a setting
    for the ddpl jobs only (through the scenario's agent_defaults); invoked again it keeps all
    four runs; a changed budget is refused before anything is launched."""
    args = ["scaling", "scenario=multigoal", "agents=gaussian,ddpl", "n_agents=1,2", "seeds=0"]
    args += ["workers=2", "out=study", *SMALL, "scenario.agent_defaults.ddpl.diffusion_steps=2"]
    proc = run_cli(args, tmp_path, module="marl_diff.study")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "study"
    for agent in ("gaussian", "ddpl"):
        for n in (1, 2):
            run_dir = out / "runs" / agent / f"n{n}" / "seed0"
            cfg = OmegaConf.load(run_dir / "config.yaml")
            assert cfg.scenario.n_agents == n and (run_dir / "eval.json").is_file()
            if agent == "ddpl":  # multigoal's agent_defaults reached every ddpl job
                assert cfg.agent.target == "soft" and cfg.agent.n_candidates == 32
                assert cfg.agent.diffusion_steps == 2
    text = (out / "scaling.md").read_text()
    assert (
        "| gaussian | 2 | 1 |" in text
        and "| ddpl | 1 | 1 |" in text
        and "goal combinations" in text
    )
    assert json.loads((out / "study.json").read_text())["command"].startswith(
        "python -m marl_diff.study scaling"
    )

    before = {p: p.stat().st_mtime for p in out.glob("runs/*/*/seed0/eval.json")}
    again = run_cli(args, tmp_path, module="marl_diff.study")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 finished (kept), 0 interrupted (resumed), 0 to start" in again.stdout
    assert {p: p.stat().st_mtime for p in before} == before

    longer = [a.replace("total_steps=120", "total_steps=180") for a in args]
    changed = run_cli(longer, tmp_path, module="marl_diff.study")
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert "other settings (runner.total_steps: 120 -> 180)" in changed.stderr


@pytest.mark.learning(seconds=35)
def test_a_sweep_through_the_ray_launcher_on_its_own_local_ray(tmp_path):
    """launcher=ray without an address: the launcher starts a local Ray instance with 2 CPUs,
    runs each job as a Ray task, and the instance stops with the study's process. (About 30 s
    alone; Ray's start takes minutes when the CPU is shared, hence the long timeout.)"""
    args = ["scaling", "scenario=multigoal", "agents=gaussian", "n_agents=1,2", "seeds=0"]
    ray = [*args, "launcher=ray", "workers=2", "out=study", *SMALL]
    proc = run_module("marl_diff.study", ray, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Started a local Ray instance" in proc.stderr
    for n in (1, 2):
        assert (
            tmp_path / "study" / "runs" / "gaussian" / f"n{n}" / "seed0" / "eval.json"
        ).is_file()
    assert "| gaussian | 2 | 1 |" in (tmp_path / "study" / "scaling.md").read_text()
