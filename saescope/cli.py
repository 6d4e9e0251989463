"""The ``saescope`` command line. Every subcommand is a thin wrapper over the Python API; user mistakes
(``SaescopeError``) are caught once, in ``main``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from saescope.cli_types import (
    finite_float,
    fraction,
    non_negative_int,
    number,
    positive_float,
    positive_int,
)
from saescope.errors import Interrupted, InvalidInput, SaescopeError


def _cmd_bench_omics(args: argparse.Namespace) -> int:
    from saescope.synthetic.omics import OmicsConfig
    from saescope.synthetic.omics_bench import (
        OmicsBenchConfig,
        format_omics,
        omics_spread,
        run_omics_benchmark,
    )

    options: dict[str, Any] = {"progress": not args.json and sys.stderr.isatty() or args.progress}
    if args.archs:
        options["architectures"] = tuple(args.archs)
    if args.steps:
        options["steps"] = args.steps
    if args.quick:
        options.update(simulation=OmicsConfig(n_samples=2000, n_genes=300), ae_epochs=8, expansion=8, steps=args.steps or 300)
    if args.seed is not None and args.seeds:
        raise InvalidInput("give --seed or --seeds, not both")
    seeds = args.seeds or [args.seed if args.seed is not None else 0]
    config = OmicsBenchConfig(**options)
    rows = run_omics_benchmark(config, seeds)
    if args.json:
        print(json.dumps({"rows": rows, "spread": omics_spread(rows)}, indent=2))
        return 0
    sim = config.simulation
    print(format_omics(omics_spread(rows)))
    print(f"\n{sim.n_samples:,} cells, {sim.n_genes:,} genes, {sim.n_programs} programs, {sim.n_cell_types} cell types, "
          f"{sim.n_covariates} covariates; dense autoencoder latent {config.ae_latent} (FVU on the genes "
          f"{min(r['ae_fvu'] for r in rows):.3f}–{max(r['ae_fvu'] for r in rows):.3f}); SAEs {config.expansion}x ({config.expansion * config.ae_latent} "
          f"latents), target L0 {config.target_l0:g}, {config.steps * config.batch_size:,} training rows; seeds {seeds}")
    return 0


def _cmd_bench_synthetic(args: argparse.Namespace) -> int:
    if args.variants and "omics" in args.variants:
        if len(args.variants) > 1:
            raise InvalidInput("--variants omics runs on its own (a different pipeline: a simulation, an autoencoder, then SAEs); "
                               "give it alone")
        return _cmd_bench_omics(args)
    from saescope.synthetic.recovery import (
        RecoveryBenchConfig,
        format_rows,
        format_spread,
        run_over_seeds,
        run_recovery_benchmark,
        seed_spread,
    )

    options: dict[str, Any] = {"progress": not args.json and sys.stderr.isatty() or args.progress}
    if args.variants:
        options["variants"] = tuple(args.variants)
    if args.archs:
        options["architectures"] = tuple(args.archs)
    if args.steps:
        options["steps"] = args.steps
    if args.seed is not None:
        options["seed"] = args.seed
    if args.quick:
        options.update(steps=args.steps or 300, eval_tokens=16_384, d_sae=256, n_features=128, d_in=32)
    config = RecoveryBenchConfig(**options)
    if args.seeds:
        if args.seed is not None:
            raise InvalidInput("give --seed or --seeds, not both")
        rows = run_over_seeds(config, args.seeds)
        summary = seed_spread(rows)
        if args.json:
            print(json.dumps({"rows": rows, "spread": summary}, indent=2))
        else:
            print(format_spread(summary))
            print(f"\nmean [min–max] over seeds {args.seeds}; each seed draws new true features, SAE initialisations and data order")
        return 0
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
    from saescope.cli_plan import plan_from_args
    from saescope.suite import train

    plan = plan_from_args(args, _train_extras(args))
    if args.estimate_only:
        from saescope.suite.plan_estimate import estimate_plan

        planned = estimate_plan(plan, args.out, processes=args.processes or 1,
                                device_flops=args.device_tflops * 1e12 if args.device_tflops else None)
        print("\n".join(planned.lines()))
        return 0
    if args.processes or args.device_tflops:
        raise InvalidInput("--processes and --device-tflops plan a run with --estimate-only; to train on several processes, "
                           "launch with torchrun --nproc_per_node N -m saescope train ...")
    result = train(plan, args.out, resume=args.resume, progress=True, report=lambda line: print(line, file=sys.stderr), overwrite=args.overwrite)
    _print_trained(plan, args, result)
    return 0


def _train_extras(args: argparse.Namespace) -> dict[str, Any]:
    """Plan values from the convenience flags: --expansion (widths), --k and --sparsity-coefficient (options)."""
    from saescope.jobs import sets_k
    from saescope.plan import RunPlan, SweepPlan

    extras: dict[str, Any] = {}
    if args.expansion:
        extras["widths"] = list(args.widths or []) + [f"{e:g}x" for e in args.expansion]
    if args.cache and not args.model:
        extras["model"] = None  # the cache's manifest names the model
    if args.k is not None or args.sparsity_coefficient is not None:
        architectures = args.architectures or (RunPlan.from_file(args.config).sweep if args.config else SweepPlan()).architectures
        options: dict[str, dict[str, Any]] = {}
        for arch in architectures:
            if sets_k(arch) and args.k is not None:
                options[arch] = {"k": args.k}
            elif not sets_k(arch) and args.sparsity_coefficient is not None:
                options[arch] = {"sparsity_coefficient": args.sparsity_coefficient}
        extras["options"] = options
    return extras


def _print_trained(plan: Any, args: argparse.Namespace, result: dict[str, Any]) -> None:
    if plan.data.array is not None:
        for name, sae in result.items():
            print(f"{name}: saved to {Path(args.out) / name}  (lr {sae.training_summary['lr']:.3g}, {sae.training_summary['tokens_per_second']:.0f} tok/s)")
        return
    for entry in result["saes"]:
        print(f"{Path(args.out) / entry['path']}: {_format_metrics(entry.get('metrics', {}))}")
    if result.get("replacement"):
        from saescope.suite.replacement import format_replacements

        print("\n" + format_replacements(result["replacement"]))
    transcoders = sum(entry.get("kind", "sae") != "sae" for entry in result["saes"])
    counted = f"{len(result['saes']) - transcoders} SAEs" + (f" and {transcoders} transcoders" if transcoders else "")
    print(f"\n{counted} in {args.out} (index: {Path(args.out) / 'suite.json'}); "
          f"next: saescope eval {args.out}   (table, eval.json, eval.csv and plots)")
    if args.interpret:
        from saescope.interpret.run import interpret_suite

        summary = interpret_suite(args.out, tokens=args.interpret, progress=sys.stderr.isatty(), device=plan.model.device)
        print(f"interpreted every feature over {summary['tokens']:,} tokens; browse: saescope view {args.out}")


def _cmd_cache(args: argparse.Namespace) -> int:
    from saescope.data.text import check_dataset
    from saescope.data.tokens import TextContexts
    from saescope.lm.harvest import write_cache
    from saescope.lm.models import load_model
    from saescope.lm.stream import ModelActivationSource

    check_dataset(args.dataset)
    for flag, value, least in (("--batch-contexts", args.batch_contexts, 1), ("--context-size", args.context_size, 2)):
        if not isinstance(value, int) or value < least:
            raise InvalidInput(f"{flag}: must be an integer of at least {least}, got {value!r}")
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
                            ("loss_recovered", "loss recovered", ".1%"), ("kl", "KL", ".4f")):
        if isinstance(values.get(key), (int, float)):
            parts.append(f"{label} {values[key]:{fmt}}")
    if isinstance(values.get("dead_fraction"), (int, float)) and values.get("dead_window_tokens"):
        parts.append(f"dead {values['dead_fraction']:.1%} (no firing in the last {int(values['dead_window_tokens']):,} training tokens)")
    if isinstance(values.get("unfired_fraction"), (int, float)):
        parts.append(f"unfired {values['unfired_fraction']:.1%} (in {int(values.get('n_tokens') or 0):,} evaluation tokens)")
    return ", ".join(parts)


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.data is not None:
        return _cmd_eval_array(args)
    from saescope.io.suite_index import is_suite
    from saescope.suite import evaluate_suite, format_table

    if not is_suite(args.path):
        hint = " (an SAE folder: add --data ACTIVATIONS.npy)" if (Path(args.path) / "cfg.json").is_file() else ""
        raise InvalidInput(f"{args.path}: not a suite folder (no suite.json){hint}")
    rows = evaluate_suite(args.path, eval_tokens=args.eval_tokens, recompute=args.recompute, plots=not args.no_plots,
                          progress=sys.stderr.isatty(), device=args.device, max_fvu=args.max_fvu)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "density_histogram"} for r in rows], indent=2))
        return 0
    print(format_table(rows))
    folder = Path(args.path)
    report = json.loads((folder / "eval.json").read_text())
    if report.get("replacement"):
        from saescope.suite.replacement import format_replacements

        print("\n" + format_replacements(report["replacement"]))
    outputs = [folder / "eval.json", folder / "eval.csv"] + ([] if args.no_plots else sorted((folder / "plots").glob("*.png")))
    print("\nwritten: " + ", ".join(str(p) for p in outputs))
    return 0


def _cmd_eval_array(args: argparse.Namespace) -> int:
    from saescope.evaluation.metrics import evaluate_sae
    from saescope.io.checkpoint import load
    from saescope.suite.arrays import load_array

    sae = load(args.path)
    metrics = evaluate_sae(sae, load_array(args.data, args.data_key, args.metadata_columns or ()), batch_size=args.batch_size)
    values = metrics.to_dict()
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        for key, value in values.items():
            if key != "density_histogram":
                print(f"{key:>26}: {value}")
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from saescope.evaluation.selection import format_selection
    from saescope.suite.select import SELECTION_FILE, select

    groups = select(args.path, by=args.by, max_fvu=args.max_fvu, data=args.data, data_key=args.data_key,
                    metadata_columns=args.metadata_columns or (), eval_tokens=args.eval_tokens, recompute=args.recompute,
                    batch_size=args.batch_size, progress=sys.stderr.isatty(), device=args.device)
    if args.json:
        print(json.dumps({hookpoint: [c.to_dict() for c in candidates] for hookpoint, candidates in groups.items()}, indent=2))
        return 0
    print(format_selection(groups, args.by, args.max_fvu))
    print(f"\nwritten: {Path(args.path) / SELECTION_FILE}, {Path(args.path) / 'plots' / 'description_length.png'}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from saescope.suite import describe

    print(describe(args.path))
    return 0


def _cmd_interpret(args: argparse.Namespace) -> int:
    if args.data is not None:
        return _cmd_interpret_vectors(args)
    if args.image_shape:
        raise InvalidInput("--image-shape is for SAEs on vectors: give the pixels with --data FILE as well")
    from saescope.interpret.run import interpret_suite

    result = interpret_suite(args.path, tokens=args.tokens, top_k=args.top_k, window=args.window, device=args.device,
                             progress=sys.stderr.isatty())
    for path, info in result["saes"].items():
        print(f"{Path(args.path) / path}: {info['alive']} of {info['features']} features fired on {info['tokens']:,} tokens")
    print(f"\ninterpreted {len(result['saes'])} SAEs over {result['tokens']:,} tokens in {result['seconds']:.0f} s; "
          f"browse: saescope view {args.path}")
    return 0


def _cmd_interpret_vectors(args: argparse.Namespace) -> int:
    from saescope.data.vectors import load_vectors
    from saescope.interpret.vectors import (
        VECTORS_FILE,
        best_feature_per_category,
        interpret_vectors,
    )
    from saescope.io.interop import load_sae
    from saescope.suite.select import sae_folders

    folders = sae_folders(Path(args.path))
    if not folders:
        raise InvalidInput(f"{args.path}: no SAE folder here (cfg.json in it or in its subfolders); give one trained with saescope train --data")
    data = load_vectors(args.data, args.data_key, args.metadata_columns or ())
    for folder in folders:
        sae = load_sae(str(folder), device=args.device or "cpu")
        result = interpret_vectors(sae, data, out=folder, top_k=args.top_k, image_shape=args.image_shape)
        print(f"{folder}: {result['alive']} of {result['n_features']} features fire on {result['n_rows']:,} vectors; "
              f"written: {folder / VECTORS_FILE}")
        for column in result["categorical"][:1]:
            print(f"\nbest feature per {column} (AUROC, density, top input dimensions):")
            for entry in best_feature_per_category(result, column):
                print(f"  {entry['category']:<24} #{entry['feature']:<6} {entry['auroc']:.3f}  {entry['density']:.1%}  {', '.join(entry['loadings'])}")
    print(f"\nbrowse: saescope view {args.path}")
    return 0


def _cmd_lineage(args: argparse.Namespace) -> int:
    from saescope.suite.lineage import LINEAGE_FILE, lineage_suite

    report = lineage_suite(args.path, tokens=args.tokens, cosine_threshold=args.cosine, jaccard_threshold=args.jaccard,
                           device=args.device, progress=sys.stderr.isatty())
    for group in report["groups"]:
        print(f"{group['site']} {group['architecture']} w{group['width']} L0 {group['target_l0']:g}: layers {group['layers']}")
        print(f"  {'lower -> upper':<44} {'cos parent':>10} {'chance':>7} {'mean cos':>9} {'co-act parent':>13} {'chance':>7} {'agree':>6}")
        for pair in group["pairs"]:
            name = f"{pair['lower'].split('/')[0]} -> {pair['upper'].split('/')[0]}"
            co = pair["coactive_parent_fraction"]
            print(f"  {name:<44} {pair['clear_parent_fraction']:>10.1%} {pair['chance_clear_parent_fraction']:>7.1%} "
                  f"{pair['mean_parent_cosine']:>9.3f} {_percent(co):>13} {_percent(pair['chance_coactive_parent_fraction']):>7} "
                  f"{_percent(pair['agreement']):>6}")
        lengths = ", ".join(f"{n}: {count}" for n, count in group["chains"]["length_counts"].items())
        print(f"  chains by SAEs spanned: {lengths or 'none'}")
    print(f"\nwritten: {Path(args.path) / LINEAGE_FILE} and lineage.json in each SAE folder; browse: saescope view {args.path}")
    return 0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _cmd_view(args: argparse.Namespace) -> int:
    from saescope.view import export_site, serve

    if args.export:
        target = export_site(args.path, args.export)
        print(f"static browser written to {target}; open {Path(target).resolve() / 'index.html'} in a browser")
        return 0
    serve(args.path, host=args.host, port=args.port, prompts=not args.no_model, device=args.device,
          allow_hosts=tuple(args.allow_host or ()), allow_remote=args.allow_remote)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from saescope.io.interop import export_circuit_tracer, export_saelens, load_sae
    from saescope.io.suite_index import is_suite

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise InvalidInput(f"{out}: already exists and is not empty; choose another folder, or pass --overwrite to write the "
                           "converted files over it (files of other names are left alone)")
    if args.to == "circuit-tracer" and is_suite(args.source):
        from saescope.io.interop.transcoders import export_suite_circuit_tracer

        name, folder = export_suite_circuit_tracer(args.source, args.out, args.set)
        print(f"{args.source}: transcoder set {name} written to {folder} as a circuit-tracer transcoder set")
        return 0
    if args.set is not None:
        raise InvalidInput(f"--set picks a transcoder set of a suite; {args.source} is not a suite folder")
    sae = load_sae(args.source, hookpoint=args.hookpoint)
    if args.to == "circuit-tracer":
        export_circuit_tracer([sae], args.out)
        print(f"{args.source} ({sae.architecture} transcoder, {sae.d_sae} latents) written to {args.out} in circuit-tracer format")
        return 0
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
    if args.bio:
        from saescope.demo_bio import format_summary, run_bio_demo

        out = args.out if args.out != "demo-suite" else "demo-bio"
        summary = run_bio_demo(out)
        print(format_summary(summary))
        print(f"\nwritten: {Path(out) / 'summary.json'}, {summary['picture']} and interpret_vectors.json in each SAE folder "
              f"({summary['seconds']:.0f} s)")
        return 0
    from saescope.demo import run_demo

    return run_demo(args.out, tokens=args.tokens)


def defaults(function: Any) -> dict[str, Any]:
    """A function's keyword defaults, so that a flag's default is the API's, written once."""
    import inspect

    return {name: p.default for name, p in inspect.signature(function).parameters.items() if p.default is not inspect.Parameter.empty}


