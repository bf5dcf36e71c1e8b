#!/usr/bin/env bash
# Compares release builds on the whole path, in alternating runs of one
# sitting: on a shared VM the same build's relay CPU per message moves by
# ±10% within minutes and by more over a day, so only runs interleaved with
# each other compare (BENCHMARKS.md).
#
#   benches/ab.sh PAIRS BIN_A BIN_B [BIN_C ...]
#
# Each round runs `benches/relay.sh $MESSAGES $CONNECTIONS` once per binary,
# flat out (or at RATE msg/s when RATE is set), in the order given; at the
# end it prints, per binary, the median and range of the relay's CPU per
# message, the mean throughput, the median p99 latency, the ratio of each
# median to the first binary's, and the medians of the carrier simulator's
# and the load generator's own CPU per message (their cost of the same
# exchanges: when they move, the sitting did), and the median of each run's
# relay CPU over theirs, which drifts less between sittings than the relay's
# own figure (BENCHMARKS.md, session 15). Receipts go to the client
# as signed webhooks unless NO_WEBHOOK=1 (see relay.sh).
#
# Env: MESSAGES (default 60000, or 10 s worth at RATE), CONNECTIONS (default
# 64), RATE, NO_WEBHOOK.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
  echo "usage: benches/ab.sh PAIRS BIN_A BIN_B [BIN_C ...]" >&2
  exit 2
fi
pairs=$1
shift
for b in "$@"; do
  [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }
done
if [ -n "${RATE:-}" ]; then
  N=${MESSAGES:-$((RATE * 10))}
  mode=(RATE_ONLY=1 "RATE=$RATE")
else
  N=${MESSAGES:-60000}
  mode=(FLAT_ONLY=1)
fi
C=${CONNECTIONS:-64}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for round in $(seq "$pairs"); do
  for b in "$@"; do
    line=$(env BIN="$b" "${mode[@]}" benches/relay.sh "$N" "$C" 2>&1 |
      awk '/^throughput/ {t=$2} /^relay CPU/ {c=$3} /^carrier CPU/ {s=$3} /^bench CPU/ {g=$3} /^latency/ {p99=$9}
        END {print t, c, p99, (s == "" ? "-" : s), (g == "" ? "-" : g)}')
    echo "$b $line" >> "$out"
    echo "round $round: $b  msg/s cpu_us p99_ms carrier_us bench_us = $line"
  done
done
python3 - "$out" "$@" <<'PY'
import statistics, sys
path, bins = sys.argv[1], sys.argv[2:]
rows = [l.split() for l in open(path) if len(l.split()) == 6]
def median_of(r, i):
    # The carrier's and the bench's CPU per message ("-": tools too old).
    xs = [float(x[i]) for x in r if x[i] != "-"]
    return f"{statistics.median(xs):.1f}" if xs else "-"
def per_peers(r):
    # Each run's relay CPU over the carrier's and the bench's together.
    xs = [float(x[2]) / (float(x[4]) + float(x[5])) for x in r if "-" not in (x[4], x[5])]
    return f"{statistics.median(xs):.2f}" if xs else "-"
print(f"{'binary':40} {'runs':>4} {'median µs/msg':>14} {'range':>13} {'mean msg/s':>10} {'p99 ms':>7} {'ratio':>6} {'carrier':>8} {'bench':>7} {'÷ peers':>7}")
base = None
for b in bins:
    r = [x for x in rows if x[0] == b]
    if not r:
        print(f"{b:40} no runs")
        continue
    cpu = [float(x[2]) for x in r]
    tput = [float(x[1]) for x in r]
    p99 = statistics.median(float(x[3]) for x in r)
    med = statistics.median(cpu)
    base = base or med
    print(f"{b:40} {len(r):>4} {med:>14.1f} {min(cpu):>6.1f}–{max(cpu):<6.1f} {statistics.mean(tput):>10.0f} {p99:>7.1f} {med / base:>6.2f} {median_of(r, 4):>8} {median_of(r, 5):>7} {per_peers(r):>7}")
PY
