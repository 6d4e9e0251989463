"""Interpretation time against harvest time on the built-in model (issue target: at most 2×).

    python benchmarks/interpret.py [--sae SAE_FOLDER] [--tokens 100000] [--width 4608]

1. Harvest: the forward to the SAE's hookpoint (stopping there) over the same contexts
   ``saescope interpret`` reads, activations discarded: the floor any interpretation pays.
2. Interpret: ``interpret_suite`` on a one-SAE suite: forward, encode, the per-feature collector,
   logit effects, similar features and writing the JSON files.

Without ``--sae`` a TopK SAE (k = 32) with random weights is used at ``layers.10.resid_post``: the
work per token does not depend on what the SAE learned.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from saescope.data.tokens import TextContexts
from saescope.interpret.run import interpret_suite
from saescope.io.checkpoint import load, save_sae
from saescope.io.suite_index import FORMAT, write_index
from saescope.lm.capture import capture
from saescope.lm.hookpoints import resolve_hookpoints
from saescope.lm.models import load_model
from saescope.saes import create_sae


def one_sae_suite(folder: Path, sae, hookpoint: str, model: str) -> None:
    path = f"{hookpoint}/{sae.architecture}-w{sae.d_sae}"
    save_sae(sae, folder / path)
    layer = int(hookpoint.split(".")[1])
    write_index(folder, {"format": FORMAT, "version": 1, "status": "complete", "model": model, "dataset": "pydocs",
                         "config": {"model": model, "dataset": "pydocs", "context_size": 128},
                         "saes": [{"path": path, "hookpoint": hookpoint, "layer": layer, "site": hookpoint.split(".")[2],
                                   "architecture": sae.architecture, "width": sae.d_sae, "target_l0": 32.0}]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", help="an SAE folder (default: a random TopK SAE at layers.10.resid_post)")
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--batch-contexts", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    loaded = load_model("smollm2-135m", device="cpu")
    if args.sae:
        sae = load(args.sae)
        hookpoint = sae.cfg.hookpoint
    else:
        torch.manual_seed(0)
        hookpoint = "layers.10.resid_post"
        sae = create_sae("topk", loaded.model.config.hidden_size, args.width, k=32, hookpoint=hookpoint, model_id="smollm2-135m")
    point = resolve_hookpoints(loaded.model, hookpoint)
    text = TextContexts("pydocs", loaded.tokenizer, 128, part="train")
    n_batches = -(-args.tokens // (args.batch_contexts * 128))

    start = time.perf_counter()
    for number, input_ids in enumerate(text.iter_batches(args.batch_contexts, seed=0, shuffle=True)):
        if number >= n_batches:
            break
        capture(loaded.model, point, lambda p, t: None, input_ids)
    harvest = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "suite"
        one_sae_suite(folder, sae, hookpoint, "smollm2-135m")
        start = time.perf_counter()
        result = interpret_suite(folder, tokens=args.tokens, batch_contexts=args.batch_contexts, progress=False, loaded=loaded)
        interpret = time.perf_counter() - start
        size = sum(f.stat().st_size for f in folder.rglob("interpret/*.json"))
    row = {"hookpoint": hookpoint, "features": sae.d_sae, "tokens": result["tokens"], "harvest_seconds": round(harvest, 1),
           "interpret_seconds": round(interpret, 1), "pass_seconds": result["pass_seconds"], "ratio": round(interpret / harvest, 2),
           "output_megabytes": round(size / 2**20, 1)}
    if args.json:
        print(json.dumps(row, indent=2))
        return
    print(f"interpret one {row['features']}-feature SAE at {hookpoint} over {row['tokens']:,} tokens ({torch.get_num_threads()} threads)")
    print(f"  harvest (forward to the hookpoint)   {row['harvest_seconds']:7.1f} s")
    print(f"  interpret (all of it)                {row['interpret_seconds']:7.1f} s   {row['ratio']:.2f}x harvest (target <= 2x)")
    print(f"    of which the pass over the text    {row['pass_seconds']:7.1f} s")
    print(f"  output {row['output_megabytes']} MB of JSON")


if __name__ == "__main__":
    main()
