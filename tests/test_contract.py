"""The SAE contract, proven from outside the package: a new architecture and its objective, both defined and
registered in this file, run through train -> save -> load -> evaluate -> a suite on a tiny model ->
`saescope eval` -> interpret -> steer, with no edit anywhere in saescope; and so does a job of that
architecture that reads every layer of the model at once (a stacked read).

The toy is a two-prefix Matryoshka TopK: the first `prefix` latents must reconstruct on their own as
well as together with the rest (Bussmann et al. 2025, with two nested dictionaries).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from lm_helpers import save_tiny_model, tiny_loaded, tiny_suite_config, write_corpus
from torch import Tensor

import saescope
from saescope import (
    ARCHITECTURES,
    OBJECTIVES,
    FeatureCode,
    Objective,
    SparseAutoencoder,
    StepContext,
    create_job,
    evaluate_sae,
    register_architecture,
    register_objective,
    train_saes,
)
from saescope.objectives import loss_output, squared_error
from saescope.saes import SaeConfig
from saescope.synthetic.synthetic import SyntheticActivations, SyntheticConfig

NAME = "test_two_prefix_topk"


@dataclass
class TwoPrefixConfig(SaeConfig):
    k: int = 4
    """Active latents per token."""
    prefix: int = 8
    """Latents of the inner dictionary, which must reconstruct on its own."""


class TwoPrefixTopK(SparseAutoencoder):
    architecture = NAME
    config_class = TwoPrefixConfig
    default_objective = NAME
    apply_b_dec_to_input = True

    def encode_code(self, x: Tensor) -> FeatureCode:
        values, indices = self.pre_activations(x).topk(self.cfg.k, dim=-1)
        return FeatureCode.selected(indices, torch.relu(values), self.d_sae)

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_code(x).dense()


def inner_code(code: FeatureCode, prefix: int) -> FeatureCode:
    return FeatureCode.selected(code.indices, torch.where(code.indices < prefix, code.values, 0.0), code.d_sae)


@dataclass
class TwoPrefixObjective(Objective):
    inner_weight: float = 1.0
    """Weight of the inner dictionary's own reconstruction error."""

    name = NAME
    architectures = (NAME,)
    sparsity_mode = "k"
    base_lr = 2e-3

    def sae_options(self, options: dict[str, Any], d_sae: int) -> dict[str, Any]:
        if self.target_l0 is not None and "k" not in options:
            return {**options, "k": max(1, int(round(self.target_l0)))}
        return options

    def loss(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext):
        code = sae.encode_code(x)
        reconstruction = sae.decode_code(code)
        inner = sae.decode_code(inner_code(code, sae.cfg.prefix))
        terms = {"mse": squared_error(reconstruction, x), "inner_mse": self.inner_weight * squared_error(inner, x)}
        return loss_output(code, reconstruction, terms)


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_architecture(TwoPrefixTopK)
    register_objective(TwoPrefixObjective)
    yield
    ARCHITECTURES.pop(NAME)
    OBJECTIVES.pop(NAME)


