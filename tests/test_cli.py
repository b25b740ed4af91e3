"""`python -m marl_diff.run` / `marl_diff.evaluate` end to end in subprocesses: run artifacts,
the catalog listing, default run dirs, multirun sweeps and clean one-line errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import make_spec
from omegaconf import OmegaConf

from marl_diff import catalog

EXPECTED_TAGS = [
    "train/episode_return",
    "eval/return",
    "loss/critic",
    "loss/actor",
    "alpha/mean",
    "q/mean",
    "perf/env_steps_per_s",
    "perf/updates_per_s",
]


def assert_clean_error(proc, *needles: str) -> str:
    """Non-zero exit, one 'error: ...' message naming every needle, no traceback anywhere."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run made by the CLI with the default run_dir, from a scratch working dir."""
    from conftest import TINY_ARGS, run_module

    cwd = tmp_path_factory.mktemp("cli")
    proc = run_module("marl_diff.run", [*TINY_ARGS, "runner.keep_checkpoints=2"], cwd)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    runs = list((cwd / "results" / "runs" / "pendulum" / "gaussian").iterdir())
    assert len(runs) == 1
    return runs[0]


# ---------------------------------------------------------------------------- a run
def test_default_run_dir_is_under_results_of_the_working_dir(trained):
    assert trained.parts[-5:-1] == ("results", "runs", "pendulum", "gaussian")
    assert trained.name[:8].isdigit() and "-" in trained.name  # a timestamp


def test_run_writes_resolved_config(trained):
    text = (trained / "config.yaml").read_text()
    assert "${" not in text
    cfg = OmegaConf.load(trained / "config.yaml")
    assert cfg.scenario.name == "pendulum" and cfg.agent.name == "gaussian"
    assert cfg.runner.name == "off_policy" and cfg.runner.total_steps == 300
    assert list(cfg.agent.actor_hidden) == [32, 32]
    assert cfg.seed == 0 and cfg.device == "cpu"


def test_run_writes_tensorboard_and_metrics(trained):
    assert list(trained.glob("events.out.tfevents.*"))
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records
    for record in records:
        assert isinstance(record["env_steps"], int) and "wall_time" in record
    steps = [r["env_steps"] for r in records]
    assert steps == sorted(steps) and steps[-1] == 300
    tags = set().union(*records)
    missing = [tag for tag in EXPECTED_TAGS if tag not in tags]
    assert not missing, f"missing tags {missing} in {sorted(tags)}"
    for record in records:
        for key, value in record.items():
            assert isinstance(value, int | float), (key, value)


def test_run_keeps_last_k_checkpoints_and_writes_eval(trained):
    files = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert files == ["step_000000000200.pt", "step_000000000300.pt"]  # keep_checkpoints=2
    state = torch.load(trained / "checkpoints" / files[-1], weights_only=True)
    assert state["env_steps"] == 300
    report = json.loads((trained / "eval.json").read_text())
    assert len(report["returns"]) == 2
    assert report["mean_return"] == pytest.approx(sum(report["returns"]) / 2, rel=1e-5)
    assert report["std_return"] >= 0


def test_rerun_into_existing_run_dir_does_not_overwrite(trained, run_main, tmp_path, tiny_args):
    before = digests(trained / "checkpoints")
    proc = run_main([*tiny_args, f"run_dir={trained}"], tmp_path)
    assert_clean_error(proc, "already holds a run", "resume=")
    assert digests(trained / "checkpoints") == before


@pytest.mark.parametrize(
    "override, needle",
    [
        ("scenario.max_steps=50", "scenario.max_steps"),
        ("agent.actor_hidden=[64]", "actor_hidden"),
        ("runner=mujoco", "runner=off_policy"),
    ],
)
def test_resume_with_incompatible_config_fails(trained, run_main, tmp_path, override, needle):
    before = digests(trained / "checkpoints")
    proc = run_main([f"resume={trained}", "runner.total_steps=600", override], tmp_path)
    assert_clean_error(
        proc,
        "cannot resume",
        needle,
        "runner.*",
        "threads",
        "host_memory",
        "matmul_precision",
        "agent.adam_impl",
    )
    assert digests(trained / "checkpoints") == before


