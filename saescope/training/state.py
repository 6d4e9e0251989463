"""Resumable trainer state: ``trainer_state.json`` + ``trainer_state.safetensors``, no pickle.

Adam's moments, step counters, λ, dead-latent counters and the SAE weights (unfolded, still in
training units) are tensors; the rest (step, per-SAE scales, optimiser hyperparameters) is JSON.
Both files are written to temporary names and renamed, so a crash mid-write leaves the previous
checkpoint intact.
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

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"


def save_trainer_state(folder: str | os.PathLike, info: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_tensors, tmp_json = folder / f".{STATE_TENSORS}.tmp", folder / f".{STATE_JSON}.tmp"
    save_file(tensors, str(tmp_tensors))
    tmp_json.write_text(json.dumps(info, indent=1))
    # The JSON names the step; it is renamed last so it never points at missing tensors.
    os.replace(tmp_tensors, folder / STATE_TENSORS)
    os.replace(tmp_json, folder / STATE_JSON)


def has_trainer_state(folder: str | os.PathLike | None) -> bool:
    return folder is not None and (Path(folder) / STATE_JSON).is_file()


def load_trainer_state(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    folder = Path(folder)
    json_path, tensor_path = folder / STATE_JSON, folder / STATE_TENSORS
    try:
        info = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidInput(f"{json_path}: cannot read the trainer state ({error}); delete the folder to start afresh") from None
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as error:
        raise InvalidInput(f"{tensor_path}: cannot read the trainer state ({error}); delete the folder to start afresh") from None
    return info, tensors
