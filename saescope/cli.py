"""The ``saescope`` command line. Every subcommand is a thin wrapper over the Python API; user mistakes
(``SaescopeError``) are caught once, in ``main``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from saescope.errors import InvalidInput, MissingFile, SaescopeError


def _load_activations(path: str) -> Any:
    """A .npy file (memory-mapped, any float dtype, shape [..., d_in])."""
    file = Path(path)
    if not file.is_file():
        raise MissingFile(f"--data {path}: no such file")
    if file.suffix != ".npy":
        raise InvalidInput(f"--data {path}: expected a .npy array of shape [n_tokens, d_in]")
    try:
        return np.load(file, mmap_mode="r")
    except ValueError as error:
        raise InvalidInput(f"--data {path}: cannot read ({error})") from None


def _cmd_bench_synthetic(args: argparse.Namespace) -> int:
    from saescope.synthetic.recovery import (
        RecoveryBenchConfig,
        format_rows,
        run_recovery_benchmark,
    )

    options: dict[str, Any] = {"progress": not args.json and sys.stderr.isatty() or args.progress}
    if args.variants:
        options["variants"] = tuple(args.variants)
    if args.archs:
        options["architectures"] = tuple(args.archs)
    if args.steps:
        options["steps"] = args.steps
    if args.quick:
        options.update(steps=args.steps or 300, eval_tokens=16_384, d_sae=256, n_features=128, d_in=32)
    config = RecoveryBenchConfig(**options)
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
    if args.data is not None:
        if args.config or args.model or args.cache:
            raise InvalidInput("--data trains on an array; it cannot be combined with --config, --model or --cache")
        return _cmd_train_array(args)
    if not (args.config or args.model or args.cache):
        raise InvalidInput("give --config SUITE.yaml, --model MODEL, --cache DIR or --data ARRAY.npy")
    return _cmd_train_suite(args)


def _add_model_arguments(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Dataset and model flags. Without defaults (train), unset flags leave the suite config's values."""

    def default(value: Any) -> Any:
        return value if defaults else None

    parser.add_argument("--dataset", default=default("pydocs"), help="pydocs (built in), a .txt/.jsonl/.parquet file, a saved datasets folder or a hub dataset id")
    parser.add_argument("--text-field", default=default("text"), help="text column of .jsonl/.parquet/datasets sources")
    parser.add_argument("--split", default=default("train"), help="split of a datasets source")
    parser.add_argument("--context-size", type=int, default=default(128), help="tokens per context (with BOS)")
    parser.add_argument("--batch-contexts", type=int, default=default(16), help="contexts per LM forward")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype (default float32)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")

def _cmd_cache(args: argparse.Namespace) -> int:
    from saescope.data.text import check_dataset
    from saescope.data.tokens import TextContexts
    from saescope.lm.harvest import write_cache
    from saescope.lm.models import load_model
    from saescope.lm.stream import ModelActivationSource

    check_dataset(args.dataset)
    if (Path(args.out) / "manifest.json").exists() and not args.resume:
        raise InvalidInput(f"{args.out}: a cache already exists here; pass --resume to continue it or choose another folder")
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    contexts = TextContexts(args.dataset, loaded.tokenizer, args.context_size, part=args.part, text_field=args.text_field, split=args.split)
    source = ModelActivationSource(loaded, contexts, args.hookpoints, batch_contexts=args.batch_contexts)
    manifest = write_cache(source, args.out, args.tokens, dtype=args.storage_dtype, shard_tokens=args.shard_tokens,
                           resume=args.resume, metadata={"part": args.part}, progress=sys.stderr.isatty(),
                           shuffle=not args.corpus_order, seed=args.seed)
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


_SUITE_FLAGS = {
    "model": "model", "cache": "cache", "dataset": "dataset", "text_field": "text_field", "split": "split",
    "context_size": "context_size", "batch_contexts": "batch_contexts", "dtype": "dtype", "device": "device",
    "hookpoints": "hookpoints", "arch": "architectures", "target_l0": "target_l0s", "tokens": "tokens",
    "batch_size": "batch_size", "lr": "lr", "eval_tokens": "eval_tokens", "seed": "seed", "checkpoint_every": "checkpoint_every",
}


