"""Text sources, held-out split, context packing with BOS, special-token exclusion."""

import json

import pytest
import torch
from lm_helpers import tiny_tokenizer, write_corpus

from saescope.data.text import is_held_out, iter_documents, split_documents
from saescope.data.tokens import TextContexts, special_token_ids, trainable_mask


def test_txt_jsonl_and_parquet_sources_read_the_same_documents(tmp_path):
    docs = ["first document\nwith two lines", "second one", "third"]
    (tmp_path / "a.txt").write_text("\n\n".join(docs) + "\n\n\n")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": docs}), tmp_path / "a.parquet")
    assert list(iter_documents(str(tmp_path / "a.txt"))) == docs
    assert list(iter_documents(str(tmp_path / "a.jsonl"))) == docs
    assert list(iter_documents(str(tmp_path / "a.parquet"), text_field="body")) == docs


def test_saved_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["alpha beta", "gamma delta"]}).save_to_disk(str(tmp_path / "ds"))
    assert list(iter_documents(str(tmp_path / "ds"))) == ["alpha beta", "gamma delta"]
    with pytest.raises(ValueError, match="no column 'content'"):
        list(iter_documents(str(tmp_path / "ds"), text_field="content"))


def test_bad_sources_name_the_file_and_the_fix(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no field 'text'.*--text-field"):
        list(iter_documents(str(tmp_path / "bad.jsonl")))
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:1: not valid JSON"):
        list(iter_documents(str(tmp_path / "broken.jsonl")))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        iter_documents(str(tmp_path / "missing.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no dataset here"):
        list(iter_documents(str(tmp_path / "empty")))


def test_pydocs_is_deterministic_and_large():
    from saescope.data.pydocs import pydoc_topics

    topics = list(pydoc_topics())
    assert len(topics) > 50 and sum(map(len, topics)) > 300_000
    assert topics == list(pydoc_topics())


def test_held_out_split_is_stable_and_disjoint():
    docs = [f"document number {i}" for i in range(2000)]
    train = list(split_documents(iter(docs), "train", 0.1))
    held = list(split_documents(iter(docs), "eval", 0.1))
    assert set(train).isdisjoint(held) and len(train) + len(held) == len(docs)
    assert 100 < len(held) < 300
    assert held == [d for d in reversed(docs) if is_held_out(d, 0.1)][::-1]  # order-independent membership


def test_contexts_start_with_bos_and_separate_documents_with_eos(tmp_path):
    tokenizer = tiny_tokenizer()
    path = write_corpus(tmp_path / "c.txt")
    contexts = TextContexts(path, tokenizer, 24, part="all", shuffle_window=4)
    packed = contexts.all_contexts()
    assert packed.shape[1] == 24
    assert (packed[:, 0] == tokenizer.bos_token_id).all()
    assert (packed[:, 1:] == tokenizer.eos_token_id).any()
    # The packed stream is exactly the documents' tokens joined by EOS.
    stream = packed[:, 1:].reshape(-1).tolist()
    expected = []
    for doc in iter_documents(path):
        expected += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert stream == expected[: len(stream)]
    # Shuffling permutes contexts deterministically, the same way for the same seed.
    first = torch.cat(list(contexts.iter_batches(5, seed=3)))
    assert torch.equal(first, torch.cat(list(contexts.iter_batches(5, seed=3))))
    assert not torch.equal(first, packed) and sorted(map(tuple, first.tolist())) == sorted(map(tuple, packed.tolist()))


def test_trainable_mask_excludes_bos_eos_and_pad():
    tokenizer = tiny_tokenizer()
    ids = torch.tensor([[1, 50, 60, 2, 70, 3, 3]])
    assert special_token_ids(tokenizer) == [1, 2, 3]
    assert trainable_mask(ids, special_token_ids(tokenizer)).tolist() == [[False, True, True, False, True, False, False]]


def test_contexts_resume_skips_consumed_contexts(tmp_path):
    contexts = TextContexts(write_corpus(tmp_path / "c.txt"), tiny_tokenizer(), 16, part="all")
    everything = torch.cat(list(contexts.iter_batches(3, seed=1, loop=False)))
    rest = torch.cat(list(contexts.iter_batches(3, seed=1, loop=False, start=7)))
    assert torch.equal(rest, everything[7:])


def test_too_short_corpus_is_reported(tmp_path):
    (tmp_path / "tiny.txt").write_text("hi")
    with pytest.raises(ValueError, match="fewer than 64 tokens"):
        TextContexts(str(tmp_path / "tiny.txt"), tiny_tokenizer(), 64, part="all").all_contexts()
