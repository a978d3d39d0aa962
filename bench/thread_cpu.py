#!/usr/bin/env python3
"""CPU time of a running process, split by thread name prefix, sampled until it exits.

    python3 bench/thread_cpu.py PID [PREFIX ...]     (default prefix: compact-)

Linux only: reads /proc/PID/task/*/stat every 0.5 s (a thread's utime + stime in clock
ticks) and keeps the last value seen of each thread, so threads that end are counted too.
Prints the process's CPU seconds, each prefix's, and their share: e.g. how much of
`ymera run`'s CPU its background compaction threads (`compact-<pipeline>`) took.
"""
import os
import sys
import time


def threads(pid):
    out = {}
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        name = s[s.index("(") + 1 : s.rindex(")")]
        fields = s[s.rindex(")") + 2 :].split()
        out[tid] = (name, int(fields[11]) + int(fields[12]))
    return out


def main():
    pid = int(sys.argv[1])
    prefixes = sys.argv[2:] or ["compact-"]
    tick = os.sysconf("SC_CLK_TCK")
    seen = {}
    t0 = time.time()
    while os.path.exists(f"/proc/{pid}"):
        try:
            seen.update(threads(pid))
        except OSError:
            break
        time.sleep(0.5)
    total = sum(t for _, t in seen.values()) / tick
    print(f"process {pid}: {total:.1f} s CPU over {time.time() - t0:.0f} s wall, {len(seen)} threads")
    for p in prefixes:
        part = sum(t for n, t in seen.values() if n.startswith(p)) / tick
        print(f"  threads {p}*: {part:.1f} s CPU ({100 * part / max(total, 1e-9):.1f} % of the process)")


if __name__ == "__main__":
    main()
