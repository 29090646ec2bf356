"""Qwen's real tokenizer built from dashscope's ranks file: the published files, tiktoken's ids.

The reference is tiktoken itself on the same ranks, called the way dashscope's own QwenTokenizer
calls it (NFC, then `encode(..., allowed_special="all")`), against the two tokenizers the pipeline
uses: the `tokenizers` file and transformers' AutoTokenizer (what ms-swift and vLLM load).
"""

import json
import unicodedata
from importlib import metadata

import pytest

from swiftpipe.train import qwen_tokenizer
from swiftpipe.train.tiny_model import TRUE_SIZES
from tests.helpers import REPO, SHARED_DATA, run_cli

EDGE_CASES = [
    "", " ", "  ", "\n", "\n\n", "\r\n", " \n ", "a  b   c    d", "tab\there\t\t", "trailing   ", "   leading",
    "I'LL we'Re THEY'VE it's 's", "1234567890 12.5% ３２１", "x=1;y==2!=3<=>4", "你好，世界！这是一个测试。",
    "北京市朝阳区望京SOHO T1 1201室 13800138000", "e\u0301 caf\u00e9 cafe\u0301 A\u030a \ufb01", "😀👍🏽👨‍👩‍👧 🇨🇳",
    "\u200b\u200d zero width", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n{}<|im_end|>",
    "<tool_call>{\"a\":1}</tool_call> <|endoftext|>", "```json\n{\n  \"k\": \"v\"\n}\n```", "  \u3000全角空格\u3000",
    "ﾊﾝｶｸ ｶﾀｶﾅ", "a" * 3000, " " * 257, '{"province":"浙江省","city":"杭州市","phone":"0571-88886666"}',
]


def shipped_texts() -> list[str]:
    """Every system, user and assistant content of the rows the project ships."""
    texts = []
    for path in sorted((REPO / "datasets").rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts += [m["content"] for m in json.loads(line)["messages"]]
    return texts


def reference_texts() -> list[str]:
    """The public reference data beside the project (CLUENER, complaint, waybills), when present."""
    texts = []
    for path in sorted((SHARED_DATA / "cluener").glob("*.json")):
        texts += [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    complaint = SHARED_DATA / "complaint" / "fake_sft.json"
    if complaint.is_file():
        for record in json.loads(complaint.read_text(encoding="utf-8")):
            texts += [str(record[k]) for k in ("system", "instruction", "input", "output") if record.get(k)]
    for path in sorted((SHARED_DATA / "waybill_paddle").glob("*.txt")):
        texts += [line.split("\t")[0].replace("\x02", "") for line in path.read_text(encoding="utf-8").splitlines()[1:]
                  if line.strip()]
    return texts


@pytest.fixture(scope="module")
def tiktoken_qwen(qwen_tokenizers):
    tiktoken = pytest.importorskip("tiktoken")
    encoding = tiktoken.Encoding(
        "qwen", pat_str=qwen_tokenizer.SPLIT_PATTERN, mergeable_ranks=qwen_tokenizer.load_ranks(),
        special_tokens={token: qwen_tokenizer.FIRST_ADDED_ID + i
                        for i, (token, _) in enumerate(qwen_tokenizer.QWEN3_ADDED_TOKENS)})
    return lambda text: encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all")


@pytest.fixture(scope="module")
def qwen3_tokenizers(qwen_tokenizers):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    directory = qwen_tokenizers["qwen3-0.6b"]
    return Tokenizer.from_file(str(directory / "tokenizer.json")), AutoTokenizer.from_pretrained(directory)


def mismatches(texts, reference, tokenizers) -> list[str]:
    fast, auto = tokenizers
    found = []
    ids = [e.ids for e in fast.encode_batch(texts, add_special_tokens=False)]
    for text, from_file in zip(texts, ids):
        want = reference(text)
        from_auto = auto(text, add_special_tokens=False)["input_ids"]
        if from_file != want or from_auto != want:
            found.append(f"{text[:60]!r}: tiktoken {want[:12]} tokenizer.json {from_file[:12]} AutoTokenizer {from_auto[:12]}")
        elif auto.decode(want) != unicodedata.normalize("NFC", text):
            found.append(f"{text[:60]!r}: does not decode back")
    return found


def test_same_ids_as_tiktoken_on_every_shipped_row(tiktoken_qwen, qwen3_tokenizers):
    texts = sorted(set(shipped_texts())) + EDGE_CASES
    assert len(texts) > 4000
    found = mismatches(texts, tiktoken_qwen, qwen3_tokenizers)
    assert found == [], f"{len(found)} of {len(texts)} texts differ from tiktoken:\n" + "\n".join(found[:10])


def test_same_ids_as_tiktoken_on_the_reference_data(tiktoken_qwen, qwen3_tokenizers):
    texts = sorted(set(reference_texts()))
    if not texts:
        pytest.skip(f"the public reference data is not here ({SHARED_DATA})")
    found = mismatches(texts, tiktoken_qwen, qwen3_tokenizers)
    assert found == [], f"{len(found)} of {len(texts)} texts differ from tiktoken:\n" + "\n".join(found[:10])


def test_the_files_are_the_published_ones(qwen_tokenizers):
    qwen3 = qwen_tokenizers["qwen3-0.6b"]
    differ = [name for name, pin in qwen_tokenizer.QWEN3_0_6B_FILES.items()
              if not qwen_tokenizer.file_matches(qwen3 / name, pin)]
    assert differ == [], f"not byte-identical to Qwen/Qwen3-0.6B's: {differ}"
    qwen2_5 = qwen_tokenizers["qwen2.5-0.5b-instruct"]
    assert all(qwen_tokenizer.file_matches(qwen2_5 / name, pin) for name, pin in qwen_tokenizer.QWEN2_5_FILES.items())


@pytest.mark.parametrize("size", list(TRUE_SIZES))
def test_special_tokens_template_and_ids(qwen_tokenizers, size):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_tokenizers[size])
    qwen3 = size.startswith("qwen3")
    assert len(tok) == (151_669 if qwen3 else 151_665)
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id, tok.bos_token) == ("<|im_end|>", 151645, 151643, None)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<tool_call>"]) == [151644, 151657]
    if qwen3:
        assert tok.convert_tokens_to_ids(["<think>", "</think>"]) == [151667, 151668]
    turns = [{"role": "user", "content": "你好"}]
    prompt = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    if qwen3:
        assert prompt == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    else:  # Qwen2.5 adds its default system prompt and knows no thinking switch
        assert prompt == (f"<|im_start|>system\n{qwen_tokenizer.QWEN2_5_DEFAULT_SYSTEM}<|im_end|>\n"
                          "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")
        with pytest.raises(Exception, match="renders no tools"):
            tok.apply_chat_template(turns, tools=[{"type": "function", "function": {"name": "f"}}], tokenize=False)
    generation = json.loads((qwen_tokenizers[size] / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643]


@pytest.mark.parametrize("size", list(TRUE_SIZES))
def test_the_architecture_has_the_published_parameter_count(qwen_tokenizers, size):
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(qwen_tokenizers[size])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert config.vocab_size == 151_936 and config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) == TRUE_SIZES[size].parameters


