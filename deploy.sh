#!/usr/bin/env bash
# Serve a run (or a merged model) behind the swiftpipe gateway, in the background, for production use.
#   bash deploy.sh RUN_DIR|MODEL_DIR [--port 8000] [--name NAME] [--public] [--log FILE] [--timeout 600] [-- SERVE_ARGS]
#   bash deploy.sh --stop [--name NAME]
# The gateway's admin key comes from SWIFTPIPE_API_KEY (32+ characters; it travels in the environment
# only, never on the command line or in the logs), or the gateway generates one into
# .deploy/NAME.sqlite.admin-key (mode 0600). Request log and keys: .deploy/NAME.sqlite
# (`swiftpipe keys create --db .deploy/NAME.sqlite --name team`). Binds 127.0.0.1 unless --public
# (then 0.0.0.0: use HTTPS, see README "Deploying"). Arguments after -- go to `swiftpipe serve`
# (e.g. -- --recipe recipes/demo-cpu.yaml for a model directory, --ssl-certfile/--ssl-keyfile).
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
target=""; port=8000; name=""; host=127.0.0.1; log=""; stop=0; timeout=600; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; extra=("$@"); break ;;
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
    kill -TERM "$pid"   # swiftpipe serve drains the gateway and stops every vLLM process group
    for _ in $(seq 1 90); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "deploy.sh: '$name' did not stop within 90 s; killing its process group" >&2
      kill -KILL -- "-$pid" 2>/dev/null || true   # its vLLM groups follow (their guards see it die)
      sleep 2
    fi
  fi
  rm -f "$pidfile"; echo "stopped '$name'"; exit 0
fi

[ -n "$target" ] || usage 2
[ -x .venv/bin/swiftpipe ] || { echo "deploy.sh: .venv missing: run 'bash scripts/install.sh' first" >&2; exit 1; }
name_args=(); [ -n "$name" ] && name_args=(--name "$name")   # else the version is <recipe>@<run id>
name="${name:-swiftpipe}"
pidfile="$state/$name.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "deploy.sh: '$name' is already running (pid $(cat "$pidfile")); stop it with: bash deploy.sh --stop --name $name" >&2
  exit 1
fi
log="${log:-$state/$name.log}"
db="$state/$name.sqlite"
if [ -n "${SWIFTPIPE_API_KEY:-}" ]; then
  export SWIFTPIPE_API_KEY
  key_note="from SWIFTPIPE_API_KEY"
else  # the gateway generates its admin key into a file only you can read (never into the log)
  key_note="in $db.admin-key (an admin key; generated on the first start, readable by you only)"
fi
setsid nohup .venv/bin/swiftpipe serve "$target" --host "$host" --port "$port" --db "$db" \
  ${name_args[@]+"${name_args[@]}"} ${extra[@]+"${extra[@]}"} \
  > "$log" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$pidfile"
echo "starting '$name' (pid $pid); waiting up to ${timeout}s for it to be ready ..."
ready=0
for _ in $(seq 1 "$timeout"); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "deploy.sh: the server exited; last lines of $log:" >&2
    tail -n 30 "$log" >&2; rm -f "$pidfile"; exit 1
  fi
  if grep -q "^serving " "$log" 2>/dev/null; then ready=1; break; fi
  sleep 1
done
if [ "$ready" != 1 ]; then
  # Not ready in time: stop what we started (its own process group: swiftpipe and vLLM) and say why.
  echo "deploy.sh: '$name' was not ready within ${timeout}s (--timeout); stopping it. Last lines of $log:" >&2
  tail -n 30 "$log" >&2 2>/dev/null
  # and of the vLLM log(s) it names ("starting vLLM for ... (...; log: FILE) ...")
  sed -n "s/^starting vLLM for .*; log: \(.*\)) \.\.\.$/\1/p" "$log" 2>/dev/null | while read -r vlog; do
    echo "--- $vlog:" >&2; tail -n 30 "$vlog" >&2 2>/dev/null || true
  done
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
  exit 1
fi
scheme=http; case " ${extra[*]+"${extra[*]}"} " in *" --ssl-certfile "*) scheme=https ;; esac
address="$scheme://$([ "$host" = 0.0.0.0 ] && hostname -I 2>/dev/null | awk '{print $1}' || echo 127.0.0.1):$port/v1"
cat <<INFO
ready: '$name' at $address (bound to $host)
API key: $key_note
logs:    tail -f $log      requests: .venv/bin/swiftpipe requests --db $db
stop:    bash deploy.sh --stop --name $name
try:     curl -s $address/extract -H "Authorization: Bearer \$KEY" -H 'Content-Type: application/json' -d '{"text": "..."}'
INFO
