"""Public data formats → ms-swift messages JSONL whose assistant turn is compact JSON.

    cluener         {"text", "label": {type: {entity: [[start, end_inclusive], ...]}}} per line
                    → {type: [entity, ...]} for all ten CLUENER types (empty lists included, so every
                    answer has the same keys and a JSON schema can require them)
    raner           {"text", "entities": [{"category", "start", "end"}]} per line, end exclusive
                    (Python slice), as ModelScope's RaNER data → {category: [entity, ...]}
    paddle-waybill  PaddleNLP express_ner: header "text_a<TAB>label", then characters and BIO tags
                    separated by \\x02 → the six address fields (P name, T phone, A1 province,
                    A2 city, A3 district, A4 specific_location); a field the text lacks (some
                    waybills omit the city) is "", so every answer has all six keys
    alpaca          JSON array (or JSONL) of {system, instruction, input, output}; output may be a
                    fenced ```json block → the parsed object

A bad row is reported with file:line and the reason; the other rows are converted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from swiftpipe.core import jsonl
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.task import messages
from swiftpipe.task.reference import ADDRESS_FIELDS, ADDRESS_SYSTEM_PROMPT, CLUENER_SYSTEM_PROMPT, CLUENER_TYPES

WAYBILL_TAGS = {"P": "name", "T": "phone", "A1": "province", "A2": "city", "A3": "district",
                "A4": "specific_location"}
FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*$", re.S)
FORMATS = ("cluener", "raner", "paddle-waybill", "alpaca")


class ConvertError(SwiftpipeError):
    pass


@dataclass
class BadRow:
    line: int
    reason: str


@dataclass
class Converted:
    rows: list[dict]
    bad: list[BadRow]


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object or a ValueError) for each non-blank line."""
    for number, value in jsonl.scan(path):
        yield number, ValueError(str(value).split(": ", 1)[1]) if isinstance(value, jsonl.JsonlError) else value


def _json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """Elements of a JSON array with the line each one starts on (JSONL is accepted too)."""
    text = path.read_text(encoding="utf-8")
    start = len(text) - len(text.lstrip())
    if not text[start:start + 1] == "[":
        yield from _json_lines(path)
        return
    decoder = json.JSONDecoder()
    pos = start + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise ConvertError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix the file and rerun") from None
        yield line, obj


def _entities_by_type(types: tuple[str, ...], found: list[tuple[str, str]]) -> dict[str, list[str]]:
    answer: dict[str, list[str]] = {t: [] for t in types}
    for kind, entity in found:
        if entity not in answer.setdefault(kind, []):
            answer[kind].append(entity)
    return answer


def _cluener(record: Any) -> tuple[str, Any]:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError('expected an object with "text" and "label"')
    if "label" not in record:
        raise ValueError('no "label" (an unlabelled test file cannot be converted to training data)')
    text, found = record["text"], []
    for kind, entities in record["label"].items():
        if kind not in CLUENER_TYPES:
            raise ValueError(f"unknown entity type '{kind}' (CLUENER types: {', '.join(CLUENER_TYPES)})")
        for entity, spans in entities.items():
            for start, end in spans:
                if text[start:end + 1] != entity:
                    raise ValueError(f"span [{start}, {end}] of '{kind}' is '{text[start:end + 1]}', not '{entity}'")
            found.append((kind, entity))
    return text, _entities_by_type(CLUENER_TYPES, found)


