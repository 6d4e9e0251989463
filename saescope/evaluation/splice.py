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
from saescope.lm.capture import hooked, recorder
from saescope.lm.hookpoints import Hookpoint
from saescope.lm.resume import (
    can_replay,
    keep_layer_outputs,
    replayed_layers,
    stacked_logits,
)
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


Replacement = Callable[[Tensor, Tensor | None], Tensor]
"""``(activation at the replaced site, the input read elsewhere in the same forward or None) → what the model sees``."""


def sae_splice(sae: SparseAutoencoder, mask: Tensor, add_error: bool = False) -> Replacement:
    """A replacement function: the SAE's reconstruction at ``mask`` positions (plus its error if asked).

    A transcoder's output is computed from its input (``layers.L.mlp_in``, captured in the same forward)
    and replaces its target (``layers.L.mlp_out``): the MLP's computation is swapped for the features'.
    """

    def replace(activation: Tensor, source: Tensor | None = None) -> Tensor:
        flat = activation.reshape(-1, activation.shape[-1])
        reads = flat if source is None else source.reshape(-1, source.shape[-1])
        reconstruction = sae(reads.to(sae.W_dec.dtype)).to(activation.dtype)
        if add_error:
            reconstruction = reconstruction + (flat - reconstruction)
        out = torch.where(mask.reshape(-1, 1), reconstruction, flat)
        return out.reshape(activation.shape)

    return replace


def zero_splice(mask: Tensor) -> Replacement:
    def replace(activation: Tensor, source: Tensor | None = None) -> Tensor:
        return activation * (~mask).unsqueeze(-1).to(activation.dtype)

    return replace


class Scores:
    """Next-token cross-entropy at the scored positions, and what KL(p_clean ‖ p) needs, without a log-softmax matrix.

    With lse = logsumexp(logits) per position: CE = lse − logit[target], and for a clean distribution p,
    KL(p ‖ q) = Σ p·log p − Σ p·logits_q + lse_q. So each splice costs a logsumexp and one row-wise dot
    product over the vocabulary; the clean distribution's probabilities and Σ p·log p are computed once.
    """

    def __init__(self, logits: Tensor, input_ids: Tensor, score_mask: Tensor) -> None:
        self.logits = logits[:, :-1][score_mask].float()  # [n_scored, vocab]
        self.lse = torch.logsumexp(self.logits, dim=-1)
        targets = input_ids[:, 1:][score_mask]
        self.ce = self.lse - self.logits.gather(1, targets.unsqueeze(1)).squeeze(1)

    def as_reference(self) -> Scores:
        """Keep p = softmax(logits) and Σ p·log p for KL against later splices."""
        self.probs = (self.logits - self.lse.unsqueeze(1)).exp_()
        self.neg_entropy = _row_dot(self.probs, self.logits) - self.lse
        self.logits = None  # only the probabilities are needed from here
        return self

    def kl_from(self, reference: Scores) -> Tensor:
        """KL(p_reference ‖ p_self) per scored position."""
        return reference.neg_entropy - _row_dot(reference.probs, self.logits) + self.lse


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_v a[n, v]·b[n, v] per row, as a batched matrix product (no [n, vocab] temporary)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(-1)


LOGIT_BUDGET = 1 << 27
"""Most logits (float32 elements) one stacked forward may produce: several splices share a forward up to this."""


Splice = tuple[Hookpoint, SparseAutoencoder] | tuple[Hookpoint, SparseAutoencoder, Hookpoint]
"""``(site replaced, sae)``, or for a transcoder ``(site replaced, sae, site read)``."""


def _splice_groups(saes: Mapping[str, Splice]) -> dict[str, tuple[Hookpoint, list[str]]]:
    """The SAEs by replaced site, in forward order: each site's zero ablation and SAEs resume from the same layer."""
    groups: dict[str, tuple[Hookpoint, list[str]]] = {}
    for name, splice in sorted(saes.items(), key=lambda item: item[1][0].order):
        groups.setdefault(splice[0].name, (splice[0], []))[1].append(name)
    return groups


def _read_point(splice: Splice) -> Hookpoint | None:
    return splice[2] if len(splice) == 3 else None


