#!/usr/bin/env bash
# sms-conduit against Kannel 1.4.5 (Debian's build) on the same machine, same
# simulated carrier (`sms-conduit sim-carrier --dlr-delay-ms 200`), same
# messages, all on loopback, at the same fixed rates and flat out in one
# sitting, with a receipt for every message and that receipt delivered to
# the client by both systems:
#
#   benches/compare/kannel.sh [MESSAGES]   (default 20000, the flat-out run)
#
# For each load (RATES, default "1000 3000" msg/s for RATE_SECONDS s each,
# then flat out with MESSAGES messages), Kannel then sms-conduit, each on a
# fresh instance and a fresh simulator:
#
# Kannel: bearerbox + smsbox, its own HTTP interface (GET /cgi-bin/sendsms,
# plain HTTP) with `dlr-mask=3` and a `dlr-url` that points at
# benches/compare/callback-sink.js (node, 127.0.0.1): smsbox calls it for
# every receipt, and the sink counts the calls. Fixed rates: driven by
# benches/compare/paced.js (node, keep-alive agent, CONNECTIONS sockets,
# the same pacing design as `sms-conduit bench --rate`); flat out: wrk with
# a Lua script (exactly MESSAGES requests over CONNECTIONS connections).
# bearerbox → sim over SMPP/TLS (KANNEL_SMPP="tls plain" adds plaintext).
# No message store unless KANNEL_STORE=spool.
#
# sms-conduit: HTTPS API driven by `sms-conduit bench` (`--rate R` at a
# fixed rate), relay → sim over SMPP/TLS; the client has a `webhook_url`,
# so every receipt goes out as a signed HTTPS webhook, received and
# verified by the bench itself (`--webhook-sink`), which waits for all of
# them before it exits.
#
# Measured per system and load: answered msg/s (the load generator's);
# end to end: wall time from launching the load generator until the last
# receipt's callback/webhook is in (Kannel: the sink's count, polled every
# 50 ms; sms-conduit: the bench's exit); CPU seconds (user+sys from
# /proc/PID/stat) of bearerbox+smsbox or of the relay over that same window,
# and µs of CPU per message; p50/p99 request latency from the load
# generator; the callback sink's own CPU; the simulator's CPU over the same
# window (the same work for both systems). Then, after the flat-out run, one
# canary message goes through each system and the script counts the lines
# holding its text in that system's logs and state.
#
# Env: BIN (default target/release/sms-conduit), RATES ("1000 3000"),
# RATE_SECONDS (10), CONNECTIONS (64), KANNEL_SMPP ("tls"), KANNEL_STORE
# ("" or spool), FLAT=0 skips the flat-out run, KEEP=1 keeps the work
# directory, STALL (5): how long Kannel's callback count may stand still
# before the run stops waiting for the missing ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/lib/relay-config.sh
N=${1:-20000}
C=${CONNECTIONS:-64}
RATES=${RATES:-1000 3000}
RATE_SECONDS=${RATE_SECONDS:-10}
KANNEL_SMPP=${KANNEL_SMPP:-tls}
KANNEL_STORE=${KANNEL_STORE:-}
HERE=$(realpath benches/compare)
BIN=${BIN:-target/release/sms-conduit}
[ -x "$BIN" ] || cargo build --release
BINABS=$(realpath "$BIN")

command -v node >/dev/null || { echo "node is needed (paced client, callback sink)" >&2; exit 1; }
if ! command -v bearerbox >/dev/null || ! command -v smsbox >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kannel wrk >/dev/null
fi
KANNEL_VERSION=$(dpkg-query -W -f '${Version}' kannel 2>/dev/null || echo '?')

