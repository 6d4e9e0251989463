"""Command-line flags generated from the run plan: one flag per plan field, its help the field's docstring.

No default is written here: an unset flag leaves the plan's value (from ``--config``, else the
field's default, which ``--help`` shows). Values are parsed by the field's annotation: numbers,
strings, lists (several values after one flag), true/false switches, a choice for ``Literal``
fields, and JSON for mappings.
"""

from __future__ import annotations

import argparse
import json
import typing
from typing import Any, Literal

from saescope.errors import InvalidInput
from saescope.plan import SECTIONS, RunPlan, default_of, field_docstrings, leaf_fields


def flag_name(name: str, item: Any) -> str:
    return item.metadata.get("flag") or "--" + name.replace("_", "-")


def add_plan_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None, set_defaults: bool = False) -> None:
    """One flag per plan field (or per field in ``only``), grouped by section.

    Without ``set_defaults`` an unset flag stays None, so it leaves a ``--config`` plan's value alone;
    with it (commands that take no plan) the flag's default is the field's.
    """
    docs = {section: field_docstrings(cls) for section, cls in SECTIONS.items()}
    hints = {section: typing.get_type_hints(cls) for section, cls in SECTIONS.items()}
    groups: dict[str, Any] = {}
    for name, (section, item) in leaf_fields().items():
        if only is not None and name not in only:
            continue
        if section not in groups:
            groups[section] = parser.add_argument_group(f"plan: {section}")
        default = default_of(item)
        shown = "none" if default is None or default == [] or default == {} else default
        help_text = f"{docs[section].get(name, '')} (plan field {section}.{name}; default: {shown})".replace("%", "%%")
        groups[section].add_argument(flag_name(name, item), dest=name, default=default if set_defaults else None, help=help_text,
                                     **_parsing(hints[section][name], name))


def _parsing(hint: Any, name: str) -> dict[str, Any]:
    args = typing.get_args(hint)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007 - rebuilt at runtime
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": list(args)}
    if origin is list:
        return {"nargs": "+", "type": _converter(args[0], name), "metavar": name.upper().rstrip("S")}
    return {"type": _converter(hint, name)}


def _converter(hint: Any, name: str) -> Any:
    if hint in (int, float, str):
        return hint
    args = set(typing.get_args(hint))
    if args == {int, str}:
        return lambda text: int(text) if text.strip().isdigit() else text

    def number_or_json(text: str) -> Any:
        try:
            return float(text)
        except ValueError:
            pass
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise InvalidInput(f"--{name.replace('_', '-')}: {text!r} is neither a number nor JSON (e.g. '{{\"topk\": 0.004}}')") from None

    return number_or_json


def plan_from_args(args: argparse.Namespace, extras: dict[str, Any] | None = None) -> RunPlan:
    """The ``--config`` plan (or the defaults), then every flag given on the command line, then ``extras`` (flat fields)."""
    leaves = leaf_fields()
    config = getattr(args, "config", None)
    merged: dict[str, Any] = RunPlan.from_file(config).to_dict() if config else {section: {} for section in SECTIONS}
    given = {name: getattr(args, name) for name in leaves if getattr(args, name, None) is not None}
    for name, value in {**given, **(extras or {})}.items():
        merged[leaves[name][0]][name] = value
    return RunPlan.from_dict(merged, source=f"--config {config}" if config else "command line")
