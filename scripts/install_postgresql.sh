#!/usr/bin/env bash
# Make sure PostgreSQL's server binaries (initdb, pg_ctl) are installed, for the gateway's shared
# store and for the tests, which start a throwaway server of their own (tests/postgres.py); print
# the directory that holds them.
#   - found in /usr/lib/postgresql/<major>/bin (Debian) or on PATH: nothing is installed;
#   - otherwise Debian's `postgresql` package: apt-get install -y postgresql (after apt-get update),
#     as root or through password-less sudo; its own cluster is not started (the tests run theirs).
# The server refuses to run as root; the tests run it as the `postgres` user the package creates.
# stdout: only the directory; progress goes to stderr. Exit 1 saying what to run when it cannot.
set -euo pipefail

find_bindir() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return 0; fi
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

if dir=$(find_bindir); then
  echo "$dir"
  exit 0
fi

fix="  fix: sudo apt-get update && sudo apt-get install -y postgresql
       (or install PostgreSQL's server with this system's package manager, so initdb and pg_ctl are on PATH)"
if ! command -v apt-get >/dev/null 2>&1; then
  printf 'install_postgresql: no PostgreSQL server binaries (initdb, pg_ctl) and no apt-get to install them.\n%s\n' "$fix" >&2
  exit 1
fi
as_root=()  # root, or sudo that asks no password
if [ "$(id -u)" != 0 ]; then
  if ! sudo -n true >/dev/null 2>&1; then
    printf 'install_postgresql: PostgreSQL is not installed, and installing it needs root.\n%s\n' "$fix" >&2
    exit 1
  fi
  as_root=(sudo -n)
fi
echo "install_postgresql: installing Debian's postgresql package (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
# RUNLEVEL=1: the package does not start a cluster of its own (the tests start theirs)
if ! "${as_root[@]}" apt-get update >&2 \
   || ! "${as_root[@]}" env RUNLEVEL=1 apt-get install -y --no-install-recommends postgresql >&2; then
  printf 'install_postgresql: apt-get could not install postgresql (see above).\n%s\n' "$fix" >&2
  exit 1
fi
if ! dir=$(find_bindir); then
  printf 'install_postgresql: apt-get installed postgresql, but no initdb/pg_ctl were found.\n%s\n' "$fix" >&2
  exit 1
fi
echo "install_postgresql: $("$dir/initdb" --version) in $dir" >&2
echo "$dir"
