"""The task: what every extraction request carries and how its answers are checked.

Built once — from a recipe (`task_of`), from the gateway's `tasks` table (`Task.from_stored`), or
from flags (`swiftpipe eval --schema`, `data label --system-prompt`) — and asked for its views
wherever a model is asked (the evaluator, teacher labelling, the gateway, batch extraction), the
way vLLM's request models convert themselves (`to_sampling_params`):

- `sdk_kwargs(model, text)`: the OpenAI SDK's `chat.completions.create` arguments;
- `request_body(model, text)`: the same request as the raw JSON body (the gateway's upstream calls);
- `sampling_params()` and `chat_template_kwargs`: the same request for vLLM's offline engine;
- `input_problem(text)`: why a text cannot be sent (empty, too long), or None;
- `check(text, raw, pieces)`: the answer's fields, validity, flags and per-field confidence
  (`swiftpipe.task.flags`, `swiftpipe.task.confidence`; `pieces` are the sampled tokens with their
  logprobs, None when the server gave none: then confidence is None, never invented);
- `stored()` / `from_stored()`: what the gateway's database keeps of it.

Every request is the same: the system prompt, the text, temperature 0, Qwen3 thinking off, and the
answer's JSON schema as `response_format` json_schema — never the `guided_json` field that vLLM
0.12 removed (it is ignored silently, with HTTP 200 and unconstrained text) — and, with
`confidence` on (eval.confidence, default), the sampled tokens' logprobs (`logprobs: true`;
`SamplingParams(logprobs=0)` offline): one number per generated token, no top alternatives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

from swiftpipe.core import console, jsonl
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.recipe.schema import Recipe
from swiftpipe.task import confidence as scoring
from swiftpipe.task import flags, messages

_DEFAULT: Any = object()  # "the task's own system prompt"


@dataclass(frozen=True)
class Task:
    system_prompt: Optional[str] = None
    schema: Optional[dict] = None  # the answer's JSON schema; None: unconstrained answers
    verbatim_fields: tuple[str, ...] = ()  # fields always copied from the text (data.verbatim_fields)
    max_length: Optional[int] = None  # tokens of input text (train.max_length); None: no limit
    max_tokens: int = 512  # new tokens per answer (eval.max_tokens)
    metric: str = "exact_match"  # eval.metric: ner_f1 answers are {type: [entities]}
    recipe: Optional[str] = None  # the recipe's name, for messages
    confidence: bool = True  # ask for token logprobs and score each field (eval.confidence)
    accept_threshold: Optional[float] = None  # row confidence needing no review (serve.accept_threshold / the run's)
    count_tokens: Optional[Callable[[str], int]] = field(default=None, compare=False, repr=False)  # None: characters

    # Qwen3 thinking off, on every request (the template's `enable_thinking`).
    chat_template_kwargs: ClassVar[dict[str, Any]] = {"enable_thinking": False}

    @property
    def fields(self) -> list[str]:
        """The answer's top-level fields, in schema order."""
        return list((self.schema or {}).get("properties") or {})

    # ------------------------------------------------------------ the request

    def messages(self, text: str, *, system: Optional[str] = _DEFAULT) -> list[dict]:
        """The chat messages for `text`; `system` (a row's own system prompt) wins over the task's."""
        return messages.request(self.system_prompt if system is _DEFAULT else system, text)

    def _response_format(self) -> Optional[dict[str, Any]]:
        if not self.schema:
            return None
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": self.schema, "strict": True}}

    def sdk_kwargs(self, model: str, text: str, *, system: Optional[str] = _DEFAULT) -> dict[str, Any]:
        """The keyword arguments of the OpenAI SDK's `client.chat.completions.create` for one extraction."""
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": self.messages(text, system=system),
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "extra_body": {"chat_template_kwargs": dict(self.chat_template_kwargs)},
        }
        if self.confidence:
            kwargs["logprobs"] = True  # the sampled token's logprob only (no top_logprobs)
        if self.schema:
            kwargs["response_format"] = self._response_format()
        return kwargs

    def request_body(self, model: str, text: str, *, system: Optional[str] = _DEFAULT) -> dict[str, Any]:
        """The JSON body the SDK call of `sdk_kwargs` sends (extra_body merged in): for raw HTTP callers."""
        kwargs = self.sdk_kwargs(model, text, system=system)
        body = {k: v for k, v in kwargs.items() if k != "extra_body"}
        body.update(kwargs["extra_body"])
        return body

    def sampling_params(self):
        """vLLM's SamplingParams for the offline engine: the same decoding as `sdk_kwargs` asks a
        server for (greedy, max_tokens, the schema as structured output). Imports vLLM."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(json=self.schema) if self.schema else None
        return SamplingParams(temperature=0, max_tokens=self.max_tokens, structured_outputs=structured,
                              logprobs=0 if self.confidence else None)

    # ------------------------------------------------------------ the checks

    def length(self, text: str) -> tuple[int, str]:
        """(size, unit) of a text for the length limit: tokens with the model's tokenizer, else characters."""
        if self.count_tokens is not None:
            return self.count_tokens(text), "tokens"
        return len(text), "characters"

    def input_problem(self, text: Any, *, who: str,
                      length: Optional[Callable[[str], tuple[int, str]]] = None) -> Optional[flags.InputProblem]:
        """Why `text` cannot be sent (empty, longer than train.max_length), or None; `who` names the
        model in the message, `length` counts with another tokenizer (the offline engine's own)."""
        return flags.input_problem(text, max_length=self.max_length, length=length or self.length, who=who,
                                   source=f"train.max_length of recipe '{self.recipe}'")

    def check(self, text: str, raw: Optional[str], pieces: Optional[list[tuple[bytes, float]]] = None, *,
              scored: Optional[tuple[dict, Optional[float]]] = None) -> flags.Checked:
        """The model's raw answer to `text`, parsed and checked against the schema and verbatim fields,
        with each field's confidence from the sampled tokens `pieces` ((bytes, logprob) in order), or
        the ({field: p}, row confidence) `scored` from them before (a kept answer)."""
        checked = flags.check(text, raw, schema=self.schema, verbatim_fields=self.verbatim_fields)
        threshold = self.accept_threshold if self.confidence else None  # not asked for: nothing to cut at
        if checked.fields is None:
            return checked.with_confidence(None, None, threshold)
        if scored is not None:
            return checked.with_confidence(dict(scored[0]), scored[1], threshold)
        found = self.score(raw, pieces)
        if found is None:
            return checked.with_confidence(None, None, threshold)
        values = found.values()
        return checked.with_confidence(values, scoring.row_of(values), threshold)

    def fingerprint(self) -> str:
        """What decides the answer to a text: the request (system prompt, schema, sampling, thinking
        off, logprobs asked or not) and the checks of it (verbatim fields). Not the accept
        threshold or the length limit: they judge answers, they do not change them."""
        request = {"system_prompt": self.system_prompt, "schema": self.schema, "temperature": 0,
                   "max_tokens": self.max_tokens, "chat_template_kwargs": self.chat_template_kwargs,
                   "confidence": self.confidence, "verbatim_fields": list(self.verbatim_fields)}
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def score(self, raw: Optional[str], pieces: Optional[list[tuple[bytes, float]]]) -> Optional[scoring.Confidence]:
        """The answer's per-field confidence (every aggregate), or None without logprobs or an object."""
        if pieces is None or raw is None:
            return None
        return scoring.answer_confidence(raw, pieces, self.fields or None)

    # ------------------------------------------------------------ stored form

    def stored(self) -> dict[str, Any]:
        """What the gateway's `tasks` table keeps of a served version: enough to check corrections and
        turn reviewed answers into training rows after the version is no longer served."""
        return {"recipe": self.recipe, "system_prompt": self.system_prompt, "schema": self.schema,
                "verbatim_fields": list(self.verbatim_fields), "metric": self.metric, "max_length": self.max_length,
                "max_tokens": self.max_tokens, "confidence": self.confidence,
                "accept_threshold": self.accept_threshold}

    @classmethod
    def from_stored(cls, data: Optional[dict[str, Any]]) -> "Task":
        data = data or {}
        return cls(system_prompt=data.get("system_prompt"), schema=data.get("schema"),
                   verbatim_fields=tuple(data.get("verbatim_fields") or ()), max_length=data.get("max_length"),
                   max_tokens=data.get("max_tokens") or 512, metric=data.get("metric") or "exact_match",
                   recipe=data.get("recipe"), confidence=data.get("confidence", True),
                   accept_threshold=data.get("accept_threshold"))

    def with_counter(self, count_tokens: Optional[Callable[[str], int]]) -> "Task":
        """The same task, counting input length with this tokenizer."""
        return dataclasses.replace(self, count_tokens=count_tokens)

    def with_threshold(self, accept_threshold: Optional[float]) -> "Task":
        """The same task with this accept threshold (None: keep the task's)."""
        if accept_threshold is None:
            return self
        return dataclasses.replace(self, accept_threshold=accept_threshold)


def task_of(recipe: Recipe, base: Path) -> Task:
    """A recipe's task (relative paths of the recipe against `base`)."""
    return Task(system_prompt=system_prompt(recipe, base), schema=recipe.data.json_schema(),
                verbatim_fields=tuple(recipe.data.verbatim_fields), max_length=recipe.train.max_length,
                max_tokens=recipe.eval.max_tokens, metric=recipe.eval.metric, recipe=recipe.name,
                confidence=recipe.eval.confidence, accept_threshold=recipe.serve.accept_threshold)


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
