"""saescope's training on a CUDA GPU: the card's ceilings, the SAE step beside EleutherAI sparsify's, from a cache, from a live model.

    python benchmarks/gpu.py                       # on a machine with a CUDA GPU (and eai-sparsify for the peer rows)
    python benchmarks/gpu.py --model-dir DIR       # also the live-model rows: a model folder (config.json + tokenizer)
    python benchmarks/gpu.py --device cpu --quick  # the same code paths, tiny, on the CPU (a smoke test)

Sections, each printed as a table and written to ``--json``:
1. Ceilings measured in this run: bf16 and TF32 matmul (8192³), exact float32, pinned host-to-device copy.
2. The SAE step on batches already on the GPU (the trainers alone): saescope TopK (TF32, and bf16
   autocast), BatchTopK, JumpReLU, the dense step for reference, and sparsify's TopK step as its
   ``Trainer.fit`` does it (its forward is wrapped in bf16 autocast by sparsify itself; schedule-free
   SignSGD), on the same rows in the same order. tokens/s, the ratio to sparsify, and TFLOP/s counted as
   the sparse step performs them (2·n·d·w for the dense encoder forward + 8·n·k·d for the sparse encoder
   backward and the decode) as a fraction of the TF32 (or bf16) matmul rate measured in section 1.
3. From an activation cache on disk (saescope's cache format), with the trainer's read-ahead thread and
   side-stream copies, and without them (batches read and copied on the trainer's thread).
4. From a live model (the folder's architecture; its weights are random when the folder has none, which
   does not change the speed): model forward + harvest + training, with bf16 autocast of a float32
   model's forward, without it, and with the model in bf16.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peer_runners"))

from sparsify_topk import sparsify_step  # noqa: E402

from saescope.jobs import create_job  # noqa: E402
from saescope.training import TrainConfig, Trainer  # noqa: E402
from saescope.training import trainer as trainer_module  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``function`` over ``repeats`` runs after two warm-ups."""
    for _ in range(2):
        function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


# -- 1. ceilings ------------------------------------------------------------------------------------
def ceilings(device: torch.device, quick: bool) -> dict[str, float]:
    n = 512 if quick else 8192
    out = {}
    for name, dtype, tf32 in (("bf16_matmul_tflops", torch.bfloat16, False), ("tf32_matmul_tflops", torch.float32, True),
                              ("fp32_matmul_tflops", torch.float32, False)):
        size = n if name != "fp32_matmul_tflops" or quick else 4096
        a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
        seconds = timed(lambda: a @ b, device, 10)
        out[name] = 2 * size**3 / seconds / 1e12
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        host = torch.empty(2**26, dtype=torch.float32).pin_memory()  # 256 MiB
        seconds = timed(lambda: host.to(device, non_blocking=True), device, 10)
        out["h2d_pinned_gb_s"] = host.numel() * 4 / seconds / 1e9
    return out


# -- 2. the step on resident batches ---------------------------------------------------------------
def structured_rows(n: int, d: int, device: torch.device, seed: int) -> torch.Tensor:
    """``n`` rows with a decaying spectrum (a few dominant directions, as residual streams have), made on ``device``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    basis = torch.randn(d, d, generator=generator, device=device) * torch.logspace(0, -2, d, device=device).unsqueeze(1)
    return torch.randn(n, d, generator=generator, device=device) @ basis


def step_flops(n: int, d: int, width: int, k: float) -> float:
    return 2 * n * d * width + 8 * n * k * d


class StepClock:
    """Wall time between the first and the last of the trainer's log steps (each one synchronises with the device)."""

    def __init__(self) -> None:
        self.marks: list[tuple[int, float]] = []

    def __call__(self, step: int, _metrics: dict) -> None:
        self.marks.append((step, time.perf_counter()))

    def tokens_per_second(self, batch: int) -> float:
        (first_step, first), (last_step, last) = self.marks[0], self.marks[-1]
        return (last_step - first_step) * batch / (last - first)