work=$(mktemp -d)
PIDS=()
cleanup() {
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-}" = 1 ]; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
cp -r config/example "$work/example"
PASS=$(cat "$work/example/carrier-a.pass")
TICK=$(getconf CLK_TCK)
TEXT="Reminder: your appointment is tomorrow at 10:00. Reply STOP to opt out."
TEXT_Q=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote_plus(sys.argv[1]))' "$TEXT")
# Below the ephemeral range (32768-60999 here), as relay.sh and fleet.sh
# pick theirs: a port in that range may be the local end of a connection,
# which next_port's probe cannot see and a listener's bind then fails on
# (two of three runs once stopped at "sim-carrier did not start").
PORT=$((20000 + RANDOM % 10000))
# Sets PORT (no subshell: it must persist) to the next port nothing listens on
# (other benchmarks may share the machine).
next_port() {
  PORT=$((PORT + 1))
  while (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
}

now() { date +%s.%N; }
# user+sys clock ticks of the given PIDs, summed.
ticks() { local t=0 p; for p; do t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}'))); done; echo $t; }
# VmHWM of the given PIDs in kB, summed.
hwm() { local k=0 p; for p; do k=$((k + $(awk '/^VmHWM/ {print $2}' "/proc/$p/status"))); done; echo $k; }
# Poll a command printing a number until it reaches $2 (timeout $3 s).
wait_count() {
  local cmd=$1 want=$2 limit=$3 start v
  start=$(date +%s)
  while :; do
    v=$($cmd 2>/dev/null || true)
    [ -n "$v" ] && [ "$v" -ge "$want" ] && return 0
    [ $(($(date +%s) - start)) -ge "$limit" ] && { echo "timed out waiting for $cmd >= $want (at ${v:-?})" >&2; return 1; }
    sleep 0.05
  done
}
# Poll a command printing a number until it reaches $2, or until it has not
# moved for $3 s (some receipts never come); sets LAST_MOVE to the time
# (now) of the last poll at which the number had moved.
wait_progress() {
  local cmd=$1 want=$2 stall=$3 v last=-1 since
  since=$(date +%s); LAST_MOVE=$(now)
  while :; do
    v=$($cmd 2>/dev/null || true); v=${v:-0}
    [ "$v" -ge "$want" ] && { LAST_MOVE=$(now); return 0; }
    if [ "$v" != "$last" ]; then last=$v; since=$(date +%s); LAST_MOVE=$(now); fi
    [ $(($(date +%s) - since)) -ge "$stall" ] && { echo "$cmd: stuck at $v of $want for ${stall} s" >&2; return 1; }
    sleep 0.05
  done
}
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
# Forget a PID once its process is reaped, so that the exit trap never
# signals a reused one.
forget() { local p keep=(); for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; PIDS=("${keep[@]}"); }
stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; forget "$1"; }
# Lines holding the canary, summed over every file under the given paths.
# (The simulated carrier's and the load generators' files are not the system's.)
SKIP=(--exclude='sim.*' --exclude=wrk.out --exclude=bench.out --exclude=paced.out --exclude='sink.*')
canary_lines() { grep -rac "${SKIP[@]}" -- "$1" "$2" 2>/dev/null | awk -F: '{s += $NF} END {print s + 0}'; }
canary_files() { grep -ral "${SKIP[@]}" -- "$1" "$2" 2>/dev/null | sed "s|$2/||" | paste -sd' ' || true; }

start_sim() { # dir tls|plain → SIM_PID, SIM_PORT
  local dir=$1 tls=()
  [ "$2" = tls ] && tls=(--tls-cert "$work/example/server.crt" --tls-key "$work/example/server.key")
  next_port; SIM_PORT=$PORT
  "$BINABS" sim-carrier --listen 127.0.0.1:$SIM_PORT "${tls[@]}" --system-id bench --password "$PASS" \
    --dlr-delay-ms 200 > "$dir/sim.out" 2> "$dir/sim.err" &
  SIM_PID=$!; PIDS+=($SIM_PID)
  for _ in $(seq 200); do grep -q '^sim-carrier listening' "$dir/sim.err" && return 0; sleep 0.05; done
  echo "sim-carrier did not start" >&2; return 1
}

# wrk: exactly $WRK_MESSAGES sendsms requests over all threads, a distinct
# recipient each; a thread stops once its share is answered.
cat > "$work/sendsms.lua" <<'LUA'
local threads, nthreads = {}, 0
function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
  table.insert(threads, thread)
end
function init(args)
  local n = tonumber(os.getenv("WRK_THREADS"))
  local total = tonumber(os.getenv("WRK_MESSAGES"))
  path = os.getenv("WRK_PATH")
  quota = math.floor(total / n)
  if tid == 1 then quota = quota + total % n end
  issued, ok, bad, spare = 0, 0, 0, 0
  -- wrk calls request() once in thread 1's state to check the script before
  -- the run; that request is never sent, so it must not count.
  probed = tid ~= 1
