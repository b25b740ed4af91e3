import copy

import pytest
import torch
import torch.nn.functional as F

from marl_diff.nn import (
    COMPILED_MIN_ROWS,
    ELEMENTWISE_CHUNK,
    Mish,
    StackedMLP,
    Tanh,
    _mish_factor,
    compiler_available,
)


def test_mish_matches_torch_values_and_gradients():
    x = torch.linspace(-60.0, 60.0, 20001, dtype=torch.float64, requires_grad=True)
    ours, reference = Mish()(x), F.mish(x)
    assert torch.allclose(ours, reference, rtol=1e-12, atol=1e-12)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x)
    (grad_ref,) = torch.autograd.grad(reference.sum(), x)
    assert torch.allclose(grad_ours, grad_ref, rtol=1e-9, atol=1e-12)


def test_mish_without_autograd_matches():
    x = torch.randn(4, 64, 32)
    with torch.no_grad():
        assert torch.allclose(Mish()(x), F.mish(x), atol=1e-6)
    assert torch.allclose(Mish()(x), F.mish(x), atol=1e-6)  # x needs no grad: no-grad path


def test_mish_gradient_is_the_exact_derivative():
    x = (torch.randn(64, dtype=torch.float64) * 6).requires_grad_(True)
    assert torch.autograd.gradcheck(Mish(), (x,))
    (grad,) = torch.autograd.grad(Mish()(x).sum(), x)
    (expected,) = torch.autograd.grad(torch.nn.functional.mish(x).sum(), x)
    torch.testing.assert_close(grad, expected)


def test_tanh_is_within_float_rounding_of_torch_tanh():
    x = torch.cat([torch.linspace(-40.0, 40.0, 200001), torch.randn(100000) * 1e-3])
    assert (Tanh()(x) - torch.tanh(x)).abs().max() <= 2.5e-7
    with_grad = Tanh()(x.clone().requires_grad_(True))  # the autograd path
    assert with_grad.requires_grad
    assert (with_grad.detach() - torch.tanh(x)).abs().max() <= 2.5e-7
    assert Tanh()(torch.tensor([-1e4, 1e4])).tolist() == [-1.0, 1.0]


def test_tanh_gradient_is_one_minus_output_squared():
    x = (torch.randn(64, dtype=torch.float64) * 3).requires_grad_(True)
    assert torch.autograd.gradcheck(Tanh(), (x,))
    x32 = (torch.randn(3, 50) * 3).requires_grad_(True)
    (grad,) = torch.autograd.grad(Tanh()(x32).sum(), x32)
    torch.testing.assert_close(grad, 1 - torch.tanh(x32.detach()) ** 2, atol=5e-7, rtol=0)


def test_traced_tanh_is_plain_operations_with_the_eager_values_and_gradient():
    """Under torch.compile, Tanh is traced as ordinary operations: a custom autograd.Function
    in a graph keeps AOTAutograd's cache from storing it, so a compiled update would be
    compiled afresh in every run."""
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    x = (torch.randn(3, 50) * 3).requires_grad_(True)
    traced = torch.compile(Tanh(), backend=record, fullgraph=True)(x)
    targets = {str(node.target) for graph in graphs for node in graph.graph.nodes}
    assert not any("autograd_function" in target for target in targets), targets
    torch.testing.assert_close(traced, Tanh()(x), atol=2.5e-7, rtol=0)
    (grad,) = torch.autograd.grad(traced.sum(), x)
    torch.testing.assert_close(grad, 1 - torch.tanh(x.detach()) ** 2, atol=5e-7, rtol=0)


def test_mish_by_chunks_is_the_whole_tensor_formula_bit_for_bit():
    """Large tensors are worked a chunk at a time, and the activations of a network in place:
    the numbers must be those of the formula on the whole tensor, across chunk edges and a
    ragged tail, with and without autograd."""
    x = torch.randn(2 * ELEMENTWISE_CHUNK + 37) * 4
    whole = _mish_factor(torch.sigmoid(x)).mul_(x)
    assert torch.equal(Mish()(x), whole)
    overwritten = x.clone()
    assert Mish(inplace=True)(overwritten).data_ptr() == overwritten.data_ptr()
    assert torch.equal(overwritten, whole)
    with_grad = x.clone().requires_grad_(True)
    out = Mish(inplace=True)(with_grad)  # autograd needs x: never in place
    assert torch.equal(out.detach(), whole) and torch.equal(with_grad.detach(), x)
    (grad,) = torch.autograd.grad(out.sum(), with_grad)
    assert torch.equal(grad, torch.ops.aten.mish_backward(torch.ones_like(x), x))


def test_tanh_in_place_overwrites_only_without_autograd():
    x = torch.randn(3, 50) * 3
    expected = Tanh()(x)
    overwritten = x.clone()
    assert torch.equal(Tanh(inplace=True)(overwritten), expected)
    assert torch.equal(overwritten, expected)
    with_grad = x.clone().requires_grad_(True)
    assert torch.equal(Tanh(inplace=True)(with_grad).detach(), expected)
    assert torch.equal(with_grad.detach(), x)


