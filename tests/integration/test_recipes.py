"""Every shipped recipe's own stages run end to end on CPU, with overrides only: the tiny model, a
dozen rows in the task's public format converted by `swiftpipe data convert` (or synthesized),
a few steps. Memorisation is not the point: each recipe's path (full fine-tuning or LoRA with
gradient checkpointing, merge, serve, evaluate, report) is."""

import json
import subprocess

import pytest

from swiftpipe.recipe.load import load_recipe
from tests.helpers import REPO, child_env, swiftpipe_cmd

pytestmark = pytest.mark.integration

NAMES = ["王伟", "李娜", "欧阳丽", "张磊", "陈静", "刘洋"]
PLACES = ["杭州市", "北京市", "成都市", "南京市", "厦门市", "西安市"]
COMPANIES = ["华为公司", "阿里巴巴", "腾讯公司", "小米公司", "京东集团", "百度公司"]


def cluener_rows(path):
    lines = []
    for i in range(12):
        name, place = NAMES[i % 6], PLACES[(i + 1) % 6]
        text = f"{name}昨天去了{place}开会。"
        label = {"name": {name: [[0, len(name) - 1]]},
                 "address": {place: [[len(name) + 4, len(name) + 4 + len(place) - 1]]}}
        lines.append(json.dumps({"text": text, "label": label}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def raner_rows(path):
    lines = []
    for i in range(12):
        name, company = NAMES[i % 6], COMPANIES[(i + 2) % 6]
        text = f"{name}在{company}工作。"
        entities = [{"category": "PER", "start": 0, "end": len(name)},
                    {"category": "ORG", "start": len(name) + 1, "end": len(name) + 1 + len(company)}]
        lines.append(json.dumps({"text": text, "entities": entities}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def alpaca_rows(path):
    rows = []
    for i in range(12):
        name, place = NAMES[i % 6], PLACES[i % 6]
        email = f"user{i}@example.com"
        answer = {"name": name, "address": f"{place}人民路{i + 1}号", "email": email, "question": "快递丢失"}
        text = f"我是{name}，住在{place}人民路{i + 1}号，邮箱{email}，我的快递丢失了。"
        rows.append({"instruction": "", "input": text,
                     "output": "```json\n" + json.dumps(answer, ensure_ascii=False) + "\n```"})
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")


def prepare(recipe_name: str, tmp_path):
    """(converted data file) in the shape the recipe trains on."""
    prompt = load_recipe(REPO / "recipes" / f"{recipe_name}.yaml").recipe.data.system_prompt
    out = tmp_path / "data.jsonl"
    if recipe_name.startswith("address"):
        cmd = ["data", "synth-address", "--n", "12", "--seed", "3", "--out", str(out)]
    else:
        source = tmp_path / "source"
        fmt, write = {"cluener-qwen2.5-0.5b": ("cluener", cluener_rows), "complaint-qwen3-0.6b": ("alpaca", alpaca_rows),
                      "ner-offset-qwen3-0.6b": ("raner", raner_rows)}[recipe_name]
        write(source)
        cmd = ["data", "convert", "--from", fmt, str(source), "--out", str(out), "--system-prompt", prompt]
        if fmt == "raner":
            cmd += ["--types", "PER,LOC,ORG"]
    done = subprocess.run([*swiftpipe_cmd(), *cmd], cwd=REPO, env=child_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(out.read_text(encoding="utf-8").splitlines()) == 12
    return out


@pytest.mark.parametrize("recipe_name", ["cluener-qwen2.5-0.5b", "complaint-qwen3-0.6b", "ner-offset-qwen3-0.6b",
                                         "address-qwen3-0.6b"])
def test_shipped_recipe_runs_end_to_end_on_cpu(recipe_name, tmp_path, tiny_model_dir):
    data = prepare(recipe_name, tmp_path)
    recipe = load_recipe(REPO / "recipes" / f"{recipe_name}.yaml").recipe
    overrides = [
        f"model.id={tiny_model_dir}", "model.model_type=qwen3", "model.template=qwen3", "model.torch_dtype=float32",
        "hardware.device=cpu", f"data.train={data}", f"data.test={data}", "data.val=null", "data.split_ratio=0",
        "train.max_steps=4", "train.batch_size=4", "train.grad_accum=1", "train.max_length=512", "train.save_steps=4",
        "train.report_to=[none]", "train.dataloader_num_workers=0", "eval.compare_base=false",
        "eval.max_tokens=96", "eval.concurrency=4", "serve.startup_timeout=300", f"output.root={tmp_path / 'runs'}",
    ]
    out = subprocess.run([*swiftpipe_cmd(), "run", f"recipes/{recipe_name}.yaml", *overrides, "--run-id", "e2e"],
                         cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "runs" / recipe_name / "e2e"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done"
    sft_command = json.loads((run / "stages" / "sft.done").read_text())["command"]
    assert f"--tuner_type {'full' if recipe.train.tuner == 'full' else 'lora'}" in sft_command
    assert f"--gradient_checkpointing {str(recipe.train.gradient_checkpointing).lower()}" in sft_command
    if recipe.merges:
        assert (run / "merged" / "config.json").exists() and info["final_model"] == str(run / "merged")
    else:
        assert not (run / "merged").exists() and info["final_model"] == info["checkpoint"]
    metrics = json.loads((run / "eval" / "finetuned" / "metrics.json").read_text())
    assert metrics["n"] == 12 and metrics["api_errors"] == 0 and metrics["metric"] == recipe.eval.metric
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "exact match" in report
    if recipe.eval.metric == "ner_f1":
        assert set(metrics["ner"]) == {"per_type", "micro", "macro"}
        assert "| entity type | precision | recall | F1 | gold | predicted |" in report
        assert "| **micro** |" in report and "NER micro F1" in out.stdout
