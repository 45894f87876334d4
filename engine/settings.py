"""Typed settings: what every config dataclass shares.

Each set of choices is declared once, as a `Literal` annotation on a config field or as a named `Literal`
alias; the CLI's `choices=`, the app's combo boxes and `validate()` all read it through `choices`. A
field's one-line docstring (below the field) is its help text and tooltip (`field_docs`).
"""

from __future__ import annotations

import ast
import inspect
import types
import typing
from dataclasses import fields
from typing import Literal

from engine.errors import UserError

# Compute device of a job (resolved in engine/refine/session.py).
Device = Literal["cpu", "cuda"]


def field_docs(cls: type) -> dict[str, str]:
    """Field name → one-line doc of a config dataclass (for --help and GUI tooltips)."""
    tree = ast.parse(inspect.getsource(cls))
    docs, last = {}, None
    for node in tree.body[0].body:
        if isinstance(node, ast.AnnAssign):
            last = node.target.id
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and last:
            docs[last] = str(node.value.value)
            last = None
    return docs


def choices(cls_or_alias, name: str | None = None) -> tuple[str, ...]:
    """The allowed values of a `Literal` field of a config dataclass (`choices(RefineConfig, "sdf")`), or of
    a `Literal` alias (`choices(Device)`); () when the field has no fixed set. The CLI's `choices=`, the app's
    combo boxes and `validate()` all read this, so each set is declared once: on its annotation."""
    return literal_args(typing.get_type_hints(cls_or_alias)[name] if name is not None else cls_or_alias)


def literal_args(typ) -> tuple[str, ...]:
    if typing.get_origin(typ) in (typing.Union, types.UnionType):  # Literal[...] | None: None is checked apart
        typ = next((a for a in typing.get_args(typ) if typing.get_origin(a) is Literal), None)
    return tuple(typing.get_args(typ)) if typing.get_origin(typ) is Literal else ()


def check_choices(config) -> None:
    """Raises UserError naming the first `Literal` field of a config dataclass whose value is not allowed, as
    its command-line option (`--field-name`); None passes where the field is `Literal[...] | None`."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        allowed, value = literal_args(hints[f.name]), getattr(config, f.name)
        if allowed and value not in allowed and not (value is None and type(None) in typing.get_args(hints[f.name])):
            raise UserError(f"--{f.name.replace('_', '-')} must be {one_of(allowed)} (got {value!r}).")


def one_of(allowed: tuple[str, ...]) -> str:
    """`a, b or c` (for messages and help texts)."""
    return allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