def test_evaluate_cli_repeats_the_runs_final_evaluation(trained, run_cli, tmp_path):
    """With no settings, evaluate replays the run's own final evaluation from the checkpoint:
    the same returns, which an untrained or wrongly loaded agent would not reproduce. It writes
    its own file and leaves the run's eval.json alone."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    own = (run_dir / "eval.json").read_bytes()
    proc = run_cli([f"run_dir={run_dir}", "device=cpu"], tmp_path, "marl_diff.evaluate")
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "eval.json").read_bytes() == own
    report = json.loads(
        (run_dir / "evaluations" / "default_episodes2_envs2_seed1000003_steps300.json").read_text()
    )
    assert report["returns"] == json.loads(own)["returns"]
    assert report["env_steps"] == 300 and report["mode"] == "default"


def test_evaluate_cli_sample_mode_draws_from_the_gaussian(trained, tmp_path):
    """sample=true: the Gaussian samples instead of playing tanh(mean), so the returns differ
    from the default mode's on the same episodes (same seed)."""
    from marl_diff.evaluate import evaluate_run

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    default, _ = evaluate_run(run_dir, episodes=3, device="cpu", seed=7)
    sampled, out = evaluate_run(run_dir, episodes=3, device="cpu", seed=7, sample=True)
    again, _ = evaluate_run(run_dir, episodes=3, device="cpu", seed=7, sample=True)
    assert out.name == "sample_episodes3_envs2_seed7_steps300.json" and sampled["mode"] == "sample"
    assert len(sampled["returns"]) == 3
    assert sampled["returns"] != default["returns"]
    assert sampled["returns"] == again["returns"]  # its own seeded random stream


def test_evaluations_on_other_env_copies_keep_their_own_files(trained, tmp_path):
    """The env copies decide which episodes are played, so a reading on 3 copies is another
    reading than one on 1 copy with the same seed: each keeps its file, and repeating one
    rewrites the same numbers into its own file only."""
    from marl_diff.evaluate import evaluate_run

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    one, one_out = evaluate_run(run_dir, episodes=3, device="cpu", seed=7, num_envs=1)
    three, three_out = evaluate_run(run_dir, episodes=3, device="cpu", seed=7, num_envs=3)
    assert (one_out.name, three_out.name) == (
        "default_episodes3_envs1_seed7_steps300.json",
        "default_episodes3_envs3_seed7_steps300.json",
    )
    assert one["returns"] != three["returns"]
    assert json.loads(one_out.read_text())["returns"] == one["returns"]
    again, again_out = evaluate_run(run_dir, episodes=3, device="cpu", seed=7, num_envs=1)
    assert again_out == one_out and again["returns"] == one["returns"]
    assert sorted(p.name for p in (run_dir / "evaluations").iterdir()) == sorted(
        [one_out.name, three_out.name]
    )


@pytest.mark.parametrize(
    "args, needles",
    [
        (["episodes=3"], ["run_dir"]),
        (["run_dir=RUN", "episodes=many"], ["episodes", "many"]),
        (["run_dir=RUN", "bogus=1"], ["bogus", "episodes=", "run_dir=", "sample="]),
        (["run_dir=RUN", "sample=maybe"], ["sample", "true or false", "maybe"]),
        (["run_dir=NOWHERE"], ["config.yaml"]),
        (["run_dir=RUN", "mode=0"], ["mode_embeddings", "gaussian", "has none"]),
        (["run_dir=RUN", "modes=some"], ["modes", "all", "some"]),
        (["run_dir=RUN", "mode=0", "modes=all"], ["not both"]),
        (["run_dir=RUN", "mode=-1"], ["mode", "0 or more"]),
    ],
)
def test_evaluate_cli_errors(trained, tmp_path, capsys, args, needles):
    """In-process (the entry point's own error handling; a subprocess costs seconds each)."""
    from marl_diff import evaluate

    args = [a.replace("RUN", str(trained)).replace("NOWHERE", str(tmp_path / "x")) for a in args]
    with pytest.raises(SystemExit) as info:
        evaluate.main(args)
    assert info.value.code == 2
    out = capsys.readouterr()
    proc = subprocess.CompletedProcess(args, info.value.code, out.out, out.err)
    assert_clean_error(proc, *needles)


