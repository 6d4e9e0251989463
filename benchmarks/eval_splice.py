"""ΔLM-loss evaluation resumed at the hookpoint against one full forward per splice, on the built-in model.

    python benchmarks/eval_splice.py [--hookpoints layers.2.resid_post layers.6.resid_post layers.10.resid_post]
                                     [--saes-per-hookpoint 4] [--tokens 2048]

The demo suite's shape by default: 12 SAEs (4 per hookpoint at layers 2, 6 and 10, width 2304), scored
on the demo's 2,048 held-out tokens. Both paths run in this one process on the same contexts and SAEs
(random TopK and JumpReLU weights: the cost does not depend on training); the script prints both
times, the ratio, and the largest difference between their figures.
"""

from __future__ import annotations

import argparse
import time

import torch

from saescope.data.lm_config import LmDataConfig
from saescope.data.tokens import TextContexts
from saescope.evaluation.splice import splice_evaluate
from saescope.lm.hookpoints import resolve_hookpoints
from saescope.lm.models import load_model
from saescope.saes import create_sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hookpoints", nargs="+", default=["layers.2.resid_post", "layers.6.resid_post", "layers.10.resid_post"])
    parser.add_argument("--saes-per-hookpoint", type=int, default=4)
    parser.add_argument("--width", type=int, default=2304)
    parser.add_argument("--tokens", type=int, default=2048)
    args = parser.parse_args()
    loaded = load_model("smollm2-135m", device="cpu")
    data = LmDataConfig()
    contexts = TextContexts(data.dataset, loaded.tokenizer, data.context_size, part="eval", eval_fraction=data.eval_fraction).all_contexts()
    contexts = contexts[: max(1, args.tokens // data.context_size)]
    torch.manual_seed(0)
    saes = {}
    for point in resolve_hookpoints(loaded.model, args.hookpoints):
        for i in range(args.saes_per_hookpoint):
            architecture = ("topk", "jumprelu")[i % 2]
            sae = create_sae(architecture, loaded.model.config.hidden_size, args.width, **({"k": 32} if architecture == "topk" else {}))
            saes[f"{point.name}/{architecture}-{i}"] = (point, sae.eval())
    excluded = [t for t in (loaded.tokenizer.bos_token_id, loaded.tokenizer.eos_token_id, loaded.tokenizer.pad_token_id) if t is not None]
    batch = max(1, data.batch_contexts // 2)
    timings, results = {}, {}
    for label, resume in (("full forward per splice", False), ("resumed at the hookpoint", True)):
        started = time.perf_counter()
        results[label] = splice_evaluate(loaded.model, saes, contexts, excluded, batch_contexts=batch, progress=False, resume=resume)
        timings[label] = time.perf_counter() - started
    full, resumed = results.values()
    worst = max(abs(getattr(full[n], f) - getattr(resumed[n], f)) for n in full for f in ("spliced_loss", "delta_lm_loss", "kl", "zero_ablation_loss"))
    print(f"{len(saes)} SAEs at {len(args.hookpoints)} hookpoints, {contexts.numel():,} tokens ({contexts.shape[0]} contexts, "
          f"batches of {batch}), {torch.get_num_threads()} threads")
    for label, seconds in timings.items():
        print(f"  {label:<26} {seconds:7.1f} s")
    print(f"  speed-up                   {timings['full forward per splice'] / timings['resumed at the hookpoint']:7.2f}x")
    print(f"  largest difference in CE, ΔLM, KL: {worst:.2e} nats")


if __name__ == "__main__":
    main()
