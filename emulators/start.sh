#!/usr/bin/env bash
# Start the local emulator stack on 127.0.0.1 (run emulators/install.sh first).
#
#   Pub/Sub          :8085  (gRPC)   Google's Java emulator if installed, else .emulators/bin/pstest-server
#   fake-gcs-server  :4443  (http)   filesystem backend in .emulators/gcs-data; publishes storage
#                                    notifications (finalize, delete) to projects/$EMU_PROJECT/topics/$EMU_NOTIFY_TOPIC
#   bqemulator       :9050 (REST) :9060 (gRPC, Storage API)   project $EMU_PROJECT
#
# PIDs -> .emulators/pids/*.pid, logs -> .emulators/logs/*.log, client exports -> .emulators/env.sh
# A port that is already taken by another process is replaced by the next free one (logged); the
# ports in use are in .emulators/env.sh, so `. .emulators/env.sh` is all a client needs.
# Each process runs in its own session (setsid), so its PID is also its process-group id; stop.sh
# signals that group.
#
# Env (defaults): EMU_PROJECT=test-project EMU_NOTIFY_TOPIC=gcs-notifications
#                 EMU_PUBSUB=auto|official|pstest  EMU_START_TIMEOUT=60 (seconds per service)
#                 EMU_PUBSUB_PORT=8085 EMU_GCS_PORT=4443 EMU_BQ_PORT=9050 EMU_BQ_GRPC_PORT=9060
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EMU="$ROOT/.emulators"
PIDS="$EMU/pids"
LOGS="$EMU/logs"
BIN="$EMU/bin"
VENV="$EMU/bq-venv"
GCS_ROOT="$EMU/gcs-data"
HOST=127.0.0.1

EMU_PROJECT="${EMU_PROJECT:-test-project}"
EMU_NOTIFY_TOPIC="${EMU_NOTIFY_TOPIC:-gcs-notifications}"
EMU_PUBSUB="${EMU_PUBSUB:-auto}"
EMU_START_TIMEOUT="${EMU_START_TIMEOUT:-60}"
PUBSUB_PORT="${EMU_PUBSUB_PORT:-8085}"
GCS_PORT="${EMU_GCS_PORT:-4443}"
BQ_PORT="${EMU_BQ_PORT:-9050}"
BQ_GRPC_PORT="${EMU_BQ_GRPC_PORT:-9060}"

