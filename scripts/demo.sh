#!/usr/bin/env bash
# The demo: installs what is missing, builds tpsync, starts the fake Target on
# loopback, runs tpsyncd on the sample CRM export in config/demo/ until every
# batch is complete, then shows tpsyncctl status and what Target now holds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

scripts/deps.sh
if [ ! -d build ]; then
  meson setup build >/dev/null
fi
ninja -C build >/dev/null

WORK=$(mktemp -d /tmp/tpsync-demo.XXXXXX)
cleanup() {
  [ -n "${DAEMON:-}" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null || true
  [ -n "${TARGET:-}" ] && kill "$TARGET" 2>/dev/null && wait "$TARGET" 2>/dev/null || true
}
trap cleanup EXIT

echo "== a test CA and a certificate for the fake Target (127.0.0.1, its status host 127.0.0.2)"
EC=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
printf 'subjectAltName=IP:127.0.0.1,IP:127.0.0.2\nextendedKeyUsage=serverAuth\n' >"$WORK/server.ext"
openssl req -x509 "${EC[@]}" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" -days 2 -subj "/CN=tpsync demo CA" 2>/dev/null
openssl req "${EC[@]}" -keyout "$WORK/server.key" -out "$WORK/server.csr" -subj "/CN=127.0.0.1" 2>/dev/null
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
  -out "$WORK/server.pem" -days 2 -extfile "$WORK/server.ext" 2>/dev/null

echo "== fake Adobe Target on loopback (TLS; processes each batch a second after accepting it)"
build/tests/fake-target/fake-target --port-file "$WORK/port" --tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key" \
  --process-delay-ms 1000 >"$WORK/fake-target.log" 2>&1 &
TARGET=$!
for _ in $(seq 100); do [ -s "$WORK/port" ] && break; sleep 0.05; done
PORT=$(cat "$WORK/port")
echo "   listening on https://127.0.0.1:$PORT"

mkdir -p "$WORK/spool"
sed -e "s|@BASE_URL@|https://127.0.0.1:$PORT|" -e "s|@WORK@|$WORK|g" config/demo/tpsyncd.yaml >"$WORK/tpsyncd.yaml"
build/daemon/tpsyncd -c "$WORK/tpsyncd.yaml" --check-config

echo "== tpsyncd (log: $WORK/tpsyncd.log)"
build/daemon/tpsyncd -c "$WORK/tpsyncd.yaml" 2>"$WORK/tpsyncd.log" &
DAEMON=$!
CTL=(build/daemon/tpsyncctl -s "$WORK/control.sock")
for _ in $(seq 100); do "${CTL[@]}" status >/dev/null 2>&1 && break; sleep 0.05; done

echo "== dropping the sample CRM export into the spool directory"
cp config/demo/crm-export.csv "$WORK/spool/crm-export.csv.part"
mv "$WORK/spool/crm-export.csv.part" "$WORK/spool/crm-export.csv"

# Wait until the export is ingested, sent and confirmed complete by Target.
for _ in $(seq 300); do
  if "${CTL[@]}" status --json | python3 -c '
import json, sys
s = json.load(sys.stdin); q = s["queue"]
done = s["sources"][0]["files"] == 1 and q["pending_profiles"] == 0 and q["batches_ready"] == 0 \
       and q["batches_in_flight"] == 0 and q["batches_awaiting_status"] == 0 and s["delivery"]["batches_complete"] > 0
sys.exit(0 if done else 1)'; then
    break
  fi
  sleep 0.1
done

echo
echo "== tpsyncctl status"
"${CTL[@]}" status
echo
echo "== tpsyncctl batches"
"${CTL[@]}" batches
echo
echo "== what the fake Target holds now"
curl -s --cacert "$WORK/ca.pem" "https://127.0.0.1:$PORT/__state" | python3 -c '
import json, sys
s = json.load(sys.stdin)
for pid, attrs in sorted(s["profiles"].items()):
    print(f"  {pid:12} " + ", ".join(f"{k}={v!r}" for k, v in sorted(attrs.items())))
print("  (%d profiles, %d submission(s), violations: %d)" % (len(s["profiles"]), s["submissions"], len(s["violations"])))'
echo
echo "Rejected rows (with line and reason) are in $WORK/spool/archive/:"
ls "$WORK/spool/archive/"
cat "$WORK/spool/archive/"*.rejects.csv 2>/dev/null || true
