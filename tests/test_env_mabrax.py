"""Multi-agent Brax backend (jaxmarl MABrax): every YAML builds its spec (-m slow for all but
the hopper), one task (the cheapest to compile, hopper_3x1) steps: shapes, padding,
truncation, same-step auto-reset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

# Skip only when a package is genuinely absent (CI=true fails even that, see conftest.py);
# jaxmarl's MABRAX_AVAILABLE is False on *any* import error, so it is not the test here.
pytest.importorskip("jaxmarl")
pytest.importorskip("brax")

from marl_diff.envs import make_env  # noqa: E402
from marl_diff.errors import ConfigError  # noqa: E402

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
MABRAX_YAMLS = {
    "mabrax_ant_4x2": (4, 2),
    "mabrax_halfcheetah_6x1": (6, 1),
    "mabrax_walker2d_2x3": (2, 3),
    "mabrax_hopper_3x1": (3, 1),
    "mabrax_humanoid_9_8": (2, 9),
}
LIMIT = 3


def load(stem: str, **overrides) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(SCENARIOS / f"{stem}.yaml"), resolve=True)
    cfg.update(overrides)
    return cfg


# Loading a Brax system takes seconds per task on a busy CPU: the hopper runs by default, the
# other tasks with -m slow (test_catalog checks every YAML's keys either way).
@pytest.mark.parametrize(
    "stem",
    [
        s if s == "mabrax_hopper_3x1" else pytest.param(s, marks=pytest.mark.slow)
        for s in MABRAX_YAMLS
    ],
)
def test_yaml_builds_spec(stem):
    env = make_env(load(stem), 2, "cpu", 0)  # builds the Brax system; compiles nothing yet
    n_agents, act_width = MABRAX_YAMLS[stem]
    assert env.spec.n_agents == n_agents and env.spec.act_dim == act_width
    assert env.spec.max_episode_steps == 1000


def test_unknown_task():
    with pytest.raises(ConfigError, match="hopper_3x1"):
        make_env(load("mabrax_hopper_3x1", task="octopus_8x1"), 2, "cpu", 0)


def test_hopper_steps_truncates_and_resets():
    env = make_env(load("mabrax_hopper_3x1", max_steps=LIMIT), 2, "cpu", 0)
    spec = env.spec
    assert spec.obs_dims == (8, 9, 8) and spec.state_dim == 11
    obs, state = env.reset(seed=0)
    assert obs.shape == (2, 3, 9) and state.shape == (2, 11) and obs.dtype == torch.float32
    assert (obs[:, 0, 8] == 0).all() and (obs[:, 2, 8] == 0).all()  # padding stays zero
    zeros = torch.zeros(2, 3, 1)
    for t in range(1, LIMIT + 1):
        result = env.step(zeros)
        assert result.reward.shape == (2, 3) and torch.isfinite(result.reward).all()
        assert not (result.terminated & result.truncated).any()
        if t < LIMIT:
            assert not result.truncated.any()
            assert torch.equal(result.obs, result.next_obs)
    assert result.truncated.all() and not result.terminated.any()
    assert not torch.equal(result.state, result.next_state)  # next episode already started
    env.close()


# ------------------------------------------------------------------ missing vs broken brax
@pytest.fixture
def mabrax_import_fails(monkeypatch):
    """mabrax_import_fails(err): jaxmarl says MABrax is unavailable (as it does on any import
    error) and importing its MABrax module raises `err`."""
    import importlib

    import jaxmarl

    real_import = importlib.import_module

    def install(err: ImportError) -> None:
        def fake_import(name, *args, **kwargs):
            if name == "jaxmarl.environments.mabrax":
                raise err
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(jaxmarl.environments, "MABRAX_AVAILABLE", False)
        monkeypatch.setattr(importlib, "import_module", fake_import)

    return install


def test_missing_brax_is_backend_missing(mabrax_import_fails):
    from marl_diff.errors import BackendMissing

    mabrax_import_fails(ModuleNotFoundError("No module named 'brax'", name="brax"))
    with pytest.raises(BackendMissing, match=r"needs brax.*pip install 'marl_diff\[smax\]'"):
        make_env(load("mabrax_hopper_3x1"), 1, "cpu", 0)


@pytest.mark.parametrize(
    "err",
    [
        ImportError("cannot import name 'State' from 'brax.envs'", name="brax.envs"),
        ModuleNotFoundError("No module named 'brax.no_such_module'", name="brax.no_such_module"),
        ModuleNotFoundError(
            "No module named 'marl_diff.nonexistent'", name="marl_diff.nonexistent"
        ),
    ],
    ids=["name-missing-from-brax", "brax-submodule-missing", "marl_diff-bug"],
)
def test_broken_brax_install_is_not_reported_as_missing(mabrax_import_fails, err):
    mabrax_import_fails(err)
    with pytest.raises(ImportError) as info:  # BackendMissing is not an ImportError
        make_env(load("mabrax_hopper_3x1"), 1, "cpu", 0)
    assert info.value is err