# ---------------------------------------------------------------------------- agent_defaults
def test_scenario_agent_defaults_apply_to_their_agent_only(compose_config):
    """multigoal.yaml sets ddpl's target and entropy target; other agents get none of it."""
    ddpl, _ = compose_config(["scenario=multigoal", "agent=ddpl"])
    assert ddpl.agent.target == "soft" and ddpl.agent.target_entropy_scale == -0.5
    pendulum, _ = compose_config(["scenario=pendulum", "agent=ddpl"])
    assert pendulum.agent.target == "mirror" and pendulum.agent.target_entropy_scale == 0.9
    gaussian, _ = compose_config(["scenario=multigoal", "agent=gaussian"])
    assert "target" not in gaussian.agent and gaussian.agent.target_entropy_scale == 1.0
    dacer, _ = compose_config(["scenario=humanoid", "agent=dacer"])
    assert dacer.agent.noise_scale == 0.15


def test_the_command_line_wins_over_agent_defaults_key_by_key(compose_config):
    cfg, _ = compose_config(["scenario=multigoal", "agent=ddpl", "agent.target=mirror"])
    assert cfg.agent.target == "mirror"  # given on the command line
    assert cfg.agent.target_entropy_scale == -0.5  # still the scenario's default


def assert_preset_spells(compose_config, preset: str, base: str, keys: list[str]) -> None:
    """On vmas_navigation `agent=preset` composes to `agent=base` with `keys` on the command
    line, apart from its name, VMAS's defaults for the base included (ddpl's T=10)."""
    composed, _ = compose_config(["scenario=vmas_navigation", f"agent={preset}"])
    spelled, _ = compose_config(["scenario=vmas_navigation", f"agent={base}", *keys])
    assert composed.agent.name == preset
    composed.agent.name = base
    assert composed.agent == spelled.agent


def test_a_preset_agent_is_its_base_with_the_overrides_it_names(compose_config):
    """`agent=ddpl_fast` trains what `agent=ddpl` and its seven keys on the command line train
    (the peer benchmark's fastest ddpl), the scenario's ddpl defaults included: VMAS's T=10,
    multigoal's 32 candidates over the preset's 4; the command line still wins."""
    fast = [
        "agent.compile_chain_loop=true",
        "agent.compile_denoiser=true",
        "agent.compile_update=true",
        "agent.compile_weights=true",
        "agent.sample_steps=5",
        "agent.n_candidates=4",
        "agent.resampled_candidates=2",
    ]
    assert_preset_spells(compose_config, "ddpl_fast", "ddpl", fast)
    vmas, _ = compose_config(["scenario=vmas_navigation", "agent=ddpl_fast"])
    assert vmas.agent.diffusion_steps == 10
    multigoal, _ = compose_config(["scenario=multigoal", "agent=ddpl_fast", "agent.clip=2.0"])
    assert multigoal.agent.n_candidates == 32 and multigoal.agent.target == "soft"
    assert multigoal.agent.resampled_candidates == 2 and multigoal.agent.clip == 2.0


def test_the_bfloat16_preset_is_ddpl_fast_with_its_six_keys(compose_config):
    """`agent=ddpl_fast_bfloat16` extends a preset: the study runs spelled it as
    `agent=ddpl_fast` and six overrides, the scenario's ddpl defaults included."""
    keys = [
        "agent.n_candidates=8",
        "agent.chain_precision=bfloat16",
        "agent.update_precision=bfloat16",
        "agent.weights_precision=bfloat16",
        "agent.candidate_steps=4",
        "agent.candidate_spacing=quadratic",
    ]
    assert_preset_spells(compose_config, "ddpl_fast_bfloat16", "ddpl_fast", keys)
    multigoal, _ = compose_config(["scenario=multigoal", "agent=ddpl_fast_bfloat16"])
    assert multigoal.agent.n_candidates == 32 and multigoal.agent.compile_weights


def test_the_gaussian_bfloat16_preset_is_the_gaussian_with_its_two_keys(compose_config):
    """`agent=gaussian_bfloat16` trains what the peer runs measured as `agent=gaussian` and two
    overrides."""
    keys = ["agent.compile_update=true", "agent.update_precision=bfloat16"]
    assert_preset_spells(compose_config, "gaussian_bfloat16", "gaussian", keys)


