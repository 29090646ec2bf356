"""Per-field confidence: value spans, token attribution (Chinese split at byte boundaries, straddling
tokens), the aggregates, and the cases that give None."""

import json
import math
import random
from types import SimpleNamespace

import pytest

from swiftpipe.task import confidence as C
from swiftpipe.task.confidence import value_spans


# The attribution tests below state the row as the least probable field value (the product): the
# aggregate is a parameter; the default the measurement chose (METRIC) has a test of its own.
def answer_confidence(*args, metric="prob", **kwargs):
    return C.answer_confidence(*args, metric=metric, **kwargs)


def row_confidence(*args, metric="prob", **kwargs):
    return C.row_confidence(*args, metric=metric, **kwargs)


def test_the_default_aggregate_is_the_least_likely_token():
    text = '{"a":"xy","b":"z"}'
    toks = [('{"', 0.0), ("a", 0.0), ('":"', 0.0), ("x", -0.1), ("y", -0.2), ('","', -0.3), ("b", 0.0),
            ('":"', 0.0), ("z", -0.05), ('"}', -0.05)]
    r = C.answer_confidence(text, toks, ["a", "b"])
    assert C.METRIC == "min" and r.metric == "min"
    assert r.values() == {"a": round(math.exp(-0.3), 4), "b": round(math.exp(-0.05), 4)}
    assert r.row == pytest.approx(math.exp(-0.3)) and r.row_value() == round(math.exp(-0.3), 4)


def stream(pieces, lps=None, default=-0.1):
    """[(bytes, logprob)] from pieces given as str or bytes."""
    out = []
    for i, p in enumerate(pieces):
        b = p.encode("utf-8") if isinstance(p, str) else p
        out.append((b, (lps or {}).get(i, default)))
    return out


def check_joined(pieces, text):
    joined = b"".join(p.encode() if isinstance(p, str) else p for p in pieces)
    assert joined.startswith(text.encode()), (joined, text.encode())


def lp_of(tokens, idx):
    return sum(tokens[i][1] for i in idx)


# ---------------------------------------------------------------- the scanner


def test_value_spans_strings_numbers_literals_containers():
    text = '{"s":"ab","n":-1.5e3,"t":true,"z":null,"a":[1,"x"],"o":{"k":"v"},"e":""}'
    spans = value_spans(text)
    assert list(spans) == ["s", "n", "t", "z", "a", "o", "e"]
    get = lambda k: text[slice(*spans[k].span)]
    assert get("s") == 'ab"'  # contents + closing quote
    assert get("n") == "-1.5e3,"  # digits + the byte that stopped the number
    assert get("t") == "true"
    assert get("z") == "null"
    assert get("a") == '[1,"x"]'
    assert get("o") == '{"k":"v"}'
    assert get("e") == '"'  # empty string: just its closing quote
    assert spans["n"].value == -1500.0 and spans["a"].value == [1, "x"]


def test_value_spans_number_last_and_whitespace():
    assert value_spans('{"n":5}')["n"].span == (5, 7)  # "5}"
    text = '{ "a" : "x" , "n" : 12 }'
    spans = value_spans(text)
    assert text[slice(*spans["a"].span)] == 'x"'
    assert text[slice(*spans["n"].span)] == "12 "


def test_value_spans_escapes_and_unicode():
    text = '{"a":"say \\"hi\\"","b":"\\u5317京"}'
    spans = value_spans(text)
    assert spans["a"].value == 'say "hi"'
    assert text[slice(*spans["a"].span)] == 'say \\"hi\\""'
    assert spans["b"].value == "北京"


def test_value_spans_duplicates_last_wins():
    spans = value_spans('{"a":"x","a":"yy"}')
    assert spans["a"].value == "yy" == json.loads('{"a":"x","a":"yy"}')["a"]


@pytest.mark.parametrize("bad", ["", "x", "[1,2]", '"s"', "{", '{"a":}', '{"a":"x"', '{"a":"x"} y', '{"a":"x",}',
                                 '{"a":NaN}', '{"a":Infinity}', "{'a':1}", '{"a" 1}', "{" * 5000 + "}" * 5000,
                                 "<think>x</think>", "```json\n[1]\n```"])
