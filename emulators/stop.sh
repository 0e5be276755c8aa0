#!/usr/bin/env bash
# Stop the emulators started by emulators/start.sh, by the PIDs in .emulators/pids/ (never by name).
#   emulators/stop.sh                 # all: bigquery gcs pubsub
#   emulators/stop.sh gcs bigquery    # some
# start.sh runs each one with setsid, so the PID is also its process-group id: we signal the group
# (SIGTERM, then SIGKILL after EMU_STOP_TIMEOUT seconds, default 10) so no child is left behind.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PIDS="$ROOT/.emulators/pids"
EMU_STOP_TIMEOUT="${EMU_STOP_TIMEOUT:-10}"
log() { printf '[stop] %s\n' "$*"; }

names=("$@")
((${#names[@]})) || names=(bigquery gcs pubsub)

# What each pid's command line must mention, so a recycled PID is never signalled.
marker() {
  case $1 in
    pubsub) echo 'pubsub|pstest' ;;    # cloud-pubsub-emulator jar or pstest-server
    gcs) echo 'fake-gcs-server' ;;
    bigquery) echo 'bqemulator' ;;
    *) echo "$1" ;;
  esac
}

# A dead child waits as a zombie until init reaps it (~1-2 s on some machines): count it as gone.
pid_alive() { local s; s="$(ps -o stat= -p "$1" 2>/dev/null)" && [[ -n "$s" && "$s" != Z* ]]; }
group_alive() { ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {f = 1} END {exit !f}'; }
alive() { if [[ "$1" == -* ]]; then group_alive "${1#-}"; else pid_alive "$1"; fi; }

rc=0
for name in "${names[@]}"; do
  f="$PIDS/$name.pid"
  [[ -f "$f" ]] || { log "$name: not running (no pid file)"; continue; }
  pid="$(cat "$f")"
  if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! pid_alive "$pid"; then
    log "$name: not running (stale pid $pid)"; rm -f "$f"; continue
  fi
  if ! tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -Eq -- "$(marker "$name")"; then
    log "$name: pid $pid is not an emulator process any more; leaving it alone"; rm -f "$f"; continue
  fi
  # Signal the process group when the pid leads one (setsid), else just the pid.
  target="$pid"
  [[ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" == "$pid" ]] && target="-$pid"
  kill -TERM -- "$target" 2>/dev/null
  for ((i = 0; i < EMU_STOP_TIMEOUT * 10; i++)); do
    alive "$target" || break
    sleep 0.1
  done
  if alive "$target"; then
    log "$name: still alive after ${EMU_STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL -- "$target" 2>/dev/null
    sleep 0.2
  fi
  if alive "$target"; then
    log "$name: could not stop pid $pid"; rc=1
  else
    log "$name: stopped (pid $pid)"; rm -f "$f"
  fi
done
exit $rc
