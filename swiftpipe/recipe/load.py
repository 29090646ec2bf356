"""Load a recipe: YAML file + `key.sub=value` overrides → validated `Recipe`.

Every problem is collected and reported at once, each with its key path, where it came from
(file:line or the command line) and a fix (a did-you-mean for misspelt keys).
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ValidationError

from swiftpipe.core.errors import RecipeError
from swiftpipe.recipe.schema import Recipe

COMMAND_LINE = "command line"


@dataclass
class LoadedRecipe:
    recipe: Recipe
    path: Path
    text: str  # the file as written
    overrides: list[str]

    @property
    def name(self) -> str:
        return self.recipe.name or self.path.stem


def _key_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path of a YAML mapping tree to its 1-based line number."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    return lines


def parse_override(item: str) -> tuple[tuple[str, ...], Any]:
    """`train.lr=2e-4` → (("train", "lr"), 2e-4); the value is read as YAML (lists, null, ...)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(
            f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=2e-4"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: keep the text, the schema decides
    return tuple(key.split(".")), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return data


def _fields_at(loc: tuple) -> Optional[dict]:
    """The schema fields of the section that holds `loc[-1]`, or None."""
    model: Any = Recipe
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    return getattr(model, "model_fields", None)


def _describe(err: Any, lines: dict[tuple, int], file: str, overridden: set[tuple]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) or "(top level)"
    where = (
        COMMAND_LINE
        if any(loc[: len(o)] == o for o in overridden)
        else f"{file}:{lines[loc]}" if loc in lines else file
    )
    if err["type"] == "extra_forbidden":
        fields = _fields_at(loc) or {}
        near = difflib.get_close_matches(loc[-1], list(fields), n=1, cutoff=0.5)
        hint = f"did you mean '{near[0]}'?" if near else f"known keys: {', '.join(fields)}"
        return f"{key}: unknown key ({where}); {hint}"
    if err["type"] == "missing":
        return f"{key}: required key is missing ({where}); add it to the recipe"
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    return f"{key}: {err['msg']}{shown} ({where})"


def validate(data: Any, *, file: str = "<recipe>", lines: Optional[dict] = None,
             overridden: Optional[set] = None) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{file}: a recipe is a YAML mapping of sections (model:, data:, ...)")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e, lines or {}, file, overridden or set()) for e in exc.errors()]
        raise RecipeError(
            f"{file}: {len(problems)} problem(s) in the recipe:\n"
            + "\n".join(f"  - {p}" for p in problems)
        ) from None


def load_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> LoadedRecipe:
    path = Path(path)
    overrides = list(overrides or [])
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path} (see recipes/ for examples)") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    lines = _key_lines(node) if node is not None else {}
    overridden = {parse_override(o)[0] for o in overrides}
    data = apply_overrides(data, overrides) if isinstance(data, dict) else data
    recipe = validate(data, file=str(path), lines=lines, overridden=overridden)
    return LoadedRecipe(recipe=recipe, path=path, text=text, overrides=overrides)


def resolved_yaml(recipe: Recipe) -> str:
    """The recipe with every default filled in, as YAML (stable key order)."""
    return yaml.safe_dump(
        recipe.model_dump(mode="json"), allow_unicode=True, sort_keys=False, width=100
    )
