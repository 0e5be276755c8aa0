#!/usr/bin/env bash
# Runs the whole test suite: installs and starts the local emulators (Pub/Sub,
# fake-gcs-server, bqemulator) that the integration tests talk to, puts a proxy in
# front of bqemulator that refuses what BigQuery refuses (tools/strict_bigquery.py:
# request bytes and rows, on its REST and its gRPC port), installs Chromium for the browser test
# when it is missing, runs pytest (unit, checks and integration tests), and stops the
# emulators again. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
bash emulators/install.sh
# embed-map's HTML page is opened in headless Chromium (tests/unit/test_analysis_map.py):
# Debian's packages, installed once; without apt-get that test skips and says why.
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    echo "tests/run.sh: apt-get install chromium chromium-driver" >&2
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
      chromium chromium-driver >/dev/null
  else
    echo "tests/run.sh: no apt-get: the browser test of embed-map's page will skip" >&2
  fi
fi
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
grpc_port_file=.emulators/strict-bigquery-grpc.port
rm -f "$port_file" "$grpc_port_file"
"$PY" -m tools.strict_bigquery --target "$BIGQUERY_EMULATOR_HOST" --port-file "$port_file" \
  --grpc-target "$BIGQUERY_EMULATOR_GRPC_HOST" --grpc-port-file "$grpc_port_file" \
  > .emulators/logs/strict-bigquery.log 2>&1 &
STRICT_PID=$!
for _ in $(seq 100); do [[ -s "$port_file" ]] && break; sleep 0.1; done
[[ -s "$port_file" ]] || { echo "strict BigQuery proxy did not start" >&2; exit 1; }
export BIGQUERY_DIRECT_HOST="$BIGQUERY_EMULATOR_HOST"
export BIGQUERY_EMULATOR_HOST="http://127.0.0.1:$(cat "$port_file")"
export BIGQUERY_EMULATOR_GRPC_HOST="127.0.0.1:$(cat "$grpc_port_file")"
"$PY" -m pytest -q -p no:cacheprovider "$@"
