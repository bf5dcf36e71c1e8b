#!/usr/bin/env bash
# sms-conduit against Kannel 1.4.5 (Debian's build) on the same machine, same
# simulated carrier (`sms-conduit sim-carrier --dlr-delay-ms 200`), same
# messages, delivery receipts requested by both. All on loopback.
#
#   benches/compare/kannel.sh [MESSAGES]          (default 20000)
#
# Kannel: its own HTTP interface (GET /cgi-bin/sendsms, plain HTTP) driven by
# wrk with a Lua script (exactly MESSAGES requests, CONNECTIONS keep-alive
# connections); bearerbox → sim over SMPP, once over TLS and once plaintext
# (KANNEL_SMPP="tls plain"). sms-conduit: HTTPS API driven by
# `sms-conduit bench`, relay → sim over SMPP/TLS.
#
# Measured per system: wall time from the first request to the moment the
# system's own counter shows MESSAGES submits answered OK by the sim (Kannel's
# status page `sent`, the relay's `sms_conduit_messages_total{outcome=
# "accepted"}`, which moves only after submit_sm_resp), polled every 50 ms;
# CPU seconds (user+sys from /proc/PID/stat) of bearerbox+smsbox or of the
# relay, from before the first request until every delivery receipt has been
# received, per 1,000 messages; peak RSS (VmHWM, summed over the processes).
# Then one canary message goes through each system and the script counts
# the lines holding its text in that system's logs and state.
#
# Env: BIN (default target/release/sms-conduit), CONNECTIONS (64),
# KANNEL_SMPP ("tls plain"), KEEP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20000}
C=${CONNECTIONS:-64}
KANNEL_SMPP=${KANNEL_SMPP:-tls plain}
BIN=${BIN:-target/release/sms-conduit}
[ -x "$BIN" ] || cargo build --release
BINABS=$(realpath "$BIN")

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
PORT=$((30000 + RANDOM % 20000))
next_port() { PORT=$((PORT + 1)); } # sets PORT (no subshell: it must persist)

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
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
# Lines holding the canary, summed over every file under the given paths.
# (The simulated carrier's and the load generators' files are not the system's.)
SKIP=(--exclude='sim.*' --exclude=wrk.out --exclude=bench.out)
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
row() { # name wall_s cpu_ticks hwm_kb
  RESULTS+=("$(awk -v n="$1" -v m="$N" -v w="$2" -v t="$3" -v k="$4" -v hz="$TICK" \
    'BEGIN {printf "%s|%d|%.2f|%.0f|%.3f|%.1f", n, m, w, m / w, t / hz / m * 1000, k / 1024}')")
}

run_kannel() { # tls|plain
  local mode=$1 dir="$work/kannel-$1" ssl="" admin box http bb sb t0 t1 c0 c1 canary wrk_pid
  mkdir -p "$dir"
  start_sim "$dir" "$mode"
  next_port; admin=$PORT; next_port; box=$PORT; next_port; http=$PORT
  [ "$mode" = tls ] && ssl="use-ssl = true"
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
  wait_count kannel_online 2 30
  local base="/cgi-bin/sendsms?username=bench&password=bench-pw&from=%2B15551230001&dlr-mask=3&text=$TEXT_Q"

  echo "== Kannel $KANNEL_VERSION, SMPP $mode: $N messages, $C connections (wrk)"
  c0=$(ticks $bb $sb); t0=$(now)
  WRK_MESSAGES=$N WRK_THREADS=2 WRK_PATH=$base \
    wrk -t2 -c"$C" -d600s --timeout 60s -s "$work/sendsms.lua" "http://127.0.0.1:$http" > "$dir/wrk.out" 2>&1 &
  wrk_pid=$!; PIDS+=($wrk_pid)
  wait_count kannel_sent "$N" 600
  t1=$(now)
  # wrk's threads are done; its main thread sleeps out -d unless interrupted.
  for _ in $(seq 100); do grep -q '^wrk:' "$dir/wrk.out" && break; kill -INT $wrk_pid 2>/dev/null || true; sleep 0.1; done
  wait $wrk_pid 2>/dev/null || true
  grep -E '^wrk:|Socket errors' "$dir/wrk.out" || true
  wait_count kannel_dlrs "$N" 60
  sleep 0.3
  c1=$(ticks $bb $sb)
  row "Kannel $KANNEL_VERSION (SMPP $mode)" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" $((c1 - c0)) "$(hwm $bb $sb)"
  curl -sf "$status" | grep -E '^(SMS|DLR): received' | sed 's/^/kannel status: /'

  canary="CANARY-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
  curl -sf "http://127.0.0.1:$http/cgi-bin/sendsms?username=bench&password=bench-pw&from=%2B15551230001&to=%2B15559990000&dlr-mask=3&text=$canary" >/dev/null
  wait_count kannel_sent $((N + 1)) 30
  wait_count kannel_dlrs $((N + 1)) 30
  stop $sb; stop $bb; stop $SIM_PID
  echo "sim: $(cat "$dir/sim.out")"
  CANARY+=("Kannel (SMPP $mode)|$canary|$(canary_lines "$canary" "$dir")|$(canary_files "$canary" "$dir")")
  echo
}

