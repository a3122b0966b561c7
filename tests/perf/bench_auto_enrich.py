"""Auto-enrichment's expansion of one ingest message into runs (intel.enrichment.ingest_requests), in PostgreSQL.

Starts its own PostgreSQL on a free port, stores --iocs IoCs (half IPv4, half IPv6: an IPv6 IoC's carried IPv4
address is looked up for its TLP), then expands one message naming all of them (AUTO_MAX is 10,000 a message),
twice, and prints the time against the previous way in the same run: one query per IoC, and one more per IPv6
IoC (kept here as the baseline). Both give the same requests (checked).
Run: .venv/bin/python tests/perf/bench_auto_enrich.py [--iocs N]
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from harness import Stack, migrated_engine

from threatflow.adapters.postgres import unit_of_work
from threatflow.devstack import services
from threatflow.intel import enrichment
from threatflow.iocs import repository


def fill(engine: Any, *, iocs: int) -> list[int]:
    with unit_of_work(engine) as conn:
        conn.exec_driver_sql(
            "INSERT INTO iocs (type, value, first_seen, last_seen, last_seen_day)"
            " SELECT 'ipv4', '10.' || (g / 65536) || '.' || (g / 256 % 256) || '.' || (g % 256), now(), now(), current_date"
            f" FROM generate_series(1, {iocs // 2}) g"
        )
        conn.exec_driver_sql(
            "INSERT INTO iocs (type, value, first_seen, last_seen, last_seen_day)"
            " SELECT 'ipv6', '64:ff9b::a00:' || to_hex(g), now(), now(), current_date"
            f" FROM generate_series(1, {iocs - iocs // 2}) g"
        )
        return [int(r[0]) for r in conn.exec_driver_sql("SELECT id FROM iocs ORDER BY id")]


def one_query_each(conn: Any, ioc_ids: list[int], *, message_id: str) -> list[tuple[Any, ...]]:
    """The previous expansion: an IoC read per id, and its carried address's TLP read per IPv6 IoC."""
    out = []
    for ioc_id in ioc_ids:
        ioc = repository.get(conn, ioc_id)
        if ioc is None or ioc.warninglists:
            continue
        run_id = uuid.uuid5(uuid.NAMESPACE_URL, f"ingest:{message_id}:{ioc_id}").hex
        record = enrichment._record(ioc)
        carried = enrichment._carried_key(record)
        stored = repository.get_by_value(conn, *carried) if carried else None
        tlp = str(record["tlp"])
        if stored is not None and enrichment.Tlp.parse(str(stored.tlp)).rank > enrichment.Tlp.parse(tlp).rank:
            tlp = str(stored.tlp)
        out.append((run_id, int(ioc.id), str(ioc.type), str(ioc.value), tlp))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iocs", type=int, default=10_000)
    args = parser.parse_args()
    with Stack("tf-bench-auto-enrich-") as stack:
        stack.start(services.start_postgres(stack.state))
        engine = migrated_engine(stack.env(uses="postgres"))
        ids = fill(engine, iocs=args.iocs)
        with unit_of_work(engine) as conn:  # some carried addresses stored red, as a real store would hold some
            conn.exec_driver_sql("UPDATE iocs SET tlp = 'red' WHERE type = 'ipv4' AND id % 7 = 0")
        for attempt in (1, 2):
            with unit_of_work(engine) as conn:
                began = time.perf_counter()
                before = one_query_each(conn, ids, message_id="bench")
                baseline = time.perf_counter() - began
                began = time.perf_counter()
                now = enrichment.ingest_requests(conn, ids, message_id="bench")
                batched = time.perf_counter() - began
            assert [(r.run_id, r.ioc_id, r.ioc_type, r.value, r.tlp) for r in now] == before, "the two expansions differ"
            print(
                f"run {attempt}: {len(ids):,} IoCs in one message: one query each {baseline * 1000:,.0f} ms,"
                f" batched {batched * 1000:,.0f} ms ({baseline / batched:.1f}x)"
            )
        engine.dispose()


if __name__ == "__main__":
    main()
