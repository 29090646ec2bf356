"""What answering with a recipe's model needs besides the model: the system prompt and a way to
count a text's tokens for the length limit. Shared by the gateway and batch extraction."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from swiftpipe import console, jsonl, messages
from swiftpipe.errors import SwiftpipeError
from swiftpipe.recipe.schema import Recipe


def system_prompt(recipe: Recipe, base: Path) -> Optional[str]:
    """The recipe's system prompt, else the one of the first training row (rows carry their own)."""
    if recipe.data.system_prompt:
        return recipe.data.system_prompt
    path = Path(recipe.data.train_files()[0])
    path = path if path.is_absolute() else base / path
    try:
        for line, record in jsonl.read(path):
            return messages.parse(record, line=line, require_answer=False, json_answer=False).system
    except (SwiftpipeError, OSError, ValueError):
        return None
    return None


def token_counter(model_dir: str) -> Optional[Callable[[str], int]]:
    """Counts tokens with the model's tokenizer; None when it cannot be loaded (then characters)."""
    if not (Path(model_dir) / "config.json").is_file():
        return None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # noqa: BLE001 - any failure: fall back to counting characters
        console.warn(f"could not load the tokenizer of {model_dir} ({type(exc).__name__}); the length limit "
                     f"counts characters instead of tokens")
        return None
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
