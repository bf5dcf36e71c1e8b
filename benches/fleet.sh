#!/usr/bin/env bash
# Fleet benchmark (SPEC §8, issue 18): the whole path, `sms-conduit bench` →
# relay (HTTPS, TLS) → sim-carrier (SMPP over TLS), all on loopback, release
# build, in three set-ups measured one after the other in one sitting:
#
#   single  one node without [fleet] (the reference: everything in redb)
#   fleet1  one node with [fleet] on a local redis-server
#   fleet2  two nodes with [fleet] on the same redis-server, the load split
#           between them (two `sms-conduit bench` processes, half the
#           messages and half the connections each, at the same time)
#
# One redis-server (a free loopback port in a temp dir, AOF `everysec`,
# `noeviction`: the production settings of README "Running a fleet") and
# one sim-carrier (receipts after 200 ms) serve every set-up; each set-up
# gets fresh relays and state dirs and its own key prefix. Each set-up first
# sends WARMUP messages (not counted), then MESSAGES, and waits until every
# receipt was applied (a receipt taken by the node that did not send is
# forwarded to its sender through Redis and counted when applied there).
#
# Printed per set-up:
#   msg/s          messages / wall time of the bench run(s)
#   relay µs/msg   user+sys CPU of every relay (/proc/PID/stat), summed, per
#                  message, from the start of the run until its last receipt
#   redis µs/msg   the same for redis-server
#   rtt/msg        Redis round trips per message: the relays' own count of
#                  calls to Redis (sms_conduit_shared_state_seconds_count,
#                  one per call; a pipeline or a script is one), summed
#   cmds/msg       Redis commands per message (INFO stats
#                  total_commands_processed delta: the commands a script
#                  runs count too, so this is more than the round trips)
#   fwd            receipts forwarded to the other node (2 nodes only)
#   fsync/msg      store commits per message, all relays
#                  (sms_conduit_store_commit_batch_size_count): the group
#                  commit batches less when each node has less load
# The background calls (a PING a second, the receipt stream polled 10 times
# a second per node) are in the deltas.
#
#   benches/fleet.sh [MESSAGES] [CONNECTIONS]
#
# Env: BIN (default target/release/sms-conduit), WARMUP (default 1000),
# KEEP=1 (keep the temp dir: configs, relay logs, bench outputs),
# RATE (each bench process sends at this many msg/s instead of flat out:
# RATE=1500 SETUPS="fleet1 fleet2" loads each node alike in both),
# SETUPS (default "single fleet1 fleet2"), DLR_OTHER=1 (sim-carrier
# --dlr-on-other-bind: every receipt on another bind than the submitting
# one; without it the simulator picks the least-loaded bind of the
# system_id, which in fleet2 is the other node's about half the time).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/relay-config.sh
N=${1:-20000}
C=${2:-64}
WARMUP=${WARMUP:-1000}
SETUPS=${SETUPS:-single fleet1 fleet2}
BIN=${BIN:-target/release/sms-conduit}
[ -x "$BIN" ] || cargo build --release
BINABS=$(realpath "$BIN")
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
work=$(mktemp -d)
PIDS=()
stop() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap stop EXIT
cp -r config/example "$work/example"
cd "$work"
KEY=$("$BINABS" keys new --client bench | sed -n 2p | tr -d ' ')
HASH=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)

# A loopback port nothing listens on, below the ephemeral range (other
# processes' outgoing connections take ports from that one).
USED=" "
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    case "$USED" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED="$USED$p "
      echo "$p"
      return
    fi
  done
}
# user+sys CPU of a process, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)

RPORT=$(free_port)
mkdir redis
redis-server --bind 127.0.0.1 --port "$RPORT" --dir "$work/redis" --save "" \
  --appendonly yes --appendfsync everysec --maxmemory-policy noeviction \
  > redis/out 2>&1 &
REDIS=$!
PIDS+=("$REDIS")
RCLI=(redis-cli -p "$RPORT")
for _ in $(seq 100); do "${RCLI[@]}" ping >/dev/null 2>&1 && break; sleep 0.1; done
rcmds() { "${RCLI[@]}" info stats | awk -F: '/^total_commands_processed/ {print $2+0}'; }

