#!/usr/bin/env bash
# Installs what is missing, builds tpsync and runs every test: the unit and
# integration suites in a normal build, then again under ASan+UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh

if [ ! -d build ]; then
  meson setup build -Dwerror=true
fi
ninja -C build
meson test -C build --print-errorlogs --num-processes 2

if [ "${TPSYNC_SKIP_ASAN:-0}" != 1 ]; then
  if [ ! -d build-asan ]; then
    meson setup build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug
  fi
  ninja -C build-asan
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    meson test -C build-asan --print-errorlogs --num-processes 2
fi
