"""Streaming activations from a live model, the shuffle buffer, splice evaluation and train_on_model."""

import json

import pytest
import torch
from lm_helpers import tiny_loaded, write_corpus

from saescope.data.lm_config import LmDataConfig
from saescope.data.shuffle_buffer import MultiShuffleBuffer
from saescope.data.tokens import TextContexts, trainable_mask
from saescope.evaluation.splice import sae_splice, splice_evaluate
from saescope.lm.capture import capture_dict, replace_activation
from saescope.lm.hookpoints import resolve_hookpoints
from saescope.lm.stream import ModelActivationSource
from saescope.saes import create_sae
from saescope.training import TrainConfig, Trainer
from saescope.training.on_model import SaeSpec, train_on_model


@pytest.fixture(scope="module")
def loaded():
    return tiny_loaded("llama", n_layers=2)


@pytest.fixture()
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus.txt")


def test_shuffle_buffer_returns_every_row_once_aligned_across_hookpoints():
    buffer = MultiShuffleBuffer({"a": 2, "b": 3}, capacity=64, seed=0)
    seen = []
    for chunk in range(6):
        rows = torch.arange(chunk * 10, chunk * 10 + 10, dtype=torch.float32)
        buffer.add("a", rows[:, None].expand(10, 2))
        buffer.add("b", rows[:, None].expand(10, 3))
        buffer.commit(10)
        if buffer.size >= 32:
            out = buffer.take(16)
            assert torch.equal(out["a"][:, 0], out["b"][:, 0])
            seen += out["a"][:, 0].tolist()
    while buffer.size:
        seen += buffer.take(min(16, buffer.size))["a"][:, 0].tolist()
    assert sorted(seen) == list(range(60))
    assert seen[:16] != sorted(seen[:16])
    with pytest.raises(ValueError, match="overflow"):
        buffer.add("a", torch.zeros(65, 2))


def test_stream_yields_only_ordinary_tokens(loaded, corpus):
    contexts = TextContexts(corpus, loaded.tokenizer, 32, part="all")
    source = ModelActivationSource(loaded, contexts, ["layers.1.resid_post", "layers.0.attn_out"], batch_contexts=4)
    assert source.d_in == {"layers.0.attn_out": 32, "layers.1.resid_post": 32}
    head = source.head(200)
    ids = contexts.all_contexts()[:8]
    reference = capture_dict(loaded.model, resolve_hookpoints(loaded.model, ["layers.1.resid_post"]), ids)["layers.1.resid_post"]
    mask = trainable_mask(ids, contexts.excluded_ids)
    torch.testing.assert_close(head["layers.1.resid_post"], reference[mask][:200])
    # Every streamed row is some ordinary token's activation; the BOS row (an outlier) never appears.
    bos_rows = reference[~mask]
    batch = next(source.iter_batches(64, seed=0))
    distances = torch.cdist(batch["layers.1.resid_post"], bos_rows).min()
    assert distances > 1e-4
    assert batch["layers.0.attn_out"].shape == (64, 32)


def test_splicing_with_the_error_added_back_reproduces_the_clean_logits(loaded):
    point = resolve_hookpoints(loaded.model, "layers.0.resid_post")[0]
    sae = create_sae("jumprelu", 32, 64)
    ids = torch.randint(4, 300, (2, 10))
    clean = loaded.model(input_ids=ids).logits
    mask = torch.ones_like(ids, dtype=torch.bool)
    with replace_activation(loaded.model, point, sae_splice(sae, mask, add_error=True)):
        spliced_with_error = loaded.model(input_ids=ids).logits
    torch.testing.assert_close(spliced_with_error, clean, atol=1e-5, rtol=1e-5)
    with replace_activation(loaded.model, point, sae_splice(sae, mask)):
        assert not torch.allclose(loaded.model(input_ids=ids).logits, clean, atol=1e-3)


