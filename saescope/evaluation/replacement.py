"""The replacement model's loss: every MLP of a transcoder set replaced by its transcoder at once.

A per-layer figure (``splice_evaluate``) replaces one MLP and lets the real MLPs fix the rest; the
replacement model that attribution graphs trace replaces them all, so errors compound through the
depth. Over held-out contexts, with the same positions as the per-layer splice (ordinary tokens only;
position 0, the attention sink, is left alone):

- clean CE: the unmodified model;
- replaced CE: every covered layer's ``mlp_out`` replaced by its transcoder's output, computed from
  that layer's ``mlp_in`` in the same forward (so layer L's transcoder reads what the replaced layers
  before it produced);
- ablated CE: every covered layer's ``mlp_out`` set to zero;
- ΔLM loss, loss recovered = (ablated − replaced) / (ablated − clean), and KL(p_clean ‖ p_replaced).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saescope.data.tokens import trainable_mask
from saescope.errors import InvalidInput
from saescope.evaluation.splice import Scores, sae_splice, zero_splice
from saescope.lm.capture import hooked, recorder
from saescope.lm.hookpoints import resolve_hookpoints
from saescope.saes import SparseAutoencoder


@dataclass
class ReplacementMetrics:
    layers: list[int]
    clean_loss: float
    replaced_loss: float
    ablated_loss: float
    delta_lm_loss: float
    loss_recovered: float
    kl: float
    n_tokens: int

    def to_dict(self) -> dict[str, float | int | list[int]]:
        return asdict(self)


@torch.no_grad()
def replacement_evaluate(model: torch.nn.Module, transcoders: dict[int, SparseAutoencoder], contexts: Tensor, excluded_ids: list[int],
                         batch_contexts: int = 8, progress: bool = True) -> ReplacementMetrics:
    """The loss of ``model`` with the MLP of every layer in ``transcoders`` ({layer: transcoder}) replaced at once."""
    if not transcoders:
        raise InvalidInput("replacement_evaluate: no transcoders given")
    for layer, sae in transcoders.items():
        if sae.cfg.target != f"layers.{layer}.mlp_out" or sae.cfg.hookpoint != f"layers.{layer}.mlp_in":
            raise InvalidInput(f"replacement_evaluate: layer {layer}'s transcoder reads {sae.cfg.hookpoint} and writes {sae.cfg.target}; "
                               f"a replacement model needs layers.{layer}.mlp_in → layers.{layer}.mlp_out")
    if contexts.ndim != 2 or contexts.shape[1] < 2:
        raise InvalidInput(f"contexts must have shape [n, T >= 2], got {tuple(contexts.shape)}")
    layers = sorted(transcoders)
    points = {p.name: p for p in resolve_hookpoints(model, [f"layers.{l}.{s}" for l in layers for s in ("mlp_in", "mlp_out")])}
    device = next(model.parameters()).device
    for sae in transcoders.values():
        sae.to(device).eval()
    totals = torch.zeros(4, dtype=torch.float64)  # clean CE, replaced CE, ablated CE, KL
    n_scored = 0
    for start in tqdm(range(0, contexts.shape[0], batch_contexts), desc="replacement model", disable=not progress, leave=False):
        input_ids = contexts[start : start + batch_contexts].to(device)
        mask = trainable_mask(input_ids, excluded_ids)
        score_mask = mask[:, :-1]
        if not score_mask.any():
            continue
        clean = Scores(model(input_ids=input_ids, use_cache=False).logits, input_ids, score_mask).as_reference()
        seen: dict[str, Tensor] = {}
        replace_hooks: list[tuple[object, Callable[[Tensor], Tensor | None]]] = []
        for layer in layers:
            read, write = points[f"layers.{layer}.mlp_in"], points[f"layers.{layer}.mlp_out"]
            replace_hooks.append((read, recorder(seen, read.name)))
            replace_hooks.append((write, _from_input(sae_splice(transcoders[layer], mask), seen, read.name)))
        with hooked(model, replace_hooks):
            replaced = Scores(model(input_ids=input_ids, use_cache=False).logits, input_ids, score_mask)
        ablate = zero_splice(mask)
        with hooked(model, [(points[f"layers.{layer}.mlp_out"], ablate) for layer in layers]):
            ablated = Scores(model(input_ids=input_ids, use_cache=False).logits, input_ids, score_mask)
        totals += torch.stack([clean.ce.double().sum().cpu(), replaced.ce.double().sum().cpu(), ablated.ce.double().sum().cpu(),
                               replaced.kl_from(clean).double().sum().cpu()])
        n_scored += int(score_mask.sum())
    if n_scored == 0:
        raise InvalidInput("no scored positions: every context holds only BOS/EOS/pad tokens")
    clean_ce, replaced_ce, ablated_ce, kl = (float(v / n_scored) for v in totals)
    denominator = ablated_ce - clean_ce
    return ReplacementMetrics(
        layers=layers, clean_loss=clean_ce, replaced_loss=replaced_ce, ablated_loss=ablated_ce, delta_lm_loss=replaced_ce - clean_ce,
        loss_recovered=(ablated_ce - replaced_ce) / denominator if abs(denominator) > 1e-12 else float("nan"), kl=kl, n_tokens=n_scored,
    )


def _from_input(replace: Callable[[Tensor, Tensor | None], Tensor], seen: dict[str, Tensor], name: str) -> Callable[[Tensor], Tensor]:
    def apply(tensor: Tensor) -> Tensor:
        return replace(tensor, seen[name])

    return apply
