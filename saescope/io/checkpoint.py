"""The SAE folder format: ``cfg.json`` plus ``sae_weights.safetensors``.

The tensor names and the row-vector orientation (``x @ W_enc``) match SAELens and Gemma Scope; the
config is flat JSON, architecture fields first, then provenance (hookpoint, model, normalisation,
training summary, saescope version). Loading validates everything it reads and names the file at
fault. No pickle: weights are safetensors, everything else is JSON.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saescope.errors import InvalidInput, MissingFile
from saescope.io.atomic import atomic_write, atomic_write_json, file_sha256, read_json
from saescope.saes import SparseAutoencoder, get_architecture
from saescope.saes.stacked import reads_record

CONFIG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
WEIGHTS_CHECKSUM_KEY = "weights_sha256"
_PROVENANCE_KEYS = ("architecture", "saescope_version", "dtype", "apply_b_dec_to_input", "normalization", "training", "context_size", "dataset",
                    "reads")


def save_sae(sae: SparseAutoencoder, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``sae`` to the folder ``path`` (created if needed); files are replaced atomically."""
    from saescope._version import __version__

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in sae.export_tensors().items()}
    cfg = {
        "architecture": sae.architecture,
        **sae.cfg.to_dict(),
        "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch."),
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "reads": reads_record(sae),
        "normalization": sae.normalization,
        "training": sae.training_summary,
        "saescope_version": __version__,
        **extra,
    }
    atomic_write(folder / WEIGHTS_NAME, lambda path: save_file(tensors, str(path)))
    cfg[WEIGHTS_CHECKSUM_KEY] = file_sha256(folder / WEIGHTS_NAME)  # written last: a kill between the two files is caught on load
    atomic_write_json(folder / CONFIG_NAME, cfg, indent=2, default=_json_default)
    return folder


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load an SAE folder written by ``save_sae``.

    Example:
        >>> sae = saescope.load("runs/demo/jumprelu")          # doctest: +SKIP
        >>> feature_acts = sae.encode(activations)               # doctest: +SKIP
    """
    folder = Path(path)
    if not folder.is_dir():
        raise MissingFile(f"{folder}: no such SAE folder (expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME})")
    cfg_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for required in (cfg_path, weights_path):
        if not required.is_file():
            raise MissingFile(f"{required}: missing; an SAE folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    cfg = read_json(cfg_path, hint="the file is corrupt, re-save the SAE")
    if not isinstance(cfg, dict) or "architecture" not in cfg:
        raise InvalidInput(f"{cfg_path}: no 'architecture' key; is this a saescope SAE folder?")
    expected = cfg.pop(WEIGHTS_CHECKSUM_KEY, None)
    if expected is not None and file_sha256(weights_path) != expected:
        raise InvalidInput(f"{weights_path}: its SHA-256 does not match the one in {cfg_path}: the weights changed or were corrupted "
                           "after saving (or a save was interrupted); re-save or retrain the SAE")
    try:
        sae_class = get_architecture(cfg["architecture"])
    except ValueError as error:
        raise InvalidInput(f"{cfg_path}: {error}") from None
    fields = {k: v for k, v in cfg.items() if k not in _PROVENANCE_KEYS and k not in _legacy_recipe_keys(sae_class)}
    fields.update(_restored_reads(cfg, fields, cfg_path))
    try:
        sae = sae_class(sae_class.config_class.from_dict(fields))
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"{cfg_path}: invalid config: {error}") from None

    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise InvalidInput(f"{weights_path}: cannot read weights ({error}); the file is truncated or corrupt, re-save it") from None
    load_checked_tensors(sae, tensors, weights_path, CONFIG_NAME)
    if "apply_b_dec_to_input" in cfg and bool(cfg["apply_b_dec_to_input"]) != sae.apply_b_dec_to_input:
        sae.apply_b_dec_to_input = bool(cfg["apply_b_dec_to_input"])  # e.g. an SAE imported from SAELens
    sae.normalization = cfg.get("normalization") or {}
    sae.training_summary = cfg.get("training") or {}
    return sae.to(device).eval()


def _restored_reads(cfg: dict[str, Any], fields: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    """The ``hookpoint`` and ``target`` fields that ``reads`` implies where the flat fields leave them out.

    Folders written before ``reads`` existed have no such key and load as they did.
    """
    reads = cfg.get("reads")
    if reads is None:
        return {}
    if not isinstance(reads, dict) or not isinstance(reads.get("hookpoints", []), list):
        raise InvalidInput(f"{cfg_path}: 'reads' must be {{\"hookpoints\": [...], \"target\": ...}}, found {reads!r}; re-save the SAE")
    restored: dict[str, Any] = {}
    hookpoints = reads.get("hookpoints") or []
    if len(hookpoints) == 1 and fields.get("hookpoint") is None:
        restored["hookpoint"] = hookpoints[0]
    if reads.get("target") is not None and fields.get("target") is None:
        restored["target"] = reads["target"]
    return restored


def _legacy_recipe_keys(sae_class: type[SparseAutoencoder]) -> set[str]:
    """Training settings that folders from saescope 0.1 wrote beside the SAE fields; they are provenance now."""
    from saescope.objectives import recipe_field_names

    return (recipe_field_names() | {"sparsity_loss"}) - sae_class.config_class.field_names()


def load_checked_tensors(sae: SparseAutoencoder, tensors: dict[str, torch.Tensor], source: Path, implied_by: str) -> None:
    """Load published-name ``tensors`` into ``sae`` after checking names, shapes and finiteness.

    Every error names ``source`` (the weights file) and, for shapes, what implies them (``implied_by``).
    """
    expected = {name: tuple(t.shape) for name, t in sae.export_tensors().items()}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise InvalidInput(f"{source}: tensors do not match a {sae.architecture} SAE (missing {missing}, unexpected {unexpected})")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise InvalidInput(
                f"{source}: {name} has shape {list(tensors[name].shape)}, but {implied_by} "
                f"(d_in={sae.d_in}, d_sae={sae.d_sae}) implies {list(shape)}"
            )
        if not torch.isfinite(tensors[name]).all():
            raise InvalidInput(f"{source}: {name} contains NaN or inf; the SAE diverged or the file is corrupt")
    sae.load_export_tensors({name: t.float() for name, t in tensors.items()})


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