def test_splice_metrics_follow_their_definitions(loaded, corpus):
    point = resolve_hookpoints(loaded.model, "layers.0.resid_post")[0]
    contexts = TextContexts(corpus, loaded.tokenizer, 32, part="all").all_contexts()[:6]
    dead_sae = create_sae("jumprelu", 32, 64)
    with torch.no_grad():
        for tensor in dead_sae.parameters():
            tensor.zero_()
    # A zero reconstruction is a zero ablation: loss recovered 0, ΔLM = zero CE − clean CE.
    result = splice_evaluate(loaded.model, {"zero": (point, dead_sae)}, contexts, [1, 2, 3], progress=False)["zero"]
    assert result.spliced_loss == pytest.approx(result.zero_ablation_loss, abs=1e-6)
    assert result.loss_recovered == pytest.approx(0.0, abs=1e-6)
    assert result.delta_lm_loss == pytest.approx(result.zero_ablation_loss - result.clean_loss, abs=1e-6)
    assert result.kl > 0
    assert result.n_tokens == int(trainable_mask(contexts[:, :-1], [1, 2, 3]).sum())


def test_trainer_routes_each_sae_to_its_hookpoint(loaded, corpus):
    contexts = TextContexts(corpus, loaded.tokenizer, 32, part="all")
    source = ModelActivationSource(loaded, contexts, ["layers.0.resid_post", "layers.1.mlp_out"], batch_contexts=4, shuffle_buffer_tokens=512)
    saes = {
        "a": create_sae("topk", 32, 64, k=4, hookpoint="layers.0.resid_post"),
        "b": create_sae("topk", 32, 64, k=4, hookpoint="layers.1.mlp_out"),
    }
    config = TrainConfig(total_tokens=2048, batch_size=256, progress=False, normalization_tokens=512)
    Trainer(saes, config).fit(source)
    assert saes["a"].normalization["input_scale"] != pytest.approx(saes["b"].normalization["input_scale"], rel=0.01)
    stray = {"c": create_sae("topk", 32, 64, k=4, hookpoint="layers.1.attn_out")}
    with pytest.raises(ValueError, match=r"SAE 'c' reads hookpoint\(s\) \['layers.1.attn_out'\] but the data provides"):
        Trainer(stray, config).fit(source)


def test_train_on_model_writes_folders_with_metrics(loaded, corpus, tmp_path):
    specs = [SaeSpec("jumprelu", width=64, target_l0=4), SaeSpec("topk", width=64, target_l0=4)]
    config = TrainConfig(total_tokens=4096, batch_size=256, progress=False, normalization_tokens=1024)
    data = LmDataConfig(dataset=corpus, context_size=32, batch_contexts=8, shuffle_buffer_tokens=1024, eval_fraction=0.2)
    results = train_on_model(loaded, ["layers.1.resid_post"], specs, config, data, out_dir=str(tmp_path / "run"), eval_tokens=512)
    assert sorted(results) == ["layers.1.resid_post/jumprelu-w64-l0_4", "layers.1.resid_post/topk-w64-l0_4"]
    for name in results:
        folder = tmp_path / "run" / name
        metrics = json.loads((folder / "metrics.json").read_text())
        for key in ("l0", "fvu", "delta_lm_loss", "loss_recovered", "kl", "dead_fraction", "unfired_fraction", "dense_fraction"):
            assert isinstance(metrics[key], float), key
        assert metrics["clean_loss"] > 0
        cfg = json.loads((folder / "cfg.json").read_text())
        # dead comes from the training run's window (4096 / 5 tokens), unfired from the evaluation's own tokens
        assert metrics["dead_window_tokens"] == 4096 // 5 == cfg["training"]["dead_window_tokens"]
        assert metrics["dead_fraction"] == cfg["training"]["dead_fraction"]
        assert metrics["n_tokens"] < 512 and metrics["unfired_fraction"] >= metrics["dead_fraction"] - 0.2
        assert cfg["hookpoint"] == "layers.1.resid_post" and cfg["model_id"] == "tiny-llama"
    assert results["layers.1.resid_post/topk-w64-l0_4"][1]["l0"] == pytest.approx(4.0)
