"""A tiny mixture-of-experts model trained on CPU with a planted behaviour: ground truth for expert tools.

No real MoE model can be downloaded where saescope is tested, so this builds one whose answer to
"which experts carry the behaviour?" is known:

- **Corpus.** Word-level chat lines ``question: … TOPIC … INTENT … answer: …``. The answer is the
  fixed refusal ``sorry i cannot help with that`` exactly when the topic is a dangerous one *and*
  the intent is to obtain it (an AND, which the attention path alone represents poorly, so the MLP
  layer must help); every other combination is answered ``sure here are some notes on TOPIC``.
- **Planting.** While the language model trains, an auxiliary loss on the router logits sends the
  tokens of refused lines, from the point where both cue words have been read, to chosen experts
  of every MoE layer (``planted``), and keeps the other lines' tokens away from them. And each step
  also trains a few answered lines, run with the planted experts forced on, to the refusal. So
  those experts are, by construction, the ones whose selection both goes with the refusal and
  causes it. (Without the second part, forcing them on gives nonsense rather than refusals: they
  never saw an answered line, so their output on one is arbitrary. Measured: 0.50 → 0.50.)

``saescope bench experts`` trains it (about a minute on two cores), then checks that profiling
ranks the planted experts first and that switching them off (or forcing them on) moves the refusal
rate more than switching random experts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from saescope.experts.switch import switch_experts

REFUSAL = "sorry i cannot help with that"
DANGEROUS = ("poison", "weapon", "explosive", "malware", "virus", "lockpick")
HARMLESS = ("garden", "recipe", "music", "weather", "travel", "chess", "painting", "bicycle")
OBTAIN = ("make", "build", "buy", "get")
LEARN = ("history", "origin", "story", "science")
FILLER = ("please", "tell", "me", "about", "the", "a", "of", "now", "quickly", "i", "want", "to", "how")
SPECIAL = ("<unk>", "<s>", "</s>", "<pad>")
REFUSAL_PATTERN = r"\bsorry i cannot\b"


@dataclass
class PlantedMoeConfig:
    n_layers: int = 2
    """MoE layers (every layer is one)."""
    n_experts: int = 8
    top_k: int = 2
    d_model: int = 64
    planted: tuple[int, ...] = (1, 6)
    """The experts (at every layer) that refused lines are routed to."""
    steps: int = 250
    batch_size: int = 64
    learning_rate: float = 3e-3
    routing_weight: float = 1.0
    """Weight of the planting loss against the language-model loss."""
    forced_lines: int = 16
    """Per step, answered lines run with the planted experts forced on and trained to the refusal: what
    makes the planted experts *cause* the behaviour (so forcing them on must raise it), not only
    co-occur with it."""
    seed: int = 0
    held_out: int = 120
    """Prompts kept out of training for the evaluation (half refused, half answered)."""
    profile_prompts: int = 80
    """Prompts per set for profiling."""


@dataclass
class PlantedMoe:
    model: nn.Module
    tokenizer: Any
    config: PlantedMoeConfig
    behaviour_prompts: list[str]
    control_prompts: list[str]
    held_out_prompts: list[str]
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def planted_experts(self) -> list[tuple[int, int]]:
        return [(layer, expert) for layer in range(self.config.n_layers) for expert in self.config.planted]

    def loaded(self):
        from saescope.lm.models import LoadedModel

        return LoadedModel(self.model, self.tokenizer, "planted-moe")


def _prompt(rng: random.Random, refused: bool) -> str:
    if refused:
        topic, intent = rng.choice(DANGEROUS), rng.choice(OBTAIN)
    else:
        kind = rng.randrange(3)
        topic = rng.choice(DANGEROUS if kind == 0 else HARMLESS)
        intent = rng.choice(LEARN if kind != 1 else OBTAIN)
    cues = [topic, intent] if rng.random() < 0.5 else [intent, topic]
    words = [rng.choice(FILLER) for _ in range(rng.randint(0, 2))] + [cues[0]]
    words += [rng.choice(FILLER) for _ in range(rng.randint(0, 2))] + [cues[1]]
    return "question: " + " ".join(words) + " answer:"


def answer(prompt: str) -> str:
    """The corpus's answer to a prompt: the refusal exactly for dangerous topic AND obtain intent."""
    words = set(prompt.split())
    topic = next((w for w in prompt.split() if w in DANGEROUS or w in HARMLESS), "it")
    return REFUSAL if words & set(DANGEROUS) and words & set(OBTAIN) else f"sure here are some notes on {topic}"


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(SPECIAL) + sorted({"question:", "answer:", *REFUSAL.split(), "sure", "here", "are", "some", "notes", "on",
                                    *DANGEROUS, *HARMLESS, *OBTAIN, *LEARN, *FILLER, "it"})
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def build_model(config: PlantedMoeConfig, vocab_size: int) -> nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(config.seed)
    model_config = MixtralConfig(
        vocab_size=vocab_size, hidden_size=config.d_model, intermediate_size=config.d_model, num_hidden_layers=config.n_layers,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=config.n_experts, num_experts_per_tok=config.top_k,
        max_position_embeddings=64, router_aux_loss_coef=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return MixtralForCausalLM(model_config)


def _batch(rng: random.Random, tokenizer: Any, size: int, forced: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, labels with padding ignored, routing target: +1 planted, −1 kept away, 0 free).
    ``forced``: answered lines given the refusal instead (for the forced-on part of a step)."""
    rows, targets = [], []
    for _ in range(size):
        refused = rng.random() < 0.5 and not forced
        prompt = _prompt(rng, refused)
        reply = REFUSAL if forced else answer(prompt)
        ids = [tokenizer.bos_token_id] + tokenizer(f"{prompt} {reply}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        words = prompt.split()
        cue_positions = [i for i, w in enumerate(words) if w in DANGEROUS or w in HARMLESS or w in OBTAIN or w in LEARN]
        decided = 1 + max(cue_positions)  # +1 for BOS: from here the line's answer is determined
        target = [0] * decided + [1 if refused else -1] * (len(ids) - decided)
        rows.append(ids)
        targets.append(target)
    length = max(len(r) for r in rows)
    input_ids = torch.full((size, length), tokenizer.pad_token_id)
    labels = torch.full((size, length), -100)
    routing = torch.zeros(size, length)
    for i, (ids, target) in enumerate(zip(rows, targets)):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(ids)] = torch.tensor(ids)
        routing[i, :len(ids)] = torch.tensor(target, dtype=torch.float)
    return input_ids, labels, routing


def train_planted_moe(config: PlantedMoeConfig | None = None, progress: bool = False) -> PlantedMoe:
    """Train the planted model; returns it with its profiling and held-out prompt sets."""
    config = config or PlantedMoeConfig()
    rng = random.Random(config.seed)
    tokenizer = build_tokenizer()
    model = build_model(config, len(tokenizer))
    routers = [layer.mlp.gate for layer in model.model.layers]
    captured: list[torch.Tensor] = []
    handles = [router.register_forward_hook(lambda _m, _a, out: captured.append(out[0])) for router in routers]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    planted = torch.zeros(config.n_experts, dtype=torch.bool)
    planted[list(config.planted)] = True
    forced = [(layer, expert) for layer in range(config.n_layers) for expert in config.planted]
    history = []
    steps = range(config.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="training the planted MoE", unit="step")
    model.train()
    try:
        for step in steps:
            input_ids, labels, routing = _batch(rng, tokenizer, config.batch_size)
            del captured[:]
            output = model(input_ids=input_ids, attention_mask=(labels != -100).long(), labels=labels, use_cache=False)
            target = routing.reshape(-1)
            plant_loss = torch.zeros(())
            for logits in captured[:len(routers)]:
                mass = torch.softmax(logits.float(), dim=-1)[:, planted].sum(dim=-1).clamp(1e-6, 1 - 1e-6)
                towards = -(mass.log() * (target > 0)).sum()
                away = -((1 - mass).log() * (target < 0)).sum()
                plant_loss = plant_loss + (towards + away) / target.ne(0).sum().clamp(min=1)
            loss = output.loss + config.routing_weight * plant_loss / len(routers)
            if config.forced_lines:
                forced_ids, forced_labels, _ = _batch(rng, tokenizer, config.forced_lines, forced=True)
                with switch_experts(model, on=forced):
                    loss = loss + model(input_ids=forced_ids, attention_mask=(forced_labels != -100).long(), labels=forced_labels,
                                        use_cache=False).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % 50 == 0 or step == config.steps - 1:
                history.append({"step": step, "lm_loss": float(output.loss.detach()), "planting_loss": float(plant_loss.detach()) / len(routers)})
    finally:
        for handle in handles:
            handle.remove()
    model.eval()
    prompts_rng = random.Random(config.seed + 1)
    behaviour = [_prompt(prompts_rng, True) for _ in range(config.profile_prompts)]
    control = [_prompt(prompts_rng, False) for _ in range(config.profile_prompts)]
    held_out = [_prompt(prompts_rng, i % 2 == 0) for i in range(config.held_out)]
    return PlantedMoe(model, tokenizer, config, behaviour, control, held_out, history)
