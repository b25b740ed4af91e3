"""Isaac Lab backend: the adapter's conversion logic against an in-repo env that follows the
documented DirectMARLEnv interface (tests/fake_marl_env.py), the overrides helper, and the clean
error when Isaac Sim / Isaac Lab are not installed (they never are in CI)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fake_marl_env import FakeMARLEnv
from omegaconf import OmegaConf

from marl_diff.envs import backend_class, make_env
from marl_diff.envs.isaaclab import (
    IsaacLabConfig,
    IsaacLabEnv,
    apply_overrides,
    missing_modules,
)
from marl_diff.errors import BackendMissing, ConfigError

ROOT = Path(__file__).resolve().parents[1]
B = 4


def wrap(**kwargs) -> tuple[IsaacLabEnv, FakeMARLEnv]:
    fake = FakeMARLEnv(num_envs=B, **kwargs)
    return IsaacLabEnv.from_marl_env(fake), fake


def actions(cart: float = 0.0, pend=(0.0, 0.0), width: int = 2) -> torch.Tensor:
    """[B, 2, width] normalised actions; the cart's padded entry is set to junk on purpose."""
    a = torch.zeros(B, 2, width)
    a[:, 0, 0] = cart
    a[:, 0, 1:] = 0.77  # padding: must never reach the env
    a[:, 1, : len(pend)] = torch.tensor(pend)
    return a


# ---------------------------------------------------------------------------- spec and reset
def test_spec_from_the_agent_spaces():
    env, _ = wrap()
    spec = env.spec
    assert spec.agent_names == ("cart", "pendulum")
    assert spec.obs_dims == (4, 3) and spec.act_dims == (1, 2)
    assert spec.state_dim == 7 and spec.max_episode_steps == 5
    assert not spec.homogeneous
    # unbounded cart (an Isaac Lab int spec) passes [-1, 1] through; padding is -1 / 1
    assert torch.equal(spec.act_low, torch.tensor([[-1.0, -1.0], [-2.0, 0.0]]))
    assert torch.equal(spec.act_high, torch.tensor([[1.0, 1.0], [2.0, 5.0]]))
    assert env.device == torch.device("cpu") and env.num_envs == B


def test_reset_pads_stacks_and_passes_the_seed():
    env, fake = wrap()
    obs, state = env.reset(seed=3)
    assert fake.reset_calls == [3]
    assert obs.shape == (B, 2, 4) and obs.dtype == torch.float32
    assert state.shape == (B, 7) and state.dtype == torch.float32
    assert torch.all(obs[:, 1, 3] == 0)  # the pendulum's padded entry
    assert torch.all(state[:, 6] == 1)  # the env's own state(), not the observations


def test_state_is_concatenated_observations_when_the_task_says_so():
    env, fake = wrap(state_space=-1)
    assert env.spec.state_dim == 7
    obs, state = env.reset()
    res = env.step(actions(0.5, (0.5, 0.5)))
    assert torch.equal(res.state, torch.cat([res.obs[:, 0, :4], res.obs[:, 1, :3]], -1))
    assert torch.equal(res.state, fake.state())


# ---------------------------------------------------------------------------- actions
def test_actions_are_scaled_to_each_agents_bounds():
    env, fake = wrap()
    env.reset()
    env.step(actions(0.25, (0.0, 0.0)))
    assert torch.allclose(fake.last_actions["cart"], torch.full((B, 1), 0.25))  # unbounded
    assert torch.allclose(fake.last_actions["pendulum"], torch.tensor([0.0, 2.5]).expand(B, 2))
    env.step(actions(1.0, (-1.0, 1.0)))
    assert torch.allclose(fake.last_actions["pendulum"], torch.tensor([-2.0, 5.0]).expand(B, 2))
    env.step(actions(9.0, (7.0, -7.0)))  # out of range: clamped, still within the bounds
    assert torch.allclose(fake.last_actions["cart"], torch.ones(B, 1))
    assert torch.allclose(fake.last_actions["pendulum"], torch.tensor([2.0, 0.0]).expand(B, 2))


