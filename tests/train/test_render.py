"""Rendering: exact hyperparameters, checked by the installed ms-swift's own argument parser."""

import shlex
from pathlib import Path

import pytest

from swiftpipe.recipe.load import load_recipe
from swiftpipe.train import render
from tests.helpers import REPO

ADDRESS = REPO / "recipes" / "address-qwen3-0.6b.yaml"
RUN = Path("/tmp/runs/address/r1")


def _swift_parser(args_class_name: str):
    arguments = pytest.importorskip("swift.arguments")
    from swift.utils.utils import _patch_get_type_hints
    from transformers import HfArgumentParser

    with _patch_get_type_hints():
        return HfArgumentParser([getattr(arguments, args_class_name)])


def parse_with_swift(args_class_name: str, argv: list[str]):
    """Parse like `swift sft` does, without running __post_init__ (which loads the model)."""
    namespace, unknown = _swift_parser(args_class_name).parse_known_args(argv)
    assert unknown == [], f"ms-swift rejects: {unknown}"
    return namespace


def test_address_sft_has_exact_hyperparameters():
    recipe = load_recipe(ADDRESS).recipe
    cmd = render.render_sft(recipe, RUN, base=REPO, version=render.swift_version(), gpu_count=1)
    assert cmd.argv[:2] == ["swift", "sft"]
    ns = parse_with_swift("SftArguments", cmd.argv[2:])
    assert ns.model == "Qwen/Qwen3-0.6B"
    assert ns.tuner_type == "lora"
    assert ns.lora_rank == 8 and ns.lora_alpha == 32
    assert ns.target_modules == ["all-linear"]
    assert ns.num_train_epochs == 10
    assert ns.per_device_train_batch_size == 20
    assert ns.learning_rate == pytest.approx(1e-4)
    assert ns.gradient_accumulation_steps == 16
    assert ns.max_length == 2048
    assert ns.warmup_ratio == pytest.approx(0.05)
    assert ns.torch_dtype == "bfloat16"
    assert ns.system == recipe.data.system_prompt and ns.system.startswith("你是一个专业的信息抽取助手")
    assert ns.dataset == [str(REPO / "datasets/address/train.jsonl")]
    assert ns.output_dir == str(RUN / "train") and ns.add_version is False
    assert ns.use_cpu is False  # a GPU is visible
    assert "CUDA_VISIBLE_DEVICES" not in cmd.env and "NPROC_PER_NODE" not in cmd.env


def test_address_export_merges_lora():
    recipe = load_recipe(ADDRESS).recipe
    cmd = render.render_export(recipe, RUN, base=REPO, checkpoint="/x/checkpoint-10", gpu_count=1)
    ns = parse_with_swift("ExportArguments", cmd.argv[2:])
    assert cmd.argv[:2] == ["swift", "export"]
    assert ns.adapters == ["/x/checkpoint-10"]
    assert ns.merge_lora is True and ns.exist_ok is True
    assert ns.output_dir == str(RUN / "merged")


def test_demo_recipe_renders_valid_cpu_commands():
    recipe = load_recipe(REPO / "recipes" / "demo-cpu.yaml").recipe
    cmd = render.render_sft(recipe, RUN, base=REPO, version=render.swift_version(), gpu_count=0)
    ns = parse_with_swift("SftArguments", cmd.argv[2:])
    assert ns.use_cpu is True and ns.check_model is False
    assert ns.model == str(REPO / ".cache/swiftpipe/tiny-qwen3")  # absolute
    assert ns.model_type == "qwen3" and ns.template == "qwen3"
    assert cmd.env["CUDA_VISIBLE_DEVICES"] == "" and cmd.env["HF_HUB_OFFLINE"] == "1"


def test_every_shipped_recipe_renders_valid_swift_arguments():
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe = load_recipe(path).recipe
        for cmd in render.render_all(recipe, RUN, base=REPO, gpu_count=1):
            if cmd.stage == "sft":
                parse_with_swift("SftArguments", cmd.argv[2:])
            elif cmd.stage == "export":
                parse_with_swift("ExportArguments", cmd.argv[2:])


def test_flag_names_follow_swift_version():
    recipe = load_recipe(ADDRESS).recipe
    v3 = render.render_sft(recipe, RUN, base=REPO, version="3.5.0", gpu_count=1).argv
    v4 = render.render_sft(recipe, RUN, base=REPO, version="4.6.0", gpu_count=1).argv
    missing = render.render_sft(recipe, RUN, base=REPO, version=None, gpu_count=1).argv
    assert "--train_type" in v3 and "--tuner_type" not in v3
    assert "--tuner_type" in v4 and "--train_type" not in v4
    assert missing == v4


def test_full_finetune_has_no_lora_flags_and_no_export(write_recipe):
    recipe = load_recipe(ADDRESS, ["train.tuner=full"]).recipe
    argv = render.render_sft(recipe, RUN, base=REPO, gpu_count=1).argv
    assert argv[argv.index("--tuner_type") + 1] == "full"
    assert not any(a.startswith("--lora_") for a in argv)
    assert render.render_export(recipe, RUN, base=REPO) is None