def suite_config_from_args(args: argparse.Namespace) -> Any:
    """The suite config: the ``--config`` file (if any), then every flag given on the command line on top."""
    from saescope.suite import SuiteConfig

    values: dict[str, Any] = SuiteConfig.from_file(args.config).to_dict() if args.config else {}
    for flag, field_name in _SUITE_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            values[field_name] = value
    if args.width is not None or args.expansion is not None:
        values["widths"] = [int(w) if w.isdigit() else w for w in (args.width or [])] + [f"{e:g}x" for e in (args.expansion or [])]
    if args.keep_checkpoint:
        values["keep_checkpoint"] = True
    if args.cache and not args.model:
        values["model"] = None  # the cache's manifest names the model
    if args.cache and not values.get("hookpoints"):
        values["hookpoints"] = ["*"]
    if not values.get("hookpoints"):
        raise InvalidInput("--hookpoints is required with --model (e.g. --hookpoints layers.10.resid_post), or give hookpoints in --config")
    return SuiteConfig.from_dict(values, source=f"--config {args.config}" if args.config else "command line")


def _cmd_train_suite(args: argparse.Namespace) -> int:
    from saescope.suite import train_suite

    if args.k is not None or args.sparsity_coefficient is not None:
        raise InvalidInput("with --model, --cache or --config, sparsity is set by --target-l0 (k for topk/batchtopk); "
                         "--k and --sparsity-coefficient apply to --data")
    config = suite_config_from_args(args)
    index = train_suite(config, args.out, resume=args.resume, progress=True, report=lambda line: print(line, file=sys.stderr))
    for entry in index["saes"]:
        print(f"{Path(args.out) / entry['path']}: {_format_metrics(entry.get('metrics', {}))}")
    print(f"\n{len(index['saes'])} SAEs in {args.out} (index: {Path(args.out) / 'suite.json'}); "
          f"next: saescope eval {args.out}   (table, eval.json, eval.csv and plots)")
    if args.interpret:
        from saescope.interpret.run import interpret_suite

        result = interpret_suite(args.out, tokens=args.interpret, progress=sys.stderr.isatty(), device=config.device)
        print(f"interpreted every feature over {result['tokens']:,} tokens; browse: saescope view {args.out}")
    return 0

def _cmd_train_array(args: argparse.Namespace) -> int:
    import torch

    from saescope.io.trainer_state import has_trainer_state
    from saescope.jobs import create_job, sets_k
    from saescope.training import TrainConfig, train_saes

    if args.target_l0 is not None and len(args.target_l0) > 1:
        raise InvalidInput("--target-l0 takes one value with --data")
    args.target_l0 = args.target_l0[0] if args.target_l0 else None
    data = _load_activations(args.data)
    checkpoint_dir = Path(args.out) / "checkpoint"
    d_in = int(data.shape[-1])
    if len(args.width or []) + len(args.expansion or []) > 1:
        raise InvalidInput("--data trains one width; give one --width or --expansion (suites take several with --model/--config)")
    if args.width and not args.width[0].isdigit():
        raise InvalidInput(f"--width {args.width[0]}: give a latent count such as 4608 (or use --expansion)")
    width = int(args.width[0]) if args.width else int(round(d_in * (args.expansion[0] if args.expansion else 8)))
    saes = {}
    torch.manual_seed(args.seed or 0)  # SAE initialisation, so that --seed makes the run reproducible
    for arch in args.arch or ["jumprelu"]:
        options: dict[str, Any] = {"lr": args.lr, "target_l0": args.target_l0}
        if sets_k(arch):
            if args.k is not None:
                options["k"] = args.k
        else:
            options["sparsity_coefficient"] = args.sparsity_coefficient
        saes[arch] = create_job(arch, d_in, width, name=arch, **options)
    config = TrainConfig(
        total_tokens=args.tokens or 10_000_000,
        batch_size=args.batch_size or 4096,
        seed=args.seed or 0,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        checkpoint_dir=str(checkpoint_dir) if args.checkpoint_every or args.resume else None,
    )
    if args.resume and not has_trainer_state(checkpoint_dir):
        raise InvalidInput(f"--resume: no checkpoint in {checkpoint_dir}; run without --resume (and with --checkpoint-every) first")
    try:
        trained = train_saes(data, saes, config, out_dir=args.out, resume=args.resume)
    except SaescopeError as error:
        raise InvalidInput(f"{args.data}: {error}") from None
    for name, sae in trained.items():
        print(f"{name}: saved to {Path(args.out) / name}  (lr {sae.training_summary['lr']:.3g}, {sae.training_summary['tokens_per_second']:.0f} tok/s)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.data is not None:
        return _cmd_eval_array(args)
    from saescope.io.suite_index import is_suite
    from saescope.suite import evaluate_suite, format_table

    if not is_suite(args.path):
        hint = " (an SAE folder: add --data ACTIVATIONS.npy)" if (Path(args.path) / "cfg.json").is_file() else ""
        raise InvalidInput(f"{args.path}: not a suite folder (no suite.json){hint}")
    rows = evaluate_suite(args.path, eval_tokens=args.eval_tokens, recompute=args.recompute, plots=not args.no_plots,
                          progress=sys.stderr.isatty(), device=args.device)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "density_histogram"} for r in rows], indent=2))
        return 0
    print(format_table(rows))
    folder = Path(args.path)
    outputs = [folder / "eval.json", folder / "eval.csv"] + ([] if args.no_plots else sorted((folder / "plots").glob("*.png")))
    print("\nwritten: " + ", ".join(str(p) for p in outputs))
    return 0


