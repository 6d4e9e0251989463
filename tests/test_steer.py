"""Steering on a tiny model with a planted feature whose decoder row points at one token's unembedding."""

import pytest
import torch
from lm_helpers import tiny_loaded

from saescope import create_sae
from saescope.io.checkpoint import save_sae
from saescope.lm.hookpoints import resolve_hookpoints
from saescope.steer import Intervention, Steering, generate, measure, steer_and_compare

TARGET = 100


@pytest.fixture(scope="module")
def setup():
    loaded = tiny_loaded("llama", n_layers=2)
    model = loaded.model
    torch.manual_seed(0)
    sae = create_sae("relu", 32, 16, hookpoint="layers.1.resid_post")
    with torch.no_grad():
        direction = model.lm_head.weight[TARGET] / model.model.norm.weight
        sae.W_dec[0] = direction / direction.norm()
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
        sae.b_enc[1] = -1e4  # feature 1 never fires
    return loaded, sae.eval()


def _logits(loaded, input_ids, steering=None):
    with torch.no_grad():
        if steering is None:
            return loaded.model(input_ids=input_ids, use_cache=False).logits
        with steering.active():
            return loaded.model(input_ids=input_ids, use_cache=False).logits


def test_additive_steering_moves_generation_to_the_planted_token(setup):
    loaded, sae = setup
    prompt = "A list is a mutable"
    plain = generate(loaded, prompt, max_new_tokens=8, temperature=0)
    steer = Steering(loaded.model, [Intervention(sae, 0, value=50.0, kind="add")])
    steered = generate(loaded, prompt, max_new_tokens=8, temperature=0, steering=steer)
    assert steered == [TARGET] * 8 and plain.count(TARGET) < 4
    # Only on generated tokens: the first new token comes from the (unsteered) prompt forward.
    later = generate(loaded, prompt, max_new_tokens=6, temperature=0, steering=Steering(loaded.model, [Intervention(sae, 0, 50.0, positions="generated")]))
    assert later[0] == plain[0] and later[1:] == [TARGET] * 5
    first = generate(loaded, prompt, max_new_tokens=6, temperature=0, steering=Steering(loaded.model, [Intervention(sae, 0, 50.0, positions="prompt")]))
    assert first[0] == TARGET


def test_clamping_a_feature_to_its_own_value_leaves_logits_unchanged(setup):
    loaded, sae = setup
    input_ids = torch.tensor([[37]])
    point = resolve_hookpoints(loaded.model, "layers.1.resid_post")[0]
    from saescope.lm.capture import capture_dict

    hidden = capture_dict(loaded.model, [point], input_ids)[point.name][0]
    own = float(sae.encode(hidden)[0, 0].detach())
    assert own > 0
    clean = _logits(loaded, input_ids)
    same = _logits(loaded, input_ids, Steering(loaded.model, [Intervention(sae, 0, value=own, kind="clamp")]))
    assert torch.allclose(same, clean, atol=1e-5)
    ablate_silent = _logits(loaded, input_ids, Steering(loaded.model, [Intervention(sae, 1, kind="ablate")]))
    assert torch.allclose(ablate_silent, clean, atol=1e-6)  # a feature that does not fire: nothing to remove
    ablated = _logits(loaded, input_ids, Steering(loaded.model, [Intervention(sae, 0, kind="ablate")]))
    assert not torch.allclose(ablated, clean, atol=1e-3)
    assert ablated[0, -1, TARGET] < clean[0, -1, TARGET]  # removing the feature lowers its token
    clamped = _logits(loaded, input_ids, Steering(loaded.model, [Intervention(sae, 0, value=own * 5, kind="clamp")]))
    assert clamped[0, -1, TARGET] > clean[0, -1, TARGET]


def test_same_seed_same_text_and_measures(setup):
    loaded, sae = setup
    interventions = [Intervention(sae, 0, value=2.0, kind="add", unit="max", max_activation=25.0)]
    a = steer_and_compare(loaded, "Functions are defined", interventions, max_new_tokens=10, seed=3)
    b = steer_and_compare(loaded, "Functions are defined", interventions, max_new_tokens=10, seed=3)
    assert a[0].token_ids == b[0].token_ids and a[1].token_ids == b[1].token_ids
    assert steer_and_compare(loaded, "Functions are defined", interventions, max_new_tokens=10, seed=4)[0].token_ids != a[0].token_ids
    # The random tiny model's logits are nearly flat (max probability ~0.006), so sample cold to see the push.
    plain, steered = steer_and_compare(loaded, "Functions are defined", interventions, max_new_tokens=10, seed=3, temperature=0.01)
    assert steered.token_ids.count(TARGET) > plain.token_ids.count(TARGET)
    assert steered.feature_rate is not None and 0 <= plain.feature_rate <= 1
    assert steered.perplexity > 0 and plain.perplexity > 0
    rate, perplexity = measure(loaded, "Functions are defined", [TARGET] * 4, interventions[0])
    assert rate == 1.0 and perplexity > 1


def test_errors(setup):
    loaded, sae = setup
    with pytest.raises(ValueError, match=r"feature 16 does not exist: this SAE has features 0..15"):
        Intervention(sae, 16, 1.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        Intervention(sae, 0, 1.0, kind="boost")
    with pytest.raises(ValueError, match="unit='max' needs max_activation"):
        Intervention(sae, 0, 1.0, unit="max")
    wide = create_sae("relu", 48, 16, hookpoint="layers.1.resid_post")
    with pytest.raises(ValueError, match=r"the SAE expects d_in=48, but layers.1.resid_post of LlamaForCausalLM has width 32"):
        Steering(loaded.model, [Intervention(wide, 0, 1.0)])  # refused before any forward is steered
    nowhere = create_sae("relu", 32, 16)
    with pytest.raises(ValueError, match="does not record its hookpoint"):
        Intervention(nowhere, 0, 1.0)


def test_steer_command_prints_both_generations(setup, tmp_path, capsys):
    from saescope.cli import main

    loaded, sae = setup
    loaded.model.save_pretrained(tmp_path / "model")
    loaded.tokenizer.save_pretrained(tmp_path / "model")
    planted = sae.copy()
    planted.cfg.model_id = str(tmp_path / "model")
    save_sae(planted, tmp_path / "sae")
    assert main(["steer", "--sae", str(tmp_path / "sae"), "--feature", "0", "--value", "50", "--prompt", "A list is", "--temperature", "0",
                 "--max-new-tokens", "5", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "unsteered" in printed and "steered (#0 add 50)" in printed and "perplexity" in printed
    with pytest.raises(SystemExit, match="--unit max needs the feature's maximum activation"):
        main(["steer", "--sae", str(tmp_path / "sae"), "--feature", "0", "--value", "2", "--unit", "max", "--prompt", "x"])
    with pytest.raises(SystemExit, match="feature 99 does not exist"):
        main(["steer", "--sae", str(tmp_path / "sae"), "--feature", "99", "--value", "2", "--prompt", "x"])
