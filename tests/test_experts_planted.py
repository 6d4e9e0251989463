"""Proof that expert profiling finds what is there: a tiny MoE trained with a planted refusal.

The planted model (``saescope.synthetic.planted_moe``) routes the tokens of refused lines to known
experts while it learns to refuse. Profiling must rank those experts first; switching them off must
lower the refusal rate far more than switching off as many random experts; forcing them on must
raise it. The CLI runs the same workflow on the saved model.
"""

from __future__ import annotations

import json

import pytest

from saescope.cli import main
from saescope.experts import profile_experts
from saescope.synthetic.experts_bench import neutral_texts, run_experts_benchmark
from saescope.synthetic.planted_moe import PlantedMoeConfig, answer, train_planted_moe


@pytest.fixture(scope="module")
def planted():
    return train_planted_moe(PlantedMoeConfig(steps=250, held_out=60, profile_prompts=60))


@pytest.fixture(scope="module")
def result(planted):
    return run_experts_benchmark(planted=planted, random_draws=3)


def test_the_model_learned_the_planted_behaviour(planted):
    from saescope.experts.record import greedy_continuations, prompt_ids

    loaded = planted.loaded()
    prompts = planted.held_out_prompts[:20]
    outputs = greedy_continuations(loaded, [prompt_ids(planted.tokenizer, p) for p in prompts], 8)
    texts = [planted.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in outputs]
    assert sum(text == answer(prompt) for prompt, text in zip(prompts, texts)) >= 18


def test_profiling_ranks_the_planted_experts_first(result, planted):
    assert set(result["top_ranked"]) == set(planted.planted_experts)
    rows = result["profile"].ranked()[:4]
    assert all(row["diff_low"] > 0 for row in rows)  # each interval excludes "no difference"


def test_switching_them_off_lowers_the_behaviour_far_more_than_random_experts(result):
    evaluation = result["evaluation"]
    baseline = evaluation.rate("unsteered")
    planted_off = evaluation.rate("top 4 off")
    random_off = next(c for c in evaluation.conditions if c.name.startswith("random"))
    assert baseline >= 0.4
    assert planted_off <= 0.25 * baseline
    assert random_off.behaviour_rate >= 0.75 * baseline and evaluation.random_spread["min"] > planted_off
    # and switching the planted experts off costs less on neutral text than random ones do
    top_off = next(c for c in evaluation.conditions if c.name == "top 4 off")
    assert top_off.kl < random_off.kl


def test_forcing_them_on_raises_it(result):
    evaluation = result["evaluation"]
    assert evaluation.rate("top 4 forced on") >= evaluation.rate("unsteered") + 0.3


def test_generated_tokens_only(planted):
    profile = profile_experts(planted.loaded(), planted.behaviour_prompts[:20], planted.control_prompts[:20], generated=True,
                              max_new_tokens=6, draws=50)
    assert profile.tokens == "generated"
    assert set(profile.top(4)) == set(planted.planted_experts)  # the answers are routed as the prompts' ends were


def test_the_cli_workflow(planted, tmp_path, capsys):
    folder = tmp_path / "model"
    planted.model.save_pretrained(folder)
    planted.tokenizer.save_pretrained(folder)
    for name, lines in (("b.txt", planted.behaviour_prompts), ("c.txt", planted.control_prompts), ("h.txt", planted.held_out_prompts[:16])):
        (tmp_path / name).write_text("\n".join(lines))
    (tmp_path / "n.txt").write_text("\n".join(neutral_texts(planted)[:10]))
    assert main(["experts", "list", "--model", str(folder)]) == 0
    assert "2 MoE layers (0–1), 8 routed experts each, top-2" in capsys.readouterr().out
    out = tmp_path / "profile"
    assert main(["experts", "profile", "--model", str(folder), "--behaviour", str(tmp_path / "b.txt"), "--control",
                 str(tmp_path / "c.txt"), "--out", str(out), "--bootstrap", "100", "--top", "4"]) == 0
    table = capsys.readouterr().out
    assert "rank layer expert" in table and (out / "experts.png").is_file()
    assert {(r["layer"], r["expert"]) for r in json.loads((out / "experts.json").read_text())["experts"][:4]} == set(planted.planted_experts)
    assert main(["experts", "steer", "--model", str(folder), "--prompt", planted.held_out_prompts[0], "--profile", str(out),
                 "--top-n", "4", "--temperature", "0", "--max-new-tokens", "8"]) == 0
    shown = capsys.readouterr().out
    assert "experts switched (off 4:" in shown and "sorry i cannot help with that" in shown
    assert main(["experts", "evaluate", "--model", str(folder), "--profile", str(out), "--prompts", str(tmp_path / "h.txt"),
                 "--regex", "sorry i cannot", "--neutral", str(tmp_path / "n.txt"), "--top-n", "4", "--random-draws", "2",
                 "--max-new-tokens", "8", "--out", str(tmp_path / "eval"), "--json"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    rates = {c["name"]: c["behaviour_rate"] for c in evaluation["conditions"]}
    assert rates["unsteered"] == 0.5 and rates["top 4 off"] == 0.0
    assert (tmp_path / "eval" / "evaluation.json").is_file()
    with pytest.raises(SystemExit, match="give exactly one behaviour scorer"):
        main(["experts", "evaluate", "--model", str(folder), "--profile", str(out), "--prompts", str(tmp_path / "h.txt")])