def test_value_spans_not_an_object(bad):
    assert value_spans(bad) is None


def test_value_spans_empty_object_think_and_fence():
    assert value_spans("{}") == {}
    text = "<think>\nhmm\n</think>\n\n```json\n{\"a\":\"x\"}\n```\n"
    spans = value_spans(text)
    assert text[slice(*spans["a"].span)] == 'x"'


def test_scanner_agrees_with_json_loads_on_random_objects():
    rng = random.Random(1)
    alphabet = "ab北京市省区路号\"\\/\n é😀1"
    for _ in range(300):
        obj = {}
        for k in range(rng.randint(0, 5)):
            kind = rng.choice(["s", "i", "f", "b", "n", "l", "o"])
            v = {"s": lambda: "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))),
                 "i": lambda: rng.randint(-1000, 1000), "f": lambda: rng.random() * 100, "b": lambda: rng.random() < .5,
                 "n": lambda: None, "l": lambda: [rng.randint(0, 9), "x"], "o": lambda: {"k": [1, {"z": None}]}}[kind]()
            obj[f"k{k}"] = v
        for seps in [(",", ":"), (", ", ": ")]:
            for ascii_ in (True, False):
                text = json.dumps(obj, ensure_ascii=ascii_, separators=seps)
                spans = value_spans(text)
                assert {k: m.value for k, m in spans.items()} == json.loads(text)
                for k, m in spans.items():
                    assert json.loads(text[m.value_start:m.value_end]) == obj[k]


# ---------------------------------------------------------------- attribution: ASCII


def test_basic_attribution_straddling_closing_quote_and_structure():
    text = '{"a":"xy","b":"z"}'
    pieces = ['{"', "a", '":"', "x", "y", '","', "b", '":"', "z", '"}', "<|im_end|>"]
    check_joined(pieces, text)
    lps = {0: 0.0, 1: -0.01, 2: 0.0, 3: -0.2, 4: -0.3, 5: -0.05, 6: 0.0, 7: 0.0, 8: -1.0, 9: -0.4, 10: 0.0}
    toks = stream(pieces, lps)
    r = answer_confidence(text, toks, ["a", "b"])
    a, b = r.fields["a"], r.fields["b"]
    assert a.tokens == 3 and math.isclose(a.logprob, -0.55)  # x, y, `","` (closes a)
    assert b.tokens == 2 and math.isclose(b.logprob, -1.4)  # z, `"}`
    assert math.isclose(a.prob, math.exp(-0.55)) and math.isclose(a.min_prob, math.exp(-0.3))
    assert math.isclose(a.geo_mean, math.exp(-0.55 / 3))
    assert math.isclose(r.row, math.exp(-1.4))  # min of the fields' prob
    assert r.other_tokens == 5 and math.isclose(r.other_logprob, -0.01)  # {" a ":" b ":"; not the EOS
    assert a.span == (6, 9) and text.encode()[6:9] == b'xy"'


def test_row_metric_choice():
    text = '{"a":"xy","b":"z"}'
    pieces = ['{"', "a", '":"', "x", "y", '","', "b", '":"', "z", '"}']
    toks = stream(pieces, {3: -0.1, 4: -2.0, 5: 0.0, 8: -0.5, 9: -0.5})
    assert math.isclose(row_confidence(text, toks, ["a", "b"], metric="min"), math.exp(-2.0))
    assert math.isclose(row_confidence(text, toks, ["a", "b"], metric="geo"), min(math.exp(-2.1 / 3), math.exp(-1.0 / 2)))
    assert math.isclose(row_confidence(text, toks, ["a", "b"], metric="prob"), math.exp(-2.1))
    with pytest.raises(ValueError):
        answer_confidence(text, toks, ["a"], metric="mean")


def test_empty_string_value_gets_its_closing_quote_token():
    text = '{"a":"","b":"x"}'
    # `","` here carries the closing quote of the empty a (and the comma, and b's opening quote)
    pieces = ['{"', "a", '":"', '","', "b", '":"', "x", '"}']
    toks = stream(pieces, {3: -0.7, 6: -0.1, 7: -0.2})
    r = answer_confidence(text, toks, ["a", "b"])
    assert r.fields["a"].tokens == 1 and math.isclose(r.fields["a"].logprob, -0.7)
    # the same answer tokenized as `":""` `,"`: the token holding the closing quote decides
    pieces2 = ['{"', "a", '":""', ',"', "b", '":"', "x", '"}']
    toks2 = stream(pieces2, {2: -0.9, 3: 0.0})
    r2 = answer_confidence(text, toks2, ["a", "b"])
    assert r2.fields["a"].tokens == 1 and math.isclose(r2.fields["a"].logprob, -0.9)


