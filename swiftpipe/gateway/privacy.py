"""What the request log keeps of the texts it sees (`swiftpipe serve --log-content`), and the
checks that keep texts a database cannot hold faithfully out of it.

- `full` (the default: review needs the text): the input, the model's answer and its fields;
- `redacted`: the same with digit runs (phones, ID numbers, account and order numbers), e-mail
  addresses and Chinese ID numbers masked; what is left (names, places) is still personal data;
- `none`: no input, no answer, no fields: only the version, the key's id, the status, latency,
  flags, validity and token counts (the metrics and statistics work as before; there is nothing
  to review or to turn into training rows).

A refused request (4xx) keeps no text in any mode.
"""

from __future__ import annotations

import re
from typing import Any, Optional

MODES = ("full", "redacted", "none")

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_ID = re.compile(r"(?<![0-9])\d{17}[\dXx](?![0-9])")  # a Chinese resident ID number
# A run of digits, possibly broken up by spaces, dots or dashes (138 0000 0000, +86-138-...), with at
# least four digits: phone, ID, order and account numbers. Short numbers (a house number) stay.
_DIGITS = re.compile(r"\+?\d(?:[\d\s.\-]*\d)?")
MIN_MASKED_DIGITS = 4


def _mask_digits(match: re.Match) -> str:
    text = match.group(0)
    if sum(c.isdigit() for c in text) < MIN_MASKED_DIGITS:
        return text
    return "".join("#" if c.isdigit() else c for c in text)


def redact(text: Optional[str]) -> Optional[str]:
    """`text` with e-mail addresses, ID numbers and digit runs of 4+ digits masked."""
    if not text:
        return text
    text = _EMAIL.sub("<email>", text)
    text = _ID.sub(lambda m: "#" * len(m.group(0)), text)
    return _DIGITS.sub(_mask_digits, text)


def redact_value(value: Any) -> Any:
    """An answer's fields with every string in them redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    return value


def kept(mode: str, status: int, text: Optional[str], output: Optional[str],
         fields: Any) -> tuple[Optional[str], Optional[str], Any]:
    """(input, answer, fields) as the log keeps them under `mode` for a request answered `status`."""
    if mode == "none" or 400 <= status < 500:
        return None, None, None
    if mode == "redacted":
        return redact(text), redact(output), redact_value(fields)
    return text, output, fields


_UNFIT = re.compile("[\x00\ud800-\udfff]")


def text_problem(value: Any, what: str) -> Optional[str]:
    """Why a text cannot be taken (a NUL character, a lone surrogate), naming where; None if it can."""
    found = _UNFIT.search(value) if isinstance(value, str) else None
    if found is None:
        return None
    if found.group(0) == "\x00":
        return f"{what} has a NUL character at position {found.start()}; remove it"
    return f"{what} has a lone surrogate (U+{ord(found.group(0)):04X}) at position {found.start()}: it is not valid Unicode"