def _raner(record: Any, types: tuple[str, ...]) -> tuple[str, Any]:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError('expected an object with "text" and "entities"')
    text, found = record["text"], []
    for entity in record.get("entities", []):
        try:
            kind, start, end = entity["category"], int(entity["start"]), int(entity["end"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"entity {entity!r} lacks category/start/end") from None
        if not 0 <= start < end <= len(text):
            raise ValueError(f"entity offsets [{start}, {end}) are outside the text (length {len(text)})")
        if "entity" in entity and text[start:end] != entity["entity"]:
            raise ValueError(f"offsets [{start}, {end}) give '{text[start:end]}', not '{entity['entity']}'")
        found.append((kind, text[start:end]))
    return text, _entities_by_type(types, found)


def _bio_spans(tags: list[str]) -> Iterator[tuple[str, int, int]]:
    """(tag, start, end exclusive) for B-/I- runs, as PaddleNLP writes them (e.g. A1-B, A1-I)."""
    current, start = None, 0
    for i, tag in enumerate(tags + ["O"]):
        kind, _, position = tag.rpartition("-")
        if current is not None and (tag == "O" or position == "B" or kind != current):
            yield current, start, i
            current = None
        if tag != "O" and (position == "B" or current is None):
            current, start = kind, i


def _paddle_line(line: str) -> tuple[str, Any]:
    try:
        chars_part, tags_part = line.rstrip("\n").split("\t")
    except ValueError:
        raise ValueError("expected two tab-separated columns (characters, tags)") from None
    chars, tags = chars_part.split("\x02"), tags_part.split("\x02")
    if len(chars) != len(tags):
        raise ValueError(f"{len(chars)} characters but {len(tags)} tags")
    answer = {field: "" for field in ADDRESS_FIELDS}
    for tag, start, end in _bio_spans(tags):
        if tag not in WAYBILL_TAGS:
            raise ValueError(f"unknown tag '{tag}' (known: {', '.join(WAYBILL_TAGS)}, O)")
        answer[WAYBILL_TAGS[tag]] += "".join(chars[start:end])
    if not any(answer.values()):
        raise ValueError("no tagged field at all")
    return "".join(chars), answer


def _alpaca(record: Any) -> tuple[Optional[str], str, Any]:
    if not isinstance(record, dict) or "output" not in record:
        raise ValueError('expected an object with "instruction", "input" and "output"')
    instruction, extra = str(record.get("instruction") or ""), str(record.get("input") or "")
    user = "\n".join(part for part in (instruction, extra) if part)
    if not user:
        raise ValueError("empty instruction and input")
    output = str(record["output"])
    fenced = FENCE.match(output)
    try:
        answer = json.loads(fenced.group(1) if fenced else output)
    except json.JSONDecodeError as exc:
        raise ValueError(f"output is not JSON ({exc.msg})") from None
    return record.get("system") or None, user, answer


def convert(fmt: str, path: Path, *, system_prompt: Optional[str] = None,
            types: Optional[tuple[str, ...]] = None) -> Converted:
    """Convert one file; `system_prompt` overrides the format's default (alpaca: the row's own)."""
    if fmt not in FORMATS:
        raise ConvertError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    rows: list[dict] = []
    bad: list[BadRow] = []

    def run(items: Iterator[tuple[int, Any]], make: Callable[[Any], tuple[Optional[str], str, Any]]) -> None:
        for number, item in items:
            try:
                if isinstance(item, ValueError):
                    raise item
                system, user, answer = make(item)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                bad.append(BadRow(number, str(exc)))
                continue
            rows.append(messages.build(system, user, answer))

    if fmt == "cluener":
        run(_json_lines(path), lambda r: (system_prompt or CLUENER_SYSTEM_PROMPT, *_cluener(r)))
    elif fmt == "raner":
        if types is None:  # every category in the file, so that all answers share their keys
            types = tuple(sorted({str(e["category"]) for _, r in _json_lines(path) if isinstance(r, dict)
                                  for e in r.get("entities", []) if isinstance(e, dict) and e.get("category")}))
        prompt = system_prompt or ("你是一个命名实体识别助手。从用户给出的文本中找出以下类型的实体："
                                   + "、".join(types) + "。以JSON输出，每个类型对应实体名称列表，没有则为空列表。")
        run(_json_lines(path), lambda r: (prompt, *_raner(r, types)))
    elif fmt == "paddle-waybill":
        def lines() -> Iterator[tuple[int, Any]]:
            with path.open(encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if line.strip() and not (number == 1 and line.startswith("text_a")):
                        yield number, line
        run(lines(), lambda line: (system_prompt or ADDRESS_SYSTEM_PROMPT, *_paddle_line(line)))
    else:
        def alpaca(record: Any) -> tuple[Optional[str], str, Any]:
            system, user, answer = _alpaca(record)
            return system_prompt or system, user, answer
        run(_json_array(path), alpaca)
    return Converted(rows, bad)


def write_rows(rows: list[dict], out: Path) -> None:
    jsonl.write_lines(out, rows)
