"""Position 0 (the attention sink) is never trained on or scored, BOS or not; optional norm-outlier filter (issue 12, item 2)."""

import copy
import json

import pytest
import torch
from lm_helpers import (
    save_tiny_model,
    tiny_loaded,
    tiny_suite_config,
    tiny_tokenizer,
    write_corpus,
)

from saescope.data.tokens import TextContexts, trainable_mask
from saescope.lm.stream import ModelActivationSource, drop_norm_outliers
from saescope.suite import train_suite


def test_position_zero_is_excluded_even_without_a_bos_token():
    ids = torch.tensor([[7, 8, 2, 9], [1, 5, 6, 3]])  # no BOS in the first row, as with Qwen tokenizers
    assert trainable_mask(ids, [1, 2, 3]).tolist() == [[False, True, False, True], [False, True, True, False]]
    assert trainable_mask(ids, []).tolist() == [[False, True, True, True]] * 2


def test_a_tokenizer_without_bos_does_not_train_on_its_first_position(tmp_path):
    tokenizer = copy.deepcopy(tiny_tokenizer())
    tokenizer.bos_token = None
    assert tokenizer.bos_token_id is None
    loaded = tiny_loaded("qwen2", n_layers=2)
    loaded.tokenizer = tokenizer
    contexts = TextContexts(write_corpus(tmp_path / "c.txt"), tokenizer, 16)
    source = ModelActivationSource(loaded, contexts, ["layers.1.resid_post"], batch_contexts=4)
    input_ids = next(contexts.iter_batches(4, shuffle=False))
    assert (input_ids[:, 0] != tokenizer.eos_token_id).all()  # an ordinary token sits at position 0
    rows, n_rows = source.rows(input_ids)
    assert n_rows == int(trainable_mask(input_ids, contexts.excluded_ids).sum()) <= 4 * 15
    from saescope.lm.capture import capture_dict
    from saescope.lm.hookpoints import resolve_hookpoints

    full = capture_dict(loaded.model, resolve_hookpoints(loaded.model, ["layers.1.resid_post"]), input_ids)["layers.1.resid_post"]
    first_positions = full[:, 0]
    assert not any(torch.equal(row, first) for row in rows["layers.1.resid_post"] for first in first_positions)


def test_norm_outliers_are_dropped_at_every_hookpoint_together():
    a, b = torch.ones(10, 4), torch.ones(10, 6)
    a[3] *= 50  # an outlier at hookpoint a only
    b[7] *= 11
    kept = drop_norm_outliers({"a": a, "b": b}, ratio=10.0)
    assert kept["a"].shape[0] == kept["b"].shape[0] == 8
    assert (kept["a"].norm(dim=1) <= 10 * 2).all() and (kept["b"].norm(dim=1) < 11).all()


def test_the_outlier_filter_is_recorded_and_refuses_nonsense(tmp_path):
    loaded = tiny_loaded("llama", n_layers=2)
    contexts = TextContexts(write_corpus(tmp_path / "c.txt"), loaded.tokenizer, 16)
    with pytest.raises(ValueError, match="outlier_norm_ratio must be a number above 1"):
        ModelActivationSource(loaded, contexts, ["layers.1.resid_post"], outlier_norm_ratio=0.5)
    config = tiny_suite_config(save_tiny_model(tmp_path / "model"), str(tmp_path / "c.txt"), hookpoints=["layers.1.resid_post"],
                               tokens=1024, outlier_norm_ratio=3.0)
    train_suite(config, tmp_path / "suite", progress=False, report=lambda line: None)
    index = json.loads((tmp_path / "suite" / "suite.json").read_text())
    assert index["config"]["data"]["outlier_norm_ratio"] == 3.0
