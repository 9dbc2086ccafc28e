#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test against SQLite and PostgreSQL.
# Starts PostgreSQL and creates the test database when needed. Used by `.ci/run` and by developers alike.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A CI run builds once from a fresh clone: incremental state would only double the target dir on disk.
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi
PG_HOST="${KWM_PG_HOST:-127.0.0.1}"
PG_PORT="${KWM_PG_PORT:-5432}"
PG_USER="${KWM_PG_USER:-postgres}"
PG_DB="${KWM_PG_DB:-kwm_test}"

log() { printf '== %s\n' "$*" >&2; }

ensure_postgres() {
  if ! command -v pg_isready >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  if ! pg_isready -h "$PG_HOST" -p "$PG_PORT" -q; then
    log "starting PostgreSQL"
    if command -v pg_ctlcluster >/dev/null 2>&1; then
      ver="$(ls /etc/postgresql | sort -V | tail -1)"
      pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    fi
    for _ in $(seq 1 30); do
      pg_isready -h "$PG_HOST" -p "$PG_PORT" -q && break
      sleep 1
    done
  fi
  pg_isready -h "$PG_HOST" -p "$PG_PORT" -q || { log "PostgreSQL does not answer on $PG_HOST:$PG_PORT"; exit 1; }
  if ! psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atqc \
      "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
    log "creating database $PG_DB"
    createdb -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$PG_DB"
  fi
  export KWM_TEST_DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$PG_DB"
}

ensure_postgres

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# Chromium, chromedriver and axe-core for the dashboard's browser tests.
bash scripts/browser-deps.sh

log "tests (SQLite and PostgreSQL at $KWM_TEST_DATABASE_URL)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi

log "API fuzzing (schemathesis against the real service)"
bash scripts/api-fuzz.sh

log "coverage-guided fuzzing of the parsers (AFL++, a smoke run of each target)"
KWM_FUZZ_SECONDS="${KWM_FUZZ_SECONDS:-15}" bash scripts/fuzz.sh
