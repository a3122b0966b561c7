"""How far one PostgreSQL instance carries the flow-event store: the figures the README's
capacity paragraph rests on, measured inside the database (no Python per row, no HTTP).

Setup as bench_events.py: its own PostgreSQL, N flowgen events (dev-data flows, 340
sources, 30 days) COPY'd into the partitioned flow_events, VACUUM ANALYZE. Then prints:
  1. size on disk: heap (with TOAST), each index, in total and per event; the largest
     daily partition;
  2. the database's own write rate: INSERT ... SELECT of the same N events under new keys
     (partition routing, the primary key and the three search indexes maintained), so
     events/s before any client, scoring or HTTP cost; the in-run baseline is the same
     statement into an unindexed, unpartitioned copy of the table (the ratio is what the
     partitions and indexes cost);
  3. the refresh-flow-views job at 2N events: REFRESH MATERIALIZED VIEW CONCURRENTLY of
     both hourly roll-ups (it rescans every retained event);
  4. the flow-retention job's unit of work: detach and drop one daily partition.

Run: .venv/bin/python tests/perf/bench_event_store.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

from harness import Stack, migrated_engine


def _mb(size: float) -> str:
    return f"{float(size) / 1e6:,.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()

    import flowgen
    from bench_events import COLUMNS, load_events
    from sqlalchemy import text

    from threatflow.devstack import services
    from threatflow.flows import repository

    n = args.rows
    with Stack("tf-bench-store-") as stack:
        stack.start(services.start_postgres(stack.state))
        engine = migrated_engine(stack.env(uses="postgres", DB_TIMEOUT_SECONDS="3600"))
        took = load_events(engine, n, end=flowgen.default_end() + timedelta(days=1))
        print(f"setup: {n:,} events by COPY in {took:.1f} s (Python generates the rows)")

        with engine.connect() as conn:
            heap, indexes, parts = conn.execute(
                text(
                    "SELECT sum(pg_table_size(c.oid)), sum(pg_indexes_size(c.oid)), count(*) FROM pg_inherits i"
                    " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'flow_events'::regclass"
                )
            ).one()
            per_index = conn.execute(
                text(
                    "SELECT p.relname, sum(pg_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent"
                    " JOIN pg_class c ON c.oid = i.inhrelid WHERE p.relkind = 'I' AND p.relname LIKE 'flow_events%'"
                    " GROUP BY 1 ORDER BY 2 DESC"
                )
            ).all()
            largest = conn.execute(
                text(
                    "SELECT tableoid::regclass::text, count(*), pg_total_relation_size(tableoid) FROM flow_events"
                    " GROUP BY tableoid ORDER BY 2 DESC LIMIT 1"
                )
            ).one()
        total = int(heap) + int(indexes)
        print(f"1. size of {n:,} events in {parts} daily partitions: {_mb(total)} = {total / n:,.0f} B/event")
        print(f"   heap with TOAST {_mb(heap)} ({int(heap) / n:,.0f} B/event); indexes {_mb(indexes)} ({int(indexes) / n:,.0f} B/event)")
        for name, size in per_index:
            print(f"   {name:<28} {_mb(size):>10}  {int(size) / n:6,.0f} B/event")
        print(f"   largest day {largest[0]}: {largest[1]:,} events, {_mb(largest[2])}")

        columns = COLUMNS.replace("event_key", "gen_random_uuid()")
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("CREATE TABLE store_bench_plain (LIKE flow_events INCLUDING DEFAULTS)")  # WAL-logged, as flow_events
            raw.commit()
            timings = {}
            for target in ("store_bench_plain", "flow_events"):
                began = time.perf_counter()
                cursor.execute(f"INSERT INTO {target} ({COLUMNS}) SELECT {columns} FROM flow_events")  # the N loaded events
                raw.commit()
                timings[target] = time.perf_counter() - began
            cursor.execute("DROP TABLE store_bench_plain")
            raw.commit()
        finally:
            raw.close()
        rate, plain = n / timings["flow_events"], n / timings["store_bench_plain"]
        print(
            f"2. INSERT ... SELECT {n:,} events into flow_events: {timings['flow_events']:.1f} s = {rate:,.0f} events/s"
            f" (one statement, one transaction); baseline, one plain table without indexes: {plain:,.0f} events/s"
            f" (flow_events at {rate / plain:.2f}x)"
        )

        took_ms = {}
        for view in repository.VIEWS:
            with engine.begin() as conn:
                took_ms[view] = repository.refresh_view(conn, view, now=flowgen.default_end())
        print(f"3. refresh-flow-views at {2 * n:,} events: " + ", ".join(f"{v} {ms:,} ms" for v, ms in took_ms.items()))

        with engine.connect() as conn:
            day = next(p for p in repository.partitions(conn) if p.name == largest[0])
            events = conn.execute(text(f'SELECT count(*) FROM "{day.name}"')).scalar_one()
        began = time.perf_counter()
        with engine.begin() as conn:
            repository.drop_partition(conn, day)
        print(f"4. detach + drop {day.name} ({events:,} events): {(time.perf_counter() - began) * 1000:.0f} ms")
        engine.dispose()


if __name__ == "__main__":
    main()
