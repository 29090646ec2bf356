from pathlib import Path

import pytest
from pydantic import BaseModel

from swiftpipe.core.errors import RecipeError
from swiftpipe.recipe.load import _key_lines, apply_overrides, load_recipe, parse_override, resolved_yaml, validate
from tests.helpers import REPO

MINIMAL = """\
model:
  id: Qwen/Qwen3-0.6B
data:
  train: train.jsonl
"""


def test_minimal_recipe_gets_defaults(write_recipe):
    loaded = load_recipe(write_recipe(MINIMAL, "mini.yaml"))
    assert loaded.name == "mini"
    assert loaded.recipe.train.tuner == "lora"
    assert loaded.recipe.lora.target_modules == ["all-linear"]
    assert loaded.recipe.output.root == "runs"


def test_misspelt_key_and_wrong_type_reported_together(write_recipe):
    path = write_recipe(MINIMAL + "train:\n  lr: fast\nlora:\n  rnak: 8\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert info.value.exit_code == 2
    assert "2 problem(s)" in msg
    assert "lora.rnak: unknown key" in msg and "did you mean 'rank'?" in msg
    assert f"{path}:8" in msg  # the line of `rnak`
    assert "train.lr:" in msg and "'fast'" in msg and f"{path}:6" in msg


def test_unknown_section_suggests_close_name(write_recipe):
    with pytest.raises(RecipeError, match="trian: unknown key .* did you mean 'train'"):
        load_recipe(write_recipe(MINIMAL + "trian:\n  lr: 1e-4\n"))


def test_missing_required_key_named(write_recipe):
    with pytest.raises(RecipeError, match=r"data\.train: required key is missing"):
        load_recipe(write_recipe("model:\n  id: x/y\ndata: {}\n"))


def test_yaml_syntax_error_names_line(write_recipe):
    path = write_recipe("model:\n  id: [unclosed\ndata:\n  train: a\n")
    with pytest.raises(RecipeError, match=rf"{path}:\d+: not valid YAML"):
        load_recipe(path)


def test_missing_file():
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe("no/such/recipe.yaml")


def test_overrides_are_typed_and_win(write_recipe):
    loaded = load_recipe(
        write_recipe(MINIMAL + "train:\n  lr: 1e-4\n"),
        ["train.lr=2e-4", "lora.rank=16", "lora.target_modules=[q_proj,v_proj]", "hardware.gpus=[0,1]",
         "train.gradient_checkpointing=false"],
    )
    r = loaded.recipe
    assert r.train.lr == pytest.approx(2e-4)
    assert r.lora.rank == 16 and isinstance(r.lora.rank, int)
    assert r.lora.target_modules == ["q_proj", "v_proj"]
    assert r.hardware.gpus == [0, 1]
    assert r.train.gradient_checkpointing is False


def test_bad_override_reported_as_command_line(write_recipe):
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(MINIMAL), ["lora.rnak=8", "train.epochs=lots"])
    msg = str(info.value)
    assert "lora.rnak: unknown key (command line); did you mean 'rank'?" in msg
    assert "train.epochs:" in msg and "(command line)" in msg


@pytest.mark.parametrize("item", ["novalue", "=3", "train..lr=1", ".x=1"])
def test_malformed_override(item):
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        parse_override(item)


def test_apply_overrides_creates_sections_and_keeps_input():
    data = {"train": {"lr": 1}}
    out = apply_overrides(data, ["export.merge_lora=false", "train.lr=3"])
    assert out == {"train": {"lr": 3}, "export": {"merge_lora": False}}
    assert data == {"train": {"lr": 1}}


def test_value_constraints():
    base = {"model": {"id": "a/b"}, "data": {"train": "t"}}
    with pytest.raises(RecipeError) as info:
        validate({**base, "lora": {"rank": 0}, "hardware": {"nnodes": 2, "node_rank": 2},
                  "data": {"train": "t", "output_schema": {"x": "str"}}})
    msg = str(info.value)
    assert "lora.rank" in msg and "node_rank 2 must be < nnodes 2" in msg
    assert "type 'str' is not one of" in msg


def test_output_schema_to_json_schema():
    r = validate({"model": {"id": "a/b"}, "data": {"train": "t", "output_schema": {
        "name": "string", "phone": {"type": "string", "maxLength": 16}}}})
    assert r.data.json_schema() == {
        "type": "object",
        "properties": {"name": {"type": "string"}, "phone": {"type": "string", "maxLength": 16}},
        "required": ["name", "phone"],
        "additionalProperties": False,
    }


def test_resolved_yaml_round_trips(write_recipe):
    loaded = load_recipe(write_recipe(MINIMAL), ["train.lr=3e-4"])
    import yaml

    again = validate(yaml.safe_load(resolved_yaml(loaded.recipe)))
    assert again == loaded.recipe


SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipe_is_valid_and_documented(path: Path):
    loaded = load_recipe(path)
    text = path.read_text(encoding="utf-8")
    header = text.split("\n\n", 1)[0]
    for needed in ("Prerequisites", "Launch:", "Override:"):
        assert needed in header, f"{path.name}: header lacks '{needed}'"
    # every schema key (section.key, or a top-level scalar) has a `# doc (type, default)` line above;
    # the entries inside dict values (output_schema, extra_args) are data, not keys
    import yaml

    lines = text.splitlines()
    for key_path, line_no in _key_lines(yaml.compose(text)).items():
        is_section = len(key_path) == 1 and isinstance(getattr(loaded.recipe, key_path[0]), BaseModel)
        if len(key_path) > 2 or is_section:
            continue
        above = lines[line_no - 2].strip()
        assert above.startswith("#") and above.endswith(")") and "(" in above, \
            f"{path.name}:{line_no}: key {'.'.join(key_path)} lacks a '# doc (type, default)' comment"
    assert loaded.recipe.data.system_prompt


