"""Checking one answer of the model: its parsed fields, whether it is valid, and what looks wrong.

Computed once per answer, wherever answers are produced (the gateway, batch extraction), so a flag
means the same in the request log, the metrics and an extraction's output:

- `invalid_json`: the answer is not JSON (after a think block and a code fence are stripped);
- `schema_violation`: JSON that does not satisfy the recipe's schema (missing or extra field,
  wrong type, too long);
- `empty:<field>`: a field that is empty (`""`, null, `[]`, `{}`);
- `not_in_text:<field>`: a field the recipe marks verbatim (`data.verbatim_fields`) whose value is
  not a substring of the input text (a name or phone the model made up);
- `think_block`: the answer started with a `<think>` block (thinking should be off);
- `low_confidence:<field>`: a field whose confidence (`swiftpipe.task.confidence`, the probability
  the model gave its exact value) is below the version's accept threshold;
- `upstream_error`, `timeout`: no answer at all (added by the caller, who knows why).

`valid` means: parsed JSON that satisfies the schema. Empty and not-in-text fields are warnings.
`needs_review`: not valid, a field not in the text, a think block, or (with an accept threshold) a
row confidence below it or unknown: an answer nobody can vouch for is never auto-accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from swiftpipe.task.answers import parse_answer

INVALID_JSON = "invalid_json"
SCHEMA_VIOLATION = "schema_violation"
THINK_BLOCK = "think_block"
UPSTREAM_ERROR = "upstream_error"
TIMEOUT = "timeout"
LOW_CONFIDENCE = "low_confidence"  # low_confidence:<field>
NOT_IN_TEXT = "not_in_text"  # not_in_text:<field>


@dataclass
class Checked:
    fields: Optional[Any]  # the parsed answer (a dict for extraction schemas), None if not JSON
    valid: bool
    flags: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # schema errors, for the log
    confidence: Optional[dict[str, Optional[float]]] = None  # {field: p}; None: no logprobs (never invented)
    row_confidence: Optional[float] = None  # the least confident field; None when unknown
    accept_threshold: Optional[float] = None  # the version's cut-off the flags and needs_review used

    @property
    def needs_review(self) -> bool:
        """Whether a person should look at this answer (module docstring)."""
        if not self.valid or any(f == THINK_BLOCK or f.startswith(NOT_IN_TEXT + ":") for f in self.flags):
            return True
        if self.accept_threshold is None:
            return False
        return self.row_confidence is None or self.row_confidence < self.accept_threshold

    def with_confidence(self, values: Optional[dict[str, Optional[float]]], row: Optional[float],
                        threshold: Optional[float]) -> "Checked":
        """This check with the answer's confidence, flagging the fields below `threshold`."""
        self.confidence, self.row_confidence, self.accept_threshold = values, row, threshold
        if values and threshold is not None:
            self.flags += [f"{LOW_CONFIDENCE}:{name}" for name, p in values.items() if p is not None and p < threshold]
        return self


_validators: dict[int, Any] = {}


def _validator(schema: dict) -> tuple[Optional[Callable[[Any], bool]], Any]:
    """The schema's fast yes/no (None when it has keywords outside that subset) and jsonschema's validator."""
    key = id(schema)
    if key not in _validators:
        import jsonschema

        from swiftpipe.task.schema_check import compile_check

        cls = jsonschema.validators.validator_for(schema)
        _validators[key] = (schema, (compile_check(schema), cls(schema)))  # keep the schema alive: ids are reused
    return _validators[key][1]


def is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def check(text: str, raw: Optional[str], *, schema: Optional[dict], verbatim_fields: Sequence[str] = ()) -> Checked:
    """Parse and check the model's raw answer `raw` to the input `text`."""
    parsed, had_think = parse_answer(raw)
    flags = [THINK_BLOCK] if had_think else []
    if parsed is None:
        return Checked(fields=None, valid=False, flags=[INVALID_JSON, *flags])
    problems = []
    if schema:
        fast, full = _validator(schema)
        if fast is None or not fast(parsed):  # jsonschema decides every "no" and says why
            problems = [f"{'/'.join(map(str, e.absolute_path)) or '<answer>'}: {e.message}"
                        for e in full.iter_errors(parsed)]
        if problems:
            flags.append(SCHEMA_VIOLATION)
    if isinstance(parsed, dict):
        # Fields of the schema only: the model's own keys must not mint new flag names (metric labels).
        names = list((schema or {}).get("properties") or {})
        flags += [f"empty:{name}" for name in names if name in parsed and is_empty(parsed[name])]
        for name in verbatim_fields:  # from the recipe
            value = parsed.get(name)
            if isinstance(value, str) and value and value not in text:
                flags.append(f"{NOT_IN_TEXT}:{name}")
    return Checked(fields=parsed, valid=not problems, flags=flags, problems=problems)


# Why a text is not sent to the model (`InputProblem.kind`): counted by kind in extract's summary.
EMPTY_TEXT = "empty_text"
TOO_LONG = "too_long"
NOT_TEXT = "not_text"


@dataclass(frozen=True)
class InputProblem:
    kind: str  # EMPTY_TEXT | TOO_LONG | NOT_TEXT
    message: str

    def __str__(self) -> str:
        return self.message


def input_problem(text: Any, *, max_length: Optional[int], length: Callable[[str], tuple[int, str]], who: str,
                  source: str) -> Optional[InputProblem]:
    """Why `text` cannot be sent to the model (empty, or longer than the recipe allows), or None.

    `length(text)` is (size, unit): tokens with the model's tokenizer, else characters. `who` and
    `source` name the model and where its limit comes from ("version 'v2'", "train.max_length of
    recipe 'address'"). Shared by the gateway (a 400) and batch extraction (a row's error).
    """
    if not isinstance(text, str) or not text.strip():
        return InputProblem(EMPTY_TEXT, "text is empty")
    if max_length and len(text) > 16 * max_length:  # surely too long: not worth tokenizing
        return InputProblem(TOO_LONG, f"text is {len(text)} characters; {who} accepts at most {max_length} tokens "
                                      f"({source})")
    if max_length:
        size, unit = length(text)
        if size > max_length:
            return InputProblem(TOO_LONG, f"text is {size} {unit}; {who} accepts at most {max_length} {unit} ({source})")
    return None