def test_a_missing_or_different_ranks_file_is_named_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv(qwen_tokenizer.RANKS_ENV, raising=False)

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(qwen_tokenizer.metadata, "distribution", not_installed)
    with pytest.raises(qwen_tokenizer.QwenVocabError, match=r'pip install "dashscope>=1\.24,<3"'):
        qwen_tokenizer.ranks_file()
    other = tmp_path / "qwen.tiktoken"
    other.write_bytes(b"IQ== 0\n")
    monkeypatch.setenv(qwen_tokenizer.RANKS_ENV, str(other))
    with pytest.raises(qwen_tokenizer.QwenVocabError, match="not the Qwen ranks file"):
        qwen_tokenizer.load_ranks()
    monkeypatch.setenv(qwen_tokenizer.RANKS_ENV, str(tmp_path / "absent"))
    with pytest.raises(qwen_tokenizer.QwenVocabError, match="no such file"):
        qwen_tokenizer.ranks_file()


def test_cli_keeps_the_tiny_shape_options_off_a_true_size(tmp_path):
    done = run_cli("tiny-model", str(tmp_path / "m"), "--size", "qwen3-0.6b", "--layers", "4")
    assert done.returncode == 2 and "--layers: the tiny model's shape" in done.stderr
    done = run_cli("tiny-model", str(tmp_path / "m"), "--no-weights")
    assert done.returncode == 2 and "--no-weights goes with --size" in done.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.integration
def test_true_size_qwen3_builds_loads_and_generates(tmp_path, qwen_tokenizers):
    """The whole 0.6B model through the CLI (~30 s, 1.2 GB): transformers loads and runs it."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "Qwen3-0.6B"
    done = run_cli("tiny-model", str(out), "--size", "qwen3-0.6b", timeout=600)
    assert done.returncode == 0, done.stderr
    assert 1.1e9 < (out / "model.safetensors").stat().st_size < 1.3e9
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (qwen_tokenizers["qwen3-0.6b"] / name).read_bytes()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == TRUE_SIZES["qwen3-0.6b"].parameters
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True,
                                  enable_thinking=False, return_tensors="pt", return_dict=True)
    generated = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 3
