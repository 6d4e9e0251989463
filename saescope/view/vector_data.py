"""What the feature browser shows for SAEs trained on vectors (cells, images, embeddings): no tokens, no model.

The folder is an SAE folder, or a folder of SAE folders (``saescope train --data`` output), each
interpreted with ``saescope interpret SAE --data FILE`` (``interpret_vectors.json``). Keys, as for a
suite: ``suite`` (the list, with ``kind: vectors``) and ``sae/<n>/vectors`` (one SAE's features).
Each key maps to one known file, so no request reaches anything else.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from saescope.errors import InvalidInput
from saescope.interpret.vectors import VECTORS_FILE
from saescope.suite.select import sae_folders
from saescope.view.data import SuiteData, plot_in

_KEY = re.compile(r"sae/([0-9]{1,9})/vectors")
SUMMARY_FIELDS = ("l0", "fvu", "description_length", "unfired_fraction", "dead_fraction")


class VectorRunData:
    kind = "vectors"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).resolve()
        self.saes = sae_folders(self.folder)
        if not self.saes:
            raise InvalidInput(f"{folder}: neither a suite (suite.json) nor SAE folders (cfg.json); give a suite, "
                               "an SAE folder or a folder of them")
        if not any((p / VECTORS_FILE).is_file() for p in self.saes):
            raise InvalidInput(f"{folder}: no SAE here is interpreted yet; run saescope interpret {folder} --data FILE "
                               "(add --image-shape HxW for images) first")
        self.entries = [{"path": "." if p == self.folder else p.name} for p in self.saes]

    def keys(self) -> list[str]:
        return ["suite"] + [f"sae/{n}/vectors" for n, p in enumerate(self.saes) if (p / VECTORS_FILE).is_file()]

    def get(self, key: str) -> Any:
        if key == "suite":
            return self._suite()
        match = _KEY.fullmatch(key)
        if not match or int(match.group(1)) >= len(self.saes):
            raise KeyError(key)
        file = self.saes[int(match.group(1))] / VECTORS_FILE
        if not file.is_file():
            raise KeyError(key)
        return json.loads(file.read_text())

    def plot_file(self, name: str) -> Path:
        return plot_in(self.folder, name)

    def _suite(self) -> dict[str, Any]:
        measured = _eval_rows(self.folder)
        saes = []
        for n, folder in enumerate(self.saes):
            config = json.loads((folder / "cfg.json").read_text())
            path = self.entries[n]["path"]
            interpreted = folder / VECTORS_FILE
            head = _head(interpreted) if interpreted.is_file() else {}
            saes.append({"n": n, "path": path, "architecture": config.get("architecture"), "width": config.get("d_sae"),
                         "target_l0": (config.get("training") or {}).get("target_l0"),
                         "metrics": {k: v for k, v in (measured.get(path) or {}).items() if k in SUMMARY_FIELDS and isinstance(v, (int, float))},
                         "interpreted": interpreted.is_file(), **head})
        plots = sorted(p.name for p in (self.folder / "plots").glob("*.png")) if (self.folder / "plots").is_dir() else []
        chosen = None
        selection = self.folder / "selection.json"
        if selection.is_file():
            values = json.loads(selection.read_text())
            chosen = {"by": values.get("by"), "max_fvu": values.get("max_fvu"), "paths": list((values.get("chosen") or {}).values())}
        return {"kind": self.kind, "name": self.folder.name, "saes": saes, "plots": plots, "selection": chosen}


def _eval_rows(folder: Path) -> dict[str, dict[str, Any]]:
    file = folder / "eval.json"
    if not file.is_file():
        return {}
    try:
        return {row["path"]: row for row in json.loads(file.read_text()).get("saes", [])}
    except (json.JSONDecodeError, KeyError, TypeError):
        return {}


def _head(file: Path) -> dict[str, Any]:
    """The interpretation's header (no per-feature records)."""
    values = json.loads(file.read_text())
    return {key: values.get(key) for key in ("n_rows", "alive", "image_shape", "what", "categorical", "numeric")}


def browser_data(folder: str | Path) -> Any:
    """A suite's data (``SuiteData``) or a vector run's (``VectorRunData``), by what the folder holds."""
    from saescope.io.suite_index import is_suite

    return SuiteData(folder) if is_suite(folder) else VectorRunData(folder)
