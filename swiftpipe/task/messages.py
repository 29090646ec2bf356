"""The one parser and validator of ms-swift `messages` rows, and the one builder of them.

    {"messages": [{"role": "system", "content": "..."},      (optional)
                  {"role": "user", "content": "<text>"},
                  {"role": "assistant", "content": "<answer JSON>"}]}

Used by the evaluator (test rows), `data convert` / `data label` / `data stats`, the demo data and
the corrections export. Rules, everywhere the same: `messages` is a non-empty list of
{role, content} with role in ROLES and string content; there is a user turn; a system turn is
not empty (see `problem`); when an answer is required the last turn is the assistant's, and when
a JSON answer is required it parses.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from swiftpipe.core import jsonl
from swiftpipe.core.errors import SwiftpipeError

ROLES = ("system", "user", "assistant", "tool")
SHAPE = ('one JSON object per line: {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}, '
         "the last turn being the assistant's answer")


class MessagesError(SwiftpipeError):
    pass


@dataclass
class Example:
    """One row: the request (system, user) and the answer (text and parsed JSON)."""

    index: int  # position among the file's rows, from 0
    line: int  # line in the file, from 1 (0 when the row came from elsewhere)
    system: Optional[str]
    user: str
    answer_text: Optional[str] = None
    answer: Any = None  # parsed answer_text; None when absent or not JSON

    @property
    def key(self) -> str:
        """Identifies the row's content, so a resumed evaluation never mixes up rows."""
        payload = json.dumps([self.system, self.user, self.answer_text or ""], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def problem(record: Any, *, require_answer: bool = True) -> Optional[str]:
    """Why a parsed line is not a usable messages row (None when it is)."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        return 'expected {"messages": [{"role": ..., "content": ...}, ...]}'
    turns = record["messages"]
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            return f"message {i}: expected role in {list(ROLES)} and string content"
    if not any(t["role"] == "user" for t in turns):
        return "no user message"
    if turns[0]["role"] == "system" and turns[0]["content"] == "":
        # ms-swift reads "" as "no system prompt" and trains the row without a system turn, while
        # the served request cannot say that: without a system message Qwen2.5's chat template adds
        # its default prompt, with an empty one it renders an empty turn. Either way the served
        # prompt is not the trained one.
        return ("message 0: empty system prompt (ms-swift trains such a row with no system turn; served, the chat "
                "template adds its default or an empty one): remove the system turn or write the prompt")
    if require_answer and turns[-1]["role"] != "assistant":
        return "the last message must be the assistant's answer"
    return None


def parse(record: Any, *, index: int = 0, line: int = 0, default_system: Optional[str] = None,
          require_answer: bool = True, json_answer: bool = True) -> Example:
    """A checked Example; ValueError(reason) when the row is unusable."""
    reason = problem(record, require_answer=require_answer)
    if reason:
        raise ValueError(reason)
    turns = record["messages"]
    system = next((t["content"] for t in turns if t["role"] == "system"), default_system)
    user = [t["content"] for t in turns if t["role"] == "user"][-1]
    answer_text = turns[-1]["content"] if turns[-1]["role"] == "assistant" else None
    answer = None
    if answer_text is not None:
        try:
            answer = json.loads(answer_text)
        except json.JSONDecodeError as exc:
            if json_answer:
                raise ValueError(f"the assistant's answer is not valid JSON ({exc.msg})") from None
    return Example(index, line, system, user, answer_text, answer)


def scan(path: Path, *, default_system: Optional[str] = None, require_answer: bool = True,
         json_answer: bool = True) -> tuple[list[Example], list[str]]:
    """The usable rows and a 'file:line: problem' string for each other row."""
    rows: list[Example] = []
    problems: list[str] = []
    for number, record in jsonl.scan(path):
        if isinstance(record, jsonl.JsonlError):
            problems.append(str(record))
            continue
        try:
            rows.append(parse(record, index=len(rows), line=number, default_system=default_system,
                              require_answer=require_answer, json_answer=json_answer))
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
    return rows, problems


def read(path: Path, *, default_system: Optional[str] = None, require_answer: bool = True,
         json_answer: bool = True) -> list[Example]:
    """All rows of a messages JSONL file; every bad row is reported at once (file:line)."""
    try:
        rows, problems = scan(path, default_system=default_system, require_answer=require_answer,
                              json_answer=json_answer)
    except jsonl.JsonlError as exc:  # no such file
        raise MessagesError(str(exc)) from None
    if problems:
        raise MessagesError(f"{len(problems)} bad row(s) in {path} (expected {SHAPE}):\n" + listing(problems))
    if not rows:
        raise MessagesError(f"{path}: no rows (expected {SHAPE})")
    return rows


def listing(problems: list[str], limit: int = 20) -> str:
    shown = "\n".join(f"  - {p}" for p in problems[:limit])
    return shown + (f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else "")


def compact(answer: Any) -> str:
    """An answer as training text: compact JSON, Chinese kept readable."""
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":"))


def build(system: Optional[str], user: str, answer: Any) -> dict:
    """A messages row with a compact JSON assistant turn."""
    turns = [{"role": "system", "content": system}] if system else []
    return {"messages": turns + [{"role": "user", "content": user},
                                 {"role": "assistant", "content": compact(answer)}]}


def request(system: Optional[str], user: str) -> list[dict]:
    """The chat messages of a request (no answer)."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