def test_discrete_agent_through_the_logit_relaxation():
    env, fake = wrap(discrete=True)
    assert env.spec.act_dims == (1, 3)
    assert torch.equal(env.spec.act_low[1], -torch.ones(3))
    env.reset()
    scores = torch.zeros(B, 2, 3)
    scores[:, 1] = torch.tensor([-0.5, 0.1, 0.9])  # best: index 2 -> action 2 + start(-1) = 1
    scores[0, 1] = torch.tensor([0.9, -1.0, 0.0])  # env 0: index 0 -> action -1
    env.step(scores)
    sent = fake.last_actions["pendulum"]
    assert sent.dtype == torch.int64 and sent.shape == (B, 1)
    assert sent[:, 0].tolist() == [-1, 1, 1, 1]
    assert fake.theta.tolist() == [-1.0, 1.0, 1.0, 1.0]


# ---------------------------------------------------------------------------- step results
def test_rewards_are_stacked_in_agent_order():
    env, fake = wrap()
    env.reset()
    res = env.step(actions(0.5, (0.5, 0.0)))  # x = 0.5, theta = 1.0
    assert res.reward.shape == (B, 2) and res.reward.dtype == torch.float32
    assert torch.allclose(res.reward[:, 0], torch.full((B,), 0.5))  # cart: x
    assert torch.allclose(res.reward[:, 1], torch.full((B,), 11.0))  # pendulum: 10 + theta
    assert res.terminated.dtype == torch.bool and res.truncated.dtype == torch.bool
    assert not res.terminated.any() and not res.truncated.any()
    assert torch.equal(res.next_obs, res.obs) and torch.equal(res.next_state, res.state)


def test_time_out_is_truncation_and_next_obs_is_the_reset_obs_without_final_obs():
    env, fake = wrap()
    env.reset()
    for t in range(1, 5):
        res = env.step(actions(0.0, (0.0, 0.0)))
        assert not res.truncated.any() and res.obs[0, 0, 2] == t
    res = env.step(actions(0.0, (0.0, 0.0)))
    assert res.truncated.all() and not res.terminated.any()
    assert torch.all(res.obs[:, 0, 2] == 0) and torch.all(res.obs[:, 0, 3] == 1)  # reset
    # Isaac Lab without compute_final_obs: the final observation is gone (documented)
    assert torch.equal(res.next_obs, res.obs) and torch.equal(res.next_state, res.state)
    assert not env.final_obs_available


@pytest.mark.parametrize("state_space", [7, -1])
def test_final_obs_from_extras_becomes_next_obs(state_space):
    env, fake = wrap(compute_final_obs=True, state_space=state_space)
    env.reset()
    for _ in range(4):
        env.step(actions(0.0, (0.5, 0.0)))
    res = env.step(actions(0.0, (0.5, 0.0)))
    assert res.truncated.all() and env.final_obs_available
    assert torch.all(res.next_obs[:, 0, 2] == 5) and torch.all(res.next_obs[:, 1, 0] == 5.0)
    assert torch.all(res.obs[:, 0, 2] == 0) and torch.all(res.obs[:, 1, 0] == 0.0)
    assert torch.all(res.next_obs[:, 1, 3] == 0)  # padding stays zero
    if state_space < 0:  # state = concatenated observations: rebuilt from the final ones
        assert torch.equal(
            res.next_state, torch.cat([res.next_obs[:, 0, :4], res.next_obs[:, 1, :3]], -1)
        )
    else:  # the task's own state is only available after the reset
        assert torch.equal(res.next_state, res.state)
    assert "final_obs" not in res.info


