#!/usr/bin/env bash
# Verifies the unit file (systemd-analyze verify) and that its exposure score from
# "systemd-analyze security --offline=yes" is 2.0 or better.
set -euo pipefail
unit=$1
daemon=$(realpath "$2")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# verify wants the ExecStart binary where the unit says; point it at the build.
sed "s|^ExecStart=[^ ]*|ExecStart=$daemon|" "$unit" > "$work/tpsyncd.service"
# Offline checks cannot resolve the tpsync user on a machine that lacks it.
if ! systemd-analyze verify "$work/tpsyncd.service" 2>"$work/verify.log"; then
  cat "$work/verify.log" >&2
  if grep -v -E "Command 'man |Failed to resolve (user|group)|network-online" "$work/verify.log" | grep -q .; then
    cat "$work/verify.log"
    exit 1
  fi
fi
out=$(systemd-analyze security --offline=yes "$work/tpsyncd.service" 2>&1)
score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
echo "exposure score: $score"
if [ -z "$score" ]; then
  printf '%s\n' "$out"
  exit 1
fi
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || { printf '%s\n' "$out" | grep -E "✗|^ +[✗x]" ; echo "score $score is above 2.0"; exit 1; }
echo "1 passed, 0 failed"
