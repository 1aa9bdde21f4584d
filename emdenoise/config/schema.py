"""The machinery of the parameters schema, with no dependency on the rest of emdenoise (errors aside).

A section is a frozen dataclass whose fields are declared with :func:`param` (a type, a default, a range or a
set of choices, a line of help: a :class:`Field`). This module validates values against those fields (with a
did-you-mean hint for a misspelt key or choice), reads the YAML file and the ``--set section.key=value``
overrides, and writes the reference table. The sections themselves are in :mod:`emdenoise.config.params`.

The model files import :class:`Field` from here to declare their own options: keep this module free of torch,
NumPy and every other emdenoise module, so that importing it never imports a registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from emdenoise.errors import InputError

Names = str | list[str]  # a ``names`` value: "all", or a list of names
Choices = tuple[str, ...] | Callable[[], tuple[str, ...]] | None


@dataclass(frozen=True)
class Field:
    """One parameter. ``kind`` is one of: int, float, str, bool, names (a name, a list of names, or 'all'),
    ints (a non-empty list of distinct integers, each within ``min`` and ``max``). ``choices`` may be a
    function returning them (the names of a registry, read when first needed)."""

    kind: str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: Choices = dataclasses.field(default=None, compare=False)
    check: Callable[[Any], str | None] | None = dataclasses.field(default=None, compare=False)

    @property
    def allowed(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices

    def describe(self) -> str:
        """What a valid value looks like, for error messages."""
        allowed = self.allowed
        if self.kind == "names":
            return f"'all', one of {', '.join(allowed or ())}, or a list of them"
        if allowed:
            return "one of " + ", ".join(repr(c) for c in allowed)
        what = {
            "int": "an integer",
            "float": "a number",
            "str": "a string",
            "bool": "true or false",
            "ints": "a list of distinct integers",
        }[self.kind]
        if self.min is not None and self.max is not None:
            what += f" in [{self.min}, {self.max}]"
        elif self.min is not None:
            what += f" >= {self.min}"
        elif self.max is not None:
            what += f" <= {self.max}"
        return what


def param(kind: str, default: Any, help: str, **spec: Any) -> Any:
    """A section field: the dataclass default plus its :class:`Field` (in the field's metadata)."""
    fld = Field(kind, default, help, **spec)
    if kind == "names" and default != "all":  # validated form: "all" or a list (checked by the tests)
        names = [default] if isinstance(default, str) else list(default)
        return dataclasses.field(default_factory=lambda: list(names), metadata={"param": fld})
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"param": fld})
    return dataclasses.field(default=default, metadata={"param": fld})


