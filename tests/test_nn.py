import copy

import pytest
import torch
import torch.nn.functional as F

from marl_diff.nn import COMPILED_MIN_ROWS, Mish, StackedMLP, Tanh, compiler_available


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
    assert torch.allclose(Mish()(x), F.mish(x), atol=1e-6)  # x needs no grad: in-place path


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
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), eager(x))
        expected = torch.autograd.grad(eager(x).square().sum(), list(eager.parameters()))
        got = torch.autograd.grad(compiled(x).square().sum(), list(compiled.parameters()))
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e)
    assert len(compiled_calls) == 4 and all(mlp is compiled for mlp in compiled_calls)
    compiled(torch.randn(3, COMPILED_MIN_ROWS - 1, 7))  # acting in a few envs: eager
    assert len(compiled_calls) == 4


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
    assert mlp(torch.randn(1, 4, 3)).shape == (1, 4, 2)
