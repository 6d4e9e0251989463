"""SAELens's own ``SAETrainer`` on cached activations: its JumpReLU and TopK training SAEs with its defaults.

Run in a virtual environment with ``sae-lens`` (see ``benchmarks/peers.py``). The data provider gives the
trainer the batches of the shared ``.npy`` in file order; the first 16 are read twice: once for its
activation-norm estimate (``normalize_activations="expected_average_only_in"``, folded into the weights
at the end, as SAELens recommends for these architectures), then for training. Its defaults
otherwise: Adam lr 3e-4 constant, β = (0.9, 0.999), decoder rows initialised at norm 0.1.
- ``jumprelu``: the Gemma Scope 2 quadratic L0 penalty toward the target L0
  (``jumprelu_sparsity_loss_mode="quadratic"``, ``target_l0``), its default bandwidth and threshold;
- ``topk``: k = the target, its AuxK loss.
The trained SAE is written with ``save_inference_model`` and read back by saescope's SAELens loader.
"""

from __future__ import annotations

import sys
from itertools import chain, islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import Clock, arguments, batches, d_in_of, write_result  # noqa: E402

NORM_BATCHES = 16


def main() -> None:
    args = arguments(__doc__.splitlines()[0]).parse_args()
    from sae_lens import (
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    d_in = d_in_of(args.data)
    common = dict(d_in=d_in, d_sae=args.width, normalize_activations="expected_average_only_in", device="cpu")
    if args.arch == "jumprelu":
        sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common, jumprelu_sparsity_loss_mode="quadratic", target_l0=float(args.l0)))
    elif args.arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=args.l0))
    else:
        raise SystemExit(f"unknown arch {args.arch!r}: jumprelu or topk")
    # lr_end: LanguageModelSAERunnerConfig fills it in (lr / 10); the constant schedule does not use it
    config = SAETrainerConfig(total_training_samples=args.steps * args.batch, train_batch_size_samples=args.batch,
                              n_batches_for_norm_estimate=min(NORM_BATCHES, args.steps), device="cpu", lr_end=3e-5)
    norm_batches = islice(batches(args.data, args.batch, args.steps), min(NORM_BATCHES, args.steps))
    provider = chain(norm_batches, batches(args.data, args.batch, args.steps))
    trainer = SAETrainer(cfg=config, sae=sae, data_provider=provider)
    with Clock() as clock:
        trained = trainer.fit()
    trained.save_inference_model(Path(args.out, "saelens"))
    import importlib.metadata as metadata
    write_result(args.out, args, clock.seconds, peer="SAELens", peer_version=metadata.version("sae-lens"),
                 note="train_seconds includes SAELens's activation-norm estimate over 16 batches")


if __name__ == "__main__":
    main()
