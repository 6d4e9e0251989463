"""Every hook site means what its name says on every decoder family transformers implements (issue 12).

For each family a tiny random model checks the identities that define the sites, and that a
replacement at a site reaches the rest of the forward exactly as the site's definition says.
"""

import pytest
import torch
from model_zoo import FAMILIES, MIXTURE_OF_EXPERTS, PARALLEL, zoo_model

from saescope.lm.capture import capture_dict, hooked
from saescope.lm.hookpoints import SITES, available_hookpoints, resolve_hookpoints
from saescope.lm.site_check import sublayer_errors

IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 31, 64, 12]])


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request):
    return request.param, zoo_model(request.param)


def _expected_sites(family: str, layer: int) -> list[str]:
    absent = set()
    if family in PARALLEL:
        absent.add("resid_mid")
    if family in MIXTURE_OF_EXPERTS and not (family.startswith("deepseek") and layer == 0):
        absent.add("mlp_post")
    return [s for s in SITES if s not in absent]


def test_sites_exist_and_add_up(family_model):
    family, model = family_model
    points = available_hookpoints(model)
    for layer in range(3):
        assert [p.site for p in points.values() if p.layer == layer] == _expected_sites(family, layer)
    # resid_post(L) = resid_pre(L) + attn_out(L) + mlp_out(L)
    assert max(sublayer_errors(model, [0, 1, 2]).values()) < 1e-4
    acts = capture_dict(model, list(points.values()), IDS, stop_early=False)
    for layer in (1, 2):
        torch.testing.assert_close(acts[f"layers.{layer}.resid_pre"], acts[f"layers.{layer - 1}.resid_post"])
        if f"layers.{layer}.resid_mid" in acts:
            rebuilt = acts[f"layers.{layer}.resid_mid"] + acts[f"layers.{layer}.mlp_out"]
            torch.testing.assert_close(rebuilt, acts[f"layers.{layer}.resid_post"], atol=1e-4, rtol=1e-4)
    for name, value in acts.items():
        assert value.shape[:2] == IDS.shape, name


def test_a_replacement_at_mlp_out_and_resid_mid_lands_exactly(family_model):
    """Adding δ at mlp_out moves resid_post by δ; replacing resid_mid by v makes resid_post = v + mlp_out."""
    family, model = family_model
    points = available_hookpoints(model)
    seen = {}
    delta = torch.randn(1, IDS.shape[1], 32, generator=torch.Generator().manual_seed(1))

    def keep(name):
        def read(tensor):
            seen[name] = tensor.detach().clone()

        return read

    before = capture_dict(model, [points["layers.1.resid_post"]], IDS)["layers.1.resid_post"]
    with torch.no_grad(), hooked(model, [(points["layers.1.mlp_out"], lambda t: t + delta), (points["layers.1.resid_post"], keep("post"))]):
        model(input_ids=IDS, use_cache=False)
    torch.testing.assert_close(seen["post"], before + delta, atol=1e-4, rtol=1e-4)
    if "layers.1.resid_mid" in points:
        target = torch.randn(1, IDS.shape[1], 32, generator=torch.Generator().manual_seed(2))
        hooks = [(points["layers.1.resid_mid"], lambda t: target), (points["layers.1.mlp_out"], keep("mlp")), (points["layers.1.resid_post"], keep("post"))]
        with torch.no_grad(), hooked(model, hooks):
            model(input_ids=IDS, use_cache=False)
        torch.testing.assert_close(seen["post"], target + seen["mlp"], atol=1e-4, rtol=1e-4)


def test_an_identity_replacement_at_every_site_leaves_the_logits_alone(family_model):
    family, model = family_model
    with torch.no_grad():
        reference = model(input_ids=IDS, use_cache=False).logits
        for point in available_hookpoints(model).values():
            if point.layer != 1:
                continue
            with hooked(model, [(point, lambda t: t.clone() * 1.0)]):
                logits = model(input_ids=IDS, use_cache=False).logits
            torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4, msg=f"{family} {point.name}")


def test_sublayer_sites_pass_the_runtime_check(family_model):
    family, model = family_model
    resolve_hookpoints(model, ["layers.*.attn_out", "layers.*.mlp_out"])  # raises if the identity fails


