"""DDPL: ISSM weights and loss on hand-computable cases, every scenario family end to end,
multimodality on the multi-goal task, learning on VMAS, and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import MULTIGOAL, make_spec, train_run
from omegaconf import OmegaConf

from marl_diff.agents import make_agent
from marl_diff.agents.base import resample
from marl_diff.buffer import Batch
from marl_diff.nn import compiler_available
from marl_diff.precision import cpu_has_bfloat16_kernels

TINY_DDPL = {
    "algorithm": "ddpl",
    "name": "ddpl",
    "actor_hidden": [16, 16],
    "critic_hidden": [16, 16],
    "diffusion_steps": 3,
    "n_candidates": 3,
}


# The fields of a replay batch of `make_spec()`'s two agents, without the batch dim.
SHAPES = ((2, 3), (4,), (2, 1), (2,), (2, 3), (4,), ())


def agent(**overrides):
    return make_agent({**TINY_DDPL, **overrides}, make_spec(), "cpu")


def update_alike(*agents) -> list[Batch]:
    """Four updates of each agent on the same four random batches, each agent's from the same
    global seed (its own random draws then alike); returns the batches."""
    generator = torch.Generator().manual_seed(0)
    batches = [
        Batch(*(torch.rand(8, *shape, generator=generator) for shape in SHAPES)) for _ in range(4)
    ]
    for each in agents:
        torch.manual_seed(1)
        for data in batches:
            each.update(data)
    return batches


def one_state_batch() -> Batch:
    """A replay batch of one all-zero transition of `make_spec()`'s two agents."""
    return Batch(
        torch.zeros(1, 2, 3),
        torch.zeros(1, 4),
        torch.zeros(1, 2, 1),
        torch.zeros(1, 2),
        torch.zeros(1, 2, 3),
        torch.zeros(1, 4),
        torch.zeros(1),
    )


# ---------------------------------------------------------------------------- ISSM by hand
def test_softmax_weights_are_exp_q_over_alpha_normalised_per_state():
    ddpl = agent(alpha=0.5, auto_alpha=False, weighting="softmax")
    q = torch.tensor([[[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 3.0]]])  # [M=3, B=1, N=2]
    weights = ddpl.importance_weights(q)
    e = [math.exp(2.0), math.exp(4.0), math.exp(6.0)]
    expected_agent0 = torch.tensor([x / sum(e) for x in e])
    e1 = [1.0, 1.0, math.exp(6.0)]
    expected_agent1 = torch.tensor([x / sum(e1) for x in e1])
    assert torch.allclose(weights[:, 0, 0], expected_agent0, atol=1e-6)
    assert torch.allclose(weights[:, 0, 1], expected_agent1, atol=1e-6)


def test_running_weights_centre_per_state_scale_by_the_spread_and_clip():
    ddpl = agent(alpha=0.5, auto_alpha=False, weighting="running", clip=1.5)
    # [M=2, B=2, N=2]: agent 0 has Q gaps of 2 in state 0 and 4 in state 1, agent 1 none
    q = torch.tensor([[[0.0, 0.0], [4.0, 0.0]], [[2.0, 0.0], [8.0, 0.0]]])
    weights = ddpl.importance_weights(q)
    spread = math.sqrt((1 + 1 + 4 + 4) / 4)  # RMS of the per-state centred Q, first batch
    for state, gap in ((0, 1.0), (1, 2.0)):
        z = min(gap / spread, 1.5)  # centred Q over the spread, clipped
        expected = torch.softmax(torch.tensor([-z, z]) / 0.5, dim=0)
        assert torch.allclose(weights[:, state, 0], expected, atol=1e-6)
    assert torch.allclose(weights[:, :, 1], torch.full((2, 2), 0.5))  # equal Q: equal weights
    # a tenfold reward scale gives the same weights: the spread estimate absorbs it
    assert torch.allclose(
        agent(alpha=0.5, auto_alpha=False, clip=1.5).importance_weights(10 * q), weights, atol=1e-6
    )


def test_soft_target_divides_by_the_knn_density_of_the_candidates():
    ddpl = agent(alpha=1.0, auto_alpha=False, target="soft", jitter=False, weighting="softmax")
    candidates = torch.tensor([0.0, 0.1, 0.5])[:, None, None, None].expand(3, 1, 2, 1)
    q = torch.zeros(3, 1, 2)
    from marl_diff.diffusion.entropy import knn_log_distances

    weights = ddpl.importance_weights(q, ddpl.act_dims * knn_log_distances(candidates))
    r = torch.tensor([0.1, 0.1, 0.4])  # nearest-neighbour distances: sparser -> more weight
    assert torch.allclose(weights[:, 0, 0], r / r.sum(), atol=1e-5)


