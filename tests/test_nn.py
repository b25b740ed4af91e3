import torch
import torch.nn.functional as F

from marl_diff.nn import Mish


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
