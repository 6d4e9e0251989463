"""The ``saescope`` command line. Every subcommand is a thin wrapper over the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _load_activations(path: str) -> Any:
    """A .npy file (memory-mapped, any float dtype, shape [..., d_in])."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"error: --data {path}: no such file")
    if file.suffix != ".npy":
        raise SystemExit(f"error: --data {path}: expected a .npy array of shape [n_tokens, d_in]")
    try:
        return np.load(file, mmap_mode="r")
    except ValueError as error:
        raise SystemExit(f"error: --data {path}: cannot read ({error})") from None


def _cmd_bench_synthetic(args: argparse.Namespace) -> int:
    from saescope.bench.recovery import RecoveryBenchConfig, format_rows, run_recovery_benchmark

    options: dict[str, Any] = {"progress": not args.json and sys.stderr.isatty() or args.progress}
    if args.variants:
        options["variants"] = tuple(args.variants)
    if args.archs:
        options["architectures"] = tuple(args.archs)
    if args.steps:
        options["steps"] = args.steps
    if args.quick:
        options.update(steps=args.steps or 300, eval_tokens=16_384, d_sae=256, n_features=128, d_in=32)
    try:
        config = RecoveryBenchConfig(**options)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    rows = run_recovery_benchmark(config)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_rows(rows))
        print(
            f"\n{config.d_sae} latents, {config.n_features} true features in d={config.d_in}, true L0 {config.true_l0}, "
            f"target L0 {config.target_l0}, {config.steps * config.batch_size:,} training tokens; recovered = best decoder cosine > 0.9"
        )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    if args.data is None:
        return _cmd_train_model(args)
    return _cmd_train_array(args)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="pydocs", help="pydocs (built in), a .txt/.jsonl/.parquet file, a saved datasets folder or a hub dataset id")
    parser.add_argument("--text-field", default="text", help="text column of .jsonl/.parquet/datasets sources")
    parser.add_argument("--split", default="train", help="split of a datasets source")
    parser.add_argument("--context-size", type=int, default=128, help="tokens per context (with BOS)")
    parser.add_argument("--batch-contexts", type=int, default=16, help="contexts per LM forward")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype (default float32)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")


def _cmd_cache(args: argparse.Namespace) -> int:
    from saescope.data.cache import write_cache
    from saescope.data.text import check_dataset
    from saescope.data.tokens import TextContexts
    from saescope.lm.models import load_model
    from saescope.lm.stream import ModelActivationSource

    try:
        check_dataset(args.dataset)
        if (Path(args.out) / "manifest.json").exists() and not args.resume:
            raise ValueError(f"{args.out}: a cache already exists here; pass --resume to continue it or choose another folder")
        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
        contexts = TextContexts(args.dataset, loaded.tokenizer, args.context_size, part=args.part, text_field=args.text_field, split=args.split)
        source = ModelActivationSource(loaded, contexts, args.hookpoints, batch_contexts=args.batch_contexts)
        manifest = write_cache(source, args.out, args.tokens, dtype=args.storage_dtype, shard_tokens=args.shard_tokens,
                               resume=args.resume, metadata={"part": args.part}, progress=sys.stderr.isatty(),
                               shuffle=not args.corpus_order, seed=args.seed)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        raise SystemExit(f"error: {error}") from None
    hookpoints = ", ".join(manifest["hookpoints"])
    print(f"{args.out}: {manifest['n_tokens']:,} tokens of {hookpoints} in {len(manifest['shard_digests'])} shards ({manifest['dtype']})")
    return 0


def _format_metrics(values: dict[str, Any]) -> str:
    parts = []
    for key, label, fmt in (("l0", "L0", ".1f"), ("fvu", "FVU", ".4f"), ("delta_lm_loss", "ΔLM loss", ".4f"),
                            ("loss_recovered", "loss recovered", ".1%"), ("kl", "KL", ".4f"), ("dead_fraction", "dead", ".1%")):
        if isinstance(values.get(key), (int, float)):
            parts.append(f"{label} {values[key]:{fmt}}")
    return ", ".join(parts)


