"""Train a whole suite from one pass over the model: every hookpoint × architecture × width × target L0.

Order of work, so that a bad suite fails before compute is spent: the config is checked (no model
needed), the output folder is checked, the model is loaded and the hookpoints resolved (unknown
names list the valid ones), widths are checked against target L0s, memory, disk and time are
estimated (a suite that cannot fit is refused), and only then does training start.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saescope.io.suite_index import (
    FORMAT,
    is_suite,
    read_index,
    sae_folder_name,
    write_index,
)
from saescope.jobs import sets_k
from saescope.suite.config import (
    SuiteConfig,
    SuiteConfigError,
    parse_width,
    resolve_width,
)
from saescope.suite.preflight import PlannedSae, check, estimate

logger = logging.getLogger("saescope")
CONFIG_COPY = "suite.yaml"
LM_BASE_LR = {"jumprelu": 2e-3}
"""Base lr (at 2**14 latents) for suites when the config gives none. JumpReLU's paper default (2e-4) leaves
it at FVU 0.320 on a 219-step run at SmolLM2 layer 10; 4e-3 at 4608 latents (this base) gives 0.164
(benchmarks/RESULTS.md). Arrays and the synthetic benchmark keep the architecture defaults."""


def as_config(config: SuiteConfig | dict[str, Any] | str | Path) -> SuiteConfig:
    if isinstance(config, SuiteConfig):
        config.validate()
        return config
    if isinstance(config, dict):
        return SuiteConfig.from_dict(config)
    return SuiteConfig.from_file(config)


def train_suite(
    config: SuiteConfig | dict[str, Any] | str | Path,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train every SAE of ``config`` into ``out`` and return the suite index (``suite.json``).

    With ``resume=True`` a run killed after a checkpoint continues from it (same config).
    """
    from saescope._version import __version__
    from saescope.data.lm_config import LmDataConfig
    from saescope.training import TrainConfig
    from saescope.training.on_model import SaeSpec, train_on_model

    config = as_config(config)
    out = Path(out)
    checkpoint_dir = out / "checkpoint"
    _check_output_folder(out, config, resume, checkpoint_dir)

    loaded, widths, model_id, forward_fraction = _load_and_resolve(config)
    plan = _plan(config, widths)
    report(f"suite: {len(plan)} SAEs at {len(widths)} hookpoint(s) of {model_id}, {config.tokens:,} tokens each")

    checkpoint_every = config.resolved_checkpoint_every()
    device = str(loaded.device) if loaded is not None else (config.device or "cpu")
    guess = estimate(
        plan, tokens=config.tokens, batch_size=config.batch_size, shuffle_buffer_tokens=config.shuffle_buffer_tokens,
        model_params=_parameter_count(loaded), model_bytes=_parameter_bytes(loaded), forward_fraction=forward_fraction,
        eval_tokens=config.eval_tokens if loaded is not None else 0, checkpointing=checkpoint_every is not None,
        out_dir=out, device=device, live_model=config.cache is None,
    )
    report(guess.summary())
    check(guess, out)

    out.mkdir(parents=True, exist_ok=True)
    _write_config_copy(out, config)
    index = {
        "format": FORMAT, "version": 1, "status": "training", "saescope_version": __version__,
        "model": model_id, "dataset": config.dataset, "config": config.to_dict(),
        "estimate": {"memory_bytes": guess.memory_bytes, "seconds": round(guess.seconds, 1)},
        "saes": [_entry(p) for p in plan],
    }
    write_index(out, index)

    specs = []
    for arch in config.architectures:
        for width in config.widths:
            for target in config.target_l0s:
                options = dict(config.options.get(arch, {}))
                if config.lr_for(arch) is not None:
                    options["lr"] = config.lr_for(arch)
                elif arch in LM_BASE_LR and "optimizer" not in options:
                    options.setdefault("lr_base", LM_BASE_LR[arch])
                absolute, expansion = parse_width(width)
                specs.append(SaeSpec(arch, width=absolute, expansion=expansion or 8, target_l0=float(target), options=options))
    train = TrainConfig(
        total_tokens=config.tokens, batch_size=config.batch_size, seed=config.seed, device=config.device,
        normalization_tokens=min(65_536, config.tokens), progress=progress,
        log_every=max(1, min(50, config.tokens // config.batch_size // 40)),  # a progress bar that moves
        sparsity_proportional_gain=float(config.sparsity_proportional_gain),
        checkpoint_every=checkpoint_every, checkpoint_dir=str(checkpoint_dir) if checkpoint_every else None,
    )
    data = LmDataConfig(
        dataset=config.dataset, text_field=config.text_field, split=config.split, context_size=config.context_size,
        batch_contexts=config.batch_contexts, shuffle_buffer_tokens=config.shuffle_buffer_tokens, eval_tokens=config.eval_tokens,
    )
    started = time.perf_counter()
    results = train_on_model(
        loaded if loaded is not None else model_id, list(widths), specs, train, data, out_dir=str(out), resume=resume,
        device=config.device, dtype=config.dtype, seed=config.seed, cache=config.cache,
    )
    seconds = time.perf_counter() - started

    for entry in index["saes"]:
        _sae, metrics = results[entry["path"]]
        entry["metrics"] = {k: v for k, v in metrics.items() if k not in ("density_histogram", "training")}
    index["status"] = "complete"
    index["train_seconds"] = round(seconds, 1)
    write_index(out, index)
    if not config.keep_checkpoint and checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    return index


# -- steps ---------------------------------------------------------------------------------------------
def _check_output_folder(out: Path, config: SuiteConfig, resume: bool, checkpoint_dir: Path) -> None:
    from saescope.io.trainer_state import has_trainer_state

    if resume:
        if not has_trainer_state(checkpoint_dir):
            if is_suite(out) and read_index(out).get("status") == "complete":
                raise SuiteConfigError(f"--resume: the suite in {out} is already complete; nothing to resume")
            raise SuiteConfigError(f"--resume: no checkpoint in {checkpoint_dir}; start the run without --resume")
        saved = out / CONFIG_COPY
        if saved.is_file() and SuiteConfig.from_file(saved).to_dict() != config.to_dict():
            raise SuiteConfigError(f"--resume: the config differs from the one this run started with ({saved}); resume with that config")
        return
    if is_suite(out) or has_trainer_state(checkpoint_dir):
        raise SuiteConfigError(f"--out {out}: already holds a suite; choose another folder, or pass --resume to continue a killed run")


def _load_and_resolve(config: SuiteConfig) -> tuple[Any, dict[str, int], str, float]:
    """The loaded model (None when a cache is used and nothing is evaluated), {hookpoint: d_in}, model id, depth fraction."""
    import torch

    from saescope.lm.hookpoints import resolve_hookpoints
    from saescope.lm.models import load_model
    from saescope.lm.stream import hookpoint_width

    if config.cache is not None:
        from saescope.lm.cache_source import cache_source

        _source, widths, manifest = cache_source(config.cache, config.hookpoints)
        model_id = manifest.get("model", "unknown")
        loaded = None
        if config.eval_tokens > 0:
            loaded = load_model(config.model or model_id, device=config.device, dtype=config.dtype)
            model_id = loaded.model_id
        return loaded, widths, model_id, 0.0
    assert config.model is not None
    loaded = load_model(config.model, device=config.device, dtype=config.dtype)
    points = resolve_hookpoints(loaded.model, config.hookpoints)
    probe = torch.tensor([[loaded.tokenizer.bos_token_id or 0, 1, 2, 3]], device=loaded.device)
    widths = {p.name: hookpoint_width(loaded.model, p, probe) for p in points}
    deepest = max(p.layer for p in points)
    return loaded, widths, loaded.model_id, (deepest + 1) / max(loaded.n_layers, 1)


def _plan(config: SuiteConfig, widths: dict[str, int]) -> list[PlannedSae]:
    from saescope.lm.hookpoints import canonical_name

    plan, seen = [], set()
    for hookpoint, d_in in widths.items():
        layer = _layer_and_site(canonical_name(hookpoint))[0]
        for arch in config.architectures:
            for width in config.widths:
                n = resolve_width(width, d_in)
                for target in config.target_l0s:
                    if target > n:
                        raise SuiteConfigError(f"widths: {width!r} gives {n} latents at {hookpoint}, fewer than target L0 {target:g}; "
                                               "use a larger width or a smaller target")
                    if sets_k(arch, config.options.get(arch, {}).get("objective")) and round(target) < 1:
                        raise SuiteConfigError(f"target_l0s: {arch} needs k = round(target) >= 1, got {target:g}")
                    entry = PlannedSae(hookpoint, layer, arch, d_in, n, float(target))
                    key = (hookpoint, sae_folder_name(arch, n, float(target)))
                    if key in seen:
                        raise SuiteConfigError(f"widths: two entries give {n} latents at {hookpoint}; list each width once")
                    seen.add(key)
                    plan.append(entry)
    return plan


def _layer_and_site(name: str) -> tuple[int, str]:
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit():
        return int(parts[1]), parts[2]
    return -1, name


def _entry(planned: PlannedSae) -> dict[str, Any]:
    site = _layer_and_site(planned.hookpoint)[1]
    return {
        "path": f"{planned.hookpoint}/{sae_folder_name(planned.architecture, planned.width, planned.target_l0)}",
        "hookpoint": planned.hookpoint, "layer": planned.layer, "site": site, "architecture": planned.architecture,
        "width": planned.width, "d_in": planned.d_in, "target_l0": planned.target_l0,
    }


def _write_config_copy(out: Path, config: SuiteConfig) -> None:
    import yaml

    from saescope.io.atomic import atomic_write_text

    atomic_write_text(out / CONFIG_COPY, yaml.safe_dump(config.to_dict(), sort_keys=False))


def _parameter_count(loaded: Any) -> int:
    return 0 if loaded is None else sum(p.numel() for p in loaded.model.parameters())


def _parameter_bytes(loaded: Any) -> int:
    return 0 if loaded is None else sum(p.numel() * p.element_size() for p in loaded.model.parameters())

