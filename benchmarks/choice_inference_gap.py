"""How far the batch-free inference rule of the choice SAEs is from their training rule, on held-out data.

    python benchmarks/choice_inference_gap.py [--steps 2000] [--variant uniform]

Feature-Choice, Mutual-Choice (= BatchTopK) and Matryoshka select latents over a whole batch while
training; inference uses a tracked threshold instead (per latent, or one global value) so a token can
be encoded alone. This trains each on the synthetic ground truth (512 latents, d = 64, target L0 3),
then encodes held-out batches of 1,024 both ways: with the training rule (the objective's selection
on the batch) and with the inference rule (``sae.encode``), and prints L0 and FVU for each.
"""

from __future__ import annotations

import argparse

import torch

from saescope.jobs import create_job
from saescope.objectives import StepContext
from saescope.synthetic.synthetic import SyntheticActivations, SyntheticConfig
from saescope.training import TrainConfig, Trainer

CASES = {
    "feature_choice": ("feature_choice", {}),
    "feature_choice-zipf": ("feature_choice", {"capacity": "zipf"}),
    "mutual_choice": ("mutual_choice", {}),
    "matryoshka": ("matryoshka", {}),
}


def fvu(x: torch.Tensor, reconstruction: torch.Tensor) -> float:
    return float((x - reconstruction).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--variant", default="uniform")
    parser.add_argument("--target-l0", type=float, default=3.0)
    args = parser.parse_args()
    data = SyntheticActivations(SyntheticConfig(variant=args.variant, seed=0))
    torch.manual_seed(0)
    jobs = [create_job(arch, 64, 512, name=name, target_l0=args.target_l0, **options) for name, (arch, options) in CASES.items()]
    trainer = Trainer(jobs, TrainConfig(total_tokens=args.steps * 1024, batch_size=1024, progress=False))
    trained = trainer.fit(lambda: data.stream(1024, seed=1))
    held_out = data.sample(16 * 1024, seed=99)
    print(f"{args.variant}, {args.steps} steps of 1,024, target L0 {args.target_l0:g}; held-out batches of 1,024")
    print(f"{'SAE':<22} {'L0 train rule':>13} {'L0 inference':>13} {'FVU train rule':>15} {'FVU inference':>14}")
    for job, sae_trainer in zip(jobs, trainer.trainers):
        sae = trained[job.name]
        scale = sae_trainer.input_scale  # the objective works in training units; the saved SAE takes raw inputs
        train_l0, train_fvu, infer_l0, infer_fvu = [], [], [], []
        with torch.no_grad():
            for batch in held_out.split(1024):
                # The training rule runs on a copy in training units (the fold undone), in train mode, so the
                # saved SAE's threshold is never touched by the selection's threshold tracking.
                trained_units = sae.copy().train()
                trained_units.fold_input_scale(1 / scale)
                out = job.objective.loss(trained_units, batch * scale, StepContext(0, 1.0, 0.0))
                train_l0.append(float(out.code.l0_per_token().mean()))
                train_fvu.append(fvu(batch * scale, out.reconstruction))
                codes = sae.encode(batch)
                infer_l0.append(float((codes > 0).sum(1).float().mean()))
                infer_fvu.append(fvu(batch, sae.decode(codes)))
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        print(f"{job.name:<22} {mean(train_l0):>13.2f} {mean(infer_l0):>13.2f} {mean(train_fvu):>15.4f} {mean(infer_fvu):>14.4f}")


if __name__ == "__main__":
    main()
