"""SAEs on attn_z and mlp_post: logit effects through the projection, for any head count and size (issue 12)."""

import json

import torch
from lm_helpers import tiny_suite_config, tiny_tokenizer, write_corpus
from model_zoo import zoo_model

from saescope.interpret.directions import logit_effects, residual_directions
from saescope.interpret.run import interpret_suite
from saescope.io.checkpoint import load
from saescope.lm.hookpoints import available_hookpoints
from saescope.suite import train_suite


def test_attn_z_directions_go_through_W_O_and_the_post_attention_norm():
    """Gemma 2 shape: 4 heads × 16 = 64 ≠ d_model 32, a sandwich norm after W_O."""
    model = zoo_model("gemma2")
    block = model.model.layers[1]
    decoder = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    point = available_hookpoints(model)["layers.1.attn_z"]
    expected = (decoder @ block.self_attn.o_proj.weight.detach().T) * (1 + block.post_attention_layernorm.weight.detach())
    torch.testing.assert_close(residual_directions(model, point, decoder), expected)
    ids, values, _, _ = logit_effects(model, residual_directions(model, point, decoder), top=3)
    direct = (expected * (1 + model.model.norm.weight.detach())) @ model.lm_head.weight.detach().T
    torch.testing.assert_close(values, direct.topk(3, dim=1).values, atol=1e-5, rtol=1e-5)


def test_mlp_post_directions_go_through_the_down_projection_and_granite_multiplier():
    gpt2 = zoo_model("gpt2")  # Conv1D: weight is [in, out], with a bias to leave out
    decoder = torch.randn(4, 128, generator=torch.Generator().manual_seed(1))
    point = available_hookpoints(gpt2)["layers.2.mlp_post"]
    torch.testing.assert_close(residual_directions(gpt2, point, decoder), decoder @ gpt2.transformer.h[2].mlp.c_proj.weight.detach())
    granite = zoo_model("granite")
    decoder = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    point = available_hookpoints(granite)["layers.0.mlp_post"]
    expected = 0.2 * decoder @ granite.model.layers[0].mlp.down_proj.weight.detach().T
    torch.testing.assert_close(residual_directions(granite, point, decoder), expected)
    resid = available_hookpoints(granite)["layers.0.resid_post"]
    assert torch.equal(residual_directions(granite, resid, decoder[:, :32]), decoder[:, :32])


def test_a_gemma_2_shaped_suite_with_attn_z_and_mlp_post_saes_interprets(tmp_path):
    model = zoo_model("gemma2")
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    config = tiny_suite_config(str(tmp_path / "model"), write_corpus(tmp_path / "c.txt"),
                               hookpoints=["layers.1.attn_z", "layers.1.mlp_post", "layers.1.resid_mid"])
    train_suite(config, tmp_path / "suite", progress=False, report=lambda line: None)
    result = interpret_suite(tmp_path / "suite", tokens=1024, top_k=3, window=2, batch_contexts=8, progress=False)
    assert set(result["saes"]) == {f"layers.1.{site}/topk-w64-l0_4" for site in ("attn_z", "mlp_post", "resid_mid")}
    folder = tmp_path / "suite" / "layers.1.attn_z/topk-w64-l0_4"
    sae = load(folder)
    assert sae.cfg.d_in == 64
    record = json.loads((folder / "interpret" / "features_00000.json").read_text())[7]
    block = model.model.layers[1]
    row = sae.W_dec.detach()[7] @ block.self_attn.o_proj.weight.detach().T * (1 + block.post_attention_layernorm.weight.detach())
    logits = (row * (1 + model.model.norm.weight.detach())) @ model.lm_head.weight.detach().T
    assert [token for token, _value in record["logits"]["top"]] == logits.topk(10).indices.tolist()


def test_logit_effects_of_every_site_of_every_family_run():
    """No crash in interpretation's direction maths for any site of any family (issue 12, item 3)."""
    from model_zoo import FAMILIES

    from saescope.lm.capture import site_widths

    for family in sorted(FAMILIES):
        model = zoo_model(family)
        points = [p for p in available_hookpoints(model).values() if p.layer == 1]
        widths = site_widths(model, points)
        for point in points:
            rows = torch.randn(3, widths[point.name], generator=torch.Generator().manual_seed(0))
            directions = residual_directions(model, point, rows)
            assert directions.shape == (3, 32), (family, point.name)
            ids, values, _, _ = logit_effects(model, directions, top=4)
            assert ids.shape == (3, 4) and torch.isfinite(values).all(), (family, point.name)
