#!/usr/bin/env bash
# Fuzz every parser and SASL state machine: scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); all targets of fuzz/ unless named. Needs
# cargo-fuzz (installed from crates.io when missing); runs on the stable
# toolchain through RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Zsanitizer=address).
# New corpus entries go to fuzz/corpus/TARGET (seeded from fuzz/seeds/TARGET);
# a crash stops the run and leaves its input in fuzz/artifacts/TARGET/ —
# turn it into a regression test in the normal suite before fixing it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# FUZZ_SMOKE=1 (CI): a dev build without sanitizer — minutes less to build,
# enough to show every target builds, starts and survives its seeds.
if [ -n "${FUZZ_SMOKE:-}" ]; then mode=(-D -s none); else mode=(-O); fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then mapfile -t targets < <(cargo fuzz list); fi
cargo fuzz build "${mode[@]}"
for t in "${targets[@]}"; do
  echo "==> fuzzing $t for ${secs}s"
  mkdir -p "corpus/$t"
  # -timeout: one input taking over 10 s is a hang, which is a finding too.
  cargo fuzz run "${mode[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|Done)' || true
  # grep hides libFuzzer's chatter; the exit status of the run is what counts.
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz target $t failed: see fuzz/artifacts/$t/" >&2; exit 1; }
done
