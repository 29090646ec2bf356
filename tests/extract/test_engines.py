"""The offline engine's vLLM arguments, built without loading vLLM: its dtype follows the CPU (float32
without native bfloat16, bfloat16 with it), the recipe and --dtype override it, GPUs are unchanged."""

import pytest

from swiftpipe.extract.commands import _offline_settings
from swiftpipe.extract.engines import OfflineSettings, llm_kwargs, offline_dtype
from swiftpipe.recipe.load import load_recipe
from swiftpipe.recipe.schema import ExtractSection
from tests.helpers import CPUINFO_BF16, CPUINFO_NO_BF16, DEMO_RECIPE, REPO

CPU = OfflineSettings(model_dir="/m", cpu=True, max_model_len=768, batch_size=64)


def test_offline_engine_on_a_cpu_without_native_bf16_runs_in_float32():
    choice = offline_dtype(CPU, cpuinfo=CPUINFO_NO_BF16)
    kwargs = llm_kwargs(CPU, choice)
    assert kwargs["dtype"] == "float32" and choice.line().startswith("vLLM on CPU in float32: this CPU has no native")
    assert kwargs["enforce_eager"] is True and kwargs["max_num_seqs"] == 64 and kwargs["max_model_len"] == 768
    assert kwargs["structured_outputs_config"] == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert "gpu_memory_utilization" not in kwargs
    assert kwargs["enable_prefix_caching"] is True and kwargs["block_size"] == 32  # the shared prompt fits a block
    assert llm_kwargs(CPU, offline_dtype(CPU, cpuinfo=CPUINFO_BF16))["dtype"] == "bfloat16"


def test_offline_engine_override_works_both_ways():
    up = OfflineSettings(model_dir="/m", cpu=True, max_model_len=None, dtype="bfloat16", dtype_from="--dtype")
    assert llm_kwargs(up, offline_dtype(up, cpuinfo=CPUINFO_NO_BF16))["dtype"] == "bfloat16"
    down = OfflineSettings(model_dir="/m", cpu=True, max_model_len=None, dtype="float32", dtype_from="extract.dtype")
    choice = offline_dtype(down, cpuinfo=CPUINFO_BF16)
    assert llm_kwargs(down, choice)["dtype"] == "float32" and choice.reason == "extract.dtype is float32"


def test_offline_engine_on_a_gpu_is_unchanged():
    gpu = OfflineSettings(model_dir="/m", cpu=False, max_model_len=None, tensor_parallel_size=2)
    kwargs = llm_kwargs(gpu, offline_dtype(gpu, cpuinfo=CPUINFO_NO_BF16))
    assert "dtype" not in kwargs and "enforce_eager" not in kwargs and "block_size" not in kwargs
    assert kwargs["enable_prefix_caching"] is True
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["gpu_memory_utilization"] == 0.9


@pytest.mark.parametrize("overrides, cli, dtype, source", [
    ([], None, "auto", "serve.dtype"),
    (["serve.dtype=float32"], None, "float32", "serve.dtype"),
    (["serve.extra_args={dtype: float16}"], None, "float16", "serve.extra_args.dtype"),
    (["serve.dtype=float32", "extract.dtype=bfloat16"], None, "bfloat16", "extract.dtype"),
    (["extract.dtype=bfloat16"], "float32", "float32", "--dtype"),
])
def test_extract_dtype_precedence(overrides, cli, dtype, source):
    """--dtype, else extract.dtype, else the recipe's server's (serve.extra_args.dtype, else serve.dtype)."""
    recipe = load_recipe(DEMO_RECIPE, overrides).recipe
    given = ExtractSection.model_validate({**recipe.extract.model_dump(), **({"dtype": cli} if cli else {})})
    settings = _offline_settings("/m", recipe, given, "--dtype" if cli else "extract.dtype", gpu_count=0)
    assert (settings.dtype, settings.dtype_from) == (dtype, source)
    assert settings.cpu


def test_extract_without_a_recipe_uses_the_rule():
    settings = _offline_settings("/m", None, ExtractSection(), gpu_count=0)
    assert settings.dtype == "auto" and offline_dtype(settings, cpuinfo=CPUINFO_NO_BF16).dtype == "float32"


def test_address_recipe_on_a_gpu_gives_vllm_no_dtype():
    recipe = load_recipe(REPO / "recipes" / "address-qwen3-0.6b.yaml").recipe
    settings = _offline_settings("/m", recipe, recipe.extract, gpu_count=1)
    assert not settings.cpu and "dtype" not in llm_kwargs(settings, offline_dtype(settings, cpuinfo=CPUINFO_NO_BF16))