log() { printf '[start] %s\n' "$*" >&2; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1fs", b-a}'; }

[[ -x "$VENV/bin/bqemulator" && -x "$BIN/fake-gcs-server" ]] \
  || { log "ERROR: emulators not installed; run emulators/install.sh"; exit 1; }
mkdir -p "$PIDS" "$LOGS" "$GCS_ROOT"
T0=$(now)

# ------------------------------------------------------------------ helpers
# (a zombie -- dead, not yet reaped by init -- counts as not alive)
alive() {
  local s; [[ -f "$PIDS/$1.pid" ]] && s="$(ps -o stat= -p "$(cat "$PIDS/$1.pid")" 2>/dev/null)" && [[ -n "$s" && "$s" != Z* ]]
}
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

STARTED=()
fail() { # name port message [nolog]
  log "ERROR: $1 ($3)"
  if [[ -z "${4:-}" && -f "$LOGS/$1.log" ]]; then
    log "---- last 30 lines of $LOGS/$1.log ----"; tail -n 30 "$LOGS/$1.log" >&2; log "----"
  fi
  if ((${#STARTED[@]})); then
    log "stopping what this run started: ${STARTED[*]}"
    "$ROOT/emulators/stop.sh" "${STARTED[@]}" >&2 || true
  fi
  exit 1
}

launch() { # name "port ..." cmd...   (env for the command is set by the caller via `env`)
  local name=$1 ports=$2 port; shift 2
  if alive "$name"; then
    log "$name already running (pid $(cat "$PIDS/$name.pid"))"; return
  fi
  rm -f "$PIDS/$name.pid"
  for port in $ports; do
    if port_open "$port"; then
      command -v ss >/dev/null 2>&1 && ss -ltnp "sport = :$port" >&2 || true
      fail "$name" "$port" "port $HOST:$port is already in use by another process" nolog
    fi
  done
  # The new session makes $! the group leader; nothing here forks in between.
  ( cd "$EMU" && exec setsid "$@" </dev/null >"$LOGS/$name.log" 2>&1 ) &
  echo $! > "$PIDS/$name.pid"
  STARTED+=("$name")
}

# GET http://$HOST:port/path answers 200 (plain bash, no curl needed)
http_ok() {
  local line
  { exec 3<>"/dev/tcp/$HOST/$1"; } 2>/dev/null || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$HOST" >&3
  IFS= read -r -t 5 line <&3 || line=""
  exec 3<&-
  [[ "$line" == *" 200 "* ]]
}

wait_port() { # name port
  local name=$1 port=$2 t; t=$(now)
  local deadline=$((SECONDS + EMU_START_TIMEOUT))
  until port_open "$port"; do
    alive "$name" || fail "$name" "$port" "process exited before $HOST:$port answered"
    ((SECONDS < deadline)) || fail "$name" "$port" "$HOST:$port did not answer within ${EMU_START_TIMEOUT}s"
    sleep 0.1
  done
  log "$name up on $HOST:$port ($(took "$t"))"
}

# ------------------------------------------------------------------ ports
# A running emulator keeps the port it was started on (.emulators/ports.sh); a port held by
# another process is replaced by the next free one.
PORTS_FILE="$EMU/ports.sh"
CHOSEN=()
free_port() { # first port >= $1 that nothing listens on and this run has not chosen
  local p=$1 limit=$(($1 + 200))
  while port_open "$p" || [[ " ${CHOSEN[*]} " == *" $p "* ]]; do
    p=$((p + 1)); ((p < limit)) || { log "ERROR: no free port in $1..$limit"; exit 1; }
  done
  echo "$p"
}
pick_port() { # VAR service
  local var=$1 name=$2 want=${!1} saved
  if alive "$name" && [[ -f "$PORTS_FILE" ]] && saved="$(grep "^$var=" "$PORTS_FILE" | cut -d= -f2)" && [[ -n "$saved" ]]; then
    printf -v "$var" '%s' "$saved"
  elif ! alive "$name" && { port_open "$want" || [[ " ${CHOSEN[*]} " == *" $want "* ]]; }; then
    printf -v "$var" '%s' "$(free_port "$((want + 1))")"
    log "port $want is in use by another process; $name uses ${!var}"
  fi
  CHOSEN+=("${!var}")
}
pick_port PUBSUB_PORT pubsub
pick_port GCS_PORT gcs
pick_port BQ_PORT bigquery
pick_port BQ_GRPC_PORT bigquery
printf 'PUBSUB_PORT=%s\nGCS_PORT=%s\nBQ_PORT=%s\nBQ_GRPC_PORT=%s\n' \
  "$PUBSUB_PORT" "$GCS_PORT" "$BQ_PORT" "$BQ_GRPC_PORT" > "$PORTS_FILE"

# ------------------------------------------------------------------ Pub/Sub: which one
official_pubsub() {
  command -v gcloud >/dev/null 2>&1 && command -v java >/dev/null 2>&1 || return 1
  local sdk; sdk="$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null)" || return 1
  [[ -n "$sdk" && -x "$sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ]] || return 1
  echo "$sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
}
if alive pubsub && [[ -f "$EMU/pubsub.impl" ]]; then
  read -r PUBSUB_IMPL PUBSUB_CMD < "$EMU/pubsub.impl"
else
  case "$EMU_PUBSUB" in
    official|auto)
      if PUBSUB_CMD="$(official_pubsub)"; then PUBSUB_IMPL=official
      elif [[ "$EMU_PUBSUB" == official ]]; then log "ERROR: Google's Pub/Sub emulator not found"; exit 1
      elif [[ -x "$BIN/pstest-server" ]]; then PUBSUB_IMPL=pstest; PUBSUB_CMD="$BIN/pstest-server"
      else log "ERROR: no Pub/Sub emulator: no gcloud pubsub-emulator+java and no $BIN/pstest-server (EMU_PUBSUB=pstest emulators/install.sh)"; exit 1
      fi ;;
    pstest)
      [[ -x "$BIN/pstest-server" ]] || { log "ERROR: $BIN/pstest-server missing; run EMU_PUBSUB=pstest emulators/install.sh"; exit 1; }
      PUBSUB_IMPL=pstest; PUBSUB_CMD="$BIN/pstest-server" ;;
    *) log "ERROR: EMU_PUBSUB must be auto, official or pstest"; exit 1 ;;
  esac
fi

# ------------------------------------------------------------------ launch all three, then wait
# Pub/Sub
if [[ "$PUBSUB_IMPL" == official ]]; then
  launch pubsub "$PUBSUB_PORT" "$PUBSUB_CMD" --host="$HOST" --port="$PUBSUB_PORT"
else
  launch pubsub "$PUBSUB_PORT" "$PUBSUB_CMD" -host "$HOST" -port "$PUBSUB_PORT"
fi
echo "$PUBSUB_IMPL $PUBSUB_CMD" > "$EMU/pubsub.impl"

# fake-gcs-server. Measured: it starts fine while Pub/Sub is still down and the topic does not
# exist; it connects and publishes lazily, per event. An event whose topic is missing at that
# moment is DROPPED (log: "error publishing event: ... NotFound desc = Topic not found"), so the
# topic must exist before the first upload -- hence we create it below, before start.sh returns.
# Events are published asynchronously: a finalize and a delete of the same object may arrive in
# either order.
launch gcs "$GCS_PORT" env PUBSUB_EMULATOR_HOST="$HOST:$PUBSUB_PORT" "$BIN/fake-gcs-server" \
  -scheme http -host "$HOST" -port "$GCS_PORT" -external-url "http://$HOST:$GCS_PORT" \
  -backend filesystem -filesystem-root "$GCS_ROOT" \
  -event.pubsub-project-id "$EMU_PROJECT" -event.pubsub-topic "$EMU_NOTIFY_TOPIC" \
  -event.list finalize,delete

# bqemulator: HOME points at the folder holding the pre-copied DuckDB extensions (no download);
# BQEMU_GCS_LOCAL_ROOT lets load_table_from_uri('gs://bucket/obj') read fake-gcs-server's files.
launch bigquery "$BQ_PORT $BQ_GRPC_PORT" env HOME="$EMU/home" BQEMU_GCS_LOCAL_ROOT="$GCS_ROOT" \
  "$VENV/bin/bqemulator" start --rest-host "$HOST" --rest-port "$BQ_PORT" \
  --grpc-host "$HOST" --grpc-port "$BQ_GRPC_PORT" --project "$EMU_PROJECT"

wait_port pubsub "$PUBSUB_PORT"
wait_port gcs "$GCS_PORT"
wait_port bigquery "$BQ_PORT"
wait_port bigquery "$BQ_GRPC_PORT"
deadline=$((SECONDS + EMU_START_TIMEOUT))
until http_ok "$BQ_PORT" /readyz; do
  alive bigquery || fail bigquery "$BQ_PORT" "process exited during start"
  ((SECONDS < deadline)) || fail bigquery "$BQ_PORT" "http://$HOST:$BQ_PORT/readyz not OK within ${EMU_START_TIMEOUT}s"
  sleep 0.2
done

# ------------------------------------------------------------------ notification topic
t=$(now)
PY="$VENV/bin/python"
if [[ -x "$ROOT/.venv/bin/python" ]] && "$ROOT/.venv/bin/python" -c 'import google.cloud.pubsub_v1' 2>/dev/null; then
  PY="$ROOT/.venv/bin/python"
fi
PUBSUB_EMULATOR_HOST="$HOST:$PUBSUB_PORT" "$PY" - "$EMU_PROJECT" "$EMU_NOTIFY_TOPIC" <<'PY' \
  || fail pubsub "$PUBSUB_PORT" "could not create the notification topic"
import sys
from google.api_core.exceptions import AlreadyExists
from google.cloud import pubsub_v1
project, topic = sys.argv[1:3]
client = pubsub_v1.PublisherClient()
path = client.topic_path(project, topic)
try:
    client.create_topic(name=path, timeout=30)
    print(f"[start] created topic {path}", file=sys.stderr)
except AlreadyExists:
    print(f"[start] topic {path} already exists", file=sys.stderr)
PY
log "notification topic ready ($(took "$t"))"
for n in pubsub gcs bigquery; do alive "$n" || fail "$n" - "process exited after start"; done

# ------------------------------------------------------------------ env for clients
cat > "$EMU/env.sh" <<EOF
# Written by emulators/start.sh -- source it: . .emulators/env.sh
# Pub/Sub emulator: $PUBSUB_IMPL ($PUBSUB_CMD)
export PUBSUB_EMULATOR_HOST=$HOST:$PUBSUB_PORT
export PUBSUB_PROJECT_ID=$EMU_PROJECT
export STORAGE_EMULATOR_HOST=http://$HOST:$GCS_PORT
# google-cloud-bigquery uses this verbatim as api_endpoint: it needs the http:// scheme.
# Pass credentials=AnonymousCredentials() to bigquery.Client (the env var does not do that).
export BIGQUERY_EMULATOR_HOST=http://$HOST:$BQ_PORT
export BIGQUERY_EMULATOR_GRPC_HOST=$HOST:$BQ_GRPC_PORT
export EMU_PROJECT=$EMU_PROJECT
export EMU_NOTIFY_TOPIC=$EMU_NOTIFY_TOPIC
export EMU_PUBSUB_IMPL=$PUBSUB_IMPL
export EMU_GCS_ROOT=$GCS_ROOT
# keep google-auth from probing a GCE metadata server (saves ~20 s of retries offline)
export NO_GCE_CHECK=true
export GCE_METADATA_HOST=127.0.0.1:1
export GCE_METADATA_IP=127.0.0.1:1
export GCE_METADATA_ROOT=127.0.0.1:1
EOF

log "all emulators up in $(took "$T0"); Pub/Sub emulator used: $PUBSUB_IMPL ($PUBSUB_CMD)"
echo "# Set these (or: source $EMU/env.sh):"
grep '^export' "$EMU/env.sh"
echo "# Pub/Sub emulator used: $PUBSUB_IMPL"
