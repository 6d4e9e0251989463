"""Ground-truth recovery benchmark: train every architecture at a matched L0 on synthetic data.

For each data variant, all architectures train together in one pass (one Trainer, same batches),
then each is measured on held-out activations: L0, FVU, MMCS, the fraction of true features
recovered (best decoder cosine > 0.9) and the dead fraction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from saescope.errors import InvalidInput
from saescope.evaluation.ground_truth import ground_truth_metrics
from saescope.evaluation.metrics import evaluate_sae
from saescope.jobs import SaeJob, create_job
from saescope.synthetic.synthetic import VARIANTS, SyntheticActivations, SyntheticConfig
from saescope.training import TrainConfig, Trainer

# name -> (architecture, options); the target L0 is filled in per run.
BENCH_ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "jumprelu": ("jumprelu", {}),
    "jumprelu-tanh": ("jumprelu", {"objective": "jumprelu_tanh"}),
    "relu": ("relu", {}),
    "gated": ("gated", {}),
    "topk": ("topk", {}),
    "batchtopk": ("batchtopk", {}),
    "jumprelu-logthreshold": ("jumprelu", {"threshold_param": "log"}),
    "mutual_choice": ("mutual_choice", {}),
    "feature_choice": ("feature_choice", {}),
    "feature_choice-zipf": ("feature_choice", {"capacity": "zipf"}),
    "topk-aux_zipf": ("topk", {"aux_target": "zipf"}),
    "matryoshka": ("matryoshka", {}),
}
DEFAULT_ARCHITECTURES = ("jumprelu", "jumprelu-tanh", "relu", "gated", "topk", "batchtopk")


@dataclass
class RecoveryBenchConfig:
    variants: tuple[str, ...] = VARIANTS
    architectures: tuple[str, ...] = DEFAULT_ARCHITECTURES
    d_in: int = 64
    n_features: int = 256
    true_l0: float = 4.0
    """Expected active ground-truth features per token."""
    target_l0: float = 3.0
    """The L0 every SAE is trained to (k for the TopK family)."""
    d_sae: int = 512
    steps: int = 2000
    batch_size: int = 1024
    eval_tokens: int = 65_536
    seed: int = 0
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise InvalidInput(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
        unknown = [a for a in self.architectures if a not in BENCH_ARCHITECTURES]
        if unknown:
            raise InvalidInput(f"unknown architecture(s) {unknown}; choose from {list(BENCH_ARCHITECTURES)}")


def build_bench_jobs(config: RecoveryBenchConfig) -> dict[str, SaeJob]:
    jobs = {}
    for name in config.architectures:
        architecture, options = BENCH_ARCHITECTURES[name]
        jobs[name] = create_job(architecture, config.d_in, config.d_sae, name=name, **options, target_l0=config.target_l0)  # topk: k = round(target)
    return jobs


def run_recovery_benchmark(config: RecoveryBenchConfig | None = None) -> list[dict[str, Any]]:
    """One row per (variant, architecture): arch, variant, l0, fvu, the ground-truth measures
    (mmcs, recovered, mcc, uniqueness, precision, recall, f1; ``saescope.evaluation.ground_truth``), dead_fraction
    (no firing in the training run's dead window) and unfired_fraction (no firing on the held-out tokens)."""
    config = config or RecoveryBenchConfig()
    rows = []
    for variant in config.variants:
        data = SyntheticActivations(
            SyntheticConfig(d_in=config.d_in, n_features=config.n_features, mean_l0=config.true_l0, variant=variant, seed=config.seed)
        )
        torch.manual_seed(config.seed)
        train_config = TrainConfig(
            total_tokens=config.steps * config.batch_size,
            batch_size=config.batch_size,
            seed=config.seed,
            progress=config.progress,
            log_every=100,
            **config.extra,
        )
        started = time.perf_counter()
        trained = Trainer(list(build_bench_jobs(config).values()), train_config).fit(lambda data=data: data.stream(config.batch_size, seed=config.seed + 1))
        seconds = time.perf_counter() - started
        held_out, true_features = data.sample_with_features(config.eval_tokens, seed=config.seed + 10_000)
        for name, sae in trained.items():
            metrics = evaluate_sae(sae, held_out, description_length=False)
            truth = ground_truth_metrics(sae, data.directions, held_out, true_features > 0)
            rows.append(
                {
                    "arch": name,
                    "variant": variant,
                    "l0": metrics.l0,
                    "fvu": metrics.fvu,
                    **truth.to_dict(),
                    "dead_fraction": metrics.dead_fraction,
                    "unfired_fraction": metrics.unfired_fraction,
                    "train_seconds_all_archs": round(seconds, 1),
                }
            )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    header = f"{'variant':<13} {'arch':<22} {'L0':>6} {'FVU':>7} {'MMCS':>6} {'recovered':>9} {'MCC':>6} {'F1':>6} {'dead':>6}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['variant']:<13} {row['arch']:<22} {row['l0']:>6.2f} {row['fvu']:>7.4f} {row['mmcs']:>6.3f} "
            f"{row['recovered']:>9.1%} {row['mcc']:>6.3f} {row['f1']:>6.3f} {row['dead_fraction']:>6.1%}"
        )
    return "\n".join(lines)


SPREAD_METRICS = ("l0", "fvu", "recovered", "mcc", "f1", "dead_fraction")


def run_over_seeds(config: RecoveryBenchConfig, seeds: list[int]) -> list[dict[str, Any]]:
    """``run_recovery_benchmark`` once per seed (data, SAE initialisation and data order all follow the seed); rows carry ``seed``."""
    from dataclasses import replace

    if not seeds or len(set(seeds)) != len(seeds):
        raise InvalidInput(f"--seeds: give distinct seeds, got {seeds}")
    rows = []
    for seed in seeds:
        rows += [{"seed": seed, **row} for row in run_recovery_benchmark(replace(config, seed=seed))]
    return rows


def seed_spread(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (variant, arch): the mean, min and max over seeds of each of ``SPREAD_METRICS``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["arch"]), []).append(row)
    summary = []
    for (variant, arch), members in groups.items():
        entry: dict[str, Any] = {"variant": variant, "arch": arch, "seeds": len(members)}
        for key in SPREAD_METRICS:
            values = [m[key] for m in members]
            entry[key] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
        summary.append(entry)
    return summary


def format_spread(summary: list[dict[str, Any]]) -> str:
    """mean [min–max] over seeds, one line per (variant, arch)."""
    def cell(stat: dict[str, float], percent: bool) -> str:
        if percent:
            return f"{stat['mean']:6.1%} [{stat['min']:.0%}–{stat['max']:.0%}]"
        return f"{stat['mean']:6.3f} [{stat['min']:.3f}–{stat['max']:.3f}]"

    header = f"{'variant':<13} {'arch':<20} {'FVU':>21} {'recovered':>19} {'MCC':>21} {'F1':>21} {'dead':>19}"
    lines = [header, "-" * len(header)]
    for entry in summary:
        lines.append(f"{entry['variant']:<13} {entry['arch']:<20} {cell(entry['fvu'], False):>21} {cell(entry['recovered'], True):>19} "
                     f"{cell(entry['mcc'], False):>21} {cell(entry['f1'], False):>21} {cell(entry['dead_fraction'], True):>19}")
    return "\n".join(lines)
