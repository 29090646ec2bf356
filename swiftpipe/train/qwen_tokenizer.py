"""Qwen's real tokenizer, built offline from the BPE ranks that the `dashscope` wheel ships.

`swiftpipe tiny-model OUT --size qwen3-0.6b` (see `tiny_model.build_true_size_model`) needs the
real vocabulary without a model download. Alibaba's `dashscope` SDK (PyPI, pure Python) carries
`dashscope/resources/qwen.tiktoken`: Qwen's 151,643 byte-level BPE ranks, one `base64(token) rank`
line each, the same file in every dashscope release from 1.24 to 2.0.2 (sha256 pinned below).
The file is read through the installed distribution's metadata, so dashscope is never imported
(it works even when dashscope was installed with `--no-deps`); `SWIFTPIPE_QWEN_TIKTOKEN=PATH`
names a copy of the file instead (an air-gapped machine).

The conversion to a `tokenizers` byte-level BPE, as Qwen's own `tokenizer.json` has it:

- vocabulary: each token's bytes through GPT-2's byte-to-character map, id = rank;
- merges: one per multi-byte token, in rank order: the pair tiktoken's merge loop joins last when
  it encodes the token's own bytes (lowest rank first, leftmost on ties);
- NFC normalizer (dashscope's encoder normalises to NFC too), Qwen's split regex, then ByteLevel
  without its own regex; the added tokens (`<|endoftext|>` ... `</think>`) from id 151,643.

Checked (tests/train/test_qwen_tokenizer.py): the same ids as tiktoken on every shipped row, and
for Qwen3 the six files are byte-identical to Qwen/Qwen3-0.6B's (hashes in `QWEN3_0_6B_FILES`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from swiftpipe.core.errors import SwiftpipeError

DASHSCOPE_REQUIREMENT = "dashscope>=1.24,<3"
RANKS_IN_WHEEL = "dashscope/resources/qwen.tiktoken"
RANKS_ENV = "SWIFTPIPE_QWEN_TIKTOKEN"
# dashscope 1.24.0, 1.27.8, 2.0.1 and 2.0.2 ship this exact file (2,561,218 bytes).
RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
RANKS_COUNT = 151_643

# Qwen's pre-tokenizer split (dashscope's QwenTokenizer and transformers' Qwen2Tokenizer use the same).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

FIRST_ADDED_ID = RANKS_COUNT  # 151643
# Qwen3's added tokens in id order from 151,643, with their `special` flag (Qwen3-0.6B's
# tokenizer_config.json); Qwen2.5 has the first 22 of them.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
)
QWEN2_5_ADDED_TOKENS = QWEN3_ADDED_TOKENS[:22]

QWEN2_5_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# swiftpipe's own Qwen2.5-Instruct chat template: the conversation path of the published one (a
# system turn, the default system prompt when there is none, `<|im_start|>role\ncontent<|im_end|>\n`
# per turn, `<|im_start|>assistant\n` as the generation prompt), checked token for token against
# the published template and against ms-swift's `qwen2_5` template on the shipped recipes' rows
# (tests/recipe/test_task_parity.py). Tool calls are left out: swiftpipe never sends tools, and a
# request with tools or tool turns fails loudly here instead of rendering differently.
QWEN2_5_CHAT_TEMPLATE = (
    "{%- if tools %}{{- raise_exception('this Qwen2.5 template (swiftpipe) renders no tools') }}{%- endif %}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + QWEN2_5_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ('system', 'user', 'assistant') or message.get('tool_calls') %}"
    "{{- raise_exception('this Qwen2.5 template (swiftpipe) renders system, user and assistant turns only') }}"
    "{%- elif not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class QwenVocabError(SwiftpipeError):
    pass


def _install_hint() -> str:
    return (f'install it with `pip install "{DASHSCOPE_REQUIREMENT}"` (or `pip install -e ".[true-size]"` in a '
            f"checkout; `--no-deps` is enough: only the file is read), or set {RANKS_ENV}=PATH to a copy of "
            f"{RANKS_IN_WHEEL}")


def ranks_file() -> Path:
    """Where `qwen.tiktoken` is: $SWIFTPIPE_QWEN_TIKTOKEN, else inside the installed dashscope."""
    explicit = os.environ.get(RANKS_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise QwenVocabError(f"{RANKS_ENV}={explicit}: no such file")
        return path
    try:
        dist = metadata.distribution("dashscope")
    except metadata.PackageNotFoundError:
        raise QwenVocabError(f"Qwen's vocabulary comes from the `dashscope` package, which is not installed: "
                             f"{_install_hint()}") from None
    path = Path(str(dist.locate_file(RANKS_IN_WHEEL)))
    if not path.is_file():
        raise QwenVocabError(f"dashscope {dist.version} is installed but has no {RANKS_IN_WHEEL} ({path}): "
                             f"{_install_hint()}")
    return path


def load_ranks(path: Optional[Path] = None) -> dict[bytes, int]:
    """token bytes -> rank, from the checked ranks file (the same parsing as tiktoken's loader)."""
    path = path or ranks_file()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise QwenVocabError(f"{path} is not the Qwen ranks file swiftpipe was checked against (sha256 {digest}, "
                             f"expected {RANKS_SHA256}); the tokenizer would not be Qwen's")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    assert len(ranks) == RANKS_COUNT and sorted(ranks.values()) == list(range(RANKS_COUNT))
    return ranks


def byte_chars() -> list[str]:
    """GPT-2's byte -> printable character map, as `tokenizers`' ByteLevel uses it: printable
    Latin-1 bytes stand for themselves, the others map to 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts tiktoken's merge loop joins last when it encodes `token`'s bytes alone."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, at = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best is None or rank < best):
                best, at = rank, i
        if best is None:
            raise QwenVocabError(f"token {token!r} cannot be built by merges from its bytes")
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return parts[0], parts[1]


def _byte_level() -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def bpe_model(ranks: dict[bytes, int]) -> dict[str, Any]:
    """The `model` section of tokenizer.json: the vocabulary and the merges (~3 s: the merge loop)."""
    chars = byte_chars()

    def text(b: bytes) -> str:
        return "".join(chars[x] for x in b)

    by_rank = sorted(ranks, key=ranks.__getitem__)
    return {
        "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
        "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
        "vocab": {text(t): ranks[t] for t in by_rank},
        "merges": [[text(a), text(b)] for a, b in (last_merge(t, ranks) for t in by_rank if len(t) > 1)],
    }


def tokenizer_json(model: dict[str, Any], added: tuple[tuple[str, bool], ...]) -> dict[str, Any]:
    """The `tokenizer.json` document (tokenizers' serialisation, in its key order)."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": FIRST_ADDED_ID + i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": special}
            for i, (content, special) in enumerate(added)
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Isolated", "invert": False},
            _byte_level(),
        ]},
        "post_processor": _byte_level(),
        "decoder": _byte_level(),
        "model": model,
    }