def test_issm_loss_is_the_weighted_dsm_of_the_candidates(monkeypatch):
    ddpl = agent(alpha=1.0, auto_alpha=False, jitter=False, n_candidates=2, weighting="softmax")
    candidates = torch.tensor([[[[0.2], [0.1]]], [[[-0.3], [0.4]]]])  # [M=2, B=1, N=2, A=1]
    q = torch.tensor([[[0.0, 1.0]], [[math.log(3.0), 1.0]]])
    dsm = torch.tensor([[[2.0, 4.0]], [[6.0, 8.0]]], requires_grad=True)
    monkeypatch.setattr(ddpl.policy, "sample", lambda obs, **kw: candidates)
    monkeypatch.setattr(ddpl, "q_each_agent", lambda state, base, own, members=None: q)
    monkeypatch.setattr(ddpl.policy, "dsm_loss", lambda actions, obs: dsm * 1.0)
    metrics = ddpl.update_actor(one_state_batch())
    # agent 0: weights (1/4, 3/4) -> 2/4 + 18/4 = 5; agent 1: equal weights -> 6
    assert metrics["loss/actor"].item() == pytest.approx(11.0)
    assert metrics["issm/ess_fraction"].item() == pytest.approx(
        ((1 / (1 / 16 + 9 / 16)) / 2 + 1) / 2
    )


def test_resampling_draws_candidates_in_proportion_to_their_weights():
    candidates = torch.tensor([0.1, 0.2, 0.3])[:, None, None, None].expand(3, 1, 2, 1)
    weights = torch.tensor([[[0.0, 0.25]], [[1.0, 0.0]], [[0.0, 0.75]]])  # [M=3, B=1, N=2]
    torch.manual_seed(0)
    drawn = resample(candidates, weights, 4000)
    assert drawn.shape == (4000, 1, 2, 1)
    assert torch.all(drawn[:, 0, 0] == 0.2)  # agent 0: all its weight on candidate 1
    agent1 = drawn[:, 0, 1, 0]
    assert not torch.any(agent1 == 0.2)  # a weightless candidate is never drawn
    assert (agent1 == 0.3).float().mean().item() == pytest.approx(0.75, abs=0.03)


def test_resampled_issm_loss_is_the_mean_dsm_of_the_drawn_candidates(monkeypatch):
    ddpl = agent(
        alpha=1.0,
        auto_alpha=False,
        jitter=False,
        n_candidates=2,
        weighting="softmax",
        resampled_candidates=3,
    )
    candidates = torch.tensor([[[[0.2], [0.1]]], [[[-0.3], [0.4]]]])  # [M=2, B=1, N=2, A=1]
    q = torch.tensor([[[0.0, 50.0]], [[50.0, 0.0]]])  # each agent's weight on one candidate
    fitted = []

    def dsm_loss(actions, obs):
        fitted.append(actions)
        return torch.tensor([[[2.0, 4.0]], [[6.0, 8.0]], [[1.0, 0.0]]], requires_grad=True)

    monkeypatch.setattr(ddpl.policy, "sample", lambda obs, **kw: candidates)
    monkeypatch.setattr(ddpl, "q_each_agent", lambda state, base, own, members=None: q)
    monkeypatch.setattr(ddpl.policy, "dsm_loss", dsm_loss)
    metrics = ddpl.update_actor(one_state_batch())
    assert fitted[0].shape == (3, 1, 2, 1)
    assert fitted[0][:, 0, 0, 0].tolist() == pytest.approx([-0.3] * 3)
    assert fitted[0][:, 0, 1, 0].tolist() == pytest.approx([0.1] * 3)
    # each drawn candidate weighs 1/3: agent 0 (2 + 6 + 1) / 3, agent 1 (4 + 8 + 0) / 3
    assert metrics["loss/actor"].item() == pytest.approx(7.0)