SIM_PORT=$(free_port)
sim_flags=()
[ "${DLR_OTHER:-}" = 1 ] && sim_flags+=(--dlr-on-other-bind)
"$BINABS" sim-carrier --listen "127.0.0.1:$SIM_PORT" --tls-cert example/server.crt \
  --tls-key example/server.key --system-id bench --password "$(cat example/carrier-a.pass)" \
  --dlr-delay-ms 200 "${sim_flags[@]}" > sim.out 2> sim.err &
SIM=$!
PIDS+=("$SIM")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$SIM_PORT") 2>/dev/null && break; sleep 0.1; done
kill -0 "$SIM" 2>/dev/null || { echo "sim-carrier did not start:" >&2; cat sim.err >&2; exit 1; }

# config NAME API_PORT MET_PORT FLEET_PREFIX (empty: no [fleet])
config() {
  mkdir -p "$1"
  relay_config "$1" "$work/$1/state" "$work/example" "$SIM_PORT" "$2" "$3" "$HASH" > "$1/c.toml"
  if [ -n "$4" ]; then
    printf '[fleet]\nredis_url = "redis://127.0.0.1:%s"\nkey_prefix = "%s"\n' "$RPORT" "$4" >> "$1/c.toml"
  fi
}

# The sum over the given metrics ports of the samples matching a regex.
metric_sum() {
  local re=$1 total=0 v
  shift
  for port in "$@"; do
    v=$(curl -s "http://127.0.0.1:$port/metrics" | awk -v re="$re" '$0 ~ re {s += $NF} END {printf "%d", s}')
    total=$((total + v))
  done
  echo "$total"
}
delivered() { metric_sum '^sms_conduit_messages_total[{].*direction="dlr".*outcome="delivered"' "$@"; }
forwarded() { metric_sum '^sms_conduit_messages_total[{].*direction="dlr".*outcome="forwarded"' "$@"; }
rtts() { metric_sum '^sms_conduit_shared_state_seconds_count' "$@"; }
commits() { metric_sum '^sms_conduit_store_commit_batch_size_count' "$@"; }
# "op calls" lines, summed over the given metrics ports.
rtt_ops() {
  for port in "$@"; do curl -s "http://127.0.0.1:$port/metrics"; done |
    sed -n 's/^sms_conduit_shared_state_seconds_count{op="\([a-z_]*\)"} \([0-9]*\)$/\1 \2/p' |
    awk '{s[$1] += $2} END {for (k in s) print k, s[k]}' | sort
}

bench() { # API_PORT MESSAGES CONNECTIONS OUT [RATE]
  local rate=()
  [ -n "${5:-}" ] && rate=(--rate "$5")
  "$BINABS" bench --url "https://127.0.0.1:$1" --api-key "$KEY" --ca-file example/server.crt \
    --campaign CBENCH1 --from +15551230001 --connections "$3" --messages "$2" "${rate[@]}" > "$4" 2> "$4.err"
}

# Waits until the relays on these metrics ports applied WANT receipts.
wait_receipts() {
  local want=$1
  shift
  for _ in $(seq 300); do
    [ "$(delivered "$@")" -ge "$want" ] && return 0
    sleep 0.1
  done
  echo "   (only $(delivered "$@") of $want receipts applied after 30 s)" >&2
}

