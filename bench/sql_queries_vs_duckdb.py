#!/usr/bin/env python3
"""Times the analyst queries of sql/queries/ through `ymera sql` and, on the same files,
through DuckDB (PyPI `duckdb`), and prints both.

    python3 bench/sql_queries_vs_duckdb.py --ymera target/release/ymera \
        --lake /path/lake --warehouse /path/warehouse.db [--runs 3]

The lake must hold the tables the queries use (task_events, metric_events, dlq_task_events)
and the SQLite warehouse the tables projects, tasks and _ymera_dead_letters, e.g. as left
by `ymera gen --brokers B --days 1200 --projects 20000` and `ymera run pipelines/`.
DuckDB cannot attach SQLite here (its sqlite extension is downloaded from the internet),
so the warehouse tables are first exported to Parquet with `ymera sql --format parquet`
and DuckDB reads those; ymera reads SQLite itself. ymera's time is a whole `ymera sql`
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
               YMERA__SQL__MAX_ROWS="10000000", YMERA__SQL__TIMEOUT="30m", YMERA__LOG__LEVEL="warn")
    export = tempfile.mkdtemp(prefix="ymera-wh-export-")
    for t in ["projects", "tasks", "_ymera_dead_letters"]:
        subprocess.run([a.ymera, "sql", f"SELECT * FROM {t}", "--format", "parquet", "--output",
                        os.path.join(export, f"{t}.parquet")], env=env, check=True)
    con = duckdb.connect()
    for d in sorted(os.listdir(a.lake)):
        if d.startswith("_") or not os.path.isdir(os.path.join(a.lake, d)):
            continue
        con.execute(f"CREATE VIEW {d} AS SELECT * FROM read_parquet('{a.lake}/{d}/**/*.parquet', hive_partitioning=true)")
    for p in glob.glob(os.path.join(a.lake, "_dlq", "*")):
        name = os.path.basename(p)
        con.execute(f"CREATE VIEW dlq_{name} AS SELECT * FROM read_parquet('{p}/**/*.parquet', hive_partitioning=true)")
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
            n = len(con.execute(sql).fetchall())
            best_d = min(best_d, time.perf_counter() - t0)
        total_y += best_y
        total_d += best_d
        print(f"{os.path.basename(q):<24} {best_y:>14.3f} {best_d:>11.3f} {n:>6}")
    print(f"{'total':<24} {total_y:>14.3f} {total_d:>11.3f}   (ymera / DuckDB = {total_y / total_d:.2f})")


if __name__ == "__main__":
    main()
