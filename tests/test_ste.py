"""The JumpReLU straight-through estimators against the paper's formulas (eq. 11)."""

import torch

from saescope.saes.ste import jumprelu, step_count


def _setup():
    pre = torch.tensor([[0.10, 0.5004, 0.30], [0.4995, 0.2, 0.7], [0.0, 0.5, 0.3004]], dtype=torch.float64, requires_grad=True)
    threshold = torch.tensor([0.5, 0.5, 0.3], dtype=torch.float64, requires_grad=True)
    upstream = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=torch.float64)
    return pre, threshold, upstream


def _kernel(pre, threshold, eps):
    return (((pre - threshold) / eps).abs() < 0.5).double()


def test_jumprelu_forward_is_exact():
    pre, threshold, _ = _setup()
    out = jumprelu(pre, threshold, 0.002)
    expected = torch.where(pre > threshold, pre, torch.zeros_like(pre))
    assert torch.equal(out, expected)


def test_jumprelu_gradients_match_the_paper():
    pre, threshold, upstream = _setup()
    eps = 0.002
    (jumprelu(pre, threshold, eps) * upstream).sum().backward()
    # ∂/∂z = H(z - θ): the true derivative, no STE term
    assert torch.allclose(pre.grad, upstream * (pre > threshold).double())
    # ∂/∂θ = -(θ/ε) K((z-θ)/ε), summed over the batch
    expected = (-(threshold / eps) * _kernel(pre, threshold, eps) * upstream).sum(0)
    assert torch.allclose(threshold.grad, expected)
    assert expected.abs().sum() > 0  # the case exercises the kernel window


def test_step_gradient_reaches_only_the_threshold():
    pre, threshold, _ = _setup()
    eps = 0.002
    per_token = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    out = step_count(pre, threshold, eps)
    assert torch.equal(out, (pre > threshold).double().sum(-1))
    (out * per_token).sum().backward()
    assert pre.grad is None or torch.all(pre.grad == 0)  # the L0 term sends nothing to the encoder
    expected = (-(1.0 / eps) * _kernel(pre, threshold, eps) * per_token[:, None]).sum(0)
    assert torch.allclose(threshold.grad, expected)


def test_factors_differ_between_jumprelu_and_step():
    pre, threshold, upstream = _setup()
    eps = 0.002
    jumprelu(pre, threshold, eps).sum().backward()
    jump_grad = threshold.grad.clone()
    threshold.grad = None
    step_count(pre, threshold, eps).sum().backward()
    inside = jump_grad != 0
    assert torch.allclose(jump_grad[inside] / threshold.grad[inside], threshold.detach()[inside])


def test_ste_to_input_adds_the_window_term():
    pre, threshold, upstream = _setup()
    eps = 0.002
    (jumprelu(pre, threshold, eps, True) * upstream).sum().backward()
    expected = upstream * ((pre > threshold).double() + (threshold / eps) * _kernel(pre, threshold, eps))
    assert torch.allclose(pre.grad, expected)


def test_log_threshold_chain_rule_is_automatic():
    pre, _, upstream = _setup()
    log_threshold = torch.log(torch.tensor([0.5, 0.5, 0.3], dtype=torch.float64)).requires_grad_()
    eps = 0.002
    threshold = log_threshold.exp()
    step_count(pre, threshold, eps).sum().backward()
    expected = (-(1.0 / eps) * _kernel(pre, threshold.detach(), eps)).sum(0) * threshold.detach()
    assert torch.allclose(log_threshold.grad, expected)


def test_fused_path_matches_the_reference_functions():
    from saescope.saes.ste import jumprelu_with_l0

    torch.manual_seed(0)
    eps = 0.05
    pre_ref = (torch.rand(64, 12, dtype=torch.float64) * 0.4).requires_grad_()
    theta_ref = torch.full((12,), 0.2, dtype=torch.float64, requires_grad=True)
    pre_fast = pre_ref.detach().clone().requires_grad_()
    theta_fast = theta_ref.detach().clone().requires_grad_()
    up_acts, up_l0 = torch.randn(64, 12, dtype=torch.float64), torch.randn(64, dtype=torch.float64)

    ((jumprelu(pre_ref, theta_ref, eps) * up_acts).sum() + (step_count(pre_ref, theta_ref, eps) * up_l0).sum()).backward()
    acts, l0 = jumprelu_with_l0(pre_fast, theta_fast, eps)
    ((acts * up_acts).sum() + (l0 * up_l0).sum()).backward()
    assert torch.equal(acts, jumprelu(pre_ref, theta_ref, eps)) and torch.equal(l0, step_count(pre_ref, theta_ref, eps))
    assert torch.allclose(pre_fast.grad, pre_ref.grad) and torch.allclose(theta_fast.grad, theta_ref.grad)
    assert theta_ref.grad.abs().sum() > 0
