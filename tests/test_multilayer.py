"""Stacked reads and the multi-layer SAE: routing with layer indices, per-hookpoint scales folded in exactly,
per-layer views and splices, the layer-spread analysis, and a multi-layer suite on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from lm_helpers import save_tiny_model, tiny_loaded, tiny_suite_config, write_corpus

import saescope
from saescope import create_job
from saescope.errors import InvalidInput
from saescope.evaluation.multilayer import layer_spread
from saescope.evaluation.splice import sae_splice
from saescope.jobs import ReadSpec
from saescope.lm.capture import capture, replace_activation
from saescope.lm.hookpoints import resolve_hookpoints
from saescope.objectives.topk import TopKObjective
from saescope.plan import PlanError, RunPlan
from saescope.saes import create_sae
from saescope.saes.stacked import (
    at_hookpoint,
    per_hookpoint,
    stacked_hookpoints,
    stacked_normalization,
)
from saescope.suite import format_table
from saescope.training import TrainConfig
from saescope.training.trainer import Trainer

D = 12
SCALES = {"a": 1.0, "b": 8.0, "c": 50.0}


def stacked_data(n: int = 6000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three 'layers' of sparse vectors on one dictionary, with very different norms (as residual streams grow with depth)."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(40, D, generator=generator), dim=1)
    out = {}
    for name, scale in SCALES.items():
        codes = (torch.rand(n, 40, generator=generator) < 0.08).float() * torch.rand(n, 40, generator=generator)
        out[name] = scale * codes @ directions
    return out


class DictSource:
    """Dict batches by hookpoint, like a model or a cache gives."""

    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        self.data = data
        self.n = next(iter(data.values())).shape[0]

    def head(self, n_tokens: int) -> dict[str, torch.Tensor]:
        return {k: v[:n_tokens] for k, v in self.data.items()}

    def iter_batches(self, batch_size, shuffle=False, seed=0, start_batch=0, loop=False):
        step = start_batch
        while True:
            start = (step * batch_size) % (self.n - batch_size)
            yield {k: v[start : start + batch_size] for k, v in self.data.items()}
            step += 1


class RecordingTopK(TopKObjective):
    """TopK that remembers what the trainer handed its loss (the test's window into routing)."""

    seen: list = []

    def loss(self, sae, x, ctx):
        RecordingTopK.seen.append((x.detach().clone(), None if ctx.layer_index is None else ctx.layer_index.clone()))
        return super().loss(sae, x, ctx)


def test_a_stacked_read_routes_every_hookpoint_with_its_layer_index():
    data = stacked_data()
    job = create_job("topk", D, 48, target_l0=3, reads=["a", "b", "c"], name="ml")
    job = saescope.SaeJob("ml", job.sae, RecordingTopK(target_l0=3), job.reads)
    RecordingTopK.seen = []
    Trainer([job], TrainConfig(total_tokens=256 * 3, batch_size=256, progress=False)).fit(DictSource(data))
    x, layer_index = RecordingTopK.seen[0]
    assert x.shape == (3 * 256, D)
    assert layer_index.tolist() == [0] * 256 + [1] * 256 + [2] * 256
    # Each block is its hookpoint's rows, scaled so every layer has E||x||^2 = 1 (topk's convention).
    for index, name in enumerate(SCALES):
        block = x[layer_index == index]
        assert torch.allclose(block / block.norm(dim=1, keepdim=True).clamp_min(1e-9),
                              torch.nn.functional.normalize(data[name][:256], dim=1), atol=1e-5)
        assert block.pow(2).sum(1).mean().item() == pytest.approx(1.0, rel=0.25)


def test_per_hookpoint_scales_fold_in_exactly_and_survive_save_and_load(tmp_path):
    data = stacked_data()
    job = create_job("jumprelu", D, 48, target_l0=3, reads=["a", "b", "c"], name="ml")
    trained = saescope.train_saes(DictSource(data), [job], TrainConfig(total_tokens=256 * 40, batch_size=256, progress=False),
                                  out_dir=str(tmp_path))["ml"]
    multipliers = trained.normalization["hookpoint_multipliers"]
    assert list(multipliers) == ["a", "b", "c"] and stacked_hookpoints(trained) == ["a", "b", "c"]
    assert multipliers["a"] / multipliers["c"] == pytest.approx(50.0, rel=0.2)  # m_h ~ 1 / rms(x_h)
    loaded = saescope.load(tmp_path / "ml")
    assert loaded.normalization["hookpoint_multipliers"] == pytest.approx(multipliers)
    for name in SCALES:
        x = data[name][-500:]
        view = at_hookpoint(loaded, name)
        m = multipliers[name]
        assert view.cfg.hookpoint == name and view.W_dec.data_ptr() == loaded.W_dec.data_ptr()  # shared, not copied
        with torch.no_grad():
            assert torch.allclose(view.encode(x), loaded.encode(m * x) / m, rtol=1e-4, atol=1e-6)
            assert torch.allclose(view(x), loaded(m * x) / m, rtol=1e-4, atol=1e-5)
            fvu = float((view(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        assert fvu < 0.5, f"{name}: the view does not reconstruct raw activations (FVU {fvu:.2f})"
    assert torch.equal(loaded.b_enc, saescope.load(tmp_path / "ml").b_enc)  # building views never writes into the SAE


def test_read_spec_and_view_errors_name_what_to_fix():
    with pytest.raises(InvalidInput, match="listed twice"):
        ReadSpec(("a", "a"))
    with pytest.raises(InvalidInput, match="drop hookpoint="):
        create_job("topk", D, 48, target_l0=3, reads=["a", "b"], hookpoint="a")
    sae = create_sae("topk", D, 48, k=3)
    sae.normalization = stacked_normalization(["a", "b"], [1.0, 2.0], 1.0)
    with pytest.raises(InvalidInput, match="choose one of its hookpoints"):
        at_hookpoint(sae, "z")
    job = create_job("topk", D, 48, target_l0=3, reads=["a", "z"], name="ml")
    with pytest.raises(InvalidInput, match=r"reads hookpoint\(s\) \['z'\]"):
        Trainer([job], TrainConfig(total_tokens=512, batch_size=256, progress=False)).fit(DictSource(stacked_data(600)))
    with pytest.raises(InvalidInput, match="plain array"):
        Trainer([job], TrainConfig(total_tokens=512, batch_size=256, progress=False)).fit(torch.randn(600, D))


def test_splicing_one_layer_of_a_multilayer_sae_changes_only_that_layer():
    loaded = tiny_loaded("llama", n_layers=3)
    points = resolve_hookpoints(loaded.model, "layers.*.resid_post")
    sae = create_sae("topk", 32, 64, k=4)
    sae.normalization = stacked_normalization([p.name for p in points], [1.0, 0.5, 0.25], 0.5)
    ids = loaded.tokenizer("A list is a mutable sequence of items", return_tensors="pt").input_ids

    def activations():
        found = {}
        capture(loaded.model, points, lambda point, t: found.__setitem__(point.name, t.clone()), ids, stop_early=False)
        return found

    clean = activations()
    view = at_hookpoint(sae, points[1].name)
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad(), replace_activation(loaded.model, points[1], sae_splice(view, mask)):
        spliced = activations()
    assert torch.equal(spliced[points[0].name], clean[points[0].name])
    with torch.no_grad():
        expected = view(clean[points[1].name].reshape(-1, 32)).reshape(clean[points[1].name].shape)
    assert torch.allclose(spliced[points[1].name], expected, atol=1e-5)
    assert not torch.allclose(spliced[points[2].name], clean[points[2].name])


def test_layer_spread_matches_a_brute_force_count():
    torch.manual_seed(0)
    sae = create_sae("relu", 6, 10)
    sae.normalization = stacked_normalization(["l0", "l1", "l2"], [1.0, 1.0, 1.0], 1.0)
    acts = {h: torch.randn(50, 6) for h in ["l0", "l1", "l2"]}
    spread = layer_spread(sae, acts)
    with torch.no_grad():
        code = torch.stack([sae.encode(acts[h]) for h in ["l0", "l1", "l2"]]).double()  # [L, t, F]
    layers = torch.arange(3, dtype=torch.float64).view(3, 1, 1)
    mass = code.sum(dim=1)
    p = mass / mass.sum(0)
    mean = (p * layers[:, :, 0]).sum(0)
    assert spread.mean_layer == pytest.approx([float(v) if m > 0 else None for v, m in zip(mean, mass.sum(0))])
    per_token_s0 = code.sum(0)
    per_token_mean = (code * layers).sum(0) / per_token_s0.clamp_min(1e-300)
    per_token_var = (code * (layers - per_token_mean).pow(2)).sum(0) / per_token_s0.clamp_min(1e-300)
    expected_token = (per_token_var * per_token_s0).sum(0) / per_token_s0.sum(0)
    for j in range(10):
        if mass[:, j].sum() > 0:
            assert spread.variance_token[j] == pytest.approx(float(expected_token[j]), abs=1e-9)
    firing = code > 0
    pairs = firing.any(0)
    assert spread.multi_layer_fraction_token == pytest.approx(float((firing.sum(0) > 1).sum() / pairs.sum()))


def test_a_latent_at_one_layer_has_no_spread_and_token_variance_is_below_data_variance():
    sae = create_sae("relu", 2, 2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.eye(2))
    sae.normalization = stacked_normalization(["l0", "l1"], [1.0, 1.0], 1.0)
    # latent 0 fires only at layer 0; latent 1 fires at layer 0 on some tokens and at layer 1 on others.
    acts = {"l0": torch.tensor([[1.0, 1.0], [1.0, 0.0]]), "l1": torch.tensor([[0.0, 0.0], [0.0, 1.0]])}
    spread = layer_spread(sae, acts)
    assert spread.variance_data[0] == 0 and spread.mean_layer[0] == 0
    assert spread.variance_token[1] == 0 and spread.variance_data[1] == pytest.approx(0.25)
    assert spread.multi_layer_fraction_data == 0.5 and spread.multi_layer_fraction_token == 0.0


def test_multilayer_plan_errors_name_the_field(tmp_path):
    with pytest.raises(PlanError, match="multilayer_baselines: only used with multilayer"):
        RunPlan.from_dict({"hookpoints": ["layers.*.resid_post"], "multilayer_baselines": ["layers.1.resid_post"]})
    corpus = write_corpus(tmp_path / "c.txt")
    config = tiny_suite_config(save_tiny_model(tmp_path / "model"), corpus, hookpoints=["layers.0.resid_post"], multilayer=True)
    with pytest.raises(PlanError, match="multilayer: needs at least two hookpoints"):
        saescope.train(config, tmp_path / "out", progress=False, report=lambda line: None)
    config = tiny_suite_config(save_tiny_model(tmp_path / "model"), corpus, multilayer=True, multilayer_baselines=["layers.7.resid_post"])
    with pytest.raises(PlanError, match="multilayer_baselines: no hookpoint 'layers.7.resid_post' in this run's hookpoints"):
        saescope.train(config, tmp_path / "out2", progress=False, report=lambda line: None)


@pytest.fixture(scope="module")
def multilayer_suite(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multilayer")
    corpus = write_corpus(folder / "c.txt", repeat=12)
    config = tiny_suite_config(save_tiny_model(folder / "model", n_layers=3), corpus, multilayer=True,
                               multilayer_baselines=["layers.1.resid_post"], batch_size=128)
    index = saescope.train(config, folder / "suite", progress=False, report=lambda line: None)
    return folder / "suite", index


def test_a_multilayer_suite_trains_one_sae_over_every_layer_and_baselines(multilayer_suite):
    out, index = multilayer_suite
    paths = [entry["path"] for entry in index["saes"]]
    assert paths == ["multilayer/topk-w64-l0_4", "layers.1.resid_post/topk-w64-l0_4"]
    entry = index["saes"][0]
    assert entry["hookpoints"] == ["layers.0.resid_post", "layers.1.resid_post", "layers.2.resid_post"]
    assert entry["site"] == "resid_post" and entry["layer"] == -1
    metrics = json.loads((out / paths[0] / "metrics.json").read_text())
    assert set(metrics["layers"]) == set(entry["hookpoints"])
    assert metrics["fvu"] == pytest.approx(sum(m["fvu"] for m in metrics["layers"].values()) / 3)
    assert 0 <= metrics["layer_spread"]["multi_layer_fraction_token"] <= metrics["layer_spread"]["multi_layer_fraction_data"] <= 1
    assert "mass" not in metrics["layer_spread"]  # per-latent arrays live in layer_spread.json
    full = json.loads((out / paths[0] / "layer_spread.json").read_text())
    assert len(full["mass"]) == 64 and len(full["mass"][0]) == 3
    sae = saescope.load(out / paths[0])
    assert list(per_hookpoint(sae)) == entry["hookpoints"] and sae.cfg.hookpoint is None
    assert "multi-layer 1 SAE(s) each over layers.0.resid_post" in saescope.describe(out)
    assert "3 stacked (a multi-layer SAE)" in saescope.describe(out / paths[0])


def test_eval_reports_a_multilayer_sae_layer_by_layer_with_its_figure(multilayer_suite):
    out, _index = multilayer_suite
    rows = saescope.evaluate_suite(out, progress=False)
    layer_rows = [r for r in rows if r.get("layer_of") == "multilayer/topk-w64-l0_4"]
    assert [r["layer"] for r in layer_rows] == [0, 1, 2] and all(r["delta_lm_loss"] is not None for r in layer_rows)
    report = json.loads((out / "eval.json").read_text())
    assert report["multilayer"]["multilayer/topk-w64-l0_4"]["n_layers"] == 3
    assert (out / "plots" / "multilayer_topk-w64-l0_4.png").read_bytes()[:4] == b"\x89PNG"
    assert format_table(rows).count("multilayer/topk-w64-l0_4@") == 3


# -- lineage -------------------------------------------------------------------------------------------
def test_lineage_finds_a_planted_continued_feature_and_nothing_between_unrelated_dictionaries():
    from saescope.evaluation.lineage import pair_lineage

    generator = torch.Generator().manual_seed(0)
    d, width = 64, 256
    lower = torch.randn(width, d, generator=generator)
    upper = torch.randn(width, d, generator=generator)
    upper[17] = lower[5] + 0.1 * torch.randn(d, generator=generator)  # feature 5 at layer L continues as 17 at L+1
    pair = pair_lineage("L", "L+1", lower, upper)
    assert pair.parent[17] == 5 and pair.parent_cosine[17] > 0.95
    assert [link[:2] for link in pair.links] == [[17, 5]]
    unrelated = pair_lineage("L", "L+1", lower, torch.randn(width, d, generator=generator))
    assert unrelated.links == [] and unrelated.clear_parent_fraction <= unrelated.chance_clear_parent_fraction + 0.01
    assert abs(unrelated.mean_parent_cosine - unrelated.chance_mean_parent_cosine) < 0.05  # no better than a random rotation


def test_lineage_co_activation_links_features_that_fire_together():
    from saescope.evaluation.lineage import pair_lineage

    generator = torch.Generator().manual_seed(1)
    lower, upper = torch.randn(32, 16, generator=generator), torch.randn(32, 16, generator=generator)
    fires_lower = torch.rand(2000, 32, generator=generator) < 0.05
    fires_upper = torch.rand(2000, 32, generator=generator) < 0.05
    unrelated = pair_lineage("a", "b", lower, upper, fires_lower, fires_upper)
    assert unrelated.coactive_parent_fraction == 0.0 and unrelated.chance_coactive_parent_fraction == 0.0
    fires_upper[:, 3] = fires_lower[:, 7]  # upper 3 fires exactly where lower 7 fires, whatever their directions
    pair = pair_lineage("a", "b", lower, upper, fires_lower, fires_upper)
    assert pair.coactive_parent[3] == 7 and pair.coactive_jaccard[3] == 1.0
    assert [3, 7] in [link[:2] for link in pair.links] and pair.coactive_parent_fraction == pytest.approx(1 / 32)
    assert pair.chance_coactive_parent_fraction == 0.0  # shuffling the tokens breaks the match
    with pytest.raises(InvalidInput, match="different widths"):
        pair_lineage("a", "b", lower, torch.randn(32, 8))


def test_lineage_chains_follow_parents_through_layers():
    from saescope.evaluation.lineage import chains, pair_lineage

    generator = torch.Generator().manual_seed(2)
    dictionaries = [torch.randn(64, 48, generator=generator) for _ in range(4)]
    for layer in range(1, 4):
        dictionaries[layer][layer] = dictionaries[layer - 1][layer - 1]  # feature 0 -> 1 -> 2 -> 3 down the layers
    pairs = [pair_lineage(f"s{i}", f"s{i + 1}", dictionaries[i], dictionaries[i + 1]) for i in range(3)]
    found = chains(pairs)
    assert found["longest"][0] == [["s0", 0], ["s1", 1], ["s2", 2], ["s3", 3]]
    assert found["length_counts"]["4"] == 1


def test_lineage_command_runs_on_a_suite_and_writes_links(tmp_path):
    from saescope.suite.lineage import lineage_suite

    corpus = write_corpus(tmp_path / "c.txt", repeat=12)
    config = tiny_suite_config(save_tiny_model(tmp_path / "model", n_layers=3), corpus)
    saescope.train(config, tmp_path / "suite", progress=False, report=lambda line: None)
    report = lineage_suite(tmp_path / "suite", tokens=512, cosine_threshold=0.3, progress=False)
    group = report["groups"][0]
    assert group["layers"] == [0, 1, 2] and len(group["pairs"]) == 2
    assert all(0 <= p["clear_parent_fraction"] <= 1 for p in group["pairs"])
    upper = json.loads((tmp_path / "suite" / "layers.1.resid_post" / "topk-w64-l0_4" / "lineage.json").read_text())
    for child, parents in upper["parents"].items():
        assert all(p["sae"] == "layers.0.resid_post/topk-w64-l0_4" and (p["cosine"] >= 0.3 or p["jaccard"] >= 0.3) for p in parents)
    assert json.loads((tmp_path / "suite" / "lineage.json").read_text())["groups"][0]["layers"] == [0, 1, 2]


def test_interpret_records_the_layer_of_every_multilayer_example(multilayer_suite):
    from saescope.interpret.run import interpret_suite

    out, _index = multilayer_suite
    interpret_suite(out, tokens=1024, top_k=4, window=2, batch_contexts=8, progress=False)
    folder = out / "multilayer" / "topk-w64-l0_4" / "interpret"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["hookpoints"] == ["layers.0.resid_post", "layers.1.resid_post", "layers.2.resid_post"]
    records = json.loads((folder / "features_00000.json").read_text())
    fired = [r for r in records if r["top"]]
    assert fired and all(0 <= e["layer"] < 3 for r in fired for e in r["top"] + r["samples"])
    for record in fired:
        assert sum(record["layer_fires"]) > 0 and len(record["layer_fires"]) == 3
    # the per-layer baseline keeps the one-hookpoint format
    baseline = json.loads((out / "layers.1.resid_post" / "topk-w64-l0_4" / "interpret" / "features_00000.json").read_text())
    assert all("layer" not in e for r in baseline for e in r["top"]) and "hookpoints" not in json.loads(
        (out / "layers.1.resid_post" / "topk-w64-l0_4" / "interpret" / "summary.json").read_text())


def test_a_multilayer_sae_trains_from_a_cache_holding_several_hookpoints(tmp_path):
    from saescope.data.lm_config import LmDataConfig
    from saescope.data.tokens import TextContexts
    from saescope.lm.harvest import write_cache
    from saescope.lm.stream import ModelActivationSource
    from saescope.training.on_model import SaeSpec, train_on_model

    loaded = tiny_loaded("llama", n_layers=3)
    corpus = write_corpus(tmp_path / "c.txt")
    hookpoints = ["layers.0.resid_post", "layers.1.resid_post", "layers.2.resid_post"]
    source = ModelActivationSource(loaded, TextContexts(corpus, loaded.tokenizer, 32, part="all"), hookpoints, batch_contexts=4)
    write_cache(source, tmp_path / "cache", 2000, shard_tokens=1000, progress=False)
    results = train_on_model(loaded, ["layers.*.resid_post"], [SaeSpec("topk", width=64, target_l0=4, stacked=True)],
                             TrainConfig(total_tokens=1024, batch_size=128, progress=False), LmDataConfig(eval_fraction=0.2),
                             cache=str(tmp_path / "cache"), eval_tokens=128, out_dir=str(tmp_path / "out"))
    sae, metrics = results["multilayer/topk-w64-l0_4"]
    assert stacked_hookpoints(sae) == hookpoints and set(metrics["layers"]) == set(hookpoints)
    assert sae.training_summary["n_steps"] == 8


def test_one_layer_of_a_multilayer_sae_converts_to_saelens_and_the_whole_is_refused(tmp_path):
    from saescope.io.checkpoint import save_sae
    from saescope.io.interop import export_saelens, load_sae

    sae = create_sae("topk", D, 48, k=3)
    sae.normalization = stacked_normalization(["a", "b"], [2.0, 0.5], 1.0)
    save_sae(sae, tmp_path / "ml")
    with pytest.raises(InvalidInput, match="export one layer"):
        export_saelens(saescope.load(tmp_path / "ml"), tmp_path / "whole")
    layer = load_sae(tmp_path / "ml", hookpoint="b")
    assert layer.cfg.hookpoint == "b" and not stacked_hookpoints(layer)
    export_saelens(layer, tmp_path / "layer_b")
    back = load_sae(tmp_path / "layer_b")
    x = torch.randn(20, D)
    with torch.no_grad():
        assert torch.allclose(back(x), sae(0.5 * x) / 0.5, atol=1e-5)


def test_a_stacked_job_resumes_bit_identically(tmp_path):
    data = stacked_data(3000)

    def jobs():
        torch.manual_seed(0)
        return [create_job("jumprelu", D, 48, target_l0=3, reads=["a", "b", "c"], name="ml")]

    config = TrainConfig(total_tokens=128 * 30, batch_size=128, progress=False, checkpoint_every=10, checkpoint_dir=str(tmp_path / "ckpt"),
                         log_every=5)
    reference = Trainer(jobs(), TrainConfig(**{**config.to_dict(), "checkpoint_every": None, "checkpoint_dir": None})).fit(DictSource(data))

    class Interrupt(Exception):
        pass

    def stop_at_20(step, metrics):
        if step == 20:
            raise Interrupt

    interrupted = Trainer(jobs(), config)
    interrupted.add_callback(stop_at_20)
    with pytest.raises(Interrupt):
        interrupted.fit(DictSource(data))
    resumed = Trainer(jobs(), config).fit(DictSource(data), resume=True)
    assert resumed["ml"].normalization["hookpoint_multipliers"] == reference["ml"].normalization["hookpoint_multipliers"]
    for name, tensor in reference["ml"].export_tensors().items():
        assert torch.equal(resumed["ml"].export_tensors()[name], tensor), f"{name} differs after resume"


def test_the_example_multilayer_config_is_a_valid_plan():
    from pathlib import Path

    plan = RunPlan.from_file(Path(__file__).parent.parent / "examples" / "multilayer.yaml")
    assert plan.sweep.multilayer and plan.sweep.hookpoints == ["layers.*.resid_post"] and len(plan.sweep.multilayer_baselines) == 5
