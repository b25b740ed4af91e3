"""`agent.adam_impl`: which of torch's Adam implementations trains an agent. A choice of speed
and float rounding only, so every agent honours it and a resumed run may change it."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_agent

from marl_diff.agents.base import ADAM_IMPLS
from marl_diff.buffer import Batch
from marl_diff.errors import ConfigError

FLAGS = {  # impl -> (foreach, fused) as torch's param groups hold them
    "auto": (None, False),
    "for_loop": (False, False),
    "foreach": (True, False),
    "fused": (False, True),
}


def agent(name: str, impl: str, seed: int = 0):
    return make_tiny_agent(name, seed=seed, adam_impl=impl)


def batch(spec, rows: int = 8) -> Batch:
    g = torch.Generator().manual_seed(1)

    def r(*shape):
        return torch.rand(*shape, generator=g) * 2 - 1

    n, d, a, s = spec.n_agents, spec.obs_dim, spec.act_dim, spec.state_dim
    return Batch(
        r(rows, n, d),
        r(rows, s),
        r(rows, n, a),
        r(rows, n),
        r(rows, n, d),
        r(rows, s),
        torch.zeros(rows),
    )


def test_the_flags_cover_every_choice():
    assert set(FLAGS) == set(ADAM_IMPLS)


@pytest.mark.parametrize("impl", ADAM_IMPLS)
@pytest.mark.parametrize("name", ["gaussian", "ddpl"])
def test_every_optimiser_of_the_agent_uses_the_implementation(name, impl):
    built = agent(name, impl)
    assert {"critic", "actor"} <= set(built.optimizers)
    for optimizer in built.optimizers.values():
        for group in optimizer.param_groups:
            assert (group["foreach"], bool(group["fused"])) == FLAGS[impl]


def test_an_unknown_implementation_names_the_choices():
    with pytest.raises(
        ConfigError, match="adam_impl must be one of auto, for_loop, foreach, fused"
    ):
        agent("gaussian", "apex")


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_the_implementations_take_the_same_steps_to_rounding(impl):
    """Twenty updates from the same start: only float rounding tells them apart."""
    reference, other = agent("gaussian", "for_loop"), agent("gaussian", impl)
    data = batch(reference.spec)
    for step in range(20):
        for learner in (reference, other):
            torch.manual_seed(step)  # the same policy noise for both
            learner.update(data)
    for (key, a), b in zip(
        reference.state_dict().items(), other.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=key)


def test_a_checkpoint_loads_into_another_implementation():
    """The saved optimiser state carries the saving run's flags; the loading agent keeps its
    own implementation and continues from the saved moments."""
    saving = agent("gaussian", "fused")
    data = batch(saving.spec)
    for _ in range(3):
        saving.update(data)
    loading = agent("gaussian", "for_loop", seed=5)
    # a copy, as torch.save and load make it: loaded tensors would otherwise share storage
    loading.load_training_state(copy.deepcopy(saving.training_state()))
    for name, optimizer in loading.optimizers.items():
        group = optimizer.param_groups[0]
        assert (group["foreach"], group["fused"]) == FLAGS["for_loop"], name
        saved = saving.optimizers[name].state_dict()["state"]
        for index, moments in optimizer.state_dict()["state"].items():
            assert torch.equal(moments["exp_avg"], saved[index]["exp_avg"]), name
    for learner in (saving, loading):
        torch.manual_seed(3)
        learner.update(data)
    for a, b in zip(saving.parameters(), loading.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