def _cmd_train_model(args: argparse.Namespace) -> int:
    from saescope.data.text import check_dataset
    from saescope.lm.pipeline import LmDataConfig, SaeSpec, train_on_model
    from saescope.training import TrainConfig
    from saescope.training.state import has_trainer_state

    if not args.hookpoints and not args.cache:
        raise SystemExit("error: --hookpoints is required with --model (e.g. --hookpoints layers.10.resid_post)")
    checkpoint_dir = Path(args.out) / "checkpoint"
    targets = args.target_l0 or [None]
    try:
        check_dataset(args.dataset)
        specs = []
        for arch in args.arch:
            for target in targets:
                options: dict[str, Any] = {"lr": args.lr}
                if arch in ("topk", "batchtopk"):
                    if args.k is not None:
                        options["k"] = args.k
                elif args.sparsity_coefficient is not None:
                    options["sparsity_coefficient"] = args.sparsity_coefficient
                specs.append(SaeSpec(arch, width=args.width, expansion=args.expansion, target_l0=target, options=options))
        config = TrainConfig(
            total_tokens=args.tokens,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            normalization_tokens=min(16_384, args.tokens),
            checkpoint_every=args.checkpoint_every,
            checkpoint_dir=str(checkpoint_dir) if args.checkpoint_every or args.resume else None,
        )
        data = LmDataConfig(
            dataset=args.dataset, text_field=args.text_field, split=args.split, context_size=args.context_size,
            batch_contexts=args.batch_contexts, eval_tokens=args.eval_tokens,
        )
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    if args.resume and not has_trainer_state(checkpoint_dir):
        raise SystemExit(f"error: --resume: no checkpoint in {checkpoint_dir}; run without --resume (and with --checkpoint-every) first")
    try:
        results = train_on_model(args.model, args.hookpoints, specs, config, data, out_dir=args.out, resume=args.resume,
                                 device=args.device, dtype=args.dtype, seed=args.seed, cache=args.cache)
    except (ValueError, FileNotFoundError, ImportError, FloatingPointError) as error:
        raise SystemExit(f"error: {error}") from None
    for name, (_sae, metrics) in results.items():
        print(f"{Path(args.out) / name}: {_format_metrics(metrics)}")
    return 0


