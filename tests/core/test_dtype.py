"""The dtype vLLM is given on the CPU: bfloat16 where the CPU has it natively, float32 otherwise,
decided from /proc/cpuinfo's text (fed here in both kinds); explicit values win both ways; GPUs
get nothing (vLLM's own choice, as before)."""

import pytest

from swiftpipe.core import envinfo
from swiftpipe.core.dtype import cpu_bf16, read_cpuinfo, vllm_dtype
from tests.helpers import CPUINFO_BF16, CPUINFO_NO_BF16, REPO, cpuinfo


def test_cpu_without_native_bf16_runs_in_float32():
    choice = vllm_dtype(cpu=True, cpuinfo=CPUINFO_NO_BF16)
    assert choice.dtype == "float32"
    assert choice.line() == ("vLLM on CPU in float32: this CPU has no native bfloat16 "
                             "(no avx512_bf16/amx_bf16 in /proc/cpuinfo)")
    assert choice.record() == {"dtype": "float32", "requested": "auto", "device": "cpu", "reason": choice.reason}
    support = cpu_bf16(CPUINFO_NO_BF16)
    assert not support.native and support.cpu == "AMD EPYC 7B13" and support.found == ()


@pytest.mark.parametrize("flags, found", [("avx2 avx512f avx512_bf16", ["avx512_bf16"]),
                                          ("avx2 amx_tile amx_bf16", ["amx_bf16"]),
                                          ("avx512_bf16 amx_bf16", ["avx512_bf16", "amx_bf16"])])
def test_cpu_with_avx512_bf16_or_amx_runs_in_bfloat16(flags, found):
    choice = vllm_dtype(cpu=True, cpuinfo=cpuinfo("x", flags))
    assert choice.dtype == "bfloat16"
    assert choice.reason == f"this CPU has native bfloat16 ({', '.join(found)} in /proc/cpuinfo)"
    assert cpu_bf16(cpuinfo("x", flags)).record()["bf16_flags"] == found


def test_avx512_without_bf16_is_not_native():
    """AVX-512 alone converts bfloat16 but does not compute in it: float32."""
    assert vllm_dtype(cpu=True, cpuinfo=cpuinfo("x", "avx2 avx512f avx512bw avx512_vnni")).dtype == "float32"


def test_aarch64_reads_the_features_line():
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd aes sha2 crc32 atomics {}\nCPU part\t: 0xd4f\n"
    assert vllm_dtype(cpu=True, cpuinfo=arm.format("bf16 i8mm")).dtype == "bfloat16"
    no = vllm_dtype(cpu=True, cpuinfo=arm.format("i8mm"))
    assert no.dtype == "float32" and "(no bf16 in /proc/cpuinfo)" in no.reason


def test_unreadable_or_flagless_cpuinfo_is_float32(tmp_path):
    """Nothing says bfloat16 is native: float32, which every CPU computes natively, and says why."""
    flagless = vllm_dtype(cpu=True, cpuinfo="processor\t: 0\nmodel name\t: x\n")
    assert flagless.dtype == "float32" and "cannot tell" in flagless.reason and "lists no CPU flags" in flagless.reason
    assert read_cpuinfo(tmp_path / "missing") is None


def test_explicit_dtype_wins_both_ways():
    assert vllm_dtype("bfloat16", cpu=True, cpuinfo=CPUINFO_NO_BF16).dtype == "bfloat16"
    forced = vllm_dtype("float32", cpu=True, source="--dtype", cpuinfo=CPUINFO_BF16)
    assert forced.dtype == "float32" and forced.line() == "vLLM on CPU in float32: --dtype is float32"
    assert forced.record()["requested"] == "float32"
    assert vllm_dtype("float16", cpu=False).dtype == "float16"  # an explicit value applies on a GPU too


def test_gpu_auto_gives_vllm_nothing():
    """GPU behaviour is unchanged: no dtype, whatever the CPU."""
    for text in (CPUINFO_NO_BF16, CPUINFO_BF16):
        choice = vllm_dtype(cpu=False, cpuinfo=text)
        assert choice.dtype is None and choice.record()["dtype"] == "auto"
        assert choice.line().startswith("vLLM on GPU in its default dtype: serve.dtype is auto")


def test_this_machine_is_read_from_proc_cpuinfo_and_recorded_in_env_json():
    text = read_cpuinfo()
    if text is None:
        pytest.skip("no /proc/cpuinfo here")
    native = any(f in line.split() for line in text.splitlines() if line.startswith("flags")
                 for f in ("avx512_bf16", "amx_bf16"))
    assert cpu_bf16().native == native
    assert vllm_dtype(cpu=True).dtype == ("bfloat16" if native else "float32")
    recorded = envinfo.environment(REPO)["cpu"]
    assert recorded["native_bf16"] == native and recorded["source"] == "/proc/cpuinfo"
