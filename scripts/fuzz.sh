#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers (fuzz/): the SDK's CSV rows, the sealed envelope, the batch
# payload and the region file, with AFL++ through cargo-afl on stable Rust.
#
#   scripts/fuzz.sh               smoke run: each target for KWM_FUZZ_SECONDS (default 10) seconds
#   scripts/fuzz.sh 600 payload   one target (or all, without a name) for 600 seconds each
#
# Installs cargo-afl (which builds AFL++ from its crate) when it is missing. Fails when a target crashed;
# the crashing inputs stay in the output directory it names. Prints per target the executions, the
# coverage of the edge map and the crashes.
set -euo pipefail
cd "$(dirname "$0")/.."

AFL_VERSION="0.18.2"
SECONDS_EACH="${1:-${KWM_FUZZ_SECONDS:-10}}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(csv_rows envelope payload region)
export CARGO_TARGET_DIR="${KWM_FUZZ_TARGET_DIR:-$PWD/target/fuzz}"
OUT="${KWM_FUZZ_OUT:-$PWD/target/fuzz-out}"

log() { printf '== %s\n' "$*" >&2; }

if ! cargo afl --version 2>/dev/null | grep -q "$AFL_VERSION"; then
  log "installing cargo-afl $AFL_VERSION (builds AFL++)"
  cargo install cargo-afl --version "$AFL_VERSION" --locked --force
fi
# cargo-afl builds AFL++ on install; for another toolchain it is built here (a no-op when it exists).
cargo afl config --build >/dev/null 2>&1 || true

log "building the fuzz targets (instrumented, release)"
cargo afl build --release --manifest-path fuzz/Cargo.toml --bins

# No core dumps to a handler, no CPU governor, no screen: a container or CI.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
export AFL_QUIET=1 AFL_SHUFFLE_QUEUE=0

failed=0
printf '%-10s %12s %10s %10s %8s %6s\n' target executions exec/s edges coverage crashes
for t in "${TARGETS[@]}"; do
  out="$OUT/$t"
  rm -rf "$out"
  mkdir -p "$out"
  if ! cargo afl fuzz -i "fuzz/corpus/$t" -o "$out" -V "$SECONDS_EACH" -- "$CARGO_TARGET_DIR/release/$t" \
      >"$out/afl.log" 2>&1; then
    log "afl-fuzz did not run $t:"
    tail -20 "$out/afl.log" >&2
    failed=1
    continue
  fi
  stats="$out/default/fuzzer_stats"
  get() { sed -n "s/^$1 *: *//p" "$stats"; }
  crashes="$(find "$out/default/crashes" -name 'id:*' 2>/dev/null | wc -l)"
  printf '%-10s %12s %10s %10s %8s %6s\n' "$t" "$(get execs_done)" "$(get execs_per_sec)" \
    "$(get edges_found)" "$(get bitmap_cvg)" "$crashes"
  if [ "$crashes" -gt 0 ]; then
    log "$t crashed on $crashes input(s): $out/default/crashes"
    failed=1
  fi
done
exit "$failed"
