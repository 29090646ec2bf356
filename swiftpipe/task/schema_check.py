"""A fast yes/no for the answer schemas recipes build, with jsonschema's verdict.

`jsonschema` walks a schema through generic validator objects: ~0.1 ms for one six-field answer,
on every answer the gateway and `extract` check. Recipes' schemas use a small part of JSON Schema
(`type`, `properties`, `required`, `additionalProperties: false`, `items`, lengths), so
`compile_check` turns such a schema into one closure that answers "valid?" in a few microseconds.
It returns None for a schema with anything else in it (`enum`, `$ref`, `anyOf`, `pattern`, ...):
those are always checked by jsonschema. A "no" is also handed to jsonschema, for its messages;
only "yes" is decided here, with the same rules as jsonschema's Draft 2020-12 validator:
"integer" admits 1.0, booleans are not numbers, lengths count code points, `format` is an
annotation (jsonschema asserts it only with a format checker, and the gateway passes none).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "format", "$comment", "deprecated",
                          "readOnly", "writeOnly"})
_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items", "maxLength", "minLength",
                       "maxItems", "minItems"}) | _ANNOTATIONS


def _is_integer(x: Any) -> bool:
    return (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, float) and x.is_integer())


_TYPES: dict[str, Check] = {
    "string": lambda x: isinstance(x, str),
    "integer": _is_integer,
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "array": lambda x: isinstance(x, list),
    "object": lambda x: isinstance(x, dict),
}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bound(of: type[str] | type[list], n: int, is_max: bool) -> Check:
    """len() at most (or at least) n, for instances of `of` (others pass: `type` checks them)."""
    if is_max:
        return lambda x: not isinstance(x, of) or len(x) <= n
    return lambda x: not isinstance(x, of) or len(x) >= n


def compile_check(schema: Any) -> Optional[Check]:
    """A function telling whether an instance satisfies `schema`, or None (not in the fast subset)."""
    if not isinstance(schema, dict) or not set(schema) <= _KEYWORDS:
        return None
    checks: list[Check] = []
    kind = schema.get("type")
    if kind is not None:
        names = [kind] if isinstance(kind, str) else kind
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n in _TYPES for n in names):
            return None
        tests = [_TYPES[n] for n in names]
        checks.append(tests[0] if len(tests) == 1 else (lambda x: any(t(x) for t in tests)))
    for word, of in (("maxLength", str), ("minLength", str), ("maxItems", list), ("minItems", list)):
        if word in schema:
            if not _count(schema[word]):
                return None
            checks.append(_bound(of, schema[word], word.startswith("max")))
    if "items" in schema:
        item = compile_check(schema["items"])
        if item is None:
            return None
        checks.append(lambda x: not isinstance(x, list) or all(item(v) for v in x))
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        return None
    compiled: dict[str, Check] = {}
    for name, sub in props.items():
        c = compile_check(sub)
        if c is None:
            return None
        compiled[name] = c
    if compiled:
        checks.append(lambda x: not isinstance(x, dict) or all(c(x[k]) for k, c in compiled.items() if k in x))
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return None
    if required:
        checks.append(lambda x: not isinstance(x, dict) or all(r in x for r in required))
    extra = schema.get("additionalProperties", True)
    if extra is False:
        allowed = frozenset(props)
        checks.append(lambda x: not isinstance(x, dict) or allowed.issuperset(x))
    elif extra is not True:  # a schema for the other keys: not in the fast subset
        return None
    if len(checks) == 1:
        return checks[0]
    return lambda x: all(c(x) for c in checks)