def test_numbers_literals_arrays_objects():
    text = '{"n":12,"m":true,"l":["x","y"],"e":[],"o":{"k":1}}'
    pieces = ['{"', "n", '":', "1", "2", ',"', "m", '":', "true", ',"', "l", '":["', "x", '","', "y", '"],"', "e",
              '":[]', ',"', "o", '":{"', "k", '":', "1", "}}"]
    check_joined(pieces, text)
    toks = [(p.encode(), -0.01 * (i + 1)) for i, p in enumerate(pieces)]
    r = answer_confidence(text, toks, ["n", "m", "l", "e", "o"])
    f = r.fields
    assert f["n"].tokens == 3 and math.isclose(f["n"].logprob, lp_of(toks, [3, 4, 5]))  # 1 2 `,"` (stops the number)
    assert f["m"].tokens == 1 and math.isclose(f["m"].logprob, lp_of(toks, [8]))  # true; `,"` is structure
    assert f["l"].tokens == 5 and math.isclose(f["l"].logprob, lp_of(toks, [11, 12, 13, 14, 15]))
    assert f["e"].tokens == 1 and math.isclose(f["e"].logprob, lp_of(toks, [17]))
    # object o = `{"k":1}`: `":{"` (its opening brace) k `":` 1 `}}` (its closing brace, and the answer's)
    assert f["o"].tokens == 5 and math.isclose(f["o"].logprob, lp_of(toks, [20, 21, 22, 23, 24]))
    # every token that overlaps nothing is structure: {" n ": m ": ," l e ," o
    assert r.other_tokens == len(pieces) - 3 - 1 - 5 - 1 - 5


def test_token_spanning_two_values_counts_for_both():
    text = '{"a":"x","b":"y"}'
    pieces = ['{"', "a", '":"', 'x","b":"y', '"}']
    toks = stream(pieces, {3: -0.5, 4: -0.1})
    r = answer_confidence(text, toks, ["a", "b"])
    assert math.isclose(r.fields["a"].logprob, -0.5)
    assert math.isclose(r.fields["b"].logprob, -0.6)


def test_forced_tokens_and_floor_and_noise():
    text = '{"a":"x"}'
    pieces = ['{"', "a", '":"', "x", '"}']
    r = answer_confidence(text, stream(pieces, {3: -9999.0, 4: 0.0}), ["a"])
    assert r.fields["a"].prob == 0.0 and r.row == 0.0
    r = answer_confidence(text, stream(pieces, {3: 1e-7, 4: 0.0}), ["a"])  # float noise above 0
    assert r.fields["a"].prob == 1.0
    r = answer_confidence(text, stream(pieces, {3: -math.inf}), ["a"])
    assert r.fields["a"].prob == 0.0


# ---------------------------------------------------------------- Chinese, byte-level pieces


SHENG = "省".encode()  # e7 9c 81
JING = "京".encode()  # e4 ba ac


def test_chinese_split_inside_characters_bytes_form():
    text = '{"province":"北京市","city":"省"}'
    bei, shi = "北".encode(), "市".encode()
    pieces = [b'{"', b"province", b'":"', bei + JING[:1], JING[1:2], JING[2:] + shi, b'","', b"city", b'":"',
              SHENG[:2], SHENG[2:], b'"}', b"<|im_end|>"]
    check_joined(pieces, text)
    toks = [(p, -0.1 * (i + 1)) for i, p in enumerate(pieces)]
    r = answer_confidence(text, toks, ["province", "city"])
    assert r.fields["province"].tokens == 4 and math.isclose(r.fields["province"].logprob, lp_of(toks, [3, 4, 5, 6]))
    assert r.fields["city"].tokens == 3 and math.isclose(r.fields["city"].logprob, lp_of(toks, [9, 10, 11]))
    s, e = r.fields["city"].span
    assert text.encode()[s:e] == SHENG + b'"'


