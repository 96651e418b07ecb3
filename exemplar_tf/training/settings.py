"""Settings declared once: a dataclass field carries its help text, valid values and range check, and everything
else is derived from the declaration -- the command-line flags (`train.py`), the field checks of `validate`, the
typed reading of a resolved flagfile (`rundir.config_from_flagfile`) and the flag table of `docs/flags.md`.

    lr: float | None = setting(None, help="Initial SGD learning rate ...", check=POSITIVE)
    method: str = setting("exemplar", help="...", choices=METHODS)

No TensorFlow import: `train.py` defines and validates its flags before TensorFlow loads.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import functools
import types
import typing
from typing import Any, Sequence

from exemplar_tf.errors.cli import Bound

_META = "setting"  # key of the dataclasses.field metadata
Range = Bound  # a numeric range of a setting: the programs' flags (errors.cli) read the same rules


@dataclasses.dataclass(frozen=True)
class EachIn:
    """Every item of a list setting in `range`; `message` is formatted with name and the list."""

    range: Range
    message: str = "--{name} items must be {range}, got {value}"

    def describe(self) -> str:
        return f"each {self.range.describe()}"

    def problem(self, name: str, value) -> str | None:
        if all(self.range.contains(item) for item in value):
            return None
        return self.message.format(name=name, range=self.range.describe(), value=list(value))


@dataclasses.dataclass(frozen=True)
class NonEmpty:
    """A string that must be set."""

    def describe(self) -> str:
        return "required"

    def problem(self, name: str, value) -> str | None:
        return None if value else f"--{name} must be set"


POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
UNIT_INTERVAL = Range(low=0, high=1)  # [0, 1]
UNIT_INTERVAL_OPEN = Range(low=0, high=1, high_open=True)  # [0, 1)


def setting(default: Any = dataclasses.MISSING, *, help: str, choices: Sequence[str] | None = None,  # noqa: A002
            check: Range | EachIn | NonEmpty | None = None) -> Any:
    """A dataclass field declared with its flag help, its valid values (a string, or every item of a list) and a
    check of its value; no default: a required field (its flag defaults to None)."""
    metadata = {_META: {"help": help, "choices": tuple(choices) if choices is not None else None, "check": check}}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One setting as declared: `kind` is str, bool, int, float or list (of `item`: str or float); `optional`:
    None is a value (the field's type says `| None`)."""

    name: str
    kind: str
    item: str | None
    optional: bool
    default: Any  # dataclasses.MISSING for a required field
    help: str
    choices: tuple[str, ...] | None
    check: Range | EachIn | NonEmpty | None

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def flag_default(self) -> Any:
        """The default as an absl flag default: None for a required field, lists comma-joined."""
        if self.required:
            return None
        if self.kind == "list":
            return ",".join(map(str, self.default))
        return self.default

    def problems(self, value) -> list[str]:
        """This field's own checks: valid values, then range."""
        problems = []
        if self.choices is not None and self.kind == "list":
            unknown = [item for item in value if item not in self.choices]
            if unknown:
                problems.append(f"--{self.name} has unknown names {unknown}; valid: {', '.join(self.choices)}")
        elif self.choices is not None and value not in self.choices:
            problems.append(f"--{self.name}={value!r} is not one of {', '.join(self.choices)}")
        problem = self.check.problem(self.name, value) if self.check else None
        return problems + ([problem] if problem else [])


_KINDS = {str: "str", bool: "bool", int: "int", float: "float"}


def _kind(name: str, annotation) -> tuple[str, str | None, bool]:
    """(kind, item kind, optional) of a field's resolved type annotation."""
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        (annotation,) = [arg for arg in args if arg is not type(None)]
    if annotation in _KINDS:
        return _KINDS[annotation], None, optional
    if typing.get_origin(annotation) in (collections.abc.Sequence, list, tuple):
        item = typing.get_args(annotation)[0]
        if item in (str, float):
            return "list", _KINDS[item], optional
    raise TypeError(f"setting {name}: type {annotation} is not one of str, bool, int, float, Sequence[str], "
                    f"Sequence[float] (optional or not)")