def _inner_fvu(sae: SparseAutoencoder, x: Tensor) -> float:
    with torch.no_grad():
        inner = sae.decode_code(inner_code(sae.encode_code(x), sae.cfg.prefix))
    return float((x - inner).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_a_registered_architecture_trains_saves_loads_and_evaluates(tmp_path):
    data = SyntheticActivations(SyntheticConfig(d_in=16, n_features=48, mean_l0=3, seed=0))
    acts = data.sample(60_000, seed=0) * 5.0 + 1.0
    config = saescope.TrainConfig(total_tokens=512 * 150, batch_size=512, progress=False)
    torch.manual_seed(0)
    nested = create_job(NAME, 16, 64, target_l0=4, prefix=8, name="nested")
    flat = create_job(NAME, 16, 64, target_l0=4, prefix=8, inner_weight=0.0, name="flat")  # the same SAE without the inner loss
    trained = train_saes(acts, [nested, flat], config, out_dir=str(tmp_path))

    loaded = saescope.load(tmp_path / "nested")
    assert type(loaded) is TwoPrefixTopK and loaded.cfg.k == 4 and loaded.cfg.prefix == 8
    held_out = data.sample(8_000, seed=1) * 5.0 + 1.0
    assert torch.equal(loaded.encode(held_out), trained["nested"].encode(held_out))
    metrics = evaluate_sae(loaded, held_out)
    assert metrics.l0 <= 4 and metrics.fvu < 0.6 and metrics.description_length is not None
    cfg = json.loads((tmp_path / "nested" / "cfg.json").read_text())
    assert cfg["training"]["objective"] == {**TwoPrefixObjective(target_l0=4).to_dict()}
    # The objective did its job: the inner 8 latents reconstruct alone far better than without the inner loss.
    assert _inner_fvu(loaded, held_out) < 0.8 * _inner_fvu(trained["flat"], held_out)


def test_a_registered_architecture_runs_a_suite_eval_interpret_and_steer(tmp_path):
    from saescope.interpret.run import interpret_suite
    from saescope.steer import Intervention, Steering, generate
    from saescope.suite import evaluate_suite, train_suite

    corpus = write_corpus(tmp_path / "c.txt", repeat=12)
    config = tiny_suite_config(save_tiny_model(tmp_path / "model"), corpus, architectures=[NAME], options={NAME: {"prefix": 16}})
    index = train_suite(config, tmp_path / "suite", progress=False, report=lambda line: None)
    paths = [entry["path"] for entry in index["saes"]]
    assert paths == [f"layers.0.resid_post/{NAME}-w64-l0_4", f"layers.1.resid_post/{NAME}-w64-l0_4"]
    assert all(entry["metrics"]["delta_lm_loss"] == entry["metrics"]["delta_lm_loss"] for entry in index["saes"])  # measured, not NaN

    rows = evaluate_suite(tmp_path / "suite", recompute=True, plots=False, progress=False)
    assert [row["l0"] for row in rows] == pytest.approx([4.0, 4.0], abs=1e-6)

    result = interpret_suite(tmp_path / "suite", tokens=2048, top_k=3, window=2, batch_contexts=8, progress=False)
    assert set(result["saes"]) == set(paths) and all(info["alive"] > 0 for info in result["saes"].values())

    sae = saescope.load(tmp_path / "suite" / paths[1])
    assert sae.cfg.prefix == 16 and sae.cfg.hookpoint == "layers.1.resid_post"
    loaded = tiny_loaded("llama", n_layers=2)
    prompt = "A list is a mutable"
    ablated = Steering(loaded.model, [Intervention(sae, feature, 0.0, kind="ablate") for feature in range(64)])
    clamped = Steering(loaded.model, [Intervention(sae, 0, 0.0, kind="clamp")])
    plain_ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        plain = loaded.model(input_ids=plain_ids, use_cache=False).logits
        with ablated.active():
            without_features = loaded.model(input_ids=plain_ids, use_cache=False).logits
    assert not torch.allclose(plain, without_features, atol=1e-4)  # ablating every feature changes the model
    assert len(generate(loaded, prompt, max_new_tokens=4, temperature=0, steering=clamped)) == 4


def test_a_registered_architecture_reading_every_layer_runs_train_to_steer(tmp_path):
    from saescope.data.tokens import TextContexts
    from saescope.interpret.run import interpret_suite
    from saescope.lm.stream import ModelActivationSource
    from saescope.saes.stacked import at_hookpoint, stacked_hookpoints
    from saescope.steer import Intervention, Steering
    from saescope.suite import evaluate_suite, train_suite

    loaded = tiny_loaded("llama", n_layers=3)
    corpus = write_corpus(tmp_path / "c.txt", repeat=12)
    hookpoints = ["layers.0.resid_post", "layers.1.resid_post", "layers.2.resid_post"]
    # the Python API: one job reads all three layers
    source = ModelActivationSource(loaded, TextContexts(corpus, loaded.tokenizer, 32, part="all"), hookpoints, batch_contexts=4,
                                   shuffle_buffer_tokens=512)
    job = create_job(NAME, 32, 64, target_l0=4, prefix=16, reads=hookpoints, name="every-layer")
    trained = train_saes(source, [job], saescope.TrainConfig(total_tokens=2048, batch_size=128, progress=False), out_dir=str(tmp_path / "api"))
    sae = saescope.load(tmp_path / "api" / "every-layer")
    assert type(sae) is TwoPrefixTopK and stacked_hookpoints(sae) == hookpoints
    assert torch.equal(sae.encode(torch.ones(2, 32)), trained["every-layer"].encode(torch.ones(2, 32)))

    # the suite path: train, per-layer evaluation, interpretation with layers, steering at one layer
    config = tiny_suite_config(save_tiny_model(tmp_path / "model", n_layers=3), corpus, architectures=[NAME], options={NAME: {"prefix": 16}},
                               multilayer=True, batch_size=128)
    index = train_suite(config, tmp_path / "suite", progress=False, report=lambda line: None)
    path = f"multilayer/{NAME}-w64-l0_4"
    assert [entry["path"] for entry in index["saes"]] == [path]
    rows = evaluate_suite(tmp_path / "suite", plots=False, progress=False)
    assert [row["layer"] for row in rows if row.get("layer_of") == path] == [0, 1, 2]
    assert all(row["l0"] == pytest.approx(4.0) for row in rows)
    interpret_suite(tmp_path / "suite", tokens=1024, top_k=3, window=2, batch_contexts=8, progress=False)
    summary = json.loads((tmp_path / "suite" / path / "interpret" / "summary.json").read_text())
    assert summary["hookpoints"] == hookpoints
    stacked = saescope.load(tmp_path / "suite" / path)
    prompt_ids = loaded.tokenizer("A list is a mutable", return_tensors="pt").input_ids
    ablate_all = Steering(loaded.model, [Intervention(stacked, f, 0.0, kind="ablate", hookpoint=hookpoints[1]) for f in range(64)])
    with torch.no_grad():
        plain = loaded.model(input_ids=prompt_ids, use_cache=False).logits
        with ablate_all.active():
            ablated = loaded.model(input_ids=prompt_ids, use_cache=False).logits
    assert not torch.allclose(plain, ablated, atol=1e-4)
    assert at_hookpoint(stacked, hookpoints[1]).cfg.prefix == 16