def hint(word: str, options: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options`` to ``word``, or nothing."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- one value -----------------------------------------------------------------------------------------------------
def _fmt_value(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _as_int(value: Any) -> int | None:
    """``value`` as an int when it is one (a whole float counts; a bool does not)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _ints(where: str, name: str, fld: Field, value: Any, bad: Callable[[], InputError]) -> list[int]:
    items = [_as_int(v) for v in value] if isinstance(value, list) else []
    if not items or any(v is None for v in items):
        raise bad()
    ints = [v for v in items if v is not None]
    if any(fld.min is not None and v < fld.min or fld.max is not None and v > fld.max for v in ints):
        raise bad()
    if len(set(ints)) != len(ints):
        raise InputError.at(where, name, f"expected {fld.describe()}, got repeated values in {ints}")
    return ints


def _names(where: str, name: str, fld: Field, value: Any, bad: Callable[[], InputError]) -> Names:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(v, str) for v in names):
        raise bad()
    if names == ["all"]:
        return "all"
    allowed = fld.allowed or ()
    for item in names:
        if item not in allowed:
            raise InputError.at(where, name, f"unknown name {item!r}{hint(item, allowed)}; expected {fld.describe()}")
    if len(set(names)) != len(names):
        raise InputError.at(where, name, f"names repeat in {names}")
    return list(names)


def _scalar(where: str, name: str, fld: Field, value: Any, bad: Callable[[], InputError]) -> Any:
    """An int, float, str or bool value converted, before its range and check."""
    if fld.kind == "bool":
        if not isinstance(value, bool):
            raise bad()
    elif fld.kind == "int":
        value = _as_int(value)
        if value is None:
            raise bad()
    elif fld.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad()
        value = float(value)
    elif fld.kind == "str":
        if not isinstance(value, str) or not value:
            raise bad()
        allowed = fld.allowed
        if allowed and value not in allowed:
            raise InputError.at(where, name, f"expected {fld.describe()}, got {value!r}{hint(value, allowed)}")
    return value


def validate_value(where: str, name: str, fld: Field, value: Any) -> Any:
    """Return ``value`` converted to the field's type, or raise a one-line :class:`InputError`."""

    def bad() -> InputError:
        return InputError.at(where, name, f"expected {fld.describe()}, got {_fmt_value(value)}")

    if fld.kind == "ints":
        return _ints(where, name, fld, value, bad)
    if fld.kind == "names":
        return _names(where, name, fld, value, bad)
    converted = _scalar(where, name, fld, value, bad)
    if fld.kind == "bool":
        return converted
    if fld.min is not None and converted < fld.min or fld.max is not None and converted > fld.max:
        raise bad()
    if fld.check:
        problem = fld.check(converted)
        if problem:
            raise InputError.at(where, name, f"expected {problem}, got {_fmt_value(converted)}")
    return converted


# -- a section -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Section:
    """One validated section of the parameters. ``where`` is the file (or ``--set``) the values came from."""

    NAME: ClassVar[str] = ""
    where: str = dataclasses.field(default="parameters", compare=False, repr=False)

    @classmethod
    def fields(cls) -> dict[str, Field]:
        """Every parameter of the section, in declaration order."""
        return {f.name: f.metadata["param"] for f in dataclasses.fields(cls) if "param" in f.metadata}

    @classmethod
    def build(cls, values: dict[str, Any], where: str) -> Section:
        """The section from validated ``values`` (every key of :meth:`fields`), cross-checked."""
        section = cls(where=where, **values)
        section.check()
        return section

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{key: default}`` for every parameter, validated (a bad default is a bug the tests catch)."""
        return {
            key: validate_value("defaults", f"{cls.NAME}.{key}", fld, fld.default) for key, fld in cls.fields().items()
        }

    @classmethod
    def validate_key(cls, where: str, key: Any, value: Any) -> Any:
        """``value`` checked for ``key``: the key must be one of the section's, with a did-you-mean hint."""
        fields = cls.fields()
        if key not in fields:
            raise InputError.at(
                where, f"{cls.NAME}.{key}", f"unknown key{hint(str(key), fields)}; valid keys: {', '.join(fields)}"
            )
        return validate_value(where, f"{cls.NAME}.{key}", fields[key], value)

    def check(self) -> None:
        """Checks that involve more than one field; raise a one-line InputError."""

    def as_dict(self) -> dict[str, Any]:
        """The section as the parameters file spells it (``{key: value}``)."""
        return {key: getattr(self, key) for key in self.fields()}

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` (validated like a parameters file: a bad value is an InputError)."""
        values = self.as_dict()
        for key, value in changes.items():
            values[key] = self.validate_key(self.where, key, value)
        return type(self).build(values, self.where)

    def error(self, key: str, expected: str) -> InputError:
        """A one-line InputError about ``key`` of this section, naming the file it came from."""
        return InputError.at(self.where, f"{self.NAME}.{key}", expected)


# -- a file of sections --------------------------------------------------------------------------------------------
def section_class(sections: Mapping[str, type[Section]], where: str, name: Any) -> type[Section]:
    """The class of section ``name``, or a one-line error with a did-you-mean hint."""
    if name not in sections:
        raise InputError.at(
            where, str(name), f"unknown section{hint(str(name), sections)}; expected one of {', '.join(sections)}"
        )
    return sections[name]


def validate_sections(sections: Mapping[str, type[Section]], raw: Any, where: str) -> dict[str, Section]:
    """Every section built from ``raw`` (a parsed YAML mapping) merged over the defaults, each value checked."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError.at(
            where, None, f"expected a mapping of sections ({', '.join(sections)}), got {type(raw).__name__}"
        )
    values = {name: cls.defaults() for name, cls in sections.items()}
    for name, given in raw.items():
        cls = section_class(sections, where, name)
        if given is None:
            continue
        if not isinstance(given, dict):
            raise InputError.at(where, name, f"expected a mapping of keys, got {_fmt_value(given)}")
        for key, value in given.items():
            values[name][key] = cls.validate_key(where, key, value)
    return {name: cls.build(values[name], where) for name, cls in sections.items()}


def read_yaml(path: Path, expected: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (empty for an empty file); every failure a one-line InputError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError.at(path, None, "parameters file not found") from None
    except IsADirectoryError:
        raise InputError.at(path, None, "expected a YAML file, found a folder") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InputError.at(path, None, f"cannot read parameters file ({exc.__class__.__name__}: {reason})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError.at(path, line, f"invalid YAML: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError.at(path, None, f"expected a mapping of sections ({expected}), got {type(raw).__name__}")
    return raw


def apply_overrides(
    sections: Mapping[str, type[Section]], raw: dict[str, Any], overrides: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """``raw`` with every ``section.key=value`` of ``overrides`` set (each checked on its own first, so that
    its mistakes name ``--set``, not the file)."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise InputError.at("--set", item, "expected section.key=value, e.g. train.epochs=5")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        section_class(sections, "--set", section).validate_key("--set", name, value)
        if not isinstance(raw.get(section), dict):
            raw[section] = {}
        raw[section][name] = value
    return raw


def reference_markdown(tables: Mapping[str, Mapping[str, Field]]) -> str:
    """The parameters reference: one markdown table per section, ``{section: {key: Field}}``."""
    lines = []
    for section, fields in tables.items():
        lines += [f"#### `{section}:`", "", "| key | default | valid | meaning |", "|---|---|---|---|"]
        for key, fld in fields.items():
            lines.append(f"| `{key}` | `{fld.default}` | {fld.describe()} | {fld.help} |")
        lines.append("")
    return "\n".join(lines)