@functools.lru_cache(maxsize=None)
def specs(cls: type) -> tuple[Spec, ...]:
    """The declared settings of dataclass `cls`, in declaration order (every field must be a `setting`)."""
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        if _META not in field.metadata:
            raise TypeError(f"{cls.__name__}.{field.name} is not declared with settings.setting(...)")
        kind, item, optional = _kind(field.name, hints[field.name])
        meta = field.metadata[_META]
        out.append(Spec(field.name, kind, item, optional, field.default, meta["help"], meta["choices"],
                        meta["check"]))
    return tuple(out)


def spec_map(cls: type) -> dict[str, Spec]:
    return {spec.name: spec for spec in specs(cls)}


def field_problems(config) -> list[str]:
    """Every field's own checks (valid values, ranges), in declaration order."""
    return [problem for spec in specs(type(config)) for problem in spec.problems(getattr(config, spec.name))]


_TRUE, _FALSE = ("true", "t", "1", "yes"), ("false", "f", "0", "no")


def _scalar(kind: str, raw: str):
    if kind == "bool":
        if raw.lower() not in _TRUE + _FALSE:
            raise ValueError(f"not a boolean: {raw!r}")
        return raw.lower() in _TRUE
    return {"int": int, "float": float, "str": str}[kind](raw)


def list_items(spec: Spec, items: Sequence[str]) -> tuple:
    """A list setting's items (strings, as a flag or a flagfile gives them) stripped, empty ones dropped, typed."""
    items = [item.strip() for item in items if item.strip()]
    try:
        return tuple(_scalar(spec.item, item) for item in items)
    except ValueError as error:
        kind = "numbers" if spec.item == "float" else "values"
        raise ValueError(f"--{spec.name} must be a comma-separated list of {kind}: {error}") from None


def from_text(spec: Spec, raw: str):
    """The typed value of `--name=raw` (a flagfile line): an empty value of an optional field is None."""
    if spec.optional and raw == "":
        return None
    if spec.kind == "list":
        return list_items(spec, raw.split(","))
    try:
        return _scalar(spec.kind, raw)
    except ValueError as error:
        raise ValueError(f"--{spec.name}={raw}: {error}") from None


def _cell(text: str) -> str:
    """Text for a Markdown table cell (no HTML tags, emphasis or column breaks)."""
    for plain, escaped in (("\\", "\\\\"), ("|", "\\|"), ("*", "\\*"), ("<", "&lt;"), (">", "&gt;"),
                           ("\n", " ")):
        text = text.replace(plain, escaped)
    return text


def _type_name(spec: Spec) -> str:
    name = f"list of {spec.item}" if spec.kind == "list" else spec.kind
    return f"{name} or none" if spec.optional else name


def _default_text(spec: Spec, stated: dict[str, str]) -> str:
    if spec.name in stated:
        return stated[spec.name]
    if spec.required:
        return "(required)"
    if spec.default is None:
        return "(none)"
    return f"`{spec.flag_default}`" if spec.flag_default != "" else "(empty)"


def _valid_text(spec: Spec) -> str:
    parts = []
    if spec.choices is not None:
        parts.append(("each of " if spec.kind == "list" else "") + ", ".join(f"`{c}`" for c in spec.choices))
    if spec.check is not None:
        parts.append(_cell(spec.check.describe()))
    return "; ".join(parts)


def markdown_table(cls: type, defaults: dict[str, str] | None = None) -> str:
    """The flag table of dataclass `cls`: one row per setting in declaration order; `defaults`: Markdown for the
    default column of the named settings (defaults that depend on other settings)."""
    rows = ["| flag | type | default | valid values | help |", "|---|---|---|---|---|"]
    rows += [f"| `--{spec.name}` | {_type_name(spec)} | {_default_text(spec, defaults or {})} | {_valid_text(spec)} | "
             f"{_cell(spec.help)} |" for spec in specs(cls)]
    return "\n".join(rows) + "\n"

