#!/usr/bin/env bash
# Runs the whole test suite: installs and starts the local emulators (Pub/Sub,
# fake-gcs-server, bqemulator) that the integration tests talk to, puts a proxy in
# front of bqemulator that refuses what BigQuery refuses (tools/strict_bigquery.py:
# request bytes and rows), runs pytest, and stops them again.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
bash emulators/install.sh
bash emulators/start.sh
STRICT_PID=
cleanup() {
  [[ -n "$STRICT_PID" ]] && kill "$STRICT_PID" 2>/dev/null || true
  bash emulators/stop.sh >/dev/null 2>&1 || true
}
trap cleanup EXIT
# shellcheck disable=SC1091
. .emulators/env.sh
port_file=.emulators/strict-bigquery.port
rm -f "$port_file"
"$PY" -m tools.strict_bigquery --target "$BIGQUERY_EMULATOR_HOST" \
  --port-file "$port_file" > .emulators/logs/strict-bigquery.log 2>&1 &
STRICT_PID=$!
for _ in $(seq 100); do [[ -s "$port_file" ]] && break; sleep 0.1; done
[[ -s "$port_file" ]] || { echo "strict BigQuery proxy did not start" >&2; exit 1; }
export BIGQUERY_DIRECT_HOST="$BIGQUERY_EMULATOR_HOST"
export BIGQUERY_EMULATOR_HOST="http://127.0.0.1:$(cat "$port_file")"
"$PY" -m pytest -q -p no:cacheprovider "$@"