def test_next_state_candidates_are_the_critic_targets_and_issms(monkeypatch):
    """`candidate_states=next`: one draw of M candidates at the batch's next states per actor
    update; the critic target averages Q' over them, and ISSM weights and fits them there with
    the other agents at their first candidates. No other chain runs in that update."""
    ddpl = agent(candidate_states="next", policy_delay=2)
    g = torch.Generator().manual_seed(0)
    batch = one_state_batch().map(lambda field: torch.randn(4, *field.shape[1:], generator=g))
    drawn = torch.rand(3, 4, 2, 1, generator=g) * 2 - 1  # [M, B, N, A]
    draws, seen = [], {}

    def sample(obs, candidates=None, **kw):
        draws.append((obs, candidates))
        return drawn if candidates else drawn[0]

    def target_value(next_state, next_action):
        seen["target"] = (next_state, next_action)
        return torch.zeros(4)  # the team critic's [B]

    def q_each_agent(state, base, own, members=None):
        seen["issm"] = (state, base)
        return torch.zeros(own.shape[:-1])

    monkeypatch.setattr(ddpl.policy, "sample", sample)
    monkeypatch.setattr(ddpl, "target_value", target_value)
    monkeypatch.setattr(ddpl, "q_each_agent", q_each_agent)
    ddpl.update(batch)
    assert len(draws) == 1 and draws[0][0] is batch.next_obs and draws[0][1] == 3
    assert seen["target"][0] is batch.next_state and seen["target"][1] is drawn
    assert seen["issm"][0] is batch.next_state and torch.equal(seen["issm"][1], drawn[0])
    assert ddpl.next_candidates is None
    # an update without the actor's step samples the critic target's action as usual
    ddpl.update(batch)
    assert len(draws) == 2 and draws[1] == (batch.next_obs, None)
    assert seen["target"][1].shape == (4, 2, 1)


def candidates_q_of_one_actor_update(ddpl, monkeypatch):
    """One actor update of `ddpl` on a random 2-state batch with 3 fixed candidates per state
    and agent; returns the batch, the candidates [M, B, N, A] and the Q its weights read."""
    g = torch.Generator().manual_seed(0)
    batch = one_state_batch().map(lambda field: torch.randn(2, *field.shape[1:], generator=g))
    candidates = torch.rand(3, 2, 2, 1, generator=g) * 2 - 1
    seen = {}

    def importance_weights(q, inverse_density=None):
        seen["q"] = q
        return torch.full_like(q, 1 / 3)

    monkeypatch.setattr(ddpl.policy, "sample", lambda obs, **kw: candidates)
    monkeypatch.setattr(ddpl, "importance_weights", importance_weights)
    ddpl.update_actor(batch)
    return batch, candidates, seen["q"]


@pytest.mark.parametrize("weights_critic", ["reduced", "first"])
def test_issm_weights_read_the_twin_critics_min_or_its_first_member_alone(
    weights_critic, monkeypatch
):
    """`weights_critic`: the candidates' Q_i is min(Q1, Q2) ("reduced") or Q1 alone ("first"),
    each at agent i's candidate with the other agent's replay action."""
    torch.manual_seed(0)  # a critic whose two members differ at these candidates
    ddpl = agent(jitter=False, weights_critic=weights_critic)
    batch, candidates, weighed_q = candidates_q_of_one_actor_update(ddpl, monkeypatch)
    twin = torch.empty(2, 3, 2, 2)  # [member, M, B, N]
    for i in range(2):
        joint = batch.action.expand(3, -1, -1, -1).clone()
        joint[:, :, i] = candidates[:, :, i]
        with torch.no_grad():
            twin[..., i] = ddpl.critic(batch.state, joint)
    first, smaller = twin[0], twin.min(0).values
    assert not torch.allclose(first, smaller)  # the two choices differ here
    torch.testing.assert_close(weighed_q, first if weights_critic == "first" else smaller)


@pytest.mark.parametrize("critic_rewards", ["team", "per_agent"])
def test_joint_candidates_weigh_each_agents_candidate_by_q_at_the_joint_candidate(
    critic_rewards, monkeypatch
):
    """`others_actions=candidates`: candidate j of agent i is weighed by Q at joint candidate j
    (every agent at its own j-th candidate), the twin critic's min; the team's Q is every
    agent's, a per-agent critic gives agent i its own output."""
    torch.manual_seed(0)
    ddpl = agent(jitter=False, others_actions="candidates", critic_rewards=critic_rewards)
    batch, candidates, weighed_q = candidates_q_of_one_actor_update(ddpl, monkeypatch)
    with torch.no_grad():
        q = ddpl.critic(batch.state, candidates).min(0).values  # [M, B] or [M, B, N]
    expected = q if critic_rewards == "per_agent" else q.unsqueeze(-1).expand(3, 2, 2)
    torch.testing.assert_close(weighed_q, expected)
    assert not torch.allclose(expected[:, 0], expected[0, 0])  # the candidates' Q differ


