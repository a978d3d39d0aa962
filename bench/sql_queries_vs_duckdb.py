#!/usr/bin/env python3
"""Times the analyst queries of sql/queries/ through `ymera sql` and, on the same Delta
tables, through DuckDB 1.4.4's `delta_scan` (PyPI `duckdb` with the `duckdb-ext-delta`
wheel, loaded offline), and prints both.

    python3 bench/sql_queries_vs_duckdb.py --ymera target/release/ymera \
        --lake /path/lake --warehouse /path/warehouse.db [--runs 3]

The lake must hold the tables the queries use (task_events, metric_events, dlq_task_events)
and the SQLite warehouse the tables projects, tasks and _ymera_dead_letters, e.g. as left
by `ymera gen --brokers B --days 1200 --projects 20000` and `ymera run pipelines/`.
The warehouse tables are exported to Parquet with `ymera sql --format parquet` and DuckDB
reads those (its SQLite scanner would be slower than Parquet: this favours DuckDB); ymera
reads SQLite itself. Each lake table is a DuckDB view over `delta_scan('<lake>/<table>')`,
so DuckDB reads what the Delta log says is live, as ymera does. ymera's time is a whole `ymera sql`
process (start, table discovery, query, CSV out); DuckDB's is the query in an open
connection, views already defined. Best of --runs for both.
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import deltalake
import duckdb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ymera", required=True)
    ap.add_argument("--lake", required=True)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--queries", default=os.path.join(os.path.dirname(__file__), "..", "sql", "queries"))
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    env = dict(os.environ, YMERA__LAKE__URL=a.lake, YMERA__WAREHOUSE__URL=f"sqlite://{a.warehouse}",
               YMERA__SQL__MAX_ROWS="100000000", YMERA__SQL__MAX_RESULT_BYTES="8GiB", YMERA__SQL__TIMEOUT="30m", YMERA__LOG__LEVEL="warn")
    export = tempfile.mkdtemp(prefix="ymera-wh-export-")
    for t in ["projects", "tasks", "_ymera_dead_letters"]:
        subprocess.run([a.ymera, "sql", f"SELECT * FROM {t}", "--format", "parquet", "--output",
                        os.path.join(export, f"{t}.parquet")], env=env, check=True)
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    site = os.path.dirname(os.path.dirname(duckdb.__file__))
    ext = glob.glob(os.path.join(site, "duckdb_ext", "extensions", "v1.4.4", "*", "delta.duckdb_extension"))
    if not ext:
        sys.exit("duckdb-ext-delta is not installed: pip install duckdb==1.4.4 duckdb-ext-delta")
    con.execute(f"LOAD '{ext[0]}'")
    for d in sorted(os.listdir(a.lake)):
        if d.startswith("_") or not os.path.isdir(os.path.join(a.lake, d, "_delta_log")):
            continue
        con.execute(f"CREATE VIEW {d} AS SELECT * FROM delta_scan('{a.lake}/{d}')")
    for p in glob.glob(os.path.join(a.lake, "_dlq", "*")):
        if os.path.isdir(os.path.join(p, "_delta_log")):
            con.execute(f"CREATE VIEW dlq_{os.path.basename(p)} AS SELECT * FROM delta_scan('{p}')")
    for t in ["projects", "tasks", "_ymera_dead_letters"]:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{export}/{t}.parquet')")
    rows = {}
    for t in ["task_events", "metric_events", "project_events", "project_outcomes", "user_events"]:
        try:
            rows[t] = con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        except duckdb.Error:
            pass
    print(f"lake rows: {sum(rows.values()):,} ({', '.join(f'{k} {v:,}' for k, v in rows.items())})")
    print(f"warehouse rows: " + ", ".join(
        f"{t} {con.execute(f'SELECT count(*) FROM {t}').fetchone()[0]:,}" for t in ["projects", "tasks"]))
    total_y = total_d = 0.0
    files = {}
    for t in rows:
        files[t] = len(deltalake.DeltaTable(f"{a.lake}/{t}").file_uris())
    print("live files: " + ", ".join(f"{t} {n:,} ({rows[t] // max(n, 1):,} rows/file)" for t, n in files.items()))
    print(f"{'query':<24} {'ymera sql (s)':>14} {'DuckDB (s)':>11} {'rows':>6}")
    for q in sorted(glob.glob(os.path.join(a.queries, "*.sql"))):
        sql = open(q).read()
        best_y = best_d = float("inf")
        for _ in range(a.runs):
            t0 = time.perf_counter()
            out = subprocess.run([a.ymera, "sql", "--format", "csv"], input=sql.encode(), env=env,
                                 capture_output=True)
            best_y = min(best_y, time.perf_counter() - t0)
            if out.returncode != 0:
                sys.exit(f"{q}: {out.stderr.decode()}")
            t0 = time.perf_counter()
            theirs = con.execute(sql).fetchall()
            best_d = min(best_d, time.perf_counter() - t0)
        n = len(theirs)
        ours = out.stdout.decode().strip().splitlines()[1:]
        if len(ours) != n:
            sys.exit(f"{q}: ymera returned {len(ours)} rows, DuckDB {n}")
        total_y += best_y
        total_d += best_d
        print(f"{os.path.basename(q):<24} {best_y:>14.3f} {best_d:>11.3f} {n:>6}")
    print(f"{'total':<24} {total_y:>14.3f} {total_d:>11.3f}   (ymera / DuckDB = {total_y / total_d:.2f})")


if __name__ == "__main__":
    main()
