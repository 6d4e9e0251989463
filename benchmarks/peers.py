"""saescope against EleutherAI sparsify and SAELens, side by side: same activations, same batch order, same budget.

    python benchmarks/peers.py [--envs ~/.cache/saescope-peers] [--work runs/peers] [--steps 219] [--targets 32 64]

1. Makes a virtual environment per peer under ``--envs`` (CPU torch first, then the pinned release), once.
2. Harvests the built-in model's activations (SmolLM2-135M, ``layers.10.resid_post``) over its whole
   training text (about 460K tokens), permuted, into ``WORK/train.npy``, once. The
   default budget of 219 steps × 4096 ≈ 900K tokens is then about two passes over it.
3. Trains every case in its own process (``benchmarks/peer_runners/``), one after another, each reading
   the same batches in the same order: sparsify's TopK (its default schedule-free SignSGD, and Adam),
   SAELens's JumpReLU and TopK (its ``SAETrainer``), and saescope's TopK, JumpReLU and BatchTopK with
   their defaults. Each reports tokens/s and wall time of its training loop and its peak resident memory.
4. Evaluates every SAE with one saescope evaluation on held-out text (L0, FVU, ΔLM loss, KL, unfired
   latents) and prints the table, with each trainer's speed as a ratio to the fastest peer that trains
   the same architecture. Results also go to ``WORK/peers.json``.

Run it alone: the trainers are timed one after another on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

RUNNERS = Path(__file__).parent / "peer_runners"
HOOKPOINT = "layers.10.resid_post"
PEERS = {
    "sparsify": ["eai-sparsify==1.3.3"],
    "saelens": ["sae-lens==6.54.12"],
}
# name: (environment, runner, architecture, variant, extra arguments)
CASES = {
    "sparsify-topk": ("sparsify", "sparsify_topk.py", "topk", "default", []),
    "sparsify-topk-adam": ("sparsify", "sparsify_topk.py", "topk", "adam", []),
    "saelens-jumprelu": ("saelens", "saelens_train.py", "jumprelu", "default", []),
    "saelens-topk": ("saelens", "saelens_train.py", "topk", "default", []),
    "saescope-topk": (None, "saescope_train.py", "topk", "default", []),
    "saescope-jumprelu": (None, "saescope_train.py", "jumprelu", "default", []),
    "saescope-batchtopk": (None, "saescope_train.py", "batchtopk", "default", []),
    # JumpReLU variants measured for the quality target (not in the default run)
    "saescope-jumprelu-quadratic": (None, "saescope_train.py", "jumprelu", "quadratic", ["--option", "sparsity_loss='quadratic'"]),
}
DEFAULT_CASES = ["sparsify-topk", "sparsify-topk-adam", "saelens-jumprelu", "saelens-topk", "saescope-topk", "saescope-jumprelu", "saescope-batchtopk"]
PEER_OF = {"topk": "sparsify-topk", "batchtopk": "sparsify-topk", "jumprelu": "saelens-jumprelu"}
"""The fastest peer for each architecture, which the speed ratio divides by."""


def derived_cases(options: list[str]) -> list[str]:
    """Register ``CASE[NAME=VALUE,...]`` for each saescope case given extra options on the command line."""
    extra: dict[str, list[str]] = {}
    for item in options:
        case, _, setting = item.partition(":")
        if case not in CASES or CASES[case][0] is not None or "=" not in setting:
            raise SystemExit(f"--option {item!r}: give CASE:NAME=VALUE with a saescope case, e.g. saescope-jumprelu:lr=4e-3")
        extra.setdefault(case, []).append(setting)
    names = []
    for case, settings in extra.items():
        env, runner, architecture, variant, arguments = CASES[case]
        name = f"{case}[{','.join(settings)}]"
        CASES[name] = (env, runner, architecture, variant, [*arguments, *(a for s in settings for a in ("--option", s))])
        names.append(name)
    return names


def environment_python(envs: Path, name: str | None) -> str:
    """The interpreter of a peer's environment, made on first use (saescope's own for None)."""
    if name is None:
        return sys.executable
    folder = envs / name
    python = folder / "bin" / "python"
    ready = folder / ".ready"
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    wanted = " ".join([torch_pin, *PEERS[name]])
    if ready.exists() and ready.read_text() == wanted:
        return str(python)
    print(f"[peers] making {folder} with {wanted} (once; a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, torch_pin], check=True)  # the CPU wheel first, so the peer does not pull CUDA builds
    subprocess.run([*pip, *PEERS[name]], check=True)
    ready.write_text(wanted)
    return str(python)


def harvest(work: Path, n_tokens: int) -> Path:
    """Up to ``n_tokens`` rows of the built-in model's activations at HOOKPOINT (all its training text if less), shuffled."""
    path = work / "train.npy"
    if path.exists():
        return path
    from saescope.data.lm_config import LmDataConfig
    from saescope.data.tokens import TextContexts
    from saescope.lm.models import load_model
    from saescope.lm.stream import ModelActivationSource

    print(f"[peers] harvesting {n_tokens:,} tokens of {HOOKPOINT} (about {n_tokens / 1800 / 60:.0f} min on 2 cores)", flush=True)
    started = time.perf_counter()
    loaded = load_model("smollm2-135m", device="cpu")
    data = LmDataConfig()
    contexts = TextContexts(data.dataset, loaded.tokenizer, data.context_size, part="train", eval_fraction=data.eval_fraction)
    source = ModelActivationSource(loaded, contexts, [HOOKPOINT], batch_contexts=data.batch_contexts, shuffle_buffer_tokens=65_536)
    rows = source.head(n_tokens)[HOOKPOINT].float().numpy()
    # The buffer mixes only nearby text; a seeded permutation of all rows makes consecutive batches i.i.d.,
    # as a trainer's own shuffle would (the runners read the file in order, so every trainer sees the same batches).
    rows = rows[np.random.default_rng(0).permutation(rows.shape[0])]
    partial = path.with_suffix(".partial.npy")
    np.save(partial, np.ascontiguousarray(rows))
    os.replace(partial, path)
    print(f"[peers] harvested {rows.shape[0]:,} tokens in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def train_case(name: str, envs: Path, work: Path, data: Path, l0: int, steps: int, batch: int, width: int) -> dict:
    env, runner, architecture, variant, extra = CASES[name]
    out = work / f"{name}@{l0}"
    result_file = out / "result.json"
    if result_file.exists():
        result = json.loads(result_file.read_text())
        if result.get("steps") == steps and result.get("batch") == batch:
            print(f"[peers] {name}@{l0}: kept from {result_file}")
            return result
    out.mkdir(parents=True, exist_ok=True)
    command = [environment_python(envs, env), str(RUNNERS / runner), "--data", str(data), "--out", str(out), "--arch", architecture,
               "--l0", str(l0), "--width", str(width), "--batch", str(batch), "--steps", str(steps), "--variant", variant, *extra]
    print(f"[peers] training {name}@{l0} ...", flush=True)
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{name}@{l0} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    result = json.loads(result_file.read_text())
    print(f"[peers] {name}@{l0}: {result['tokens_per_second']:,.0f} tok/s, {result['train_seconds']:.0f} s, "
          f"peak RSS {result['peak_rss_mb']:,.0f} MB", flush=True)
    return result


def load_trained(name: str, work: Path, l0: int, hookpoint: str):  # noqa: ANN201 - a SparseAutoencoder
    """The SAE a case wrote, as a saescope module that takes raw activations."""
    from saescope.io.interop.formats import load_saelens
    from saescope.io.interop.loading import load_sae
    from saescope.saes import create_sae

    out = work / f"{name}@{l0}"
    if (out / "saescope").exists():
        sae = load_sae(out / "saescope")
    elif (out / "saelens").exists():
        sae = load_saelens(out / "saelens")
    else:
        saved = torch.load(out / "sae.pt", weights_only=True)
        tensors = saved["tensors"]
        sae = create_sae("topk", tensors["W_enc"].shape[0], tensors["W_enc"].shape[1], k=saved["k"])
        sae.load_export_tensors(tensors)
    sae.cfg.hookpoint = hookpoint
    return sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=Path, default=Path.home() / ".cache" / "saescope-peers", help="where the peers' environments live")
    parser.add_argument("--work", type=Path, default=Path("runs/peers"), help="activations, trained SAEs and results")
    parser.add_argument("--steps", type=int, default=219, help="training steps (219 × 4096 ≈ 900K tokens)")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--targets", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES))
    parser.add_argument("--option", action="append", default=[], metavar="CASE:NAME=VALUE",
                        help="an extra saescope option for one saescope case, e.g. saescope-jumprelu:lr=4e-3 (the case is then named with it)")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    args = parser.parse_args()
    args.cases = [*args.cases, *derived_cases(args.option)]
    args.work.mkdir(parents=True, exist_ok=True)
    data = harvest(args.work, args.steps * args.batch)
    results = {}
    for l0 in args.targets:
        for name in args.cases:
            results[f"{name}@{l0}"] = train_case(name, args.envs, args.work, data, l0, args.steps, args.batch, args.width)

    from saescope.data.lm_config import LmDataConfig
    from saescope.evaluation.on_model import evaluate_on_model
    from saescope.lm.models import load_model

    print(f"[peers] evaluating {len(results)} SAEs on {args.eval_tokens:,} held-out tokens", flush=True)
    saes = {key: load_trained(key.split("@")[0], args.work, int(key.split("@")[1]), HOOKPOINT) for key in results}
    metrics = evaluate_on_model(load_model("smollm2-135m", device="cpu"), saes, LmDataConfig(), args.eval_tokens, description_length=False)
    for key, values in metrics.items():
        results[key]["eval"] = {m: values.get(m) for m in ("l0", "fvu", "delta_lm_loss", "kl", "unfired_fraction", "dense_fraction")}
    (args.work / "peers.json").write_text(json.dumps(results, indent=2))
    print_table(results, args)