def test_joint_candidates_are_a_choice_of_ddpl_only():
    from marl_diff.errors import ConfigError

    with pytest.raises(ConfigError, match="others_actions.*candidates"):
        make_agent({"algorithm": "gaussian", "others_actions": "candidates"}, make_spec(), "cpu")
    assert agent(others_actions="candidates").config.others_actions == "candidates"


def test_bfloat16_weights_take_the_candidates_q_from_bfloat16_products(monkeypatch):
    """`weights_precision=bfloat16`: the critic's products at the candidates come out in
    bfloat16, the Q the weights read is float32 and close to the float32 one, and the critic's
    own update keeps float32."""
    torch.manual_seed(0)
    ddpl = agent(jitter=False, weights_precision="bfloat16")
    reference = agent(jitter=False)
    reference.load_state_dict(ddpl.state_dict())
    g = torch.Generator().manual_seed(0)
    batch = one_state_batch().map(lambda field: torch.randn(64, *field.shape[1:], generator=g))
    candidates = torch.rand(3, 64, 2, 1, generator=g) * 2 - 1  # [M, B, N, A]
    seen = {}
    for name, made in (("bfloat16", ddpl), ("float32", reference)):

        def importance_weights(q, inverse_density=None, name=name):
            seen[name] = q
            return torch.full_like(q, 1 / 3)

        monkeypatch.setattr(made.policy, "sample", lambda obs, **kw: candidates)
        monkeypatch.setattr(made, "importance_weights", importance_weights)
    dtypes = []
    hook = ddpl.critic.q.net[-1].register_forward_hook(lambda *args: dtypes.append(args[2].dtype))
    ddpl.update_actor(batch)
    reference.update_actor(batch)
    assert dtypes == [torch.bfloat16]
    assert seen["bfloat16"].dtype == torch.float32
    gap = (seen["bfloat16"] - seen["float32"]).abs().max().item()
    assert 0 < gap < 0.05, gap
    dtypes.clear()
    ddpl.update_critic(batch)
    hook.remove()
    assert dtypes and set(dtypes) == {torch.float32}


def test_best_of_k_picks_each_agents_highest_q_sample(monkeypatch):
    ddpl = agent(action_selection="best_of_k", best_of_k=3)
    samples = torch.tensor([[[[0.1], [0.9]]], [[[0.5], [0.2]]], [[[0.7], [0.4]]]])  # [K, B, N, A]
    monkeypatch.setattr(
        ddpl.policy,
        "sample",
        lambda obs, candidates=None, **kw: samples if candidates else samples[0],
    )
    monkeypatch.setattr(
        ddpl, "q_each_agent", lambda state, base, own: own[..., 0] * torch.tensor([1.0, -1.0])
    )
    action = ddpl.act(torch.zeros(1, 2, 3), explore=True, state=torch.zeros(1, 4))
    assert action.flatten().tolist() == pytest.approx([0.7, 0.2])
    # without the global state (decentralised execution) it is a plain policy sample
    assert ddpl.act(torch.zeros(1, 2, 3), explore=True).flatten().tolist() == pytest.approx(
        [0.1, 0.9]
    )


@pytest.mark.skipif(not compiler_available(), reason="torch.compile needs a C++ compiler")
def test_compile_chain_loop_samples_and_learns_what_eager_ddpl_does(monkeypatch):
    """`compile_chain_loop`: acting, the critic target's actions and ISSM's candidates come from
    the compiled loop, and updates leave the parameters where the eager agent's go, to float
    rounding (the arithmetic is fused, the random draws are eager's)."""
    from marl_diff.diffusion import policy as policy_module

    runs = []
    compiled_reverse = policy_module._compiled_reverse
    monkeypatch.setattr(
        policy_module, "_compiled_reverse", lambda p: runs.append(p) or compiled_reverse(p)
    )
    looped, eager = agent(compile_chain_loop=True), agent()
    eager.load_state_dict(looped.state_dict())
    obs = torch.rand(5, 2, 3)
    acts = []
    for ddpl in (looped, eager):
        torch.manual_seed(0)
        acts.append(ddpl.act(obs, explore=True))
    torch.testing.assert_close(acts[0], acts[1], atol=1e-5, rtol=0)
    assert len(runs) == 1
    update_alike(looped, eager)
    assert len(runs) == 1 + 4 * 2  # each update: the target's chain and the candidates'
    for key, value in looped.state_dict().items():
        torch.testing.assert_close(value, eager.state_dict()[key], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not compiler_available(), reason="torch.compile needs a C++ compiler")