def test_a_resumed_run_keeps_its_saved_agent_settings(trained, compose_config):
    """Resuming never re-applies agent_defaults: the saved config is the one that trained."""
    from marl_diff.run import resumed_config

    cfg, overrides = compose_config([f"resume={trained}", "runner.total_steps=600"])
    resumed, _ = resumed_config(cfg, overrides)
    assert resumed.agent == OmegaConf.load(trained / "config.yaml").agent


def test_a_run_saved_before_a_top_level_setting_resumes_with_its_default(
    trained, compose_config, tmp_path
):
    """Runs made before `matmul_precision` existed have no such key in config.yaml."""
    from marl_diff.run import resumed_config

    old = tmp_path / "old_run"
    saved = OmegaConf.load(trained / "config.yaml")
    del saved["matmul_precision"]
    old.mkdir()
    OmegaConf.save(saved, old / "config.yaml")
    cfg, overrides = compose_config([f"resume={old}", "runner.total_steps=600"])
    assert resumed_config(cfg, overrides)[0].matmul_precision == "highest"
    cfg, overrides = compose_config([f"resume={old}", "matmul_precision=medium"])
    assert resumed_config(cfg, overrides)[0].matmul_precision == "medium"


def test_a_resumed_run_may_change_its_adam_implementation(trained, compose_config, tmp_path):
    """An execution choice like the threads; a run saved before `agent.adam_impl` existed
    resumes with torch's own choice, the implementation it trained with."""
    from marl_diff.agents import make_agent
    from marl_diff.run import resumed_config

    cfg, overrides = compose_config([f"resume={trained}", "agent.adam_impl=fused"])
    assert resumed_config(cfg, overrides)[0].agent.adam_impl == "fused"
    old = tmp_path / "old_run"
    saved = OmegaConf.load(trained / "config.yaml")
    del saved.agent["adam_impl"]
    old.mkdir()
    OmegaConf.save(saved, old / "config.yaml")
    cfg, overrides = compose_config([f"resume={old}", "runner.total_steps=600"])
    agent_config = OmegaConf.to_container(resumed_config(cfg, overrides)[0].agent)
    assert "adam_impl" not in agent_config
    spec = make_spec(n_agents=1, obs_dims=(3,), act_dims=(1,), state_dim=3)
    assert make_agent(agent_config, spec, torch.device("cpu")).config.adam_impl == "auto"


