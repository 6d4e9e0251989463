"""``saescope experts profile|steer|evaluate|list`` and ``saescope bench experts``: thin wrappers over
``saescope.experts`` (MoTE-style expert profiling and switching in mixture-of-experts models)."""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

from saescope.cli_types import number, positive_int
from saescope.errors import InvalidInput


def _load(args: argparse.Namespace) -> Any:
    from saescope.lm.models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype)


def _cmd_list(args: argparse.Namespace) -> int:
    from saescope.experts import describe_moe, find_moe_layers

    layers = find_moe_layers(_load(args).model)
    if args.json:
        print(json.dumps([vars(layer) for layer in layers], indent=1, default=str))
        return 0
    print(describe_moe(layers))
    for layer in layers:
        shared = f", shared {layer.shared}" if layer.shared else ""
        print(f"  layer {layer.layer}: router {layer.router}, experts {layer.experts} ({layer.n_experts}, top-{layer.top_k}){shared}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from saescope.experts.profile import format_profile
    from saescope.experts.run import run_profile

    profile, written = run_profile(_load(args), args.behaviour, args.control, args.out, top=args.top_marked, generated=args.generated,
                                   max_new_tokens=args.max_new_tokens, draws=args.bootstrap, seed=args.seed, rank_by=args.rank_by,
                                   text_field=args.text_field, batch_size=args.batch_size, progress=not args.json)
    if args.json:
        print(json.dumps(profile.ranked()[:args.top], indent=1))
        return 0
    print(format_profile(profile, top=args.top))
    print(f"\nwrote {written['profile']} and {written['heatmap']}")
    return 0


def _experts_to_switch(args: argparse.Namespace, attribute: str) -> list[tuple[int, int]]:
    from saescope.experts import parse_experts

    experts = parse_experts(getattr(args, attribute) or [], where=f"--{attribute}")
    if args.profile and attribute == args.profile_switch:
        from saescope.experts.profile import ExpertProfile

        experts = ExpertProfile.load(args.profile).top(args.top_n) + experts
    return experts


def _side_by_side(prompt: str, left: str, right: str, titles: tuple[str, str]) -> str:
    width = max(30, (shutil.get_terminal_size((120, 20)).columns - 3) // 2)
    blocks = [[title, "-" * min(width, len(title))] + textwrap.wrap(text.replace("\n", " ⏎ "), width) for title, text in zip(titles, (left, right))]
    rows = [f"prompt: {prompt!r}", ""]
    for i in range(max(len(b) for b in blocks)):
        cells = [b[i] if i < len(b) else "" for b in blocks]
        rows.append(f"{cells[0]:<{width}} | {cells[1]}")
    return "\n".join(rows)


def _cmd_steer(args: argparse.Namespace) -> int:
    from saescope.experts.prompts import read_prompts
    from saescope.experts.run import steer_side_by_side

    if bool(args.prompt) == bool(args.prompts):
        raise InvalidInput("give --prompt TEXT or --prompts FILE")
    prompts = [args.prompt] if args.prompt else read_prompts(args.prompts, args.text_field, where="--prompts")
    off, on = _experts_to_switch(args, "off"), _experts_to_switch(args, "on")
    results = steer_side_by_side(_load(args), prompts, off, on, args.positions, args.max_new_tokens, args.seed, args.temperature)
    what = ", ".join(filter(None, [f"off {len(off)}: " + " ".join(f"{l}:{e}" for l, e in off) if off else "",
                                   f"on {len(on)}: " + " ".join(f"{l}:{e}" for l, e in on) if on else ""]))
    if args.json:
        print(json.dumps([vars(r) for r in results], indent=1))
        return 0
    for result in results:
        print(_side_by_side(result.prompt, result.unsteered, result.steered, ("unsteered", f"experts switched ({what})")))
        print()
    print(f"seed {args.seed}, the same for both columns; positions {args.positions}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from saescope.experts.evaluate import format_evaluation
    from saescope.experts.run import run_evaluation
    from saescope.experts.scorers import make_scorer

    scorer = make_scorer(regex=args.regex, phrases=args.phrases, scorer=args.scorer)
    evaluation = run_evaluation(_load(args), args.profile, args.prompts, scorer, out=args.out, top_n=args.top_n,
                                random_draws=args.random_draws, neutral=args.neutral, max_new_tokens=args.max_new_tokens,
                                seed=args.seed, text_field=args.text_field, progress=not args.json)
    if args.json:
        print(json.dumps(evaluation.to_dict(), indent=1))
        return 0
    print(format_evaluation(evaluation))
    if args.out:
        print(f"\nwrote {Path(args.out) / 'evaluation.json'}")
    return 0


def _cmd_bench_experts(args: argparse.Namespace) -> int:
    from saescope.synthetic.experts_bench import (
        format_experts_bench,
        run_experts_benchmark,
    )
    from saescope.synthetic.planted_moe import PlantedMoeConfig

    config = PlantedMoeConfig(seed=args.seed, **({"steps": args.steps} if args.steps else {}))
    result = run_experts_benchmark(config, random_draws=args.random_draws, progress=not args.json)
    if args.out:
        from saescope.experts.run import write_profile

        write_profile(result["profile"], args.out, top=len(result["planted"]))
        result["evaluation"].save(Path(args.out) / "evaluation.json")
    if args.json:
        printable = {k: v for k, v in result.items() if k not in ("profile", "evaluation")}
        printable["evaluation"] = result["evaluation"].to_dict()
        print(json.dumps(printable, indent=1, default=list))
        return 0
    print(format_experts_bench(result))
    return 0


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="an MoE model: hub id (e.g. allenai/OLMoE-1B-7B-0125-Instruct) or local folder")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    parser.add_argument("--dtype", help="float32 (default), bfloat16 or float16")
    parser.add_argument("--text-field", default="text", help="field holding the text in .jsonl prompt files (default text)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_experts_commands(commands: argparse._SubParsersAction, bench_kinds: argparse._SubParsersAction) -> None:
    experts = commands.add_parser("experts", help="profile, switch and evaluate the routed experts of a mixture-of-experts model (MoTE)")
    kinds = experts.add_subparsers(dest="experts", required=True)

    listing = kinds.add_parser("list", help="the model's MoE layers, routers and experts")
    _model_arguments(listing)
    listing.set_defaults(func=_cmd_list)

    profile = kinds.add_parser("profile", help="which experts are distinctive for a behaviour: rates, difference, risk ratio, NPMI, "
                               "bootstrap intervals; writes experts.json and experts.png")
    _model_arguments(profile)
    profile.add_argument("--behaviour", required=True, help="prompts that elicit the behaviour (.txt one per line, or .jsonl)")
    profile.add_argument("--control", required=True, help="prompts that do not")
    profile.add_argument("--out", default="experts", help="output folder (default experts)")
    profile.add_argument("--generated", action="store_true", help="count only the tokens the model generates (greedy) after each prompt")
    profile.add_argument("--max-new-tokens", type=positive_int, default=32, help="with --generated (default 32)")
    profile.add_argument("--rank-by", choices=["diff", "risk_ratio", "npmi"], default="diff")
    profile.add_argument("--bootstrap", type=positive_int, default=1000, help="resamples of prompts for the intervals (default 1000)")
    profile.add_argument("--seed", type=int, default=0)
    profile.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward (default 8)")
    profile.add_argument("--top", type=positive_int, default=20, help="rows of the printed table (default 20)")
    profile.add_argument("--top-marked", type=positive_int, default=10, help="experts ringed on the heat map (default 10)")
    profile.set_defaults(func=_cmd_profile)

    steer = kinds.add_parser("steer", help="generate with and without experts switched off or forced on, side by side")
    _model_arguments(steer)
    steer.add_argument("--prompt", help="one prompt")
    steer.add_argument("--prompts", help="a prompt file (.txt one per line, or .jsonl)")
    steer.add_argument("--off", nargs="+", metavar="LAYER:EXPERT", help="experts to switch off, e.g. 3:17 5:2,9")
    steer.add_argument("--on", nargs="+", metavar="LAYER:EXPERT", help="experts to force on")
    steer.add_argument("--profile", help="experts.json: add its top-N experts (--top-n) to --off, or to --on with --profile-switch on")
    steer.add_argument("--profile-switch", choices=["off", "on"], default="off")
    steer.add_argument("--top-n", type=positive_int, default=10)
    steer.add_argument("--positions", choices=["all", "prompt", "generated"], default="all")
    steer.add_argument("--max-new-tokens", type=positive_int, default=40)
    steer.add_argument("--temperature", type=number(float, 0), default=0.7, help="0 for greedy decoding")
    steer.add_argument("--seed", type=int, default=0)
    steer.set_defaults(func=_cmd_steer)

    evaluate = kinds.add_parser("evaluate", help="behaviour rate with the top-N experts off, N random experts off and the top-N "
                                "forced on; KL and perplexity on neutral text")
    _model_arguments(evaluate)
    evaluate.add_argument("--profile", required=True, help="experts.json (or its folder) from saescope experts profile")
    evaluate.add_argument("--prompts", required=True, help="held-out prompts to score")
    evaluate.add_argument("--regex", help="the behaviour: a regular expression found in the continuation")
    evaluate.add_argument("--phrases", help="the behaviour: a file of phrases, one per line, any contained")
    evaluate.add_argument("--scorer", help="the behaviour: MODULE:FUNCTION taking the continuation, returning a bool")
    evaluate.add_argument("--neutral", help="neutral text (one per line) for KL and perplexity")
    evaluate.add_argument("--top-n", type=positive_int, default=10)
    evaluate.add_argument("--random-draws", type=positive_int, default=5)
    evaluate.add_argument("--max-new-tokens", type=positive_int, default=32)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", help="folder for evaluation.json")
    evaluate.set_defaults(func=_cmd_evaluate)

    bench = bench_kinds.add_parser("experts", help="expert profiling and switching on a tiny MoE trained with a planted refusal")
    bench.add_argument("--steps", type=positive_int, help="training steps (default 250)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--random-draws", type=positive_int, default=5)
    bench.add_argument("--out", help="also write experts.json, experts.png and evaluation.json here")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=_cmd_bench_experts)