def test_recipes_exist():
    names = {p.name for p in SHIPPED}
    assert {"address-qwen3-0.6b.yaml", "demo-cpu.yaml"} <= names


def test_train_takes_one_file_or_a_list(write_recipe):
    one = load_recipe(write_recipe(MINIMAL)).recipe.data
    assert one.train == "train.jsonl" and one.train_files() == ["train.jsonl"]
    listed = load_recipe(write_recipe(MINIMAL.replace("train: train.jsonl", "train: [a.jsonl, b.jsonl]"))).recipe.data
    assert listed.train_files() == ["a.jsonl", "b.jsonl"]
    # the retraining override: `data.train=[...]` is read as a YAML list
    override = load_recipe(write_recipe(MINIMAL), ["data.train=[train.jsonl,corrections.jsonl]"]).recipe.data
    assert override.train == ["train.jsonl", "corrections.jsonl"]
    assert override.train_files() == ["train.jsonl", "corrections.jsonl"]


def test_resolved_yaml_keeps_a_single_train_file_a_string(write_recipe):
    """Runs made before lists were allowed resume: their resolved.yaml is unchanged."""
    import yaml

    single = yaml.safe_load(resolved_yaml(load_recipe(write_recipe(MINIMAL)).recipe))
    assert single["data"]["train"] == "train.jsonl"
    listed = load_recipe(write_recipe(MINIMAL), ["data.train=[a.jsonl,b.jsonl]"]).recipe
    assert yaml.safe_load(resolved_yaml(listed))["data"]["train"] == ["a.jsonl", "b.jsonl"]
    assert validate(yaml.safe_load(resolved_yaml(listed))) == listed


@pytest.mark.parametrize("value, message", [
    ("[]", "the list is empty: give at least one training file"),
    ("[a.jsonl, 3]", "entry 2 of 2 (3) is not a file path"),
    ("[a.jsonl, '']", "entry 2 of 2 ('') is not a file path"),
    ("''", "expected a JSONL file path or a list of paths (got '')"),
    ("5", "expected a JSONL file path or a list of paths (got 5)"),
    ("null", "expected a JSONL file path or a list of paths (got None)"),
    ("{a: 1}", "expected a JSONL file path or a list of paths, not a mapping"),
])
def test_bad_train_value_is_named_once_with_its_key(write_recipe, value, message):
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(MINIMAL), [f"data.train={value}"])
    msg = str(info.value)
    assert "1 problem(s)" in msg and f"data.train: Value error, {message} (command line)" in msg


def test_explain_names_both_forms_of_train():
    from swiftpipe.recipe import explain

    doc = explain.find("data.train")
    assert doc is not None and doc.type == "str|list" and doc.default == "required"
    assert "a list of files" in doc.description
    assert doc.comment().endswith("(str|list, required)")
    line = next(x for x in explain.explain().splitlines() if x.strip().startswith("data.train "))
    assert line.split()[:4] == ["data.train", "str|list", "default", "required"]


def test_recipe_extract_section_is_strict():
    with pytest.raises(RecipeError) as err:
        load_recipe(REPO / "recipes" / "demo-cpu.yaml", ["extract.chunk_row=5", "extract.engine=spark",
                                                         "extract.replicas=0"])
    message = str(err.value)
    assert "chunk_rows" in message and "spark" in message and "replicas" in message


def test_serve_dtype_and_extract_dtype_are_checked():
    from swiftpipe.recipe import explain

    recipe = load_recipe(REPO / "recipes" / "demo-cpu.yaml").recipe
    assert recipe.serve.dtype == "auto" and recipe.extract.dtype is None
    with pytest.raises(RecipeError, match="serve.dtype: Input should be 'auto', 'bfloat16'.*got 'float64'"):
        load_recipe(REPO / "recipes" / "demo-cpu.yaml", ["serve.dtype=float64"])
    with pytest.raises(RecipeError, match="extract.dtype"):
        load_recipe(REPO / "recipes" / "demo-cpu.yaml", ["extract.dtype=half"])
    # extra_args.dtype (the raw `vllm serve --dtype`) still works alone and with an agreeing serve.dtype;
    # two different values are refused rather than one silently winning.
    load_recipe(REPO / "recipes" / "demo-cpu.yaml", ["serve.extra_args={dtype: float32}"])
    load_recipe(REPO / "recipes" / "demo-cpu.yaml", ["serve.extra_args={dtype: float32}", "serve.dtype=float32"])
    with pytest.raises(RecipeError, match="dtype 'bfloat16' and extra_args.dtype 'float32' disagree"):
        load_recipe(REPO / "recipes" / "demo-cpu.yaml", ["serve.extra_args={dtype: float32}", "serve.dtype=bfloat16"])
    doc = explain.find("serve.dtype")
    assert doc is not None and doc.default == "auto" and doc.description.endswith("auto | bfloat16 | float16 | float32")
    extract_doc = explain.find("extract.dtype")
    assert extract_doc is not None and extract_doc.default == "null" and "serve.dtype" in extract_doc.description
