"""The prune-sightings job on a large ioc_sightings table, in PostgreSQL.

Starts its own PostgreSQL on a free port, stores --iocs IoCs and --rows sightings (--old-share of them older
than the retention), then prints: how long migration 0010's index on seen_at takes to build over them (writes
to ioc_sightings wait that long, once, when it is applied); the time of one batch delete (PRUNE_BATCH rows, its
own transaction: the longest any lock is held), p50 and p99, with the index and, for comparison, without it;
and one invocation at the schedule's limit, end to end (retention.prune_sightings).
Run: .venv/bin/python tests/perf/bench_prune_sightings.py [--rows N] [--iocs N] [--old-share F]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from harness import Stack, migrated_engine, percentile

from threatflow.adapters.postgres import unit_of_work
from threatflow.devstack import services
from threatflow.iocs import repository, retention


def fill(engine: Any, *, iocs: int, rows: int, old_share: float) -> None:
    """`iocs` IoCs and `rows` sightings spread over them, the old ones 400 to 800 days back, the others within
    300 days, in random order of seen_at (as sightings of many IoCs arrive)."""
    old = int(rows * old_share)
    with unit_of_work(engine) as conn:
        conn.exec_driver_sql(
            "INSERT INTO iocs (type, value, first_seen, last_seen, last_seen_day)"
            " SELECT 'ipv4', '10.' || (g / 65536) || '.' || (g / 256 % 256) || '.' || (g % 256), now(), now(), current_date"
            f" FROM generate_series(1, {iocs}) g"
        )
        conn.exec_driver_sql(
            "INSERT INTO ioc_sightings (ioc_id, seen_at, source, context)"
            f" SELECT 1 + (g % {iocs}), now() - CASE WHEN g % {rows} < {old} THEN interval '400 days' + random() * interval '400 days'"
            " ELSE random() * interval '300 days' END, 'bench', '{\"flows\": 3}'"
            f" FROM generate_series(0, {rows - 1}) g ORDER BY random()"
        )
        conn.exec_driver_sql("ANALYZE ioc_sightings")


def batches(engine: Any, *, cutoff: datetime, n: int) -> list[float]:
    """The seconds of n batch deletes, each its own transaction, as the job runs them."""
    times = []
    for _ in range(n):
        began = time.perf_counter()
        with unit_of_work(engine) as conn:
            repository.prune_sightings(conn, before=cutoff, limit=retention.PRUNE_BATCH)
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--iocs", type=int, default=50_000)
    parser.add_argument("--old-share", type=float, default=0.6)
    args = parser.parse_args()
    with Stack("tf-bench-prune-") as stack:
        stack.start(services.start_postgres(stack.state))
        engine = migrated_engine(stack.env(uses="postgres"))
        began = time.perf_counter()
        fill(engine, iocs=args.iocs, rows=args.rows, old_share=args.old_share)
        stored = time.perf_counter() - began
        print(f"stored {args.rows:,} sightings of {args.iocs:,} IoCs ({args.old_share:.0%} older than 365 days) in {stored:.1f} s")
        cutoff = datetime.now(UTC) - timedelta(days=retention.RETENTION_DAYS)

        with unit_of_work(engine) as conn:
            conn.exec_driver_sql("DROP INDEX ioc_sightings_seen_at_idx")
        without = batches(engine, cutoff=cutoff, n=5)
        began = time.perf_counter()
        with unit_of_work(engine) as conn:
            conn.exec_driver_sql("CREATE INDEX ioc_sightings_seen_at_idx ON ioc_sightings (seen_at)")
        print(f"migration 0010 (index on seen_at over {args.rows:,} rows): {time.perf_counter() - began:.2f} s")
        with_index = batches(engine, cutoff=cutoff, n=20)
        for name, times in (("without the index", without), ("with the index", with_index)):
            print(
                f"one batch ({retention.PRUNE_BATCH:,} rows, one transaction) {name}:"
                f" p50 {percentile(times, 0.5) * 1000:.0f} ms, p99 {percentile(times, 0.99) * 1000:.0f} ms ({len(times)} batches)"
            )
        began = time.perf_counter()
        result = retention.prune_sightings(
            engine=engine, now=datetime.now(UTC), retention_days=retention.RETENTION_DAYS, limit=retention.PRUNE_LIMIT
        )
        elapsed = time.perf_counter() - began
        print(
            f"one invocation at the schedule's limit: deleted {result['deleted']:,} in {result['batches']} batches,"
            f" {elapsed:.1f} s ({result['deleted'] / elapsed:,.0f} rows/s), more: {result['more']}"
        )
        engine.dispose()


if __name__ == "__main__":
    main()
