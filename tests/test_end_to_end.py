"""The end-to-end fine-tune: KL to the model's own predictions through the spliced SAE, on a tiny Llama."""

from __future__ import annotations

import copy

import pytest
import torch
from lm_helpers import tiny_loaded, write_corpus

from saescope import create_sae
from saescope.data.tokens import TextContexts
from saescope.errors import InvalidInput
from saescope.evaluation.splice import splice_evaluate
from saescope.lm.hookpoints import resolve_hookpoints
from saescope.training.end_to_end import EndToEndConfig, finetune_end_to_end


def _setup(tmp_path, architecture: str = "topk"):
    torch.manual_seed(0)
    loaded = tiny_loaded("llama", n_layers=3)
    contexts = TextContexts(write_corpus(tmp_path / "c.txt"), loaded.tokenizer, 16, part="all")
    d = loaded.model.config.hidden_size
    options = {"k": 4} if architecture == "topk" else {}
    sae = create_sae(architecture, d, 4 * d, hookpoint="layers.1.resid_post", **options)
    return loaded, contexts, sae


def _kl(loaded, contexts, sae) -> float:
    ids = torch.cat(list(contexts.iter_batches(8, shuffle=False)))[:16]
    point = resolve_hookpoints(loaded.model, "layers.1.resid_post")[0]
    return splice_evaluate(loaded.model, {"sae": (point, sae)}, ids, contexts.excluded_ids, progress=False)["sae"].kl


def test_the_kl_fine_tune_lowers_the_kl_of_the_splice_and_leaves_the_model_alone(tmp_path) -> None:
    loaded, contexts, sae = _setup(tmp_path)
    model_before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    before = _kl(loaded, contexts, sae)
    mse_only = copy.deepcopy(sae)
    summary = finetune_end_to_end(sae, loaded, contexts, EndToEndConfig(tokens=16 * 8 * 24, batch_contexts=8, lr=3e-3, kl_weight=1.0),
                                  progress=False)
    finetune_end_to_end(mse_only, loaded, contexts, EndToEndConfig(tokens=16 * 8 * 24, batch_contexts=8, lr=3e-3, kl_weight=0.0),
                        progress=False)
    after = _kl(loaded, contexts, sae)
    assert summary["steps"] == 24 and summary["last_kl"] < summary["first_kl"]
    assert after < 0.8 * before
    assert after < _kl(loaded, contexts, mse_only)  # the KL term, not just more training, lowers it
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in model_before.items())
    assert all(p.requires_grad for p in loaded.model.parameters())  # as the caller left them (this tiny model: trainable)
    assert all(p.grad is None for p in loaded.model.parameters())
    assert sae.training_summary["end_to_end"]["hookpoint"] == "layers.1.resid_post"
    assert sae.cfg.k == 4 and ((sae.encode(torch.randn(5, sae.d_in)) > 0).sum(dim=1) <= 4).all()


def test_the_resumed_splice_gives_the_same_step_as_the_full_forward(tmp_path, monkeypatch) -> None:
    """The fine-tune replays layers below the SAE; its first step must equal the one from a full forward."""
    import saescope.training.end_to_end as end_to_end

    loaded, contexts, sae = _setup(tmp_path)
    config = EndToEndConfig(tokens=16 * 8, batch_contexts=8, lr=1e-3)
    resumed, full = copy.deepcopy(sae), copy.deepcopy(sae)
    first = finetune_end_to_end(resumed, loaded, contexts, config, progress=False)
    monkeypatch.setattr(end_to_end, "can_replay", lambda model: False)
    second = finetune_end_to_end(full, loaded, contexts, config, progress=False)
    assert first["first_kl"] == pytest.approx(second["first_kl"], rel=1e-4)
    for a, b in zip(resumed.parameters(), full.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_bad_settings_and_stacked_saes_are_refused_with_the_field_named(tmp_path) -> None:
    loaded, contexts, sae = _setup(tmp_path)
    with pytest.raises(InvalidInput, match="kl_weight must be in"):
        EndToEndConfig(kl_weight=2.0)
    with pytest.raises(InvalidInput, match="tokens must be a positive integer"):
        EndToEndConfig(tokens=0)
    sae.cfg.hookpoint = None
    with pytest.raises(InvalidInput, match="names no hookpoint"):
        finetune_end_to_end(sae, loaded, contexts, EndToEndConfig(tokens=128), progress=False)


def test_a_jumprelu_sae_keeps_its_thresholds(tmp_path) -> None:
    loaded, contexts, sae = _setup(tmp_path, "jumprelu")
    threshold = sae.threshold.detach().clone()
    finetune_end_to_end(sae, loaded, contexts, EndToEndConfig(tokens=16 * 8 * 2, batch_contexts=8), progress=False)
    assert torch.equal(sae.threshold.detach(), threshold)


def test_a_suite_option_fine_tunes_each_sae_after_training(tmp_path) -> None:
    from saescope.data.lm_config import LmDataConfig
    from saescope.training import TrainConfig
    from saescope.training.on_model import SaeSpec, train_on_model

    torch.manual_seed(0)
    loaded = tiny_loaded("llama", n_layers=3)
    data = LmDataConfig(dataset=write_corpus(tmp_path / "c.txt"), context_size=16, batch_contexts=4, shuffle_buffer_tokens=256)
    train = TrainConfig(total_tokens=1024, batch_size=256, progress=False, logger="none")
    results = train_on_model(loaded, ["layers.1.resid_post"], [SaeSpec("topk", width=128, target_l0=4)], train, data, eval_tokens=0,
                             end_to_end=EndToEndConfig(tokens=16 * 4 * 3, batch_contexts=4))
    (sae, metrics), = results.values()
    assert sae.training_summary["end_to_end"]["steps"] == 3
    assert metrics["training"]["end_to_end"]["hookpoint"] == "layers.1.resid_post"


def test_the_fine_tune_is_refused_for_vectors_without_a_model(tmp_path) -> None:
    import numpy as np

    from saescope.plan import PlanError, RunPlan

    np.save(tmp_path / "x.npy", np.zeros((8, 4), dtype=np.float32))
    with pytest.raises(PlanError, match="end_to_end_tokens: the end-to-end fine-tune splices SAEs into a language model"):
        RunPlan.from_dict({"data": {"array": str(tmp_path / "x.npy")}, "training": {"end_to_end_tokens": 1024}})
