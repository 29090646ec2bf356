#!/usr/bin/env bash
# Serve a merged model (or a run directory's final model) in the background for production use.
#   bash deploy.sh MODEL_DIR|RUN_DIR [--port 8000] [--name NAME] [--public] [--log FILE] [--timeout 600]
#   bash deploy.sh --stop [--name NAME]
# The API key comes from SWIFTPIPE_API_KEY, or is generated and printed once; it reaches vLLM
# through the environment only (not the command line, not the log). Binds 127.0.0.1 unless
# --public (then 0.0.0.0: put it behind HTTPS, see README "Deploying").
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
target=""; port=8000; name=""; host=127.0.0.1; log=""; stop=0; timeout=600
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --log) log="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --public) host=0.0.0.0; shift ;;
    --stop) stop=1; shift ;;
    -h|--help) usage 0 ;;
    -*) echo "deploy.sh: unknown option $1" >&2; usage 2 ;;
    *) target="$1"; shift ;;
  esac
done

state=.deploy; mkdir -p "$state"
if [ "$stop" = 1 ]; then
  name="${name:-swiftpipe}"
  pidfile="$state/$name.pid"
  [ -f "$pidfile" ] || { echo "deploy.sh: no deployment named '$name' ($pidfile missing)" >&2; exit 1; }
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"   # swiftpipe serve stops vLLM's whole process group on SIGTERM
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  fi
  rm -f "$pidfile"; echo "stopped '$name'"; exit 0
fi

[ -n "$target" ] || usage 2
[ -x .venv/bin/swiftpipe ] || { echo "deploy.sh: .venv missing: run 'bash scripts/install.sh' first" >&2; exit 1; }
name="${name:-swiftpipe}"
pidfile="$state/$name.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "deploy.sh: '$name' is already running (pid $(cat "$pidfile")); stop it with: bash deploy.sh --stop --name $name" >&2
  exit 1
fi
log="${log:-$state/$name.log}"
key_generated=0
if [ -z "${SWIFTPIPE_API_KEY:-}" ]; then
  SWIFTPIPE_API_KEY="sk-$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')"
  key_generated=1
fi
export SWIFTPIPE_API_KEY

setsid nohup .venv/bin/swiftpipe serve "$target" --host "$host" --port "$port" --name "$name" --log "$log" \
  > "$state/$name.console.log" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$pidfile"
echo "starting '$name' (pid $pid); waiting up to ${timeout}s for it to be ready ..."
ready=0
for _ in $(seq 1 "$timeout"); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "deploy.sh: the server exited; last lines of $state/$name.console.log:" >&2
    tail -n 30 "$state/$name.console.log" >&2; rm -f "$pidfile"; exit 1
  fi
  if grep -q "^serving " "$state/$name.console.log" 2>/dev/null; then ready=1; break; fi
  sleep 1
done
if [ "$ready" != 1 ]; then
  # Not ready in time: stop what we started (its own process group: swiftpipe and vLLM) and say why.
  echo "deploy.sh: '$name' was not ready within ${timeout}s (--timeout); stopping it. Last lines of $log:" >&2
  tail -n 30 "$log" >&2 2>/dev/null || tail -n 30 "$state/$name.console.log" >&2
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
  exit 1
fi
address="http://$([ "$host" = 0.0.0.0 ] && hostname -I 2>/dev/null | awk '{print $1}' || echo 127.0.0.1):$port/v1"
cat <<INFO
ready: '$name' at $address (bound to $host)
API key: $([ "$key_generated" = 1 ] && echo "$SWIFTPIPE_API_KEY (generated; store it now, it is not saved)" || echo "from SWIFTPIPE_API_KEY")
logs:    tail -f $log
stop:    bash deploy.sh --stop --name $name
try:     curl -s $address/models -H "Authorization: Bearer \$KEY"
INFO
