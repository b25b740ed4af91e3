"""PettingZoo ParallelEnv backend: MPE simple_spread (mpe2) and a tiny heterogeneous env."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from gymnasium.spaces import Box, Dict, Discrete, MultiBinary, MultiDiscrete
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


def test_unsupported_action_space_is_config_error():
    with pytest.raises(ConfigError, match="MultiDiscrete.*Box, Discrete and MultiBinary"):
        masked(picker_space="multidiscrete")


# ------------------------------------------------------------------ discrete actions, masks


class MaskedEnv(ParallelEnv):
    """'picker': Discrete(3, start) whose unavailable action at step t is t % 3 (mask in its
    observation dict, or in its info with `mask_in="info"`), leaves after `picker_life` steps;
    'mover': Box(-1, 1, (4,)); 'switch': MultiBinary(2). Every agent ends at `horizon`."""

    metadata = {"name": "masked_test_env"}
    render_mode = None

    def __init__(self, mask_in="obs", picker_life=100, horizon=6, start=0, picker_space=""):
        self.possible_agents = ["picker", "mover", "switch"]
        self.agents = []
        self.mask_in, self.picker_life, self.horizon = mask_in, picker_life, horizon
        inner = Box(0, 100, (2,), np.float32)
        mask = Box(0, 1, (3,), np.int8)
        picker_obs = (
            Dict({"observation": inner, "action_mask": mask}) if mask_in == "obs" else inner
        )
        self._obs = {
            "picker": picker_obs,
            "mover": Box(-10, 10, (5,), np.float32),
            "switch": Box(0, 1, (1,), np.float32),
        }
        picker_act = (
            MultiDiscrete([2, 3]) if picker_space == "multidiscrete" else Discrete(3, start=start)
        )
        self._act = {"picker": picker_act, "mover": Box(-1, 1, (4,)), "switch": MultiBinary(2)}
        self.received: list[dict] = []
        self.t = 0

    def observation_space(self, agent):
        return self._obs[agent]

    def action_space(self, agent):
        return self._act[agent]

    def _mask(self):
        mask = np.ones(3, np.int8)
        mask[self.t % 3] = 0
        return mask

    def _observe(self):
        obs = {
            "picker": np.array([self.t, 1.0], np.float32),
            "mover": np.full(5, self.t, np.float32),
            "switch": np.ones(1, np.float32),
        }
        if self.mask_in == "obs":
            obs["picker"] = {"observation": obs["picker"], "action_mask": self._mask()}
        infos = {a: {} for a in self.agents}
        if self.mask_in == "info" and "picker" in infos:
            infos["picker"]["action_mask"] = self._mask()
        return {a: obs[a] for a in self.agents}, infos

    def reset(self, seed=None, options=None):
        self.t = 0
        self.agents = list(self.possible_agents)
        return self._observe()

    def step(self, actions):
        self.received.append(dict(actions))
        self.t += 1
        rew = dict.fromkeys(self.agents, 1.0)
        term = {a: a == "picker" and self.t >= self.picker_life for a in self.agents}
        trunc = {a: self.t >= self.horizon for a in self.agents}
        self.agents = [a for a in self.agents if not (term[a] or trunc[a])]
        obs, infos = self._observe()
        return obs, rew, term, trunc, infos


def masked_env(**kwargs):
    return MaskedEnv(**kwargs)


def masked(num_envs=1, seed=0, **env_kwargs):
    cfg = {
        "name": "masked",
        "backend": "pettingzoo",
        "env": f"{__name__}:masked_env",
        "n_agents_kwarg": "",
        "env_kwargs": env_kwargs,
    }
    return make_env(cfg, num_envs=num_envs, device="cpu", seed=seed)


def test_mixed_box_discrete_multibinary_spec():
    env = masked(num_envs=2)
    spec = env.spec
    assert spec.agent_names == ("picker", "mover", "switch")
    assert spec.obs_dims == (2, 5, 1)  # the dict observation contributes its "observation" part
    assert spec.act_dims == (3, 4, 2) and not spec.homogeneous
    assert torch.equal(spec.act_low, -torch.ones(3, 4))  # relaxed discrete: no scaling
    assert torch.equal(spec.act_high, torch.ones(3, 4))
    obs, _ = env.reset()
    assert obs.shape == (2, 3, 5)
    assert torch.equal(obs[0, 0], torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]))
    assert torch.equal(obs[0, 2], torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]))
    actions = torch.zeros(2, 3, 4)
    actions[:, 0, :3] = torch.tensor([-0.5, 0.9, 0.2])  # picker: action 1 (0 is unavailable)
    actions[:, 1] = torch.tensor([0.1, -0.2, 0.3, 1.0])
    actions[:, 2, :2] = torch.tensor([0.4, -0.4])
    env.step(actions)
    got = env.envs[1].received[-1]
    assert got["picker"] == 1 and isinstance(got["picker"], np.integer)
    np.testing.assert_allclose(got["mover"], [0.1, -0.2, 0.3, 1.0], rtol=1e-6)
    assert got["mover"].shape == (4,)
    np.testing.assert_array_equal(got["switch"], [1, 0])
    assert env.envs[1].action_space("switch").contains(got["switch"])


@pytest.mark.parametrize("mask_in", ["obs", "info"])
def test_best_unavailable_action_is_never_taken(mask_in):
    env = masked(num_envs=3, mask_in=mask_in, horizon=50)
    env.reset()
    gen = torch.Generator().manual_seed(0)
    for t in range(12):
        blocked = t % 3  # the mask that came with the observation acted on now
        available = env.avail_actions
        expected_mask = torch.ones(3, dtype=torch.bool)
        expected_mask[blocked] = False
        assert torch.equal(available[:, 0, :3], expected_mask.expand(3, 3))
        assert available[:, 1].all() and torch.equal(
            available[0, 2], torch.tensor([1, 1, 0, 0]).bool()
        )
        actions = env.random_actions(gen) * 0.9
        actions[:, 0, blocked] = 1.0  # the unavailable action scores highest
        env.step(actions)
        for k, copy in enumerate(env.envs):
            taken = int(copy.received[-1]["picker"])
            scores = actions[k, 0, :3].clone()
            scores[blocked] = -float("inf")
            assert taken != blocked and taken == int(scores.argmax())


def test_discrete_start_offset_and_no_mask_in_obs_space():
    env = masked(mask_in="none", start=5)
    env.reset()
    assert env.avail_actions[0, 0, :3].all()  # no mask anywhere: all available
    actions = torch.zeros(1, 3, 4)
    actions[0, 0, :3] = torch.tensor([0.0, 0.0, 0.5])
    env.step(actions)
    assert env.envs[0].received[-1]["picker"] == 7


def test_alive_mask_marks_agents_that_left():
    env = masked(num_envs=2, picker_life=2, horizon=4)
    env.reset()
    alive = [env.step(env.random_actions()).info["alive"] for _ in range(4)]
    assert all(a.shape == (2, 3) and a.dtype == torch.float32 for a in alive)
    assert torch.equal(alive[0], torch.ones(2, 3)) and torch.equal(alive[1], torch.ones(2, 3))
    assert torch.equal(alive[2], torch.tensor([[0.0, 1.0, 1.0]] * 2))  # picker left at t=2
    assert set(env.envs[0].received[2]) == {"mover", "switch"}
    res = alive[3]
    assert torch.equal(res, torch.tensor([[0.0, 1.0, 1.0]] * 2))
    # the episode ended (horizon) and auto-reset: everyone acts again
    assert torch.equal(env.step(env.random_actions()).info["alive"], torch.ones(2, 3))


def test_hetero_alive_and_zero_rows_agree():
    env = hetero(num_envs=1)
    env.reset()
    env.step(env.random_actions())
    env.step(env.random_actions())  # scout terminates at t=2
    res = env.step(env.random_actions())
    assert torch.equal(res.info["alive"], torch.tensor([[0.0, 1.0]]))
    assert torch.equal(res.reward * (1 - res.info["alive"]), torch.zeros(1, 2))


def test_mpe_discrete_actions_match_raw_env():
    seed, B = 3, 2
    kwargs = {"continuous_actions": False, "max_cycles": 25}
    env = make_env({**MPE, "env_kwargs": kwargs}, num_envs=B, device="cpu", seed=seed)
    assert env.spec.act_dims == (5, 5, 5)
    assert torch.equal(env.spec.act_low, -torch.ones(3, 5))
    raw = [simple_spread_v3.parallel_env(N=3, **kwargs) for _ in range(B)]
    agents = raw[0].possible_agents
    obs, _ = env.reset()
    raw_obs = [r.reset(seed=seed + k)[0] for k, r in enumerate(raw)]
    assert torch.equal(obs[1, 2], torch.from_numpy(raw_obs[1]["agent_2"]))
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        actions = env.random_actions(gen)
        res = env.step(actions)
        choice = actions.argmax(-1)
        outs = [
            r.step({a: int(choice[k, i]) for i, a in enumerate(agents)}) for k, r in enumerate(raw)
        ]
        for k, (o, rew, *_) in enumerate(outs):
            for i, a in enumerate(agents):
                assert torch.equal(res.next_obs[k, i], torch.from_numpy(o[a]))
                assert res.reward[k, i] == np.float32(rew[a])
        assert torch.equal(res.info["alive"], torch.ones(B, 3))
    assert res.truncated.all()


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


@pytest.mark.parametrize(
    "source",
    ["from marl_diff.nonexistent import Thing", "from marl_diff.errors import NoSuchError"],
    ids=["missing-project-module", "missing-project-name"],
)
def test_project_import_error_in_env_module_propagates(tmp_path, monkeypatch, source):
    """A bug inside marl_diff hit while importing scenario.env is neither BackendMissing ("needs
    the package 'marl_diff'") nor a ConfigError: the ImportError propagates."""
    module = "marl_diff_fake_pz_env"
    (tmp_path / f"{module}.py").write_text(f"{source}\n\ndef parallel_env(**kwargs):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as info:  # BackendMissing, ConfigError: not ImportErrors
        PettingZooEnv(PettingZooEnv.Config(env=module), 1)
    assert info.value.name.startswith("marl_diff.")


def test_absent_dependency_of_env_module_is_backend_missing(tmp_path, monkeypatch):
    module = "marl_diff_fake_pz_env_dep"
    (tmp_path / f"{module}.py").write_text("import marl_diff_absent_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendMissing, match="needs the package 'marl_diff_absent_package_xyz'"):
        PettingZooEnv(PettingZooEnv.Config(env=module), 1)
