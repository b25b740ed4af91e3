"""One BenchMARL experiment on VMAS navigation, for `python -m marl_diff.bench peer`.

Runs under the peer virtualenv's python (BenchMARL is not a marl_diff dependency), e.g.

    .peer_venv/bin/python results/peer/benchmarl_run.py --algorithm masac --n-agents 2 \
        --frames 60000 --seed 0 --folder /tmp/bm --out /tmp/bm/masac_2.json

Everything is BenchMARL's own default (the yaml files shipped in the package:
experiment/base_experiment.yaml, algorithm/<algorithm>.yaml, task/vmas/navigation.yaml,
model/layers/mlp.yaml for actor and critic) except:
- `max_n_frames` = --frames;
- `evaluation_interval` = one collection iteration, so every iteration ends with an evaluation;
- `loggers` = [csv] (wandb needs a network), `render` = false (no display), and `save_folder`;
- with `--device cuda`, `sampling_device`, `train_device` and `buffer_device` (BenchMARL's own
  advice for VMAS on a GPU);
- with `--evaluation-episodes K`, `evaluation_episodes` (default 10): a mean over 10 episodes
  varies by about +-0.3 on this task, which decides when a noisy run first "reaches" a return.

Evaluation returns are taken from the rollouts BenchMARL hands to `Callback.on_evaluation_end`
(already cut at the first done by its logger), with the logger's own formula: per episode, each
agent's rewards summed over the steps, then the mean over the agents (and over groups; VMAS
navigation has one group), then the mean over the evaluation episodes. That is the value it logs
as `eval/reward/episode_reward_mean` (the csv logger's `eval_reward_episode_reward_mean.csv`);
the last value of that file is read back into the JSON as a cross-check.

`--settings-only` prints the settings (no training), so the caller can copy them to another
framework before any run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import torch
from benchmarl.experiment import Experiment
from benchmarl.experiment.callback import Callback

ALGORITHMS = ("masac", "mappo")


def _configs(algorithm: str, n_agents: int, evaluation_episodes: int = 0):
    """BenchMARL's shipped configs for the navigation task; `evaluation_episodes` > 0 replaces
    the experiment's (10 episodes per evaluation)."""
    from benchmarl.algorithms import MappoConfig, MasacConfig
    from benchmarl.environments import VmasTask
    from benchmarl.experiment import ExperimentConfig
    from benchmarl.models.mlp import MlpConfig

    experiment = ExperimentConfig.get_from_yaml()
    algo = {"masac": MasacConfig, "mappo": MappoConfig}[algorithm].get_from_yaml()
    task = VmasTask.NAVIGATION.get_from_yaml()
    task.config["n_agents"] = n_agents
    if evaluation_episodes > 0:
        experiment.evaluation_episodes = evaluation_episodes
    return experiment, algo, task, MlpConfig.get_from_yaml(), MlpConfig.get_from_yaml()


def _activation(model) -> str:
    cls = model.activation_class
    return getattr(cls, "__name__", str(cls)).lower()


def settings(experiment, algo, task, actor, critic) -> dict:
    """The values that set what is trained and how much work an iteration is."""
    on_policy = algo.on_policy()
    frames_per_iter = experiment.collected_frames_per_batch(on_policy)
    minibatch = experiment.train_minibatch_size(on_policy)
    passes = math.ceil(experiment.train_batch_size(on_policy) / minibatch)
    task_config = dict(task.config)
    out = {
        "algorithm": type(algo).__name__.removesuffix("Config").lower(),
        "on_policy": on_policy,
        "n_agents": task_config.pop("n_agents"),
        "max_steps": task_config.pop("max_steps"),
        "task_kwargs": task_config,
        "n_envs": experiment.n_envs_per_worker(on_policy),
        "frames_per_iteration": frames_per_iter,
        "updates_per_iteration": experiment.n_optimizer_steps(on_policy) * passes,
        "minibatch_size": minibatch,
        "buffer_size": experiment.replay_buffer_memory_size(on_policy),
        "prefill_frames": 0 if on_policy else experiment.off_policy_init_random_frames,
        "actor_hidden": list(actor.num_cells),
        "critic_hidden": list(critic.num_cells),
        "activation": _activation(actor),
        "lr": experiment.lr,
        "adam_eps": experiment.adam_eps,
        "gamma": experiment.gamma,
        "tau": experiment.polyak_tau,
        "soft_target_update": experiment.soft_target_update,
        "clip_grad_norm": experiment.clip_grad_norm,
        "clip_grad_val": experiment.clip_grad_val,
        "share_policy_params": experiment.share_policy_params,
        "share_param_critic": algo.share_param_critic,
        "evaluation_episodes": experiment.evaluation_episodes,
        "evaluation_deterministic_actions": experiment.evaluation_deterministic_actions,
        "evaluation_interval": experiment.evaluation_interval,
    }
    names = {
        "masac": ("alpha_init", "target_entropy", "num_qvalue_nets", "use_tanh_normal"),
        "mappo": ("clip_epsilon", "entropy_coef", "critic_coef", "lmbda", "use_tanh_normal"),
    }[out["algorithm"]]
    out.update({name: getattr(algo, name) for name in names})
    if on_policy:  # BenchMARL's MAPPO has no target network, so polyak_tau does nothing
        out["tau"] = "unused"
    return out


