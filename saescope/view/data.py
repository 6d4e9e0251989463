"""Everything the feature browser shows, read from a suite folder through a fixed set of keys.

The browser never names a file: it asks for ``suite``, ``sae/<n>/summary``, ``sae/<n>/vocab``,
``sae/<n>/lineage`` or ``sae/<n>/features/<first feature of a shard>``, where ``n`` indexes ``suite.json``'s list of SAEs.
Each key maps to one known file inside the suite folder, so no request can reach anything else.
The server serves these as JSON; the static export writes each one as a small script file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from saescope.interpret.store import SHARD_SIZE
from saescope.io.suite_index import read_index
from saescope.plan import RunPlan
from saescope.suite.lineage import LINEAGE_FILE

_KEY = re.compile(r"sae/([0-9]{1,9})/(summary|vocab|lineage|experts|features/([0-9]{1,12}))")
_PROFILE = re.compile(r"experts/([A-Za-z0-9_\-]{1,100})")
EXPERTS_FOLDER = "experts"
"""Expert profiles shown by the browser live in ``<suite>/experts/<name>/experts.json``
(``saescope experts profile --out SUITE/experts/NAME``)."""


def plot_in(folder: Path, name: str) -> Path:
    """``folder/plots/NAME.png`` for a bare file name that exists; KeyError for anything else (no paths, no other files)."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+\.png", name):
        raise KeyError(name)
    file = folder / "plots" / name
    if not file.is_file():
        raise KeyError(name)
    return file


class SuiteData:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).resolve()
        self.index = read_index(self.folder)
        self.entries = self.index["saes"]

    def keys(self) -> list[str]:
        """Every key with data behind it (what a static export writes)."""
        keys = ["suite"] + [f"experts/{name}" for name in self.profiles()]
        for n, entry in enumerate(self.entries):
            summary = self._interpret_dir(n) / "summary.json"
            if not summary.is_file():
                continue
            keys += [f"sae/{n}/summary", f"sae/{n}/vocab"]
            values = json.loads(summary.read_text())
            count, shard = values["n_features"], values.get("shard_size", SHARD_SIZE)
            keys += [f"sae/{n}/features/{start}" for start in range(0, count, shard)]
            if (self.folder / self.entries[n]["path"] / LINEAGE_FILE).is_file():
                keys.append(f"sae/{n}/lineage")
            if (self._interpret_dir(n) / "experts.json").is_file():
                keys.append(f"sae/{n}/experts")
        return keys

    def profiles(self) -> list[str]:
        """Names of the expert profiles in the suite's ``experts`` folder."""
        root = self.folder / EXPERTS_FOLDER
        if not root.is_dir():
            return []
        return sorted(p.parent.name for p in root.glob("*/experts.json") if _PROFILE.fullmatch(f"experts/{p.parent.name}"))

    def get(self, key: str) -> Any:
        """The JSON value behind ``key``; KeyError for anything unknown or missing."""
        if key == "suite":
            return self._suite()
        profile = _PROFILE.fullmatch(key)
        if profile:
            file = self.folder / EXPERTS_FOLDER / profile.group(1) / "experts.json"
            if not file.is_file():
                raise KeyError(key)
            return json.loads(file.read_text())
        match = _KEY.fullmatch(key)
        if not match:
            raise KeyError(key)
        n = int(match.group(1))
        if n >= len(self.entries):
            raise KeyError(key)
        folder = self._interpret_dir(n)
        if match.group(2) == "summary":
            file = folder / "summary.json"
        elif match.group(2) == "vocab":
            file = folder / "vocab.json"
        elif match.group(2) == "lineage":
            file = folder.parent / LINEAGE_FILE
        elif match.group(2) == "experts":
            file = folder / "experts.json"
        else:
            file = folder / f"features_{int(match.group(3)):05d}.json"
        if not file.is_file():
            raise KeyError(key)
        return json.loads(file.read_text())

    def plot_file(self, name: str) -> Path:
        """A PNG of the suite's plots folder by bare file name; KeyError otherwise."""
        return plot_in(self.folder, name)

    def _interpret_dir(self, n: int) -> Path:
        folder = (self.folder / self.entries[n]["path"] / "interpret").resolve()
        if self.folder not in folder.parents:
            raise KeyError(n)
        return folder

    def _suite(self) -> dict[str, Any]:
        plots = sorted(p.name for p in (self.folder / "plots").glob("*.png")) if (self.folder / "plots").is_dir() else []
        saes = []
        for n, entry in enumerate(self.entries):
            saes.append({
                "n": n, "path": entry["path"], "hookpoint": entry["hookpoint"], "layer": entry["layer"], "site": entry["site"],
                "architecture": entry["architecture"], "width": entry["width"], "target_l0": entry["target_l0"],
                "kind": entry.get("kind", "sae"), "reads": entry.get("reads"),
                "hookpoints": entry.get("hookpoints"),
                "metrics": {k: v for k, v in (entry.get("metrics") or {}).items() if isinstance(v, (int, float))},
                "interpreted": (self._interpret_dir(n) / "summary.json").is_file(),
                "experts": (self._interpret_dir(n) / "experts.json").is_file(),
            })
        return {"name": self.folder.name, "model": self.index.get("model"), "dataset": self.index.get("dataset"),
                "tokens": RunPlan.stored(self.index, self.folder).training.tokens, "plots": plots, "saes": saes,
                "expert_profiles": self.profiles()}