@dataclass(frozen=True)
class Flavor:
    """One tokenizer as a Qwen model family ships it."""

    name: str
    added: tuple[tuple[str, bool], ...]
    merges_header: str  # merges.txt's first line ("" for none)
    config_newline: str  # tokenizer_config.json ends with it

    def chat_template(self) -> str:
        if self.name == "qwen3":
            # Byte-identical to Qwen3-0.6B's template (its tokenizer_config.json hash matches with it).
            from trl.chat_template_utils import qwen3_chat_template

            return qwen3_chat_template
        return QWEN2_5_CHAT_TEMPLATE

    def tokenizer_config(self) -> dict[str, Any]:
        return {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": {
                str(FIRST_ADDED_ID + i): {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": special}
                for i, (content, special) in enumerate(self.added)
            },
            "additional_special_tokens": [c for c, special in self.added if special and c != "<|endoftext|>"],
            "bos_token": None,
            "chat_template": self.chat_template(),
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 131072,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        }


FLAVORS = {
    "qwen3": Flavor("qwen3", QWEN3_ADDED_TOKENS, "#version: 0.2\n", "\n"),
    "qwen2.5": Flavor("qwen2.5", QWEN2_5_ADDED_TOKENS, "", ""),
}

# Qwen/Qwen3-0.6B at revision c1899de289a04d12100db370d81485cdf75e47ca: (bytes, how, digest) of the
# files `write_tokenizer` (and, for the configs, `tiny_model.build_true_size_model`) writes: "git" is
# the hub's git blob sha1, "sha256" the content hash of a Git LFS file.
QWEN3_0_6B_FILES = {
    "tokenizer.json": (11_422_654, "sha256", "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"),
    "tokenizer_config.json": (9_732, "git", "417d038a63fa3de29cfde265caedae14d1a58d92"),
    "vocab.json": (2_776_833, "git", "4783fe10ac3adce15ac8f358ef5462739852c569"),
    "merges.txt": (1_671_853, "git", "31349551d90c7606f325fe0f11bbb8bd5fa0d7c7"),
    "config.json": (726, "git", "f5c3703b78ae2a478ae15b247e9f855e0ce2107b"),
    "generation_config.json": (239, "git", "20a8a9156fc8c3f25295ca067f61fdf120d517c5"),
}
# The Qwen2.5 family's vocab.json and merges.txt (sha256); its tokenizer.json on the hub is an older
# serialisation and its tokenizer_config.json embeds the published template, so those two differ.
QWEN2_5_FILES = {
    "vocab.json": (2_776_833, "sha256", "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910"),
    "merges.txt": (1_671_839, "sha256", "599bab54075088774b1733fde865d5bd747cbcc7a547c5bc12610e874e26f5e3"),
}


def file_matches(path: Path, pin: tuple[int, str, str]) -> bool:
    """Whether a file has a published file's size and hash."""
    size, how, digest = pin
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest() if how == "sha256" else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return len(data) == size and got == digest


def write_tokenizer(out_dir: str | Path, flavor: str = "qwen3", *, model: Optional[dict[str, Any]] = None) -> Path:
    """Write tokenizer.json, tokenizer_config.json, vocab.json and merges.txt (as the hub ships them);
    `model` is a `bpe_model()` to reuse (building several flavors)."""
    if flavor not in FLAVORS:
        raise QwenVocabError(f"unknown tokenizer flavor {flavor!r} (choose from {', '.join(FLAVORS)})")
    spec = FLAVORS[flavor]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = tokenizer_json(model if model is not None else bpe_model(load_ranks()), spec.added)
    # json.dumps(indent=2, ensure_ascii=False) is the layout of tokenizers' own pretty save.
    (out / "tokenizer.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "vocab.json").write_text(json.dumps(doc["model"]["vocab"], ensure_ascii=False, separators=(",", ":")),
                                    encoding="utf-8")
    (out / "merges.txt").write_text(spec.merges_header + "".join(f"{a} {b}\n" for a, b in doc["model"]["merges"]),
                                    encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps(spec.tokenizer_config(), indent=2, ensure_ascii=False) + spec.config_newline, encoding="utf-8")
    return out
