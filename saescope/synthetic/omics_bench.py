"""``saescope bench synthetic --variants omics``: SAEs on a dense autoencoder's latents of simulated cells.

Per seed: simulate (``saescope.synthetic.omics``), fit the dense autoencoder on the genes, train every
architecture on its latents (centred, one Trainer, the same batches), then correlate each SAE's
latents with every hidden variable (``saescope.evaluation.variable_recovery``). The autoencoder's own
latent dimensions are scored the same way ("AE latent, no SAE"), the baseline an SAE must beat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from saescope.errors import InvalidInput
from saescope.evaluation.metrics import evaluate_sae
from saescope.evaluation.variable_recovery import one_hot, variable_recovery
from saescope.jobs import create_job
from saescope.synthetic.omics import (
    OmicsConfig,
    simulate_omics,
    train_dense_autoencoder,
)
from saescope.training import TrainConfig, Trainer

OMICS_ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")
BASELINE = "AE latent, no SAE"
GROUPS = ("genes", "x0", "x1", "x2", "cell_type", "covariate")


@dataclass
class OmicsBenchConfig:
    simulation: OmicsConfig = field(default_factory=OmicsConfig)
    architectures: tuple[str, ...] = OMICS_ARCHITECTURES
    ae_latent: int = 100
    ae_hidden: int = 256
    ae_epochs: int = 30
    expansion: int = 20
    target_l0: float = 16.0
    steps: int = 3000
    batch_size: int = 256
    progress: bool = True

    def __post_init__(self) -> None:
        from saescope.saes import ARCHITECTURES

        unknown = [a for a in self.architectures if a not in ARCHITECTURES]
        if unknown:
            raise InvalidInput(f"unknown architecture(s) {unknown} for the omics benchmark; choose from {sorted(ARCHITECTURES)}")


def run_omics_benchmark(config: OmicsBenchConfig | None = None, seeds: list[int] | tuple[int, ...] = (0,)) -> list[dict[str, Any]]:
    """One row per (seed, SAE or the AE baseline): FVU, L0, active latents, and per variable group the recovery figures."""
    config = config or OmicsBenchConfig()
    if not seeds or len(set(seeds)) != len(seeds):
        raise InvalidInput(f"--seeds: give distinct seeds, got {list(seeds)}")
    rows = []
    for seed in seeds:
        rows += _one_seed(config, seed)
    return rows


def _one_seed(config: OmicsBenchConfig, seed: int) -> list[dict[str, Any]]:
    started = time.perf_counter()
    data = simulate_omics(replace(config.simulation, seed=seed))
    _model, latents, ae_fvu = train_dense_autoencoder(data.y, latent=config.ae_latent, hidden=config.ae_hidden,
                                                      epochs=config.ae_epochs, seed=seed)
    sim = config.simulation
    variables = {"genes": data.y, "x0": data.x0, "x1": data.x1, "x2": data.x2,
                 "cell_type": one_hot(data.cell_type, sim.n_cell_types), "covariate": one_hot(data.covariate, sim.n_covariates)}
    centred = latents - latents.mean(dim=0)
    rows = [{"seed": seed, "arch": BASELINE, "fvu": None, "l0": float(config.ae_latent), "ae_fvu": ae_fvu,
             **variable_recovery(centred, variables)}]
    torch.manual_seed(seed)
    d_sae = config.expansion * config.ae_latent
    jobs = [create_job(arch, config.ae_latent, d_sae, name=arch, target_l0=config.target_l0) for arch in config.architectures]
    train = TrainConfig(total_tokens=config.steps * config.batch_size, batch_size=config.batch_size, seed=seed,
                        progress=config.progress, log_every=100)
    trained = Trainer(jobs, train).fit(centred)
    for name, sae in trained.items():
        metrics = evaluate_sae(sae, centred, description_length=False)
        with torch.no_grad():
            acts = torch.cat([sae.encode(centred[i:i + 4096]) for i in range(0, centred.shape[0], 4096)])
        rows.append({"seed": seed, "arch": name, "fvu": metrics.fvu, "l0": metrics.l0, "ae_fvu": ae_fvu,
                     "dead_fraction": metrics.dead_fraction, **variable_recovery(acts, variables)})
    for row in rows:
        row["seconds_this_seed"] = round(time.perf_counter() - started, 1)
    return rows


def omics_spread(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per architecture (and the baseline): mean, min and max over seeds of each figure."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["arch"], []).append(row)
    summary = []
    for arch, members in groups.items():
        entry: dict[str, Any] = {"arch": arch, "seeds": len(members)}
        for key in ("fvu", "l0", "n_active", "n_redundant"):
            entry[key] = _stat([m[key] for m in members if m.get(key) is not None])
        for group in GROUPS:
            entry[group] = {figure: _stat([m[group][figure] for m in members]) for figure in ("highest_corr", "n_above")}
        summary.append(entry)
    return summary


def _stat(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def format_omics(summary: list[dict[str, Any]]) -> str:
    """Best |r| per variable (mean over the group's variables) and latents with |r| > 0.95, mean [min–max] over seeds."""
    def cell(stat: dict[str, float] | None, digits: int) -> str:
        if stat is None:
            return "-"
        if stat["min"] == stat["max"]:
            return f"{stat['mean']:.{digits}f}"
        return f"{stat['mean']:.{digits}f} [{stat['min']:.{digits}f}–{stat['max']:.{digits}f}]"

    labels = {"genes": "genes y", "x0": "programs x0", "x1": "x1 (+cov.)", "x2": "x2 (masked)", "cell_type": "cell type", "covariate": "covariate"}
    header = f"{'':<18} {'FVU':>20} {'active':>18} " + " ".join(f"{labels[g]:>22}" for g in GROUPS)
    lines = ["best |r| per hidden variable, mean over the group (higher: recovered)", header, "-" * len(header)]
    for entry in summary:
        lines.append(f"{entry['arch']:<18} {cell(entry['fvu'], 3):>20} {cell(entry['n_active'], 0):>18} "
                     + " ".join(f"{cell(entry[g]['highest_corr'], 3):>22}" for g in GROUPS))
    lines += ["", "latents with |r| > 0.95 to a variable of the group (redundant: |r| > 0.95 to another latent)",
              f"{'':<18} {'redundant':>18} " + " ".join(f"{labels[g]:>18}" for g in GROUPS)]
    for entry in summary:
        lines.append(f"{entry['arch']:<18} {cell(entry['n_redundant'], 0):>18} " + " ".join(f"{cell(entry[g]['n_above'], 0):>18}" for g in GROUPS))
    return "\n".join(lines)
