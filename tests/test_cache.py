"""Activation cache: contents, manifest, storage dtypes, shuffled reading, crash safety and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_helpers import tiny_loaded, write_corpus

import saescope.data.cache as cache_module
from saescope.data.cache import CachedActivations, read_manifest
from saescope.data.tokens import TextContexts
from saescope.lm.harvest import write_cache
from saescope.lm.stream import ModelActivationSource

HOOKPOINTS = ["layers.0.resid_post", "layers.1.mlp_out"]


@pytest.fixture(scope="module")
def loaded():
    return tiny_loaded("llama", n_layers=2)


def _source(loaded, corpus, batch_contexts=4):
    return ModelActivationSource(loaded, TextContexts(corpus, loaded.tokenizer, 32, part="all"), HOOKPOINTS, batch_contexts=batch_contexts)


def _visible_shards(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*.npy"))


def test_cache_holds_exactly_the_streamed_activations(loaded, tmp_path):
    source = _source(loaded, write_corpus(tmp_path / "c.txt"))
    manifest = write_cache(source, tmp_path / "cache", 3000, shard_tokens=700, progress=False)
    assert manifest["complete"] and manifest["n_tokens"] >= 3000
    for key in ("model", "dataset", "dtype", "n_tokens", "corpus_fingerprint", "saescope_version", "context_size"):
        assert manifest[key] is not None, key
    assert manifest["hookpoints"]["layers.0.resid_post"]["d"] == 32
    assert len(manifest["shard_digests"]) >= 4
    reader = CachedActivations(tmp_path / "cache")
    expected = source.head(manifest["n_tokens"])
    head = reader.head(manifest["n_tokens"])
    for name in HOOKPOINTS:
        torch.testing.assert_close(head[name], expected[name])
    on_disk = np.load(tmp_path / "cache" / manifest["hookpoints"]["layers.1.mlp_out"]["shards"][0]["file"], mmap_mode="r")
    assert on_disk.dtype == np.float32 and on_disk.shape[1] == 32


@pytest.mark.parametrize("dtype, tolerance", [("fp16", 2e-3), ("bf16", 2e-2)])
def test_half_precision_storage(loaded, tmp_path, dtype, tolerance):
    source = _source(loaded, write_corpus(tmp_path / "c.txt"))
    manifest = write_cache(source, tmp_path / dtype, 1000, dtype=dtype, shard_tokens=400, progress=False)
    assert manifest["dtype"] == {"fp16": "float16", "bf16": "bfloat16"}[dtype]
    head = CachedActivations(tmp_path / dtype, "layers.0.resid_post").head(1000)
    reference = source.head(1000)["layers.0.resid_post"]
    assert head.dtype == torch.float32
    assert ((head - reference).abs() / reference.abs().clamp_min(1e-2)).max() < tolerance


def test_reader_shuffles_across_shards_and_keeps_hookpoints_aligned(loaded, tmp_path):
    source = _source(loaded, write_corpus(tmp_path / "c.txt"))
    write_cache(source, tmp_path / "cache", 3000, shard_tokens=500, progress=False)
    reader = CachedActivations(tmp_path / "cache", shards_in_memory=2)
    head = reader.head(reader.n_tokens)
    batches = list(reader.iter_batches(100, seed=0))
    rows = torch.cat([b["layers.0.resid_post"] for b in batches])
    assert not torch.equal(rows, head["layers.0.resid_post"][: rows.shape[0]])
    # Every (token, both hookpoints) pair comes from the cache, at most as often as it is there.
    from collections import Counter

    def pairs(a, b):
        return Counter(tuple(x.tolist()) + tuple(y.tolist()) for x, y in zip(a, b))

    other = torch.cat([b["layers.1.mlp_out"] for b in batches])
    streamed, stored = pairs(rows, other), pairs(head["layers.0.resid_post"], head["layers.1.mlp_out"])
    assert all(stored[key] >= count for key, count in streamed.items())
    assert rows.shape[0] >= reader.n_tokens - 2 * 100
    assert torch.equal(torch.cat([b["layers.1.mlp_out"] for b in reader.iter_batches(100, seed=0)]), other)


def test_a_writer_killed_mid_shard_leaves_no_visible_corrupt_shard_and_resumes(loaded, tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "c.txt")
    reference = write_cache(_source(loaded, corpus), tmp_path / "reference", 3000, shard_tokens=500, progress=False)
    calls = {"n": 0}
    real_save = cache_module._save_npy_atomic

    def crashing_save(path, array):
        calls["n"] += 1
        if calls["n"] == 5:  # the third shard, first hookpoint: half a file, then the process "dies"
            with open(path.with_name(path.name + ".tmp"), "wb") as handle:
                handle.write(b"\x93NUMPY partial")
            raise KeyboardInterrupt("killed")
        real_save(path, array)

    monkeypatch.setattr(cache_module, "_save_npy_atomic", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        write_cache(_source(loaded, corpus), tmp_path / "cache", 3000, shard_tokens=500, progress=False)
    manifest = read_manifest(tmp_path / "cache")
    listed = sorted(s["file"] for h in manifest["hookpoints"].values() for s in h["shards"])
    assert len(manifest["shard_digests"]) == 2 and not manifest["complete"]
    assert _visible_shards(tmp_path / "cache") == listed  # the partial file is not a visible shard
    with pytest.raises(FileExistsError, match="pass --resume"):
        write_cache(_source(loaded, corpus), tmp_path / "cache", 3000, shard_tokens=500, progress=False)
    monkeypatch.setattr(cache_module, "_save_npy_atomic", real_save)
    resumed = write_cache(_source(loaded, corpus), tmp_path / "cache", 3000, shard_tokens=500, resume=True, progress=False)
    assert resumed["n_tokens"] == reference["n_tokens"]
    assert resumed["corpus_fingerprint"] == reference["corpus_fingerprint"]
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    a, b = CachedActivations(tmp_path / "cache").head(10_000), CachedActivations(tmp_path / "reference").head(10_000)
    for name in HOOKPOINTS:
        assert torch.equal(a[name], b[name])


def test_sigkill_during_writing_then_resume(loaded, tmp_path):
    """A real kill of the `saescope cache` process, then `--resume` in a second process."""
    model_dir = tmp_path / "model"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    corpus = write_corpus(tmp_path / "c.txt", repeat=60)
    out = tmp_path / "cache"
    command = [sys.executable, "-m", "saescope", "cache", "--model", str(model_dir), "--dataset", corpus, "--hookpoints", *HOOKPOINTS,
               "--tokens", "40000", "--shard-tokens", "300", "--context-size", "32", "--batch-contexts", "2", "--part", "all", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if len(json.loads((out / "manifest.json").read_text())["shard_digests"]) >= 3:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        assert process.poll() is None, f"the writer ended before it could be killed: {process.communicate()[1].decode()[-2000:]}"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    manifest = read_manifest(out)
    assert not manifest["complete"]
    listed = sorted(s["file"] for h in manifest["hookpoints"].values() for s in h["shards"])
    visible = _visible_shards(out)
    assert set(listed) <= set(visible)  # a shard renamed just before the kill may exist unlisted
    for file in visible:
        np.load(out / file)  # every visible shard is whole; half-written ones only exist as .tmp
    finished = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stderr[-2000:]
    final = read_manifest(out)
    assert final["complete"] and final["n_tokens"] >= 40_000
    assert _visible_shards(out) == sorted(s["file"] for h in final["hookpoints"].values() for s in h["shards"])


def test_training_from_the_cache_uses_the_same_api(loaded, tmp_path):
    from saescope.data.lm_config import LmDataConfig
    from saescope.training import TrainConfig
    from saescope.training.on_model import SaeSpec, train_on_model

    corpus = write_corpus(tmp_path / "c.txt")
    write_cache(_source(loaded, corpus), tmp_path / "cache", 3000, shard_tokens=1000, progress=False)
    config = TrainConfig(total_tokens=2048, batch_size=256, progress=False, normalization_tokens=512)
    data = LmDataConfig(eval_fraction=0.2)
    results = train_on_model(loaded, ["layers.*.resid_post"], [SaeSpec("topk", width=64, target_l0=4)], config, data, cache=str(tmp_path / "cache"),
                             eval_tokens=256)
    assert list(results) == ["layers.0.resid_post/topk-w64-l0_4"]
    assert data.dataset == "pydocs" and data.context_size == 128  # the caller's config is not changed
    metrics = results["layers.0.resid_post/topk-w64-l0_4"][1]
    # The clean loss, against the model's own loss on the same held-out contexts (every token here is
    # ordinary text after BOS, so the scored positions are all next-token predictions but BOS's target).
    from dataclasses import replace

    from saescope.evaluation.on_model import held_out_contexts

    # evaluation follows the cache's corpus and context size: the reference reads exactly those
    contexts = held_out_contexts(loaded, replace(data, dataset=corpus, context_size=32), 256)
    labels = contexts.clone()
    labels[torch.isin(labels, torch.tensor([loaded.tokenizer.bos_token_id, loaded.tokenizer.eos_token_id, loaded.tokenizer.pad_token_id]))] = -100
    with torch.no_grad():
        logits = loaded.model(input_ids=contexts, use_cache=False).logits
    reference = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert metrics["clean_loss"] == pytest.approx(float(reference), rel=1e-4)
    assert metrics["spliced_loss"] > metrics["clean_loss"] and 0 < metrics["kl"]
    with pytest.raises(ValueError, match="no hookpoint 'layers.5.resid_post' in the cache .*; it holds"):
        train_on_model(loaded, ["layers.5.resid_post"], [SaeSpec("topk", width=64, target_l0=4)], config, data, cache=str(tmp_path / "cache"))


def test_bad_cache_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an activation cache"):
        CachedActivations(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="not a saescope activation cache"):
        CachedActivations(tmp_path)
    with pytest.raises(ValueError, match="cache dtype must be one of"):
        cache_module.storage_dtype_name("int8")


def test_a_second_cache_writer_is_refused_and_a_complete_cache_does_not_pretend_to_grow(loaded, tmp_path):
    from saescope.io.lock import output_lock

    corpus = write_corpus(tmp_path / "c.txt")
    with output_lock(tmp_path / "cache", "activation cache"):
        with pytest.raises(FileExistsError, match="another saescope run is writing here"):
            write_cache(_source(loaded, corpus), tmp_path / "cache", 1000, shard_tokens=400, progress=False)
    manifest = write_cache(_source(loaded, corpus), tmp_path / "cache", 1000, shard_tokens=400, progress=False)
    assert manifest["complete"] and manifest["n_tokens"] >= 1000
    assert write_cache(_source(loaded, corpus), tmp_path / "cache", 1000, shard_tokens=400, resume=True, progress=False)["n_tokens"] == manifest["n_tokens"]
    with pytest.raises(ValueError, match=r"the cache is complete with .* tokens, fewer than the 10,000,000 asked for .* write a new one"):
        write_cache(_source(loaded, corpus), tmp_path / "cache", 10_000_000, shard_tokens=400, resume=True, progress=False)


def test_a_shard_that_disagrees_with_the_manifest_is_named(loaded, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt")
    write_cache(_source(loaded, corpus), tmp_path / "cache", 1000, shard_tokens=400, progress=False)
    manifest = read_manifest(tmp_path / "cache")
    for entry in manifest["hookpoints"]["layers.1.mlp_out"]["shards"]:
        entry.pop("sha256")  # a cache written before shard checksums: the shape check still names the file
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps(manifest))
    shard = tmp_path / "cache" / manifest["hookpoints"]["layers.1.mlp_out"]["shards"][1]["file"]
    np.save(shard, np.load(shard)[:-7])  # rows lost (or another writer's shard)
    with pytest.raises(ValueError, match=r"shard_00001.npy: holds shape \[.*\], but .*manifest.json lists .*the cache is damaged"):
        list(CachedActivations(tmp_path / "cache").iter_batches(64, shuffle=False))
    np.save(shard, np.load(shard).astype(np.float64)[:0])
    (tmp_path / "cache" / manifest["hookpoints"]["layers.1.mlp_out"]["shards"][0]["file"]).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="shard_00000.npy: cannot read this cache shard"):
        CachedActivations(tmp_path / "cache").head(10)


def test_a_flipped_byte_in_a_shard_is_caught(loaded, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt")
    write_cache(_source(loaded, corpus), tmp_path / "cache", 800, shard_tokens=400, progress=False)
    manifest = read_manifest(tmp_path / "cache")
    shard = tmp_path / "cache" / manifest["hookpoints"]["layers.0.resid_post"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x10  # the shape still parses; a value is wrong
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="shard_00000.npy: its SHA-256 does not match"):
        CachedActivations(tmp_path / "cache").head(10)
