#!/usr/bin/env bash
# Installs what is missing, builds tpsync and runs every test:
#   1. unit + integration + slow (fault soak) + package (the .deb built,
#      installed, upgraded and purged; root only) suites on a normal build (-Werror);
#   2. the unit tests under valgrind (no leaks, no errors);
#   3. unit + integration suites under ASan+UBSan;
#   4. each libFuzzer harness for a short fixed time from its seed corpus.
# TPSYNC_QUICK=1 runs step 1 without the slow suite and skips 2-4.
set -euo pipefail
cd "$(dirname "$0")/.."

TPSYNC_WITH_CLANG=1 TPSYNC_WITH_POSTGRES=1 TPSYNC_WITH_PROMETHEUS=1 TPSYNC_WITH_PACKAGING=1 \
  scripts/deps.sh

if [ ! -d build ]; then
  meson setup build -Dwerror=true
fi
ninja -C build
if [ "${TPSYNC_QUICK:-0}" = 1 ]; then
  exec meson test -C build --print-errorlogs --num-processes 2 --no-suite slow
fi
meson test -C build --print-errorlogs --num-processes 2

echo "== unit tests under valgrind"
meson test -C build --suite unit --print-errorlogs --num-processes 2 \
  --wrapper 'valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect'

echo "== ASan + UBSan"
if [ ! -d build-asan ]; then
  meson setup build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug
fi
ninja -C build-asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-asan --print-errorlogs --num-processes 2 --no-suite slow --no-suite package

echo "== fuzzing"
scripts/fuzz.sh
