"""`matmul_precision=`: torch's float32 matrix-product setting, applied per process by the run
and the update benchmark."""

import warnings

import pytest
import torch
from conftest import make_tiny_agent

from marl_diff import bench, precision
from marl_diff.errors import ConfigError


@pytest.fixture(autouse=True)
def keep_torch_setting():
    """The setting is process-wide: give it back to the tests after."""
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_unknown_mode_names_the_choices():
    with pytest.raises(ConfigError, match="matmul_precision must be one of high, highest, medium"):
        precision.configure("bf16")


@pytest.mark.parametrize("mode", precision.MODES)
def test_each_mode_reaches_torch(mode):
    precision.configure("highest" if mode != "highest" else "medium")
    precision.configure(mode)
    assert torch.get_float32_matmul_precision() == mode


def test_update_benchmark_applies_and_reports_the_precision(tmp_path):
    text = bench.update(
        [
            "scenario=pendulum",
            "agents=gaussian",
            "batch_size=8",
            "updates=1",
            "repeats=1",
            "agent.actor_hidden=[16,16]",
            "agent.critic_hidden=[16,16]",
            "matmul_precision=medium",
            f"out={tmp_path / 'update.md'}",
        ]
    )
    assert "matmul_precision=medium" in text
    assert torch.get_float32_matmul_precision() == "medium"
    with pytest.raises(ConfigError, match="matmul_precision.*'fast'"):
        bench.update(["matmul_precision=fast"])