def _cmd_eval_array(args: argparse.Namespace) -> int:
    from saescope.evaluation.metrics import evaluate_sae
    from saescope.io.checkpoint import load

    sae = load(args.path)
    metrics = evaluate_sae(sae, _load_activations(args.data), batch_size=args.batch_size)
    values = metrics.to_dict()
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        for key, value in values.items():
            if key != "density_histogram":
                print(f"{key:>26}: {value}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from saescope.suite import describe

    print(describe(args.path))
    return 0


def _cmd_interpret(args: argparse.Namespace) -> int:
    from saescope.interpret.run import interpret_suite

    result = interpret_suite(args.path, tokens=args.tokens, top_k=args.top_k, window=args.window, device=args.device,
                             progress=sys.stderr.isatty())
    for path, info in result["saes"].items():
        print(f"{Path(args.path) / path}: {info['alive']} of {info['features']} features fired on {info['tokens']:,} tokens")
    print(f"\ninterpreted {len(result['saes'])} SAEs over {result['tokens']:,} tokens in {result['seconds']:.0f} s; "
          f"browse: saescope view {args.path}")
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from saescope.view import export_site, serve

    if args.export:
        target = export_site(args.path, args.export)
        print(f"static browser written to {target}; open {Path(target).resolve() / 'index.html'} in a browser")
        return 0
    serve(args.path, host=args.host, port=args.port, prompts=not args.no_model, device=args.device)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from saescope.io.interop import export_saelens, load_sae

    sae = load_sae(args.source, hookpoint=args.hookpoint)
    if args.to == "saelens":
        export_saelens(sae, args.out)
    else:
        from saescope.io.checkpoint import save_sae

        save_sae(sae, args.out)
    print(f"{args.source} ({sae.architecture}, d_in {sae.d_in}, {sae.d_sae} latents) written to {args.out} in {args.to} format")
    return 0


def _cmd_steer(args: argparse.Namespace) -> int:
    from saescope.io.interop import load_sae
    from saescope.lm.models import load_model
    from saescope.steer import Intervention, feature_max_activation, steer_and_compare

    values = args.value if len(args.value) == len(args.feature) else args.value * len(args.feature) if len(args.value) == 1 else None
    if values is None:
        raise InvalidInput(f"give one --value, or one per --feature ({len(args.feature)})")
    sae = load_sae(args.sae, hookpoint=args.hookpoint)
    interventions = []
    for feature, value in zip(args.feature, values):
        peak = feature_max_activation(args.sae, feature) if args.unit == "max" else None
        if args.unit == "max" and peak is None:
            raise InvalidInput(f"--unit max needs the feature's maximum activation: run `saescope interpret` on the suite of {args.sae} first")
        interventions.append(Intervention(sae, feature, value, kind=args.kind, positions=args.positions, unit=args.unit, max_activation=peak))
    model = args.model or sae.cfg.model_id
    if not model:
        raise InvalidInput(f"{args.sae} does not record its model; pass --model")
    loaded = load_model(model, device=args.device)
    plain, steered = steer_and_compare(loaded, args.prompt, interventions, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                       temperature=args.temperature)
    what = ", ".join(f"#{f} {args.kind}" + ("" if args.kind == "ablate" else f" {v:g}{'x max' if args.unit == 'max' else ''}") for f, v in zip(args.feature, values))
    print(_side_by_side(args.prompt, [("unsteered", plain), (f"steered ({what})", steered)], args.seed))
    return 0


def _side_by_side(prompt: str, columns: list[tuple[str, Any]], seed: int) -> str:
    import shutil
    import textwrap

    width = max(30, (shutil.get_terminal_size((120, 20)).columns - 3) // 2)
    blocks = []
    for title, generation in columns:
        rate = "-" if generation.feature_rate is None else f"{generation.feature_rate:.0%}"
        lines = [title, "-" * min(width, len(title))] + textwrap.wrap(generation.text.replace("\n", " ⏎ "), width) + \
            ["", f"feature fires on {rate} of tokens; perplexity {generation.perplexity:.1f}"]
        blocks.append(lines)
    rows = max(len(b) for b in blocks)
    out = [f"prompt: {prompt!r}   (seed {seed}, same for both)", ""]
    for i in range(rows):
        left = blocks[0][i] if i < len(blocks[0]) else ""
        right = blocks[1][i] if i < len(blocks[1]) else ""
        out.append(f"{left:<{width}} | {right}")
    return "\n".join(out)


def _cmd_demo(args: argparse.Namespace) -> int:
    from saescope.demo import run_demo

    return run_demo(args.out, tokens=args.tokens)


def build_parser() -> argparse.ArgumentParser:
    from saescope._version import __version__
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

    train = commands.add_parser("train", help="train a suite of SAEs on a model's activations (or SAEs on a cache or an array)")
    source = train.add_argument_group("what to train on (one of --config, --model, --cache, --data; flags override the config)")
    source.add_argument("--config", help="suite config (YAML or JSON): model, dataset, hookpoints, architectures, widths, target_l0s, tokens, ...")
    source.add_argument("--model", help="smollm2-135m (built in), a folder, a .gguf file or a hub id")
    source.add_argument("--cache", help="an activation cache written by `saescope cache` (evaluated on the model its manifest names)")
    source.add_argument("--data", help=".npy array of activations, shape [n_tokens, d_in] (any vectors, not only an LM's)")
    train.add_argument("--hookpoints", nargs="+", help="e.g. layers.10.resid_post, 'layers.*.mlp_out', blocks.5.hook_resid_post")
    train.add_argument("--eval-tokens", type=int, help="held-out tokens for L0/FVU/ΔLM loss after training (default 16384; 0 skips)")
    _add_model_arguments(train, defaults=False)
    train.add_argument("--arch", nargs="+", choices=sorted(ARCHITECTURES), help="one or more architectures, trained in one pass (default jumprelu)")
    train.add_argument("--width", nargs="+", help="latents per SAE, several for a width sweep (e.g. 4608 or 8x)")
    train.add_argument("--expansion", type=float, nargs="+", help="latents per input dimension (8 means 8 x d_in)")
    train.add_argument("--target-l0", type=float, nargs="+", help="target L0s, one SAE each (k for topk/batchtopk)")
    train.add_argument("--sparsity-coefficient", type=float, help="--data only: fixed λ instead of a target L0")
    train.add_argument("--k", type=int, help="--data only: active latents per token (topk, batchtopk)")
    train.add_argument("--lr", type=float, help="learning rate (default: per architecture, scaled by width)")
    train.add_argument("--tokens", type=int, help="training tokens per SAE (default 10M)")
    train.add_argument("--batch-size", type=int, help="tokens per step (default 4096)")
    train.add_argument("--seed", type=int)
    train.add_argument("--checkpoint-every", type=int, help="steps between resumable checkpoints (suites: about a tenth of the run; 0: never)")
    train.add_argument("--keep-checkpoint", action="store_true", help="keep OUT/checkpoint after a successful run")
    train.add_argument("--resume", action="store_true", help="continue a killed run from OUT/checkpoint")
    train.add_argument("--interpret", type=int, metavar="TOKENS", help="after training, run saescope interpret over this many tokens")
    train.add_argument("--out", required=True, help="output folder: suite.json plus <hookpoint>/<arch>-w<width>-l0_<target>/ per SAE")
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

    evaluate = commands.add_parser("eval", help="measure every SAE of a suite (table, eval.json, eval.csv, plots), or one SAE on an array")
    evaluate.add_argument("path", help="suite folder (suite.json), or an SAE folder with --data")
    evaluate.add_argument("--data", help="with an SAE folder: .npy array of activations")
    evaluate.add_argument("--eval-tokens", type=int, help="held-out tokens (default: the suite's)")
    evaluate.add_argument("--recompute", action="store_true", help="measure again even where training already did")
    evaluate.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    evaluate.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    evaluate.add_argument("--batch-size", type=int, default=4096)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=_cmd_eval)

    info = commands.add_parser("info", help="describe a suite or an SAE folder")
    info.add_argument("path")
    info.set_defaults(func=_cmd_info)

    interpret = commands.add_parser("interpret", help="top activations, histograms, logit effects and similar features for every SAE of a suite")
    interpret.add_argument("path", help="suite folder")
    interpret.add_argument("--tokens", type=int, default=100_000, help="tokens of text to run (default 100000)")
    interpret.add_argument("--top-k", type=int, default=20, help="top activating examples per feature")
    interpret.add_argument("--window", type=int, default=12, help="tokens shown either side of each example's peak")
    interpret.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    interpret.set_defaults(func=_cmd_interpret)

    view = commands.add_parser("view", help="browse a suite's features in a local web app (or --export a static site)")
    view.add_argument("path", help="suite folder (run saescope interpret on it first)")
    view.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    view.add_argument("--port", type=int, default=8765)
    view.add_argument("--no-model", action="store_true", help="do not load the model (no prompt panel)")
    view.add_argument("--export", metavar="DIR", help="write a static site that works offline from file:// instead of serving")
    view.add_argument("--device", help="cuda or cpu for the prompt panel")
    view.set_defaults(func=_cmd_view)

    convert = commands.add_parser("convert", help="read a saescope, SAELens or Gemma Scope SAE (path or hub id) and write it as saescope or SAELens")
    convert.add_argument("source", help="SAE folder, params.npz, or hub id such as google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    convert.add_argument("out", help="output folder")
    convert.add_argument("--to", choices=["saelens", "saescope"], default="saescope")
    convert.add_argument("--hookpoint", help="record this hookpoint (e.g. layers.20.resid_post) when the source does not say")
    convert.set_defaults(func=_cmd_convert)

    steer = commands.add_parser("steer", help="generate with and without SAE features added, clamped or ablated, side by side")
    steer.add_argument("--sae", required=True, help="SAE folder (saescope or SAELens), Gemma Scope params.npz, or hub id")
    steer.add_argument("--feature", type=int, nargs="+", required=True, help="feature index (several apply together)")
    steer.add_argument("--value", type=float, nargs="+", default=[0.0], help="one value, or one per feature")
    steer.add_argument("--kind", choices=["add", "clamp", "ablate"], default="add")
    steer.add_argument("--unit", choices=["raw", "max"], default="raw", help="max: value in multiples of the feature's maximum activation (needs saescope interpret)")
    steer.add_argument("--positions", choices=["all", "prompt", "generated"], default="all")
    steer.add_argument("--prompt", required=True)
    steer.add_argument("--max-new-tokens", type=int, default=40)
    steer.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    steer.add_argument("--seed", type=int, default=0)
    steer.add_argument("--model", help="default: the model the SAE records")
    steer.add_argument("--hookpoint", help="default: the hookpoint the SAE records")
    steer.add_argument("--device")
    steer.set_defaults(func=_cmd_steer)

    demo = commands.add_parser("demo", help="train, evaluate and plot a small suite on the built-in model and corpus")
    demo.add_argument("--out", default="demo-suite", help="where the suite goes (default demo-suite)")
    demo.add_argument("--tokens", type=int, help="training tokens (default: the demo's budget)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user mistake (``SaescopeError``) becomes one ``error:`` line; anything else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SaescopeError as error:
        raise SystemExit(f"error: {error}") from None
