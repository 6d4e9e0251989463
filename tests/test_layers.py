"""Imports flow one way. Every import in every module (top level or inside a function) is parsed, and an
import that runs from a lower layer up to a higher one fails the test, as does a private name imported
from another package.

The layers, lowest first (a module takes the rank of the longest prefix that names it):
leaves (version, errors, data, atomic writes, the suite index) <- SAE modules, model access <- objectives
<- jobs <- I/O and metrics <- training, evaluation, interpretation, steering, synthetic data <- suite
<- browser <- demo, CLI and the package root.
"""

from __future__ import annotations

import ast
from pathlib import Path

import saescope

PACKAGE = Path(saescope.__file__).parent

LAYERS: dict[str, int] = {
    "saescope._version": 0,
    "saescope.errors": 0,
    "saescope.data": 0,
    "saescope.io.atomic": 0,
    "saescope.io.suite_index": 0,
    "saescope.io.paths": 0,
    "saescope.io.lock": 0,
    "saescope.parallel": 0,
    "saescope.saes": 1,
    "saescope.lm": 1,
    "saescope.objectives": 2,
    "saescope.jobs": 3,
    "saescope.io": 4,
    "saescope.evaluation.metrics": 4,
    "saescope.evaluation.description_length": 4,
    "saescope.plan": 4,
    "saescope.plan_jobs": 4,
    "saescope.training": 5,
    "saescope.evaluation": 5,
    "saescope.interpret": 5,
    "saescope.steer": 5,
    "saescope.synthetic": 5,
    "saescope.experts": 5,
    "saescope.suite": 6,
    "saescope.view": 7,
    "saescope.demo": 8,
    "saescope.cli": 8,
    "saescope.cli_plan": 8,
    "saescope.cli_types": 8,
    "saescope.cli_experts": 8,
    "saescope.__main__": 8,
    "saescope": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rank(module: str) -> int:
    candidates = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    if not candidates:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS in {__file__}")
    return LAYERS[max(candidates, key=len)]


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every saescope import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "saescope":
            for alias in node.names:
                found.append((node.module, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names if alias.name.split(".")[0] == "saescope"]
    return found


def test_every_module_is_in_a_layer_and_imports_only_downward_or_sideways():
    upward, private = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for imported, name, line in imports(path):
            target = imported
            if name is not None and (PACKAGE / Path(*imported.split(".")[1:], name)).with_suffix(".py").exists():
                target = f"{imported}.{name}"  # `from saescope.io import checkpoint` imports the module
            if importer != "saescope" and rank(target) > rank(importer):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} (layer {rank(importer)}) imports {target} (layer {rank(target)})")
            if name and name.startswith("_") and name != "__version__" and package_of(target) != package_of(importer):
                private.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} imports private {imported}.{name}")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)
    assert not private, "private names imported across packages:\n" + "\n".join(private)


def test_the_checker_sees_an_upward_import(tmp_path):
    # The test above could pass by finding nothing; this proves that it parses what it must.
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from saescope.suite.runner import train_suite\n")
    assert imports(bad) == [("saescope.suite.runner", "train_suite", 2)]
    assert rank("saescope.suite.runner") > rank("saescope.saes.base") > rank("saescope.errors")