def _scaled_block_output(module, args, output):
    return (output[0] * 1.5, *output[1:]) if isinstance(output, tuple) else output * 1.5


def test_a_mis_wired_block_is_refused_by_the_runtime_check():
    """A block that scales its output (a multiplier saescope does not know about) must not be read as if it added up."""
    model = zoo_model("llama")
    model.model.layers[1].register_forward_hook(_scaled_block_output)
    resolve_hookpoints(model, ["layers.1.resid_post", "layers.0.mlp_out"])  # resid sites and intact layers pass
    with pytest.raises(ValueError, match=r"LlamaForCausalLM: layers\.1\.mlp_out would read the wrong tensor: at layer 1.*layers\.1\.resid_post"):
        resolve_hookpoints(model, ["layers.1.mlp_out"])
    with pytest.raises(ValueError, match=r"layers\.1\.attn_out, layers\.1\.resid_mid would read the wrong tensor"):
        resolve_hookpoints(model, ["layers.1.attn_out", "layers.1.resid_mid"])


def test_missing_sites_say_why_and_suggest_what_exists():
    with pytest.raises(ValueError, match=r"GPTJForCausalLM has parallel blocks .* no resid_mid"):
        resolve_hookpoints(zoo_model("gptj"), "layers.1.resid_mid")
    with pytest.raises(ValueError, match=r"no single MLP hidden layer .*use mlp_out.*mlp_post only at some layers"):
        resolve_hookpoints(zoo_model("deepseek_v2"), "layers.1.mlp_post")
    assert [p.name for p in resolve_hookpoints(zoo_model("deepseek_v2"), "layers.0.mlp_post")] == ["layers.0.mlp_post"]


def test_transformer_lens_aliases_for_the_new_sites():
    model = zoo_model("gpt2")
    names = ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.mlp.hook_post", "embed"]
    assert [p.name for p in resolve_hookpoints(model, names)] == ["layers.0.resid_pre", "layers.1.resid_pre", "layers.1.resid_mid", "layers.1.mlp_post"]
    acts = capture_dict(model, resolve_hookpoints(model, ["layers.1.mlp_post"]), IDS)
    assert acts["layers.1.mlp_post"].shape == (1, IDS.shape[1], 4 * 32)  # GPT-2's MLP hidden width


def test_mlp_in_is_what_the_mlp_reads_on_every_family(family_model):
    """A transcoder's input: the MLP's output must be a function of mlp_in alone, token by token (the runtime check)."""
    from saescope.lm.site_check import mlp_input_errors

    family, model = family_model
    points = resolve_hookpoints(model, ["layers.*.mlp_in"])  # raises if the runtime check fails
    assert [p.site for p in points] == ["mlp_in"] * 3, family
    errors = mlp_input_errors(model, [0, 1, 2])
    assert sorted(errors) == [0, 1, 2] and max(errors.values()) < 1e-5, (family, errors)
    acts = capture_dict(model, points, IDS)
    assert acts["layers.1.mlp_in"].shape[-1] == 32  # the residual width: what the pre-MLP norm returns


def test_an_mlp_that_reads_more_than_mlp_in_is_refused():
    """An MLP that also reads the raw residual stream (outside the hooked input) cannot be replaced by a transcoder."""
    model = zoo_model("llama")
    block = model.model.layers[1]
    mlp_forward = block.mlp.forward
    kept = {}
    block.register_forward_pre_hook(lambda module, args, kwargs: kept.__setitem__("residual", args[0] if args else kwargs["hidden_states"]),
                                    with_kwargs=True)
    block.mlp.forward = lambda x: mlp_forward(x) + 0.5 * kept["residual"]
    resolve_hookpoints(model, ["layers.0.mlp_in"])  # an intact layer passes
    with pytest.raises(ValueError, match=r"LlamaForCausalLM: layers\.1\.mlp_in is not all the MLP reads.*layers\.1\.mlp_out instead"):
        resolve_hookpoints(model, ["layers.1.mlp_in"])


def test_transformer_lens_and_circuit_tracer_names_of_mlp_in():
    model = zoo_model("gpt2")
    assert [p.name for p in resolve_hookpoints(model, ["blocks.2.ln2.hook_normalized", "blocks.1.mlp.hook_in"])] == [
        "layers.1.mlp_in", "layers.2.mlp_in"]
