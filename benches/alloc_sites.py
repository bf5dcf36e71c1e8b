#!/usr/bin/env python3
"""Allocations per message from a heaptrack flamegraph dump (benches/allocs.sh).

    alloc_sites.py STACKS MESSAGES [TOP]

STACKS is `heaptrack_print -F FILE --flamegraph-cost-type allocations`: one
line per call stack, `frame;frame;...;frame COUNT`, root first. Each stack is
charged to its first frame, walking up from the allocation, that is not the
allocator, a std collection or a formatting/cloning helper: the code that
asked for the memory.
"""
import collections
import re
import sys

# Frames that only pass an allocation through (the allocator, Vec/String/Box
# growth, clone, collect, format!): skipped to reach the code that asked.
PASS_THROUGH = re.compile(
    r"(alloc::|__rust|__rdl|__rg_|std::sys::alloc|RawVec|raw_vec|core::ptr|"
    r"hashbrown::raw|BytesMut::(reserve|with_capacity|extend)|\bmalloc\b|realloc|calloc|"
    r"Vec<T|Box<T>|Arc<T>|String::|from_elem|to_vec|to_owned|ToOwned|ToString|"
    r"Clone>::clone|SpecExtend|SpecFrom|FromIterator|::collect|Extend<|"
    r"fmt::format|format::|spec_)"
)


# heaptrack prints legacy-mangled Rust names half-decoded (`_$LT$a..B$GT$`).
LEGACY = [("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$RF$", "&"), ("$C$", ","),
          ("$u7b$", "{"), ("$u7d$", "}"), ("$BP$", "*"), ("$u27$", "'"), ("..", "::")]


def unlegacy(frame: str) -> str:
    if "$" not in frame:
        return frame
    for a, b in LEGACY:
        frame = frame.replace(a, b)
    return frame[1:] if frame.startswith("_<") else frame


def site(stack: str) -> str:
    frames = [unlegacy(re.sub(r" \(.*?\)$", "", f)) for f in stack.split(";")]
    frames = [re.sub(r"::h[0-9a-f]{16}$", "", f) for f in frames if f]
    for f in reversed(frames):
        if not PASS_THROUGH.search(f):
            return f[:110]
    return "(allocator only)"


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    path, msgs = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    by_site: collections.Counter = collections.Counter()
    total = 0
    with open(path, errors="replace") as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            total += int(n)
            by_site[site(stack)] += int(n)
    print(f"allocations   {total} in the relay process")
    print(f"per message   {total / msgs:.1f}  ({msgs} messages and their receipts)")
    print("top call sites, allocations per message:")
    for s, n in by_site.most_common(top):
        print(f"  {n / msgs:6.2f}  {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
