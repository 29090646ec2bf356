"""The tiny Qwen3 the CPU demo trains: deterministic, and a working model and tokenizer."""

import filecmp

import pytest

pytest.importorskip("torch")


def test_tiny_model_is_deterministic_and_a_working_qwen3(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swiftpipe.train.tiny_model import build_tiny_model

    a, b = build_tiny_model(tmp_path / "a"), build_tiny_model(tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(names)
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert mismatch == [] and errors == []

    tok = AutoTokenizer.from_pretrained(a)
    text = "收件人:欧阳丽|电话:010-65432178|北京市朝阳区建国路88号"
    assert tok.decode(tok(text)["input_ids"]) == text
    for special in ("<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")

    model = AutoModelForCausalLM.from_pretrained(a)
    assert model.config.model_type == "qwen3"
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    out = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 0
