"""The sparse training step equals the dense reference: same loss terms, code, reconstruction and gradients (float64)."""

from __future__ import annotations

import pytest
import torch

from saescope.jobs import create_job
from saescope.objectives.base import StepContext
from saescope.saes.code import FeatureCode
from saescope.saes.sparse_encoder import selected_preactivations
from saescope.saes.sparse_ops import decode_entries

D_IN, D_SAE, N = 12, 96, 40


def _pair(architecture: str, **options):
    """Two identical jobs, one on each path, in float64."""
    torch.manual_seed(0)
    sparse = create_job(architecture, D_IN, D_SAE, sparse_step=True, **options)
    dense = create_job(architecture, D_IN, D_SAE, sparse_step=False, **options)
    sparse.sae.double()
    with torch.no_grad():
        for p in sparse.sae.parameters():
            p.add_(0.05 * torch.randn_like(p))  # biases away from 0 so every term is exercised
    dense.sae.double()
    dense.sae.load_state_dict(sparse.sae.state_dict())
    return sparse, dense


def _step(job, x, ctx):
    job.sae.zero_grad()
    out = job.objective.loss(job.sae, x, ctx)
    out.loss.backward()
    grads = {name: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for name, p in job.sae.named_parameters()}
    return out, grads


def _assert_same(sparse_job, dense_job, x, ctx):
    sparse_out, sparse_grads = _step(sparse_job, x, ctx)
    dense_out, dense_grads = _step(dense_job, x, ctx)
    assert sparse_out.code.is_sparse
    assert set(sparse_out.terms) == set(dense_out.terms)
    for name in dense_out.terms:
        torch.testing.assert_close(sparse_out.terms[name], dense_out.terms[name], rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(sparse_out.reconstruction, dense_out.reconstruction, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sparse_out.code.dense(), dense_out.code.dense(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sparse_out.code.l0_per_token(), dense_out.code.l0_per_token())
    torch.testing.assert_close(sparse_out.code.count_per_feature(), dense_out.code.count_per_feature())
    for name in dense_grads:
        assert dense_grads[name].abs().max() > 0 or name in ("threshold_raw", "log_threshold"), name
        torch.testing.assert_close(sparse_grads[name], dense_grads[name], rtol=1e-9, atol=1e-12, msg=name)


def _data(seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(N, D_IN, dtype=torch.float64)


def _ctx(dead: bool, **extra) -> StepContext:
    dead_mask = None
    if dead:
        dead_mask = torch.zeros(D_SAE, dtype=torch.bool)
        dead_mask[::7] = True
    return StepContext(step=3, progress=0.5, sparsity_coefficient=torch.tensor(0.01, dtype=torch.float64), dead_mask=dead_mask, **extra)


@pytest.mark.parametrize("dead", [False, True])
@pytest.mark.parametrize("k", [3, 8])
def test_topk_sparse_step_matches_dense(dead: bool, k: int) -> None:
    sparse, dense = _pair("topk", k=k, aux_k=5)
    _assert_same(sparse, dense, _data(), _ctx(dead))


def test_topk_zipf_aux_sparse_step_matches_dense() -> None:
    sparse, dense = _pair("topk", k=4, aux_k=6, aux_target="zipf")
    rate = torch.rand(D_SAE).float() * torch.linspace(1, 0, D_SAE)
    _assert_same(sparse, dense, _data(), _ctx(False, firing_rate=rate))


@pytest.mark.parametrize("threshold_param", ["direct", "log"])
@pytest.mark.parametrize("bandwidth", [0.001, 0.3])
@pytest.mark.parametrize("sparsity_loss", ["step", "quadratic"])
def test_jumprelu_sparse_step_matches_dense(threshold_param: str, bandwidth: float, sparsity_loss: str) -> None:
    sparse, dense = _pair("jumprelu", threshold_param=threshold_param, bandwidth=bandwidth, sparsity_loss=sparsity_loss, target_l0=20)
    for job in (sparse, dense):
        job.sae.set_threshold(torch.linspace(0.05, 0.6, D_SAE, dtype=torch.float64))
    x = _data()
    pre = sparse.sae.pre_activations(x).detach()
    theta = sparse.sae.threshold.detach()
    in_window = ((pre - theta).abs() < bandwidth / 2).sum()
    assert in_window > (0 if bandwidth > 0.01 else -1)  # the wide band puts entries on both sides of θ
    _assert_same(sparse, dense, x, _ctx(False))


@pytest.mark.parametrize("architecture", ["batchtopk", "mutual_choice", "matryoshka", "feature_choice"])
@pytest.mark.parametrize("dead", [False, True])
def test_batch_selection_sparse_step_matches_dense(architecture: str, dead: bool) -> None:
    sparse, dense = _pair(architecture, k=4, aux_k=5)
    _assert_same(sparse, dense, _data(), _ctx(dead))
    # the inference threshold tracked during the step is the same on both paths
    torch.testing.assert_close(sparse.sae.threshold, dense.sae.threshold)


def test_selected_preactivations_gradients_match_indexing() -> None:
    torch.manual_seed(2)
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    W = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([0, 0, 2, 3, 3, 3, 6])
    cols = torch.tensor([1, 8, 0, 2, 4, 8, 5])
    torch.autograd.gradcheck(lambda x, W, b: selected_preactivations(x, W, b, torch.addmm(b, x, W).detach(), rows, cols), (x, W, b))
    reference = torch.addmm(b, x, W)[rows, cols]
    torch.testing.assert_close(selected_preactivations(x, W, b, torch.addmm(b, x, W).detach(), rows, cols), reference)
    # the pre-encoder bias: x_in = x − b_dec given detached, b_dec's gradient from the backward
    b_dec = torch.randn(5, dtype=torch.float64, requires_grad=True)
    inputs = x.detach()

    def through_b_dec(W, b, b_dec):
        x_in = (inputs - b_dec).detach()
        return selected_preactivations(x_in, W, b, torch.addmm(b, x_in, W).detach(), rows, cols, b_dec)

    torch.autograd.gradcheck(through_b_dec, (W, b, b_dec))


def test_entries_code_answers_like_its_dense_matrix() -> None:
    rows = torch.tensor([0, 0, 2, 2, 2])
    cols = torch.tensor([1, 3, 0, 3, 2])
    values = torch.tensor([0.5, 0.0, 2.0, 1.0, 0.25])
    code = FeatureCode.entries(rows, cols, values, n_tokens=4, d_sae=5)
    dense = FeatureCode.from_dense(code.dense().clone())
    assert code.dense().tolist()[2] == [2.0, 0.0, 0.25, 1.0, 0.0]
    for question in ("l0_per_token", "count_per_feature", "fired", "sum_per_feature", "max_per_feature"):
        torch.testing.assert_close(getattr(code, question)(), getattr(dense, question)(), msg=question)
    torch.testing.assert_close(code.feature(3), dense.feature(3))
    keep = torch.tensor([True, True, False, True])
    torch.testing.assert_close(code.masked(keep).dense(), dense.masked(keep).dense())
    assert [t.tolist() for t in code.active_entries()] == [[0, 2, 2, 2], [1, 0, 3, 2], [0.5, 2.0, 1.0, 0.25]]
    W_dec, b_dec = torch.randn(5, 3), torch.randn(3)
    torch.testing.assert_close(decode_entries(rows, cols, values, 4, W_dec, b_dec), code.dense() @ W_dec + b_dec)
    from saescope.saes import create_sae

    sae = create_sae("jumprelu", 3, 5)  # any SAE decodes an entries code through the shared contract
    torch.testing.assert_close(sae.decode_code(code), sae.decode(code.dense()))


def test_jumprelu_dense_fallback_on_the_same_forward_matches_dense() -> None:
    """A code denser than 1/8 takes the dense path from the sparse pass's own forward: same values and gradients."""
    sparse, dense = _pair("jumprelu")
    sparse.objective.sparse_step = None  # automatic: the code below is dense, so it falls back
    for job in (sparse, dense):
        job.sae.set_threshold(1e-4)
    out = sparse.objective.loss(sparse.sae, _data(), _ctx(False))
    assert not out.code.is_sparse
    _assert_same_values(sparse, dense)


def _assert_same_values(sparse_job, dense_job) -> None:
    x, ctx = _data(), _ctx(False)
    sparse_out, sparse_grads = _step(sparse_job, x, ctx)
    dense_out, dense_grads = _step(dense_job, x, ctx)
    torch.testing.assert_close(sparse_out.loss, dense_out.loss)
    for name in dense_grads:
        torch.testing.assert_close(sparse_grads[name], dense_grads[name], rtol=1e-9, atol=1e-12, msg=name)


def test_quadratic_penalty_replaces_the_controller_and_needs_a_target() -> None:
    from saescope.errors import InvalidInput

    job = create_job("jumprelu", D_IN, D_SAE, sparsity_loss="quadratic", target_l0=12)
    assert job.objective.controlled_target_l0() is None
    assert job.objective.initial_sparsity_coefficient(job.sae) == pytest.approx(4.0 / D_IN)
    assert create_job("jumprelu", D_IN, D_SAE, target_l0=12).objective.quadratic  # the default with a target
    assert not create_job("jumprelu", D_IN, D_SAE).objective.quadratic
    with pytest.raises(InvalidInput, match="target_l0"):
        create_job("jumprelu", D_IN, D_SAE, sparsity_loss="quadratic")
    with pytest.raises(InvalidInput, match="sparsity_loss"):
        create_job("jumprelu", D_IN, D_SAE, sparsity_loss="square")