@pytest.mark.parametrize("activation", ["relu", "mish", "tanh", "elu"])
def test_stacked_mlp_in_place_activations_give_the_same_numbers(activation):
    """A StackedMLP runs relu, mish and tanh in place on its own intermediates (elu stays out
    of place: in place, torch takes its gradient from the output); outputs and parameter
    gradients equal those of out-of-place layers bit for bit."""
    torch.manual_seed(0)
    mlp = StackedMLP(2, 5, [64, 64], 3, activation)
    reference = copy.deepcopy(mlp)
    for module in reference.net:
        if hasattr(module, "inplace"):
            module.inplace = False
    in_place = [getattr(m, "inplace", None) for m in mlp.net if not hasattr(m, "weight")]
    assert in_place == [activation != "elu"] * 2
    x = torch.randn(2, 2100, 5)
    with torch.no_grad():
        assert torch.equal(mlp(x), reference(x))
    mlp(x).square().mean().backward()
    reference(x).square().mean().backward()
    for ours, theirs in zip(mlp.parameters(), reference.parameters(), strict=True):
        assert torch.equal(ours.grad, theirs.grad)


needs_compiler = pytest.mark.skipif(
    not compiler_available(), reason="torch.compile needs a C++ compiler, none on this machine"
)


@needs_compiler
def test_compiled_mlp_matches_eager_values_and_gradients(compiled_calls):
    torch.manual_seed(0)
    eager = StackedMLP(3, 7, [32, 32], 4, "mish")
    compiled = copy.deepcopy(eager)
    compiled.compiled = True
    for rows in (COMPILED_MIN_ROWS, COMPILED_MIN_ROWS + 40):  # two batch sizes, one dynamic graph
        x = torch.randn(3, rows, 7)
        with torch.no_grad():  # the same operations in the same order: the same bits
            assert torch.equal(compiled(x), eager(x))
        expected = torch.autograd.grad(eager(x).square().sum(), list(eager.parameters()))
        got = torch.autograd.grad(compiled(x).square().sum(), list(compiled.parameters()))
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e)
    assert len(compiled_calls) == 4 and all(mlp is compiled for mlp in compiled_calls)
    compiled(torch.randn(3, COMPILED_MIN_ROWS - 1, 7))  # acting in a few envs: eager
    assert len(compiled_calls) == 4


@needs_compiler
@pytest.mark.parametrize("activation", ["relu", "tanh", "silu"])
def test_compiled_mlp_without_gradient_is_eager_bit_for_bit(activation, compiled_calls):
    """The other activations a compiled chain may use give the eager numbers too (mish: the
    test above); ELU and LayerNorm agree to float rounding only, and are not claimed."""
    torch.manual_seed(0)
    eager = StackedMLP(2, 5, [32, 32], 3, activation)
    compiled = copy.deepcopy(eager)
    compiled.compiled = True
    x = torch.randn(2, COMPILED_MIN_ROWS + 8, 5) * 3
    with torch.no_grad():
        assert torch.equal(compiled(x), eager(x))
    assert compiled_calls == [compiled]


@needs_compiler
def test_compiled_mlp_copy_runs_its_own_parameters(compiled_calls):
    """A deep copy (a target network) shares the original's graph but runs its own parameters."""
    torch.manual_seed(0)
    online = StackedMLP(2, 5, [16], 3, "mish", compiled=True)
    x = torch.randn(2, COMPILED_MIN_ROWS, 5)
    with torch.no_grad():
        before = online(x)
        target = copy.deepcopy(online)
        for p in target.parameters():
            p.add_(0.5)
        moved = target(x)
        assert compiled_calls[-1] is target
        target.compiled = False
        torch.testing.assert_close(moved, target(x))
        torch.testing.assert_close(online(x), before)
    assert not torch.allclose(moved, before)


@needs_compiler
def test_compiled_mlp_follows_its_parameters_as_they_train(compiled_calls):
    """The graph reads the parameters at every call: no weights frozen at the first."""
    torch.manual_seed(0)
    mlp = StackedMLP(2, 5, [32, 32], 3, "mish", compiled=True)
    x = torch.randn(2, COMPILED_MIN_ROWS, 5)
    with torch.no_grad():
        first = mlp(x)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        mlp(x).square().mean().backward()
        optimizer.step()
    with torch.no_grad():
        trained = mlp(x)
        mlp.compiled = False
        torch.testing.assert_close(trained, mlp(x))
    assert not torch.allclose(trained, first)
    assert len(compiled_calls) == 5


def test_compile_without_a_compiler_runs_eagerly(monkeypatch):
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.warns(UserWarning, match="C\\+\\+ compiler"):
        mlp = StackedMLP(1, 3, [8], 2, compiled=True)
    assert not mlp.compiled
    with pytest.warns(UserWarning, match="C\\+\\+ compiler"), mlp.compiling():
        assert not mlp.compiled  # a block asked to compile runs eagerly too
    assert mlp(torch.randn(1, 4, 3)).shape == (1, 4, 2)