def saescope_case(data: torch.Tensor, arch: str, width: int, k: int, batch: int, steps: int, device: torch.device,
                  log_every: int, **options: Any) -> dict[str, float]:
    autocast = options.pop("step_autocast", None)
    torch.manual_seed(0)
    d_in = data.d_in if hasattr(data, "d_in") else data.shape[1]
    job = create_job(arch, d_in, width, target_l0=float(k), name=arch, **options)
    config = TrainConfig(total_tokens=steps * batch, batch_size=batch, shuffle=False, progress=False, logger="none", device=str(device),
                         log_every=log_every, normalization_tokens=min(65_536, steps * batch), step_autocast=autocast)
    trainer = Trainer([job], config)
    clock = StepClock()
    trainer.add_callback(clock)
    trained = trainer.fit(data)
    metrics = trained[arch].training_summary["final_train_metrics"]
    return {"tokens_per_s": clock.tokens_per_second(batch), "l0": metrics["l0"], "fvu": metrics["fvu"]}


def import_sparsify() -> dict[str, Any] | None:
    """sparsify's model and optimiser, or None when it is not installed.

    Its package ``__init__`` imports its dataset pipeline (``datasets``); where that is missing (an
    offline GPU machine), the step's own modules are imported without it.
    """
    spec = importlib.util.find_spec("sparsify")
    if spec is None or importlib.util.find_spec("schedulefree") is None:
        return None
    try:
        import sparsify  # noqa: F401
    except ImportError:
        package = types.ModuleType("sparsify")
        package.__path__ = list(spec.submodule_search_locations or [])
        sys.modules["sparsify"] = package
    from schedulefree import ScheduleFreeWrapper
    from sparsify.config import SparseCoderConfig
    from sparsify.sign_sgd import SignSGD
    from sparsify.sparse_coder import SparseCoder

    return {"SparseCoder": SparseCoder, "SparseCoderConfig": SparseCoderConfig, "SignSGD": SignSGD, "ScheduleFreeWrapper": ScheduleFreeWrapper}


def sparsify_case(data: torch.Tensor, width: int, k: int, batch: int, steps: int, device: torch.device, peer: dict[str, Any],
                  warmup: int) -> dict[str, float]:
    """sparsify's TopK step exactly as ``benchmarks/peer_runners/sparsify_topk.py`` (its ``Trainer.fit``), on ``device``."""
    torch.manual_seed(0)
    sae = peer["SparseCoder"](data.shape[1], peer["SparseCoderConfig"](num_latents=width, k=k), device=device, dtype=torch.float32)
    scale = (width / 2**14) ** 0.5
    optimizer = peer["ScheduleFreeWrapper"](peer["SignSGD"]([dict(params=sae.parameters(), lr=5e-3 / scale)]), momentum=0.95)
    optimizer.train()
    tokens_since_fired = torch.zeros(width, dtype=torch.long, device=device)
    did_fire = torch.zeros(width, dtype=torch.bool, device=device)
    per_epoch = data.shape[0] // batch
    sae.b_dec.data = data[:batch].mean(0)

    def step(index: int) -> Any:
        x = data[(index % per_epoch) * batch:(index % per_epoch + 1) * batch]
        return sparsify_step(sae, optimizer, x, did_fire, tokens_since_fired)

    for index in range(warmup):
        step(index)
    synchronize(device)
    start = time.perf_counter()
    for index in range(warmup, steps):
        out = step(index)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": (steps - warmup) * batch / seconds, "l0": float(k), "fvu": float(out.fvu.detach())}