def build_parser() -> argparse.ArgumentParser:
    from saescope._version import __version__
    from saescope.cli_experts import add_experts_commands
    from saescope.cli_plan import add_plan_arguments
    from saescope.data.cache import SHARD_TOKENS
    from saescope.evaluation.metrics import evaluate_sae
    from saescope.interpret.run import interpret_suite

    parser = argparse.ArgumentParser(prog="saescope", description="Train, measure and interpret sparse autoencoders.")
    parser.add_argument("--version", action="version", version=f"saescope {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="benchmarks with known answers")
    bench_kinds = bench.add_subparsers(dest="bench", required=True)
    synthetic = bench_kinds.add_parser("synthetic", help="ground-truth feature recovery on synthetic activations")
    synthetic.add_argument("--json", action="store_true", help="print rows as JSON")
    synthetic.add_argument("--variants", nargs="+", help="uniform, zipf, hierarchical, synthsae (default: all); or omics alone: "
                           "Schuster's simulated cells, a dense autoencoder, SAEs on its latents, recovery of the hidden variables")
    synthetic.add_argument("--archs", nargs="+", help="architectures to compare (default: all)")
    synthetic.add_argument("--steps", type=positive_int, help="training steps per variant (default 2000)")
    synthetic.add_argument("--seed", type=int, help="seed of the synthetic data and the SAEs (default 0)")
    synthetic.add_argument("--seeds", type=int, nargs="+", help="run once per seed and report the mean and range of each figure")
    synthetic.add_argument("--quick", action="store_true", help="a small, fast setting (for smoke tests)")
    synthetic.add_argument("--progress", action="store_true", help="show progress bars even with --json")
    synthetic.set_defaults(func=_cmd_bench_synthetic)
    add_experts_commands(commands, bench_kinds)

    train = commands.add_parser(
        "train", help="train SAEs: a suite on a model's activations or a cache, or SAEs on an array of vectors",
        description="Every plan field is a flag; flags override --config. Give a model (with --hookpoints), a --cache or --data.",
    )
    train.add_argument("--config", help="a run plan (YAML or JSON), nested by section or flat; see examples/suite.yaml")
    train.add_argument("--out", required=True, help="output folder: suite.json plus <hookpoint>/<arch>-w<width>-l0_<target>/ per SAE")
    train.add_argument("--resume", action="store_true", help="continue a killed run from OUT/checkpoint (or restart one that stopped before it)")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier saescope output in --out (never anything else)")
    train.add_argument("--interpret", type=positive_int, metavar="TOKENS", help="after training a suite, run saescope interpret over this many tokens")
    train.add_argument("--expansion", type=positive_float, nargs="+", help="widths as latents per input dimension (8 means 8 x d_in)")
    train.add_argument("--k", type=positive_int, help="active latents per token for topk/batchtopk (instead of round(target L0))")
    train.add_argument("--sparsity-coefficient", type=positive_float, help="a fixed λ for jumprelu/relu/gated (with no target L0 controller)")
    train.add_argument("--estimate-only", action="store_true", help="print the suite's memory per process, traffic, disk and time from the "
                       "model's config alone (no weights loaded, nothing trained), e.g. to plan a multi-GPU run")
    train.add_argument("--processes", type=positive_int, default=None, help="with --estimate-only: torchrun processes to plan for (default: 1)")
    train.add_argument("--device-tflops", type=positive_float, help="with --estimate-only: one device's matmul TFLOP/s (default: measured here)")
    add_plan_arguments(train)
    train.set_defaults(func=_cmd_train)

    cache = commands.add_parser("cache", help="write a model's activations to disk (sharded, resumable)")
    cache.add_argument("--hookpoints", nargs="+", required=True, help="e.g. layers.10.resid_post 'layers.*.mlp_out'")
    cache.add_argument("--tokens", type=positive_int, required=True, help="tokens to store (BOS/EOS/pad excluded)")
    cache.add_argument("--out", required=True, help="cache folder")
    cache.add_argument("--storage-dtype", default="float32", choices=["float32", "fp32", "float16", "fp16", "bfloat16", "bf16"])
    cache.add_argument("--shard-tokens", type=positive_int, default=SHARD_TOKENS, help=f"tokens per shard (default {SHARD_TOKENS})")
    cache.add_argument("--part", default="train", choices=["train", "eval", "all"], help="which documents: training part, held-out part or all")
    cache.add_argument("--resume", action="store_true", help="continue a killed run")
    cache.add_argument("--corpus-order", action="store_true", help="read contexts in corpus order instead of a seeded random order")
    cache.add_argument("--seed", type=int, default=0, help="seed of the context order")
    add_plan_arguments(cache, only=("model", "device", "dtype", "dataset", "text_field", "split", "context_size", "batch_contexts"),
                       set_defaults=True)
    cache.set_defaults(func=_cmd_cache)

    evaluate = commands.add_parser("eval", help="measure every SAE of a suite (table, eval.json, eval.csv, plots), or one SAE on an array")
    evaluate.add_argument("path", help="suite folder (suite.json), or an SAE folder with --data")
    evaluate.add_argument("--data", help="with an SAE folder: the vectors (.npy, .npz, .csv, .parquet, .h5ad or a folder of .npy shards)")
    evaluate.add_argument("--data-key", help="which array of --data (.npz name; .h5ad X, layers/NAME or obsm/NAME)")
    evaluate.add_argument("--metadata-columns", nargs="+", help="numeric columns of a .csv/.parquet --data that are metadata, as in training")
    evaluate.add_argument("--eval-tokens", type=positive_int, help="held-out tokens (default: the suite's)")
    evaluate.add_argument("--recompute", action="store_true", help="measure again even where training already did")
    evaluate.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    evaluate.add_argument("--max-fvu", type=positive_float, help="the bound at which the description-length plot marks each "
                          "hookpoint's MDL choice (default: saescope select's)")
    evaluate.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    evaluate.add_argument("--batch-size", type=positive_int, default=defaults(evaluate_sae)["batch_size"], help="vectors per batch with --data (default %(default)s)")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=_cmd_eval)

    from saescope.evaluation.selection import CRITERIA, DEFAULT_MAX_FVU

    choose = commands.add_parser("select", help="pick each hookpoint's SAE: the shortest description length (MDL) among those "
                                 "that reconstruct within --max-fvu, or by another column; say why each other SAE was out")
    choose.add_argument("path", help="a suite folder, or a folder of SAEs trained with --data (then give --data)")
    choose.add_argument("--by", choices=list(CRITERIA), default="mdl", help="the ranking (default %(default)s): "
                        + "; ".join(f"{k}: {v}" for k, v in CRITERIA.items()))
    choose.add_argument("--max-fvu", type=positive_float, default=DEFAULT_MAX_FVU,
                        help="the distortion bound ε: only SAEs with (quantised, for mdl) FVU ≤ ε are ranked (default %(default)s)")
    choose.add_argument("--data", help="for a folder of vector SAEs: held-out vectors to measure on (.npy, .npz, .csv, .parquet, .h5ad)")
    choose.add_argument("--data-key", help="which array of --data (.npz name; .h5ad X, layers/NAME or obsm/NAME)")
    choose.add_argument("--metadata-columns", nargs="+", help="numeric columns of a .csv/.parquet --data that are metadata")
    choose.add_argument("--eval-tokens", type=positive_int, help="for a suite: held-out tokens (default: the suite's)")
    choose.add_argument("--recompute", action="store_true", help="for a suite: measure again even where it was measured")
    choose.add_argument("--batch-size", type=positive_int, default=defaults(evaluate_sae)["batch_size"], help="vectors per batch (default %(default)s)")
    choose.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    choose.add_argument("--json", action="store_true")
    choose.set_defaults(func=_cmd_select)

    info = commands.add_parser("info", help="describe a suite or an SAE folder")
    info.add_argument("path")
    info.set_defaults(func=_cmd_info)

    interpret = commands.add_parser("interpret", help="top activations, histograms, logit effects and similar features for every SAE of a suite")
    interpret.add_argument("path", help="suite folder, or with --data an SAE folder (or a folder of them) trained on vectors")
    interpret.add_argument("--data", help="vectors to interpret an SAE folder on (.npy, .npz, .csv, .parquet, .h5ad, a folder); "
                           "writes per-feature top rows with metadata, enrichment (AUROC) per category, correlations and top loadings")
    interpret.add_argument("--data-key", help="which array of --data (.npz name; .h5ad X, layers/NAME or obsm/NAME)")
    interpret.add_argument("--metadata-columns", nargs="+", help="numeric columns of a .csv/.parquet --data that are metadata")
    interpret.add_argument("--image-shape", help="with --data of pixels: HxW (or HxWx3), e.g. 28x28; the browser then shows decoder rows "
                           "and top examples as images")
    interpret.add_argument("--tokens", type=positive_int, default=defaults(interpret_suite)["tokens"], help="tokens of text to run (default %(default)s)")
    interpret.add_argument("--top-k", type=positive_int, default=defaults(interpret_suite)["top_k"], help="top activating examples per feature (default %(default)s)")
    interpret.add_argument("--window", type=non_negative_int, default=defaults(interpret_suite)["window"],
                           help="tokens shown either side of each example's peak (default %(default)s)")
    interpret.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    interpret.set_defaults(func=_cmd_interpret)

    from saescope.evaluation.lineage import COSINE_THRESHOLD, JACCARD_THRESHOLD
    from saescope.suite.lineage import lineage_suite

    lineage = commands.add_parser("lineage", help="link features of per-layer SAEs across adjacent layers (decoder cosine and co-activation)")
    lineage.add_argument("path", help="suite folder with SAEs at several layers of one site")
    lineage.add_argument("--tokens", type=non_negative_int, default=defaults(lineage_suite)["tokens"],
                         help="held-out tokens for co-activation; 0: decoder cosines only, no model (default %(default)s)")
    lineage.add_argument("--cosine", type=fraction, default=COSINE_THRESHOLD, help="decoder cosine of a clear parent (default %(default)s)")
    lineage.add_argument("--jaccard", type=fraction, default=JACCARD_THRESHOLD,
                         help="co-activation (Jaccard) that makes a link strong on its own (default %(default)s)")
    lineage.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    lineage.set_defaults(func=_cmd_lineage)

    view = commands.add_parser("view", help="browse a suite's features in a local web app (or --export a static site)")
    view.add_argument("path", help="suite folder (run saescope interpret on it first)")
    view.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    view.add_argument("--port", type=number(int, 0, high=65535), default=8765, help="port to listen on (0 picks a free one; default 8765)")
    view.add_argument("--allow-host", action="append", metavar="NAME",
                      help="also answer requests addressed to this host name (default: the bound address and localhost only)")
    view.add_argument("--allow-remote", action="store_true", help="needed with a --host that is not loopback: the model becomes reachable")
    view.add_argument("--no-model", action="store_true", help="do not load the model (no prompt panel)")
    view.add_argument("--export", metavar="DIR", help="write a static site that works offline from file:// instead of serving")
    view.add_argument("--device", help="cuda or cpu for the prompt panel")
    view.set_defaults(func=_cmd_view)

    convert = commands.add_parser("convert", help="read a saescope, SAELens, Gemma Scope or circuit-tracer SAE or transcoder (path or hub id) "
                                  "and write it as saescope, SAELens or circuit-tracer")
    convert.add_argument("source", help="SAE folder, params.npz, a suite (with --to circuit-tracer), or hub id such as "
                                        "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    convert.add_argument("out", help="output folder")
    convert.add_argument("--to", choices=["saelens", "saescope", "circuit-tracer"], default="saescope",
                         help="circuit-tracer: a transcoder set (config.yaml + layer_L.safetensors) from a suite's transcoders at every layer")
    convert.add_argument("--overwrite", action="store_true", help="write into an output folder that already holds files")
    convert.add_argument("--set", help="with a suite and --to circuit-tracer: which transcoder set, e.g. transcoder-jumprelu-w4608-l0_32")
    convert.add_argument("--hookpoint", help="record this hookpoint (e.g. layers.20.resid_post) when the source does not say; "
                                             "for a circuit-tracer set or a Gemma Scope 2 transcoder, the layer's layers.L.mlp_out")
    convert.set_defaults(func=_cmd_convert)

    steer = commands.add_parser("steer", help="generate with and without SAE features added, clamped or ablated, side by side")
    steer.add_argument("--sae", required=True, help="SAE folder (saescope or SAELens), Gemma Scope params.npz, or hub id")
    steer.add_argument("--feature", type=int, nargs="+", required=True, help="feature index (several apply together)")
    steer.add_argument("--value", type=finite_float, nargs="+", default=[0.0], help="one value, or one per feature")
    steer.add_argument("--kind", choices=["add", "clamp", "ablate"], default="add")
    steer.add_argument("--unit", choices=["raw", "max"], default="raw", help="max: value in multiples of the feature's maximum activation (needs saescope interpret)")
    steer.add_argument("--positions", choices=["all", "prompt", "generated"], default="all")
    steer.add_argument("--prompt", required=True)
    steer.add_argument("--max-new-tokens", type=positive_int, default=40)
    steer.add_argument("--temperature", type=number(float, 0), default=0.7, help="0 for greedy decoding")
    steer.add_argument("--seed", type=int, default=0)
    steer.add_argument("--model", help="default: the model the SAE records")
    steer.add_argument("--hookpoint", help="default: the hookpoint the SAE records")
    steer.add_argument("--device")
    steer.set_defaults(func=_cmd_steer)

    demo = commands.add_parser("demo", help="train, evaluate, plot, interpret and link a small suite on the built-in model and corpus")
    demo.add_argument("--out", default="demo-suite", help="where the suite goes (default demo-suite)")
    demo.add_argument("--tokens", type=positive_int, help="training tokens (default: the demo's budget)")
    demo.add_argument("--bio", action="store_true", help="the biology demo instead: SAEs on 700 blood cells (scanpy's pbmc68k_reduced), "
                      "features matched to cell types and marker genes (out: demo-bio)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user mistake (``SaescopeError``) becomes one ``error:`` line; anything else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun: join its process group first
            from saescope.parallel import init_from_environment

            init_from_environment(getattr(args, "device", None))
        return args.func(args)
    except Interrupted as error:
        print(f"\n{error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except SaescopeError as error:
        raise SystemExit(f"error: {error}") from None
