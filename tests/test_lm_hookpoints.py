"""Hookpoint resolution, sublayer semantics and early stopping on tiny random models of five families."""

import pytest
import torch
from lm_helpers import tiny_model

from saescope.lm.capture import capture, capture_dict, replace_activation
from saescope.lm.hookpoints import SITES, available_hookpoints, resolve_hookpoints

FAMILIES = ["llama", "qwen2", "gemma2", "gpt2", "gpt_neox"]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return tiny_model(request.param)


def test_every_layer_offers_every_site(model):
    points = available_hookpoints(model)
    parallel = type(model).__name__.startswith("GPTNeoX")
    sites = [s for s in SITES if not (parallel and s == "resid_mid")]
    assert list(points) == [f"layers.{layer}.{site}" for layer in range(3) for site in sites]
    modules = dict(model.named_modules())
    assert all(p.module_name in modules for p in points.values())


def test_sublayer_outputs_add_up_to_the_residual_stream(model):
    """resid_post(L) = resid_post(L-1) + attn_out(L) + mlp_out(L): the sites mean what they say."""
    ids = torch.randint(4, 300, (2, 12))
    acts = capture_dict(model, list(available_hookpoints(model).values()), ids, stop_early=False)
    for layer in (1, 2):
        rebuilt = acts[f"layers.{layer - 1}.resid_post"] + acts[f"layers.{layer}.attn_out"] + acts[f"layers.{layer}.mlp_out"]
        torch.testing.assert_close(rebuilt, acts[f"layers.{layer}.resid_post"], atol=1e-5, rtol=1e-5)
        assert acts[f"layers.{layer}.attn_z"].shape == (2, 12, 32)


def test_attn_z_is_the_input_of_the_output_projection():
    model = tiny_model("llama")
    ids = torch.randint(4, 300, (1, 9))
    acts = capture_dict(model, resolve_hookpoints(model, ["layers.1.attn_z", "layers.1.attn_out"]), ids)
    o_proj = model.model.layers[1].self_attn.o_proj
    torch.testing.assert_close(o_proj(acts["layers.1.attn_z"]), acts["layers.1.attn_out"])


def test_aliases_globs_and_order():
    model = tiny_model("gpt2")
    names = [p.name for p in resolve_hookpoints(model, ["blocks.2.hook_resid_post", "layers.*.mlp_out", "blocks.0.attn.hook_z", "transformer.h.1"])]
    assert names == ["layers.0.attn_z", "layers.0.mlp_out", "layers.1.mlp_out", "layers.1.resid_post", "layers.2.mlp_out", "layers.2.resid_post"]
    assert [p.name for p in resolve_hookpoints(model, "layers.0.resid_post,layers.0.resid_post")] == ["layers.0.resid_post"]


def test_unknown_hookpoint_lists_the_valid_ones():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"unknown hookpoint 'layers.7.resid_post'.*layers.0-2.\{resid_pre, attn_z, attn_out, resid_mid, mlp_in, mlp_post, mlp_out, resid_post\}"):
        resolve_hookpoints(model, ["layers.7.resid_post"])
    with pytest.raises(ValueError, match="unknown hookpoint 'layers.1.mlp_inn'"):
        resolve_hookpoints(model, "layers.1.mlp_inn")
    with pytest.raises(ValueError, match="no hookpoints"):
        resolve_hookpoints(model, [])


def test_early_stop_skips_later_layers_and_the_unembedding(model):
    calls = []
    points = available_hookpoints(model)
    modules = dict(model.named_modules())
    layer_modules = [modules[points[f"layers.{i}.resid_post"].module_name] for i in range(3)]
    handles = [m.register_forward_hook(lambda *_a, i=i: calls.append(i)) for i, m in enumerate(layer_modules)]
    head = model.get_output_embeddings()
    handles.append(head.register_forward_hook(lambda *_a: calls.append("unembed")))
    ids = torch.randint(4, 300, (2, 8))
    got = {}
    capture(model, [points["layers.0.mlp_out"]], lambda p, t: got.__setitem__(p.name, t.clone()), ids)
    assert calls == []  # the stop is raised inside layer 0 (after its MLP): not even layer 0 completes
    capture(model, [points["layers.1.resid_post"]], lambda p, t: got.__setitem__(p.name, t.clone()), ids)
    assert calls == [0, 1]
    full = capture_dict(model, [points["layers.1.resid_post"]], ids, stop_early=False)
    assert "unembed" in calls
    torch.testing.assert_close(got["layers.1.resid_post"], full["layers.1.resid_post"])
    for handle in handles:
        handle.remove()


def test_replace_activation_changes_the_output_and_is_removed():
    model = tiny_model("llama")
    point = available_hookpoints(model)["layers.0.attn_z"]
    ids = torch.randint(4, 300, (1, 6))
    clean = model(input_ids=ids).logits
    with replace_activation(model, point, lambda t: torch.zeros_like(t)):
        ablated = model(input_ids=ids).logits
    assert not torch.allclose(clean, ablated)
    torch.testing.assert_close(model(input_ids=ids).logits, clean)


def test_bracket_globs_as_in_the_example_suite():
    from lm_helpers import tiny_model

    from saescope.lm.hookpoints import resolve_hookpoints

    model = tiny_model("llama", n_layers=9)
    names = [p.name for p in resolve_hookpoints(model, ["layers.[048].resid_post"])]
    assert names == ["layers.0.resid_post", "layers.4.resid_post", "layers.8.resid_post"]
    with pytest.raises(ValueError, match=r"unknown hookpoint 'layers.1\[0-9\].mlp_out'"):
        resolve_hookpoints(model, ["layers.1[0-9].mlp_out"])  # a glob that matches nothing is an error, not an empty suite
