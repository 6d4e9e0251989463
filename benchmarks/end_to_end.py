"""The end-to-end fine-tune (KL + MSE with the model in the loop) on SAEs of the peer benchmark, against an MSE-only control.

    python benchmarks/end_to_end.py                      # after benchmarks/peers.py (reads its trained SAEs)
    python benchmarks/end_to_end.py --cases saescope-topk@32 --tokens 32768

For each SAE the peer benchmark trained (default: saescope's TopK and JumpReLU at L0 32 and 64), on
the built-in model's ``layers.10.resid_post``: evaluate it on held-out text, fine-tune a copy with
``kl_weight`` 0.5 (KL + MSE) and another copy with ``kl_weight`` 0 (MSE only, the same tokens and
schedule: what more training alone does), evaluate both, and print L0, FVU, ΔLM loss, KL and the
ΔLM change. The evaluation is the peer table's (8,192 held-out tokens, one saescope evaluation).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import HOOKPOINT, load_trained  # noqa: E402

from saescope.data.lm_config import LmDataConfig  # noqa: E402
from saescope.data.tokens import TextContexts  # noqa: E402
from saescope.evaluation.on_model import evaluate_on_model  # noqa: E402
from saescope.lm.models import load_model  # noqa: E402
from saescope.training.end_to_end import EndToEndConfig, finetune_end_to_end  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/peers"), help="the peer benchmark's work folder")
    parser.add_argument("--cases", nargs="+", default=["saescope-topk@32", "saescope-jumprelu@32"])
    parser.add_argument("--tokens", type=int, default=EndToEndConfig.tokens)
    parser.add_argument("--lr", type=float, default=EndToEndConfig.lr)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--json", type=Path, default=Path("runs/end_to_end.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model("smollm2-135m", device="cpu")
    data = LmDataConfig()
    contexts = TextContexts(data.dataset, loaded.tokenizer, data.context_size, part="train", eval_fraction=data.eval_fraction)
    rows = []
    for case in args.cases:
        name, _, l0 = case.partition("@")
        original = load_trained(name, args.work, int(l0), HOOKPOINT)
        saes = {"trained": original}
        seconds = {}
        for label, weight in (("+ KL+MSE fine-tune", 0.5), ("+ MSE-only fine-tune", 0.0)):
            tuned = copy.deepcopy(original)
            started = time.perf_counter()
            finetune_end_to_end(tuned, loaded, contexts, EndToEndConfig(tokens=args.tokens, lr=args.lr, kl_weight=weight))
            seconds[label] = time.perf_counter() - started
            saes[label] = tuned
        metrics = evaluate_on_model(loaded, saes, data, args.eval_tokens, description_length=False)
        base = metrics["trained"]["delta_lm_loss"]
        for label, values in metrics.items():
            row = {"case": case, "variant": label, "l0": values["l0"], "fvu": values["fvu"], "delta_lm_loss": values["delta_lm_loss"],
                   "kl": values["kl"], "delta_lm_change": values["delta_lm_loss"] / base - 1, "seconds": seconds.get(label, 0.0)}
            rows.append(row)
            print(f"  {case} {label}: L0 {row['l0']:.1f}, FVU {row['fvu']:.3f}, ΔLM {row['delta_lm_loss']:.4f} "
                  f"({100 * row['delta_lm_change']:+.1f}%), KL {row['kl']:.4f}", flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)  # written after each case: a long run keeps what it finished
        args.json.write_text(json.dumps({"tokens": args.tokens, "lr": args.lr, "eval_tokens": args.eval_tokens, "rows": rows}, indent=2))
    print(f"\nend-to-end fine-tune, {args.tokens:,} tokens, lr {args.lr:g}; held-out {args.eval_tokens:,} tokens")
    print(f"{'SAE':<22}{'variant':<24}{'L0':>7}{'FVU':>8}{'ΔLM':>8}{'KL':>8}{'ΔLM change':>12}{'s':>7}")
    for row in rows:
        print(f"{row['case']:<22}{row['variant']:<24}{row['l0']:>7.1f}{row['fvu']:>8.3f}{row['delta_lm_loss']:>8.4f}{row['kl']:>8.4f}"
              f"{100 * row['delta_lm_change']:>+11.1f}%{row['seconds']:>7.0f}")


if __name__ == "__main__":
    main()
