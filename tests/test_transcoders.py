"""Transcoders: jobs that read one site and predict another (an MLP's input → its output), trained, measured
inside the model, saved and loaded, exported to circuit-tracer and SAELens, and refused where they cannot work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lm_helpers import save_tiny_model, tiny_loaded, write_corpus

import saescope
from saescope.cli import main
from saescope.errors import InvalidInput
from saescope.evaluation.metrics import evaluate_sae
from saescope.evaluation.splice import splice_evaluate
from saescope.io.checkpoint import load, save_sae
from saescope.io.interop import export_circuit_tracer, export_saelens, load_circuit_tracer_set, load_gemma_scope_2, load_sae
from saescope.jobs import ReadSpec, create_job
from saescope.lm.capture import hooked
from saescope.lm.hookpoints import resolve_hookpoints
from saescope.plan import PlanError, SweepPlan
from saescope.plan_jobs import plan_jobs, read_sites
from saescope.saes import create_sae
from saescope.training import TrainConfig, Trainer

ARCHITECTURES = ["topk", "jumprelu", "relu", "gated", "batchtopk", "matryoshka", "feature_choice", "mutual_choice"]


def _pairs(n: int = 8192, d_in: int = 16, d_out: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """y: a sparse ReLU layer of x (what a transcoder can represent) plus a linear part (what a skip connection can)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=generator) * 3
    hidden = torch.relu(x @ torch.randn(d_in, 48, generator=generator) / 4 - 1.0)
    y = hidden @ torch.randn(48, d_out, generator=generator) + 0.5 * x @ torch.randn(d_in, d_out, generator=generator) / 4 + 2.0
    return x, y


