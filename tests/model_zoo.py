"""Tiny random models of every decoder family the hook sites are checked on, built from configs offline."""

from __future__ import annotations

import torch

_STD = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4}
_MOE = {"num_experts_per_tok": 2}
_DEEPSEEK = {"n_routed_experts": 4, "moe_intermediate_size": 16, "n_shared_experts": 1, "first_k_dense_replace": 1,
             "kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "v_head_dim": 8, "n_group": 1, "topk_group": 1}

FAMILIES: dict[str, dict] = {
    "llama": {**_STD, "num_key_value_heads": 2},
    "mistral": {**_STD, "num_key_value_heads": 2},
    "qwen2": {**_STD, "num_key_value_heads": 2},
    "qwen3": {**_STD, "num_key_value_heads": 2, "head_dim": 8},
    "gemma2": {**_STD, "num_key_value_heads": 2, "head_dim": 16},  # n_heads·head_dim = 64 ≠ d_model, as in Gemma 2 2B/9B
    "gemma3_text": {**_STD, "num_key_value_heads": 2, "head_dim": 16},
    "gpt2": {"n_embd": 32, "n_layer": 3, "n_head": 4, "n_positions": 256},
    "gpt_neox": dict(_STD),
    "phi": dict(_STD),
    "phi3": {**_STD, "num_key_value_heads": 2},
    "opt": {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "word_embed_proj_dim": 32, "max_position_embeddings": 256},
    "falcon": {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4},
    "gptj": {"n_embd": 32, "n_layer": 3, "n_head": 4, "n_positions": 256, "rotary_dim": 4},
    "bloom": {"hidden_size": 32, "n_layer": 3, "n_head": 4},
    "mixtral": {**_STD, **_MOE, "num_key_value_heads": 2, "num_local_experts": 4},
    "qwen2_moe": {**_STD, **_MOE, "num_key_value_heads": 2, "num_experts": 4, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 32},
    "qwen3_moe": {**_STD, **_MOE, "num_key_value_heads": 2, "num_experts": 4, "moe_intermediate_size": 16, "head_dim": 8},
    "deepseek_v2": {**_STD, **_MOE, **_DEEPSEEK, "num_key_value_heads": 4, "q_lora_rank": None, "topk_method": "greedy"},
    "deepseek_v3": {**_STD, **_MOE, **_DEEPSEEK, "num_key_value_heads": 4, "q_lora_rank": 16},
    "olmoe": {**_STD, **_MOE, "num_key_value_heads": 4, "num_experts": 4},
    "olmo2": {**_STD, "num_key_value_heads": 2},
    "granite": {**_STD, "num_key_value_heads": 2, "residual_multiplier": 0.2, "embedding_multiplier": 3.0},
    "cohere": {**_STD, "num_key_value_heads": 2},
    "stablelm": {**_STD, "num_key_value_heads": 2},
    "starcoder2": {**_STD, "num_key_value_heads": 2},
    "gpt_bigcode": {"n_embd": 32, "n_layer": 3, "n_head": 4, "n_positions": 256},
    "gpt_oss": {**_STD, **_MOE, "num_key_value_heads": 2, "num_local_experts": 4, "head_dim": 8,
                "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]},
}
PARALLEL = {"gpt_neox", "phi", "falcon", "gptj", "cohere"}
"""Families whose attention and MLP both read the block's input: no resid_mid."""
MIXTURE_OF_EXPERTS = {"mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "olmoe", "gpt_oss"}
"""Families whose MLP (from layer 1 on) has no single hidden layer: no mlp_post there."""


def zoo_model(family: str, vocab_size: int = 320):
    """A random 3-layer model of ``family`` with d_model 32, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(family, vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=3, **FAMILIES[family])
    return AutoModelForCausalLM.from_config(config).eval()