def test_termination_resets_only_that_env():
    env, fake = wrap(compute_final_obs=True)
    env.reset()
    push = actions(0.0, (0.0, 0.0))
    push[0, 0, 0] = 1.0  # env 0 accelerates: x = 1, 3, 6 (> 3 terminates)
    for _ in range(2):
        res = env.step(push)
        assert not res.terminated.any()
    res = env.step(push)
    assert res.terminated.tolist() == [True, False, False, False]
    assert not res.truncated.any()
    assert res.reward[0, 0] == 6.0  # the reward of the final transition
    assert res.next_obs[0, 0, 0] == 6.0 and res.obs[0, 0, 0] == 0.0
    assert res.obs[0, 0, 3] == 1 and torch.all(res.obs[1:, 0, 3] == 0)
    assert torch.equal(res.next_obs[1:], res.obs[1:])
    assert res.state[0, 0] == 0 and res.state[0, 5] == 1  # env 0's state is the reset one


def test_env_is_done_only_when_all_agents_terminated():
    env, fake = wrap()
    env.reset()
    res = env.step(actions(0.0, (1.0, 0.0)))  # theta = 2
    res = env.step(actions(0.0, (1.0, 0.0)))  # theta = 4: only the pendulum agent terminates
    assert not res.terminated.any() and not res.truncated.any()
    assert torch.all(res.obs[:, 1, 0] == 4.0)  # not reset


def test_info_collects_per_env_extras():
    env, _ = wrap(compute_final_obs=True)
    env.reset()
    res = env.step(actions(0.5, (0.0, 0.0)))
    assert set(res.info) == {"x_at_step"}  # "log" scalars and final_obs are left out
    assert res.info["x_at_step"].shape == (B, 2)
    assert res.info["x_at_step"].dtype == torch.float32


def test_many_steps_with_random_actions_keep_shapes():
    env, _ = wrap(compute_final_obs=True)
    obs, state = env.reset()
    gen = torch.Generator().manual_seed(0)
    dones = 0
    for _ in range(30):
        res = env.step(env.random_actions(gen))
        assert res.obs.shape == obs.shape and res.next_obs.shape == obs.shape
        assert res.state.shape == state.shape and res.next_state.shape == state.shape
        assert res.reward.shape == (B, 2) and res.terminated.shape == (B,)
        assert not (res.terminated & res.truncated).any()
        assert torch.all(res.obs[:, 1, 3] == 0) and torch.all(res.next_obs[:, 1, 3] == 0)
        dones += int((res.terminated | res.truncated).sum())
    assert dones > 0


def test_missing_agent_gets_zero_observation_and_reward():
    class OneLeaves(FakeMARLEnv):
        def step(self, actions):
            obs, rewards, terminated, time_outs, extras = super().step(actions)
            obs = {"cart": obs["cart"]}
            rewards = {"cart": rewards["cart"]}
            return obs, rewards, terminated, time_outs, extras

    env = IsaacLabEnv.from_marl_env(OneLeaves(num_envs=B, state_space=-1))
    env.reset()
    res = env.step(actions(0.5))
    assert torch.all(res.obs[:, 1] == 0) and torch.all(res.reward[:, 1] == 0)
    assert torch.all(res.obs[:, 0, 0] == 0.5)


def test_wrapped_env_steps_through_the_wrapper_and_reads_the_unwrapped():
    class Wrapper:
        def __init__(self, env):
            self.inner = env
            self.steps = 0

        @property
        def unwrapped(self):
            return self.inner

        def reset(self, seed=None, options=None):
            return self.inner.reset(seed=seed, options=options)

        def step(self, action):
            self.steps += 1
            return self.inner.step(action)

        def close(self):
            self.inner.close()

    fake = FakeMARLEnv(num_envs=B)
    wrapper = Wrapper(fake)
    env = IsaacLabEnv.from_marl_env(wrapper, IsaacLabConfig(task="Fake-v0"), device="cpu")
    env.reset()
    env.step(actions())
    assert wrapper.steps == 1 and env.spec.obs_dims == (4, 3)
    env.close()
    assert fake.closed


