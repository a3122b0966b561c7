"""Auto-enrichment's expansion of one ingest message into runs (intel.enrichment.ingest_requests), in PostgreSQL.

Starts its own PostgreSQL on a free port, stores --iocs IoCs (half IPv4, half IPv6: an IPv6 IoC's carried IPv4
address is looked up for its TLP), then expands one message naming all of them (AUTO_MAX is 10,000 a message),
twice, and prints the time against the previous way in the same run: one query per IoC, and one more per IPv6
IoC (kept here as the baseline). Both give the same requests (checked).
With --write, also a write's auto-enrichment charge (iocs POST /batch, after its commit): its new IoCs read as
enrich-dispatch reads them, their uncached auto-enriching sources planned (Redis) and charged to the writer's budget
(enrichment.handlers.auto_enrich, publishing to a recorder: Pub/Sub's own time is not counted), against the upsert
that stored them (iocs.service.upsert_batch), for --write batches of --batch-size new addresses (half IPv6).
Run: .venv/bin/python tests/perf/bench_auto_enrich.py [--iocs N] [--write] [--batch-size N] [--batches N]
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


class _Recorder:
    """Takes what is published (Pub/Sub's publish contract: a message id back), so only the charge is timed."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def publish(self, topic: str, data: bytes, attributes: dict[str, str] | None = None) -> str:
        self.messages.append((topic, data))
        return str(len(self.messages))


def write_charge(*, batch_size: int, batches: int) -> None:
    from datetime import UTC, datetime

    import msgspec

    from threatflow.enrichment import handlers
    from threatflow.iocs import service
    from threatflow.platform.manifest import load_manifest
    from threatflow.runtime import Runtime

    with Stack("tf-bench-auto-charge-") as stack:
        stack.start(services.start_postgres(stack.state))
        stack.start(services.start_redis(stack.state))
        engine = migrated_engine(stack.env(uses="postgres,redis", **load_manifest().sources_env(), ENRICH_USER_BUDGET_PER_HOUR="1000000"))
        settings = Runtime.from_env().settings
        runtime = Runtime(settings, clients={"publisher": _Recorder()})
        policies = {}
        with unit_of_work(engine) as conn:
            policies = repository.policies(conn)
        for batch in range(batches):
            items = [
                msgspec.json.encode({"value": f"45.{batch}.{i // 256 % 256}.{i % 256}" if i % 2 else f"2a0e:{batch:x}::{i:x}"})
                for i in range(batch_size)
            ]
            began = time.perf_counter()
            with unit_of_work(runtime.engine) as conn:
                result = service.upsert_batch(
                    [msgspec.Raw(item) for item in items],
                    conn=conn,
                    now=datetime.now(UTC),
                    warninglists=None,
                    policies=policies,
                    clearance="red",
                    new_tlp="amber",
                )
            upsert = time.perf_counter() - began
            began = time.perf_counter()
            summary = handlers.auto_enrich(runtime, result["results"], writer="bench")
            charge = time.perf_counter() - began
            print(
                f"write {batch + 1}: {batch_size:,} new IoCs: upsert {upsert * 1000:,.0f} ms, auto-enrichment charge"
                f" {charge * 1000:,.0f} ms ({charge / upsert:.2f}x the upsert); {summary}"
            )
        runtime.engine.dispose()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iocs", type=int, default=10_000)
    parser.add_argument("--write", action="store_true", help="also time a write's auto-enrichment charge")
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    if args.write:
        write_charge(batch_size=args.batch_size, batches=args.batches)
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
