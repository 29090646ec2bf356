"""The recipe's documentation, from its one source: the schema's field types, defaults and
descriptions. `swiftpipe validate RECIPE --explain` prints it; the shipped recipes' `# doc (type,
default)` comments are checked against it (tests/recipe/test_docs.py)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from swiftpipe.recipe.schema import Recipe

_TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool", dict: "dict", list: "list"}


@dataclass
class KeyDoc:
    key: str  # dotted: lora.rank
    type: str  # str, int, float, bool, list, dict; str|list for a field that takes either
    default: str  # as written in a recipe comment: 8, null, [all-linear], required, ...
    description: str

    def comment(self) -> str:
        """The comment a shipped recipe carries above this key."""
        first = self.description.split(" ", 1)[0]
        keep = first.startswith("ms-") or "_" in first
        text = self.description if keep else self.description[:1].upper() + self.description[1:]
        return f"{text} ({self.type}, {self.default})"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        names = list(dict.fromkeys(_type_name(a) for a in args))
        return "|".join(names)  # Optional[int] is int; Union[str, list[str]] is str|list
    if origin is typing.Literal:
        return _TYPE_NAMES.get(type(typing.get_args(annotation)[0]), "str")
    if origin in (list, dict):
        return _TYPE_NAMES[origin]
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def format_value(value: Any) -> str:
    """A default as a recipe comment writes it (YAML flow style, floats as Python prints them)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def keys(model: type[BaseModel] = Recipe, prefix: str = "") -> Iterator[KeyDoc]:
    """Every key of the schema, depth first, in declaration order."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from keys(annotation, f"{prefix}{name}.")
            continue
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = format_value(field.default_factory())  # type: ignore[call-arg]
        else:
            default = format_value(None if field.default is PydanticUndefined else field.default)
        if name == "name" and not prefix:
            default = "file stem"
        description = field.description or ""
        choices = _choices(annotation)
        if choices:
            description += ": " + " | ".join(choices)
        yield KeyDoc(f"{prefix}{name}", _type_name(annotation), default, description)


def _choices(annotation: Any) -> list[str]:
    if typing.get_origin(annotation) is typing.Union:  # Optional[Literal[...]]: its choices (none = the default)
        return [c for a in typing.get_args(annotation) if a is not type(None) for c in _choices(a)]
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return []


def find(key: str) -> Optional[KeyDoc]:
    return next((k for k in keys() if k.key == key), None)


def explain() -> str:
    """Every recipe key with its type, default and description, grouped by section."""
    lines, section = [], None
    docs = list(keys())
    width = max(len(k.key) for k in docs)
    type_width = max(5, *(len(k.type) for k in docs))
    for k in docs:
        top = k.key.split(".")[0] if "." in k.key else ""
        if top != section:
            section = top
            lines.append(f"\n{top}:" if top else "top level:")
        lines.append(f"  {k.key:<{width}}  {k.type:<{type_width}}  default {k.default:<14}  {k.description}")
    return "\n".join(lines).lstrip("\n") + "\n"
