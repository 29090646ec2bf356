"""The recipe documentation has one source: the schema's field descriptions."""

import subprocess
import sys

import pytest

from swiftpipe.recipe import explain
from swiftpipe.recipe.load import load_recipe
from swiftpipe.task.reference import ADDRESS_SYSTEM_PROMPT
from tests.helpers import REPO, run_cli

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_shipped_recipe_comments_agree_with_the_schema():
    out = subprocess.run([sys.executable, "scripts/sync_recipe_docs.py", "--check", *map(str, RECIPES)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_check_catches_a_wrong_default(tmp_path):
    text = (REPO / "recipes" / "demo-cpu.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "r.yaml"
    bad.write_text(text.replace("# LoRA rank r (int, 8)", "# LoRA rank r (int, 16)"), encoding="utf-8")
    out = subprocess.run([sys.executable, "scripts/sync_recipe_docs.py", "--check", str(bad)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "lora.rank: comment above should be '# LoRA rank r (int, 8)'" in out.stdout


def test_validate_explain_lists_every_key_with_type_default_and_description():
    out = run_cli("validate", "recipes/address-qwen3-0.6b.yaml", "--explain")
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.strip().startswith("lora.rank "))
    assert line.split()[:4] == ["lora.rank", "int", "default", "8"] and "LoRA rank r" in line
    assert all(f"  {k.key} " in out.stdout for k in explain.keys())


@pytest.mark.parametrize("name", ["address-qwen3-0.6b", "demo-cpu"])
def test_address_recipes_carry_the_one_address_prompt(name):
    assert load_recipe(REPO / "recipes" / f"{name}.yaml").recipe.data.system_prompt == ADDRESS_SYSTEM_PROMPT
