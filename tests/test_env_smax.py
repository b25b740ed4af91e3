"""SMAX backend (jaxmarl): spec, shapes and dtypes, availability masks, truncation vs
termination, same-step auto-reset, the `won` outcome, config errors, the catalog YAMLs, the
win rate in evaluation summaries and the PettingZoo export. JIT compiles are slow on CPU, so
one small env is shared per module and every other env is built with 2 copies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("jaxmarl")

from marl_diff.envs import make_env  # noqa: E402
from marl_diff.envs.smax import SmaxConfig, SmaxEnv  # noqa: E402
from marl_diff.errors import ConfigError  # noqa: E402
from marl_diff.runners.evaluation import summarize_outcomes  # noqa: E402

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
SMAX_YAMLS = ["smax_3m", "smax_2s3z", "smax_5m_vs_6m", "smax_smacv2_5_units"]
B = 4
LIMIT = 6  # short enough that no unit is in range yet when the episode times out
STOP = 4  # SMAX's stop action, always available


def load(stem: str, **overrides) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(SCENARIOS / f"{stem}.yaml"), resolve=True)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def env():
    env = make_env(load("smax_3m", max_steps=LIMIT), B, "cpu", 0)
    yield env
    env.close()


def scores_for(env: SmaxEnv, index: int | torch.Tensor, low: float = -1.0) -> torch.Tensor:
    """Relaxed actions whose best-scoring entry is `index` (per agent, or one for all)."""
    scores = torch.full((env.num_envs, env.spec.n_agents, env.spec.act_dim), low)
    index = torch.as_tensor(index).expand(env.num_envs, env.spec.n_agents)
    return scores.scatter(-1, index[..., None], 1.0)


def test_spec_shapes_and_dtypes(env):
    spec = env.spec
    n_actions = 5 + 3  # 4 moves + stop, attack one of 3 enemies
    assert spec.agent_names == ("ally_0", "ally_1", "ally_2")
    assert spec.act_dims == (n_actions,) * 3 and spec.homogeneous
    assert spec.obs_dims == (env.env.obs_size + n_actions,) * 3
    assert spec.state_dim == env.env.state_size and spec.max_episode_steps == LIMIT
    obs, state = env.reset(seed=3)
    assert obs.shape == (B, 3, spec.obs_dim) and obs.dtype == torch.float32
    assert state.shape == (B, spec.state_dim) and state.dtype == torch.float32
    result = env.step(env.random_actions())
    assert result.obs.shape == result.next_obs.shape == (B, 3, spec.obs_dim)
    assert result.state.shape == result.next_state.shape == (B, spec.state_dim)
    assert result.reward.shape == (B, 3) and result.reward.dtype == torch.float32
    assert result.terminated.shape == result.truncated.shape == (B,)
    assert result.terminated.dtype == result.truncated.dtype == torch.bool
    assert set(result.info) == {"won"}
    assert result.info["won"].shape == (B,) and result.info["won"].dtype == torch.float32
    # the team reward is shared by every ally
    assert torch.equal(result.reward, result.reward[:, :1].expand(-1, 3))


def test_unavailable_action_is_never_taken(env):
    env.reset(seed=4)
    avail = env.avail_actions.clone()
    # at the start the teams are ~16 apart, out of range: no attack is available
    assert avail.shape == (B, 3, env.spec.act_dim) and avail.dtype == torch.bool
    assert not avail[..., 5:].any() and avail[..., :5].all()
    # the masks are appended to the observations, so the policy sees them
    obs = env.reset(seed=4)[0]
    assert torch.equal(obs[..., -env.spec.act_dim :], avail.float())
    # top score on "attack enemy 0" (unavailable), second best on move 2: move 2 is taken
    scores = scores_for(env, 5)
    scores[..., 2] = 0.5
    env.step(scores)
    assert (env.last_actions == 2).all()
    # random scores: the chosen action is always available and the best available one
    for _ in range(3):
        avail = env.avail_actions.clone()
        scores = env.random_actions()
        env.step(scores)
        chosen = env.last_actions.long()
        assert avail.gather(-1, chosen[..., None]).all()
        best = scores.masked_fill(~avail, -2.0).argmax(-1)
        assert torch.equal(chosen, best)


def test_timeout_is_truncation_with_same_step_reset(env):
    obs, state = env.reset(seed=5)
    stop = scores_for(env, STOP)
    for t in range(1, LIMIT + 1):
        result = env.step(stop)
        assert not result.terminated.any()
        assert bool(result.truncated.all()) == (t == LIMIT), t
        if t < LIMIT:
            assert torch.equal(result.obs, result.next_obs)
            assert torch.equal(result.state, result.next_state)
    assert not result.info["won"].any()
    # next_obs is the true final observation, obs the first of the next episode
    assert not torch.equal(result.obs, result.next_obs)
    assert not torch.equal(result.state, result.next_state)
    # the fresh episode is a real start: running on counts steps from zero again
    for t in range(1, LIMIT + 1):
        result = env.step(stop)
        assert bool(result.truncated.all()) == (t == LIMIT)


def test_won_lost_and_terminated(env):
    env.reset(seed=6)
    key, env_state, avail = env.batch.carry
    health = env_state.state.unit_health
    health = health.at[0, 3:].set(0.0)  # copy 0: every enemy is dead -> the allies win
    health = health.at[1, :3].set(0.0)  # copy 1: every ally is dead -> a loss
    inner = env_state.state.replace(unit_health=health)
    env.batch.carry = (key, env_state.replace(state=inner), avail)
    result = env.step(scores_for(env, STOP))
    assert result.terminated.tolist() == [True, True, False, False]
    assert not result.truncated.any()
    assert result.info["won"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert (result.reward[0] >= 1.0).all()  # the win bonus
    # the finished copies restarted: the new world state has every unit alive again
    assert not torch.equal(result.state[:2], result.next_state[:2])
    assert torch.equal(result.obs[2:], result.next_obs[2:])
    assert summarize_outcomes({"won": [1.0, 0.0, 0.0, 1.0]})["win_rate"] == 0.5


def test_pettingzoo_export(env):
    pettingzoo_test = pytest.importorskip("pettingzoo.test")
    from marl_diff.envs.export import to_parallel_env  # ours: an import error is a failure

    pettingzoo_test.parallel_api_test(to_parallel_env(env), num_cycles=2 * LIMIT)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"map": "4m_vs_nothing"}, "3m"),
        ({"action_type": "multi"}, "continuous"),
        ({"max_steps": -1}, "max_steps"),
        ({"env_kwargs": {"no_such_kwarg": 1}}, "won_battle_bonus"),
        ({"env_kwargs": {"max_steps": 5}}, "max_steps"),
    ],
)
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        SmaxEnv(SmaxConfig(**overrides), num_envs=2, device=torch.device("cpu"), seed=0)


def test_unknown_map_lists_the_maps():
    with pytest.raises(ConfigError) as err:
        make_env(load("smax_3m", map="nope"), 2, "cpu", 0)
    for name in ("2s3z", "5m_vs_6m", "smacv2_5_units", "27m_vs_30m"):
        assert name in str(err.value)


@pytest.mark.parametrize("stem", SMAX_YAMLS[1:])
def test_yaml_loads_and_steps(stem):
    path = SCENARIOS / f"{stem}.yaml"
    assert path.read_text().startswith("#")
    cfg = load(stem)
    assert cfg["name"] == stem and cfg["backend"] == "smax"
    env = make_env(cfg, 2, "cpu", 0)
    obs, state = env.reset()
    assert obs.shape == (2, env.spec.n_agents, env.spec.obs_dim)
    result = env.step(env.random_actions())
    assert result.reward.shape == (2, env.spec.n_agents)
    assert torch.isfinite(result.obs).all() and torch.isfinite(result.state).all()
    env.close()


def test_continuous_action_option():
    env = make_env(load("smax_3m", action_type="continuous", max_steps=3), 2, "cpu", 0)
    assert env.spec.act_dims == (4,) * 3
    assert env.spec.obs_dims == (env.env.obs_size,) * 3  # no masks in continuous mode
    env.reset(seed=0)
    result = env.step(torch.ones(2, 3, 4))
    assert ((env.last_actions >= 0) & (env.last_actions <= 1)).all()
    assert (env.last_actions == 1).all()
    assert result.obs.shape == (2, 3, env.env.obs_size)
    env.close()
