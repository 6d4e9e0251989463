"""A seed means a bit-identical result on CPU, on every path: arrays, caches, live-model suites, interpretation
and steering (issue 13, item 4). Each pair of runs below shares nothing but its inputs and its seed."""

import json

import numpy as np
import pytest
from lm_helpers import save_tiny_model, tiny_loaded, tiny_suite_config, write_corpus
from safetensors.numpy import load_file

import saescope
from saescope.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeded")
    np.save(root / "acts.npy", np.random.default_rng(0).normal(size=(4096, 16)).astype(np.float32))
    return root, save_tiny_model(root / "model"), write_corpus(root / "c.txt")


def _weights(folder):
    return load_file(str(folder / "sae_weights.safetensors"))


def _same(a, b):
    return set(a) == set(b) and all(np.array_equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_array_training_from_the_command_line(inputs, tmp_path, arch):
    root, _model, _corpus = inputs
    runs = []
    for name in ("a", "b", "c"):
        seed = "7" if name != "c" else "8"
        assert main(["train", "--data", str(root / "acts.npy"), "--arch", arch, "--width", "64", "--target-l0", "4", "--tokens", "2048",
                     "--batch-size", "256", "--seed", seed, "--out", str(tmp_path / name)]) == 0
        runs.append(_weights(tmp_path / name / arch))
    assert _same(runs[0], runs[1]) and not _same(runs[0], runs[2])


def test_caches_suites_interpretation_and_steering(inputs, tmp_path):
    from saescope.data.tokens import TextContexts
    from saescope.interpret.run import interpret_suite
    from saescope.lm.harvest import write_cache
    from saescope.lm.stream import ModelActivationSource
    from saescope.steer import Intervention, steer_and_compare

    root, model, corpus = inputs
    loaded = tiny_loaded("llama", n_layers=2)
    manifests = []
    for name in ("c1", "c2"):
        source = ModelActivationSource(loaded, TextContexts(corpus, loaded.tokenizer, 32), ["layers.1.resid_post"], batch_contexts=4)
        manifests.append(write_cache(source, tmp_path / name, 1500, shard_tokens=500, progress=False, shuffle=True, seed=3))
    assert manifests[0]["shard_digests"] == manifests[1]["shard_digests"]

    config = tiny_suite_config(model, corpus, hookpoints=["layers.1.resid_post"], tokens=2048, seed=5)
    for name in ("s1", "s2"):
        saescope.train_suite(config, tmp_path / name, progress=False, report=lambda line: None)
        interpret_suite(tmp_path / name, tokens=1024, top_k=3, window=2, batch_contexts=4, progress=False, seed=2)
    path = "layers.1.resid_post/topk-w64-l0_4"
    assert _same(_weights(tmp_path / "s1" / path), _weights(tmp_path / "s2" / path))
    records = [json.loads((tmp_path / name / path / "interpret" / "features_00000.json").read_text()) for name in ("s1", "s2")]
    assert records[0] == records[1]

    sae = saescope.load(tmp_path / "s1" / path)
    texts = [steer_and_compare(loaded, "A list is", [Intervention(sae, 3, 2.0)], max_new_tokens=6, seed=11) for _ in range(2)]
    assert [(g.token_ids, g.perplexity) for g in texts[0]] == [(g.token_ids, g.perplexity) for g in texts[1]]
