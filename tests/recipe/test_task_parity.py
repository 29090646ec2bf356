"""Training and serving see the same tokens: for every shipped recipe, on rows of its task.

Train side: the `swift sft` command swiftpipe renders for the recipe, parsed by ms-swift's own argument
parser into its `SftArguments`; ms-swift's own loader reads the rows, its template (`args.get_template()`,
train mode) encodes them: input_ids and labels. The only overrides: `model.id` is Qwen's real tokenizer
built offline (no weights) in a directory named like the hub model, so ms-swift picks the model type
and template for it by itself, as for the hub id; `hardware.device=cpu`; the data files.

Serve side: the `vllm serve` command swiftpipe renders for the run, parsed by vLLM's own parser, and
vLLM's GPU-less render path (what its render server runs: `renderer_from_config` + `OnlineRenderer`)
turning the exact request body the Task sends (`Task.request_body`: messages, chat_template_kwargs,
response_format) into prompt token ids; the answer grammar is vLLM's own xgrammar backend compiled
from that request's schema with the server's structured-output settings.

Checked on every row:
- the prompt ms-swift trains on (every id before the first label) == the prompt ids vLLM builds;
- the labels == the tokens of the row's answer JSON + `<|im_end|>` + the template's "\\n": the answer
  alone encodes the same as in context, and nothing inside it is masked;
- that answer text, read by the evaluator (`parse_answer` + `scoring.score`), is an exact match of
  the gold the evaluator compares against, and passes the task's checks (schema);
- vLLM's answer grammar accepts exactly those answer tokens and then `<|im_end|>`.

System prompt rules (each a case below): a row's own system message wins over the recipe's
`data.system_prompt` (`--system`) on both sides; a row without one gets the recipe's on both sides;
with neither, both get the template default (Qwen2.5's "You are Qwen..."; Qwen3: none).

A change in ms-swift, transformers, vLLM, a chat template, the Task's `chat_template_kwargs` or how the
system prompt is rendered makes a row differ, and the failure shows the first row's two texts.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from swiftpipe.core import jsonl
from swiftpipe.data.convert import convert
from swiftpipe.evaluation import scoring
from swiftpipe.evaluation.evaluate import read_test_rows
from swiftpipe.recipe.derived import serve_target
from swiftpipe.recipe.load import load_recipe
from swiftpipe.recipe.task import task_of
from swiftpipe.task.answers import parse_answer
from swiftpipe.train import render
from tests.helpers import REPO, SHARED_DATA

pytest.importorskip("swift")
pytest.importorskip("vllm")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # vLLM's and xgrammar's, once a row

SERVED = "parity"
OTHER_SYSTEM = "你是一个严谨的信息抽取助手，只输出JSON。"
NAMES = ["王伟", "李娜", "欧阳丽", "张磊", "陈静", "刘洋", "索南扎西", "司马光明"]
PLACES = ["杭州市", "北京市", "成都市", "南京市", "厦门市", "西安市", "乌鲁木齐市"]
ORGS = ["华为公司", "阿里巴巴", "腾讯公司", "小米公司", "京东集团", "百度公司", "清华大学"]


# ------------------------------------------------------------ rows of each task

def cluener_source(path: Path, n: int = 40) -> Path:
    rng, lines = random.Random(1), []
    for i in range(n):
        name, place, org = rng.choice(NAMES), rng.choice(PLACES), rng.choice(ORGS)
        text = f"{name}昨天在{place}参加了{org}的发布会，第{i}次。"
        start = text.index(place)
        label = {"name": {name: [[0, len(name) - 1]]}, "address": {place: [[start, start + len(place) - 1]]},
                 "company": {org: [[text.index(org), text.index(org) + len(org) - 1]]}}
        lines.append({"text": text, "label": label})
    jsonl.write_lines(path, lines)
    return path


def raner_source(path: Path, n: int = 40) -> Path:
    rng, lines = random.Random(2), []
    for _ in range(n):
        name, org, place = rng.choice(NAMES), rng.choice(ORGS), rng.choice(PLACES)
        text = f"{name}在{place}的{org}工作。"
        entities = [{"category": "PER", "start": 0, "end": len(name)},
                    {"category": "LOC", "start": text.index(place), "end": text.index(place) + len(place)},
                    {"category": "ORG", "start": text.index(org), "end": text.index(org) + len(org)}]
        lines.append({"text": text, "entities": entities})
    jsonl.write_lines(path, lines)
    return path


def alpaca_source(path: Path, n: int = 40) -> Path:
    rng, rows = random.Random(3), []
    for i in range(n):
        name, place = rng.choice(NAMES), rng.choice(PLACES)
        answer = {"name": name, "address": f"{place}人民路{i + 1}号", "email": f"user{i}@example.com",
                  "question": rng.choice(["快递丢失了", "小区噪音扰民，晚上睡不着", "停车难，物业不管"])}
        text = f"我是{name}，住在{answer['address']}，邮箱{answer['email']}，{answer['question']}！"
        rows.append({"instruction": text, "input": "", "output": "```json\n" + json.dumps(answer, ensure_ascii=False)
                     + "\n```"})
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def converted(fmt: str, source: Path, out: Path, prompt: str, **kwargs) -> Path:
    done = convert(fmt, source, system_prompt=prompt, **kwargs)
    assert done.bad == []
    jsonl.write_lines(out, done.rows[:300])
    return out


def variants(rows_file: Path, out: Path, *, own_system: bool, n: int = 12) -> Path:
    """The first n rows without their system turn, then (own_system) with a system turn of their own."""
    rows = [record for _, record in jsonl.read(rows_file)][:n]
    bare = [{"messages": [m for m in r["messages"] if m["role"] != "system"]} for r in rows]
    other = [{"messages": [{"role": "system", "content": OTHER_SYSTEM}] + b["messages"]} for b in bare]
    jsonl.write_lines(out, bare + (other if own_system else []))
    return out


@dataclass
class Case:
    recipe: str
    model: str  # a key of the qwen_tokenizers fixture, or "tiny"
    overrides: list[str] = field(default_factory=list)


CASES = {
    "address": Case("address-qwen3-0.6b", "qwen3-0.6b"),
    "address-no-system-anywhere": Case("address-qwen3-0.6b", "qwen3-0.6b", ["data.system_prompt=null"]),
    "demo": Case("demo-cpu", "tiny"),
    "cluener": Case("cluener-qwen2.5-0.5b", "qwen2.5-0.5b-instruct"),
    "cluener-no-system-anywhere": Case("cluener-qwen2.5-0.5b", "qwen2.5-0.5b-instruct", ["data.system_prompt=null"]),
    "complaint": Case("complaint-qwen3-0.6b", "qwen3-0.6b"),
    "ner-offset": Case("ner-offset-qwen3-0.6b", "qwen3-0.6b"),
}


def training_files(case: Case, prompt: str | None, tmp: Path) -> list[Path]:
    """The rows of the case's task: shipped or converted from its public format (own fixtures, plus
    the public reference data when it is here), then the system-prompt variants."""
    task = case.recipe.split("-")[0]
    recipe_prompt = load_recipe(REPO / "recipes" / f"{case.recipe}.yaml").recipe.data.system_prompt
    if task == "address":
        files = [REPO / "datasets/address/train.jsonl", REPO / "datasets/address/test.jsonl"]
        if (SHARED_DATA / "waybill_paddle/dev.txt").is_file():
            files.append(converted("paddle-waybill", SHARED_DATA / "waybill_paddle/dev.txt", tmp / "waybill.jsonl",
                                   recipe_prompt))
    elif task == "demo":
        files = [REPO / "datasets/demo/address.jsonl"]
    elif task == "cluener":
        files = [converted("cluener", cluener_source(tmp / "cluener.json"), tmp / "cluener.jsonl", recipe_prompt)]
        if (SHARED_DATA / "cluener/dev.json").is_file():
            files.append(converted("cluener", SHARED_DATA / "cluener/dev.json", tmp / "cluener-dev.jsonl", recipe_prompt))
    elif task == "complaint":
        files = [converted("alpaca", alpaca_source(tmp / "complaint.json"), tmp / "complaint.jsonl", recipe_prompt)]
        if (SHARED_DATA / "complaint/fake_sft.json").is_file():
            files.append(converted("alpaca", SHARED_DATA / "complaint/fake_sft.json", tmp / "complaint-ref.jsonl",
                                   recipe_prompt))
    else:
        files = [converted("raner", raner_source(tmp / "ner.jsonl"), tmp / "ner-rows.jsonl", recipe_prompt,
                           types=("PER", "LOC", "ORG"))]
    extra = variants(files[0], tmp / "variants.jsonl", own_system=prompt is not None)
    return [extra] if prompt is None else [*files, extra]


# ------------------------------------------------------------ the two sides

class TrainSide:
    """ms-swift as `swift sft` runs the rendered command: its arguments, loader and template."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        from swift.arguments import SftArguments
        from swift.utils.utils import _patch_get_type_hints
        from transformers import HfArgumentParser

        with _patch_get_type_hints():
            parser = HfArgumentParser([SftArguments])
        namespace, unknown = parser.parse_known_args(argv[2:])
        assert unknown == [], f"ms-swift rejects: {unknown}"
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self.args = SftArguments(**vars(namespace))
            self.template = self.args.get_template()
            self.template.set_mode("train")
            train, val = self.args.load_dataset()
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        self.rows = [*train, *(val or [])]

    def encode(self, row: dict) -> tuple[list[int], list[int]]:
        """(prompt ids, labelled ids): the ids before the first label, and every labelled id."""
        encoded = self.template.encode(row)
        ids, labels = list(encoded["input_ids"]), list(encoded["labels"])
        first = next(i for i, label in enumerate(labels) if label != -100)
        return ids[:first], [t for t, label in zip(ids, labels) if label != -100]


