"""PettingZoo ParallelEnv backend: MPE simple_spread (mpe2) and a tiny heterogeneous env."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from gymnasium.spaces import Box
from pettingzoo.utils.env import ParallelEnv

from marl_diff.envs import make_env
from marl_diff.envs.pettingzoo import SUPERSUIT_WRAPPERS, PettingZooEnv
from marl_diff.errors import BackendMissing, ConfigError

mpe2 = pytest.importorskip("mpe2")
from mpe2 import simple_spread_v3  # noqa: E402

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
MPE = {
    "name": "mpe_simple_spread",
    "backend": "pettingzoo",
    "env": "mpe2.simple_spread_v3",
    "env_kwargs": {"continuous_actions": True, "max_cycles": 25},
    "n_agents": 3,
}


class TwoAgentEnv(ParallelEnv):
    """'scout' (obs 3, act 2 in [-2, 2]) leaves after `scout_life` steps; 'carrier' (obs 2x2,
    act 3 in [0, 1]) terminates after `carrier_life` steps; both are truncated at `horizon`."""

    metadata = {"name": "two_agent_test_env"}
    render_mode = None

    def __init__(self, scout_life=2, carrier_life=4, horizon=100, with_state=False):
        self.possible_agents = ["scout", "carrier"]
        self.agents = []
        self.scout_life, self.carrier_life, self.horizon = scout_life, carrier_life, horizon
        self.with_state = with_state
        self._obs = {"scout": Box(0, 10, (3,), np.float32), "carrier": Box(0, 10, (2, 2))}
        self._act = {"scout": Box(-2, 2, (2,), np.float32), "carrier": Box(0, 1, (3,))}
        self.received: list[dict] = []
        self.rng = np.random.default_rng()

    def observation_space(self, agent):
        return self._obs[agent]

    def action_space(self, agent):
        return self._act[agent]

    def _observe(self):
        t = float(self.t)
        all_obs = {
            "scout": np.array([self.base, t, 1.0], np.float32),
            "carrier": np.array([[self.base, t], [t, 2.0]], np.float32),
        }
        return {a: all_obs[a] for a in self.agents}

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.base = float(self.rng.uniform(0, 5))
        self.t = 0
        self.agents = list(self.possible_agents)
        return self._observe(), {a: {} for a in self.agents}

    def step(self, actions):
        self.received.append({a: np.array(v) for a, v in actions.items()})
        self.t += 1
        obs = self._observe()
        rew = {a: {"scout": 1.0, "carrier": 2.0}[a] for a in self.agents}
        life = {"scout": self.scout_life, "carrier": self.carrier_life}
        term = {a: self.t >= life[a] for a in self.agents}
        trunc = {a: self.t >= self.horizon for a in self.agents}
        self.agents = [a for a in self.agents if not (term[a] or trunc[a])]
        return obs, rew, term, trunc, {a: {} for a in obs}

    def state(self):
        if not self.with_state:
            raise NotImplementedError
        return np.array([self.base, self.t, len(self.agents)], np.float32)


def two_agent_env(**kwargs):
    return TwoAgentEnv(**kwargs)


def hetero(num_envs=2, seed=0, **overrides):
    cfg = {
        "name": "hetero",
        "backend": "pettingzoo",
        "env": f"{__name__}:two_agent_env",
        "n_agents_kwarg": "",
        **overrides,
    }
    return make_env(cfg, num_envs=num_envs, device="cpu", seed=seed)


# ------------------------------------------------------------------ MPE simple_spread


def test_mpe_shapes_dtypes_bounds():
    env = make_env(MPE, num_envs=4, device="cpu", seed=0)
    spec = env.spec
    assert spec.agent_names == ("agent_0", "agent_1", "agent_2")
    assert spec.obs_dims == (18, 18, 18) and spec.act_dims == (5, 5, 5)
    assert spec.state_dim == 54 and spec.max_episode_steps == 25
    assert torch.equal(spec.act_low, torch.zeros(3, 5))
    assert torch.equal(spec.act_high, torch.ones(3, 5))
    obs, state = env.reset()
    assert obs.shape == (4, 3, 18) and obs.dtype == torch.float32
    assert state.shape == (4, 54) and state.dtype == torch.float32
    res = env.step(env.random_actions())
    assert res.reward.shape == (4, 3) and res.reward.dtype == torch.float32
    assert res.terminated.shape == (4,) and res.terminated.dtype == torch.bool
    assert res.truncated.dtype == torch.bool
    assert res.next_obs.shape == (4, 3, 18) and res.next_state.shape == (4, 54)
    assert torch.isfinite(res.obs).all() and torch.isfinite(res.reward).all()


def test_mpe_matches_raw_env_over_episode_and_auto_resets():
    seed, B = 7, 2
    env = make_env(MPE, num_envs=B, device="cpu", seed=seed)
    raw = [
        simple_spread_v3.parallel_env(N=3, continuous_actions=True, max_cycles=25) for _ in range(B)
    ]
    agents = raw[0].possible_agents

    def stacked(dicts):
        return torch.from_numpy(np.stack([np.stack([d[a] for a in agents]) for d in dicts]))

    obs, state = env.reset()
    raw_obs = [r.reset(seed=seed + k)[0] for k, r in enumerate(raw)]
    assert torch.equal(obs, stacked(raw_obs))
    assert torch.equal(state, torch.from_numpy(np.stack([r.state() for r in raw])))
    assert not torch.equal(obs[0], obs[1])  # copies are seeded differently

    gen = torch.Generator().manual_seed(0)
    for t in range(25):
        actions = env.random_actions(gen)
        scaled = env.scale_actions(actions).numpy()
        res = env.step(actions)
        outs = [r.step({a: scaled[k, i] for i, a in enumerate(agents)}) for k, r in enumerate(raw)]
        next_obs = stacked([o[0] for o in outs])
        rewards = torch.tensor([[o[1][a] for a in agents] for o in outs], dtype=torch.float32)
        assert torch.equal(res.next_obs, next_obs)
        assert torch.equal(res.reward, rewards)
        assert torch.equal(res.next_state, torch.from_numpy(np.stack([r.state() for r in raw])))
        assert not res.terminated.any()
        if t < 24:
            assert not res.truncated.any()
            assert torch.equal(res.obs, res.next_obs)
        else:  # max_cycles reached: timeout, auto-reset to a fresh episode
            assert res.truncated.all()
            assert all(not r.agents for r in raw)
            fresh = [r.reset()[0] for r in raw]  # each copy's RNG continues
            assert torch.equal(res.obs, stacked(fresh))
            assert torch.equal(res.state, torch.from_numpy(np.stack([r.state() for r in raw])))
            assert not torch.equal(res.obs, res.next_obs)
    # the new episode runs its full length again
    for _ in range(24):
        res = env.step(env.random_actions(gen))
        assert not (res.truncated.any() or res.terminated.any())
    assert env.step(env.random_actions(gen)).truncated.all()


def test_mpe_seeding_is_reproducible():
    a = make_env(MPE, num_envs=3, device="cpu", seed=5)
    b = make_env(MPE, num_envs=3, device="cpu", seed=5)
    c = make_env(MPE, num_envs=3, device="cpu", seed=6)
    assert torch.equal(a.reset()[0], b.reset()[0])
    assert not torch.equal(a.reset(seed=6)[0], b.reset(seed=5)[0])
    assert torch.equal(a.reset(seed=6)[0], c.reset()[0])


def test_own_max_steps_truncates():
    env = make_env({**MPE, "max_steps": 5}, num_envs=2, device="cpu", seed=0)
    assert env.spec.max_episode_steps == 5
    env.reset()
    for _ in range(4):
        res = env.step(env.random_actions())
        assert not res.truncated.any()
    res = env.step(env.random_actions())
    assert res.truncated.all() and not res.terminated.any()
    assert not torch.equal(res.obs, res.next_obs)


def test_scenario_yamls_build():
    for stem in ("mpe_simple_spread", "pettingzoo"):
        cfg = yaml.safe_load((SCENARIOS / f"{stem}.yaml").read_text())
        assert cfg["name"] == stem and cfg["backend"] == "pettingzoo"
        env = make_env(cfg, num_envs=1, device="cpu", seed=0)
        assert isinstance(env, PettingZooEnv) and env.spec.n_agents == 3
        assert env.spec.max_episode_steps == 25


# ------------------------------------------------------------------ heterogeneous agents


def test_heterogeneous_dims_padding_and_action_scaling():
    env = hetero(num_envs=2)
    spec = env.spec
    assert spec.agent_names == ("scout", "carrier")
    assert spec.obs_dims == (3, 4) and spec.act_dims == (2, 3) and not spec.homogeneous
    assert spec.state_dim == 7  # no state(): concatenated observations
    assert torch.equal(spec.act_low, torch.tensor([[-2.0, -2.0, -1.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(spec.act_high, torch.tensor([[2.0, 2.0, 1.0], [1.0, 1.0, 1.0]]))
    obs, state = env.reset()
    assert obs.shape == (2, 2, 4)
    assert torch.all(obs[:, 0, 3] == 0)  # padding
    torch.testing.assert_close(state, torch.cat([obs[:, 0, :3], obs[:, 1, :4]], dim=1))
    actions = torch.tensor([[[1.0, -1.0, 0.7], [-1.0, 0.0, 1.0]]] * 2)
    env.step(actions)
    got = env.envs[0].received[-1]
    np.testing.assert_allclose(got["scout"], [2.0, -2.0])  # padded entry not sent
    np.testing.assert_allclose(got["carrier"], [0.0, 0.5, 1.0])
    assert got["carrier"].shape == (3,)


def test_heterogeneous_agent_leaves_then_episode_terminates():
    env = hetero(num_envs=1)
    env.reset()
    res = env.step(env.random_actions())  # t=1
    assert torch.equal(res.reward, torch.tensor([[1.0, 2.0]]))
    res = env.step(env.random_actions())  # t=2: scout terminates, the env goes on
    assert not res.terminated.any() and not res.truncated.any()
    res = env.step(env.random_actions())  # t=3: scout gone -> zero obs / reward, no action
    assert torch.equal(res.reward, torch.tensor([[0.0, 2.0]]))
    assert torch.all(res.next_obs[0, 0] == 0)
    assert set(env.envs[0].received[-1]) == {"carrier"}
    res = env.step(env.random_actions())  # t=4: carrier terminates -> episode terminated
    assert res.terminated.all() and not res.truncated.any()
    assert res.next_obs[0, 1, 1] == 4.0  # true final observation (t=4)
    assert res.obs[0, 1, 1] == 0.0 and res.obs[0, 0, 1] == 0.0  # reset obs (t=0)


def test_heterogeneous_timeout_is_truncation():
    env = hetero(num_envs=1, env_kwargs={"scout_life": 2, "carrier_life": 50, "horizon": 3})
    env.reset()
    env.step(env.random_actions())
    env.step(env.random_actions())
    res = env.step(env.random_actions())  # scout terminated earlier, carrier timed out
    assert res.truncated.all() and not res.terminated.any()
    assert env.spec.max_episode_steps == 0  # the env declares no limit we can read


def test_env_state_used_when_available():
    env = hetero(num_envs=2, env_kwargs={"with_state": True})
    assert env.spec.state_dim == 3
    obs, state = env.reset()
    assert torch.equal(state[:, 0], obs[:, 0, 0])
    assert torch.equal(state[:, 1:], torch.tensor([[0.0, 2.0]] * 2))
    res = env.step(env.random_actions())
    assert torch.equal(res.next_state[:, 1:], torch.tensor([[1.0, 2.0]] * 2))


# ------------------------------------------------------------------ errors


def test_bad_module_or_factory_is_config_error():
    with pytest.raises(ConfigError, match="mpe2.no_such_env_v0.*simple_spread_v3"):
        make_env({**MPE, "env": "mpe2.no_such_env_v0"}, 1, "cpu", 0)
    with pytest.raises(ConfigError, match="no callable 'parallel_env'"):
        make_env({**MPE, "env": "json"}, 1, "cpu", 0)
    with pytest.raises(ConfigError, match="mpe2"):  # MPE moved out of pettingzoo
        make_env({**MPE, "env": "pettingzoo.mpe.simple_spread_v3"}, 1, "cpu", 0)


def test_missing_optional_package_is_backend_missing(monkeypatch):
    import importlib

    def fake_import(name, *args):
        raise ModuleNotFoundError(f"No module named '{name.split('.')[0]}'", name="mpe2")

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(BackendMissing, match=r"pip install 'marl_diff\[mpe\]'"):
        PettingZooEnv(PettingZooEnv.Config(env="mpe2.simple_spread_v3"), 1)


def test_wrong_agent_count_is_config_error():
    with pytest.raises(ConfigError, match="n_agents is 3 but .* created 2 agents"):
        hetero(n_agents=3)
    with pytest.raises(ConfigError, match="env_kwargs.N is 3"):
        make_env(
            {**MPE, "n_agents": 4, "env_kwargs": {"N": 3, "continuous_actions": True}}, 1, "cpu", 0
        )
    env = make_env({**MPE, "n_agents": 2}, 1, "cpu", 0)  # n_agents is passed as N
    assert env.spec.n_agents == 2


def test_discrete_actions_are_config_error():
    with pytest.raises(ConfigError, match="discrete actions arrive in a later release"):
        make_env({**MPE, "env_kwargs": {"continuous_actions": False}}, 1, "cpu", 0)


# ------------------------------------------------------------------ SuperSuit wrappers


def test_unknown_wrapper_lists_allowlist():
    with pytest.raises(ConfigError, match="unknown SuperSuit wrapper 'nope_v0'.*clip_actions_v0"):
        make_env({**MPE, "wrappers": ["nope_v0"]}, 1, "cpu", 0)
    with pytest.raises(ConfigError, match="bad entry"):
        make_env({**MPE, "wrappers": [{"stack_size": 2}]}, 1, "cpu", 0)
    assert "frame_stack_v1" in SUPERSUIT_WRAPPERS


def test_frame_stack_wrapper_stacks_observations():
    plain = make_env(MPE, 1, "cpu", seed=3)
    stacked = make_env(
        {**MPE, "wrappers": [{"name": "frame_stack_v1", "stack_size": 2}]}, 1, "cpu", seed=3
    )
    assert stacked.spec.obs_dims == (36, 36, 36)
    o_plain, _ = plain.reset()
    o_stack, _ = stacked.reset()
    assert torch.equal(o_stack[..., 18:], o_plain)
    actions = plain.random_actions()
    r_plain, r_stack = plain.step(actions), stacked.step(actions)
    assert torch.equal(r_stack.next_obs[..., :18], o_plain)
    assert torch.equal(r_stack.next_obs[..., 18:], r_plain.next_obs)


def test_normalize_obs_wrapper_and_its_config_error():
    env = hetero(num_envs=1, seed=4, wrappers=["normalize_obs_v0"])
    raw = hetero(num_envs=1, seed=4)
    torch.testing.assert_close(env.reset()[0], raw.reset()[0] / 10.0)
    with pytest.raises(ConfigError, match="normalize_obs_v0.*infinite bounds"):
        make_env({**MPE, "wrappers": ["normalize_obs_v0"]}, 1, "cpu", 0)


def test_frame_skip_shortens_the_episode_limit():
    env = make_env({**MPE, "wrappers": [{"name": "frame_skip_v0", "num_frames": 2}]}, 1, "cpu", 0)
    assert env.spec.max_episode_steps == 13
    env.reset()
    ends = [bool(env.step(env.random_actions()).truncated) for _ in range(13)]
    assert ends == [False] * 12 + [True]