# ---------------------------------------------------------------------------- config
def test_apply_overrides_by_attribute_path():
    cfg = SimpleNamespace(
        episode_length_s=5.0,
        scene=SimpleNamespace(num_envs=8, env_spacing=4.0),
        sim=SimpleNamespace(dt=0.01, physx=SimpleNamespace(solver=1)),
        rew_scales={"alive": 1.0},
    )
    apply_overrides(
        cfg,
        {
            "episode_length_s": 2.0,
            "scene.env_spacing": 6.0,
            "sim": {"dt": 0.005, "physx": {"solver": 2}},
            "rew_scales.alive": 3.0,
        },
    )
    assert cfg.episode_length_s == 2.0 and cfg.scene.env_spacing == 6.0
    assert cfg.sim.dt == 0.005 and cfg.sim.physx.solver == 2 and cfg.scene.num_envs == 8
    assert cfg.rew_scales == {"alive": 3.0}
    with pytest.raises(ConfigError, match="scene.nope"):
        apply_overrides(cfg, {"scene.nope": 1}, "Isaac-X-v0")


@pytest.mark.parametrize(
    "stem, task",
    [
        ("isaaclab", None),
        ("isaaclab_cart_double_pendulum", "Isaac-Cart-Double-Pendulum-Direct-v0"),
        ("isaaclab_shadow_hand_over", "Isaac-Shadow-Hand-Over-Direct-v0"),
    ],
)
def test_yamls_validate(stem, task):
    from marl_diff.typed_config import to_dataclass

    node = OmegaConf.load(ROOT / "scenarios" / f"{stem}.yaml")
    cfg = to_dataclass(node, backend_class("isaaclab").Config, "scenario")
    assert cfg.backend == "isaaclab" and cfg.headless is True and cfg.max_steps == 0
    if task is not None:
        assert cfg.task == task


# ---------------------------------------------------------------------------- not installed
needs_missing = pytest.mark.skipif(
    not missing_modules(), reason="Isaac Sim / Isaac Lab are installed here"
)


@needs_missing
def test_make_env_without_isaaclab_raises_backend_missing_with_install_hint():
    node = OmegaConf.load(ROOT / "scenarios" / "isaaclab_cart_double_pendulum.yaml")
    with pytest.raises(BackendMissing) as info:
        make_env(node, 2, "cpu", 0)
    message = str(info.value)
    assert "Isaac Lab" in message and "Isaac Sim" in message
    assert "--extra-index-url https://pypi.nvidia.com" in message
    assert "pip install" in message and "isaaclab" in message
    assert "\n" not in message


@needs_missing
@pytest.mark.parametrize(
    "args",
    [
        ["scenario=isaaclab_cart_double_pendulum", "agent=gaussian"],
        ["scenario=isaaclab", "scenario.task=Isaac-Shadow-Hand-Over-Direct-v0", "agent=gaussian"],
    ],
)
def test_cli_reports_missing_isaaclab_cleanly(run_main, tmp_path, args):
    proc = run_main([*args, "device=cpu"], tmp_path)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Isaac Lab" in errors[0] and "pip install" in errors[0]
    assert "pypi.nvidia.com" in errors[0]


