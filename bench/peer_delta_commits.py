#!/usr/bin/env python3
"""Peer of `ymera bench --delta-log N`: the same commits through the Python `deltalake`
package (delta-rs's own commit path), measured the same way.

For each N: a table with N commits, each one 10-row file of one Int64 column `seq` and one
txn (`ymera:bench:events:<p>`, partitions round-robin over 32), written by one long-lived
writer that keeps its DeltaTable open (as a pipeline would); prints the mean time per commit
over all, the first 100 and the last 100 commits, then the time to read the 32 positions
from a fresh load (median of 5).

Usage: python3 bench/peer_delta_commits.py 300 1000 2000
"""

import shutil
import statistics
import sys
import tempfile
import time

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

PARTITIONS = 32


def run(n: int) -> None:
    root = tempfile.mkdtemp(prefix="peer-delta-")
    path = f"{root}/log"
    window = max(1, min(100, n // 2))
    nxt = [0] * PARTITIONS
    table = path
    early = late = 0.0
    started = time.perf_counter()
    for i in range(n):
        p = i % PARTITIONS
        first = nxt[p]
        last = first + 9
        nxt[p] = last + 1
        data = pa.table({"seq": pa.array(range(first, last + 1), type=pa.int64())})
        props = CommitProperties(app_transactions=[Transaction(f"ymera:bench:events:{p}", last)])
        t = time.perf_counter()
        write_deltalake(table, data, mode="append", commit_properties=props)
        if isinstance(table, str):
            table = DeltaTable(path)
        dt = time.perf_counter() - t
        if i < window:
            early += dt
        elif i >= n - window:
            late += dt
    built = time.perf_counter() - started
    times = []
    for _ in range(5):
        t = time.perf_counter()
        fresh = DeltaTable(path)
        found = sum(
            fresh.transaction_version(f"ymera:bench:events:{p}") is not None
            for p in range(PARTITIONS)
        )
        times.append(time.perf_counter() - t)
        assert found == PARTITIONS, f"{found} of {PARTITIONS} positions found"
    print(
        f"peer (python deltalake) delta log of {n} commits ({built * 1e3 / n:.1f} ms per commit to build; "
        f"commits 1-{window}: {early * 1e3 / window:.1f} ms each, the last {window}: {late * 1e3 / window:.1f} ms each): "
        f"positions of {PARTITIONS} partitions in {statistics.median(times) * 1e3:.1f} ms "
        f"(median of 5; min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})",
        flush=True,
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["1000"]:
        run(int(arg))
