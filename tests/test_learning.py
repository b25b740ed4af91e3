"""Learning checks: the Gaussian DecSPG baseline must clearly learn within budgets the suite
can afford on 2 CPU cores."""

from __future__ import annotations

from conftest import train_run

SMALL_NETS = ["agent.actor_hidden=[64,64]", "agent.critic_hidden=[64,64]"]


def test_gaussian_learns_pendulum(tmp_path):
    # a uniform-random / untrained policy scores about -1200 on Pendulum; solved is about -150
    report, records = train_run(
        tmp_path,
        [
            "scenario=pendulum",
            "agent=gaussian",
            "runner.total_steps=6000",
            "runner.warmup_steps=1000",
            "runner.batch_size=128",
            "runner.eval_every=0",
            "agent.actor_lr=1e-3",
            "agent.critic_lr=1e-3",
            *SMALL_NETS,
        ],
    )
    first_train = next(r["train/episode_return"] for r in records if "train/episode_return" in r)
    assert first_train < -900
    assert report["mean_return"] > -450, report["mean_return"]


def test_gaussian_learns_vmas_navigation(tmp_path):
    # two agents, shaped reward = progress toward their goals: an untrained policy scores
    # about 0 per episode, reaching both goals about 1
    report, records = train_run(
        tmp_path,
        [
            "scenario=vmas_navigation",
            "agent=gaussian",
            "scenario.n_agents=2",
            "scenario.max_steps=50",
            "runner.total_steps=24000",
            "runner.num_envs=16",
            "runner.warmup_steps=2000",
            "runner.utd_ratio=0.25",
            "runner.batch_size=256",
            "runner.eval_every=0",
            "agent.actor_lr=1e-3",
            "agent.critic_lr=1e-3",
            *SMALL_NETS,
        ],
    )
    first_train = next(r["train/episode_return"] for r in records if "train/episode_return" in r)
    assert first_train < 0.1
    assert report["mean_return"] > 0.45, report["mean_return"]
