"""`agent.compile_update`: each loss with its gradients, clips and Adam steps as one
torch.compile graph, and every other optimiser step as a graph of its own. The same update
rule, so from one state, batch and random draws the compiled update lands where the eager one
does, to float rounding."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_agent
from test_adam_impl import batch

from marl_diff.nn import compiler_available

needs_compiler = pytest.mark.skipif(
    not compiler_available(), reason="torch.compile needs a C++ compiler, none on this machine"
)

# MASAC's loss (one Q at the fresh joint action), a clipped gradient and a tuned temperature:
# every optimiser and both losses of the Gaussian agent (ddpl: its temperature and jitter too).
SETTINGS = {"others_actions": "policy", "grad_clip": 0.5, "auto_alpha": True}
# Triton's kernels on a GPU may sum in another order than cuBLAS and eager: a looser match.
TOLERANCE = {"cpu": {"rtol": 1e-5, "atol": 1e-6}, "cuda": {"rtol": 1e-4, "atol": 1e-5}}
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    ),
]


def tiny_agent(compile_update: bool, device: str = "cpu", algorithm: str = "gaussian", **overrides):
    """Two agents of `algorithm` at the suite's tiny settings with SETTINGS and `overrides` on
    top."""
    settings = {**SETTINGS, "compile_update": compile_update, **overrides}
    return make_tiny_agent(algorithm, device, **settings)


def updated(agent, updates: int = 3) -> list[dict]:
    """Metrics of `updates` updates on one batch, drawing the same random numbers whatever
    ran them (inductor's own generator would draw others)."""
    torch.manual_seed(1)
    data = batch(agent.spec, rows=16).map(lambda field: field.to(agent.device))
    with torch._inductor.config.patch(fallback_random=True):
        return [agent.update(data) for _ in range(updates)]


# What each agent compiles: the Gaussian's two losses, each with its steps; ddpl's critic loss
# and its actor's score-matching loss, each with its step, and its temperature's and jitter's
# losses with both their steps.
COMPILED = {
    "gaussian": {"critic_loss", "actor_loss"},
    "ddpl": {"critic_loss", "fit_loss", "entropy_loss"},
}


@needs_compiler
@pytest.mark.parametrize("algorithm", sorted(COMPILED))
@pytest.mark.parametrize("device", DEVICES)
def test_the_compiled_update_lands_where_the_eager_one_does(device, algorithm):
    compiled, eager = (tiny_agent(flag, device, algorithm=algorithm) for flag in (True, False))
    compiled_metrics, eager_metrics = updated(compiled), updated(eager)
    assert set(compiled._compiled_functions) == COMPILED[algorithm]
    for got, want in zip(compiled_metrics, eager_metrics, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], **TOLERANCE[device])
    moved = False
    start = tiny_agent(False, device, algorithm=algorithm).state_dict()
    for key, want in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], want, **TOLERANCE[device])
        moved |= not torch.equal(want, start[key])
    assert moved  # the updates changed the parameters, so the comparison says something
    for name, optimizer in eager.optimizers.items():
        for want, got in zip(
            optimizer.state.values(), compiled.optimizers[name].state.values(), strict=True
        ):
            rtol = TOLERANCE[device]["rtol"]
            torch.testing.assert_close(got["exp_avg"], want["exp_avg"], rtol=rtol, atol=rtol / 100)


@needs_compiler
@pytest.mark.parametrize("algorithm", ["ddpl", "dacer"])
def test_a_diffusion_agents_compiled_losses_trace_without_graph_breaks(algorithm):
    """The target actions are drawn before the compiled critic loss, so it does not trace into
    the sampled chain, whose context managers would break its graph into pieces."""
    torch._dynamo.utils.counters.clear()
    updated(tiny_agent(True, algorithm=algorithm))
    assert not torch._dynamo.utils.counters["graph_break"]


def test_eager_by_default_and_without_a_compiler(monkeypatch):
    agent = tiny_agent(False)
    updated(agent, updates=1)
    assert agent._compiled_functions == {}

    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.warns(UserWarning, match="C.. compiler"):
        agent = tiny_agent(True)
        updated(agent, updates=1)
    assert agent._compiled_functions == {}


@needs_compiler
def test_a_compiled_agent_resumes_an_eager_checkpoint_where_eager_goes_on():
    """The compiled steps read the optimisers' loaded state (moments and step counts), so a
    run resumed with the switch continues as the eager run does."""
    eager = tiny_agent(False)
    updated(eager, updates=2)
    resumed = tiny_agent(True)
    # a copy, as a checkpoint on disk is: Adam's load_state_dict keeps the tensors it is given
    resumed.load_training_state(copy.deepcopy(eager.training_state()))
    for got, want in zip(updated(resumed, updates=2), updated(eager, updates=2), strict=True):
        for key in want:
            torch.testing.assert_close(got[key], want[key], **TOLERANCE["cpu"])
    for name, optimizer in eager.optimizers.items():
        for want, got in zip(
            optimizer.state.values(), resumed.optimizers[name].state.values(), strict=True
        ):
            assert got["step"].item() == want["step"].item() == 4
            torch.testing.assert_close(got["exp_avg_sq"], want["exp_avg_sq"], rtol=1e-5, atol=0)


def _rounded_to_bfloat16(value: torch.Tensor) -> bool:
    return bool(value.to(torch.bfloat16).float() == value.float())


@needs_compiler
@pytest.mark.parametrize("device", DEVICES)
def test_a_compiled_bfloat16_update_computes_in_bfloat16_as_the_eager_one(device):
    """`update_precision=bfloat16` inside the compiled graph: the critic's Q values come out
    in bfloat16 there as eagerly, so their mean ("q/mean") is a bfloat16 number, which a
    float32 update's almost never is. The losses land near the eager ones (inductor rounds a
    bfloat16 graph's fused elementwise work once, eager at each op: a looser match than
    float32's)."""
    compiled, eager = (
        tiny_agent(flag, device, update_precision="bfloat16") for flag in (True, False)
    )
    runs = {
        "compiled": updated(compiled),
        "eager": updated(eager),
        "float32": updated(tiny_agent(False, device)),
    }
    for name, metrics in runs.items():
        rounded = [_rounded_to_bfloat16(m["q/mean"]) for m in metrics]
        assert rounded == [name != "float32"] * len(metrics), (name, rounded)
    got, want = (torch.stack([m["loss/critic"] for m in runs[k]]) for k in ("compiled", "eager"))
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-4)


@needs_compiler
def test_compiled_updates_of_two_batch_sizes_in_one_process_land_where_eager_ones_do():
    """Dynamo keeps what it learns of a function's shapes by its source (file, line, name), so
    an agent's own copy of a loss also sees the shapes other agents' copies ran with. A second
    actor batch size would make it trace the score-matching loss for any size, which its random
    steps (`torch.randint` of a symbolic size) cannot. Compiled for fixed shapes, each size gets
    its own graph."""
    updated(tiny_agent(True, algorithm="ddpl"))
    half = {"algorithm": "ddpl", "actor_batch_size": 8}  # of the batch's 16 rows
    got, want = updated(tiny_agent(True, **half)), updated(tiny_agent(False, **half))
    for compiled_metrics, eager_metrics in zip(got, want, strict=True):
        for key, value in eager_metrics.items():
            torch.testing.assert_close(compiled_metrics[key], value, **TOLERANCE["cpu"])