ROWS=()
run_setup() { # NAME NODES FLEET(0/1)
  local name=$1 nodes=$2 fleet=$3 i prefix api=() met=() relays=()
  for i in $(seq "$nodes"); do
    api+=("$(free_port)")
    met+=("$(free_port)")
    prefix=""
    [ "$fleet" = 1 ] && prefix="bench:$name:"
    config "$name-n$i" "${api[-1]}" "${met[-1]}" "$prefix"
    RUST_LOG=warn "$BINABS" run --config "$name-n$i/c.toml" 2> "$name-n$i/relay.err" &
    relays+=($!)
    PIDS+=($!)
  done
  for i in $(seq 0 $((nodes - 1))); do
    for _ in $(seq 100); do curl -sfk "https://127.0.0.1:${api[$i]}/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -sfk "https://127.0.0.1:${api[$i]}/readyz" >/dev/null 2>&1 || {
      echo "$name node $((i + 1)) is not ready:" >&2
      tail -5 "$name-n$((i + 1))/relay.err" >&2
      exit 1
    }
  done
  # Warm-up: TLS sessions, connection pools, scripts loaded in Redis.
  local jobs_=()
  for i in $(seq 0 $((nodes - 1))); do
    bench "${api[$i]}" $((WARMUP / nodes)) "$C" "$name-warm$i.txt" &
    jobs_+=($!)
  done
  wait "${jobs_[@]}"
  wait_receipts $(((WARMUP / nodes) * nodes)) "${met[@]}"

  local cpu0=0 cpu1=0 r0 r1 c0 c1 t0 t1 q0 q1 f0 f1 k0 k1 sent=0 p
  for p in "${relays[@]}"; do cpu0=$((cpu0 + $(ticks "$p"))); done
  r0=$(ticks "$REDIS"); c0=$(rcmds); q0=$(rtts "${met[@]}"); f0=$(forwarded "${met[@]}"); k0=$(commits "${met[@]}")
  rtt_ops "${met[@]}" > "$name-ops0"
  local base
  base=$(delivered "${met[@]}")
  t0=$(date +%s.%N)
  jobs_=()
  for i in $(seq 0 $((nodes - 1))); do
    bench "${api[$i]}" $((N / nodes)) $((C / nodes)) "$name-run$i.txt" "${RATE:-}" &
    jobs_+=($!)
  done
  wait "${jobs_[@]}"
  t1=$(date +%s.%N)
  for i in $(seq 0 $((nodes - 1))); do
    sent=$((sent + $(awk '/^accepted/ {print $2}' "$name-run$i.txt")))
    grep -h '^refused' "$name-run$i.txt" | sed "s/^/   $name node $((i + 1)): /" || true
  done
  [ "$sent" -gt 0 ] || { echo "$name: nothing was accepted" >&2; exit 1; }
  wait_receipts $((base + sent)) "${met[@]}"
  for p in "${relays[@]}"; do cpu1=$((cpu1 + $(ticks "$p"))); done
  r1=$(ticks "$REDIS"); c1=$(rcmds); q1=$(rtts "${met[@]}"); f1=$(forwarded "${met[@]}"); k1=$(commits "${met[@]}")
  rtt_ops "${met[@]}" > "$name-ops1"
  local row
  row=$(awk -v n="$sent" -v t0="$t0" -v t1="$t1" -v cpu=$((cpu1 - cpu0)) -v r=$((r1 - r0)) \
    -v c=$((c1 - c0)) -v q=$((q1 - q0)) -v f=$((f1 - f0)) -v k=$((k1 - k0)) -v tck="$TCK" -v name="$name" -v nodes="$nodes" \
    'BEGIN {
       if (n == 0) n = 1;
       printf "%-7s %5d %7d %8.0f %9.1f %9.1f %7.2f %8.2f %6d %9.3f",
         name, nodes, n, n / (t1 - t0), cpu / tck / n * 1e6, r / tck / n * 1e6,
         q / n, (c - 1) / n, f, k / n
     }')
  ROWS+=("$row")
  echo "$row"
  if [ "$fleet" = 1 ]; then
    # Round trips per message by operation.
    join -a 2 -e 0 -o 0,1.2,2.2 "$name-ops0" "$name-ops1" |
      awk -v n="$sent" '$3 > $2 {printf " %s %.2f", $1, ($3 - $2) / n} END {print ""}' |
      sed "s/^/   rtt\/msg by op:/"
  fi
  for p in "${relays[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${relays[@]}"; do wait "$p" 2>/dev/null || true; done
}

HEADER=$(printf "%-7s %5s %7s %8s %9s %9s %7s %8s %6s %9s" setup nodes msgs "msg/s" "relay µs" "redis µs" "rtt/msg" "cmds/msg" fwd "fsync/msg")
echo "== $N messages, $C connections in all, ${RATE:+$RATE msg/s per node, }warm-up $WARMUP; sim receipts after 200 ms${DLR_OTHER:+, on another bind}"
echo "$HEADER"
for s in $SETUPS; do
  case "$s" in
    single) run_setup single 1 0 ;;
    fleet1) run_setup fleet1 1 1 ;;
    fleet2) run_setup fleet2 2 1 ;;
    *) echo "unknown set-up $s" >&2; exit 2 ;;
  esac
done
echo "== summary (relay and redis: µs of CPU per message, user+sys)"
echo "$HEADER"
printf '%s\n' "${ROWS[@]}"
