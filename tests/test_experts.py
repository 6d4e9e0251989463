"""Expert sites, switching, profiling statistics and evaluation on tiny random MoE models of every family."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_zoo import MIXTURE_OF_EXPERTS, zoo_model

from saescope.errors import InvalidInput, MissingFile
from saescope.experts import (
    ExpertProfile,
    ExpertSwitch,
    find_moe_layers,
    parse_experts,
    switch_experts,
)
from saescope.experts.profile import bootstrap_intervals, selection_statistics
from saescope.experts.prompts import read_prompts
from saescope.experts.record import Selections
from saescope.experts.routing import Rerouter
from saescope.experts.scorers import make_scorer

FAMILIES = sorted(MIXTURE_OF_EXPERTS)
SHARED = {"qwen2_moe", "deepseek_v2", "deepseek_v3"}


@pytest.fixture(scope="module")
def models():
    return {family: zoo_model(family) for family in FAMILIES}


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(4, 300, (2, 10), generator=torch.Generator().manual_seed(seed))


def _record(model, layer, run):
    """Run ``run()`` and return the experts the router at ``layer`` chose (after any switch's hook)."""
    router = dict(model.named_modules())[layer.router]
    seen = {}
    handle = router.register_forward_hook(lambda _m, _a, out: seen.update(indices=out[2].reshape(-1, out[2].shape[-1]).clone(),
                                                                           logits=out[0].reshape(-1, out[0].shape[-1]).clone()))
    try:
        with torch.no_grad():
            result = run()
    finally:
        handle.remove()
    return seen, result


@pytest.mark.parametrize("family", FAMILIES)
def test_moe_layers_are_found_by_structure(models, family):
    layers = find_moe_layers(models[family])
    assert layers and all(layer.n_experts == 4 and layer.top_k == 2 for layer in layers)
    assert all(layer.router.endswith((".gate", ".router")) and layer.experts.endswith(".experts") for layer in layers)
    assert (layers[0].shared is not None) == (family in SHARED)
    if family.startswith("deepseek"):
        assert [layer.layer for layer in layers] == [1, 2]  # first_k_dense_replace=1: layer 0 is a dense MLP


def test_a_dense_model_is_refused_with_what_to_use():
    with pytest.raises(InvalidInput, match="no mixture-of-experts layer.*Mixtral"):
        find_moe_layers(zoo_model("llama"))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_detected_rule_reproduces_the_router(models, family):
    model = models[family]
    for layer in find_moe_layers(model):
        router = dict(model.named_modules())[layer.router]
        hidden = torch.randn(7, model.config.hidden_size)
        with torch.no_grad():
            logits, weights, indices = router(hidden)[:3]
            rerouter = Rerouter.detect(router, logits, weights, indices, where="test")
            none = torch.zeros(layer.n_experts, dtype=torch.bool)
            mine_w, mine_i = rerouter(router, logits, none, none, like=(weights, indices))
        order, ref = mine_i.sort(-1), indices.sort(-1)
        assert torch.equal(order.values, ref.values)
        torch.testing.assert_close(mine_w.gather(1, order.indices).float(), weights.gather(1, ref.indices).float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_switched_off_experts_are_never_chosen_and_the_next_best_takes_the_slot(models, family):
    model = models[family]
    layer = find_moe_layers(model)[-1]
    plain, _ = _record(model, layer, lambda: model(_ids()))
    busiest = int(torch.bincount(plain["indices"].reshape(-1), minlength=layer.n_experts).argmax())
    with switch_experts(model, off=[(layer.layer, busiest)]):
        steered, _ = _record(model, layer, lambda: model(_ids()))
    assert not (steered["indices"] == busiest).any()
    assert (plain["indices"] == busiest).any()
    # where the router's logits are the choice (no load-balancing bias, one group), the choice is the
    # top-k of the logits with the expert removed: brute force, token by token
    if family != "deepseek_v3":
        logits = steered["logits"].float().clone()
        logits[:, busiest] = float("-inf")
        expected = logits.topk(layer.top_k, dim=-1).indices.sort(-1).values
        assert torch.equal(steered["indices"].sort(-1).values, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_forced_experts_are_chosen_for_every_token(models, family):
    model = models[family]
    layer = find_moe_layers(model)[0]
    plain, _ = _record(model, layer, lambda: model(_ids()))
    rarest = int(torch.bincount(plain["indices"].reshape(-1), minlength=layer.n_experts).argmin())
    with switch_experts(model, on=[(layer.layer, rarest)]):
        steered, logits = _record(model, layer, lambda: model(_ids()).logits)
    assert (steered["indices"] == rarest).any(dim=-1).all()
    assert not torch.equal(logits, model(_ids()).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_empty_switch_changes_nothing(models, family):
    model = models[family]
    with torch.no_grad():
        before = model(_ids()).logits
        with switch_experts(model, off=[], on=[]) as switch:
            during = model(_ids()).logits
    assert switch.empty and torch.equal(before, during)
    assert all(not module._forward_hooks for module in model.modules())


def test_positions_prompt_and_generated():
    model = zoo_model("mixtral")
    layer = find_moe_layers(model)[0]
    ids = _ids()
    with torch.no_grad():
        plain = model(ids).logits
        switch = ExpertSwitch(model, off=[(layer.layer, 0), (layer.layer, 1)], positions="generated")
        with switch.active():
            first = model(ids).logits  # the prompt: untouched
            second = model(ids).logits  # a "generated" forward: switched
        assert torch.equal(first, plain) and not torch.equal(second, plain)
        switch = ExpertSwitch(model, off=[(layer.layer, 0), (layer.layer, 1)], positions="prompt")
        with switch.active():
            first = model(ids).logits
            second = model(ids).logits
        assert not torch.equal(first, plain) and torch.equal(second, plain)


def test_bad_switches_are_refused_with_the_reason():
    model = zoo_model("mixtral")
    with pytest.raises(InvalidInput, match="expected LAYER:EXPERT"):
        parse_experts(["3-17"], where="--off")
    assert parse_experts(["0:1", "2:0,3"]) == [(0, 1), (2, 0), (2, 3)]
    with pytest.raises(InvalidInput, match="layer 7 is not an MoE layer"):
        ExpertSwitch(model, off=[(7, 0)])
    with pytest.raises(InvalidInput, match="expert 9 does not exist at layer 0"):
        ExpertSwitch(model, off=[(0, 9)])
    with pytest.raises(InvalidInput, match="both switched off and forced on"):
        ExpertSwitch(model, off=[(0, 1)], on=[(0, 1)])
    with pytest.raises(InvalidInput, match="leaves fewer than the 2"):
        ExpertSwitch(model, off=[(0, 0), (0, 1), (0, 2)])
    with pytest.raises(InvalidInput, match="3 experts forced on, but each token takes only 2"):
        ExpertSwitch(model, on=[(0, 0), (0, 1), (0, 2)])
    with pytest.raises(InvalidInput, match="positions must be one of"):
        ExpertSwitch(model, off=[(0, 0)], positions="late")


def test_statistics_by_hand():
    stats = selection_statistics(np.array([30.0, 0.0, 10.0]), 100, np.array([10.0, 20.0, 10.0]), 100)
    np.testing.assert_allclose(stats["rate_behaviour"], [0.3, 0.0, 0.1])
    np.testing.assert_allclose(stats["diff"], [0.2, -0.2, 0.0])
    np.testing.assert_allclose(stats["risk_ratio"], [30.5 / 10.5, 0.5 / 20.5, 1.0])
    # pooled: p(e,B) = 30/200, p(e) = 40/200, p(B) = 1/2
    npmi = np.log((30 / 200) / (40 / 200 * 0.5)) / -np.log(30 / 200)
    np.testing.assert_allclose(stats["npmi"], [npmi, -1.0, 0.0], atol=1e-12)


def test_bootstrap_intervals_bracket_the_estimate_and_repeat_with_the_seed():
    generator = torch.Generator().manual_seed(0)
    counts_b = torch.randint(0, 5, (30, 2, 4), generator=generator)
    counts_b[:, 0, 1] += 5  # expert 1 of layer 0: distinctive
    counts_c = torch.randint(0, 5, (30, 2, 4), generator=generator)
    behaviour = Selections(counts_b, torch.full((30,), 10), [])
    control = Selections(counts_c, torch.full((30,), 10), [])
    low, high = bootstrap_intervals(behaviour, control, draws=300, seed=3)["diff"]
    point = selection_statistics(counts_b.sum(0).numpy(), 300, counts_c.sum(0).numpy(), 300)["diff"]
    assert (low <= point + 1e-12).all() and (point <= high + 1e-12).all()
    assert low[0, 1] > 0 and (low[1] < 0.05).all()
    again = bootstrap_intervals(behaviour, control, draws=300, seed=3)["diff"]
    np.testing.assert_array_equal(again[0], low)


def test_prompt_files(tmp_path):
    (tmp_path / "a.txt").write_text("first prompt\n\n second \n")
    assert read_prompts(tmp_path / "a.txt") == ["first prompt", "second"]
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n{"prompt": "two"}\n')
    with pytest.raises(InvalidInput, match=r"b.jsonl:2: no field 'text' \(found \['prompt'\]\); pass --text-field"):
        read_prompts(tmp_path / "b.jsonl")
    with pytest.raises(MissingFile, match="behaviour: .*missing.txt does not exist"):
        read_prompts(tmp_path / "missing.txt", where="behaviour")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InvalidInput, match="no prompts in this file"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(InvalidInput, match="unsupported file type '.csv'"):
        (tmp_path / "p.csv").write_text("x")
        read_prompts(tmp_path / "p.csv")


def test_scorers(tmp_path):
    assert make_scorer(regex=r"\bsorry\b")("I am SORRY.") and not make_scorer(regex=r"\bsorry\b")("sorryful")
    (tmp_path / "phrases.txt").write_text("cannot help\nI won't\n")
    phrases = make_scorer(phrases=tmp_path / "phrases.txt")
    assert phrases("Sorry, I CANNOT help.") and not phrases("Sure!")
    assert make_scorer(scorer="os.path:isabs")("/abs") is True
    assert make_scorer(scorer=lambda text: "x" in text)("xyz")
    with pytest.raises(InvalidInput, match="exactly one behaviour scorer"):
        make_scorer(regex="a", phrases=["b"])
    with pytest.raises(InvalidInput, match="not a valid regular expression"):
        make_scorer(regex="(")
    with pytest.raises(InvalidInput, match="expected MODULE:FUNCTION"):
        make_scorer(scorer="nocolon")
    with pytest.raises(InvalidInput, match="cannot import 'no_such_module_x'"):
        make_scorer(scorer="no_such_module_x:f")


def test_profile_of_a_random_model_round_trips_and_draws(tmp_path):
    from lm_helpers import CORPUS, tiny_tokenizer

    from saescope.experts.run import run_profile
    from saescope.lm.models import LoadedModel

    loaded = LoadedModel(zoo_model("qwen2_moe"), tiny_tokenizer(), "tiny-qwen2-moe")
    profile, written = run_profile(loaded, CORPUS[:6], CORPUS[6:12], tmp_path / "out", draws=50)
    assert written["heatmap"].stat().st_size > 10_000
    rows = profile.ranked()
    assert len(rows) == 3 * 4 and rows[0]["rank"] == 1 and rows[0]["diff"] >= rows[-1]["diff"]
    # the pooled rates are the counts: each token selects top_k experts per layer
    rates = profile.statistics["rate_behaviour"]
    np.testing.assert_allclose(rates.sum(axis=1), 2.0)
    again = ExpertProfile.load(tmp_path / "out")
    assert again.ranked() == json.loads((tmp_path / "out" / "experts.json").read_text())["experts"] == rows
    with pytest.raises(InvalidInput, match="not an expert profile"):
        (tmp_path / "other.json").write_text("{}")
        ExpertProfile.load(tmp_path / "other.json")


@pytest.mark.parametrize("family", FAMILIES)
def test_routing_capture_and_each_experts_output_rebuild_the_routed_sum(models, family):
    from saescope.experts.capture import capture_routing, expert_output

    model = models[family]
    routing = capture_routing(model, _ids())
    assert sorted(routing) == [layer.layer for layer in find_moe_layers(model)]
    for layer_routing in routing.values():
        assert layer_routing.indices.shape == (2, 10, 2) and layer_routing.logits.shape == (2, 10, 4)
        assert (layer_routing.shared is not None) == (family in SHARED)
        outputs = torch.stack([expert_output(model, layer_routing, e) for e in range(4)], dim=2)
        chosen = outputs.gather(2, layer_routing.indices[..., None].expand(-1, -1, -1, outputs.shape[-1]))
        rebuilt = (chosen * layer_routing.weights[..., None]).sum(dim=2)
        torch.testing.assert_close(rebuilt, layer_routing.routed, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_profile_and_evaluate_run_on_every_family(models, family):
    from lm_helpers import CORPUS, tiny_tokenizer

    from saescope.experts import evaluate_switching, profile_experts
    from saescope.lm.models import LoadedModel

    loaded = LoadedModel(models[family], tiny_tokenizer(), f"tiny-{family}")
    profile = profile_experts(loaded, CORPUS[:4], CORPUS[4:8], draws=20)
    assert len(profile.ranked()) == sum(profile.n_experts)
    evaluation = evaluate_switching(loaded, profile, CORPUS[8:11], make_scorer(regex="the"), top_n=2, random_draws=1,
                                    neutral=CORPUS[11:13], max_new_tokens=3)
    names = [c.name for c in evaluation.conditions]
    assert names == ["unsteered", "top 2 off", "random 2 off (mean of 1)", "top 2 forced on"]
    assert evaluation.conditions[0].kl == pytest.approx(0.0, abs=1e-9)
    assert evaluation.conditions[1].kl > 0


def test_the_cli_refuses_a_dense_model_and_bad_expert_names(tmp_path):
    from lm_helpers import tiny_tokenizer

    from saescope.cli import main

    zoo_model("llama").save_pretrained(tmp_path / "dense")
    tiny_tokenizer().save_pretrained(tmp_path / "dense")
    with pytest.raises(SystemExit, match="error: LlamaForCausalLM has no mixture-of-experts layer"):
        main(["experts", "list", "--model", str(tmp_path / "dense")])
    zoo_model("mixtral").save_pretrained(tmp_path / "moe")
    tiny_tokenizer().save_pretrained(tmp_path / "moe")
    with pytest.raises(SystemExit, match="error: --off '1/2': expected LAYER:EXPERT"):
        main(["experts", "steer", "--model", str(tmp_path / "moe"), "--prompt", "hi", "--off", "1/2"])
    with pytest.raises(SystemExit, match="error: nothing to switch"):
        main(["experts", "steer", "--model", str(tmp_path / "moe"), "--prompt", "hi"])
    with pytest.raises(SystemExit, match="error: give --prompt TEXT or --prompts FILE"):
        main(["experts", "steer", "--model", str(tmp_path / "moe"), "--off", "0:1"])
