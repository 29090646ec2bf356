#!/usr/bin/env bash
# Make sure a Chromium is installed for the browser tests (tests/pages), and print its path.
# The tests drive it with the PyPI `playwright` package (executable_path=...); they never run
# `playwright install` and download no browser.
#   - $SWIFTPIPE_CHROMIUM, else `chromium` or `chromium-browser` on PATH: nothing is installed.
#   - otherwise Debian's `chromium` package: apt-get update + apt-get install -y chromium, as root,
#     or through sudo when sudo works without a password; anything else fails saying what to run.
# stdout: only the path of the Chromium (so `path=$(bash scripts/install_chromium.sh)` works);
# progress and apt-get's output go to stderr.
set -euo pipefail

if [ -n "${SWIFTPIPE_CHROMIUM:-}" ]; then
  if [ -x "$SWIFTPIPE_CHROMIUM" ] && [ ! -d "$SWIFTPIPE_CHROMIUM" ]; then
    echo "$SWIFTPIPE_CHROMIUM"
    exit 0
  fi
  echo "install_chromium: SWIFTPIPE_CHROMIUM=$SWIFTPIPE_CHROMIUM is not an executable file;" \
       "point it at a Chromium binary or unset it." >&2
  exit 1
fi

find_chromium() {
  local name
  for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  done
  return 1
}

if path=$(find_chromium); then
  echo "$path"
  exit 0
fi

how_to="  fix: install Debian's chromium package as root:
         sudo apt-get update && sudo apt-get install -y chromium
       or point SWIFTPIPE_CHROMIUM at a Chromium binary:
         SWIFTPIPE_CHROMIUM=/path/to/chromium bash scripts/test.sh"

if ! command -v apt-get >/dev/null 2>&1; then
  printf 'install_chromium: no Chromium found (chromium, chromium-browser, $SWIFTPIPE_CHROMIUM) and no apt-get to install one.\n%s\n' \
    "  fix: install Chromium with this system's package manager, or set SWIFTPIPE_CHROMIUM=/path/to/chromium" >&2
  exit 1
fi

if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
  as_root=(sudo -n)
else
  printf 'install_chromium: no Chromium found (chromium, chromium-browser, $SWIFTPIPE_CHROMIUM), and installing it needs root (sudo asks for a password or is missing).\n%s\n' \
    "$how_to" >&2
  exit 1
fi

echo "install_chromium: installing Debian's chromium package (apt-get; ~20 s)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get update >&2 \
   || ! "${as_root[@]}" apt-get install -y chromium >&2; then
  printf 'install_chromium: apt-get could not install chromium (see above).\n%s\n' "$how_to" >&2
  exit 1
fi

# A CJK font, so screenshots of Chinese texts are readable (optional: the tests read text, not pixels).
"${as_root[@]}" apt-get install -y fonts-wqy-microhei >&2 \
  || echo "install_chromium: no CJK font installed (fonts-wqy-microhei); screenshots show boxes for Chinese" >&2

if ! path=$(find_chromium); then
  printf 'install_chromium: apt-get installed chromium, but no chromium is on PATH.\n%s\n' "$how_to" >&2
  exit 1
fi
echo "install_chromium: $("$path" --version 2>/dev/null | tail -n 1 || true) at $path" >&2
echo "$path"
