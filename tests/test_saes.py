"""Forward passes and losses against hand-computed cases, the registries, conversions and the sparse code path."""

import pytest
import torch

from saescope.jobs import create_job
from saescope.objectives import StepContext, get_objective
from saescope.objectives.batchtopk import batch_top_k
from saescope.saes import ARCHITECTURES, FeatureCode, create_sae, get_architecture
from saescope.saes.sparse_ops import decode_dense, decode_sparse


def _loss(sae, x, sparsity_coefficient=0.0, dead_mask=None, objective=None, progress=0.0):
    recipe = get_objective(objective or sae.default_objective)()
    ctx = StepContext(step=0, progress=progress, sparsity_coefficient=sparsity_coefficient, dead_mask=dead_mask)
    return recipe.loss(sae, x, ctx)


def _set(sae, **tensors):
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(sae, name).copy_(torch.as_tensor(value, dtype=torch.float32))


def _identity_sae(arch, **options):
    sae = create_sae(arch, d_in=2, d_sae=3, **options)
    _set(sae, W_enc=[[1, 0, 1], [0, 1, 1]], W_dec=[[1, 0], [0, 1], [0.6, 0.8]], b_dec=[0, 0])
    return sae


def test_jumprelu_forward_by_hand():
    sae = _identity_sae("jumprelu")
    _set(sae, b_enc=[0, 0, -1], threshold_raw=[0.5, 0.5, 0.5])
    x = torch.tensor([[1.0, 0.2], [0.4, 2.0]])
    # pre = [[1, 0.2, 0.2], [0.4, 2, 1.4]]; threshold 0.5 keeps 1 | 2 and 1.4
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.4]])
    assert torch.allclose(sae.encode(x), expected)
    out = _loss(sae, x, sparsity_coefficient=0.1)
    assert torch.allclose(out.reconstruction, expected @ sae.W_dec)
    assert torch.allclose(sae(x), expected @ sae.W_dec)  # module forward: the reconstruction
    mse = ((out.reconstruction - x) ** 2).sum(-1).mean()
    assert torch.allclose(out.terms["mse"], mse)
    assert torch.allclose(out.terms["sparsity"], torch.tensor(0.1 * 1.5))  # mean L0 = (1 + 2) / 2
    assert torch.allclose(out.loss, out.terms["mse"] + out.terms["sparsity"])


def test_jumprelu_log_threshold_matches_direct():
    direct = _identity_sae("jumprelu")
    logged = _identity_sae("jumprelu", threshold_param="log")
    _set(direct, threshold_raw=[0.3, 0.6, 0.9])
    logged.load_export_tensors(direct.export_tensors())
    x = torch.randn(16, 2)
    assert torch.allclose(direct.encode(x), logged.encode(x), atol=1e-6)
    assert set(logged.export_tensors()) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}