# ---------------------------------------------------------------------------- listing, sweeps
def test_list_prints_the_catalog(run_cli, tmp_path):
    """One line per entry: scenarios with backend and agent count (what a study can sweep),
    agents and runners with their one-line description."""
    proc = run_cli(["list"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
    for group in catalog.GROUPS:
        assert f"{group}s:" in proc.stdout
        for name in catalog.names(group):
            assert name in lines
            if group != "scenario":
                assert catalog.summary(group, name) in lines[name] and len(lines[name]) < 140
    assert (
        lines["vmas_navigation"].split()[1:]
        == "vmas 3 agents (scenario.n_agents changes it)".split()
    )
    assert lines["mamujoco_ant_2x4"].split()[1:] == "mamujoco 2 agents (fixed)".split()
    assert lines["pendulum"].split()[1:] == "gymnasium 1 agent (fixed)".split()
    assert "importance-sampling score matching" in lines["ddpl"]


def test_multirun_makes_one_run_dir_per_job(run_cli, tmp_path, tiny_args):
    args = [a for a in tiny_args if not a.startswith("runner.total_steps")]
    proc = run_cli(["-m", "seed=0,1", *args, "runner.total_steps=100"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = sorted((tmp_path / "results" / "runs" / "pendulum" / "gaussian").iterdir())
    assert len(runs) == 2
    seeds = sorted(OmegaConf.load(r / "config.yaml").seed for r in runs)
    assert seeds == [0, 1]
    for run in runs:
        assert (run / "eval.json").is_file()


def test_a_sweep_over_agents_applies_each_jobs_agent_defaults(run_cli, tmp_path, tiny_args):
    """`-m agent=gaussian,ddpl` on multigoal: the ddpl job gets multigoal's ddpl defaults (soft
    target, 32 candidates) as a single run would, the Gaussian none of them, and a key the command
    line gives still wins in every job."""
    args = [a for a in tiny_args if not a.startswith(("scenario=", "agent=", "runner.total"))]
    proc = run_cli(
        [
            "-m",
            "scenario=multigoal",
            "agent=gaussian,ddpl",
            *args,
            "runner.total_steps=150",
            "agent.target_entropy_scale=0.3",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "results" / "runs" / "multigoal"
    (ddpl_run,) = (root / "ddpl").iterdir()
    (gaussian_run,) = (root / "gaussian").iterdir()
    ddpl = OmegaConf.load(ddpl_run / "config.yaml").agent
    assert ddpl.target == "soft" and ddpl.n_candidates == 32 and ddpl.policy_delay == 1
    assert ddpl.target_entropy_scale == 0.3
    gaussian = OmegaConf.load(gaussian_run / "config.yaml").agent
    assert "target" not in gaussian and gaussian.target_entropy_scale == 0.3


def test_a_refused_job_of_a_sweep_leaves_the_others_running(run_cli, tmp_path, tiny_args):
    """`-m agent.init_alpha=-1,0.2`: the first job's agent is refused when it is built, the
    second trains; the sweep names the refusal and exits with code 2, without a traceback."""
    args = [a for a in tiny_args if not a.startswith("runner.total_steps")]
    proc = run_cli(["-m", *args, "agent.init_alpha=-1,0.2", "runner.total_steps=100"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "init_alpha" in proc.stderr and "1 job(s) of the sweep were refused" in proc.stderr
    runs = list((tmp_path / "results" / "runs" / "pendulum" / "gaussian").iterdir())
    assert len(runs) == 1 and (runs[0] / "eval.json").is_file()  # the refused job left none


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "args, needles",
    [
        (["scenario=nope"], ["scenario 'nope'", "pendulum", "mamujoco_ant_2x4"]),
        (["agent=nope"], ["agent 'nope'", "gaussian"]),
        (["runner=nope"], ["runner 'nope'", "off_policy", "mujoco"]),
        (["scenario.nope=1"], ["scenario.nope", "env_id", "max_steps"]),
        (["agent.nope=1"], ["agent.nope", "actor_lr", "critic_hidden"]),
        (["runner.nope=1"], ["runner.nope", "total_steps"]),
        (["bogus=1"], ["bogus", "seed", "run_dir"]),
        (["runner.total_steps=abc"], ["runner.total_steps", "abc"]),
        (["agent.actor_lr=fast"], ["agent.actor_lr", "fast"]),
        (["agent.actor_activation=wiggle"], ["agent.actor_activation", "wiggle", "relu"]),
        (["device=gpu"], ["device", "gpu", "cuda"]),
        (["host_memory=keep"], ["host_memory", "keep", "release", "reuse"]),
        (["matmul_precision=bf16"], ["matmul_precision", "bf16", "high", "highest", "medium"]),
        (["runner.eval_mode=best"], ["runner.eval_mode", "default", "sample", "best"]),
    ],
)
def test_bad_command_lines_fail_cleanly(run_main, tmp_path, tiny_args, args, needles):
    proc = run_main([*tiny_args, *args, f"run_dir={tmp_path / 'run'}"], tmp_path)
    assert_clean_error(proc, *needles)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is available")
def test_cuda_without_gpu_fails_cleanly(run_cli, tmp_path, tiny_args):
    proc = run_cli([*tiny_args, "device=cuda", f"run_dir={tmp_path / 'run'}"], tmp_path)
    assert_clean_error(proc, "device=cuda", "no CUDA GPU", "device=cpu")


def test_agent_count_the_scenario_cannot_do_fails_cleanly(run_cli, tmp_path):
    pytest.importorskip("gymnasium_robotics")
    args = ["scenario=mamujoco_ant_2x4", "scenario.n_agents=3", f"run_dir={tmp_path / 'run'}"]
    proc = run_cli([*args, "runner.progress=false", "device=cpu"], tmp_path)
    assert_clean_error(proc, "n_agents", "3", "2")
