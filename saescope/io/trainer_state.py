"""Resumable trainer state: ``trainer_state.json`` naming a ``trainer_state.<step>.safetensors``, no pickle.

Adam's moments, step counters, λ, dead-latent counters, firing rates and the SAE weights (unfolded,
still in training units) are tensors; the rest (step, per-job scales, optimiser hyperparameters) is
JSON. A checkpoint is one atomic step: the tensors go to a new file named by the step, then the JSON
that names that file (with its SHA-256) replaces the old JSON in one rename, and only then are older
tensor files deleted. A kill at any point leaves a JSON that names a whole tensor file; a tensor file
changed on disk afterwards is refused by its checksum.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from saescope.errors import InvalidInput
from saescope.io.atomic import atomic_write, atomic_write_json, file_sha256

STATE_JSON = "trainer_state.json"
STATE_TENSORS_PATTERN = "trainer_state.*.safetensors"


def save_trainer_state(folder: str | os.PathLike, info: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"trainer_state.{int(info['step']):09d}.safetensors"
    atomic_write(folder / name, lambda path: save_file(tensors, str(path)))
    atomic_write_json(folder / STATE_JSON, {**info, "tensors_file": name, "tensors_sha256": file_sha256(folder / name)}, indent=1)
    for stale in folder.glob(STATE_TENSORS_PATTERN):
        if stale.name != name:
            stale.unlink(missing_ok=True)


def has_trainer_state(folder: str | os.PathLike | None) -> bool:
    return folder is not None and (Path(folder) / STATE_JSON).is_file()


def load_trainer_state(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    folder = Path(folder)
    json_path = folder / STATE_JSON
    try:
        info = json.loads(json_path.read_text())
        tensor_path = folder / info["tensors_file"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise InvalidInput(f"{json_path}: cannot read the trainer state ({error!r}); delete the folder to start afresh") from None
    if not tensor_path.is_file():
        raise InvalidInput(f"{tensor_path}: missing, but {json_path} names it; delete the folder to start afresh")
    if file_sha256(tensor_path) != info.get("tensors_sha256"):
        raise InvalidInput(f"{tensor_path}: its checksum does not match {json_path} (the file changed on disk); delete the folder to start afresh")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as error:
        raise InvalidInput(f"{tensor_path}: cannot read the trainer state ({error}); delete the folder to start afresh") from None
    broken = sorted(name for name, tensor in tensors.items() if tensor.is_floating_point() and not bool(tensor.isfinite().all()))
    if broken:
        raise InvalidInput(f"{tensor_path}: holds NaN or inf in {broken[:3]}{' …' if len(broken) > 3 else ''}; the run diverged before this "
                           "checkpoint, so resuming would only continue a broken model: start again without --resume (try a lower lr)")
    return info, tensors
