"""Evaluation inside the model: how much the LM's loss rises when an SAE replaces an activation.

For each SAE at hookpoint h, over the same held-out contexts:

- clean CE: next-token cross-entropy of the unmodified model;
- spliced CE: CE when the activation at h is replaced by the SAE's reconstruction;
- zero-ablation CE: CE when the activation at h is replaced by zeros;
- ΔLM loss = spliced CE − clean CE;  loss recovered = (zero CE − spliced CE) / (zero CE − clean CE);
- KL: mean over positions of KL(p_clean ‖ p_spliced) of next-token distributions.

Positions. The splice and the ablation touch only ordinary tokens: BOS/EOS/pad activations are left
as they are (SAEs are not trained on them, and BOS carries outlier norms). Loss and KL are scored
at positions whose input token is ordinary, so BOS is excluded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saescope.data.tokens import trainable_mask
from saescope.errors import InvalidInput
from saescope.lm.capture import replace_activation
from saescope.lm.hookpoints import Hookpoint
from saescope.saes import SparseAutoencoder


@dataclass
class SpliceMetrics:
    clean_loss: float
    spliced_loss: float
    zero_ablation_loss: float
    delta_lm_loss: float
    loss_recovered: float
    kl: float
    n_tokens: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def sae_splice(sae: SparseAutoencoder, mask: Tensor, add_error: bool = False) -> Callable[[Tensor], Tensor]:
    """A replacement function: the SAE's reconstruction at ``mask`` positions (plus its error if asked)."""

    def replace(activation: Tensor) -> Tensor:
        flat = activation.reshape(-1, activation.shape[-1])
        reconstruction = sae(flat.to(sae.W_dec.dtype)).to(activation.dtype)
        if add_error:
            reconstruction = reconstruction + (flat - reconstruction)
        out = torch.where(mask.reshape(-1, 1), reconstruction, flat)
        return out.reshape(activation.shape)

    return replace


def zero_splice(mask: Tensor) -> Callable[[Tensor], Tensor]:
    def replace(activation: Tensor) -> Tensor:
        return activation * (~mask).unsqueeze(-1).to(activation.dtype)

    return replace


def _scores(logits: Tensor, input_ids: Tensor, score_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position log-probs [n, vocab] and CE [n] at scored positions (predicting token t+1 from t)."""
    log_probs = logits[:, :-1].float().log_softmax(dim=-1)[score_mask]
    targets = input_ids[:, 1:][score_mask]
    return log_probs, -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)


@torch.no_grad()
def splice_evaluate(
    model: torch.nn.Module,
    saes: Mapping[str, tuple[Hookpoint, SparseAutoencoder]],
    contexts: Tensor,
    excluded_ids: list[int],
    batch_contexts: int = 8,
    progress: bool = True,
) -> dict[str, SpliceMetrics]:
    """ΔLM loss, loss recovered and KL for each named ``(hookpoint, sae)`` over ``contexts`` [n, T]."""
    if contexts.ndim != 2 or contexts.shape[1] < 2:
        raise InvalidInput(f"contexts must have shape [n, T >= 2], got {tuple(contexts.shape)}")
    device = next(model.parameters()).device
    totals = {name: torch.zeros(3, dtype=torch.float64) for name in saes}  # spliced CE, KL, zero CE
    clean_total = torch.zeros((), dtype=torch.float64)
    n_scored = 0
    hookpoints = {point.name: point for point, _ in saes.values()}
    batches = range(0, contexts.shape[0], batch_contexts)
    for start in tqdm(batches, desc="ΔLM loss", disable=not progress, leave=False):
        input_ids = contexts[start : start + batch_contexts].to(device)
        mask = trainable_mask(input_ids, excluded_ids)
        score_mask = mask[:, :-1]
        if not score_mask.any():
            continue
        clean_log_probs, clean_ce = _scores(model(input_ids=input_ids, use_cache=False).logits, input_ids, score_mask)
        clean_total += clean_ce.double().sum().cpu()
        n_scored += int(score_mask.sum())
        zero_ce: dict[str, Tensor] = {}
        for name, point in hookpoints.items():
            with replace_activation(model, point, zero_splice(mask)):
                zero_ce[name] = _scores(model(input_ids=input_ids, use_cache=False).logits, input_ids, score_mask)[1].double().sum().cpu()
        for name, (point, sae) in saes.items():
            with replace_activation(model, point, sae_splice(sae, mask)):
                log_probs, ce = _scores(model(input_ids=input_ids, use_cache=False).logits, input_ids, score_mask)
            kl = (clean_log_probs.exp() * (clean_log_probs - log_probs)).sum(dim=-1)
            totals[name] += torch.stack([ce.double().sum().cpu(), kl.double().sum().cpu(), zero_ce[point.name]])
    if n_scored == 0:
        raise InvalidInput("no scored positions: every context holds only BOS/EOS/pad tokens")
    clean = float(clean_total / n_scored)
    results = {}
    for name, total in totals.items():
        spliced, kl, zero = (float(v / n_scored) for v in total)
        denominator = zero - clean
        results[name] = SpliceMetrics(
            clean_loss=clean,
            spliced_loss=spliced,
            zero_ablation_loss=zero,
            delta_lm_loss=spliced - clean,
            loss_recovered=(zero - spliced) / denominator if abs(denominator) > 1e-12 else float("nan"),
            kl=kl,
            n_tokens=n_scored,
        )
    return results