def test_compile_weights_learns_what_eager_ddpl_does_bit_for_bit():
    """`compile_weights`: the candidates' Q comes from the agent's compiled graph, and in
    float32 updates leave the parameters exactly where the eager agent's go; in bfloat16 its
    Q stays within the bfloat16 gap of the float32 one."""
    compiled, eager = agent(compile_weights=True), agent()
    eager.load_state_dict(compiled.state_dict())
    batches = update_alike(compiled, eager)
    assert "candidates_q" in compiled._compiled_functions
    assert "candidates_q" not in eager._compiled_functions
    for key, value in compiled.state_dict().items():
        assert torch.equal(value, eager.state_dict()[key]), key
    state, base = batches[0].state, batches[0].action
    candidates = torch.rand(3, *base.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    joint = compiled.candidates_q(state, None, candidates, None)  # others_actions=candidates
    assert "joint_candidates_q" in compiled._compiled_functions
    assert torch.equal(joint, eager.candidates_q(state, None, candidates, None))
    reference = eager.candidates_q(state, base, candidates, None)
    compiled.config.weights_precision = "bfloat16"
    bfloat16 = compiled.candidates_q(state, base, candidates, None)
    assert bfloat16.dtype == torch.float32
    assert 0 < (bfloat16 - reference).abs().max().item() < 0.05


def test_bad_settings_are_config_errors():
    from marl_diff.errors import ConfigError

    for bad in (
        {"weighting": "max"},
        {"target": "greedy"},
        {"n_candidates": 0},
        {"schedule": "sigmoid"},
        {"proposal": "older"},
        {"resampled_candidates": -1},
        {"candidate_states": "replay"},
        {"weights_critic": "second"},
        {"weights_precision": "bf16"},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            agent(**bad)
    with pytest.raises(ConfigError, match="candidate_states=next needs agent.proposal=current"):
        agent(candidate_states="next", proposal="lagged")


# ---------------------------------------------------------------------------- learning


@pytest.mark.slow  # 9 min of a 2-core CPU under the suite's load, most of the suite's time
@pytest.mark.learning(seconds=550)
@pytest.mark.parametrize(
    "agent",
    [
        "ddpl",
        "ddpl_fast",
        pytest.param(
            "ddpl_fast_bfloat16",
            marks=pytest.mark.skipif(
                not cpu_has_bfloat16_kernels(), reason="bfloat16 products need AVX512-BF16 or AMX"
            ),
        ),
    ],
)
def test_ddpl_covers_more_goals_than_gaussian_on_multigoal_when_both_sample(tmp_path, agent):
    """The multimodality claim: over 100 sampled episodes DDPL sends at least 10% of them to
    each of 3 or more goals; the Gaussian, sampled too, does not. With the scenario's 32
    candidates, 6000 steps and one torch thread (2026-12-05): seed 0 10/38/31/13%, seed 1
    1/23/50/17%. Earlier, with 16 candidates and 3000 steps, seed 0 gave 62/22/4/10% and seed 1
    24/73%: the claim hung on one seed. `agent=ddpl_fast` (its 2 resampled of the scenario's 32
    candidates, 5-step chains, compiled; 2026-12-07, seed 0): 16/34/19/4% in 5 min alone;
    `agent=ddpl_fast_bfloat16` 8/34/25/15% in 2 min with the Gaussian's run (AMD EPYC Zen 4),
    and 36/23/7/19% (return 2.60) in 82 s with its 4-step quadratic candidates' chain (since
    2026-12-07). Seeds 3-5 of that preset cover 2, 2 and 1 goals, those of its 5-step chain 2,
    1 and 1: the claim at this budget stands on seeds 0-2 (results/speed.md)."""
    budget = [arg for arg in MULTIGOAL if not arg.startswith("runner.total_steps=")]
    budget.append("runner.total_steps=6000")  # budget (catalog: 20000)
    ddpl_args = [*budget, f"agent={agent}", "agent.diffusion_steps=10"]  # budget: half of T=20
    ddpl, _ = train_run(tmp_path / "ddpl", ddpl_args)
    gaussian, _ = train_run(tmp_path / "gaussian", [*budget, "agent=gaussian"])
    assert ddpl["mode"] == gaussian["mode"] == "sample"
    assert ddpl["modes_covered"] >= 3, ddpl["goal_shares"]
    assert gaussian["modes_covered"] < ddpl["modes_covered"], gaussian["goal_shares"]
    assert ddpl["mean_return"] > 0  # it goes to goals, not just spreads out (standing still: -15)


@pytest.mark.learning(seconds=165)
@pytest.mark.parametrize(
    "agent, candidate_states",
    [
        ("ddpl", "batch"),
        ("ddpl", "next"),
        pytest.param(
            "ddpl_fast", "batch", marks=pytest.mark.slow
        ),  # 2 min alone, compiles included
    ],
)
def test_ddpl_learns_vmas_navigation(tmp_path, agent, candidate_states):
    """Two agents, shaped reward = progress toward their goals: an untrained policy scores
    about 0 per episode, reaching both goals about 1 or more. The scenario's ddpl defaults
    (T=10, M=8; `agent=ddpl_fast`: its preset's) stand; the overrides are for the suite's budget.

    At 16000 env steps the final policies of seeds 0-3 return 0.95, 1.13, 0.98 and 1.30 on
    256 evaluation episodes. At 8000 (this test's budget until 2026-12-02) they returned 0.38,
    0.48, -0.03 and 0.49: the threshold sat at the expected return, and 32 episodes, a few of
    them long collisions (-8 to -28), decided pass or fail (results/speed.md)."""
    overrides = {
        "scenario.n_agents=2": "budget (catalog: 3 agents)",
        "scenario.max_steps=50": "budget (catalog: 100-step episodes)",
        "runner.total_steps=16000": "budget (catalog: 1M)",
        "runner.num_envs=16": "budget (catalog: 64 copies)",
        "runner.warmup_steps=2000": "budget (catalog: 10000)",
        "runner.batch_size=256": "budget (catalog: 512)",
        "runner.log_every=2000": "a train return logged at the end of the random warm-up: the "
        "untrained baseline (catalog: every 10000 steps)",
        "runner.eval_every=0": "budget: only the final evaluation",
        "runner.eval_episodes=128": "a mean that a few collisions cannot swing (catalog: 32)",
        "runner.eval_num_envs=128": "all episodes in one batch",
        "agent.actor_hidden=[64,64]": "budget: 2x64 instead of 3x256",
        "agent.critic_hidden=[64,64]": "budget: 2x64 instead of 2x256",
        "agent.actor_lr=1e-3": "a few hundred updates instead of the catalog's budget",
        "agent.critic_lr=1e-3": "a few hundred updates instead of the catalog's budget",
        "agent.diffusion_steps=5": "budget (scenario default: 10)",
        f"agent.candidate_states={candidate_states}": "the catalog's, and the candidates drawn "
        "at the next states, shared with the critic target",
    }
    report, records = train_run(
        tmp_path, ["scenario=vmas_navigation", f"agent={agent}", *overrides]
    )
    first_train = next(r["train/episode_return"] for r in records if "train/episode_return" in r)
    assert first_train < 0.1
    assert report["mean_return"] > 0.45, report["mean_return"]
    assert any("issm/ess_fraction" in r for r in records)


def test_headline_command_runs_with_a_tiny_budget(tmp_path, run_cli):
    proc = run_cli(
        [
            "scenario=mamujoco_ant_2x4",
            "agent=ddpl",
            f"run_dir={tmp_path / 'run'}",
            "runner.total_steps=48",
            "runner.warmup_steps=24",
            "runner.batch_size=8",
            "runner.eval_episodes=1",
            "runner.eval_num_envs=1",
            "runner.progress=false",
            "scenario.max_steps=12",
            "agent.diffusion_steps=2",
            "agent.n_candidates=2",
            "agent.actor_hidden=[16]",
            "agent.critic_hidden=[16]",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    config = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert config.runner.name == "mujoco" and config.agent.algorithm == "ddpl"
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert len(report["returns"]) == 1
