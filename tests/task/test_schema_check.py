"""The fast schema check agrees with jsonschema wherever it answers."""

import random
from pathlib import Path

import jsonschema
import pytest

from swiftpipe.recipe.load import load_recipe
from swiftpipe.task import flags
from swiftpipe.task.schema_check import compile_check

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
OTHERS = [
    {"type": "object", "properties": {"n": {"type": "integer"}, "x": {"type": "number"}, "b": {"type": "boolean"},
                                       "z": {"type": "null"}, "o": {"type": "object"},
                                       "u": {"type": ["string", "null"], "minLength": 2},
                                       "l": {"type": "array", "items": {"type": "string", "maxLength": 3},
                                             "minItems": 1, "maxItems": 2}},
     "required": ["n", "x"]},
    {"type": "object", "properties": {"s": {"type": "string", "format": "email", "description": "d"}},
     "additionalProperties": False},
    {"type": "array", "items": {"type": "object", "properties": {"t": {"type": "string"}}, "required": ["t"]}},
    {},
]
VALUES = [None, True, False, 0, 1, -3, 1.0, 2.5, float("inf"), "", "a", "ab", "abc", "abcd", "北京市朝阳区", [], ["a"],
          ["a", "bb"], ["a", "b", "c"], ["abcd"], [1], {}, {"t": "x"}, {"t": 1}]


def _instances(schema: dict, rng: random.Random, n: int):
    props = schema.get("properties", {})
    fits = {k: [v for v in VALUES if jsonschema.validators.validator_for(sub)(sub).is_valid(v)] or VALUES
            for k, sub in props.items()}
    for _ in range(n):
        kind = rng.random()
        if kind < 0.15:
            yield rng.choice(VALUES)
        elif kind < 0.25:
            yield [rng.choice(VALUES) for _ in range(rng.randint(0, 3))]
        elif kind < 0.6:  # near misses: mostly fitting values, a field left out or one too many now and then
            row = {k: rng.choice(fits[k] if rng.random() < 0.95 else VALUES) for k in props if rng.random() < 0.97}
            if rng.random() < 0.1:
                row["extra"] = "x"
            yield row
        else:
            yield {k: rng.choice(VALUES) for k in [*props, "extra"] if rng.random() < 0.8}


def _schemas():
    for path in RECIPES:
        schema = load_recipe(path).recipe.data.json_schema()
        if schema:
            yield path.stem, schema
    for i, schema in enumerate(OTHERS):
        yield f"other-{i}", schema


@pytest.mark.parametrize("name,schema", list(_schemas()), ids=lambda v: v if isinstance(v, str) else "")
def test_the_fast_check_says_yes_exactly_when_jsonschema_finds_no_error(name, schema):
    fast = compile_check(schema)
    assert fast is not None, f"{name}: a recipe's schema should be in the fast subset"
    full = jsonschema.validators.validator_for(schema)(schema)
    rng = random.Random(name)
    seen = {True: 0, False: 0}
    for instance in _instances(schema, rng, 3000):
        expected = not list(full.iter_errors(instance))
        assert fast(instance) is expected, (name, instance)
        seen[expected] += 1
    assert seen[True] and (seen[False] or not schema), seen  # both verdicts were exercised ({} admits all)


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"enum": ["x"]}}},
    {"type": "string", "pattern": "^a"},
    {"anyOf": [{"type": "string"}]},
    {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer"},
    {"type": "object", "additionalProperties": {"type": "string"}},
    {"type": "decimal"},
    {"type": "string", "maxLength": -1},
    {"type": "object", "required": "a"},
])
def test_schemas_outside_the_subset_are_left_to_jsonschema(schema):
    assert compile_check(schema) is None


def test_check_reports_jsonschema_messages_for_what_the_fast_check_refuses():
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 2}}, "required": ["name"],
              "additionalProperties": False}
    assert flags.check("张三", '{"name": "张三"}', schema=schema).valid
    bad = flags.check("x", '{"name": "张三丰", "age": 3}', schema=schema)
    assert not bad.valid and flags.SCHEMA_VIOLATION in bad.flags
    assert any(p.startswith("name: ") and "too long" in p for p in bad.problems), bad.problems
    assert any("age" in p for p in bad.problems), bad.problems
    odd = {"type": "object", "properties": {"k": {"enum": ["a"]}}}  # outside the subset: jsonschema alone
    assert flags.check("", '{"k": "a"}', schema=odd).valid and not flags.check("", '{"k": "b"}', schema=odd).valid
