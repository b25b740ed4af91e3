"""Learning checks: the Gaussian DecSPG baseline must clearly learn within budgets the suite
can afford on 2 CPU cores. Each run starts from the catalog (scenario, agent and runner YAMLs);
every override is listed with the reason the suite needs it."""

from __future__ import annotations

import pytest
from conftest import train_run

SMALL_NETS = {
    "agent.actor_hidden=[64,64]": "budget: 64-wide layers instead of 256",
    "agent.critic_hidden=[64,64]": "budget: 64-wide layers instead of 256",
    "agent.actor_lr=1e-3": "a few thousand updates instead of the catalog's budget",
    "agent.critic_lr=1e-3": "a few thousand updates instead of the catalog's budget",
}


@pytest.mark.learning(seconds=30)
@pytest.mark.parametrize("update_precision, n_step", [("run", 1), ("bfloat16", 1), ("run", 3)])
def test_gaussian_learns_pendulum(tmp_path, update_precision, n_step):
    # a uniform-random / untrained policy scores about -1200 on Pendulum; solved is about -150
    overrides = {
        f"agent.update_precision={update_precision}": "float32, and mixed precision (bfloat16 "
        "losses): the same threshold",
        f"agent.n_step={n_step}": "one-step targets, and 3-step returns across the episodes' "
        "truncations: the same threshold",
        "runner.total_steps=4500": "budget (catalog: 20000); reached -209",
        "runner.batch_size=128": "budget (catalog: 256)",
        "runner.eval_every=0": "budget: only the final evaluation",
        **SMALL_NETS,
    }
    report, records = train_run(tmp_path, ["scenario=pendulum", "agent=gaussian", *overrides])
    first_train = next(r["train/episode_return"] for r in records if "train/episode_return" in r)
    assert first_train < -900
    assert report["mean_return"] > -450, report["mean_return"]


@pytest.mark.learning(seconds=65)
def test_gaussian_learns_vmas_navigation(tmp_path):
    # two agents, shaped reward = progress toward their goals: an untrained policy scores
    # about 0 per episode, reaching both goals about 1
    overrides = {
        "scenario.n_agents=2": "budget (catalog: 3 agents)",
        "scenario.max_steps=50": "budget (catalog: 100-step episodes)",
        "runner.total_steps=20000": "budget (catalog: 1M); reached 0.63 (16000: 0.44)",
        "runner.num_envs=16": "budget (catalog: 64 copies)",
        "runner.warmup_steps=2000": "budget (catalog: 10000)",
        "runner.batch_size=256": "budget (catalog: 512)",
        "runner.log_every=2000": "a train return logged at the end of the random warm-up: the "
        "untrained baseline (catalog: every 10000 steps)",
        "runner.eval_every=0": "budget: only the final evaluation",
        **SMALL_NETS,
    }
    report, records = train_run(
        tmp_path, ["scenario=vmas_navigation", "agent=gaussian", *overrides]
    )
    first_train = next(r["train/episode_return"] for r in records if "train/episode_return" in r)
    assert first_train < 0.1
    assert report["mean_return"] > 0.45, report["mean_return"]
