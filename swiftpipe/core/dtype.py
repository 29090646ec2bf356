"""The dtype vLLM computes in on the CPU: bfloat16 where the CPU has it natively, float32 otherwise.

vLLM's CPU backend loads a float32 model as bfloat16 unless told otherwise. On a CPU without
native bfloat16 (x86 without `avx512_bf16` or AMX, such as AVX2-only AMD EPYC VMs) that
arithmetic is emulated: the demo's tuned model did 27.2 rows/s offline as loaded vs 74.1 rows/s
in float32. This module is the one home of the rule. `vllm_dtype` is used by `vllm serve`
(`render_serve`: `--dtype`) and by the offline engine (`LLM(dtype=...)`). It is pure: the
cpuinfo text is an argument (tests feed both kinds) and is read from /proc/cpuinfo by default.
No heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

DTYPES = ("auto", "bfloat16", "float16", "float32")
CPUINFO = Path("/proc/cpuinfo")
X86_BF16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")  # `flags` in /proc/cpuinfo (x86)
ARM_BF16_FEATURES: tuple[str, ...] = ("bf16",)  # `Features` in /proc/cpuinfo (aarch64)


@dataclass(frozen=True)
class Bf16Support:
    """Whether the CPU computes bfloat16 natively, and what says so."""

    native: bool
    found: tuple[str, ...]  # the bf16 flags present
    looked_for: tuple[str, ...]  # the flags that would have meant native bf16
    source: str  # where the flags were read ("/proc/cpuinfo", or why none could be)
    cpu: Optional[str] = None  # the CPU's model name, when cpuinfo gives one

    def words(self) -> str:
        """Why, in words: "this CPU has no native bfloat16 (no avx512_bf16/amx_bf16 in /proc/cpuinfo)"."""
        if self.native:
            return f"this CPU has native bfloat16 ({', '.join(self.found)} in {self.source})"
        if not self.looked_for:
            return f"cannot tell whether this CPU has native bfloat16 ({self.source})"
        return f"this CPU has no native bfloat16 (no {'/'.join(self.looked_for)} in {self.source})"

    def record(self) -> dict:
        """For env.json, extract's summary.json and bench results."""
        return {"model": self.cpu, "native_bf16": self.native, "bf16_flags": list(self.found),
                "looked_for": list(self.looked_for), "source": self.source}


def read_cpuinfo(path: Path = CPUINFO) -> Optional[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def cpu_bf16(cpuinfo: Optional[str] = None, *, source: str = str(CPUINFO)) -> Bf16Support:
    """Native bfloat16 support from the text of /proc/cpuinfo (read when `cpuinfo` is None): x86
    `flags` with avx512_bf16 or amx_bf16, or aarch64 `Features` with bf16. A CPU whose flags
    cannot be read counts as having none."""
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
        if cpuinfo is None:
            return Bf16Support(False, (), (), f"{source} cannot be read")
    flags: set[str] = set()
    features: set[str] = set()
    model: Optional[str] = None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "flags":
            flags.update(value.split())
        elif key == "features":
            features.update(value.split())
        elif key in ("model name", "cpu model") and model is None:
            model = value.strip() or None
    if flags:
        found, looked_for = [f for f in X86_BF16_FLAGS if f in flags], X86_BF16_FLAGS
    elif features:
        found, looked_for = [f for f in ARM_BF16_FEATURES if f in features], ARM_BF16_FEATURES
    else:
        return Bf16Support(False, (), (), f"{source} lists no CPU flags", model)
    return Bf16Support(bool(found), tuple(found), tuple(looked_for), source, model)


@dataclass(frozen=True)
class DtypeChoice:
    """What vLLM is given, and why."""

    dtype: Optional[str]  # --dtype / LLM(dtype=...); None: nothing given, vLLM's own choice (GPUs)
    reason: str
    cpu: bool
    requested: str = "auto"

    def line(self) -> str:
        """The line printed once when a server or engine starts."""
        where = "CPU" if self.cpu else "GPU"
        return f"vLLM on {where} in {self.dtype or 'its default dtype'}: {self.reason}"

    def record(self) -> dict:
        """For the run directory, extract's summary.json and bench results."""
        return {"dtype": self.dtype or "auto", "requested": self.requested, "device": "cpu" if self.cpu else "gpu",
                "reason": self.reason}


def vllm_dtype(requested: str = "auto", *, cpu: bool, source: str = "serve.dtype",
               cpuinfo: Optional[str] = None) -> DtypeChoice:
    """The dtype to give vLLM. An explicit value (`requested`, named by `source` in the reason)
    wins everywhere. `auto` on a GPU gives nothing (vLLM's own choice, unchanged). `auto` on the
    CPU gives bfloat16 where the CPU computes it natively and float32 otherwise (`cpuinfo`: the
    text of /proc/cpuinfo, read when None)."""
    if requested != "auto":
        return DtypeChoice(requested, f"{source} is {requested}", cpu, requested)
    if not cpu:
        return DtypeChoice(None, f"{source} is auto (on a GPU vLLM chooses from the model's config)", cpu, requested)
    support = cpu_bf16(cpuinfo)
    return DtypeChoice("bfloat16" if support.native else "float32", support.words(), cpu, requested)