run_conduit() {
  local dir="$work/conduit" key hash api met relay t0 t1 c0 c1 canary bench_pid
  mkdir -p "$dir"
  cp -r "$work/example" "$dir/example"
  start_sim "$dir" tls
  next_port; api=$PORT; next_port; met=$PORT
  key=$("$BINABS" keys new --client bench | sed -n 2p | tr -d ' ')
  hash=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
  cat > "$dir/c.toml" <<TOML
[node]
id = "bench"
state_dir = "state"
pseudonym_key_file = "example/pseudonym.key"
[tls]
cert_file = "example/server.crt"
key_file = "example/server.key"
[api]
listen = "127.0.0.1:$api"
max_connections = 1024
[metrics]
listen = "127.0.0.1:$met"
[[carriers]]
name = "sim"
host = "127.0.0.1"
port = $SIM_PORT
system_id = "bench"
password_file = "example/carrier-a.pass"
ca_file = "example/server.crt"
server_name = "localhost"
binds = 2
window = 256
prefixes = ["+1"]
[[brands]]
id = "BBENCH1"
[[campaigns]]
id = "CBENCH1"
brand = "BBENCH1"
numbers = ["+15551230001"]
segments_per_minute = 1000000
burst = 1000000
help_text = "help"
stop_text = "stop"
start_text = "start"
[[clients]]
id = "bench"
key_sha256 = ["$hash"]
campaigns = ["CBENCH1"]
TOML
  (cd "$dir" && RUST_LOG=warn exec "$BINABS" run --config c.toml > relay.out 2> relay.err) &
  relay=$!; PIDS+=($relay)
  for _ in $(seq 200); do curl -sf --cacert "$work/example/server.crt" "https://127.0.0.1:$api/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
  local metrics="http://127.0.0.1:$met/metrics"
  conduit_sent() { curl -sf "$metrics" | awk '/^sms_conduit_messages_total\{/ && /direction="mt"/ && /outcome="accepted"/ {s += $NF} END {print s + 0}'; }
  conduit_dlrs() { curl -sf "$metrics" | awk '/^sms_conduit_smpp_pdus_total\{/ && /deliver_sm"/ && /in"/ {s += $NF} END {print s + 0}'; }

  echo "== sms-conduit, SMPP tls: $N messages, $C connections (sms-conduit bench, HTTPS)"
  c0=$(ticks $relay); t0=$(now)
  "$BINABS" bench --url "https://127.0.0.1:$api" --api-key "$key" --ca-file "$work/example/server.crt" \
    --campaign CBENCH1 --from +15551230001 --text "$TEXT" --messages "$N" --connections "$C" \
    --relay-pid $relay > "$dir/bench.out" 2>&1 &
  bench_pid=$!; PIDS+=($bench_pid)
  wait_count conduit_sent "$N" 600
  t1=$(now)
  wait $bench_pid
  grep -vE '^\s*$' "$dir/bench.out" | sed 's/^/bench: /' | tr -d '\r' | grep -v 'bench: .*\[' || true
  wait_count conduit_dlrs "$N" 60 || true
  sleep 0.3
  c1=$(ticks $relay)
  row "sms-conduit (SMPP tls)" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" $((c1 - c0)) "$(hwm $relay)"
  curl -sf "$metrics" | grep -E '^sms_conduit_(messages_total|smpp_pdus_total)' | sed 's/^/relay metrics: /'

  canary="CANARY-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
  curl -sf --cacert "$work/example/server.crt" "https://127.0.0.1:$api/v1/messages" \
    -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d "{\"from\":\"+15551230001\",\"to\":\"+15559990000\",\"text\":\"$canary\",\"campaign_id\":\"CBENCH1\"}" >/dev/null
  wait_count conduit_sent $((N + 1)) 30
  wait_count conduit_dlrs $((N + 1)) 30 || true
  sleep 0.3
  stop $relay; stop $SIM_PID
  echo "sim: $(cat "$dir/sim.out")"
  CANARY+=("sms-conduit|$canary|$(canary_lines "$canary" "$dir")|$(canary_files "$canary" "$dir")")
  echo
}

echo "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
CANARY=()
for m in $KANNEL_SMPP; do run_kannel "$m"; done
run_conduit

echo "== $N messages each; $(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)); load generator on the same cores"
{
  echo "system|messages|wall s|msg/s|CPU s per 1000 msgs|peak RSS MB"
  printf '%s\n' "${RESULTS[@]}"
} | column -t -s'|'
echo
conduit=${RESULTS[-1]}
for r in "${RESULTS[@]:0:${#RESULTS[@]}-1}"; do
  awk -F'|' -v k="$r" -v s="$conduit" 'BEGIN {
    split(k, a, "|"); split(s, b, "|")
    printf "vs %s: throughput sms-conduit/Kannel %.2fx, CPU per msg Kannel/sms-conduit %.2fx, peak RSS Kannel/sms-conduit %.2fx\n",
      a[1], b[4] / a[4], a[5] / b[5], a[6] / b[6] }'
done
echo
echo "== canary: one extra message per system; lines holding its text in that system's logs and state"
for c in "${CANARY[@]}"; do
  IFS='|' read -r name text lines files <<< "$c"
  printf '%-22s %s  %s lines  %s\n' "$name" "$text" "$lines" "${files:+($files)}"
done