def step_section(device: torch.device, quick: bool, peak: dict[str, float], only: list[str] | None = None) -> list[dict[str, Any]]:
    shapes = [(64, 256, 16, 512, 30)] if quick else [(2304, 16384, 64, 4096, 300), (576, 4608, 32, 4096, 300)]
    peer = import_sparsify()
    rows = []
    for d, width, k, batch, steps in shapes:
        data = structured_rows(min(steps, 64) * batch, d, device, seed=0)
        log_every = max(1, steps // 6)
        def case(arch: str, **options: Any) -> Callable[[], dict[str, float]]:
            return lambda: saescope_case(data, arch, width, k, batch, steps, device, log_every, **options)

        cases: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("saescope topk, default step (tf32)", case("topk")),
            ("saescope topk, default step (bf16 autocast)", case("topk", step_autocast="bfloat16")),
            ("saescope topk, sparse step (tf32)", case("topk", sparse_step=True)),
            ("saescope topk, dense step (tf32)", case("topk", sparse_step=False)),
            ("saescope topk, no AuxK, sparse step (tf32)", case("topk", sparse_step=True, aux_coefficient=0.0)),
            ("saescope topk, no AuxK, dense step (tf32)", case("topk", sparse_step=False, aux_coefficient=0.0)),
            ("saescope topk, no AuxK, sparse step (bf16 autocast)", case("topk", sparse_step=True, aux_coefficient=0.0,
                                                                         step_autocast="bfloat16")),
            ("saescope batchtopk, default step (tf32)", case("batchtopk")),
            ("saescope jumprelu, default step (tf32)", case("jumprelu")),
            ("saescope jumprelu, default step (bf16 autocast)", case("jumprelu", step_autocast="bfloat16")),
        ]
        if peer is not None:
            cases.insert(0, ("sparsify topk (its bf16 autocast)", lambda: sparsify_case(data, width, k, batch, steps, device, peer, log_every)))
        if only:
            cases = [(name, run) for name, run in cases if any(word in name for word in only)]
        reference = None
        for name, run in cases:
            row: dict[str, Any] = {"shape": f"d {d}, width {width}, k {k}, batch {batch}", "case": name}
            try:
                row.update(run())
            except Exception as error:  # one failing case must not hide the others' figures
                row["error"] = f"{type(error).__name__}: {error}"[:300]
                rows.append(row)
                print(f"  {name}: FAILED {row['error']}", flush=True)
                continue
            if name.startswith("sparsify"):
                reference = row["tokens_per_s"]
            row["vs_sparsify"] = row["tokens_per_s"] / reference if reference else None
            tflops = step_flops(batch, d, width, row["l0"]) * row["tokens_per_s"] / batch / 1e12
            rate = peak.get("bf16_matmul_tflops" if "bf16" in name else "tf32_matmul_tflops")
            row["tflops"] = tflops
            row["of_peak"] = tflops / rate if rate else None
            rows.append(row)
            print(f"  {row['shape']}: {name}: {row['tokens_per_s']:,.0f} tok/s", flush=True)
    return rows