class ServeSide:
    """vLLM as `vllm serve` runs the rendered command, up to the prompt ids and the answer grammar."""

    def __init__(self, argv: list[str]):
        os.environ.setdefault("VLLM_PLUGINS", "")
        from vllm.config import VllmConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, resolve_default_chat_template_kwargs
        from vllm.renderers import renderer_from_config
        from vllm.renderers.chat_utils import load_chat_template
        from vllm.renderers.online_renderer import OnlineRenderer
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend

        assert argv[:2] == ["vllm", "serve"]
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[2:])
        args.model = args.model_tag
        engine_args = AsyncEngineArgs.from_cli_args(args)
        model_config = engine_args.create_model_config()
        self.config = VllmConfig(model_config=model_config,
                                 structured_outputs_config=engine_args.create_structured_outputs_config())
        renderer = renderer_from_config(self.config)
        self.tokenizer = renderer.tokenizer
        self.online = OnlineRenderer(
            model_config=model_config, renderer=renderer, request_logger=None,
            chat_template=load_chat_template(args.chat_template),
            chat_template_content_format=args.chat_template_content_format,
            trust_request_chat_template=args.trust_request_chat_template,
            enable_auto_tools=args.enable_auto_tool_choice, tool_parser=args.tool_call_parser,
            reasoning_parser=args.reasoning_parser, default_chat_template_kwargs=resolve_default_chat_template_kwargs(args))
        self.grammars = XgrammarBackend(self.config, tokenizer=self.tokenizer, vocab_size=model_config.get_vocab_size())
        self._compiled: dict[str, Any] = {}
        self.loop = asyncio.new_event_loop()

    def prompt(self, body: dict) -> list[int]:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        result = self.loop.run_until_complete(self.online.render_chat(ChatCompletionRequest(**body)))
        assert not hasattr(result, "error"), result
        _, engine_inputs = result
        return list(engine_inputs[0]["prompt_token_ids"])

    def grammar_accepts(self, body: dict, answer_ids: list[int], end_ids: list[int]) -> bool:
        """vLLM's answer grammar for this request takes every answer token, then ends at the stop token."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.v1.structured_output.backend_types import StructuredOutputOptions

        spec = ChatCompletionRequest(**body).extract_structured_outputs()
        if spec is None:
            return True
        schema = spec.json if isinstance(spec.json, str) else json.dumps(spec.json)
        if schema not in self._compiled:
            self._compiled[schema] = self.grammars.compile_grammar(StructuredOutputOptions.JSON, schema)
        grammar = self._compiled[schema]
        grammar.reset()
        return grammar.accept_tokens("r", answer_ids) and grammar.accept_tokens("r", end_ids) and grammar.is_terminated()

    def close(self) -> None:
        self.loop.close()


# ------------------------------------------------------------ the test

# Rows checked per case besides the system-prompt variants (all of those are): ms-swift's own
# (seeded) shuffle picks them. SWIFTPIPE_PARITY_ROWS=0 checks every row (~4 ms a row).
ROWS = int(os.environ.get("SWIFTPIPE_PARITY_ROWS", "400"))


def checked_rows(rows: list[dict]) -> list[dict]:
    variant = [str(r.get("dataset", "")).endswith("variants.jsonl") for r in rows]
    others = [r for r, v in zip(rows, variant) if not v]
    return [r for r, v in zip(rows, variant) if v] + (others[:ROWS] if ROWS else others)


@pytest.fixture(scope="module")
def sides(qwen_tokenizers, tiny_model_dir, tmp_path_factory):
    """For a case: its recipe, task, the two sides and the evaluator's rows by content."""
    servers: dict[tuple, ServeSide] = {}

    def make(name: str):
        case = CASES[name]
        tmp = tmp_path_factory.mktemp(name)
        model = tiny_model_dir if case.model == "tiny" else qwen_tokenizers[case.model]
        base = load_recipe(REPO / "recipes" / f"{case.recipe}.yaml", [f"model.id={model}", *case.overrides]).recipe
        files = training_files(case, base.data.system_prompt, tmp)
        loaded = load_recipe(REPO / "recipes" / f"{case.recipe}.yaml",
                             [f"model.id={model}", "hardware.device=cpu", *case.overrides,
                              "data.train=[" + ",".join(str(f) for f in files) + "]", "data.val=null"])
        recipe = loaded.recipe
        sft = render.render_sft(recipe, tmp / "run", base=REPO, version=render.swift_version(), gpu_count=0)
        serve = serve_target(recipe, str(model), served_name=SERVED, cpu=True)
        from swiftpipe.core.vllm_server import render_serve

        argv = render_serve(serve, recipe.serve, 8000).argv
        key = (str(model), tuple(argv))
        if key not in servers:
            servers[key] = ServeSide(argv)
        gold, rows = {}, 0  # what the evaluator reads for each row, by the row's messages
        for f in files:
            examples = read_test_rows(f, recipe.data.system_prompt)
            rows += len(examples)
            for (_, record), example in zip(jsonl.read(f), examples):
                gold[json.dumps(record["messages"], ensure_ascii=False, sort_keys=True)] = example
        train = TrainSide(sft.argv, sft.env)
        assert len(train.rows) == rows, f"ms-swift's loader returned {len(train.rows)} of {rows} rows"
        return recipe, task_of(recipe, REPO), train, servers[key], gold

    yield make
    for server in servers.values():
        server.close()