# ---------------------------------------------------------------------------- constructor path
@pytest.fixture
def fake_isaaclab(monkeypatch):
    """Stand-in isaacsim / isaaclab / isaaclab_tasks modules and gym.make; returns a call log."""
    import importlib.machinery
    import math
    import sys
    import types

    import gymnasium

    import marl_diff.envs.isaaclab as backend

    calls: list = []

    class AppLauncher:
        def __init__(self, **kwargs):
            calls.append(("app", kwargs))
            self.app = object()

    def parse_env_cfg(task, device="cuda:0", num_envs=None):
        calls.append(("parse", task, device, num_envs))
        if task != "Isaac-Fake-Direct-v0":
            raise gymnasium.error.NameNotFound(f"Environment {task} doesn't exist.")
        return SimpleNamespace(
            seed=None,
            decimation=2,
            episode_length_s=5.0,
            sim=SimpleNamespace(dt=1 / 120, device=device),
            scene=SimpleNamespace(num_envs=num_envs, env_spacing=4.0),
            compute_final_obs=False,
            state_space=7,
        )

    def make(task, cfg):
        calls.append(("make", task, cfg))
        steps = math.ceil(cfg.episode_length_s / (cfg.sim.dt * cfg.decimation))
        fake = FakeMARLEnv(
            num_envs=cfg.scene.num_envs,
            max_episode_length=steps,
            compute_final_obs=cfg.compute_final_obs,
        )
        return fake

    modules = {
        "isaacsim": {},
        "isaaclab": {},
        "isaaclab.app": {"AppLauncher": AppLauncher},
        "isaaclab.envs": {"DirectMARLEnv": FakeMARLEnv},
        "isaaclab_tasks": {},
        "isaaclab_tasks.utils": {"parse_env_cfg": parse_env_cfg},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(gymnasium, "make", make)
    monkeypatch.setattr(backend, "_APP", [])
    monkeypatch.setattr(backend, "_LIVE", [])
    return calls


def test_constructor_launches_the_app_first_and_builds_the_task(fake_isaaclab):
    cfg = {
        "name": "t",
        "backend": "isaaclab",
        "task": "Isaac-Fake-Direct-v0",
        "max_steps": 7,
        "env_cfg_overrides": {"scene.env_spacing": 6.0},
    }
    env = make_env(cfg, 3, "cpu", 11)
    kinds = [c[0] for c in fake_isaaclab]
    assert kinds == ["app", "parse", "make"]
    assert fake_isaaclab[0][1] == {"headless": True, "device": "cpu"}
    assert fake_isaaclab[1][1:] == ("Isaac-Fake-Direct-v0", "cpu", 3)
    env_cfg = fake_isaaclab[2][2]
    assert env_cfg.seed == 11 and env_cfg.scene.env_spacing == 6.0
    assert env_cfg.compute_final_obs is True  # switched on where the field exists
    assert env.spec.max_episode_steps == 7 and env.num_envs == 3
    obs, state = env.reset()
    assert obs.shape == (3, 2, 4) and state.shape == (3, 7)

    # one Isaac Lab simulation per process: a second env is refused until the first closes
    with pytest.raises(ConfigError, match="one simulation per process"):
        make_env(cfg, 3, "cpu", 12)
    env.close()
    again = make_env(cfg, 2, "cpu", 12)
    assert [c[0] for c in fake_isaaclab].count("app") == 1  # the app is launched once
    again.close()


def test_constructor_reports_unknown_task_and_bad_override(fake_isaaclab):
    base = {"name": "t", "backend": "isaaclab"}
    with pytest.raises(ConfigError, match="Isaac-Nope-v0"):
        make_env({**base, "task": "Isaac-Nope-v0"}, 2, "cpu", 0)
    with pytest.raises(ConfigError, match="scene.bogus"):
        make_env(
            {**base, "task": "Isaac-Fake-Direct-v0", "env_cfg_overrides": {"scene.bogus": 1}},
            2,
            "cpu",
            0,
        )


def test_broken_isaaclab_install_is_not_reported_as_missing(fake_isaaclab, monkeypatch):
    import sys

    # installed (found), but a name is missing: a broken install, the ImportError propagates
    monkeypatch.delattr(sys.modules["isaaclab.envs"], "DirectMARLEnv")
    cfg = {"name": "t", "backend": "isaaclab", "task": "Isaac-Fake-Direct-v0"}
    with pytest.raises(ImportError, match="DirectMARLEnv"):  # BackendMissing is no ImportError
        make_env(cfg, 2, "cpu", 0)


def test_absent_package_needed_by_isaaclab_is_backend_missing(fake_isaaclab, monkeypatch):
    import sys

    def missing(name):
        raise ModuleNotFoundError("No module named 'omni_absent_xyz'", name="omni_absent_xyz")

    monkeypatch.setattr(sys.modules["isaaclab.app"], "__getattr__", missing, raising=False)
    monkeypatch.delattr(sys.modules["isaaclab.app"], "AppLauncher")
    cfg = {"name": "t", "backend": "isaaclab", "task": "Isaac-Fake-Direct-v0"}
    with pytest.raises(BackendMissing, match="cannot import: omni_absent_xyz"):
        make_env(cfg, 2, "cpu", 0)