def _fvu(prediction: torch.Tensor, y: torch.Tensor) -> float:
    return float((prediction - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_trains_as_a_transcoder_and_its_saved_form_predicts_the_target(arch, tmp_path):
    """The target only changes the loss's reference: every sparsity rule learns y from x, the scales fold exactly."""
    x, y = _pairs()
    torch.manual_seed(0)
    plain = create_job(arch, 16, 64, name="plain", reads=ReadSpec(("in",), target="out"), target_l0=6, d_out=12)
    skip = create_job(arch, 16, 64, name="skip", reads=ReadSpec(("in",), target="out"), target_l0=6, d_out=12, skip=True)
    trained = Trainer([plain, skip], TrainConfig(total_tokens=512 * 160, batch_size=512, progress=False)).fit({"in": x, "out": y})
    mean_only = _fvu(y.mean(0).expand_as(y), y)
    for name, sae in trained.items():
        with torch.no_grad():
            fvu = _fvu(sae(x), y)
        train_fvu = sae.training_summary["final_train_metrics"]["fvu"]
        assert fvu < 0.6 * mean_only, (arch, name, fvu)
        assert abs(fvu - train_fvu) < 0.15, (arch, name, fvu, train_fvu)  # the folded weights predict raw y as training did on scaled y
        assert sae.cfg.target == "out" and sae.d_out == 12 and sae.W_dec.shape == (64, 12)
    with torch.no_grad():
        assert _fvu(trained["skip"](x), y) < _fvu(trained["plain"](x), y) + 0.02  # the skip connection only adds capacity
    save_sae(trained["skip"], tmp_path / "skip")
    cfg = json.loads((tmp_path / "skip" / "cfg.json").read_text())
    assert cfg["reads"] == {"hookpoints": ["in"], "target": "out"} and cfg["skip"] is True and cfg["apply_b_dec_to_input"] is False
    back = load(tmp_path / "skip")
    with torch.no_grad():
        torch.testing.assert_close(back(x), trained["skip"](x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "relu", "gated", "batchtopk"])
def test_folding_two_scales_gives_the_scaled_computation_exactly(arch):
    """fold_input_offset(o) then fold_scales(c_in, c_out): sae(x) equals (the unfolded transcoder on c_in·x - o) / c_out, in float64."""
    torch.manual_seed(3)
    sae = create_sae(arch, 10, 30, target="t", d_out=7, skip=True, **({"k": 4} if arch in ("topk", "batchtopk") else {})).double()
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.3)
    x = torch.randn(50, 10, dtype=torch.float64)
    c_in, c_out = 0.37, 2.9
    offset = torch.randn(10, dtype=torch.float64)
    with torch.no_grad():
        expected = sae(x * c_in - offset) / c_out  # what training computed: centred, scaled input; scaled target
        sae.fold_input_offset(offset)
        sae.fold_scales(c_in, c_out)
        torch.testing.assert_close(sae(x), expected, atol=1e-12, rtol=1e-10)


def test_an_sae_on_arrays_of_sites_and_bad_targets_are_refused():
    x, y = _pairs(n=2048)
    job = create_job("topk", 16, 32, reads=ReadSpec(("in",), target="out"), target_l0=4, d_out=8)
    with pytest.raises(InvalidInput, match=r"target activations at 'out' have width 12 .*its decoder writes d_out=8"):
        Trainer([job], TrainConfig(total_tokens=4096, batch_size=512, progress=False)).fit({"in": x, "out": y})
    with pytest.raises(InvalidInput, match=r"reads hookpoint\(s\) \['missing'\]"):
        Trainer([create_job("topk", 16, 32, reads=ReadSpec(("in",), target="missing"), target_l0=4)],
                TrainConfig(total_tokens=4096, batch_size=512, progress=False)).fit({"in": x, "out": y})
    with pytest.raises(InvalidInput, match="a transcoder reads exactly one hookpoint"):
        ReadSpec(("a", "b"), target="c")
    with pytest.raises(InvalidInput, match="is the hookpoint it reads"):
        ReadSpec(("a",), target="a")
    with pytest.raises(InvalidInput, match="skip connections and a separate output width are for transcoders"):
        create_sae("topk", 8, 16, k=2, skip=True)
    with pytest.raises(InvalidInput, match="different numbers of rows"):
        saescope.train_saes({"in": x, "out": y[:100]}, [create_job("topk", 16, 32, reads=ReadSpec(("in",), target="out"), target_l0=4, d_out=12)])
    with pytest.raises(InvalidInput, match="is measured on both sites' activations"):
        evaluate_sae(create_sae("topk", 16, 32, k=4, target="out", d_out=12, hookpoint="in"), x)


def test_a_plan_compiles_to_transcoders_reading_the_mlp_input():
    sweep = SweepPlan(hookpoints=["layers.1.mlp_out", "layers.1.resid_post"], kinds=["sae", "transcoder", "skip_transcoder"],
                      architectures=["topk"], widths=[64], target_l0s=[4])
    requested = ["layers.1.mlp_out", "layers.1.resid_post"]
    assert read_sites(sweep, requested) == ["layers.1.mlp_in"]
    widths = {"layers.1.mlp_out": 32, "layers.1.resid_post": 32, "layers.1.mlp_in": 32}
    planned = plan_jobs(sweep, widths, requested)
    by_name = {p.name: p for p in planned}
    assert sorted(by_name) == ["layers.1.mlp_out/skip_transcoder-topk-w64-l0_4", "layers.1.mlp_out/topk-w64-l0_4",
                               "layers.1.mlp_out/transcoder-topk-w64-l0_4", "layers.1.resid_post/topk-w64-l0_4"]
    transcoder = by_name["layers.1.mlp_out/transcoder-topk-w64-l0_4"]
    assert transcoder.reads == ReadSpec(("layers.1.mlp_in",), target="layers.1.mlp_out")
    assert transcoder.index_entry()["site"] == "mlp_out" and transcoder.index_entry()["reads"] == "layers.1.mlp_in"
    job = by_name["layers.1.mlp_out/skip_transcoder-topk-w64-l0_4"].build("m")
    assert job.sae.cfg.skip and job.sae.cfg.target == "layers.1.mlp_out" and job.sae.cfg.hookpoint == "layers.1.mlp_in"
    with pytest.raises(PlanError, match=r"\['layers.1.resid_post'\] are not MLP outputs, and kinds has no 'sae'"):
        plan_jobs(SweepPlan(hookpoints=requested, kinds=["transcoder"], architectures=["topk"], widths=[64], target_l0s=[4]), widths, requested)
    with pytest.raises(PlanError, match="need mlp_out hookpoints"):
        read_sites(SweepPlan(hookpoints=["layers.1.resid_post"], kinds=["transcoder"]), ["layers.1.resid_post"])
    with pytest.raises(PlanError, match="cross-layer transcoders.* are not built yet"):
        plan_jobs(SweepPlan(hookpoints=["layers.*.mlp_out"], kinds=["transcoder"], multilayer=True), {"layers.0.mlp_out": 32, "layers.1.mlp_out": 32,
                  "layers.0.mlp_in": 32, "layers.1.mlp_in": 32}, ["layers.0.mlp_out", "layers.1.mlp_out"])
    with pytest.raises(PlanError, match="transcoders read a model's MLP input and output; arrays train SAEs"):
        plan_jobs(SweepPlan(kinds=["transcoder"]), {"": 16})
    with pytest.raises(PlanError, match="kinds:"):
        SweepPlan(kinds=["clt"])


def test_the_transcoder_splice_replaces_the_mlp_output_from_its_input():
    """splice_evaluate's figures for a transcoder equal an independent full forward with the MLP output replaced."""
    loaded = tiny_loaded("llama")
    model = loaded.model
    points = {p.name: p for p in resolve_hookpoints(model, ["layers.1.mlp_in", "layers.1.mlp_out"])}
    torch.manual_seed(0)
    sae = create_sae("topk", 32, 48, k=6, hookpoint="layers.1.mlp_in", target="layers.1.mlp_out", skip=True)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    contexts = torch.randint(4, 300, (6, 12))
    resumed = splice_evaluate(model, {"t": (points["layers.1.mlp_out"], sae, points["layers.1.mlp_in"])}, contexts, [], progress=False)
    full = splice_evaluate(model, {"t": (points["layers.1.mlp_out"], sae, points["layers.1.mlp_in"])}, contexts, [], progress=False, resume=False)
    seen = {}

    def keep(tensor):
        seen["in"] = tensor

    def replace(tensor):  # every position but the first (the attention sink, which evaluation leaves alone)
        replaced = sae(seen["in"].reshape(-1, 32)).reshape(tensor.shape)
        return torch.cat([tensor[:, :1], replaced[:, 1:]], dim=1)

    with torch.no_grad(), hooked(model, [(points["layers.1.mlp_in"], keep), (points["layers.1.mlp_out"], replace)]):
        logits = model(input_ids=contexts, use_cache=False).logits
    scored = logits[:, 1:-1]  # predictions made at positions 1..T-2 (position 0 is not scored)
    expected = torch.nn.functional.cross_entropy(scored.reshape(-1, logits.shape[-1]), contexts[:, 2:].reshape(-1)).item()
    assert resumed["t"].spliced_loss == pytest.approx(expected, rel=1e-5)
    assert full["t"].spliced_loss == pytest.approx(expected, rel=1e-5)
    assert resumed["t"].kl > 1e-4  # the replacement changed the next-token distributions


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A suite of SAEs, transcoders and skip transcoders at every MLP output of a 2-layer model, through the CLI."""
    root = tmp_path_factory.mktemp("transcoders")
    model_dir = save_tiny_model(root / "model")
    corpus = write_corpus(root / "corpus.txt", repeat=40)
    out = root / "suite"
    code = main(["train", "--model", model_dir, "--dataset", corpus, "--hookpoints", "layers.*.mlp_out", "--kinds", "sae", "transcoder",
                 "skip_transcoder", "--arch", "jumprelu", "topk", "--width", "64", "--target-l0", "4", "--tokens", "10240",
                 "--batch-size", "256", "--context-size", "32", "--eval-tokens", "256", "--device", "cpu", "--seed", "0", "--out", str(out)])
    assert code == 0
    return out


def test_a_suite_trains_and_measures_saes_and_transcoders_side_by_side(suite, capsys):
    index = json.loads((suite / "suite.json").read_text())
    kinds = sorted((e["kind"], e["architecture"], e["layer"]) for e in index["saes"])
    assert len(kinds) == 12 and {k for k, _a, _l in kinds} == {"sae", "transcoder", "skip_transcoder"}
    for entry in index["saes"]:
        assert entry["site"] == "mlp_out" and entry["path"].startswith(entry["hookpoint"])
        metrics = entry["metrics"]
        assert 0 < metrics["fvu"] < 1.0 and metrics["l0"] > 0 and metrics["delta_lm_loss"] is not None, entry["path"]
        cfg = json.loads((suite / entry["path"] / "cfg.json").read_text())
        if entry["kind"] == "sae":
            assert cfg["reads"] == {"hookpoints": [entry["hookpoint"]], "target": None}
        else:
            assert cfg["reads"] == {"hookpoints": [entry["reads"]], "target": entry["hookpoint"]} and entry["reads"].endswith(".mlp_in")
            assert cfg["skip"] == (entry["kind"] == "skip_transcoder")
    assert main(["eval", str(suite)]) == 0
    table = capsys.readouterr().out
    assert "layers.0.mlp_out/skip_transcoder-topk-w64-l0_4" in table and "layers.1.mlp_out/transcoder-jumprelu-w64-l0_4" in table


def test_suite_transcoders_export_to_circuit_tracer_and_saelens_and_load_back_identically(suite, tmp_path):
    with pytest.raises(InvalidInput, match="holds 4 transcoder sets; choose one with --set"):
        main_raising(["convert", str(suite), str(tmp_path / "ct"), "--to", "circuit-tracer"])
    for name in ("skip_transcoder-jumprelu-w64-l0_4", "transcoder-topk-w64-l0_4"):
        assert main(["convert", str(suite), str(tmp_path / name), "--to", "circuit-tracer", "--set", name]) == 0
        loaded = load_circuit_tracer_set(tmp_path / name)
        assert sorted(loaded) == [0, 1]
        for layer, sae in loaded.items():
            original = load(suite / f"layers.{layer}.mlp_out" / name)
            assert (sae.cfg.hookpoint, sae.cfg.target, sae.cfg.skip) == (original.cfg.hookpoint, original.cfg.target, original.cfg.skip)
            x = torch.randn(40, 32) * 3
            with torch.no_grad():
                torch.testing.assert_close(sae(x), original(x), atol=1e-6, rtol=1e-6)
        one = load_sae(tmp_path / name, hookpoint="layers.1.mlp_out")
        assert one.cfg.target == "layers.1.mlp_out"
    with pytest.raises(InvalidInput, match="name one with hookpoint='layers.L.mlp_out'"):
        load_sae(tmp_path / "transcoder-topk-w64-l0_4")
    jumprelu = load(suite / "layers.1.mlp_out" / "skip_transcoder-jumprelu-w64-l0_4")
    back = load_sae(export_saelens(jumprelu, tmp_path / "saelens"))
    x = torch.randn(40, 32) * 3
    with torch.no_grad():
        torch.testing.assert_close(back(x), jumprelu(x), atol=1e-6, rtol=1e-6)
    assert back.cfg.target == "layers.1.mlp_out" and back.cfg.hookpoint == "layers.1.mlp_in" and back.cfg.skip
    with pytest.raises(InvalidInput, match="SAELens has no topk transcoder"):
        export_saelens(load(suite / "layers.1.mlp_out" / "skip_transcoder-topk-w64-l0_4"), tmp_path / "refused")
    with pytest.raises(InvalidInput, match=r"needs one transcoder for every layer from 0 to 1; layers \[0\] have none"):
        export_circuit_tracer([jumprelu], tmp_path / "gap")
    with pytest.raises(InvalidInput, match="this is an SAE"):
        export_circuit_tracer([load(suite / "layers.1.mlp_out" / "topk-w64-l0_4")], tmp_path / "sae")


def main_raising(argv: list[str]) -> None:
    """Call the CLI's command function directly, so the refusal arrives as the exception (cli.main prints it)."""
    from saescope.cli import build_parser

    args = build_parser().parse_args(argv)
    args.func(args)


def test_a_gemma_scope_2_transcoder_loads_with_the_published_formula(tmp_path):
    """GS2 keys (w_enc [d_model, d_sae], affine_skip_connection [d_in, d_out]): f = relu(pre)·(pre > θ), y = f W_dec + b_dec + x·A."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(5)
    tensors = {"w_enc": torch.randn(16, 40, generator=generator), "w_dec": torch.randn(40, 16, generator=generator),
               "b_enc": torch.randn(40, generator=generator), "b_dec": torch.randn(16, generator=generator),
               "threshold": torch.rand(40, generator=generator), "affine_skip_connection": torch.randn(16, 16, generator=generator)}
    file = tmp_path / "layer_7_width_16k" / "params.safetensors"
    file.parent.mkdir()
    save_file(tensors, str(file))
    with pytest.raises(InvalidInput, match="needs its layer"):
        load_gemma_scope_2(_copy(file, tmp_path / "x" / "params.safetensors"))
    sae = load_sae(file)
    assert (sae.cfg.hookpoint, sae.cfg.target, sae.cfg.skip) == ("layers.7.mlp_in", "layers.7.mlp_out", True)
    x = torch.randn(30, 16, generator=generator)
    pre = x @ tensors["w_enc"] + tensors["b_enc"]
    expected = (torch.relu(pre) * (pre > tensors["threshold"])) @ tensors["w_dec"] + tensors["b_dec"] + x @ tensors["affine_skip_connection"]
    with torch.no_grad():
        torch.testing.assert_close(sae(x), expected, atol=1e-5, rtol=1e-5)


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target


def test_transcoder_features_are_interpreted_from_their_input_and_their_logits_come_from_their_output(suite):
    """Top contexts from the MLP's input (what fires the feature); logit effects from the decoder row at mlp_out (what it writes)."""
    from saescope.interpret.directions import logit_effects

    assert main(["interpret", str(suite), "--tokens", "512"]) == 0
    path = "layers.1.mlp_out/transcoder-topk-w64-l0_4"
    records = json.loads((suite / path / "interpret" / "features_00000.json").read_text())
    fired = [r for r in records if r["top"]]
    assert fired, "no transcoder feature fired on the interpretation tokens"
    sae = load(suite / path)
    loaded = tiny_loaded_from(suite)
    top_ids = logit_effects(loaded.model, sae.W_dec.detach())[0]
    assert [i for i, _v in fired[0]["logits"]["top"]] == top_ids[fired[0]["id"]].tolist()


def tiny_loaded_from(suite: Path):
    from saescope.lm.models import load_model

    return load_model(json.loads((suite / "suite.json").read_text())["model"], device="cpu")


def test_steering_a_transcoder_feature_changes_its_output_contribution(suite):
    """add puts the decoder row on mlp_out; ablate removes exactly the feature's contribution, read from mlp_in in the same forward."""
    from saescope.lm.capture import capture_dict
    from saescope.steer import Intervention, Steering

    loaded = tiny_loaded_from(suite)
    sae = load(suite / "layers.1.mlp_out" / "transcoder-topk-w64-l0_4")
    points = {p.name: p for p in resolve_hookpoints(loaded.model, ["layers.1.mlp_in", "layers.1.mlp_out"])}
    ids = torch.randint(4, 300, (1, 10))
    clean = capture_dict(loaded.model, list(points.values()), ids)
    acts = sae.encode(clean["layers.1.mlp_in"][0])
    feature = int(acts[1:].sum(dim=0).argmax())
    for kind, value in (("add", 3.0), ("ablate", 0.0)):
        intervention = Intervention(sae, feature, value, kind=kind)
        assert intervention.hookpoint == "layers.1.mlp_out" and intervention.reads == "layers.1.mlp_in"
        steering = Steering(loaded.model, [intervention])
        seen = {}
        with steering.active(), hooked(loaded.model, [(points["layers.1.mlp_out"], lambda t: seen.__setitem__("out", t.clone()))]):
            with torch.no_grad():
                loaded.model(input_ids=ids, use_cache=False)
        change = seen["out"][0, 1:] - clean["layers.1.mlp_out"][0, 1:]
        expected = (3.0 if kind == "add" else -acts[1:, feature:feature + 1]) * sae.W_dec[feature]
        torch.testing.assert_close(change, expected.expand_as(change), atol=1e-5, rtol=1e-4)
    with pytest.raises(InvalidInput, match="a transcoder writes layers.1.mlp_out; steer its features there"):
        Intervention(sae, feature, 1.0, hookpoint="layers.1.mlp_in")


def test_the_replacement_model_of_one_layer_is_that_layers_splice_and_of_all_layers_compounds():
    from saescope.evaluation.replacement import replacement_evaluate

    loaded = tiny_loaded("llama")
    model = loaded.model
    points = {p.name: p for p in resolve_hookpoints(model, [f"layers.{l}.{s}" for l in range(3) for s in ("mlp_in", "mlp_out")])}
    torch.manual_seed(1)
    transcoders = {}
    for layer in range(3):
        sae = create_sae("jumprelu", 32, 48, hookpoint=f"layers.{layer}.mlp_in", target=f"layers.{layer}.mlp_out")
        with torch.no_grad():
            for parameter in sae.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
        transcoders[layer] = sae
    contexts = torch.randint(4, 300, (6, 12))
    one = replacement_evaluate(model, {1: transcoders[1]}, contexts, [], progress=False)
    splice = splice_evaluate(model, {"t": (points["layers.1.mlp_out"], transcoders[1], points["layers.1.mlp_in"])}, contexts, [], progress=False)["t"]
    assert one.replaced_loss == pytest.approx(splice.spliced_loss, rel=1e-5)
    assert one.ablated_loss == pytest.approx(splice.zero_ablation_loss, rel=1e-5)
    assert one.kl == pytest.approx(splice.kl, rel=1e-4, abs=1e-7) and one.clean_loss == pytest.approx(splice.clean_loss, rel=1e-6)
    every = replacement_evaluate(model, transcoders, contexts, [], progress=False)
    assert every.layers == [0, 1, 2] and every.kl > one.kl  # three replaced MLPs move the distribution further than one
    with pytest.raises(InvalidInput, match="layer 2's transcoder reads layers.1.mlp_in"):
        replacement_evaluate(model, {2: transcoders[1]}, contexts, [], progress=False)


def test_the_suite_records_each_transcoder_sets_replacement_model(suite):
    index = json.loads((suite / "suite.json").read_text())
    assert sorted(index["replacement"]) == ["skip_transcoder-jumprelu-w64-l0_4", "skip_transcoder-topk-w64-l0_4",
                                            "transcoder-jumprelu-w64-l0_4", "transcoder-topk-w64-l0_4"]
    for figures in index["replacement"].values():
        assert figures["layers"] == [0, 1] and figures["n_tokens"] > 0 and figures["kl"] >= 0


def test_a_transcoder_feature_page_shows_its_input_and_output_sides(suite, tmp_path):
    """The browser labels the transcoder in the overview and on its feature page (run after interpretation above)."""
    import threading

    from test_browser import _chromium

    from saescope.view.server import make_server

    path = _chromium()
    from playwright.sync_api import sync_playwright

    if not (suite / "layers.1.mlp_out/transcoder-topk-w64-l0_4/interpret/summary.json").is_file():
        assert main(["interpret", str(suite), "--tokens", "512"]) == 0
    index = json.loads((suite / "suite.json").read_text())
    n = [e["path"] for e in index["saes"]].index("layers.1.mlp_out/transcoder-topk-w64-l0_4")
    records = json.loads((suite / index["saes"][n]["path"] / "interpret" / "features_00000.json").read_text())
    feature = next(r["id"] for r in records if r["top"])
    httpd = make_server(suite, port=0, device="cpu")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/#/")
            page.wait_for_selector("#sae-table")
            assert "topk transcoder" in page.locator("#sae-table").inner_text()
            page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/#/sae/{n}/feature/{feature}")
            page.wait_for_selector("#transcoder-note")
            note = page.locator("#transcoder-note").inner_text()
            assert "layers.1.mlp_in" in note and "writes layers.1.mlp_out" in note
            assert page.locator("#top-examples .tok").count() > 0 and page.locator("table.logits").count() == 2
            assert not errors, errors
            browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