@pytest.mark.parametrize("name", list(CASES))
def test_training_and_serving_see_the_same_tokens(sides, name):
    recipe, task, train, serve, gold = sides(name)
    tok = serve.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    newline = tok.encode("\n", add_special_tokens=False)
    problems: list[str] = []
    counts = {"rows": 0, "own system": 0, "recipe system": 0, "no system": 0}
    for row in checked_rows(train.rows):
        example = gold[json.dumps(row["messages"], ensure_ascii=False, sort_keys=True)]
        own = next((m["content"] for m in row["messages"] if m["role"] == "system"), None)
        counts["rows"] += 1
        counts["own system" if own else "recipe system" if example.system else "no system"] += 1
        prompt_ids, labelled = train.encode(row)
        body = task.request_body(SERVED, example.user, system=example.system)
        served = serve.prompt(body)
        answer_ids = tok.encode(example.answer_text, add_special_tokens=False)
        what = f"{Path(str(row.get('dataset', '?'))).name}:{example.line} ({example.user[:24]!r})"
        if prompt_ids != served:
            problems.append(f"{what}: the prompt differs\n  trained: {tok.decode(prompt_ids)!r}\n"
                            f"  served:  {tok.decode(served)!r}")
        elif labelled != answer_ids + [im_end, *newline]:
            problems.append(f"{what}: the trained answer is not the answer JSON + <|im_end|>\\n\n"
                            f"  trained: {tok.decode(labelled)!r}\n  answer:  {example.answer_text!r}")
        else:
            text = tok.decode(answer_ids)
            prediction, think = parse_answer(text)
            correct, _ = scoring.score(example.answer, prediction)
            if not correct or think or not task.check(example.user, text).valid:
                problems.append(f"{what}: the evaluator does not score the trained answer {text!r} as exact")
            elif not serve.grammar_accepts(body, answer_ids, [im_end]):
                problems.append(f"{what}: vLLM's answer grammar refuses the trained answer {text!r}")
        if len(problems) >= 3:
            break
    assert problems == [], f"{recipe.name}: training and serving differ:\n" + "\n".join(problems)
    expected = {"address-no-system-anywhere": "no system", "cluener-no-system-anywhere": "no system"}.get(name)
    if expected:
        assert counts["no system"] == counts["rows"]
    else:
        assert counts["own system"] and counts["recipe system"], counts


def test_recipes_name_models_that_ms_swift_maps_to_the_templates_checked():
    """The hub ids of the shipped recipes get the model type and template the parity test ran."""
    from swift.model.model_meta import get_matched_model_meta

    from swiftpipe.train.tiny_model import TRUE_SIZES

    by_hub = {spec.hub_id: spec for spec in TRUE_SIZES.values()}
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe = load_recipe(path).recipe
        if recipe.model.tiny:
            assert (recipe.model.model_type, recipe.model.template) == ("qwen3", "qwen3")
            continue
        spec = by_hub[recipe.model.id]
        meta = get_matched_model_meta(recipe.model.id)
        assert (meta.model_type, meta.template) == (spec.model_type, spec.template), path.name
        assert {c.recipe for c in CASES.values()} >= {path.stem}