def _cmd_train_array(args: argparse.Namespace) -> int:
    from saescope.saes import create_sae
    from saescope.training import TrainConfig, train_saes
    from saescope.training.state import has_trainer_state

    if args.target_l0 is not None and len(args.target_l0) > 1:
        raise SystemExit("error: --target-l0 takes one value with --data")
    args.target_l0 = args.target_l0[0] if args.target_l0 else None
    data = _load_activations(args.data)
    checkpoint_dir = Path(args.out) / "checkpoint"
    d_in = int(data.shape[-1])
    width = args.width or d_in * args.expansion
    saes = {}
    try:
        for arch in args.arch:
            options: dict[str, Any] = {"lr": args.lr, "target_l0": args.target_l0}
            if arch in ("topk", "batchtopk"):
                options["k"] = args.k
            else:
                options["sparsity_coefficient"] = args.sparsity_coefficient
            saes[arch] = create_sae(arch, d_in, width, **options)
        config = TrainConfig(
            total_tokens=args.tokens,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            checkpoint_every=args.checkpoint_every,
            checkpoint_dir=str(checkpoint_dir) if args.checkpoint_every or args.resume else None,
        )
    except (ValueError, TypeError) as error:
        raise SystemExit(f"error: {error}") from None
    if args.resume and not has_trainer_state(checkpoint_dir):
        raise SystemExit(f"error: --resume: no checkpoint in {checkpoint_dir}; run without --resume (and with --checkpoint-every) first")
    try:
        trained = train_saes(data, saes, config, out_dir=args.out, resume=args.resume)
    except (ValueError, FloatingPointError) as error:
        raise SystemExit(f"error: {args.data}: {error}") from None
    for name, sae in trained.items():
        print(f"{name}: saved to {Path(args.out) / name}  (lr {sae.training_summary['lr']:.3g}, {sae.training_summary['tokens_per_second']:.0f} tok/s)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from saescope.checkpoint import load
    from saescope.metrics import evaluate_sae

    try:
        sae = load(args.sae)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    try:
        metrics = evaluate_sae(sae, _load_activations(args.data), batch_size=args.batch_size)
    except (ValueError, TypeError) as error:
        raise SystemExit(f"error: {error}") from None
    values = metrics.to_dict()
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        for key, value in values.items():
            if key != "density_histogram":
                print(f"{key:>26}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from saescope import __version__
    from saescope.saes import ARCHITECTURES

    parser = argparse.ArgumentParser(prog="saescope", description="Train, measure and interpret sparse autoencoders.")
    parser.add_argument("--version", action="version", version=f"saescope {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="benchmarks with known answers")
    bench_kinds = bench.add_subparsers(dest="bench", required=True)
    synthetic = bench_kinds.add_parser("synthetic", help="ground-truth feature recovery on synthetic activations")
    synthetic.add_argument("--json", action="store_true", help="print rows as JSON")
    synthetic.add_argument("--variants", nargs="+", help="uniform, zipf, hierarchical (default: all)")
    synthetic.add_argument("--archs", nargs="+", help="architectures to compare (default: all)")
    synthetic.add_argument("--steps", type=int, help="training steps per variant (default 2000)")
    synthetic.add_argument("--quick", action="store_true", help="a small, fast setting (for smoke tests)")
    synthetic.add_argument("--progress", action="store_true", help="show progress bars even with --json")
    synthetic.set_defaults(func=_cmd_bench_synthetic)

    train = commands.add_parser("train", help="train SAEs on a model's activations, a cache or an array")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help=".npy array of activations, shape [n_tokens, d_in]")
    source.add_argument("--model", help="train on a language model's activations: smollm2-135m (built in), a folder, a .gguf file or a hub id")
    source.add_argument("--cache", help="train on an activation cache written by `saescope cache` (evaluated on the model its manifest names)")
    train.add_argument("--hookpoints", nargs="+", help="with --model: e.g. layers.10.resid_post, 'layers.*.mlp_out', blocks.5.hook_resid_post")
    train.add_argument("--eval-tokens", type=int, default=16_384, help="held-out tokens for L0/FVU/ΔLM loss (0 skips evaluation)")
    _add_model_arguments(train)
    train.add_argument("--arch", nargs="+", default=["jumprelu"], choices=sorted(ARCHITECTURES), help="one or more architectures, trained in one pass")
    train.add_argument("--width", type=int, help="latents (default: expansion x d_in)")
    train.add_argument("--expansion", type=int, default=8, help="latents per input dimension when --width is not given")
    train.add_argument("--target-l0", type=float, nargs="+", help="adapt sparsity so the final L0 lands here (k for topk/batchtopk); with --model, several values train a sweep")
    train.add_argument("--sparsity-coefficient", type=float, help="fixed λ instead of a target L0")
    train.add_argument("--k", type=int, help="active latents per token (topk, batchtopk)")
    train.add_argument("--lr", type=float, help="learning rate (default: per architecture, scaled by width)")
    train.add_argument("--tokens", type=int, default=10_000_000, help="training tokens")
    train.add_argument("--batch-size", type=int, default=4096)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, help="steps between resumable checkpoints")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    train.add_argument("--out", required=True, help="output folder; one SAE folder per architecture")
    train.set_defaults(func=_cmd_train)

    cache = commands.add_parser("cache", help="write a model's activations to disk (sharded, resumable)")
    cache.add_argument("--model", default="smollm2-135m", help="smollm2-135m (built in), a folder, a .gguf file or a hub id")
    cache.add_argument("--hookpoints", nargs="+", required=True, help="e.g. layers.10.resid_post 'layers.*.mlp_out'")
    cache.add_argument("--tokens", type=int, required=True, help="tokens to store (BOS/EOS/pad excluded)")
    cache.add_argument("--out", required=True, help="cache folder")
    cache.add_argument("--storage-dtype", default="float32", choices=["float32", "fp32", "float16", "fp16", "bfloat16", "bf16"])
    cache.add_argument("--shard-tokens", type=int, default=65_536, help="tokens per shard")
    cache.add_argument("--part", default="train", choices=["train", "eval", "all"], help="which documents: training part, held-out part or all")
    cache.add_argument("--resume", action="store_true", help="continue a killed run")
    cache.add_argument("--corpus-order", action="store_true", help="read contexts in corpus order instead of a seeded random order")
    cache.add_argument("--seed", type=int, default=0, help="seed of the context order")
    _add_model_arguments(cache)
    cache.set_defaults(func=_cmd_cache)

    evaluate = commands.add_parser("eval", help="measure a saved SAE on activations")
    evaluate.add_argument("sae", help="SAE folder (cfg.json + sae_weights.safetensors)")
    evaluate.add_argument("--data", required=True, help=".npy array of activations")
    evaluate.add_argument("--batch-size", type=int, default=4096)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=_cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)
