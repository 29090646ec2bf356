#!/usr/bin/env bash
# Bootstrap a machine (a fresh cloud GPU instance, or a CPU-only box) and run a recipe end to end.
#   bash sft.sh                      # GPU: recipes/address-qwen3-0.6b.yaml; no GPU: recipes/demo-cpu.yaml
#   bash sft.sh RECIPE [KEY=VALUE ...] [--run-id ID] [--download] [--offline]
#   bash sft.sh --dry-run            # print the plan, change nothing
# --download fetches the recipe's model first (ModelScope or Hugging Face, as model.hub says).
# Idempotent: a second run reuses the venv and resumes the run given by --run-id.
# Needs Python 3.11-3.13 (vLLM): PYTHON=/path/to/python3.11 bash sft.sh picks the interpreter for .venv.
set -euo pipefail
cd "$(dirname "$0")"

dry_run=0; download=0; args=()
for a in "$@"; do
  case "$a" in
    --dry-run) dry_run=1 ;;
    --download) download=1 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$a") ;;
  esac
done

if command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null) && [ -n "$gpus" ]; then
  mode=--gpu; default_recipe=recipes/address-qwen3-0.6b.yaml
  echo "sft.sh: GPU(s) found:"; echo "$gpus" | sed 's/^/  /'
elif command -v nvidia-smi >/dev/null 2>&1; then
  echo "sft.sh: nvidia-smi is installed but cannot talk to the driver:" >&2
  nvidia-smi 2>&1 | head -3 | sed 's/^/  /' >&2
  echo "  fix the NVIDIA driver (reboot after a driver update, or reinstall it), or run on a CPU machine" >&2
  exit 1
else
  mode=--cpu; default_recipe=recipes/demo-cpu.yaml
  echo "sft.sh: no GPU found (nvidia-smi missing or failing): CPU mode"
fi
if [ ${#args[@]} -eq 0 ] || [[ "${args[0]}" != *.yaml && "${args[0]}" != *.yml ]]; then
  args=("$default_recipe" ${args[@]+"${args[@]}"})
fi

if [ "$dry_run" = 1 ]; then
  echo "plan:"
  echo "  1. bash scripts/install.sh $mode   (.venv; skipped when up to date)"
  [ "$mode" = --gpu ] && echo "  1b. bash scripts/check_gpu.sh   (torch sees the GPU; driver new enough for torch's CUDA build)"
  [ "$download" = 1 ] && echo "  2a. .venv/bin/swiftpipe download ${args[0]}   (the recipe's model; skipped when local or cached)"
  echo "  2. .venv/bin/swiftpipe run ${args[*]}"
  if [ -x .venv/bin/swiftpipe ]; then
    echo "commands of step 2:"
    .venv/bin/swiftpipe run "${args[@]}" --dry-run
  fi
  exit 0
fi

bash scripts/install.sh "$mode"
# Before any stage: a driver too old for torch's CUDA build fails here with the fix, not mid-run.
[ "$mode" = --gpu ] && bash scripts/check_gpu.sh
[ "$download" = 1 ] && .venv/bin/swiftpipe download "${args[0]}"
.venv/bin/swiftpipe run "${args[@]}"