# -- 3. from a cache ---------------------------------------------------------------------------------
def cache_section(device: torch.device, quick: bool, folder: Path) -> list[dict[str, Any]]:
    from saescope.data.cache import CachedActivations, CacheWriter

    d, width, k, batch = (64, 256, 16, 512) if quick else (2304, 16384, 64, 4096)
    n_tokens, shard = (8192, 2048) if quick else (524_288, 131_072)
    steps = 24 if quick else 300
    writer = CacheWriter(folder, {"blocks.0": d}, "bfloat16", {"model": "synthetic", "dataset": "synthetic", "context_size": 128})
    for index in range(n_tokens // shard):
        writer.write_shard({"blocks.0": structured_rows(shard, d, device, seed=1 + index).cpu()}, index + 1, f"{index}")
    writer.finish()
    rows = []
    original = trainer_module.to_device_ahead
    for name, ahead in (("read-ahead thread + side-stream copies", True), ("read and copied on the trainer's thread", False)):
        trainer_module.to_device_ahead = original if ahead else (lambda batches, device, background=True: batches)
        try:
            row = saescope_case(CachedActivations(folder), "topk", width, k, batch, steps, device, max(1, steps // 6))
        finally:
            trainer_module.to_device_ahead = original
        row.update(shape=f"d {d}, width {width}, k {k}, batch {batch}; bf16 cache of {n_tokens:,} tokens", case=f"saescope topk, {name}")
        rows.append(row)
        print(f"  cache: {name}: {row['tokens_per_s']:,.0f} tok/s", flush=True)
    return rows


# -- 4. from a live model ----------------------------------------------------------------------------
def live_section(device: torch.device, quick: bool, model_dir: Path) -> list[dict[str, Any]]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from saescope.data.tokens import TextContexts
    from saescope.lm.models import LoadedModel
    from saescope.lm.stream import ModelActivationSource

    config = AutoConfig.from_pretrained(model_dir)
    if quick:
        config.num_hidden_layers, config.hidden_size, config.intermediate_size = 4, 64, 128
        config.num_attention_heads, config.num_key_value_heads = 4, 2
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hookpoint = "layers.2.resid_post" if quick else "layers.10.resid_post"
    width, k, batch = (256, 16, 512) if quick else (4608, 32, 4096)
    steps = 12 if quick else 120
    contexts = TextContexts("pydocs", tokenizer, 128, part="train")  # tokenised once, shared by the three runs
    rows = []
    for name, dtype, autocast in (("float32 model, bf16 autocast (default)", torch.float32, True),
                                  ("float32 model, no autocast", torch.float32, False), ("bf16 model", torch.bfloat16, False)):
        torch.manual_seed(0)
        has_weights = any(model_dir.glob("*.safetensors"))
        network = (AutoModelForCausalLM.from_pretrained(model_dir) if has_weights and not quick
                   else AutoModelForCausalLM.from_config(config)).to(dtype)
        loaded = LoadedModel(network.to(device).eval().requires_grad_(False), tokenizer, str(model_dir))
        source = ModelActivationSource(loaded, contexts, hookpoint, batch_contexts=128, shuffle_buffer_tokens=4 * batch, autocast=autocast)
        torch.manual_seed(0)
        job = create_job("topk", source.d_in[hookpoint], width, target_l0=k, name="topk", reads=hookpoint)
        train = TrainConfig(total_tokens=steps * batch, batch_size=batch, progress=False, logger="none", device=str(device),
                            log_every=max(1, steps // 6), normalization_tokens=4 * batch)
        trainer = Trainer([job], train)
        clock = StepClock()
        trainer.add_callback(clock)
        trained = trainer.fit(source)
        metrics = trained["topk"].training_summary["final_train_metrics"]
        row = {"shape": f"{config.model_type}, {config.num_hidden_layers} layers, d {config.hidden_size} → {hookpoint}; topk w {width} k {k}",
               "case": name, "tokens_per_s": clock.tokens_per_second(batch), "l0": metrics["l0"], "fvu": metrics["fvu"],
               "weights": "trained" if has_weights and not quick else "random"}
        rows.append(row)
        print(f"  live: {name}: {row['tokens_per_s']:,.0f} tok/s", flush=True)
        del loaded, network, source, trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# -- report --------------------------------------------------------------------------------------------
def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    shape = None
    for row in rows:
        if row["shape"] != shape:
            shape = row["shape"]
            print(f"  [{shape}]")
            print(f"    {'case':<58}{'tokens/s':>12}{'vs sparsify':>13}{'TFLOP/s':>9}{'of peak':>9}{'L0':>7}{'FVU':>8}")
        if "error" in row:
            print(f"    {row['case']:<58}  FAILED: {row['error']}")
            continue
        ratio = f"{row['vs_sparsify']:.2f}x" if row.get("vs_sparsify") else "-"
        tflops = f"{row['tflops']:.1f}" if "tflops" in row else "-"
        of_peak = f"{100 * row['of_peak']:.1f}%" if row.get("of_peak") else "-"
        print(f"    {row['case']:<58}{row['tokens_per_s']:>12,.0f}{ratio:>13}{tflops:>9}{of_peak:>9}{row['l0']:>7.1f}{row['fvu']:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test of the code paths)")
    parser.add_argument("--model-dir", type=Path, help="a model folder (config.json and a tokenizer) for the live-model rows")
    parser.add_argument("--sections", default="ceilings,step,cache,live")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--cases", help="step section: only the cases whose name contains one of these comma-separated words")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --device cpu --quick for a smoke test")
    sections = set(args.sections.split(","))
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__}
    print(f"device: {report['device']}, torch {torch.__version__}", flush=True)
    if "ceilings" in sections:
        report["ceilings"] = ceilings(device, args.quick)
        print("ceilings: " + ", ".join(f"{k} {v:,.1f}" for k, v in report["ceilings"].items()), flush=True)
    if "step" in sections:
        report["step"] = step_section(device, args.quick, report.get("ceilings", {}), args.cases.split(",") if args.cases else None)
    if "cache" in sections:
        with tempfile.TemporaryDirectory() as folder:
            report["cache"] = cache_section(device, args.quick, Path(folder) / "cache")
    if "live" in sections and args.model_dir is not None:
        report["live"] = live_section(device, args.quick, args.model_dir)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    for key, title in (("step", "The SAE step, batches resident on the device"), ("cache", "From an activation cache on disk"),
                       ("live", "From a live model")):
        if key in report:
            print_table(title, report[key])


if __name__ == "__main__":
    main()
