"""Per-field confidence of a JSON extraction answer from the model's own sampled-token log-probs.

One function (`answer_confidence`), used wherever an answer is produced: the evaluator, the
gateway's `/v1/extract` and batch extraction (`Task.check` calls it). Pure Python.

Inputs
------
- ``text``: the generated text (``message.content`` / ``CompletionOutput.text``), a JSON object,
  possibly after a leading ``<think>...</think>`` block or inside a ```json fence (the same two
  things ``swiftpipe.task.answers.parse_answer`` strips, with its regexes).
- ``tokens``: the sampled tokens in order, each ``(piece, logprob)``; ``piece`` is the token's
  exact bytes (preferred: from token ids, see ``token_bytes``) or a ``str`` (encoded as UTF-8:
  what vLLM puts in ``logprobs.content[i].token``, see ``pieces_from_openai``).
- ``fields``: the schema's top-level field names (``schema["properties"]``); None: every key of the
  answer.

Rules
-----
1. Everything is done in bytes. The concatenated token bytes ``B`` must contain the UTF-8 bytes
   ``T`` of ``text``: either ``B`` starts with ``T`` (tokens after the text, such as the EOS
   ``<|im_end|>`` that vLLM keeps in ``token_ids``/logprobs but not in the text, are ignored) or
   ``T`` follows a think block in ``B`` (a server-side reasoning parser strips the block from the
   content but not from the logprobs). Otherwise: ``None`` (never guess an alignment).
   1b. vLLM's string form of a token can hold U+FFFD where it could not place characters' bytes
   (seen: the last byte of 华 and 西 in one token, written "\ufffd西"; "\ufffd" for five
   characters of a garbled answer; "\ufffd\ufffd" for the last two bytes of 엏); when the bytes
   do not match as they are, each U+FFFD is matched to one or more bytes of non-ASCII characters
   of the text, as few as the rest allows.
2. A token with no bytes (vLLM's string form gives ``""`` to a token that ends in the middle of
   a UTF-8 character and the whole character to the token that completes it) is attached to the
   next token that has bytes: it is part of the same character.
3. The answer is scanned with positions (``value_spans``): for each top-level key, the byte span
   of its value in the generated text, extended to *what the model chose for the value*:
     - string: the contents **and the closing quote**, not the opening quote. The opening quote is
       fixed by the schema (``type: string``); the closing quote is the decision "the value ends
       here" (``"北京"`` vs ``"北京市"``), so P(exact value) = P(contents) x P(closing quote).
       Hence an empty string ``""`` still has one token (the one carrying its closing quote):
       its confidence is the probability that the model left the field empty.
     - number: the digits **and the next byte** (``,`` ``}`` or whitespace): the token carrying
       it is the decision to stop the number (``1`` vs ``10``).
     - ``true`` / ``false`` / ``null``: the literal (it ends itself).
     - array / object: from the opening to the closing bracket, both included (the separators
       and the closing bracket inside are choices of the model: more items or not).
4. A token is attributed to a field when its byte range overlaps the field's span, **in full**,
   whatever else it covers. So ``","`` (closing quote of one value + comma + opening quote of
   the next key) belongs to the value it closes; ``":"`` (key's closing quote + colon + value's
   opening quote) overlaps no span and is structure; ``"}`` belongs to the last value. A token
   overlapping two spans (it would have to cover a whole key; never seen) counts for both.
   Tokens overlapping no span (``{"``, key names, ``":"``, EOS) are excluded: under structured
   outputs they are forced or nearly so, and they say nothing about the values.
5. Per field, over its tokens: ``logprob`` = sum, ``prob`` = exp(sum) = the probability of the
   exact value text as tokenized (given everything before it; a lower bound of the probability
   of the text over all tokenizations), ``min_prob`` = the least likely token, ``geo_mean`` =
   exp(mean logprob) (length-normalised; dilutes one bad token in a long value).
   vLLM's logprobs are taken *after* the grammar mask (it masks the logits before the sampler
   computes logprobs, in every `logprobs_mode`), i.e. renormalised over
   the tokens the schema allows: a forced token has logprob 0.0.
6. Row confidence = min over the requested fields of the chosen metric (``prob`` by default).
   It is None when the answer is not a JSON object, logprobs are missing (None / NaN / any
   token without one), the tokens do not align with the text, or a requested field is missing
   from the answer or got no token (conservative: None is never auto-accepted).
   Keys of the answer that are not requested are ignored (their tokens count in ``other``).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

from swiftpipe.task.answers import FENCE, THINK_RE, reject_constant

Piece = Union[bytes, str]

_THINK_ONLY = re.compile(r"\s*<think>.*?</think>\s*", re.DOTALL)
METRICS = ("prob", "min", "geo")
# The aggregate swiftpipe reports as a field's confidence (README "Confidence": chosen by measurement,
# bench/confidence.py; the other two are kept in evaluation records for comparison).
# Measured on the demo's tuned model, 16 trained + 200 unseen rows: row AUROC min 1.00, geometric mean
# 1.00, product 0.43 (a product falls with a value's length: long right answers rank below short
# wrong ones); field AUROC min 0.98, geo 0.80, product 0.69.
METRIC = "min"


_DECODER = json.JSONDecoder(parse_constant=reject_constant)  # strict_loads' rules (no NaN/Infinity)


# ---------------------------------------------------------------- scanning the answer


class Member(NamedTuple):
    """One top-level key of the answer: character offsets into the scanned string."""

    key: str
    value: Any
    value_start: int  # first character of the value (the opening quote of a string)
    value_end: int  # one past its last character (past the closing quote of a string)
    span: tuple[int, int]  # the characters attributed to the value (rule 3), [start, end)


def _span(value: Any, start: int, end: int) -> tuple[int, int]:
    if isinstance(value, str):
        return start + 1, end  # contents + closing quote
    if isinstance(value, bool) or value is None:
        return start, end
    if isinstance(value, (int, float)):
        return start, end + 1  # + the byte that stopped the number (always exists: `}` follows)
    return start, end  # array / object, brackets included


_WS = re.compile(r"[ \t\n\r]*")
_KEY = re.compile(r'[ \t\n\r]*"((?:[^"\\]|\\.)*)"[ \t\n\r]*:[ \t\n\r]*', re.DOTALL)  # a key, its colon
_NEXT = re.compile(r"[ \t\n\r]*([,}])")  # what follows a value


def scan_object(s: str, start: int = 0, end: Optional[int] = None) -> Optional[list[Member]]:
    """The members of the JSON object that is exactly ``s[start:end]`` (JSON whitespace around it
    allowed), in order; None if that is not a JSON object. Duplicate keys: all are returned
    (``value_spans`` keeps the last, like ``json.loads``)."""
    end = len(s) if end is None else end
    s = s[:end]
    try:
        i = _WS.match(s, start).end()  # type: ignore[union-attr]
        if i >= end or s[i] != "{":
            return None
        members: list[Member] = []
        closing = _NEXT.match(s, i + 1)
        if closing is not None and closing.group(1) == "}":  # {}
            i = closing.end()
        else:
            i += 1
            while True:
                key_at = _KEY.match(s, i)
                if key_at is None:
                    return None
                quoted = key_at.group(1)
                # (escapes and control characters: the JSON decoder decodes, or refuses, them)
                key = quoted if quoted.isprintable() and "\\" not in quoted else _DECODER.decode(f'"{quoted}"')
                vstart = key_at.end()
                value, vend = _DECODER.raw_decode(s, vstart)
                members.append(Member(key, value, vstart, vend, _span(value, vstart, vend)))
                after = _NEXT.match(s, vend)
                if after is None:
                    return None
                i = after.end()
                if after.group(1) == "}":
                    break
        if _WS.match(s, i).end() != end:  # type: ignore[union-attr]
            return None  # trailing garbage
        return members
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None


def answer_region(text: str) -> tuple[int, int]:
    """[start, end) character offsets of the JSON part of ``text``: after a leading think block,
    inside a code fence (the stripping of ``parse_answer``)."""
    start = 0
    m = THINK_RE.match(text)
    if m:
        start = m.end()
    fenced = FENCE.match(text[start:])  # `^` does not anchor at a pos argument: slice
    if fenced:
        return start + fenced.start(1), start + fenced.end(1)
    return start, len(text)


def value_spans(text: str) -> Optional[dict[str, Member]]:
    """Top-level key -> Member (character offsets into ``text``); None if ``text`` is not a JSON
    object (after a think block / fence). Last duplicate wins, like ``json.loads``."""
    start, end = answer_region(text)
    members = scan_object(text, start, end)
    if members is None:
        return None
    return {m.key: m for m in members}


# ---------------------------------------------------------------- token bytes


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE: Qwen2/Qwen3, GPT-2, Llama 3)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_ENCODER = _bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}


def byte_level_piece_bytes(piece: str) -> Optional[bytes]:
    """The bytes of a byte-level BPE vocabulary piece (``convert_ids_to_tokens`` output, e.g.
    ``'çľģ'`` -> b'\\xe7\\x9c\\x81' = '省'); None if it is not a byte-level piece."""
    try:
        return bytes(BYTE_DECODER[c] for c in piece)
    except KeyError:
        return None


def token_bytes(tokenizer, token_ids: Sequence[int]) -> Optional[list[bytes]]:
    """Exact bytes of each token id for a byte-level BPE tokenizer (Qwen's): the vocabulary piece
    mapped back through GPT-2's byte table; added tokens (``<think>``) are their own text, and
    special ones (``<|im_end|>``, ``<|fim_pad|>``: ``special`` in ``added_tokens_decoder``) no
    bytes, as vLLM's text leaves them out (skip_special_tokens): an untrained model can emit one
    inside a value, and its bytes would not align with the text. None if a piece is neither (not
    a byte-level tokenizer)."""
    added = set()
    get_added = getattr(tokenizer, "get_added_vocab", None)
    if callable(get_added):
        added = set(get_added())
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    special = {t.content for t in decoder.values() if getattr(t, "special", False)} if isinstance(decoder, dict) else set()
    out: list[bytes] = []
    for piece in tokenizer.convert_ids_to_tokens(list(token_ids)):
        if piece is None:
            return None
        if piece in added:
            out.append(b"" if piece in special else piece.encode("utf-8"))
            continue
        raw = byte_level_piece_bytes(piece)
        if raw is None:
            return None
        out.append(raw)
    return out


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _plain_pieces(content: Sequence[Any]) -> Optional[list[tuple[bytes, float]]]:
    """`pieces_from_openai` for the common case, in bulk: dicts with a string token (none in
    `token_id:N` form) and a logprob each; None for anything else (then read one by one)."""
    try:
        tokens = list(map(_TOKEN, content))
        logprobs = list(map(_LOGPROB, content))
    except (KeyError, TypeError):
        return None
    if set(map(type, tokens)) != {str} or None in logprobs or "token_id:" in "\0".join(tokens):
        return None  # (no tokens at all, a missing value, or ids instead of text)
    return list(zip(map(str.encode, tokens), logprobs))


_TOKEN, _LOGPROB = operator.itemgetter("token"), operator.itemgetter("logprob")


def pieces_from_openai(content: Optional[Sequence[Any]],
                       id_to_bytes: Optional[Callable[[int], bytes]] = None) -> Optional[list[tuple[bytes, float]]]:
    """(piece, logprob) from ``choice.logprobs.content`` (SDK objects or dicts; the content lists of
    all stream chunks concatenated). Tokens in ``token_id:N`` form (``return_tokens_as_token_ids``)
    need ``id_to_bytes``. The ``bytes`` field is not used: vLLM fills it with the UTF-8 of the
    ``token`` string, not the token's own bytes."""
    if content is None:
        return None
    fast = _plain_pieces(content)
    if fast is not None:
        return fast
    out: list[tuple[bytes, float]] = []
    for entry in content:
        if type(entry) is dict:  # a parsed JSON body (the gateway): the fast path
            token, logprob = entry.get("token"), entry.get("logprob")
        else:
            token, logprob = _get(entry, "token"), _get(entry, "logprob")
        if token is None or logprob is None:
            return None
        if token.startswith("token_id:") and token[9:].isdigit():
            if id_to_bytes is None:
                return None
            out.append((id_to_bytes(int(token[9:])), logprob))
        else:
            out.append((token.encode("utf-8"), logprob))
    return out


def pieces_from_vllm(output: Any, tokenizer) -> Optional[list[tuple[bytes, float]]]:
    """(piece, logprob) from a vLLM ``CompletionOutput`` generated with ``SamplingParams(logprobs=0)``:
    the sampled token's logprob at each position (``list[dict[id, Logprob]]`` or ``FlatLogprobs``,
    where the sampled token is the first entry of each position) and its exact bytes."""
    ids = list(getattr(output, "token_ids", None) or [])
    lps = getattr(output, "logprobs", None)
    if lps is None or len(lps) != len(ids):
        return None
    values: list[float] = []
    flat = all(hasattr(lps, a) for a in ("start_indices", "end_indices", "logprobs", "token_ids"))
    for i, tid in enumerate(ids):
        if flat:
            k = lps.start_indices[i]
            if k >= lps.end_indices[i] or lps.token_ids[k] != tid:
                return None
            values.append(lps.logprobs[k])
        else:
            entry = lps[i].get(tid) if lps[i] else None
            if entry is None:
                return None
            values.append(entry.logprob)
    pieces = token_bytes(tokenizer, ids)
    if pieces is None:
        return None
    return list(zip(pieces, values))


# ---------------------------------------------------------------- confidence


class FieldScore(NamedTuple):
    tokens: int  # tokens attributed to the value
    logprob: float  # their summed logprob
    prob: float  # exp(logprob): probability of the exact value (as tokenized)
    min_prob: float  # least likely token
    geo_mean: float  # exp(logprob / tokens)
    span: tuple[int, int]  # byte span of the value in ``text`` (rule 3), [start, end)

    def metric(self, name: str) -> float:
        return getattr(self, _METRIC_ATTRIBUTE[name])


_METRIC_ATTRIBUTE = {"prob": "prob", "min": "min_prob", "geo": "geo_mean"}


@dataclass(frozen=True)
class Confidence:
    fields: dict[str, Optional[FieldScore]]  # requested field -> score (None: missing / no token)
    row: Optional[float]  # min over fields of `metric`; None when any field is None
    metric: str = METRIC
    other_tokens: int = 0  # tokens of the answer attributed to no requested field (structure)
    other_logprob: float = 0.0
    offset: int = 0  # where ``text`` starts in the token bytes (a think block before it)

    def values(self, metric: Optional[str] = None) -> dict[str, Optional[float]]:
        """{field: confidence} by `metric` (default: this one's), to 4 significant digits; None for a
        field that is missing from the answer or got no token."""
        name = metric or self.metric
        return {field: None if score is None else _significant(score.metric(name))
                for field, score in self.fields.items()}

    def row_value(self, metric: Optional[str] = None) -> Optional[float]:
        """The row's confidence by `metric`: the least confident field; None when any field has none."""
        return row_of(self.values(metric))


def row_of(values: dict[str, Optional[float]]) -> Optional[float]:
    """A row's confidence from its fields' (`Confidence.values`): the least; None when any is None."""
    if not values or None in values.values():
        return None
    return min(v for v in values.values() if v is not None)


def _significant(p: float) -> float:
    """``p`` to 4 significant digits: a product of many token probabilities can be 1e-30, and
    rounding it to 4 places would tie it with every other small one (and break the ranking)."""
    return float(f"{p:.4g}")


def _clean_logprob(lp: Any) -> Optional[float]:
    if type(lp) is float and -math.inf < lp <= 0.0:  # the common case (NaN fails the comparison)
        return lp
    if isinstance(lp, bool) or not isinstance(lp, (int, float)):
        return None
    lp = float(lp)
    if math.isnan(lp) or lp == math.inf:
        return None
    return min(lp, 0.0)  # -inf / vLLM's -9999.0 floor stay; float noise above 0 is clipped


def _align(pieces: list[bytes], text_bytes: bytes) -> Optional[int]:
    joined = b"".join(pieces)
    if joined.startswith(text_bytes):
        return 0
    p = joined.find(text_bytes)
    if p > 0 and _THINK_ONLY.fullmatch(joined[:p].decode("utf-8", errors="replace")):
        return p
    return None


_REPLACEMENT = "\ufffd".encode("utf-8")


# A special token's string form (Qwen's <|im_end|>, <|fim_pad|>, ...): vLLM's text skips it
# (skip_special_tokens), its logprobs do not; without the tokenizer, this is how it is told apart.
_SPECIAL = re.compile(rb"<\|[A-Za-z0-9_]+\|>")
_ONE_OR_MORE_CHARACTERS = rb"[\x80-\xff]+?"  # what a U+FFFD stands for: bytes of non-ASCII characters


def _replacement_lengths(pieces: list[bytes], text_bytes: bytes) -> Optional[list[int]]:
    """Each token's byte length in ``text_bytes`` when string forms hold U+FFFD (rule 1b: vLLM
    writes characters whose bytes it could not place as one replacement character, in the token
    that completes them: each U+FFFD stands for some bytes of non-ASCII characters of the text,
    as few as the rest allows: several characters, or one character's bytes over two U+FFFD),
    and where a special token's string form (``<|fim_pad|>``) is not in the text, which vLLM
    writes without it. Up to 3 tokens after the text (the end-of-turn token) are
    left out. None when the tokens do not spell the text that way either."""
    import re

    if not any(_REPLACEMENT in piece or _SPECIAL.fullmatch(piece) for piece in pieces):
        return None

    def piece_pattern(piece: bytes) -> bytes:
        if _SPECIAL.fullmatch(piece):  # a special token (<|fim_pad|>): in the text or, skipped, nowhere
            return b"((?:" + re.escape(piece) + b")?)"
        return b"(" + _ONE_OR_MORE_CHARACTERS.join(re.escape(part) for part in piece.split(_REPLACEMENT)) + b")"

    for tail in range(min(4, len(pieces) + 1)):
        body = pieces[:len(pieces) - tail]
        pattern = b"".join(piece_pattern(piece) for piece in body)
        try:
            match = re.fullmatch(pattern, text_bytes, re.DOTALL)
        except (re.error, RecursionError, OverflowError):
            return None
        if match:
            return [match.end(i + 1) - match.start(i + 1) for i in range(len(body))] + \
                [len(piece) for piece in pieces[len(body):]]
    return None


def _byte_offsets(text: str, ascii_text: bool, indexes: Iterable[int]) -> dict[int, int]:
    """Byte offset in ``text``'s UTF-8 encoding of each character index (one pass, in order)."""
    if ascii_text:
        return {i: i for i in indexes}
    found, at, size = {}, 0, 0
    for i in sorted(indexes):
        size += len(text[at:i].encode("utf-8"))
        found[i], at = size, i
    return found


def answer_confidence(text: Optional[str], tokens: Optional[Iterable[tuple[Piece, Any]]],
                      fields: Optional[Sequence[str]] = None, *, metric: str = METRIC) -> Optional[Confidence]:
    """Per-field and row confidence of one answer (module docstring: the rules); None when the
    answer is not a JSON object, logprobs are missing, or tokens and text do not align."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    if text is None or tokens is None:
        return None
    members = value_spans(text)
    if members is None:
        return None
    toks = tokens if isinstance(tokens, list) else list(tokens)
    if not toks:
        return None
    given: Sequence[Any]
    given, logprobs_given = zip(*toks)
    if set(map(type, given)) != {bytes}:
        if any(p is None for p in given):
            return None
        given = [p.encode("utf-8") if isinstance(p, str) else bytes(p) for p in given]
    pieces: list[bytes] = list(given)
    logprobs: list[float] = list(logprobs_given)
    # Plain floats <= 0 and no NaN (a NaN makes the sum NaN): as they are; else clean each (rare).
    if not (set(map(type, logprobs)) == {float} and max(logprobs) <= 0.0 and not math.isnan(sum(logprobs))):
        cleaned = [_clean_logprob(lp) for lp in logprobs]
        if any(lp is None for lp in cleaned):
            return None
        logprobs = [lp for lp in cleaned if lp is not None]
    try:
        text_bytes = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not text a model produced
        return None
    offset = _align(pieces, text_bytes)
    if offset is not None:
        lengths = list(map(len, pieces))
    else:
        fuzzy = _replacement_lengths(pieces, text_bytes)
        if fuzzy is None:
            return None
        offset, lengths = 0, fuzzy

    # Byte range [starts[i], ends[i]) of every token in text coordinates; empty tokens take the
    # next token's range (rule 2), empty tokens at the very end an empty range past the text.
    # Both lists are non-decreasing, so the tokens overlapping a span are one run, found by bisection.
    ends = list(itertools.accumulate(lengths, initial=-offset))[1:]
    starts = list(map(operator.sub, ends, lengths))
    if 0 in lengths:
        nxt = ends[-1] if ends else 0
        nxt_range = (nxt, nxt)
        for i in range(len(pieces) - 1, -1, -1):
            if lengths[i]:
                nxt_range = (starts[i], ends[i])
            else:
                starts[i], ends[i] = nxt_range

    def run(a: int, b: int) -> tuple[int, int]:
        """The tokens overlapping bytes [a, b): indexes [lo, hi)."""
        return bisect.bisect_right(ends, a), bisect.bisect_left(starts, b)

    names = list(fields) if fields is not None else list(members)
    region = answer_region(text)
    byte_at = _byte_offsets(text, len(text_bytes) == len(text),
                            {c for name in names if name in members for c in members[name].span} | set(region))
    scores: dict[str, Optional[FieldScore]] = {}
    hit = bytearray(len(pieces))  # tokens some requested field took
    for name in names:
        m = members.get(name)
        if m is None:
            scores[name] = None
            continue
        span = (byte_at[m.span[0]], byte_at[m.span[1]])
        lo, hi = run(*span)
        if hi <= lo:  # no token (cannot happen for a value the tokens spell; conservative)
            scores[name] = None
            continue
        hit[lo:hi] = b"\x01" * (hi - lo)
        values = logprobs[lo:hi]
        n, total = hi - lo, sum(values)
        scores[name] = FieldScore(tokens=n, logprob=total, prob=math.exp(total), min_prob=math.exp(min(values)),
                                  geo_mean=math.exp(total / n), span=span)
    # Tokens of the answer's region that no requested field took (structure).
    rlo, rhi = run(byte_at[region[0]], byte_at[region[1]])
    other = [lp for lp, taken in zip(logprobs[rlo:rhi], hit[rlo:rhi]) if not taken]
    other_n, other_lp = len(other), sum(other)
    if names and all(s is not None for s in scores.values()):
        row: Optional[float] = min(s.metric(metric) for s in scores.values() if s is not None)
    else:
        row = None
    return Confidence(fields=scores, row=row, metric=metric, other_tokens=other_n, other_logprob=other_lp,
                      offset=offset)


def row_confidence(text: Optional[str], tokens: Optional[Iterable[tuple[Piece, Any]]],
                   fields: Optional[Sequence[str]] = None, *, metric: str = METRIC) -> Optional[float]:
    """Just the row confidence (min over fields), or None."""
    result = answer_confidence(text, tokens, fields, metric=metric)
    return None if result is None else result.row
