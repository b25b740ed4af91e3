"""The peer benchmark's pure parts: argument errors, the BenchMARL -> marl_diff settings mapping,
the metrics reader and the table. Nothing here needs BenchMARL, its venv or a network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from marl_diff import catalog, peer
from marl_diff.errors import ConfigError

# What `results/peer/benchmarl_run.py --settings-only --algorithm masac` reports for
# BenchMARL 1.5.2's shipped defaults on VMAS navigation.
MASAC = {
    "algorithm": "masac",
    "on_policy": False,
    "n_agents": 2,
    "max_steps": 100,
    "task_kwargs": {
        "collisions": True,
        "agents_with_same_goal": 1,
        "observe_all_goals": False,
        "shared_rew": False,
        "split_goals": False,
        "lidar_range": 0.35,
        "agent_radius": 0.1,
    },
    "n_envs": 10,
    "frames_per_iteration": 6000,
    "updates_per_iteration": 1000,
    "minibatch_size": 128,
    "buffer_size": 1_000_000,
    "prefill_frames": 0,
    "actor_hidden": [256, 256],
    "critic_hidden": [256, 256],
    "activation": "tanh",
    "lr": 5e-05,
    "adam_eps": 1e-06,
    "gamma": 0.99,
    "tau": 0.005,
    "clip_grad_norm": True,
    "clip_grad_val": 5,
    "share_policy_params": True,
    "share_param_critic": True,
    "evaluation_episodes": 10,
    "evaluation_deterministic_actions": True,
    "evaluation_interval": 120_000,
    "alpha_init": 1.0,
    "target_entropy": "auto",
    "num_qvalue_nets": 2,
}
MAPPO = {**MASAC, "algorithm": "mappo", "updates_per_iteration": 675, "minibatch_size": 400}
for key in ("alpha_init", "target_entropy", "num_qvalue_nets"):
    del MAPPO[key]
MAPPO.update(clip_epsilon=0.2, entropy_coef=0.0, lmbda=0.9, buffer_size=6000)


def as_dict(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides)


# --------------------------------------------------------------------------- arguments
def test_unknown_argument_names_the_valid_settings():
    with pytest.raises(ConfigError, match="unknown argument 'steps=3'.*frames=.*threshold="):
        peer.peer(["steps=3"])


def test_bad_method_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown method 'isac'") as err:
        peer.peer(["methods=masac,isac"])
    for name in ("masac", "mappo", "gaussian", "ddpl"):
        assert name in str(err.value)


@pytest.mark.parametrize(
    "arg",
    [
        "agents=two",
        "frames=1e5",
        "threshold=high",
        "threshold=",
        "threshold=0.8,high",
        "agents=0",
        "frames=0",
        "methods=",
        "seeds=",
        "seeds=0,one",
        "seeds=0,0",
        "settings=benchmarl",
        "device=gpu",
        "eval_episodes=ten",
        "eval_episodes=-1",
    ],
)
def test_bad_values_stop_before_anything_runs(arg, tmp_path):
    with pytest.raises(ConfigError):
        peer.peer([arg, f"runs={tmp_path}", f"venv={tmp_path / 'no_venv'}"])
    assert not any(tmp_path.iterdir())  # no venv built, no run folder made


def test_an_agent_key_no_marl_diff_method_has_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'agent.graph_chain': none of the agents \\(ddpl\\)"):
        peer.peer(["methods=masac,ddpl", "agent.graph_chain=true", f"runs={tmp_path}"])
    assert not any(tmp_path.iterdir())


def test_agent_and_runner_passthrough_is_accepted_by_the_parser():
    args = ["agents=4", "methods=gaussian", "agent.actor_lr=0.001", "runner.num_envs=16"]
    values, passthrough = peer._parse(args)
    assert values["agents"] == [4] and values["methods"] == ["gaussian"]
    assert values["seeds"] == [0]  # the default
    assert peer._parse(["seeds=0,1,2"])[0]["seeds"] == [0, 1, 2]
    assert passthrough == ["agent.actor_lr=0.001", "runner.num_envs=16"]
    with pytest.raises(ConfigError, match="scenario.n_agents=4.*runner.<key>="):
        peer._parse(["scenario.n_agents=4"])  # agents= sets it


@pytest.mark.parametrize(
    ("device", "bfloat16_kernels", "presets"),
    [
        ("cpu", True, ["gaussian_bfloat16", "ddpl_fast_bfloat16"]),
        ("cpu", False, ["ddpl_fast"]),
        ("cuda", False, ["gaussian_bfloat16", "ddpl_fast_bfloat16"]),
    ],
)
def test_the_default_methods_add_the_presets_made_for_this_machine(
    device, bfloat16_kernels, presets, monkeypatch
):
    monkeypatch.setattr(peer.precision, "cpu_has_bfloat16_kernels", lambda: bfloat16_kernels)
    assert peer.fast_presets(device) == presets
    if device == "cpu":
        methods = peer._parse([])[0]["methods"]
        assert methods == ["masac", "mappo", "gaussian", "ddpl", *presets]
    assert peer._parse(["methods=ddpl,masac"])[0]["methods"] == ["ddpl", "masac"]


# --------------------------------------------------------------------------- mapping
def test_masac_settings_map_onto_marl_diff_overrides():
    keys = set(catalog.load("agent", "gaussian").keys())
    got = as_dict(peer.marl_diff_overrides(MASAC, "gaussian", 4, keys))
    assert got["scenario.n_agents"] == "4"
    assert got["scenario.max_steps"] == "100"
    assert got["scenario.kwargs.shared_rew"] == "false"
    assert got["scenario.kwargs.lidar_range"] == "0.35"
    assert got["runner.num_envs"] == "10"
    assert float(got["runner.utd_ratio"]) == pytest.approx(1000 / 6000)
    assert got["runner.update_every"] == "6000"  # collect an iteration, then its updates
    assert got["runner.batch_size"] == "128"
    assert got["runner.buffer_size"] == "1000000"
    assert got["runner.warmup_steps"] == "0"
    assert got["runner.eval_every"] == "6000"
    assert got["runner.eval_episodes"] == got["runner.eval_num_envs"] == "10"
    assert got["runner.checkpoint_every"] == "0"
    assert got["agent.actor_hidden"] == got["agent.critic_hidden"] == "[256,256]"
    assert got["agent.actor_lr"] == got["agent.critic_lr"] == got["agent.alpha_lr"] == "5e-05"
    assert got["agent.gamma"] == "0.99" and got["agent.tau"] == "0.005"
    assert got["agent.grad_clip"] == "5.0"
    assert got["agent.share_parameters"] == "true"
    assert got["agent.actor_activation"] == got["agent.critic_activation"] == "tanh"
    assert got["agent.init_alpha"] == "1.0"
    assert got["agent.others_actions"] == "policy"  # MASAC's actor loss: the joint fresh action


def test_diffusion_agents_keep_their_own_policy_network_and_temperature():
    keys = set(catalog.load("agent", "ddpl").keys())
    got = as_dict(peer.marl_diff_overrides(MASAC, "ddpl", 2, keys))
    assert got["agent.actor_hidden"] == "[256,256]" and got["agent.actor_lr"] == "5e-05"
    for key in (
        "agent.actor_activation",
        "agent.alpha_lr",
        "agent.init_alpha",
        "agent.others_actions",
    ):
        assert key not in got


def test_mapping_keeps_only_the_keys_an_agent_has():
    got = as_dict(peer.marl_diff_overrides(MASAC, "gaussian", 2, {"gamma", "actor_lr"}))
    assert {k for k in got if k.startswith("agent.")} == {"agent.gamma", "agent.actor_lr"}
    no_clip = as_dict(peer.marl_diff_overrides({**MASAC, "clip_grad_norm": False}, "ddpl", 2))
    assert no_clip["agent.grad_clip"] == "0.0"  # marl_diff only clips norms


def test_mapped_overrides_compose_into_a_valid_config():
    from marl_diff.run import compose

    for agent in ("gaussian", "ddpl"):
        keys = set(catalog.load("agent", agent).keys())
        cfg = compose(
            ["scenario=vmas_navigation", f"agent={agent}"]
            + peer.marl_diff_overrides(MASAC, agent, 4, keys)
        )
        assert cfg.scenario.kwargs.shared_rew is False and cfg.scenario.n_agents == 4
        assert cfg.runner.utd_ratio == pytest.approx(1 / 6) and cfg.runner.batch_size == 128
        assert list(cfg.agent.critic_hidden) == [256, 256] and cfg.agent.tau == 0.005


def test_command_line_overrides_replace_the_mapped_settings(tmp_path):
    from marl_diff.run import compose

    given = ["runner.num_envs=16", "runner.utd_ratio=0.25", "agent.actor_lr=0.001"]
    given.append("agent.init_alpha=0.2")  # a Gaussian key: dropped for ddpl, which lacks it
    for agent in ("gaussian", "ddpl"):
        values = {"frames": 12000, "settings": "masac", "device": "cpu"}
        arguments = peer.marl_diff_arguments(MASAC, agent, 2, 3, values, given, tmp_path / "r")
        assert ("agent.init_alpha=0.2" in arguments) == (agent == "gaussian")
        cfg = compose([a for a in arguments if not a.startswith(("run_dir=", "device="))])
        assert cfg.runner.num_envs == 16 and cfg.runner.utd_ratio == 0.25
        assert cfg.agent.actor_lr == 0.001 and cfg.agent.critic_lr == 5e-5  # the rest: MASAC's
        assert cfg.runner.total_steps == 12000 and cfg.seed == 3


def test_own_settings_keep_the_catalog_training_settings_on_benchmarls_task(tmp_path):
    from marl_diff.run import compose

    values = {"frames": 12000, "settings": "own", "device": "cpu"}
    arguments = peer.marl_diff_arguments(MASAC, "ddpl", 2, 0, values, [], tmp_path / "r")
    cfg = compose([a for a in arguments if not a.startswith(("run_dir=", "device="))])
    catalog_cfg = compose(["scenario=vmas_navigation", "agent=ddpl"])
    assert cfg.scenario.kwargs.shared_rew is False and cfg.scenario.max_steps == 100
    assert cfg.scenario.n_agents == 2 and cfg.runner.eval_every == 6000
    assert cfg.runner.eval_episodes == cfg.runner.eval_num_envs == 10
    for key in ("num_envs", "utd_ratio", "batch_size", "warmup_steps", "buffer_size"):
        assert cfg.runner[key] == catalog_cfg.runner[key]
    assert cfg.agent == catalog_cfg.agent


def test_install_pins_torch_first_then_constrains_benchmarl(tmp_path):
    venv, constraints = tmp_path / "v", tmp_path / "c.txt"
    create, torch_step, benchmarl_step = peer.install_commands(venv, "2.13.0", constraints)
    assert create[1:] == ["-m", "venv", str(venv)]
    assert torch_step[-1] == "torch==2.13.0" and torch_step[0].startswith(str(venv))
    assert "benchmarl==1.5.2" in benchmarl_step and "vmas" in benchmarl_step
    assert benchmarl_step[-2:] == ["-c", str(constraints)]


# --------------------------------------------------------------------------- results
def run_result(method: str, n: int, fps: float, curve, framework="marl_diff", seed=0) -> dict:
    frames = curve[-1][0]
    return {
        "method": method,
        "framework": framework,
        "n_agents": n,
        "seed": seed,
        "frames": frames,
        "train_seconds": frames / fps,
        "frames_per_s": fps,
        "curve": curve,
    }


def test_summary_finds_the_first_evaluation_at_the_threshold():
    result = run_result(
        "gaussian", 2, 100.0, [(6000, 60.0, 0.2), (12000, 120.0, 1.1), (18000, 180.0, 0.9)]
    )
    s = peer.summarize(result, 1.0)
    assert s == {"final": 0.9, "best": 1.1, "reached_s": 120.0, "reached_frames": 12000}
    assert peer.summarize(result, 2.0)["reached_s"] is None


def test_table_has_the_ratio_to_masac_and_not_reached():
    results = [
        run_result("masac", 2, 200.0, [(6000, 30.0, 0.5), (12000, 60.0, 1.2)], "BenchMARL 1.5.2"),
        run_result("gaussian", 2, 300.0, [(6000, 20.0, 0.1), (12000, 40.0, 0.4)]),
        run_result("gaussian", 4, 150.0, [(6000, 40.0, 0.3)]),
        run_result("gaussian", 2, 300.0, [(6000, 20.0, 0.1)], seed=1),  # no MASAC seed 1
        {"method": "ddpl", "framework": "marl_diff", "n_agents": 2, "seed": 0, "error": "x"}
        | {"log": "l.log"},
    ]
    lines = peer.results_table(results, 1.0)
    text = "\n".join(lines)
    assert lines[0].startswith("| method |") and "time to eval return >= 1" in lines[0]
    masac, gaussian2, gaussian4, gaussian2_seed1, ddpl = lines[2:]
    assert "| 1.00 |" in masac and "60 s (12,000 frames)" in masac
    assert "| 1.50 |" in gaussian2 and "not reached" in gaussian2
    assert "0.400 | 0.400" in gaussian2  # final and best
    assert "n/a (no MASAC run)" in gaussian4
    assert "| 2 | 1 |" in gaussian2_seed1 and "n/a (no MASAC run)" in gaussian2_seed1
    assert "failed" in ddpl and "l.log" in ddpl
    assert text.count("\n") == len(results) + 1
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_time_to_quality_gathers_each_method_over_its_seeds():
    results = [
        run_result("mappo", 2, 300.0, [(6000, 20.0, 0.5), (12000, 40.0, 1.0)], seed=0),
        run_result("mappo", 2, 300.0, [(6000, 20.0, 1.1)], seed=1),
        run_result("mappo", 2, 300.0, [(6000, 20.0, 0.2), (12000, 41.0, 0.4)], seed=2),
        run_result("mappo", 2, 300.0, [(6000, 80.0, 1.2)], seed=3),
        run_result("ddpl", 2, 60.0, [(6000, 100.0, 0.3)], seed=0),
        {"method": "ddpl", "n_agents": 2, "seed": 1, "error": "x", "log": "l.log"},
    ]
    lines = peer.time_to_quality_table(results, 1.0)
    assert "seeds reaching 1 " in lines[0]
    mappo, ddpl = lines[2:]
    assert mappo.startswith("| mappo | 2 | 3 of 4 | 40 |")  # median of 20, 40 and 80 s
    assert "seed 0: 40 s (12,000 frames); seed 1: 20 s (6,000 frames)" in mappo
    assert "seed 2: not reached" in mappo
    assert ddpl.startswith("| ddpl | 2 | 0 of 2 | - |")
    assert "seed 0: not reached; seed 1: failed" in ddpl


def test_read_metrics_takes_frames_seconds_and_the_eval_curve(tmp_path):
    path = Path(tmp_path) / "metrics.jsonl"
    records = [
        {"env_steps": 6000, "wall_time": 20.0, "perf/env_steps_per_s": 300.0},
        {"env_steps": 6000, "wall_time": 21.0, "eval/return": 0.1},
        {"env_steps": 12000, "wall_time": 40.0, "perf/env_steps_per_s": 300.0},
        {"env_steps": 12000, "wall_time": 42.0, "eval/return": 0.3},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    got = peer.read_metrics(path)
    assert got["frames"] == 12000 and got["train_seconds"] == 42.0
    assert got["frames_per_s"] == pytest.approx(12000 / 42.0)
    assert got["curve"] == [(6000, 21.0, 0.1), (12000, 42.0, 0.3)]


def test_settings_table_shows_both_algorithms():
    lines = peer.settings_table(MASAC, MAPPO)
    row = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert "| 1000 | 675 |" in row["updates_per_iteration"]
    assert "shared_rew=false" in row["task_kwargs"]
    assert row["clip_epsilon"].endswith("|  | 0.2 |")


@pytest.fixture
def fake_benchmarl(monkeypatch):
    """peer() with the venv and every subprocess replaced: settings come from MASAC / MAPPO
    above, runs from `run_result`, and a failing ddpl run."""
    versions = {"benchmarl": "1.5.2", "torchrl": "0.11.1", "tensordict": "0.11.0", "vmas": "1.5.2"}

    def settings_json(python, args, log, what):
        assert "--settings-only" in args
        method = args[args.index("--algorithm") + 1]
        return {"settings": {"masac": MASAC, "mappo": MAPPO}[method], "versions": versions}

    def benchmarl(python, method, n, values, seed, runs, log):
        frames = values["frames"]
        return run_result(method, n, 100.0 * n, [(frames, frames / (100.0 * n), 1.0)])

    def marl_diff(masac, method, n, seed, values, passthrough, log):
        if method == "ddpl":
            raise peer.MarlDiffError("ddpl crashed")
        assert masac is MASAC and passthrough == ["agent.actor_lr=0.001"]
        assert seed in values["seeds"] and f"seed{seed}" in log.name
        return run_result(method, n, 150.0 * n, [(values["frames"], 1.0, 0.5)])

    monkeypatch.setattr(peer, "ensure_venv", lambda venv, log_dir: Path("python"))
    monkeypatch.setattr(peer, "_benchmarl_json", settings_json)
    monkeypatch.setattr(peer, "_run_benchmarl", benchmarl)
    monkeypatch.setattr(peer, "_run_marl_diff", marl_diff)


def test_frames_must_be_whole_benchmarl_iterations(fake_benchmarl, tmp_path):
    with pytest.raises(ConfigError, match="multiple of BenchMARL masac's .*6000.*12000"):
        peer.peer(["frames=10000", f"runs={tmp_path}", "out="])


def test_peer_writes_one_row_per_method_agent_count_and_seed(fake_benchmarl, tmp_path):
    out = tmp_path / "peer.md"
    args = ["agents=2,4", "frames=12000", f"runs={tmp_path}", f"out={out}"]
    text = peer.peer([*args, "methods=masac,gaussian,ddpl", "agent.actor_lr=0.001", "seeds=0,1"])
    assert out.read_text(encoding="utf-8") == text
    assert text.startswith("# Peer benchmark") and "python -m marl_diff.bench peer" in text
    results, over_seeds = text.split("## Time to an evaluation return of 1, over the seeds")
    methods = ("| masac", "| gaussian", "| ddpl")
    rows = [line for line in results.splitlines() if line.startswith(methods)]
    assert len(rows) == 12  # 3 methods x 2 agent counts x 2 seeds
    assert "Seeds 0, 1, 12,000 frames" in text
    # every version the BenchMARL side reports, the unpinned tensordict included
    assert "benchmarl 1.5.2, torchrl 0.11.1, tensordict 0.11.0, vmas 1.5.2. marl_diff side" in text
    assert "applied after these in every marl_diff run (`agent.*` where the agent has the " in text
    assert "(`settings=masac`: other agents take the keys they have" in text
    assert all("| 1.50 |" in row for row in rows if row.startswith("| gaussian"))
    assert all("failed" in row for row in rows if row.startswith("| ddpl"))
    gathered = [line for line in over_seeds.splitlines() if line.startswith(methods)]
    assert len(gathered) == 6 and all(" of 2 |" in line for line in gathered)
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text(encoding="utf-8"))
    assert [(r["method"], r["n_agents"], r["seed"]) for r in summary][:4] == [
        ("masac", 2, 0),
        ("gaussian", 2, 0),
        ("ddpl", 2, 0),
        ("masac", 2, 1),
    ]


def test_each_threshold_gets_its_time_to_quality_table(fake_benchmarl, tmp_path):
    args = ["agents=2", "frames=6000", f"runs={tmp_path}", "out=", "methods=masac,gaussian"]
    text = peer.peer([*args, "threshold=0.5,1.0", "agent.actor_lr=0.001"])
    results, low, high = text.split("## Time to an evaluation return of ")[:3]
    assert "time to eval return >= 0.5 |" in results  # the results table takes the first
    assert low.startswith("0.5, over the seeds") and high.startswith("1, over the seeds")
    gaussian = [line for part in (low, high) for line in part.splitlines() if "| gaussian" in line]
    assert "| 1 of 1 |" in gaussian[0] and "| 0 of 1 |" in gaussian[1]  # its runs end at 0.5


def test_report_says_which_settings_the_marl_diff_runs_had(fake_benchmarl, tmp_path):
    args = ["agents=2", "frames=6000", f"runs={tmp_path}", "out=", "methods=gaussian"]
    text = peer.peer([*args, "settings=own", "agent.actor_lr=0.001"])
    assert "(`settings=own`: BenchMARL's task only)" in text
    shown = text.split("`python -m marl_diff.run ")[1].split("`")[0]
    assert "runner.eval_every=6000" in shown and "runner.num_envs" not in shown


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_cuda_without_a_gpu_stops_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="no CUDA GPU.*Valid choices here: cpu"):
        peer.peer(["device=cuda", f"runs={tmp_path}", f"venv={tmp_path / 'no_venv'}"])
    assert not any(tmp_path.iterdir())


def test_device_reaches_both_sides(monkeypatch, tmp_path):
    """device=cuda puts BenchMARL's sampling, training and buffer on the GPU and marl_diff's
    run there too, so both sides do the same work on the same device."""
    values = {"frames": 12000, "settings": "masac", "device": "cuda", "eval_episodes": 0}
    arguments = peer.marl_diff_arguments(MASAC, "ddpl", 2, 0, values, [], tmp_path / "r")
    assert "device=cuda" in arguments and "device=cpu" not in arguments
    seen = []
    monkeypatch.setattr(peer, "_benchmarl_json", lambda python, args, log, what: seen.extend(args))
    peer._run_benchmarl(Path("python"), "masac", 2, values, 0, tmp_path, tmp_path / "m.log")
    assert seen[seen.index("--device") + 1] == "cuda"
    assert "--evaluation-episodes" not in seen  # 0: BenchMARL's own 10


def test_benchmarl_runs_get_the_eval_episodes(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(peer, "_benchmarl_json", lambda python, args, log, what: seen.extend(args))
    values = {"frames": 6000, "device": "cpu", "eval_episodes": 100}
    peer._run_benchmarl(Path("python"), "mappo", 2, values, 0, tmp_path, tmp_path / "m.log")
    assert seen[seen.index("--evaluation-episodes") + 1] == "100"


def test_eval_episodes_reach_both_sides(fake_benchmarl, monkeypatch, tmp_path):
    """eval_episodes=K goes to BenchMARL's settings read and its runs; the marl_diff runs take
    their evaluation from those settings, so both sides evaluate on K episodes."""
    seen = []
    settings_json = peer._benchmarl_json
    monkeypatch.setattr(
        peer,
        "_benchmarl_json",
        lambda python, args, log, what: seen.append(args) or settings_json(python, args, log, what),
    )
    args = ["agents=2", "frames=6000", f"runs={tmp_path}", "out=", "methods=gaussian"]
    text = peer.peer([*args, "eval_episodes=100", "agent.actor_lr=0.001"])
    assert len(seen) == 2  # MASAC's and MAPPO's settings, each read with the episodes
    assert all(a[a.index("--evaluation-episodes") + 1] == "100" for a in seen)
    assert "evaluation_episodes=100 (default 10)" in text
    overrides = peer.task_overrides({**MASAC, "evaluation_episodes": 100}, 2)
    assert "runner.eval_episodes=100" in overrides and "runner.eval_num_envs=100" in overrides