def test_relu_forward_and_decoder_weighted_l1():
    sae = _identity_sae("relu")
    _set(sae, b_enc=[0, 0, 0], W_dec=[[2, 0], [0, 1], [0, 0.5]])
    x = torch.tensor([[1.0, -1.0]])
    # pre = [1, -1, 0] -> f = [1, 0, 0]; penalty λ·f·‖d‖ = λ·1·2
    out = _loss(sae, x, sparsity_coefficient=3.0)
    assert torch.allclose(out.code.dense(), torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.allclose(out.terms["sparsity"], torch.tensor(6.0))


def test_gated_forward_by_hand():
    sae = _identity_sae("gated")
    _set(sae, b_dec=[0.5, 0.0], b_gate=[0, 0, -2], b_mag=[0.1, 0, 0], r_mag=[0.0, torch.log(torch.tensor(2.0)), 0])
    x = torch.tensor([[1.5, 1.0]])
    # x̃ = [1, 1]; u = [1, 1, 2]; gate = [1, 1, 0] -> open, open, closed
    # mag = u·exp(r) + b_mag = [1.1, 2, 2] -> f = [1.1, 2, 0]
    out = _loss(sae, x, sparsity_coefficient=1.0)
    assert torch.allclose(out.code.dense(), torch.tensor([[1.1, 2.0, 0.0]]))
    assert torch.allclose(out.terms["sparsity"], torch.tensor(2.0))  # ‖ReLU(π_gate)‖₁ = 1 + 1 + 0


def test_gated_auxiliary_loss_trains_the_gate_not_the_decoder():
    sae = create_sae("gated", 8, 32)
    out = _loss(sae, torch.randn(64, 8) + 1.0)
    out.terms["aux"].backward()
    assert sae.W_dec.grad is None or torch.all(sae.W_dec.grad == 0)
    assert sae.W_enc.grad.abs().sum() > 0 and sae.b_gate.grad.abs().sum() > 0


def test_topk_keeps_k_largest():
    sae = _identity_sae("topk", k=1)
    _set(sae, b_enc=[0, 0, 0])
    x = torch.tensor([[1.0, 0.5], [-1.0, -2.0]])
    # pre = x @ W_enc = [[1, .5, 1.5], [-1, -2, -3]]; top-1 -> [0, 0, 1.5] | ReLU(-1) = 0
    assert torch.allclose(sae.encode(x), torch.tensor([[0.0, 0.0, 1.5], [0.0, 0.0, 0.0]]))
    code = sae.encode_code(x)
    assert code.is_sparse and code.indices.tolist() == [[2], [0]] and code.l0_per_token().tolist() == [1.0, 0.0]
    assert torch.allclose(sae.decode_code(code), sae.decode(sae.encode(x)))


def test_topk_aux_loss_only_with_dead_latents():
    sae = create_sae("topk", 8, 32, k=2)
    x = torch.randn(64, 8)
    assert "aux" not in _loss(sae, x).terms
    dead = torch.zeros(32, dtype=torch.bool)
    assert _loss(sae, x, dead_mask=dead).terms["aux"] == 0
    dead[:10] = True
    out = _loss(sae, x, dead_mask=dead)
    assert out.terms["aux"] > 0
    out.terms["aux"].backward()
    assert sae.W_dec.grad[:10].abs().sum() > 0  # AuxK trains dead latents' decoder rows


def test_batchtopk_mean_l0_is_k_and_exports_as_jumprelu():
    sae = create_sae("batchtopk", 8, 32, k=3).train()
    x = torch.randn(128, 8)
    out = _loss(sae, x)
    assert (out.code.dense() > 0).sum().item() == 3 * 128
    assert sae.threshold[0] > 0 and torch.all(sae.threshold == sae.threshold[0])
    jump = sae.to_jumprelu()
    assert torch.allclose(jump.encode(x), sae.encode(x), atol=1e-6)
    assert torch.allclose(jump.decode(jump.encode(x)), sae.decode(sae.encode(x)), atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_fold_input_scale_is_exact(arch):
    sae = create_job(arch, 8, 32, target_l0=4).sae
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    if arch == "batchtopk":
        sae.threshold.fill_(0.2)
    if arch == "jumprelu":
        sae.threshold_raw.data.abs_()
    x = torch.randn(50, 8) * 3
    scale = 0.37
    reference_acts = sae.encode(x * scale)
    reference = sae.decode(reference_acts) / scale
    folded = sae.copy()
    folded.fold_input_scale(scale)
    assert torch.allclose(folded.encode(x), reference_acts / scale, atol=1e-5)
    assert torch.allclose(folded.decode(folded.encode(x)), reference, atol=1e-4)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_weight_orientation_and_names(arch):
    sae = create_sae(arch, 6, 24)
    tensors = sae.export_tensors()
    assert tensors["W_enc"].shape == (6, 24) and tensors["W_dec"].shape == (24, 6) and tensors["b_dec"].shape == (6,)
    expected = {"W_enc", "W_dec", "b_dec"} | {
        "jumprelu": {"b_enc", "threshold"}, "batchtopk": {"b_enc", "threshold"}, "topk": {"b_enc"}, "relu": {"b_enc"},
        "gated": {"b_gate", "b_mag", "r_mag"}, "feature_choice": {"b_enc", "threshold"}, "mutual_choice": {"b_enc", "threshold"},
        "matryoshka": {"b_enc", "threshold"},
    }[arch]
    assert set(tensors) == expected  # the published SAELens / Gemma Scope names


def test_unknown_architecture_lists_known():
    with pytest.raises(ValueError, match="unknown SAE architecture 'nope'; known: .*jumprelu"):
        get_architecture("nope")


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="d_sae must be a positive integer"):
        create_sae("jumprelu", 8, 0)
    with pytest.raises(ValueError, match="k=40 must be an integer in"):
        create_sae("topk", 8, 32, k=40)
    with pytest.raises(ValueError, match=r"\['kk'\] are not jumprelu SAE fields"):
        create_sae("jumprelu", 8, 32, kk=3)
    with pytest.raises(ValueError, match="training settings such as target_l0.* go to saescope.create_job"):
        create_sae("jumprelu", 8, 32, target_l0=3)
    with pytest.raises(ValueError, match=r"unknown options \['kk'\]; SAE fields: \['d_out', 'hookpoint', 'input_transform', 'model_id', 'skip', 'target', 'threshold_param'\]"):
        create_job("jumprelu", 8, 32, kk=3)
    with pytest.raises(ValueError, match="unknown objective 'l1'; known: .*jumprelu_tanh"):
        create_job("jumprelu", 8, 32, objective="l1")
    with pytest.raises(ValueError, match="objective 'topk' trains \\['topk'\\], not a jumprelu SAE"):
        create_job("jumprelu", 8, 32, objective="topk")
    with pytest.raises(ValueError, match="target_l0=64 exceeds the SAE's 32 latents"):
        create_job("jumprelu", 8, 32, target_l0=64)


def test_create_job_routes_each_option_to_the_module_or_the_objective():
    job = create_job("topk", 8, 64, target_l0=6.4, aux_k=5, sparse_decode=False, hookpoint="layers.1.resid_post")
    assert job.sae.cfg.k == 6 and job.sae.cfg.sparse_decode is False  # k from the target, on the module
    assert job.objective.aux_k == 5 and job.objective.target_l0 == 6.4
    assert job.reads.hookpoint == "layers.1.resid_post" and job.sae.cfg.hookpoint == "layers.1.resid_post"
    explicit = create_job("topk", 8, 64, target_l0=6.4, k=3)
    assert explicit.sae.cfg.k == 3  # an explicit k wins over the target
    tanh = create_job("jumprelu", 8, 64, objective="jumprelu_tanh")
    assert torch.allclose(tanh.sae.threshold, torch.full((64,), 0.1))  # the tanh recipe's θ₀ and decoder norm
    assert torch.allclose(tanh.sae.W_dec.norm(dim=1), torch.full((64,), 0.1), atol=1e-6)
    step = create_job("jumprelu", 8, 64)
    assert torch.allclose(step.sae.threshold, torch.full((64,), 1e-3))
    assert torch.allclose(step.sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-6)


def test_feature_code_statistics_match_the_dense_matrix():
    torch.manual_seed(0)
    pre = torch.randn(40, 32) - 1.5  # some tokens select negative pre-activations, which the ReLU zeroes
    values, indices = pre.topk(5, dim=-1)
    sparse = FeatureCode.selected(indices, torch.relu(values), 32)
    dense = FeatureCode.from_dense(sparse.dense().clone())
    for name in ("l0_per_token", "count_per_feature", "fired", "sum_per_feature", "max_per_feature"):
        a, b = getattr(sparse, name)(), getattr(dense, name)()
        assert torch.equal(a, b) if a.dtype == torch.bool else torch.allclose(a.double(), b.double()), name
    rows_s, cols_s, vals_s = sparse.active_entries()
    rows_d, cols_d, vals_d = dense.active_entries()
    assert sorted(zip(rows_s.tolist(), cols_s.tolist(), vals_s.tolist())) == sorted(zip(rows_d.tolist(), cols_d.tolist(), vals_d.tolist()))
    assert (sparse.l0_per_token() <= 5).all() and (sparse.l0_per_token() < 5).any()  # ReLU zeros are not active


def test_sparse_decode_matches_dense_in_values_and_gradients():
    torch.manual_seed(1)
    W_dec = torch.randn(64, 16, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(16, dtype=torch.float64, requires_grad=True)
    indices = torch.stack([torch.randperm(64)[:5] for _ in range(32)])  # distinct per token, as top-k gives
    values = torch.rand(32, 5, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(32, 16, dtype=torch.float64)
    grads = []
    for decode in (decode_sparse, decode_dense):
        for t in (W_dec, b_dec, values):
            t.grad = None
        out = decode(indices, values, W_dec, b_dec)
        (out * upstream).sum().backward()
        grads.append((out.detach(), W_dec.grad.clone(), b_dec.grad.clone(), values.grad.clone()))
    for sparse, dense in zip(*grads):
        assert torch.allclose(sparse, dense)


def test_unit_norm_decoder_constraint():
    job = create_job("jumprelu", 8, 32)
    sae, objective = job.sae, job.objective
    x = torch.randn(64, 8)
    _loss(sae, x, sparsity_coefficient=0.01).loss.backward()
    objective.before_optimizer_step(sae)
    parallel = (sae.W_dec.grad * sae.W_dec).sum(dim=1)
    assert torch.allclose(parallel, torch.zeros(32), atol=1e-5)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    objective.after_step(sae)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-6)
    free = create_job("jumprelu", 8, 32, objective="jumprelu_tanh")
    with torch.no_grad():
        free.sae.W_dec.mul_(3.0)
    free.objective.after_step(free.sae)
    assert torch.allclose(free.sae.W_dec.norm(dim=1), torch.full((32,), 0.3), atol=1e-6)  # the tanh recipe leaves norms free


def test_batchtopk_cpu_selection_is_exact_with_and_without_the_prefilter():
    acts = torch.relu(torch.randn(200, 64))
    n_keep = 5 * 200
    exact_cutoff = acts.flatten().topk(n_keep).values.min()
    for tracked in (0.0, 0.5 * exact_cutoff.item(), 1.2 * exact_cutoff.item(), 10.0):
        kept, cutoff = batch_top_k(acts, n_keep, torch.tensor(tracked))
        assert cutoff == exact_cutoff, tracked
        assert (kept > 0).sum().item() == n_keep