def versions() -> dict:
    """The versions behind a run: BenchMARL's pins, and tensordict and numpy, which it does not
    pin and which a rebuilt venv may resolve differently."""
    import benchmarl
    import numpy
    import tensordict
    import torchrl
    import vmas

    return {
        "benchmarl": benchmarl.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
        "vmas": vmas.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def _csv_last(folder: Path, name: str) -> float | None:
    """Last value of BenchMARL's csv logger file `name` under `folder`, if there is one."""
    files = sorted(folder.rglob(name))
    if not files:
        return None
    with open(files[-1], encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    return float(rows[-1][-1]) if rows else None


class EvalRecorder(Callback):
    """Records (frames, seconds since `start`, eval return) after every evaluation."""

    def __init__(self):
        super().__init__()
        self.curve: list[tuple[int, float, float]] = []
        self.start = time.perf_counter()

    def __getstate__(self):  # BenchMARL pickles its callbacks beside the config
        return {"curve": [], "start": self.start, "experiment": None}

    def on_evaluation_end(self, rollouts):
        elapsed = time.perf_counter() - self.start
        per_group = []
        for group in self.experiment.group_map:
            episodes = []
            for td in rollouts:
                reward = td.get(("next", group, "reward"), None)
                if reward is None:  # a shared reward without an agent dim
                    reward = td.get(("next", "reward")).expand(td.get(group).shape)
                    reward = reward.unsqueeze(-1)
                episodes.append(reward.sum(0).mean())  # steps summed, agents averaged
            per_group.append(torch.stack(episodes))
        value = torch.stack(per_group).mean(0).mean()
        frames = int(self.experiment.total_frames)
        self.curve.append((frames, round(elapsed, 3), float(value)))


def run(args: argparse.Namespace) -> dict:
    experiment_cfg, algo, task, actor, critic = _configs(
        args.algorithm, args.n_agents, args.evaluation_episodes
    )
    on_policy = algo.on_policy()
    per_iter = experiment_cfg.collected_frames_per_batch(on_policy)
    if args.frames <= 0 or args.frames % per_iter:
        sys.exit(f"--frames must be a positive multiple of {per_iter} (one iteration)")
    folder = Path(args.folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    experiment_cfg.max_n_frames = args.frames
    experiment_cfg.max_n_iters = None
    experiment_cfg.evaluation_interval = per_iter
    experiment_cfg.loggers = ["csv"]
    experiment_cfg.render = False
    experiment_cfg.save_folder = str(folder)
    devices = ("sampling_device", "train_device", "buffer_device")
    for name in devices:
        setattr(experiment_cfg, name, args.device)
    recorder = EvalRecorder()

    experiment = Experiment(
        task=task,
        algorithm_config=algo,
        model_config=actor,
        critic_model_config=critic,
        seed=args.seed,
        config=experiment_cfg,
        callbacks=[recorder],
    )
    recorder.start = time.perf_counter()
    experiment.run()
    seconds = time.perf_counter() - recorder.start
    frames = int(experiment.total_frames)
    used = settings(experiment_cfg, algo, task, actor, critic)
    return {
        "framework": "benchmarl",
        "method": args.algorithm,
        "n_agents": args.n_agents,
        "seed": args.seed,
        "frames": frames,
        "train_seconds": round(seconds, 3),
        "frames_per_s": frames / seconds,
        "curve": recorder.curve,
        "csv_last_eval_return": _csv_last(folder, "eval_reward_episode_reward_mean.csv"),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "settings": used,
        "changed_from_defaults": {
            "max_n_frames": args.frames,
            "evaluation_interval": per_iter,
            "loggers": ["csv"],
            "render": False,
            **({name: args.device for name in devices} if args.device != "cpu" else {}),
            **(
                {"evaluation_episodes": args.evaluation_episodes}
                if args.evaluation_episodes > 0
                else {}
            ),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="masac")
    parser.add_argument("--n-agents", type=int, default=2)
    parser.add_argument("--frames", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", default="benchmarl_out")
    parser.add_argument("--out", default="")
    parser.add_argument("--device", default="cpu", help="sampling, training and buffer device")
    parser.add_argument(
        "--evaluation-episodes", type=int, default=0, help="episodes per evaluation; 0: default"
    )
    parser.add_argument("--settings-only", action="store_true")
    args = parser.parse_args(argv)
    if args.settings_only:
        result = {
            "settings": settings(
                *_configs(args.algorithm, args.n_agents, args.evaluation_episodes)
            ),
            "versions": versions(),
        }
    else:
        result = run(args)
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
