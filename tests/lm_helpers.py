"""Tiny random language models and a tiny tokenizer, built offline for fast tests."""

from __future__ import annotations

import functools

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "A list is a mutable sequence; a tuple is an immutable one. Both hold items in order.",
    "Functions are defined with def and return values with return. Lambdas are small functions.",
    "Dictionaries map keys to values; sets hold unique items. Both use hashing for lookups.",
    "Exceptions are raised with raise and handled with try and except blocks in Python code.",
    "Iterators produce items one at a time; generators are functions that yield values lazily.",
] * 4


@functools.cache
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def tiny_model(family: str, n_layers: int = 3, vocab_size: int = 320):
    """A random decoder-only model of ``family`` with hidden size 32."""
    import transformers as tf

    torch.manual_seed(0)
    common = {"vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
    if family == "llama":
        config = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2, **common)
        model = tf.LlamaForCausalLM(config)
    elif family == "qwen2":
        config = tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2, **common)
        model = tf.Qwen2ForCausalLM(config)
    elif family == "gemma2":
        config = tf.Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2, head_dim=8, **common)
        model = tf.Gemma2ForCausalLM(config)
    elif family == "gpt2":
        config = tf.GPT2Config(n_embd=32, n_layer=n_layers, n_head=4, n_positions=256, **common)
        model = tf.GPT2LMHeadModel(config)
    elif family == "gpt_neox":
        config = tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4, **common)
        model = tf.GPTNeoXForCausalLM(config)
    else:
        raise ValueError(family)
    return model.eval()


def tiny_loaded(family: str = "llama", n_layers: int = 3):
    from saescope.lm.models import LoadedModel

    return LoadedModel(tiny_model(family, n_layers), tiny_tokenizer(), f"tiny-{family}")


def write_corpus(path, repeat: int = 8) -> str:
    """A .txt corpus of distinct documents (so a hash-based held-out split has both parts)."""
    documents = [f"{doc} Note {i}." for i, doc in enumerate(CORPUS * repeat)]
    path.write_text("\n\n".join(documents))
    return str(path)


def save_tiny_model(folder, family: str = "llama", n_layers: int = 2) -> str:
    """A tiny model and its tokenizer saved as a model folder (what ``--model`` and suite configs take)."""
    loaded = tiny_loaded(family, n_layers=n_layers)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return str(folder)


def tiny_suite_config(model_dir: str, corpus: str, **overrides) -> dict:
    """A suite config small enough for a unit test: every layer's resid_post of a tiny model, 8 steps."""
    values = {
        "model": model_dir, "dataset": corpus, "hookpoints": ["layers.*.resid_post"], "architectures": ["topk"],
        "widths": [64], "target_l0s": [4], "tokens": 2048, "batch_size": 256, "context_size": 32,
        "eval_tokens": 256, "device": "cpu", "shuffle_buffer_tokens": 1024,
    }
    values.update(overrides)
    return values
