"""Inspect and split ms-swift messages JSONL: format check, token lengths, suggested max_length."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

from swiftpipe.core import jsonl
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.core.stats import percentile
from swiftpipe.recipe.schema import Recipe
from swiftpipe.recipe.task import Task
from swiftpipe.task import messages
from swiftpipe.task.messages import Example


class DataError(SwiftpipeError):
    pass


def read_rows(path: Path, default_system: Optional[str] = None) -> tuple[list[Example], list[str]]:
    """Valid rows and 'file:line: problem' strings for the others (answers need not be JSON here)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return messages.scan(path, default_system=default_system, json_answer=False)


def suggest_max_length(total_lengths: list[int]) -> int:
    """The longest row plus 10%, rounded up to a multiple of 64: no row is dropped or cut."""
    longest = max(total_lengths, default=0)
    return max(64, -(-int(longest * 1.1) // 64) * 64)


def token_lengths(rows: list[Example], tokenizer,
                  chat_template_kwargs: Optional[dict] = None) -> tuple[list[int], list[int], list[int]]:
    """(prompt, answer, whole row) tokens per row, with the model's chat template where it has one:
    the prompt as served (generation prompt, the Task's `chat_template_kwargs`: for Qwen3 the empty
    think block thinking-off adds), the answer as generated (+ the end-of-turn token: what
    eval.max_tokens must cover), the whole row as ms-swift trains on it (what train.max_length must
    cover; tests/recipe/test_task_parity.py checks these are the same tokens on both sides)."""
    kwargs = dict(Task.chat_template_kwargs if chat_template_kwargs is None else chat_template_kwargs)
    prompts, answers, totals = [], [], []
    for row in rows:
        turns = messages.request(row.system, row.user)
        answer = row.answer_text or ""
        answer_ids = len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1  # + end-of-turn token
        if getattr(tokenizer, "chat_template", None):
            prompt = _ids(tokenizer.apply_chat_template(turns, tokenize=True, add_generation_prompt=True, **kwargs))
            whole = _ids(tokenizer.apply_chat_template(turns + [{"role": "assistant", "content": answer}],
                                                       tokenize=True, **kwargs))
        else:
            prompt = tokenizer("\n".join(t["content"] for t in turns))["input_ids"]
            whole = prompt + [0] * answer_ids
        prompts.append(len(prompt))
        answers.append(answer_ids)
        totals.append(len(whole))
    return prompts, answers, totals


def _ids(encoded) -> list[int]:
    return encoded["input_ids"] if hasattr(encoded, "keys") else encoded  # transformers 5: a BatchEncoding


def coverage(longest_row: int, longest_answer: int, *, max_length: Optional[int], max_tokens: int) -> dict:
    """Whether a recipe's train.max_length and eval.max_tokens cover the data, and with how much room."""
    def one(limit: Optional[int], longest: int, what: str) -> dict:
        if limit is None:
            return {"limit": None, "longest": longest, "ok": True, "note": f"no limit; the longest {what} is {longest}"}
        ok = longest <= limit
        room = round(limit / longest, 1) if longest else None
        return {"limit": limit, "longest": longest, "ok": ok, "room": room,
                "note": (f"covers the longest {what} ({longest} tokens) {room}x" if ok else
                         f"TOO SHORT for the longest {what} ({longest} tokens)")}

    return {"train.max_length": one(max_length, longest_row, "training row"),
            "eval.max_tokens": one(max_tokens, longest_answer, "answer")}


def histogram_png(prompts: list[int], answers: list[int], totals: list[int], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, values, name in zip(axes, (prompts, answers, totals), ("prompt", "answer", "whole training row")):
        ax.hist(values, bins=40, color="#4477aa")
        ax.set_title(f"{name} tokens")
        ax.axvline(percentile(values, 0.99) or 0, color="#cc3311", linestyle="--", label="p99")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def describe(values: list[int]) -> dict:
    q = {name: round(percentile(values, level) or 0, 1) for name, level in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}
    return {"min": min(values), **q, "max": max(values), "mean": round(sum(values) / len(values), 1)}


def stats(path: Path, model: Optional[str], png: Optional[Path], recipe: Optional[Recipe] = None) -> dict:
    """The file's rows and, with a tokenizer, their token lengths; with a recipe, rows without a system
    turn get its system prompt (as `swift sft --system` does) and its limits are checked."""
    rows, problems = read_rows(path, default_system=recipe.data.system_prompt if recipe else None)
    result: dict = {"file": str(path), "rows": len(rows), "bad_rows": len(problems), "problems": problems[:20]}
    if not rows:
        return result
    answers_json = sum(1 for r in rows if r.answer is not None)
    result["answers_parse_as_json"] = answers_json
    if model:
        tokenizer = load_tokenizer(model)
        prompts, answers, totals = token_lengths(rows, tokenizer)
        result.update(tokenizer=model, prompt_tokens=describe(prompts), answer_tokens=describe(answers),
                      total_tokens=describe(totals), suggested_max_length=suggest_max_length(totals))
        if recipe:
            result["recipe"] = recipe.name
            result["coverage"] = coverage(max(totals), max(answers), max_length=recipe.train.max_length,
                                          max_tokens=recipe.eval.max_tokens)
        if png:
            histogram_png(prompts, answers, totals, png, f"{path.name}: {len(rows)} rows, tokenizer {Path(model).name}")
            result["histogram"] = str(png)
    return result


def load_tokenizer(model: str):
    """A local model directory, or a hub id (downloaded through ModelScope, as ms-swift does)."""
    from transformers import AutoTokenizer

    source = model
    if not Path(model).exists():
        try:
            from modelscope import snapshot_download

            source = snapshot_download(model, allow_patterns=["*.json", "*.txt", "*.model", "*.tiktoken"])
        except Exception as exc:  # noqa: BLE001 - hub errors come in many types
            raise DataError(f"cannot load the tokenizer of '{model}': {exc}. Pass a local model directory "
                            f"with --model, or check the network / hub access.") from None
    return AutoTokenizer.from_pretrained(source)


def split(path: Path, out_dir: Path, *, val: float, test: float, seed: int) -> dict[str, int]:
    """Shuffle with `seed` and write train/val/test.jsonl (a part with fraction 0 is not written)."""
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise DataError(f"--val ({val}) and --test ({test}) must be fractions in [0, 1) that sum to less than 1")
    lines = jsonl.raw_lines(path)
    random.Random(seed).shuffle(lines)
    n_test, n_val = round(len(lines) * test), round(len(lines) * val)
    parts = {"test": lines[:n_test], "val": lines[n_test:n_test + n_val], "train": lines[n_test + n_val:]}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        if part or name == "train":
            jsonl.write_raw_lines(out_dir / f"{name}.jsonl", part)
    return {name: len(part) for name, part in parts.items()}
