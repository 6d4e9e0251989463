"""The adaptive-allocation SAEs on a real language model: TopK, TopK + aux_zipf, BatchTopK (= Mutual Choice),
Feature Choice and Matryoshka at one hookpoint of SmolLM2-135M, trained from one pass, measured inside the model.

    python benchmarks/choice_on_lm.py [--tokens 307200] [--width 4608] [--target-l0 32 64] [--hookpoint layers.10.resid_post]

Every thresholded SAE (the batch-selection ones and JumpReLU) is also measured after
``calibrate_threshold`` put its inference L0 on the target, fitted on 16,384 *training* tokens (the
evaluation's held-out text is never seen): rows marked ``+cal``.

The paper's claim (Ayonrinde 2024): at equal sparsity, Feature/Mutual Choice and aux_zipf leave fewer dead
latents and reconstruct better than TopK. Every SAE reads the same activation batches (one model forward
feeds all), then L0, FVU, ΔLM loss, KL and the dead fraction are measured on held-out text.
"""

from __future__ import annotations

import argparse
import time

import torch

from saescope.data.lm_config import LmDataConfig
from saescope.data.tokens import TextContexts
from saescope.evaluation.calibrate import calibrate_threshold
from saescope.evaluation.on_model import evaluate_on_model
from saescope.jobs import create_job
from saescope.lm.models import load_model
from saescope.lm.stream import ModelActivationSource
from saescope.training import TrainConfig, Trainer

CASES = {
    "topk": ("topk", {}),
    "topk-aux_zipf": ("topk", {"aux_target": "zipf"}),
    "batchtopk": ("batchtopk", {}),
    "feature_choice": ("feature_choice", {}),
    "feature_choice-zipf": ("feature_choice", {"capacity": "zipf"}),
    "matryoshka": ("matryoshka", {}),
    "jumprelu": ("jumprelu", {}),
}
CALIBRATION_TOKENS = 16_384


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=307_200)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--target-l0", type=float, nargs="+", default=[32.0, 64.0])
    parser.add_argument("--hookpoint", default="layers.10.resid_post")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()

    loaded = load_model("smollm2-135m", device="cpu")
    data = LmDataConfig()
    contexts = TextContexts(data.dataset, loaded.tokenizer, data.context_size, part="train", eval_fraction=data.eval_fraction)
    source = ModelActivationSource(loaded, contexts, [args.hookpoint], batch_contexts=data.batch_contexts, shuffle_buffer_tokens=32_768)
    d_in = source.d_in[args.hookpoint]
    torch.manual_seed(0)
    jobs = []
    for target in args.target_l0:
        for case in args.cases:
            architecture, options = CASES[case]
            jobs.append(create_job(architecture, d_in, args.width, target_l0=target, reads=args.hookpoint, name=f"{case}@{target:g}", **options))
    config = TrainConfig(total_tokens=args.tokens, batch_size=args.batch_size, progress=True, log_every=10)
    started = time.perf_counter()
    trained = Trainer(jobs, config).fit(source)
    seconds = time.perf_counter() - started
    calibration_rows = source.head(CALIBRATION_TOKENS)[args.hookpoint]
    calibrated = {}
    for name, sae in trained.items():
        if hasattr(sae, "threshold"):
            copy = sae.copy()
            result = calibrate_threshold(copy, calibration_rows, target_l0=float(name.split("@")[1]))
            calibrated[f"{name}+cal"] = copy
            print(f"{name}: inference L0 {result.l0_before:.1f} -> {result.l0_after:.1f} on {result.n_tokens:,} training tokens (x{result.scale:.3f})")
    metrics = evaluate_on_model(loaded, {**trained, **calibrated}, data, args.eval_tokens, description_length=False)
    print(f"\n{args.hookpoint} of SmolLM2-135M, {args.width} latents, {args.tokens:,} training tokens, batch {args.batch_size}, "
          f"{args.eval_tokens:,} held-out tokens; trained all {len(jobs)} SAEs in one pass in {seconds / 60:.1f} min\n")
    print(f"{'SAE':<30} {'L0':>6} {'FVU':>7} {'ΔLM':>7} {'KL':>7} {'dead':>7} {'unfired':>8} {'dense':>7}")
    for name, values in sorted(metrics.items(), key=lambda item: (float(item[0].split("@")[1].split("+")[0]), item[0])):
        dead = values.get("dead_fraction")
        print(f"{name:<30} {values['l0']:>6.1f} {values['fvu']:>7.4f} {values['delta_lm_loss']:>7.4f} {values['kl']:>7.4f} "
              f"{dead if dead is None else format(dead, '.1%'):>7} {values['unfired_fraction']:>8.1%} {values['dense_fraction']:>7.1%}")
    print("dead: no firing in the training run's last tokens (a fifth of the run); unfired: none in the held-out tokens")


if __name__ == "__main__":
    main()
