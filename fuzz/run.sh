#!/usr/bin/env bash
# Runs one cargo-fuzz target for a while: fuzz/run.sh TARGET SECONDS
# New inputs go to fuzz/corpus/TARGET (not committed); the seeds come from the tests (the
# config fixtures) or fuzz/seeds/TARGET. Exits non-zero on a finding, which libFuzzer writes
# to fuzz/artifacts/TARGET/. Needs a nightly toolchain and cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")"
target="$1"
seconds="$2"
case "$target" in
  config_load) seeds=(../config/tests/fixtures) ;;
  path_normalize | host_pattern) seeds=("seeds/$target") ;;
  replacer_stream | websocket_guard) seeds=() ;;
  *) echo "unknown fuzz target: $target" >&2; exit 2 ;;
esac
mkdir -p "corpus/$target"
cargo +nightly fuzz run -O "$target" "corpus/$target" "${seeds[@]}" -- \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
echo "fuzz $target: corpus $(find "corpus/$target" -type f | wc -l) inputs, no finding"
