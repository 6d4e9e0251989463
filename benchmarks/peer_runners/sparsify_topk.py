"""EleutherAI sparsify's TopK trainer on cached activations, step for step as its ``Trainer.fit`` does it.

Run in a virtual environment with ``eai-sparsify`` (see ``benchmarks/peers.py``). Per step, as sparsify:
renormalise decoder rows, forward with its fused encoder and sparse decoder, loss = FVU (its default
``auxk_alpha`` is 0), backward, remove the decoder-parallel gradient, optimiser step, and update the
tokens-since-fired counters. b_dec starts at the first batch's mean. Variants:
- ``default``: its default optimiser, schedule-free SignSGD (momentum 0.95), lr 5e-3·√(2¹⁴/width);
- ``adam``: its Adam, lr 2e-4·√(2¹⁴/width), linear warm-up then linear decay. Its default warm-up
  (1,000 steps) is longer than this run, so the warm-up here is 5% of the steps.
The schedule-free optimiser's averaged weights are exported (``opt.eval()``), as sparsify's ``save``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import Clock, arguments, batches, d_in_of, write_result  # noqa: E402


def sparsify_step(sae, optimizer, x: torch.Tensor, did_fire: torch.Tensor, tokens_since_fired: torch.Tensor):  # noqa: ANN001, ANN201
    """One step of sparsify's ``Trainer.fit`` for one SAE (its default ``auxk_alpha`` 0: no AuxK); returns its forward output."""
    sae.set_decoder_norm_to_unit_norm()
    out = sae(x, dead_mask=None)
    did_fire[out.latent_indices.flatten()] = True
    out.fvu.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        tokens_since_fired += x.shape[0]
        tokens_since_fired[did_fire] = 0
        did_fire.zero_()
    return out


def main() -> None:
    args = arguments(__doc__.splitlines()[0]).parse_args()
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD
    from transformers import get_linear_schedule_with_warmup

    if args.arch != "topk":
        raise SystemExit("sparsify trains TopK only")
    torch.manual_seed(0)
    d_in = d_in_of(args.data)
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=args.width, k=args.l0), device="cpu", dtype=torch.float32)
    scale = (args.width / 2**14) ** 0.5
    schedulers = []
    if args.variant == "default":
        optimizer = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=5e-3 / scale)]), momentum=0.95)
        optimizer.train()
    elif args.variant == "adam":
        optimizer = torch.optim.Adam(sae.parameters(), lr=2e-4 / scale)
        schedulers.append(get_linear_schedule_with_warmup(optimizer, max(1, args.steps // 20), args.steps))
    else:
        raise SystemExit(f"unknown variant {args.variant!r}: default or adam")
    tokens_since_fired = torch.zeros(args.width, dtype=torch.long)
    did_fire = torch.zeros(args.width, dtype=torch.bool)
    with Clock() as clock:
        for step, x in enumerate(batches(args.data, args.batch, args.steps)):
            if step == 0:
                sae.b_dec.data = x.mean(0)
            sparsify_step(sae, optimizer, x, did_fire, tokens_since_fired)
            for scheduler in schedulers:
                scheduler.step()
    if isinstance(optimizer, ScheduleFreeWrapper):
        optimizer.eval()
    tensors = {"W_enc": sae.encoder.weight.detach().T.contiguous(), "b_enc": sae.encoder.bias.detach().clone(),
               "W_dec": sae.W_dec.detach().clone(), "b_dec": sae.b_dec.detach().clone()}
    torch.save({"architecture": "topk", "k": args.l0, "tensors": tensors}, Path(args.out, "sae.pt"))
    import importlib.metadata as metadata
    write_result(args.out, args, clock.seconds, peer="sparsify", peer_version=metadata.version("eai-sparsify"))


if __name__ == "__main__":
    main()