def print_table(results: dict, args: argparse.Namespace) -> None:
    harvested = np.load(args.work / "train.npy", mmap_mode="r").shape[0]
    print(f"\n{HOOKPOINT} of SmolLM2-135M, width {args.width}, batch {args.batch}, {args.steps} steps "
          f"({args.steps * args.batch:,} tokens: {args.steps * args.batch / harvested:.2f} passes over {harvested:,}), "
          f"{torch.get_num_threads()} threads; held-out {args.eval_tokens:,} tokens\n")
    print("| trainer | target L0 | L0 | FVU | ΔLM loss | KL | unfired | tokens/s | ×peer | train s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, row in results.items():
        name, l0 = key.split("@")
        peer = results.get(f"{PEER_OF.get(row['arch'], '')}@{l0}")
        ratio = row["tokens_per_second"] / peer["tokens_per_second"] if peer else float("nan")
        e = row.get("eval", {})
        print(f"| {name} | {l0} | {e.get('l0', float('nan')):.1f} | {e.get('fvu', float('nan')):.3f} | {e.get('delta_lm_loss', float('nan')):.3f} "
              f"| {e.get('kl', float('nan')):.3f} | {e.get('unfired_fraction', float('nan')):.1%} | {row['tokens_per_second']:,.0f} "
              f"| {ratio:.2f} | {row['train_seconds']:.0f} | {row['peak_rss_mb']:,.0f} |")
    print("\n×peer: tokens/s divided by the peer's for the same architecture (TopK and BatchTopK: sparsify's default; JumpReLU: SAELens).")


if __name__ == "__main__":
    main()