def test_qlora_and_extra_args():
    extra = "train.extra_args={neftune_noise_alpha: 5, use_liger_kernel: true}"
    recipe = load_recipe(ADDRESS, ["train.tuner=qlora", extra]).recipe
    argv = render.render_sft(recipe, RUN, base=REPO, gpu_count=1).argv
    ns = parse_with_swift("SftArguments", argv[2:])
    assert ns.quant_method == "bnb" and ns.quant_bits == 4 and ns.tuner_type == "lora"
    assert ns.neftune_noise_alpha == 5 and ns.use_liger_kernel is True


def test_multi_gpu_and_multi_node_env():
    recipe = load_recipe(ADDRESS, ["hardware.gpus=[0,1,2,3]", "hardware.nnodes=2", "hardware.node_rank=1",
                                   "hardware.master_addr=10.0.0.5"]).recipe
    env = render.render_sft(recipe, RUN, base=REPO, gpu_count=4).env
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert env["NPROC_PER_NODE"] == "4"
    assert env == {**env, "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500"}
    export_env = render.render_export(recipe, RUN, base=REPO, checkpoint="/c", gpu_count=4).env
    assert "NPROC_PER_NODE" not in export_env  # merging is a single process


def test_shell_line_round_trips_through_shlex():
    recipe = load_recipe(ADDRESS).recipe
    cmd = render.render_sft(recipe, RUN, base=REPO, gpu_count=1)
    assert shlex.split(cmd.shell()) == [f"{k}={v}" for k, v in cmd.env.items()] + cmd.argv


def test_commands_script_finds_checkpoint_like_the_runner(tmp_path):
    """The export line of commands.sh reads the checkpoint from logging.jsonl, as the runner does."""
    import subprocess

    recipe = load_recipe(ADDRESS).recipe
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "logging.jsonl").write_text(
        '{"loss": 1.0}\n{"last_model_checkpoint": "/ckpt/checkpoint-7"}\n', encoding="utf-8")
    cmd = render.render_export(recipe, tmp_path, base=REPO)
    script = "\n".join(cmd.prelude) + '\necho "$LAST_CHECKPOINT"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "/ckpt/checkpoint-7"


def test_deepspeed_presets_are_accepted_by_swift():
    for preset in ("zero2", "zero3"):
        recipe = load_recipe(ADDRESS, [f"train.deepspeed={preset}", "hardware.gpus=[0,1]"]).recipe
        argv = render.render_sft(recipe, RUN, base=REPO, gpu_count=2).argv
        assert parse_with_swift("SftArguments", argv[2:]).deepspeed == preset


def test_several_training_files_become_several_dataset_paths(tmp_path):
    """`data.train=[a,b]` (retraining with corrections): one `--dataset` flag with every file, relative
    paths resolved against the working directory, absolute ones kept; ms-swift parses them as a list."""
    corrections = tmp_path / "corrections.jsonl"
    recipe = load_recipe(ADDRESS, [f"data.train=[datasets/address/train.jsonl,{corrections}]"]).recipe
    argv = render.render_sft(recipe, RUN, base=REPO, version=render.swift_version(), gpu_count=1).argv
    ns = parse_with_swift("SftArguments", argv[2:])
    assert ns.dataset == [str(REPO / "datasets/address/train.jsonl"), str(corrections)]
    i = argv.index("--dataset")
    assert argv[i + 1:i + 4] == [*ns.dataset, "--split_dataset_ratio"]  # nothing else between


def test_several_training_files_with_split_ratio_or_val():
    files = "data.train=[datasets/address/train.jsonl,more.jsonl]"
    split = load_recipe(ADDRESS, [files, "data.val=null", "data.split_ratio=0.1"]).recipe
    ns = parse_with_swift("SftArguments", render.render_sft(split, RUN, base=REPO, gpu_count=1).argv[2:])
    assert ns.dataset == [str(REPO / "datasets/address/train.jsonl"), str(REPO / "more.jsonl")]
    assert ns.split_dataset_ratio == pytest.approx(0.1) and ns.val_dataset == []
    val = load_recipe(ADDRESS, [files, "data.val=val.jsonl"]).recipe
    ns = parse_with_swift("SftArguments", render.render_sft(val, RUN, base=REPO, gpu_count=1).argv[2:])
    assert len(ns.dataset) == 2 and ns.val_dataset == [str(REPO / "val.jsonl")]


def test_one_file_renders_the_same_as_a_string_or_a_one_item_list():
    as_string = load_recipe(ADDRESS).recipe
    as_list = load_recipe(ADDRESS, ["data.train=[datasets/address/train.jsonl]"]).recipe
    assert as_string.data.train == "datasets/address/train.jsonl"
    argv = render.render_sft(as_string, RUN, base=REPO, gpu_count=1).argv
    assert argv == render.render_sft(as_list, RUN, base=REPO, gpu_count=1).argv
    i = argv.index("--dataset")
    assert argv[i + 1:i + 3] == [str(REPO / "datasets/address/train.jsonl"), "--split_dataset_ratio"]
