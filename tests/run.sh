#!/usr/bin/env bash
# Runs the whole test suite: installs and starts the local emulators (Pub/Sub,
# fake-gcs-server, bqemulator) that the integration tests talk to, runs pytest, and
# stops the emulators again. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
bash emulators/install.sh
bash emulators/start.sh
trap 'bash emulators/stop.sh >/dev/null 2>&1 || true' EXIT
# shellcheck disable=SC1091
. .emulators/env.sh
"$PY" -m pytest -q -p no:cacheprovider "$@"
