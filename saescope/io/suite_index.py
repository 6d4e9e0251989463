"""``suite.json``: the index of a suite folder, one entry per SAE with where it is and how it measures.

    {"format": "saescope-suite", "version": 1, "status": "training" | "complete",
     "model": ..., "dataset": ..., "config": {...SuiteConfig...},
     "saes": [{"path": "layers.10.resid_post/topk-w4608-l0_32", "hookpoint": ..., "layer": 10,
               "site": "resid_post", "architecture": "topk", "width": 4608, "d_in": 576,
               "target_l0": 32, "metrics": {...}}]}

It is written when training starts (status "training", no metrics) and rewritten at the end, so a
killed run still says what it was doing. Writes are atomic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saescope.errors import InvalidInput, MissingFile
from saescope.io.atomic import atomic_write_json, read_json

INDEX_NAME = "suite.json"
FORMAT = "saescope-suite"


def sae_folder_name(architecture: str, width: int, target_l0: float) -> str:
    return f"{architecture}-w{width}-l0_{target_l0:g}"


def write_index(folder: str | Path, index: dict[str, Any]) -> Path:
    path = Path(folder) / INDEX_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, index, indent=2)


def is_suite(folder: str | Path) -> bool:
    return (Path(folder) / INDEX_NAME).is_file()


def read_index(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise MissingFile(f"{folder}: not a suite folder (no {INDEX_NAME}); train one with `saescope train --config ...`")
    index = read_json(path)
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("saes"), list):
        raise InvalidInput(f"{path}: not a saescope suite index (expected format {FORMAT!r} and a list of saes)")
    for entry in index["saes"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise InvalidInput(f"{path}: an entry of 'saes' has no path")
        resolved = (Path(folder) / entry["path"]).resolve()
        if Path(folder).resolve() not in resolved.parents:
            raise InvalidInput(f"{path}: SAE path {entry['path']!r} points outside the suite folder")
    return index


def layer_and_site(hookpoint: str) -> tuple[int, str]:
    """(layer, site) of a canonical ``layers.L.<site>`` name; (-1, the name) for anything else."""
    parts = hookpoint.split(".")
    if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit():
        return int(parts[1]), parts[2]
    return -1, hookpoint