end
function request()
  if probed and issued < quota then
    issued = issued + 1
    return wrk.format("GET", string.format("%s&to=%%2B1555%d%06d", path, tid, issued))
  end
  probed = true
  return wrk.format("GET", "/cgi-bin/none") -- 404, nothing sent
end
function delay()
  if issued >= quota then return 600000 end -- the share is out: idle
  return 0
end
function response(status, headers, body)
  if status == 202 then ok = ok + 1 elseif status == 404 then spare = spare + 1 else bad = bad + 1 end
  if ok + bad >= quota then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local o, b = 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); b = b + t:get("bad") end
  io.write(string.format("wrk: %d accepted (202), %d refused; latency p50 %.2f ms p99 %.2f ms max %.2f ms\n",
    o, b, latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
LUA

RESULTS=()
# system load messages answered_msg_s e2e_s cpu_ticks p50_ms p99_ms callbacks sink_ticks hwm_kb sim_ticks
row() {
  RESULTS+=("$(awk -v n="$1" -v l="$2" -v m="$3" -v a="$4" -v w="$5" -v t="$6" -v p50="$7" -v p99="$8" \
    -v cb="$9" -v st="${10}" -v k="${11}" -v sm="${12}" -v hz="$TICK" \
    'BEGIN {printf "%s|%s|%d|%.0f|%.2f|%.0f|%.2f|%.0f|%s|%s|%d|%s|%.1f|%.0f", n, l, m, a, w, m / w, t / hz, t / hz / m * 1e6,
      p50, p99, cb, (st == "-" ? "-" : sprintf("%.0f", st / hz / m * 1e6)), k / 1024, sm / hz / m * 1e6}')")
}
# A callback sink (node) on a fresh port → CB_PID, CB_PORT.
start_callback_sink() { # dir
  next_port; CB_PORT=$PORT
  node "$HERE/callback-sink.js" $CB_PORT > "$1/sink.out" 2> "$1/sink.err" &
  CB_PID=$!; PIDS+=($CB_PID)
  wait_port $CB_PORT
}

run_kannel() { # tls|plain rate(0 = flat out) messages canary(0|1)
  local mode=$1 rate=$2 n=$3 want_canary=$4 ssl="" store="" admin box http bb sb t0 t1 c0 c1 s0 s1 canary gen_pid
  local load dir
  if [ "$rate" = 0 ]; then load="flat out"; else load="$rate/s"; fi
  dir="$work/kannel-$mode-$rate"
  mkdir -p "$dir"
  start_sim "$dir" "$mode"
  start_callback_sink "$dir"
  next_port; admin=$PORT; next_port; box=$PORT; next_port; http=$PORT
  [ "$mode" = tls ] && ssl="use-ssl = true"
  if [ "$KANNEL_STORE" = spool ]; then
    mkdir -p "$dir/spool"
    store="store-type = spool
store-location = \"$dir/spool\""
  fi
  {
    cat <<CONF
group = core
admin-port = $admin
admin-password = "admin-$RANDOM$RANDOM"
status-password = status
admin-allow-ip = "127.0.0.1"
smsbox-port = $box
box-allow-ip = "127.0.0.1"
log-file = "$dir/bearerbox.log"
log-level = 2
access-log = "$dir/access.log"
dlr-storage = internal
ssl-trusted-ca-file = "$work/example/server.crt"
$store

CONF
    # Two binds with a window of 256 each, as the relay is configured below.
    for i in 1 2; do
      cat <<CONF
group = smsc
smsc = smpp
smsc-id = sim
smsc-admin-id = sim$i
host = 127.0.0.1
port = $SIM_PORT
transceiver-mode = true
smsc-username = bench
smsc-password = "$PASS"
system-type = ""
max-pending-submits = 256
$ssl

CONF
    done
    cat <<CONF
group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = $box
sendsms-port = $http
log-file = "$dir/smsbox.log"
log-level = 2
access-log = "$dir/smsbox-access.log"

group = sendsms-user
username = bench
password = bench-pw

group = sms-service
keyword = default
text = "No service"
CONF
  } > "$dir/kannel.conf"
  # -v 4: console output only on panic (the default is debug, which costs a
  # lot); the log files get warnings and errors (log-level = 2).
  bearerbox -v 4 "$dir/kannel.conf" > "$dir/bearerbox.console" 2>&1 &
  bb=$!; PIDS+=($bb)
  wait_port "$admin"
  smsbox -v 4 "$dir/kannel.conf" > "$dir/smsbox.console" 2>&1 &
  sb=$!; PIDS+=($sb)
  wait_port "$http"
  local status="http://127.0.0.1:$admin/status.txt?password=status"
  kannel_online() { curl -sf "$status" | grep -c '(online '; }
  kannel_sent() { curl -sf "$status" | sed -n 's/^SMS: received [0-9]* ([0-9]* queued), sent \([0-9]*\) .*/\1/p'; }
  kannel_dlrs() { curl -sf "$status" | sed -n 's/^DLR: received \([0-9]*\),.*/\1/p'; }
  callbacks() { curl -sf "http://127.0.0.1:$CB_PORT/count"; }
  wait_count kannel_online 2 30
  # dlr-mask=3: final receipts (delivered or not); smsbox calls the dlr-url
  # (%d: the report's type) for each one.
  local dlr_url="http%3A%2F%2F127.0.0.1%3A$CB_PORT%2Fdlr%3Fs%3D%25d"
  local base="/cgi-bin/sendsms?username=bench&password=bench-pw&from=%2B15551230001&dlr-mask=3&dlr-url=$dlr_url&text=$TEXT_Q"

  local p50 p99 answered out
  c0=$(ticks $bb $sb); s0=$(ticks $CB_PID); m0=$(ticks $SIM_PID); t0=$(now)
  if [ "$rate" = 0 ]; then
    echo "== Kannel $KANNEL_VERSION, SMPP $mode, store ${KANNEL_STORE:-none}: flat out, $n messages, $C connections (wrk)"
    WRK_MESSAGES=$n WRK_THREADS=2 WRK_PATH=$base \
      wrk -t2 -c"$C" -d600s --timeout 60s -s "$work/sendsms.lua" "http://127.0.0.1:$http" > "$dir/wrk.out" 2>&1 &
    gen_pid=$!; PIDS+=($gen_pid)
    wait_count kannel_sent "$n" 600
    local ts=$(now)
    # wrk's threads are done; its main thread sleeps out -d unless interrupted.
    for _ in $(seq 100); do grep -q '^wrk:' "$dir/wrk.out" && break; kill -INT $gen_pid 2>/dev/null || true; sleep 0.1; done
    wait $gen_pid 2>/dev/null || true; forget $gen_pid
    out=$(grep -E '^wrk:|Socket errors' "$dir/wrk.out" || true)
    # wrk's own timing ends at the interrupt: the submits' wall time stands in.
    answered=$(awk -v m="$n" -v a="$t0" -v b="$ts" 'BEGIN {print m / (b - a)}')
    p50=$(sed -n 's/.*p50 \([0-9.]*\) ms.*/\1/p' <<< "$out"); p99=$(sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p' <<< "$out")
  else
    echo "== Kannel $KANNEL_VERSION, SMPP $mode, store ${KANNEL_STORE:-none}: $rate msg/s, $n messages, $C connections (paced.js)"
    node "$HERE/paced.js" "http://127.0.0.1:$http$base" "$n" "$rate" "$C" > "$dir/paced.out" 2>&1 &
    gen_pid=$!; PIDS+=($gen_pid)
    wait $gen_pid || true; forget $gen_pid
    out=$(cat "$dir/paced.out")
    answered=$(sed -n 's/.* \([0-9]*\) msg\/s.*/\1/p' <<< "$out")
    p50=$(sed -n 's/.*p50 \([0-9.]*\) ms.*/\1/p' <<< "$out"); p99=$(sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p' <<< "$out")
  fi
  echo "$out"
  # Until the last callback; if some never come, until the last one that
  # did (the CPU then includes the STALL s of waiting, mostly idle).
  wait_progress callbacks "$n" "${STALL:-5}" || true
  t1=$LAST_MOVE; c1=$(ticks $bb $sb); s1=$(ticks $CB_PID); m1=$(ticks $SIM_PID)
  local cb; cb=$(callbacks)
  echo "callbacks received: $cb"
  curl -sf "$status" | grep -E '^(SMS|DLR): received' | sed 's/^/kannel status: /'
  row "Kannel $KANNEL_VERSION (SMPP $mode)" "$load" "$n" "${answered:-0}" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
    $((c1 - c0)) "${p50:--}" "${p99:--}" "$cb" $((s1 - s0)) "$(hwm $bb $sb)" $((m1 - m0))

  if [ "$want_canary" = 1 ]; then
    canary="CANARY-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
    curl -sf "http://127.0.0.1:$http/cgi-bin/sendsms?username=bench&password=bench-pw&from=%2B15551230001&to=%2B15559990000&dlr-mask=3&dlr-url=$dlr_url&text=$canary" >/dev/null
    wait_count kannel_sent $((n + 1)) 30
    wait_progress callbacks $((n + 1)) "${STALL:-5}" || true
    CANARY+=("Kannel (SMPP $mode)|$canary|$(canary_lines "$canary" "$dir")|$(canary_files "$canary" "$dir")")
  fi
  stop $sb; stop $bb; stop $SIM_PID; stop $CB_PID
  echo "sim: $(cat "$dir/sim.out")"
  cat "$dir/sink.out"
  [ "${KEEP:-}" = 1 ] || rm -rf "$dir"
  echo
}

run_conduit() { # rate(0 = flat out) messages canary(0|1)
  local rate=$1 n=$2 want_canary=$3 key hash api met sinkp relay t0 t1 c0 c1 canary load dir
  if [ "$rate" = 0 ]; then load="flat out"; else load="$rate/s"; fi
  dir="$work/conduit-$rate"
  mkdir -p "$dir"
  cp -r "$work/example" "$dir/example"
  start_sim "$dir" tls
  next_port; api=$PORT; next_port; met=$PORT; next_port; sinkp=$PORT
  key=$("$BINABS" keys new --client bench | sed -n 2p | tr -d ' ')
  hash=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
  {
    relay_config bench state example "$SIM_PORT" "$api" "$met" "$hash"
    printf 'webhook_url = "https://127.0.0.1:%s/events"\nwebhook_secret_file = "example/clinic-app.whsec"\nwebhook_ca_file = "example/server.crt"\n' "$sinkp"
  } > "$dir/c.toml"
  (cd "$dir" && RUST_LOG=warn exec "$BINABS" run --config c.toml > relay.out 2> relay.err) &
  relay=$!; PIDS+=($relay)
  for _ in $(seq 200); do curl -sf --cacert "$work/example/server.crt" "https://127.0.0.1:$api/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
  kill -0 $relay 2>/dev/null || { echo "the relay exited:" >&2; cat "$dir/relay.err" >&2; exit 1; }
  local metrics="http://127.0.0.1:$met/metrics"
  conduit_sent() { curl -sf "$metrics" | awk '/^sms_conduit_messages_total\{/ && /direction="mt"/ && /outcome="accepted"/ {s += $NF} END {print s + 0}'; }
  conduit_dlrs() { curl -sf "$metrics" | awk '/^sms_conduit_smpp_pdus_total\{/ && /deliver_sm"/ && /in"/ {s += $NF} END {print s + 0}'; }

  local ratearg=() out answered p50 p99 wh
  if [ "$rate" = 0 ]; then
    echo "== sms-conduit, SMPP tls, webhooks: flat out, $n messages, $C connections (sms-conduit bench, HTTPS)"
  else
    echo "== sms-conduit, SMPP tls, webhooks: $rate msg/s, $n messages, $C connections (sms-conduit bench --rate, HTTPS)"
    ratearg=(--rate "$rate")
  fi
  c0=$(ticks $relay); m0=$(ticks $SIM_PID); t0=$(now)
  # The bench receives and verifies every webhook and exits once all are in.
  (cd "$dir" && exec "$BINABS" bench --url "https://127.0.0.1:$api" --api-key "$key" --ca-file example/server.crt \
    --campaign CBENCH1 --from +15551230001 --text "$TEXT" --messages "$n" --connections "$C" "${ratearg[@]}" \
    --relay-pid $relay --webhook-sink "127.0.0.1:$sinkp" --sink-cert example/server.crt --sink-key example/server.key \
    --webhook-secret-file example/clinic-app.whsec > bench.out 2>&1) || true
  t1=$(now); c1=$(ticks $relay); m1=$(ticks $SIM_PID)
  out=$(grep -vE '^\s*$' "$dir/bench.out" | tr -d '\r' | grep -v '\[' || true)
  sed 's/^/bench: /' <<< "$out"
  answered=$(awk '/^throughput/ {print $2}' <<< "$out")
  p50=$(sed -n 's/^latency *p50 \([0-9.]*\) ms.*/\1/p' <<< "$out"); p99=$(sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p' <<< "$out")
  wh=$(awk '/^webhooks/ {print $2}' <<< "$out")
  curl -sf "$metrics" | grep -E '^sms_conduit_(messages_total|store_commit_batch_size_(sum|count))' | sed 's/^/relay metrics: /'
  row "sms-conduit (SMPP tls)" "$load" "$n" "${answered:-0}" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
    $((c1 - c0)) "${p50:--}" "${p99:--}" "${wh:-0}" - "$(hwm $relay)" $((m1 - m0))

  if [ "$want_canary" = 1 ]; then
    canary="CANARY-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
    curl -sf --cacert "$work/example/server.crt" "https://127.0.0.1:$api/v1/messages" \
      -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
      -d "{\"from\":\"+15551230001\",\"to\":\"+15559990000\",\"text\":\"$canary\",\"campaign_id\":\"CBENCH1\"}" >/dev/null
    wait_count conduit_sent $((n + 1)) 30
    wait_count conduit_dlrs $((n + 1)) 30 || true
    sleep 0.3
  fi
  stop $relay; stop $SIM_PID
  [ "$want_canary" = 1 ] && CANARY+=("sms-conduit|$canary|$(canary_lines "$canary" "$dir")|$(canary_files "$canary" "$dir")")
  echo "sim: $(cat "$dir/sim.out")"
  [ "${KEEP:-}" = 1 ] || rm -rf "$dir"
  echo
}

echo "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
CANARY=()
LOADS=()
for r in $RATES; do LOADS+=("$r $((r * RATE_SECONDS))"); done
[ "${FLAT:-1}" = 0 ] || LOADS+=("0 $N")
for l in "${LOADS[@]}"; do
  read -r rate n <<< "$l"
  canary=0; [ "$rate" = 0 ] && canary=1
  for m in $KANNEL_SMPP; do run_kannel "$m" "$rate" "$n" $canary; done
  run_conduit "$rate" "$n" $canary
done

echo "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)); load generators and sinks on the same cores; Kannel store: ${KANNEL_STORE:-none}"
echo "   e2e: from launching the load generator until the last receipt's callback (Kannel) or verified webhook (sms-conduit)"
echo "   CPU: bearerbox+smsbox or the relay, user+sys over e2e; sink µs/msg: Kannel's callback sink (node), the bench's sink is in the bench;"
echo "   sim µs/msg: the simulated carrier over the same window, the same work for both systems (when it moves, the sitting did)"
{
  echo "system|load|messages|answered msg/s|e2e s|e2e msg/s|CPU s|µs CPU/msg|p50 ms|p99 ms|callbacks|sink µs/msg|peak RSS MB|sim µs/msg"
  printf '%s\n' "${RESULTS[@]}"
} | column -t -s'|'
echo
# Per load: sms-conduit against each Kannel row of the same load.
for r in "${RESULTS[@]}"; do
  case $r in sms-conduit*) ;; *) continue ;; esac
  IFS='|' read -r _ sload _ _ _ se2e _ sus _ <<< "$r"
  for k in "${RESULTS[@]}"; do
    case $k in sms-conduit*) continue ;; esac
    IFS='|' read -r kname kload _ _ _ ke2e _ kus _ <<< "$k"
    [ "$kload" = "$sload" ] || continue
    awk -v l="$sload" -v n="$kname" -v su="$sus" -v ku="$kus" -v se="$se2e" -v ke="$ke2e" 'BEGIN {
      printf "%-9s vs %s: CPU per msg sms-conduit/Kannel %.2f (Kannel/sms-conduit %.2fx); e2e msg/s sms-conduit/Kannel %.2fx\n",
        l, n, su / ku, ku / su, se / ke }'
  done
done
echo
echo "== canary: one extra message per system after the flat-out run; lines holding its text in that system's logs and state"
for c in "${CANARY[@]}"; do
  IFS='|' read -r name text lines files <<< "$c"
  printf '%-22s %s  %s lines  %s\n' "$name" "$text" "$lines" "${files:+($files)}"
done
