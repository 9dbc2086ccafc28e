#!/usr/bin/env bash
# What the dashboard's browser tests need besides Rust: Chromium and its WebDriver (Debian packages),
# and axe-core from npm (pinned in tests/browser/package-lock.json). Idempotent: installs only what is
# missing. The tests find them through KWM_CHROMIUM, KWM_CHROMEDRIVER and KWM_AXE_JS, or the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  log "installing Chromium and chromedriver"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if [ ! -f tests/browser/node_modules/axe-core/axe.min.js ]; then
  log "installing axe-core (npm ci in tests/browser)"
  npm ci --prefix tests/browser --no-audit --no-fund
fi

log "browser tests use $(chromium --version 2>/dev/null | head -1) and axe-core $(node -p 'require("./tests/browser/node_modules/axe-core/package.json").version')"