def _stacked(functions: list[Replacement], sources: list[Hookpoint | None], seen: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
    """One replacement over the batch repeated len(functions) times: copy k gets function k, and the rows of
    copy k of its read site (captured earlier in the same forward into ``seen``) when it reads one."""

    def replace(activation: Tensor) -> Tensor:
        parts = activation.chunk(len(functions), dim=0)
        inputs = [None if point is None else seen[point.name].chunk(len(functions), dim=0)[k] for k, point in enumerate(sources)]
        return torch.cat([fn(part, source) for fn, part, source in zip(functions, parts, inputs)], dim=0)

    return replace


@torch.no_grad()
def splice_evaluate(
    model: torch.nn.Module,
    saes: Mapping[str, Splice],
    contexts: Tensor,
    excluded_ids: list[int],
    batch_contexts: int = 8,
    progress: bool = True,
    resume: bool = True,
) -> dict[str, SpliceMetrics]:
    """ΔLM loss, loss recovered and KL for each named ``(hookpoint, sae)`` over ``contexts`` [n, T].

    A transcoder is named with ``(target site, sae, input site)``: its output, computed from the input
    site's activation in the same forward, replaces the target site (the MLP replaced at one layer).

    With ``resume`` (the default) each splice resumes from its hookpoint's layer, replaying the clean
    forward's earlier layers, and the splices at one hookpoint (its zero ablation and every SAE there)
    share stacked forwards of up to ``LOGIT_BUDGET`` logits (``saescope/lm/resume.py``). The figures
    equal the full-forward path's (``resume=False``, one forward per splice from the tokens) up to float
    rounding of the larger batches (tested).
    """
    if contexts.ndim != 2 or contexts.shape[1] < 2:
        raise InvalidInput(f"contexts must have shape [n, T >= 2], got {tuple(contexts.shape)}")
    device = next(model.parameters()).device
    totals = {name: torch.zeros(3, dtype=torch.float64) for name in saes}  # spliced CE, KL, zero CE
    clean_total = torch.zeros((), dtype=torch.float64)
    n_scored = 0
    groups = _splice_groups(saes)
    resume = resume and can_replay(model)
    kept_layers = sorted({point.layer - 1 for point, _ in groups.values() if point.layer > 0}) if resume else []
    vocab = None
    batches = range(0, contexts.shape[0], batch_contexts)
    for start in tqdm(batches, desc="ΔLM loss", disable=not progress, leave=False):
        input_ids = contexts[start : start + batch_contexts].to(device)
        mask = trainable_mask(input_ids, excluded_ids)
        score_mask = mask[:, :-1]
        if not score_mask.any():
            continue
        with keep_layer_outputs(model, kept_layers) as kept:
            logits = model(input_ids=input_ids, use_cache=False).logits
        vocab = logits.shape[-1]
        clean = Scores(logits, input_ids, score_mask).as_reference()
        del logits
        clean_total += clean.ce.double().sum().cpu()
        n_scored += int(score_mask.sum())
        n_contexts = input_ids.shape[0]
        per_forward = max(1, LOGIT_BUDGET // (n_contexts * input_ids.shape[1] * vocab)) if resume else 1
        for point, names in groups.values():
            variants = [(None, zero_splice(mask), None)] + [(name, sae_splice(saes[name][1], mask), _read_point(saes[name])) for name in names]  # None: the ablation
            zero_ce = None
            for first in range(0, len(variants), per_forward):
                chunk = variants[first : first + per_forward]
                seen: dict[str, Tensor] = {}
                reads = {source.name: source for _, _, source in chunk if source is not None}
                hooks = [(source, recorder(seen, name)) for name, source in reads.items()]
                hooks.append((point, _stacked([fn for _, fn, _ in chunk], [source for _, _, source in chunk], seen)))
                if resume:
                    with replayed_layers(model, point.layer, kept.get(point.layer - 1), len(chunk), n_contexts), hooked(model, hooks):
                        logits = stacked_logits(model, input_ids, len(chunk))
                else:
                    with hooked(model, hooks):
                        logits = model(input_ids=input_ids, use_cache=False).logits
                for k, (name, _, _) in enumerate(chunk):
                    spliced = Scores(logits[k * n_contexts : (k + 1) * n_contexts], input_ids, score_mask)
                    if name is None:
                        zero_ce = spliced.ce.double().sum().cpu()
                        continue
                    kl = spliced.kl_from(clean)
                    totals[name] += torch.stack([spliced.ce.double().sum().cpu(), kl.double().sum().cpu(), zero_ce])
                del logits
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
