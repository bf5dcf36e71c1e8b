#!/usr/bin/env bash
# Whole-path benchmark: `sms-conduit bench` → relay (HTTPS, TLS) → sim-carrier
# (SMPP over TLS), all on loopback, release build. Prints the bench tables:
# flat out, then at a fixed rate (half of the flat-out figure unless RATE is
# set). The relay's CPU time per message comes from /proc (user+sys), and
# beside it the simulator's and the load generator's own: the same
# exchanges' cost at the other end of each socket, on the same cores.
#
# As a client runs it: every receipt goes to the client as a signed webhook,
# received and verified by the load generator (`bench --webhook-sink`), and
# each run ends when the last accepted message's webhook arrived, so the
# relay's CPU per message includes its receipt, its webhook and the
# webhook's removal from the outbox.
#
#   benches/relay.sh [MESSAGES] [CONNECTIONS]
#
# Env: BIN (default target/release/sms-conduit), TOOLS_BIN, RATE, HTTP2=1,
# IDEMPOTENCY=1 (an Idempotency-Key on every message), FLAT_ONLY=1
# (skip the fixed-rate run), RATE_ONLY=1 (only the fixed-rate run: RATE
# messages/s for MESSAGES messages), NO_WEBHOOK=1 (receipts are not
# delivered to the client: the figures of sessions before 9).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/relay-config.sh
N=${1:-50000}
C=${2:-64}
BIN=${BIN:-target/release/sms-conduit}
[ -x "$BIN" ] || cargo build --release
BINABS=$(realpath "$BIN")
# The simulator and the load generator: by default the same binary; set
# TOOLS_BIN to compare an older relay with today's tools (webhook sink).
TOOLS=$(realpath "${TOOLS_BIN:-$BIN}")
work=$(mktemp -d)
stop() {
  if [ -n "${RELAY_WRAP:-}" ] && [ -n "${RELAY:-}" ]; then
    # The wrapper's child is the relay: a graceful stop (its last receipts in,
    # SIGTERM to the relay itself) lets the wrapper write its report.
    sleep 1
    pkill -TERM -P "$RELAY" -f ' run --config' 2>/dev/null || true
    wait "$RELAY" 2>/dev/null || true
  fi
  kill ${SIM:-} ${RELAY:-} 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap stop EXIT
cp -r config/example "$work/example"
KEY=$("$TOOLS" keys new --client bench | sed -n 2p | tr -d ' ')
HASH=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
SIM_PORT=$((20000 + RANDOM % 10000)); API_PORT=$((SIM_PORT + 1)); MET_PORT=$((SIM_PORT + 2)); SINK_PORT=$((SIM_PORT + 3))
webhook_toml=""
sink=()
if [ "${NO_WEBHOOK:-}" != 1 ]; then
  webhook_toml="webhook_url = \"https://127.0.0.1:$SINK_PORT/events\"
webhook_secret_file = \"example/clinic-app.whsec\"
webhook_ca_file = \"example/server.crt\""
  sink=(--webhook-sink "127.0.0.1:$SINK_PORT" --sink-cert example/server.crt --sink-key example/server.key
    --webhook-secret-file example/clinic-app.whsec)
fi
{
  relay_config bench state example "$SIM_PORT" "$API_PORT" "$MET_PORT" "$HASH"
  [ -z "$webhook_toml" ] || printf '%s\n' "$webhook_toml"
} > "$work/c.toml"
cd "$work"
"$TOOLS" sim-carrier --listen 127.0.0.1:$SIM_PORT --tls-cert example/server.crt --tls-key example/server.key \
  --system-id bench --password "$(cat example/carrier-a.pass)" --dlr-delay-ms 200 > sim.out 2> sim.err &
SIM=$!
sleep 0.3
# RELAY_WRAP: a command the relay runs under (benches/allocs.sh: heaptrack).
# shellcheck disable=SC2086
RUST_LOG=warn ${RELAY_WRAP:-} "$BINABS" run --config c.toml 2> relay.err &
RELAY=$!
for _ in $(seq 100); do curl -sfk "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
extra=(); [ "${HTTP2:-}" = 1 ] && extra+=(--http2)
# Tools older than --carrier-pid (TOOLS_BIN) report the relay's CPU only.
# The help is read whole first: piped into `grep -q` under pipefail, an
# early match could end the pipeline with the writer's SIGPIPE, a failure.
tools_help=$("$TOOLS" bench --help)
[[ $tools_help == *--carrier-pid* ]] && extra+=(--carrier-pid "$SIM")
[ "${IDEMPOTENCY:-}" = 1 ] && extra+=(--idempotency-keys)
run() {
  "$TOOLS" bench --url "https://127.0.0.1:$API_PORT" --api-key "$KEY" --ca-file example/server.crt \
    --campaign CBENCH1 --from +15551230001 --relay-pid $RELAY --connections "$C" "${extra[@]}" "${sink[@]}" "$@"
}
if [ "${RATE_ONLY:-}" = 1 ]; then
  rate=${RATE:?RATE_ONLY=1 needs RATE}
  echo "== fixed rate: $rate msg/s, $N messages, $C connections"
  run --messages "$N" --rate "$rate"
else
  echo "== flat out: $N messages, $C connections"
  run --messages "$N" | tee flat.txt
  if [ "${FLAT_ONLY:-}" = 1 ]; then exit 0; fi
  rate=${RATE:-$(awk '/^throughput/ {printf "%d", $2/2}' flat.txt)}
  echo "== fixed rate: $rate msg/s, $((rate * 10)) messages"
  run --messages $((rate * 10)) --rate "$rate"
fi
echo "== relay metrics"
curl -s "http://127.0.0.1:$MET_PORT/metrics" | grep -E '^sms_conduit_(messages_total|store_commit_batch_size_(sum|count))' || true
