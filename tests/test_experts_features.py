"""Experts and SAE features together: the co-activation table by hand, and on a suite of a tiny MoE model."""

from __future__ import annotations

import json

import pytest
import torch
from lm_helpers import tiny_suite_config, tiny_tokenizer, write_corpus
from model_zoo import zoo_model

from saescope.experts.features import ExpertCoactivation, window_layers
from saescope.experts.sites import MoeLayer


def _layer(index: int, n_experts: int = 4) -> MoeLayer:
    return MoeLayer(layer=index, block=f"b{index}", router=f"r{index}", experts=f"e{index}", n_experts=n_experts, top_k=2)


def test_window_keeps_the_moe_layers_next_to_the_sae():
    layers = [_layer(i) for i in range(6)]
    assert [layer.layer for layer in window_layers(layers, [3])] == [2, 3, 4]
    assert [layer.layer for layer in window_layers(layers, [0])] == [0, 1]


def test_lift_against_a_brute_force_count():
    generator = torch.Generator().manual_seed(0)
    layers = [_layer(0), _layer(1)]
    table = ExpertCoactivation(n_features=5, layers=layers)
    all_fired, all_chosen = [], {0: [], 1: []}
    for _ in range(3):
        mask = torch.rand(40, generator=generator) > 0.2
        fired = torch.rand(int(mask.sum()), 5, generator=generator) > 0.6
        chosen = {i: torch.stack([torch.randperm(4, generator=generator)[:2] for _ in range(40)]) for i in (0, 1)}
        chosen[1][mask.nonzero()[:, 0][fired[:, 2]], 0] = 3  # feature 2 goes with expert 3 of layer 1
        table.features(fired)
        table.experts(chosen, mask)
        all_fired.append(fired)
        for i in (0, 1):
            all_chosen[i].append(chosen[i][mask])
    fired = torch.cat(all_fired).float()
    tables = table.tables(top=8, min_fires=1)
    for layer in (0, 1):
        selected = torch.zeros(fired.shape[0], 4).scatter_(1, torch.cat(all_chosen[layer]), 1.0)
        base = selected.mean(dim=0)
        for feature in range(5):
            conditional = (selected * fired[:, feature:feature + 1]).sum(0) / fired[:, feature].sum()
            for expert in range(4):
                lift = float(conditional[expert] / base[expert])
                row = next((r for r in tables["per_feature"][feature] if r[:2] == [layer, expert]), None)
                if lift > 1.0 + 1e-6:
                    assert row is not None and row[4] == pytest.approx(lift, abs=2e-3) and row[3] == pytest.approx(float(base[expert]), abs=1e-4)
                else:
                    assert row is None
    assert tables["per_feature"][2][0][:2] == [1, 3]
    assert tables["per_expert"]["1:3"]["features"][0][0] == 2


def test_rare_features_get_no_entry():
    table = ExpertCoactivation(n_features=2, layers=[_layer(0)])
    table.features(torch.tensor([[True, False], [True, False], [False, True]]))
    table.experts({0: torch.tensor([[0, 1], [0, 1], [2, 3]])}, torch.ones(3, dtype=torch.bool))
    tables = table.tables(min_fires=2)
    assert tables["per_feature"][1] == [] and tables["per_feature"][0] == [[0, 0, 1.0, 0.6667, 1.5], [0, 1, 1.0, 0.6667, 1.5]]


def test_interpreting_a_suite_of_an_moe_model_writes_the_expert_view(tmp_path):
    from saescope.interpret.run import interpret_suite
    from saescope.suite import train_suite

    model = zoo_model("qwen2_moe")
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    config = tiny_suite_config(str(tmp_path / "model"), write_corpus(tmp_path / "c.txt", repeat=12), hookpoints=["layers.1.resid_post"])
    train_suite(config, tmp_path / "suite", progress=False, report=lambda line: None)
    interpret_suite(tmp_path / "suite", tokens=2048, top_k=4, window=3, batch_contexts=8, progress=False)
    interpret = tmp_path / "suite" / "layers.1.resid_post" / "topk-w64-l0_4" / "interpret"
    experts = json.loads((interpret / "experts.json").read_text())
    assert experts["layers"] == [0, 1, 2] and len(experts["per_expert"]) == 12
    assert all(0 < v["base"] < 1 for v in experts["per_expert"].values())
    records = json.loads((interpret / "features_00000.json").read_text())
    listed = [row for record in records for row in record["experts"]]
    assert listed and all(row[4] > 1 and row[0] in (0, 1, 2) for row in listed)
