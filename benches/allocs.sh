#!/usr/bin/env bash
# Heap allocations per relayed message, counted by heaptrack: a figure that,
# unlike CPU time on a shared VM, does not drift between runs (BENCHMARKS.md).
#
#   benches/allocs.sh [MESSAGES] [CONNECTIONS]
#
# Builds the relay with the system allocator (feature `bench-system-alloc`:
# heaptrack hooks malloc, which mimalloc bypasses) into target/alloc, runs
# `benches/relay.sh` flat out with the relay under heaptrack, and prints the
# allocations per message (every allocation of the relay process, start-up
# included, divided by the messages sent; each message's delivery receipt
# is counted with it) and the call sites that allocate most, by the first
# frame outside the allocator and the std collections.
#
# Env: ALLOCS_OUT=DIR keeps heaptrack's data there (heaptrack_print DIR/relay*.zst
# lists every call site with its lines).
#
# Needs heaptrack (Debian: apt-get install heaptrack) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
C=${2:-64}
command -v heaptrack >/dev/null || { echo "heaptrack is not installed (apt-get install heaptrack)" >&2; exit 2; }
command -v rustfilt >/dev/null || cargo install rustfilt
cargo build --release --features bench-system-alloc --target-dir target/alloc
if [ -n "${ALLOCS_OUT:-}" ]; then
  out=$ALLOCS_OUT
  mkdir -p "$out"
  rm -f "$out"/relay*.zst
else
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
RELAY_WRAP="heaptrack -o $out/relay" FLAT_ONLY=1 BIN=target/alloc/release/sms-conduit \
  benches/relay.sh "$N" "$C" | grep -E '^(sent|accepted|throughput)'
for _ in $(seq 100); do ls "$out"/relay*.zst >/dev/null 2>&1 && break; sleep 0.2; done
heaptrack_print -f "$out"/relay*.zst -F "$out/raw.txt" --flamegraph-cost-type allocations >/dev/null
rustfilt < "$out/raw.txt" > "$out/stacks.txt"
python3 benches/alloc_sites.py "$out/stacks.txt" "$N"