def vllm_strings(pieces):
    """What vLLM 0.32 puts in `logprobs.content[i].token` for byte pieces that never cross a
    character boundary: the characters a token completes ("" while a character is incomplete)."""
    out, buf = [], b""
    for p in pieces:
        buf += p
        # longest decodable prefix
        for cut in range(len(buf), -1, -1):
            try:
                s = buf[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            out.append(s)
            buf = buf[cut:]
            break
    return out


def test_chinese_vllm_string_form_equals_bytes_form():
    text = '{"province":"北京市","city":"省"}'
    pieces = [b'{"', b"province", b'":"', "北".encode() + JING[:2], JING[2:], "市".encode(), b'","', b"city", b'":"',
              SHENG[:1], SHENG[1:2], SHENG[2:], b'"}', b"<|im_end|>"]
    strings = vllm_strings(pieces)
    assert strings[3] == "北" and strings[4] == "京" and strings[9] == "" and strings[10] == "" and strings[11] == "省"
    lps = [-0.05 * (i + 1) for i in range(len(pieces))]
    by_bytes = answer_confidence(text, list(zip(pieces, lps)), ["province", "city"])
    by_str = answer_confidence(text, list(zip(strings, lps)), ["province", "city"])
    assert by_bytes.fields == by_str.fields
    assert by_str.fields["city"].tokens == 4  # "", "", "省", `"}`: the empty ones join the character


def test_cross_character_token_in_string_form_fails_safe():
    # a byte-level token ending one character and starting the next: vLLM's strings lose bytes
    text = '{"a":"省京"}'
    pieces = [b'{"', b"a", b'":"', SHENG[:2], SHENG[2:] + JING[:1], JING[1:], b'"}']
    assert answer_confidence(text, stream(pieces), ["a"]).fields["a"].tokens == 4  # exact bytes: fine
    strings = ["{\"", "a", "\":\"", "", "", "\ufffd京", "\"}"]  # vLLM 0.32's corrected tokens for this case
    # rule 1b: the U+FFFD stands for 省; the two empty tokens before it go with it (rule 2)
    by_str = answer_confidence(text, [(s, -0.1) for s in strings], ["a"])
    assert by_str.fields["a"].tokens == 4 and by_str.fields["a"].logprob == pytest.approx(-0.4)
    # one U+FFFD for several characters (a garbled answer), as few as the rest allows
    many = answer_confidence('{"a":"软醆丫的"}', [(s, -0.1) for s in ['{"', "a", '":"', "软\ufffd的", '"}']], ["a"])
    assert many.fields["a"].tokens == 2
    # and a token that spells something else is still refused
    assert answer_confidence(text, [(s, -0.1) for s in ["{\"", "a", "\":\"", "\ufffd西", "\"}"]], ["a"]) is None


def test_random_cuts_property():
    rng = random.Random(7)
    chars = "北京市海淀区中关村大街号省路ab1 \"\\"
    for _trial in range(300):
        obj = {f"f{k}": "".join(rng.choice(chars) for _ in range(rng.randint(0, 8))) for k in range(rng.randint(1, 4))}
        if rng.random() < 0.3:
            obj["num"] = rng.randint(0, 99999)
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        raw = text.encode() + b"<|im_end|>"
        cuts = sorted(set(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, len(raw) // 2)))))
        pieces = [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]
        lps = [-rng.random() for _ in pieces]
        r = answer_confidence(text, list(zip(pieces, lps)), list(obj))
        assert r is not None and r.row is not None
        # tokens of a field = exactly those overlapping its span; every value token counted once
        pos, spans = 0, {k: r.fields[k].span for k in obj}
        expect = {k: [] for k in obj}
        for p, lp in zip(pieces, lps):
            for k, (s, e) in spans.items():
                if pos < e and pos + len(p) > s:
                    expect[k].append(lp)
            pos += len(p)
        for k in obj:
            assert r.fields[k].tokens == len(expect[k])
            assert math.isclose(r.fields[k].logprob, sum(expect[k]), abs_tol=1e-12)
            assert math.isclose(r.fields[k].min_prob, math.exp(min(expect[k])))
            # the field's bytes are the value's JSON text without the opening quote (+ terminator)
            s, e = spans[k]
            frag = text.encode()[s:e]
            if isinstance(obj[k], str):
                assert frag == json.dumps(obj[k], ensure_ascii=False).encode()[1:]
        assert math.isclose(r.row, min(f.prob for f in r.fields.values()))
        # the string form (vLLM's corrected tokens) gives the same answer whenever it aligns
        strings = vllm_strings(pieces)
        if "".join(strings).encode() == raw:
            r2 = answer_confidence(text, list(zip(strings, lps)), list(obj))
            if all(p.decode("utf-8", "ignore").encode() == p for p in pieces):
                assert r2.fields == r.fields


# ---------------------------------------------------------------- think blocks, fences, alignment


def test_think_block_in_text_and_tokens():
    text = '<think>\n\n</think>\n\n{"a":"x"}'
    pieces = ["<think>", "\n\n", "</think>", "\n\n", '{"', "a", '":"', "x", '"}']
    toks = stream(pieces, {7: -0.3, 8: -0.2, 0: -5.0})
    r = answer_confidence(text, toks, ["a"])
    assert r.offset == 0 and math.isclose(r.fields["a"].logprob, -0.5)
    assert r.other_tokens == 3  # {" a ":" — the think block is outside the answer


def test_think_block_only_in_tokens_reasoning_parser():
    text = '{"a":"x"}'  # content after a server-side reasoning parser
    pieces = ["<think>", "\nok\n", "</think>", "\n\n", '{"', "a", '":"', "x", '"}', "<|im_end|>"]
    r = answer_confidence(text, stream(pieces, {7: -0.3, 8: -0.2}), ["a"])
    assert r.offset == len("<think>\nok\n</think>\n\n".encode())
    assert math.isclose(r.fields["a"].logprob, -0.5)


def test_fenced_answer():
    text = '```json\n{"a":"x"}\n```'
    pieces = ["```", "json", "\n", '{"', "a", '":"', "x", '"}\n', "```"]
    r = answer_confidence(text, stream(pieces, {6: -0.3, 7: -0.2}), ["a"])
    assert math.isclose(r.fields["a"].logprob, -0.5)


def test_misaligned_tokens_are_none():
    text = '{"a":"x"}'
    assert answer_confidence(text, stream(['{"', "a", '":"', "y", '"}']), ["a"]) is None
    assert answer_confidence(text, stream(['{"', "a", '":"']), ["a"]) is None  # too short
    assert answer_confidence(text, stream(["junk", '{"', "a", '":"', "x", '"}']), ["a"]) is None


# ---------------------------------------------------------------- None cases


def test_not_json_and_missing_logprobs():
    toks = stream(['{"', "a", '":"', "x", '"}'])
    assert answer_confidence(None, toks, ["a"]) is None
    assert answer_confidence("not json", stream(["not json"]), ["a"]) is None
    assert answer_confidence("[1]", stream(["[1]"]), ["a"]) is None
    assert answer_confidence('{"a":"x"}', None, ["a"]) is None
    assert answer_confidence('{"a":"x"}', [(b'{"a":"x"}', None)], ["a"]) is None
    assert answer_confidence('{"a":"x"}', [(b'{"a":"x"}', math.nan)], ["a"]) is None
    assert answer_confidence('{"a":"x"}', [(b'{"a":"x"}', "0.1")], ["a"]) is None
    assert answer_confidence('{"a":"x"}', [(None, -0.1)], ["a"]) is None
    assert row_confidence('{"a":"x"}', None, ["a"]) is None


def test_missing_and_extra_fields():
    text = '{"a":"x","extra":"zz"}'
    pieces = ['{"', "a", '":"', "x", '","', "extra", '":"', "zz", '"}']
    toks = stream(pieces)
    r = answer_confidence(text, toks, ["a", "b"])
    assert r.fields["b"] is None and r.row is None and r.fields["a"] is not None
    r = answer_confidence(text, toks, ["a"])
    assert r.row == r.fields["a"].prob and r.other_tokens == 7  # {" a ":" extra ":" zz "}: the extra key is not a requested field
    r = answer_confidence(text, toks)  # fields=None: every key
    assert set(r.fields) == {"a", "extra"} and r.row is not None
    r = answer_confidence("{}", stream(["{}"]))
    assert r.fields == {} and r.row is None


# ---------------------------------------------------------------- token bytes helpers


class FakeByteLevelTokenizer:
    def __init__(self, pieces: dict[int, bytes], added: dict[int, str]):
        self.pieces, self.added = pieces, added

    def convert_ids_to_tokens(self, ids):
        return [self.added[i] if i in self.added else
                ("".join(C.BYTE_ENCODER[b] for b in self.pieces[i]) if i in self.pieces else None) for i in ids]

    def get_added_vocab(self):
        return {v: k for k, v in self.added.items()}


def test_special_tokens_inside_an_answer_have_no_bytes_as_in_vllms_text():
    tok = FakeByteLevelTokenizer({1: b'{"', 2: b"a", 3: b'":"', 4: SHENG, 6: b'"}'}, {8: "<|fim_pad|>", 9: "<|im_end|>",
                                                                                    10: "<think>"})
    tok.added_tokens_decoder = {i: SimpleNamespace(content=c, special=c != "<think>") for i, c in tok.added.items()}
    ids = [1, 2, 3, 8, 4, 6, 9]  # <|fim_pad|> inside the value: vLLM's text skips it
    assert C.token_bytes(tok, ids) == [b'{"', b"a", b'":"', b"", SHENG, b'"}', b""]
    assert C.token_bytes(tok, [10]) == [b"<think>"]  # added but not special: in the text
    r = answer_confidence('{"a":"省"}', list(zip(C.token_bytes(tok, ids), [-0.1] * 7)), ["a"])
    assert r is not None and r.fields["a"].tokens == 3  # the special token joins the next one (rule 2)


def test_byte_level_pieces():
    assert C.byte_level_piece_bytes("çľģ") == SHENG  # Qwen's vocabulary piece for 省
    assert C.byte_level_piece_bytes("Ġhello") == b" hello"
    assert C.byte_level_piece_bytes("▁hello") is None  # SentencePiece: not byte-level
    assert len(C.BYTE_ENCODER) == 256 and len(set(C.BYTE_ENCODER.values())) == 256


def test_token_bytes_and_pieces_from_vllm_list_and_flat():
    tok = FakeByteLevelTokenizer({1: b'{"', 2: b"a", 3: b'":"', 4: SHENG[:2], 5: SHENG[2:], 6: b'"}'},
                                 {9: "<|im_end|>"})
    ids = [1, 2, 3, 4, 5, 6, 9]
    assert C.token_bytes(tok, ids) == [b'{"', b"a", b'":"', SHENG[:2], SHENG[2:], b'"}', b"<|im_end|>"]
    assert C.token_bytes(tok, [1, 77]) is None
    Logprob = lambda lp: SimpleNamespace(logprob=lp, rank=1, decoded_token=None)
    lps = [-0.1 * (i + 1) for i in range(len(ids))]
    out = SimpleNamespace(token_ids=ids, text='{"a":"省"}', logprobs=[{t: Logprob(lp)} for t, lp in zip(ids, lps)])
    pieces = C.pieces_from_vllm(out, tok)
    r = answer_confidence(out.text, pieces, ["a"])
    assert r.fields["a"].tokens == 3 and math.isclose(r.fields["a"].logprob, lps[3] + lps[4] + lps[5])
    flat = SimpleNamespace(start_indices=list(range(len(ids))), end_indices=list(range(1, len(ids) + 1)),
                           token_ids=list(ids), logprobs=list(lps), ranks=[1] * len(ids), decoded_tokens=[None] * len(ids))
    out_flat = SimpleNamespace(token_ids=ids, logprobs=FlatLike(flat))
    assert C.pieces_from_vllm(out_flat, tok) == pieces
    # missing logprobs / wrong length / sampled id absent
    assert C.pieces_from_vllm(SimpleNamespace(token_ids=ids, logprobs=None), tok) is None
    assert C.pieces_from_vllm(SimpleNamespace(token_ids=ids, logprobs=out.logprobs[:-1]), tok) is None
    bad = [dict(d) for d in out.logprobs]
    bad[2] = {42: Logprob(-1.0)}
    assert C.pieces_from_vllm(SimpleNamespace(token_ids=ids, logprobs=bad), tok) is None


class FlatLike:
    """Duck-typed vllm.logprobs.FlatLogprobs (its attributes + len)."""

    def __init__(self, ns):
        self.start_indices, self.end_indices = ns.start_indices, ns.end_indices
        self.token_ids, self.logprobs = ns.token_ids, ns.logprobs

    def __len__(self):
        return len(self.start_indices)


def test_pieces_from_real_flat_logprobs():
    logprobs_mod = pytest.importorskip("vllm.logprobs")
    flat = logprobs_mod.FlatLogprobs()
    ids = [1, 2, 3, 4, 5, 6]
    tok = FakeByteLevelTokenizer({1: b'{"', 2: b"a", 3: b'":"', 4: SHENG[:2], 5: SHENG[2:], 6: b'"}'}, {})
    for t in ids:  # logprobs=1: the sampled token first, then the top-1 (another id)
        logprobs_mod.append_logprobs_for_next_position(flat, [t, 100 + t], [-0.2, -0.1], [None, None], rank=2,
                                                       num_logprobs=1)
    out = SimpleNamespace(token_ids=ids, logprobs=flat)
    pieces = C.pieces_from_vllm(out, tok)
    assert [lp for _, lp in pieces] == [-0.2] * 6
    assert math.isclose(answer_confidence('{"a":"省"}', pieces, ["a"]).fields["a"].logprob, -0.6)


def test_pieces_from_openai():
    content = [{"token": '{"', "logprob": 0.0, "bytes": [123, 34], "top_logprobs": []},
               {"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []},
               {"token": '":"', "logprob": 0.0, "bytes": None, "top_logprobs": []},
               {"token": "", "logprob": -0.2, "bytes": [], "top_logprobs": []},  # first bytes of 省
               {"token": "省", "logprob": -0.3, "bytes": list(SHENG), "top_logprobs": []},
               {"token": '"}', "logprob": -0.05, "bytes": [34, 125], "top_logprobs": []},
               {"token": "<|im_end|>", "logprob": 0.0, "bytes": None, "top_logprobs": []}]
    pieces = C.pieces_from_openai(content)
    r = answer_confidence('{"a":"省"}', pieces, ["a"])
    assert r.fields["a"].tokens == 3 and math.isclose(r.fields["a"].logprob, -0.55)
    objs = [SimpleNamespace(**c) for c in content]  # SDK objects: attributes
    assert C.pieces_from_openai(objs) == pieces
    ids = [{"token": f"token_id:{i}", "logprob": -0.1} for i in (1, 2)]
    assert C.pieces_from_openai(ids) is None  # needs a tokenizer
    assert C.pieces_from_openai(ids, id_to_bytes={1: b"x", 2: b"y"}.__getitem__) == [(b"x", -0.1), (b"y", -0.1)]
    assert C.pieces_from_openai(None) is None
    assert C.pieces_from_openai([{"token": "a", "logprob": None}]) is None


def test_a_special_token_the_text_leaves_out_is_given_no_bytes_in_string_form():
    # an untrained model emits <|fim_pad|> inside a value; vLLM's text skips it, its logprobs keep it
    text = '{"a":"张三"}'
    strings = ['{"', "a", '":"', "张", "<|fim_pad|>", "三", '"}', "<|im_end|>"]
    r = answer_confidence(text, [(s, -0.1) for s in strings], ["a"])
    assert r is not None and r.fields["a"].tokens == 4  # 张, the special token (with 三), 三, "}
    # and one that is in the text stays in it
    text2 = '{"a":"<|x|>"}'
    r2 = answer_confidence(text2, [(s, -0.1) for s in ['{"', "a", '":"', "<|x|>", '"}']], ["a"])
    assert r2 is not None and r2.fields["a"].tokens == 2


def test_two_replacement_characters_for_one_character():
    # seen: 엏's first byte in an empty token, its last two as "\ufffd\ufffd" before 自治区
    text = '{"a":"r엏自治区"}'
    strings = ['{"', "a", '":"', "r", "", "\ufffd\ufffd自治区", '"}']
    r = answer_confidence(text, [(s, -0.1) for s in strings], ["a"])
    assert r is not None and r.fields["a"].tokens == 4
