"""`graph_chains`: the chains sampled without gradient replayed from CUDA graphs. On a CPU the
switch changes nothing; the tests that capture graphs need a CUDA GPU (skipped without one)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_spec

from marl_diff import catalog
from marl_diff.agents import make_agent
from marl_diff.diffusion import DiffusionPolicy, make_schedule
from marl_diff.diffusion.cuda_graphs import MAX_GRAPHS, ChainGraphs

N, OBS, ACT = 2, 5, 3
MASK = torch.tensor([[True, True, True], [True, False, False]])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
OPTIONS = ({}, {"candidates": 4, "steps": 5, "shared_start": True}, {"deterministic": True})


def policy(device: str = "cpu", **kwargs) -> DiffusionPolicy:
    torch.manual_seed(0)
    made = DiffusionPolicy(
        N, OBS, ACT, MASK, make_schedule("vp", 10), hidden=(32, 32), time_embed_dim=8, **kwargs
    )
    return made.to(device)


def test_on_a_cpu_graph_chains_samples_what_the_eager_chain_does():
    eager, graphed = policy(), policy(graph_chains=True)
    obs = torch.randn(16, N, OBS)
    for options in OPTIONS:
        torch.manual_seed(1)
        a = eager.sample(obs, **options)
        torch.manual_seed(1)
        assert torch.equal(graphed.sample(obs, **options), a)
    assert not graphed.chain_graphs.graphs


@pytest.mark.parametrize(
    "name, on", [("ddpl", True), ("dacer", True), ("qvpo", True), ("ddiffpg", False)]
)
def test_the_catalog_switch_reaches_each_agents_policy(name, on):
    """The catalog's `graph_chains` (off for DDiffPG, whose per-mode batches change shape) is
    what the agent's policy and, where there is one, its target copy run with."""
    config = dict(catalog.load("agent", name), actor_hidden=[8], critic_hidden=[8])
    assert config["graph_chains"] is on
    if name == "ddiffpg":
        config["mode_features"] = [0, 1]  # make_spec's scenario declares none
    made = make_agent(config, make_spec(), "cpu")
    policies = [m for m in made.modules() if isinstance(m, DiffusionPolicy)]
    assert policies and all(p.graph_chains is on for p in policies)


def test_past_the_graph_limit_new_shapes_run_eagerly_with_one_warning():
    """No capture is attempted (this runs on a CPU): the chain is called as it is."""
    graphs = ChainGraphs()
    graphs.graphs = {("shape", i): None for i in range(MAX_GRAPHS)}
    calls = []

    def chain(obs, **options):
        calls.append(options)
        return obs * 2

    obs = torch.ones(3, N, OBS)
    with pytest.warns(UserWarning, match=f"{MAX_GRAPHS} chain shapes captured already"):
        assert torch.equal(graphs.replay(chain, obs, {"steps": 5}), obs * 2)
    graphs.replay(chain, obs, {"steps": 4})  # warned once
    assert calls == [{"steps": 5}, {"steps": 4}] and len(graphs.graphs) == MAX_GRAPHS


def test_a_failed_capture_names_the_switch_that_avoids_it(monkeypatch):
    def refuse(self, chain, obs, options):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(ChainGraphs, "_capture", refuse)
    with pytest.raises(RuntimeError, match="not permitted.*agent.graph_chains=false"):
        ChainGraphs().replay(lambda obs: obs, torch.ones(2, N, OBS), {})


@needs_cuda
@pytest.mark.parametrize("chain_precision", [None, "bfloat16"])
def test_a_replayed_chain_samples_what_the_eager_chain_does(chain_precision):
    """Same default-generator seed, same numbers: the graph records the eager kernels and draws
    its noise from the generator's state at each replay (bfloat16 chains: their casts too)."""
    made = policy("cuda", graph_chains=True, chain_precision=chain_precision)
    obs = torch.randn(16, N, OBS, device="cuda")
    for options in OPTIONS:
        made.sample(obs, **options)  # captures
        torch.cuda.manual_seed(1)
        replayed = made.sample(obs, **options)
        made.graph_chains = False
        torch.cuda.manual_seed(1)
        eager = made.sample(obs, **options)
        made.graph_chains = True
        torch.testing.assert_close(replayed, eager, atol=1e-6, rtol=0)
    assert len(made.chain_graphs.graphs) == len(OPTIONS)


@needs_cuda
@pytest.mark.parametrize("chain_precision", [None, "bfloat16"])
def test_replays_see_new_inputs_new_parameters_and_keep_earlier_outputs(chain_precision):
    """bfloat16 chains: the weights are cast inside the graph at every replay, not cached."""
    made = policy("cuda", graph_chains=True, chain_precision=chain_precision)
    obs = torch.randn(16, N, OBS, device="cuda")
    first = made.sample(obs, deterministic=True)
    kept = first.clone()
    other = made.sample(obs + 1.0, deterministic=True)  # the same graph, another input
    assert len(made.chain_graphs.graphs) == 1
    assert torch.equal(first, kept) and not torch.allclose(other, first)
    with torch.no_grad():  # an optimiser step, in place
        for param in made.parameters():
            param.add_(0.05 * torch.randn_like(param))
    torch.cuda.manual_seed(2)
    moved = made.sample(obs, deterministic=True)
    made.graph_chains = False
    torch.cuda.manual_seed(2)
    torch.testing.assert_close(moved, made.sample(obs, deterministic=True), atol=1e-6, rtol=0)
    made.graph_chains = True
    torch.cuda.manual_seed(2)
    assert torch.equal(made.sample(obs, deterministic=True), moved)


@needs_cuda
def test_gradient_chains_and_explicit_generators_stay_eager():
    made = policy("cuda", graph_chains=True)
    obs = torch.randn(16, N, OBS, device="cuda")
    made.sample(obs, grad=True).sum().backward()
    made.sample(obs, generator=torch.Generator("cuda").manual_seed(0))
    assert not made.chain_graphs.graphs


@needs_cuda
def test_a_copy_starts_without_graphs_and_samples_its_own_parameters():
    made = policy("cuda", graph_chains=True)
    obs = torch.randn(16, N, OBS, device="cuda")
    made.sample(obs, deterministic=True)
    target = copy.deepcopy(made)
    assert not target.chain_graphs.graphs and made.chain_graphs.graphs
    with torch.no_grad():
        for param in target.parameters():
            param.mul_(0.5)
    samples = []
    for module in (target, made):
        torch.cuda.manual_seed(3)
        samples.append(module.sample(obs, deterministic=True))
    assert not torch.allclose(*samples)
