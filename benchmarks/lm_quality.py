"""SAE quality on the built-in model at a fixed token budget: optimiser and learning-rate comparison.

    saescope cache --model smollm2-135m --hookpoints layers.10.resid_post --tokens 300000 --out CACHE
    python benchmarks/lm_quality.py --cache CACHE [--targets 32 64] [--tokens 900000] [--variants ...] [--delta-lm]

Every variant trains in one pass over the cache (same batches, three passes over 300K tokens), at
width 4608 and batch 4096, then is measured on held-out built-in-corpus tokens (documents never
seen in training, BOS excluded): L0, FVU, and with ``--delta-lm`` the ΔLM loss by splicing.
A variant is ``arch:optimizer:lr[:field=value,...]`` (lr "default" takes the architecture's default;
the optional fields are SAE config fields, e.g. ``topk:adam:default:k_anneal_fraction=0.5``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from saescope.data.cache import CachedActivations, read_manifest
from saescope.data.lm_config import LmDataConfig
from saescope.evaluation.on_model import evaluate_on_model
from saescope.jobs import create_job
from saescope.lm.models import load_model
from saescope.training import TrainConfig, Trainer

DEFAULT_VARIANTS = ["topk:adam:default", "jumprelu:adam:default"]


def build(variant: str, target: float, d_in: int, width: int, hookpoint: str):
    arch, optimizer, lr, *extra_fields = variant.split(":")
    options: dict = {"optimizer": optimizer, "hookpoint": hookpoint}
    for item in ",".join(extra_fields).split(","):
        if item:
            key, value = item.split("=")
            options[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    if lr != "default":
        options["lr"] = float(lr)
    if arch.startswith("jumprelu-"):
        arch, extra = arch.split("-", 1)
        if extra == "tanh":
            options["objective"] = "jumprelu_tanh"
        elif extra == "zero":
            options["encoder_bias_init"] = "zero"
    torch.manual_seed(0)
    return create_job(arch, d_in, width, **options, target_l0=target)  # topk: k = round(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--targets", type=float, nargs="+", default=[32.0])
    parser.add_argument("--tokens", type=int, default=900_000)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--eval-tokens", type=int, default=16_384)
    parser.add_argument("--delta-lm", action="store_true", help="also splice into the model (slow on CPU)")
    parser.add_argument("--lr-decay-fraction", type=float, default=0.2, help="final fraction of the run with linear lr decay")
    parser.add_argument("--proportional-gain", type=float, default=2.0, help="λ controller's proportional term (JumpReLU etc.)")
    parser.add_argument("--json", help="write rows to this file")
    args = parser.parse_args()

    manifest = read_manifest(args.cache)
    hookpoint = next(iter(manifest["hookpoints"]))
    source = CachedActivations(args.cache, hookpoint)
    saes = {f"{v}@{t:g}": build(v, t, source.d_in, args.width, hookpoint) for v in args.variants for t in args.targets}
    config = TrainConfig(total_tokens=args.tokens, batch_size=args.batch_size, log_every=20, normalization_tokens=65_536,
                         lr_decay_fraction=args.lr_decay_fraction, sparsity_proportional_gain=args.proportional_gain)
    started = time.perf_counter()
    trained = Trainer(saes, config).fit(source)
    seconds = time.perf_counter() - started

    loaded = load_model(manifest["model"], device="cpu")
    data = LmDataConfig(dataset=manifest["dataset"], context_size=manifest["context_size"])
    if args.delta_lm:
        metrics = evaluate_on_model(loaded, trained, data, args.eval_tokens, description_length=False)
    else:
        from saescope.data.tokens import special_token_ids
        from saescope.evaluation.metrics import evaluate_sae
        from saescope.evaluation.on_model import held_out_contexts
        from saescope.lm.harvest import harvest
        from saescope.lm.hookpoints import resolve_hookpoints

        contexts = held_out_contexts(loaded, data, args.eval_tokens)
        excluded = special_token_ids(loaded.tokenizer)
        acts = harvest(loaded, resolve_hookpoints(loaded.model, hookpoint), contexts, excluded)[hookpoint]
        metrics = {name: evaluate_sae(sae, acts, description_length=False).to_dict() for name, sae in trained.items()}
    rows = []
    print(f"\n{hookpoint}, width {args.width}, batch {args.batch_size}, {args.tokens:,} tokens from {manifest['n_tokens']:,} cached; "
          f"lr decay over the last {args.lr_decay_fraction:.0%}; train {seconds:.0f} s for {len(saes)} SAEs; held-out {args.eval_tokens} tokens")
    print(f"{'variant':<34} {'lr':>9} {'L0':>7} {'FVU':>7} {'ΔLM':>8} {'dead':>6}")
    for name, sae in trained.items():
        m = metrics[name]
        row = {"variant": name, "lr": sae.training_summary["lr"], "l0": m["l0"], "fvu": m["fvu"], "delta_lm_loss": m.get("delta_lm_loss"),
               "dead_fraction": m["dead_fraction"]}
        rows.append(row)
        delta = f"{row['delta_lm_loss']:8.4f}" if row["delta_lm_loss"] is not None else f"{'-':>8}"
        print(f"{name:<34} {row['lr']:9.2e} {row['l0']:7.1f} {row['fvu']:7.4f} {delta} {row['dead_fraction']:6.1%}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
