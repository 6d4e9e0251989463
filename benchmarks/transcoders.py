"""SAEs against transcoders and skip transcoders on the built-in model (Paulo et al. 2025, arXiv 2501.18823).

    python benchmarks/transcoders.py [--layers 3 9] [--width 2304] [--k 32] [--tokens 200000] [--out runs/transcoders]
    python benchmarks/transcoders.py --full-set [--width 1152] [--k 16] [--tokens 60000]   # every layer: the replacement model

The comparison trains, from one pass over the same tokens, three jobs per layer at equal width and equal
L0 (TopK, so L0 is exactly k): an SAE on ``mlp_out``, a transcoder ``mlp_in → mlp_out`` and a skip
transcoder, and measures each inside the model on the same held-out tokens: FVU against ``mlp_out``,
ΔLM loss and KL with ``mlp_out`` replaced at that layer, the dead and unfired fractions. The SAE
reconstructs ``mlp_out`` from itself; a transcoder must compute it from the MLP's input, a harder
task, so the paper's question is how much fidelity a transcoder gives up for features that replace
the computation, and how much the skip connection wins back.

``--full-set`` trains transcoders (plain and skip) at every layer and reports the replacement model's
loss: all MLPs replaced at once, the model an attribution graph traces.

Both go through ``saescope.train`` (the CLI's path) into ``--out``; the table is printed and written to
``OUT/transcoders.json``. Run it alone on a quiet machine: it takes 10-20 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import saescope
from saescope.suite.replacement import format_replacements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 9])
    parser.add_argument("--width", type=int, default=None, help="latents (default 2304; 1152 with --full-set)")
    parser.add_argument("--k", type=int, default=None, help="TopK's k = the L0 of every job (default 32; 16 with --full-set)")
    parser.add_argument("--tokens", type=int, default=None, help="training tokens (default 200,000; 60,000 with --full-set)")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--full-set", action="store_true", help="transcoders at every layer and the replacement model's loss")
    parser.add_argument("--out", default="runs/transcoders")
    args = parser.parse_args()
    width = args.width or (1152 if args.full_set else 2304)
    k = args.k or (16 if args.full_set else 32)
    tokens = args.tokens or (60_000 if args.full_set else 200_000)
    hookpoints = ["layers.*.mlp_out"] if args.full_set else [f"layers.{layer}.mlp_out" for layer in args.layers]
    kinds = ["transcoder", "skip_transcoder"] if args.full_set else ["sae", "transcoder", "skip_transcoder"]
    out = Path(args.out) / ("full-set" if args.full_set else "comparison")
    plan = {
        "model": {"model": "smollm2-135m", "device": "cpu"},
        "data": {"context_size": 128},
        "training": {"tokens": tokens, "batch_size": 2048, "seed": 0},
        "evaluation": {"eval_tokens": args.eval_tokens},
        "sweep": {"hookpoints": hookpoints, "kinds": kinds, "architectures": ["topk"], "widths": [width], "target_l0s": [k]},
    }
    started = time.perf_counter()
    index = saescope.train(plan, out, overwrite=out.exists())
    seconds = time.perf_counter() - started
    rows = []
    for entry in index["saes"]:
        m = entry["metrics"]
        rows.append({"layer": entry["layer"], "kind": entry["kind"], "path": entry["path"], "l0": m["l0"], "fvu": m["fvu"],
                     "delta_lm_loss": m["delta_lm_loss"], "kl": m["kl"], "dead_fraction": m["dead_fraction"], "unfired_fraction": m["unfired_fraction"]})
    rows.sort(key=lambda r: (r["layer"], ["sae", "transcoder", "skip_transcoder"].index(r["kind"])))
    print(f"\nSmolLM2-135M, TopK k={k}, {width} latents, {tokens:,} training tokens, {args.eval_tokens:,} held-out tokens; {seconds / 60:.1f} min")
    if not args.full_set:
        print(f"{'layer':>5} {'kind':<16} {'L0':>6} {'FVU':>8} {'ΔLM':>8} {'KL':>8} {'dead':>7} {'unfired':>8}")
        for r in rows:
            print(f"{r['layer']:>5} {r['kind']:<16} {r['l0']:>6.1f} {r['fvu']:>8.4f} {r['delta_lm_loss']:>8.4f} {r['kl']:>8.4f} "
                  f"{r['dead_fraction']:>7.1%} {r['unfired_fraction']:>8.1%}")
    else:
        for kind in ("transcoder", "skip_transcoder"):
            chosen = [r for r in rows if r["kind"] == kind]
            print(f"{kind}: per-layer FVU mean {sum(r['fvu'] for r in chosen) / len(chosen):.4f} (range {min(r['fvu'] for r in chosen):.4f}-"
                  f"{max(r['fvu'] for r in chosen):.4f}), per-layer ΔLM mean {sum(r['delta_lm_loss'] for r in chosen) / len(chosen):.4f}")
    replacement = index.get("replacement") or {}
    if replacement:
        print("\n" + format_replacements(replacement))
    (out / "transcoders.json").write_text(json.dumps({"plan": plan, "seconds": round(seconds, 1), "rows": rows, "replacement": replacement}, indent=2))
    print(f"\nwritten: {out / 'transcoders.json'}")


if __name__ == "__main__":
    main()
