"""Harvest and streaming-training throughput on the built-in model (SmolLM2-135M, 30 layers).

    python benchmarks/harvest.py [--tokens 8192] [--layers 3 10 20] [--json]

1. Harvest tokens/s when the forward stops after layer L, against a full forward (all 30 layers,
   final norm and unembedding). Target: stopping after L costs at most (L+1)/30 of a full forward,
   plus 10%.
2. Training one SAE from the live model against training it from an in-memory array of the same
   activations (what a cache reader serves).
3. Several SAEs at several hookpoints from one forward, against one run per hookpoint.

Every figure comes from this run; ratios compare runs made seconds apart on the same machine.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from saescope.data.tokens import TextContexts
from saescope.jobs import create_job
from saescope.lm.capture import capture
from saescope.lm.hookpoints import resolve_hookpoints
from saescope.lm.models import load_model
from saescope.lm.stream import ModelActivationSource
from saescope.training import TrainConfig, Trainer


def _time(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def harvest_rates(loaded, contexts: torch.Tensor, layers: list[int], batch_contexts: int) -> dict[str, float]:
    model = loaded.model
    n_tokens = contexts.numel()

    def full() -> None:
        with torch.no_grad():
            for start in range(0, contexts.shape[0], batch_contexts):
                model(input_ids=contexts[start : start + batch_contexts], use_cache=False)

    rates = {"full": n_tokens / _time(full)}
    for layer in layers:
        points = resolve_hookpoints(model, f"layers.{layer}.resid_post")

        def stopped(points=points) -> None:
            for start in range(0, contexts.shape[0], batch_contexts):
                capture(model, points, lambda p, t: None, contexts[start : start + batch_contexts])

        rates[f"layer {layer}"] = n_tokens / _time(stopped)
    return rates


def _train(source, saes: dict, tokens: int, batch_size: int) -> float:
    config = TrainConfig(total_tokens=tokens, batch_size=batch_size, progress=False, normalization_tokens=batch_size, log_every=10_000)
    start = time.perf_counter()
    Trainer(saes, config).fit(source)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per harvest measurement")
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 10, 20])
    parser.add_argument("--train-tokens", type=int, default=32_768)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--batch-contexts", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    loaded = load_model("smollm2-135m", device="cpu")
    n_layers = loaded.n_layers
    text = TextContexts("pydocs", loaded.tokenizer, args.context_size)
    contexts = text.all_contexts()[: max(1, args.tokens // args.context_size)]
    results: dict[str, object] = {"threads": torch.get_num_threads(), "context_size": args.context_size}

    rates = harvest_rates(loaded, contexts, args.layers, args.batch_contexts)
    results["harvest_tokens_per_second"] = rates
    rows = []
    for layer in args.layers:
        cost = rates["full"] / rates[f"layer {layer}"]
        bound = (layer + 1) / n_layers + 0.10
        rows.append({"layer": layer, "cost_vs_full": round(cost, 3), "bound": round(bound, 3), "within": cost <= bound})
    results["early_stop"] = rows

    # Live model against an array of the same activations (the cache reader's path).
    hookpoint = "layers.10.resid_post"

    def live_source() -> ModelActivationSource:
        return ModelActivationSource(loaded, text, hookpoint, batch_contexts=args.batch_contexts, shuffle_buffer_tokens=args.batch_size)

    def sae(hook: str = hookpoint):
        torch.manual_seed(0)
        return create_job("jumprelu", 576, args.width, target_l0=32, hookpoint=hook)

    live_seconds = _train(live_source(), {"sae": sae()}, args.train_tokens, args.batch_size)
    array = live_source().head(args.train_tokens + args.batch_size)[hookpoint]
    array_seconds = _train(array, {"sae": sae()}, args.train_tokens, args.batch_size)
    results["train_one_sae"] = {
        "live_tokens_per_second": round(args.train_tokens / live_seconds),
        "array_tokens_per_second": round(args.train_tokens / array_seconds),
        "live_over_array_time": round(live_seconds / array_seconds, 2),
    }

    # Three hookpoints × one SAE each: one forward feeding all, against one run per hookpoint.
    hooks = ["layers.4.resid_post", "layers.7.resid_post", "layers.10.resid_post"]
    together = _train(
        ModelActivationSource(loaded, text, hooks, batch_contexts=args.batch_contexts, shuffle_buffer_tokens=args.batch_size),
        {h: sae(h) for h in hooks}, args.train_tokens, args.batch_size,
    )
    separately = sum(
        _train(ModelActivationSource(loaded, text, h, batch_contexts=args.batch_contexts, shuffle_buffer_tokens=args.batch_size), {h: sae(h)},
               args.train_tokens, args.batch_size)
        for h in hooks
    )
    results["many_saes_one_forward"] = {
        "hookpoints": hooks,
        "together_seconds": round(together, 1),
        "one_at_a_time_seconds": round(separately, 1),
        "speedup": round(separately / together, 2),
    }

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"harvest, {args.tokens} tokens, context {args.context_size}, {results['threads']} threads")
    print(f"  full forward            {rates['full']:8.0f} tok/s")
    for row in rows:
        layer = row["layer"]
        print(f"  stop after layer {layer:<3}    {rates[f'layer {layer}']:8.0f} tok/s   cost {row['cost_vs_full']:.3f} of full "
              f"(bound (L+1)/{n_layers}+0.10 = {row['bound']:.3f}) {'ok' if row['within'] else 'OVER'}")
    one = results["train_one_sae"]
    print(f"train one jumprelu SAE (576x{args.width}, batch {args.batch_size}, {args.train_tokens} tokens) at {hookpoint}")
    print(f"  from the live model     {one['live_tokens_per_second']:8d} tok/s")
    print(f"  from an array           {one['array_tokens_per_second']:8d} tok/s   (live/array time {one['live_over_array_time']}x)")
    many = results["many_saes_one_forward"]
    print(f"three SAEs at {', '.join(hooks)}")
    print(f"  one forward feeds all   {many['together_seconds']:8.1f} s")
    print(f"  one run per hookpoint   {many['one_at_a_time_seconds']:8.1f} s   speedup {many['speedup']}x")


if __name__ == "__main__":
    main()
