"""Reading a model's answer: strip a leading think block and a code fence, parse the JSON.

One function, used wherever an answer is read (evaluation, teacher labelling, serving, batch
extraction), so a Qwen3 `<think>` block or a ```json fence is handled the same everywhere.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

THINK_RE = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)
FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_answer(text: Optional[str]) -> tuple[Optional[Any], bool]:
    """(parsed JSON or None, whether a leading think block was stripped)."""
    if text is None:
        return None, False
    stripped = THINK_RE.sub("", text, count=1)
    had_think = stripped != text
    fenced = FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    try:
        return strict_loads(stripped), had_think
    except (ValueError, RecursionError):
        return None, had_think


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT = json.JSONDecoder(parse_constant=reject_constant)


def strict_loads(text: "str | bytes") -> Any:
    """json.loads without NaN/Infinity (not JSON, and not serialisable back); ValueError or
    RecursionError (nesting too deep) when it is not JSON."""
    if isinstance(text, str) and not text.startswith("\ufeff"):  # (json.loads words a BOM: left to it)
        return _STRICT.decode(text)  # what json.loads does with a str, without a new decoder each time
    return json.loads(text, parse_constant=reject_constant)
