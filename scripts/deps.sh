#!/usr/bin/env bash
# Installs the Debian packages tpsync needs to build, test and run the demo,
# skipping those already present. Needs root (or sudo) only when something is missing.
set -euo pipefail

PACKAGES=(
  gcc pkg-config meson ninja-build
  libevent-dev libcurl4-openssl-dev libsqlite3-dev libyaml-dev libexpat1-dev libjansson-dev libsystemd-dev libpq-dev
  libssl-dev openssl sqlite3 python3 scdoc curl ca-certificates systemd valgrind util-linux
)
# The test suite: clang for the fuzzers and sanitizers, a PostgreSQL server
# (started by the tests themselves as an unprivileged user) and psql.
if [ "${TPSYNC_WITH_CLANG:-0}" = 1 ]; then
  PACKAGES+=(clang libclang-rt-14-dev)
fi
if [ "${TPSYNC_WITH_POSTGRES:-0}" = 1 ]; then
  PACKAGES+=(postgresql postgresql-client)
fi
# A Prometheus server (and promtool) the metrics tests start themselves on
# loopback. Debian's package also enables its own service on :9090 where
# systemd runs; `systemctl disable --now prometheus` if you do not want it.
if [ "${TPSYNC_WITH_PROMETHEUS:-0}" = 1 ]; then
  PACKAGES+=(prometheus)
fi
# Building and checking the Debian package (dpkg-buildpackage -us -uc -b).
if [ "${TPSYNC_WITH_PACKAGING:-0}" = 1 ]; then
  PACKAGES+=(build-essential dpkg-dev debhelper lintian)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "Installing: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
