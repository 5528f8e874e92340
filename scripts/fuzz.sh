#!/usr/bin/env bash
# Builds the libFuzzer harnesses with clang and runs each for a fixed time
# (default 10 s) from its seed corpus. A crash fails the run and leaves the
# input in build-fuzz/crash-*; add it to tests/fuzz/corpus/NAME/ as a regression.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${TPSYNC_FUZZ_SECONDS:-10}
TPSYNC_WITH_CLANG=1 scripts/deps.sh
if [ ! -d build-fuzz ]; then
  CC=clang meson setup build-fuzz -Dfuzz=true -Db_lundef=false -Dbuildtype=debugoptimized >/dev/null
fi
ninja -C build-fuzz tests/fuzz/fuzz_csv tests/fuzz/fuzz_config tests/fuzz/fuzz_answer tests/fuzz/fuzz_control tests/fuzz/fuzz_pctenc tests/fuzz/fuzz_attrset \
  tests/fuzz/fuzz_fetch tests/fuzz/fuzz_history
passed=0
failed=0
for name in csv config answer control pctenc attrset fetch history; do
  work=$(mktemp -d)
  cp tests/fuzz/corpus/$name/* "$work/"
  if (cd build-fuzz && ASAN_OPTIONS=detect_leaks=1 ./tests/fuzz/fuzz_$name -max_total_time="$SECONDS_EACH" \
        -max_len=8192 -timeout=10 -rss_limit_mb=1024 -print_final_stats=0 "$work" >"fuzz-$name.log" 2>&1); then
    echo "fuzz $name: ok ($(grep -c . "build-fuzz/fuzz-$name.log" 2>/dev/null || true) log lines, corpus $(ls "$work" | wc -l))"
    passed=$((passed + 1))
  else
    echo "fuzz $name: FAILED, see build-fuzz/fuzz-$name.log"
    tail -30 "build-fuzz/fuzz-$name.log"
    failed=$((failed + 1))
  fi
  rm -rf "$work"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
