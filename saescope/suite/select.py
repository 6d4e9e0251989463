"""``saescope select``: pick each hookpoint's SAE from a suite (or a folder of SAEs trained on vectors).

A suite is measured with ``saescope eval`` (reusing what is already measured); a folder of SAE
folders from ``saescope train --data`` is measured on ``data``. The ranking, the choice and why each
other SAE was out are written to ``selection.json`` in the folder, and the rows to ``eval.json``
(for a folder of vector SAEs, with ``plots/description_length.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saescope.errors import InvalidInput, MissingFile
from saescope.evaluation.selection import (
    DEFAULT_MAX_FVU,
    Candidate,
    chosen,
    select_saes,
)
from saescope.io.atomic import atomic_write_json
from saescope.io.suite_index import is_suite

SELECTION_FILE = "selection.json"


def select(
    path: str | Path,
    by: str = "mdl",
    max_fvu: float = DEFAULT_MAX_FVU,
    data: str | None = None,
    data_key: str | None = None,
    metadata_columns: tuple[str, ...] | list[str] = (),
    eval_tokens: int | None = None,
    recompute: bool = False,
    batch_size: int = 4096,
    progress: bool = True,
    device: str | None = None,
) -> dict[str, list[Candidate]]:
    """Rank the SAEs at ``path`` per hookpoint by ``by`` among those with FVU ≤ ``max_fvu``; write selection.json.

    Example:
        >>> groups = saescope.select("runs/suite", by="mdl", max_fvu=0.1)       # doctest: +SKIP
        >>> {hookpoint: c[0].path for hookpoint, c in groups.items()}          # doctest: +SKIP
    """
    folder = Path(path)
    select_saes([], by, max_fvu)  # a bad criterion or bound fails before anything is measured
    if is_suite(folder):
        if data is not None:
            raise InvalidInput(f"{folder}: a suite is measured on its own model and text; drop --data")
        from saescope.suite.evaluate import evaluate_suite

        rows = evaluate_suite(folder, eval_tokens=eval_tokens, recompute=recompute, progress=progress, device=device, max_fvu=max_fvu)
    else:
        if data is None:
            hint = "an SAE folder" if (folder / "cfg.json").is_file() else "a folder of SAE folders" if sae_folders(folder) else "not a suite"
            raise InvalidInput(f"{folder}: {hint}; give the vectors to measure on with --data FILE (a suite needs no --data)")
        rows = evaluate_on_vectors(folder, data, data_key, metadata_columns, batch_size, device, max_fvu)
    groups = select_saes(rows, by, max_fvu)
    atomic_write_json(folder / SELECTION_FILE, {
        "by": by, "max_fvu": max_fvu,
        "chosen": {hookpoint: c.path for hookpoint, c in chosen(groups).items()},
        "hookpoints": {hookpoint: [c.to_dict() for c in candidates] for hookpoint, candidates in groups.items()},
    }, indent=2)
    return groups


def sae_folders(folder: Path) -> list[Path]:
    """``folder`` itself if it is an SAE folder, else its SAE subfolders (one level down), sorted."""
    if (folder / "cfg.json").is_file():
        return [folder]
    return sorted(p for p in folder.iterdir() if (p / "cfg.json").is_file()) if folder.is_dir() else []


def evaluate_on_vectors(
    folder: Path, data: str, data_key: str | None, metadata_columns: tuple[str, ...] | list[str], batch_size: int,
    device: str | None, max_fvu: float,
) -> list[dict[str, Any]]:
    """Every SAE under ``folder`` measured on the vectors in ``data``: rows like ``saescope eval``'s (eval.json, plot)."""
    from saescope.evaluation.metrics import evaluate_sae
    from saescope.io.checkpoint import load
    from saescope.suite.arrays import load_array
    from saescope.suite.mdl_plot import plot_description_length

    if not folder.is_dir():
        raise MissingFile(f"{folder}: no such folder")
    saes = sae_folders(folder)
    if not saes:
        raise InvalidInput(f"{folder}: holds no SAE folders (a cfg.json in it or in its subfolders); give a suite or saescope train --data output")
    source = load_array(data, data_key, metadata_columns)
    rows = []
    for sae_folder in saes:
        sae = load(str(sae_folder))
        if device:
            sae.to(device)
        metrics = evaluate_sae(sae, source, batch_size=batch_size).to_dict()
        name = "." if sae_folder == folder else sae_folder.name
        rows.append({"path": name, "hookpoint": sae.cfg.hookpoint or "vectors", "architecture": sae.architecture,
                     "width": sae.d_sae, "target_l0": sae.training_summary.get("target_l0"),
                     **{k: v for k, v in metrics.items() if k != "density_histogram"}})
    atomic_write_json(folder / "eval.json", {"data": str(data), "saes": rows}, indent=2)
    (folder / "plots").mkdir(exist_ok=True)
    plot_description_length(rows, folder / "plots" / "description_length.png", max_fvu)
    return rows
