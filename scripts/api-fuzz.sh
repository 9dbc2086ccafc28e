#!/usr/bin/env bash
# API fuzzing: schemathesis, driven by the served /v1/openapi.json, against a real service (SQLite in a
# temporary data dir, a random port, the rate limit raised) holding a provider's uploaded data and a
# published round, with a token of every role and with none. Fails on any 5xx and on any response the
# document does not describe (status code, content type, headers, body schema).
#
#   scripts/api-fuzz.sh                 the whole budget, KWM_API_FUZZ_SECONDS (default 150), split over
#                                       the six callers
#
# schemathesis is installed, at a pinned version, into a virtualenv under KWM_TOOLS_DIR (default
# ~/.cache/kwm) on first use. The service binaries are built (debug) when they are missing or stale.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

STH_VERSION="4.32.5"
BUDGET="${KWM_API_FUZZ_SECONDS:-150}"
TOOLS="${KWM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kwm}"
VENV="$TOOLS/schemathesis-$STH_VERSION"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

log() { printf '== %s\n' "$*" >&2; }

# The marker is written last: an install that was interrupted is done again.
if [ ! -f "$VENV/.installed" ]; then
  log "installing schemathesis $STH_VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$TOOLS"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$STH_VERSION"
  touch "$VENV/.installed"
fi
STH="$VENV/bin/schemathesis"

cargo build --quiet --bin kwm-service --bin kwm

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kwm-api-fuzz.XXXXXX")"
SERVICE_PID=""
cleanup() {
  if [ -n "$SERVICE_PID" ]; then
    kill "$SERVICE_PID" 2>/dev/null || true
    wait "$SERVICE_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

export KWM__DATA_DIR="$WORK/data"
export KWM__LISTEN="127.0.0.1:0"
export KWM__METRICS_LISTEN="127.0.0.1:0"
# The fuzzer sends far more than a client would: the limit is raised, not switched off.
export KWM__RATE_LIMIT_PER_SECOND=100000
export KWM__RATE_LIMIT_BURST=100000
export KWM__LOG_FORMAT=json
unset KWM_CONFIG

# A provider with keys and a small synthetic export, registered before the service starts.
"$BIN/kwm" keygen --out "$WORK/provider" >/dev/null
REGIONAL_CHECK="$("$BIN/kwm" keygen --regional --out "$WORK/regional.key" | sed -n 's/^check value: //p')"
"$BIN/kwm" synth --out-dir "$WORK/exports" --providers 1 --trajectories 400 --first-year 2022 \
  --last-year 2024 --seed 14 >/dev/null
EXPORT="$(find "$WORK/exports" -name '*.csv' | head -1)"
AGB="$(basename "$EXPORT" .csv)"
admin() { "$BIN/kwm-service" admin "$@" | tail -1; }
"$BIN/kwm-service" admin init >/dev/null   # a new service: its keys, before any admin command
"$BIN/kwm-service" admin region key-check set "$REGIONAL_CHECK" >/dev/null   # the region's key, once
declare -A TOKENS
TOKENS[provider]="$(admin provider add --agb "$AGB" --name "Fuzz provider" \
  --signing-key "$WORK/provider/signing.pub")"
TOKENS[municipality]="$(admin token issue --role municipality --scope GM0748 --label fuzz)"
TOKENS[region]="$(admin token issue --role region --label fuzz)"
"$BIN/kwm-service" admin project add --name "Fuzz project" --purpose "the API fuzzer's queries" \
  --rho 0.1 --expires 2099-12-31 >/dev/null   # project p1
TOKENS[researcher]="$(admin token issue --role researcher --scope project:p1 --label fuzz)"
TOKENS[admin]="$(admin token issue --role admin --label fuzz)"

"$BIN/kwm-service" serve >"$WORK/serve.out" 2>"$WORK/serve.log" &
SERVICE_PID=$!
BASE=""
for _ in $(seq 1 300); do
  BASE="$(sed -n 's/^  API *\(http:[^ ]*\).*/\1/p' "$WORK/serve.out")"
  [ -n "$BASE" ] && break
  kill -0 "$SERVICE_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; log "the service did not start"; exit 1; }
  sleep 0.1
done
[ -n "$BASE" ] || { log "the service did not say where it listens"; exit 1; }
log "service at $BASE"

KWM_TOKEN="${TOKENS[provider]}" "$BIN/kwm" upload "$EXPORT" --service "$BASE" --keys "$WORK/provider" \
  --regional-key "$WORK/regional.key" --skip-invalid --json >/dev/null
status="$(curl -s -o /dev/null -w '%{http_code}' -X POST "$BASE/v1/rounds" \
  -H "Authorization: Bearer ${TOKENS[region]}" -H 'Content-Type: application/json' \
  -d '{"period":"2023"}')"
[ "$status" = 201 ] || { log "publishing the 2023 round answered $status"; exit 1; }

CHECKS="not_a_server_error,status_code_conformance,content_type_conformance"
CHECKS="$CHECKS,response_headers_conformance,response_schema_conformance"
callers=(none provider municipality region researcher admin)
per=$(( BUDGET / ${#callers[@]} ))
[ "$per" -ge 5 ] || per=5
failed=()
for who in "${callers[@]}"; do
  auth=()
  [ "$who" = none ] || auth=(-H "Authorization: Bearer ${TOKENS[$who]}")
  # One worker: schemathesis' generator (Hypothesis on CPython 3.11) has failed with an internal
  # "AST constructor recursion depth mismatch" when two worker threads build strategies at once.
  log "schemathesis as $who, ${per}s"
  if ! (cd "$WORK" && "$STH" run "$BASE/v1/openapi.json" "${auth[@]}" \
      --checks "$CHECKS" \
      --phases examples,coverage,fuzzing \
      --max-time "$per" \
      --workers 1 \
      --request-timeout 30 \
      --suppress-health-check all \
      --output-truncate false \
      --no-color) >"$WORK/sth-$who.log" 2>&1; then
    cat "$WORK/sth-$who.log" >&2
    failed+=("$who")
  else
    tail -12 "$WORK/sth-$who.log" >&2
  fi
done
# The service itself must not have logged an internal error.
if grep -q '"level":"ERROR"' "$WORK/serve.log"; then
  grep '"level":"ERROR"' "$WORK/serve.log" | head -20 >&2
  failed+=("service-log")
fi
if [ ${#failed[@]} -gt 0 ]; then
  log "API fuzzing failed for: ${failed[*]}"
  exit 1
fi
log "API fuzzing: no server error, every response as documented"
