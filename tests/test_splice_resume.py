"""ΔLM evaluation resumed at the hookpoint equals the full-forward evaluation, on every decoder family."""

from __future__ import annotations

import pytest
import torch
from model_zoo import FAMILIES, zoo_model

from saescope.evaluation import splice as splice_module
from saescope.evaluation.splice import splice_evaluate
from saescope.lm.hookpoints import available_hookpoints, find_layers, resolve_hookpoints
from saescope.saes import create_sae

SITES = ("layers.0.resid_post", "layers.1.attn_out", "layers.2.resid_pre", "layers.2.mlp_out")


def _saes(model, seed: int = 0) -> dict:
    """Two SAEs at each of four sites (layers 0, 1 and 2; inputs and outputs of modules)."""
    available = available_hookpoints(model)
    points = [p for p in resolve_hookpoints(model, [s for s in SITES if s in available])]
    torch.manual_seed(seed)
    saes = {}
    for point in points:
        width = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
        for architecture in ("topk", "jumprelu"):
            sae = create_sae(architecture, width, 4 * width, **({"k": 4} if architecture == "topk" else {}))
            with torch.no_grad():
                sae.W_enc.mul_(3.0)
                sae.b_dec.normal_(0, 0.1)
            saes[f"{point.name}/{architecture}"] = (point, sae.eval())
    return saes


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_resumed_evaluation_equals_full_forwards(family: str, monkeypatch) -> None:
    model = zoo_model(family).eval()
    saes = _saes(model)
    assert len({point.layer for point, _ in saes.values()}) >= 2
    torch.manual_seed(1)
    contexts = torch.randint(4, 300, (5, 12))
    reference = splice_evaluate(model, saes, contexts, [0, 1, 2], batch_contexts=2, progress=False, resume=False)
    monkeypatch.setattr(splice_module, "LOGIT_BUDGET", 2 * 12 * 320 * 2)  # two splices per stacked forward: several chunks
    resumed = splice_evaluate(model, saes, contexts, [0, 1, 2], batch_contexts=2, progress=False)
    for name, metrics in reference.items():
        for field, value in metrics.to_dict().items():
            # loss recovered divides by (zero − clean), which amplifies float rounding where the two are close
            tolerance = 1e-4 if field == "loss_recovered" else 1e-6
            assert getattr(resumed[name], field) == pytest.approx(value, rel=1e-5, abs=tolerance), (name, field)
    # the replayed layers are restored: the model computes as before
    _, layers = find_layers(model)
    assert all("forward" not in vars(layer) for layer in layers)


def test_resumed_evaluation_leaves_the_model_as_it_was_after_an_error() -> None:
    model = zoo_model("llama").eval()
    saes = _saes(model)
    name = next(iter(saes))
    point, sae = saes[name]
    broken = create_sae("topk", sae.d_in + 1, 8, k=2)  # the wrong width: the splice raises
    contexts = torch.randint(4, 300, (2, 8))
    with pytest.raises(Exception):
        splice_evaluate(model, {"broken": (resolve_hookpoints(model, "layers.2.resid_pre")[0], broken)}, contexts, [0], progress=False)
    _, layers = find_layers(model)
    assert all("forward" not in vars(layer) for layer in layers)
    before = model(input_ids=contexts).logits
    torch.testing.assert_close(model(input_ids=contexts).logits, before)


def test_scores_equal_the_log_softmax_definitions() -> None:
    torch.manual_seed(3)
    ids = torch.randint(0, 50, (3, 7))
    mask = torch.rand(3, 6) > 0.3
    clean_logits, other_logits = 3 * torch.randn(3, 7, 50), 3 * torch.randn(3, 7, 50)
    clean = splice_module.Scores(clean_logits, ids, mask).as_reference()
    other = splice_module.Scores(other_logits, ids, mask)
    log_p = clean_logits[:, :-1].log_softmax(-1)[mask]
    log_q = other_logits[:, :-1].log_softmax(-1)[mask]
    targets = ids[:, 1:][mask].unsqueeze(1)
    torch.testing.assert_close(other.ce, -log_q.gather(1, targets).squeeze(1))
    torch.testing.assert_close(other.kl_from(clean), (log_p.exp() * (log_p - log_q)).sum(-1), atol=2e-5, rtol=1e-5)