def test_a_run_keeps_its_precision_and_evaluate_and_collect_apply_it(run_cli, tiny_args, tmp_path):
    """The run saves its precision; evaluate applies it, so it replays the final evaluation,
    and collect plays the policy as it was trained."""
    import json

    from omegaconf import OmegaConf

    from marl_diff.collect import collect_episodes
    from marl_diff.evaluate import evaluate_run

    run_dir = tmp_path / "run"
    proc = run_cli([*tiny_args, "matmul_precision=medium", f"run_dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert OmegaConf.load(run_dir / "config.yaml").matmul_precision == "medium"
    torch.set_float32_matmul_precision("highest")
    report, _ = evaluate_run(run_dir, device="cpu")
    assert torch.get_float32_matmul_precision() == "medium"
    assert report["returns"] == json.loads((run_dir / "eval.json").read_text())["returns"]
    torch.set_float32_matmul_precision("highest")
    records, _ = collect_episodes(run_dir, 1, num_envs=1, device="cpu", progress=False)
    assert len(records) == 1
    assert torch.get_float32_matmul_precision() == "medium"


def _precisions_seen_by_the_denoiser(policy) -> list[str]:
    """The matmul precision at each call of the denoiser's time network, which both a chain
    (`condition`) and the training loss (`forward`) run."""
    seen = []
    policy.denoiser.time_mlp.register_forward_hook(
        lambda *_: seen.append(torch.get_float32_matmul_precision())
    )
    return seen


def test_chain_precision_applies_to_the_no_gradient_chains_only():
    from marl_diff.diffusion import DiffusionPolicy

    torch.set_float32_matmul_precision("highest")
    policy = DiffusionPolicy(2, 3, 1, hidden=[8], chain_precision="medium")
    seen = _precisions_seen_by_the_denoiser(policy)
    obs = torch.zeros(4, 2, 3)
    policy.sample(obs, candidates=2, steps=2)
    assert seen and set(seen) == {"medium"}
    assert torch.get_float32_matmul_precision() == "highest"  # given back after the chain
    seen.clear()
    action = policy.sample(obs, grad=True)  # DACER's differentiable chain: the run's setting
    assert action.requires_grad and set(seen) == {"highest"}
    seen.clear()
    policy.dsm_loss(torch.zeros(4, 2, 1), obs).mean().backward()
    assert seen == ["highest"]
    with pytest.raises(
        ValueError, match="chain_precision must be one of highest, high, medium, bfloat16"
    ):
        DiffusionPolicy(2, 3, 1, hidden=[8], chain_precision="bf16")


def test_bfloat16_chains_take_bfloat16_products_and_give_float32_actions():
    """`chain_precision=bfloat16` autocasts the no-gradient chains' products (bfloat16 results,
    not "medium"'s float32 ones); the chain's state and actions stay float32, close to a
    float32 chain's, and the gradient chain and the loss keep float32."""
    from marl_diff.diffusion import DiffusionPolicy

    torch.manual_seed(0)
    policy = DiffusionPolicy(2, 3, 1, hidden=[16], chain_precision="bfloat16")
    reference = DiffusionPolicy(2, 3, 1, hidden=[16])
    reference.load_state_dict(policy.state_dict())
    dtypes = []
    policy.denoiser.time_mlp.register_forward_hook(lambda *args: dtypes.append(args[2].dtype))
    obs = torch.randn(64, 2, 3)
    actions = policy.sample(obs, candidates=2, generator=torch.Generator().manual_seed(1))
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert actions.dtype == torch.float32
    expected = reference.sample(obs, candidates=2, generator=torch.Generator().manual_seed(1))
    gap = (actions - expected).abs().max().item()
    assert 0 < gap < 0.1, gap
    dtypes.clear()
    assert policy.sample(obs, grad=True).dtype == torch.float32
    policy.dsm_loss(torch.zeros(64, 2, 1), obs).mean().backward()
    assert dtypes and set(dtypes) == {torch.float32}


@pytest.mark.parametrize("algorithm", ["ddpl", "dacer", "qvpo", "ddiffpg", "diffusion_bc"])
def test_every_diffusion_agent_acts_in_float32_with_bfloat16_chains(algorithm):
    from conftest import make_spec

    from marl_diff.agents import make_agent

    config = {
        "algorithm": algorithm,
        "actor_hidden": [8],
        "chain_precision": "bfloat16",
        **({"critic_hidden": [8]} if algorithm != "diffusion_bc" else {}),
        **({"mode_features": [0, 1]} if algorithm == "ddiffpg" else {}),
    }
    agent = make_agent(config, make_spec(), "cpu")
    for explore in (True, False):
        action = agent.act(torch.randn(5, 2, 3), explore=explore, state=torch.randn(5, 4))
        assert action.dtype == torch.float32 and action.shape == (5, 2, 1)
        assert action.abs().max() <= 1.0


def test_chain_precision_is_an_agent_setting_with_named_choices():
    from conftest import make_spec

    from marl_diff.agents import make_agent

    tiny = {"algorithm": "ddpl", "actor_hidden": [8], "critic_hidden": [8], "diffusion_steps": 2}
    agent = make_agent({**tiny, "chain_precision": "medium"}, make_spec(), "cpu")
    seen = _precisions_seen_by_the_denoiser(agent.policy)
    agent.act(torch.zeros(3, 2, 3), explore=True)
    assert set(seen) == {"medium"}
    assert make_agent(tiny, make_spec(), "cpu").policy.chain_precision is None  # "run"
    with pytest.raises(ConfigError, match="chain_precision must be one of run, highest, high"):
        make_agent({**tiny, "chain_precision": "bf16"}, make_spec(), "cpu")


def _product_dtypes(agent) -> list[tuple[bool, torch.dtype]]:
    """(grad enabled, output dtype) of every call of the agent's stacked linear layers."""
    from marl_diff.nn import StackedLinear

    seen = []
    for module in agent.modules():
        if isinstance(module, StackedLinear):
            module.register_forward_hook(
                lambda _m, _i, out: seen.append((torch.is_grad_enabled(), out.dtype))
            )
    return seen


@pytest.mark.parametrize("algorithm", ["gaussian", "ddpl", "qvpo"])
def test_bfloat16_updates_autocast_the_losses_and_keep_float32_state(algorithm):
    """`update_precision=bfloat16` is mixed precision: the products of the losses' forward
    passes (the critic's TD loss, the policy's loss) come out in bfloat16, while the
    parameters, their gradients and Adam's moments stay float32, and an update lands near the
    float32 one. Outside the update nothing changes: acting stays float32."""
    from test_adam_impl import batch

    settings = {"policy_delay": 1}  # every update trains the policy too
    agents = {
        mode: make_tiny_agent(algorithm, update_precision=mode, **settings)
        for mode in ("run", "bfloat16")
    }
    losses = {}
    for mode, agent in agents.items():
        seen = _product_dtypes(agent)
        data = batch(agent.spec, rows=32)
        torch.manual_seed(1)
        metrics = [agent.update(data) for _ in range(3)]
        losses[mode] = torch.stack([m["loss/critic"] for m in metrics])
        with_grad = {dtype for grad, dtype in seen if grad}
        assert with_grad == ({torch.bfloat16} if mode == "bfloat16" else {torch.float32})
        assert not torch.is_autocast_enabled("cpu")
        for param in agent.parameters():
            assert param.dtype == torch.float32
            assert param.grad is None or param.grad.dtype == torch.float32
        for optimizer in agent.optimizers.values():
            for state in optimizer.state.values():
                assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
        seen.clear()
        action = agent.act(torch.randn(5, 2, 3), explore=True, state=torch.randn(5, 4))
        assert action.dtype == torch.float32 and {dtype for _, dtype in seen} == {torch.float32}
    assert not torch.equal(losses["bfloat16"], losses["run"])
    torch.testing.assert_close(losses["bfloat16"], losses["run"], rtol=0.05, atol=1e-3)


@pytest.mark.parametrize("algorithm", ["dacer", "ddiffpg", "dtql", "qensemble"])
def test_agents_with_their_own_losses_refuse_bfloat16_updates(algorithm):
    with pytest.raises(ConfigError, match="update_precision must be one of run, not 'bfloat16'"):
        make_tiny_agent(algorithm, update_precision="bfloat16")


def test_an_unknown_update_precision_names_the_choices():
    with pytest.raises(ConfigError, match="update_precision must be one of run, bfloat16"):
        make_tiny_agent("gaussian", update_precision="medium")


@pytest.mark.parametrize("kernels", [False, True])
def test_bfloat16_products_warn_on_a_cpu_without_bfloat16_kernels(monkeypatch, kernels):
    """Without AVX512-BF16 or AMX torch multiplies bfloat16 tensors in a scalar loop, about 100x
    float32's time: the block says so, naming the settings and the way out; with them, not."""
    monkeypatch.setattr(precision, "cpu_has_bfloat16_kernels", lambda: kernels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with precision.scoped(precision.BFLOAT16, "cpu"):
            product = torch.ones(4, 4) @ torch.ones(4, 4)
        with precision.scoped(precision.BFLOAT16, "cuda"):  # a GPU's own kernels: no warning
            pass
    assert product.dtype == torch.bfloat16
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if kernels:
        assert messages == []
    else:
        assert len(messages) == 1
        assert "without AVX512-BF16 or AMX" in messages[0]
        assert "agent.chain_precision" in messages[0] and "'run'" in messages[0]
