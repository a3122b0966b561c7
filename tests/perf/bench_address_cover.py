"""The cost of reading the records that cover a host (intel.enrichment.host_tlps) on 100,000 stored CIDR IoCs.

GET /detect/intel/{ip} and every enrichment run of an address read, besides the IoCs holding the host (its value and
spellings: one query, as before), the strictest TLP of the CIDR IoCs containing it and of the 6to4 and Teredo IoCs
carrying its IPv4 address (iocs.repository.covering_tlps: one query, GiST and btree index scans, sql/0017). Loads
100,000 CIDR IoCs (80% IPv4 /16 and /24, 20% IPv6 /48) and 20,000 6to4 and Teredo host IoCs into its own
PostgreSQL, then in the same run, alternating, times single-host lookups with the covering query (host_tlp) and
without it (the spelling query alone, what the route read before), and prints both rates and their ratio, the plan
of the covering query, a 1,000-host batch (POST /enrichment/batch's most) with and without it and the worst case found: a host whose 6to4
/48 holds 10,000 stored IoCs.
Run: .venv/bin/python tests/perf/bench_address_cover.py [--cidrs N] [--lookups N]
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import time

from harness import Stack, migrated_engine

LOAD_CIDRS = """
INSERT INTO iocs (type, value, tlp, first_seen, last_seen, last_seen_day)
SELECT 'cidr',
       CASE WHEN mod(g, 5) = 4
            THEN '2a' || lpad(to_hex(mod(g, 256)), 2, '0') || ':' || to_hex(mod(g / 256, 65536)) || '::/48'
            WHEN mod(g, 10) = 3
            THEN (1 + mod(g, 223)) || '.' || mod(g / 223, 256) || '.0.0/16'
            ELSE (1 + mod(g, 223)) || '.' || mod(g / 223, 256) || '.' || mod(g / 57088, 256) || '.0/24' END,
       (ARRAY['clear','green','amber','amber+strict','red'])[1 + mod(g, 5)],
       now(), now(), current_date
FROM generate_series(1, :rows) g
ON CONFLICT (type, value) DO NOTHING
"""

# 6to4 (2002:a.b.c.d::/48) and Teredo (2001:0::/32, client inverted in the last 32 bits) host IoCs
LOAD_IPV6_HOSTS = """
INSERT INTO iocs (type, value, tlp, first_seen, last_seen, last_seen_day)
SELECT 'ipv6',
       CASE WHEN mod(g, 2) = 0
            THEN '2002:' || to_hex(47616 + mod(g, 256)) || ':' || to_hex(mod(g * 7, 65536)) || '::' || to_hex(1 + mod(g, 4096))
            ELSE '2001:0:4136:e378:8000:63bf:' || to_hex(mod(g * 13, 65536)) || ':' || to_hex(mod(g, 65536)) END,
       (ARRAY['clear','green','amber','red'])[1 + mod(g, 4)],
       now(), now(), current_date
FROM generate_series(1, :rows) g
ON CONFLICT (type, value) DO NOTHING
"""

CROWDED_SITE = """
INSERT INTO iocs (type, value, tlp, first_seen, last_seen, last_seen_day)
SELECT 'ipv6', '2002:b9dc:6511:' || to_hex(g) || '::1', 'green', now(), now(), current_date FROM generate_series(1, :rows) g
ON CONFLICT (type, value) DO NOTHING
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cidrs", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=3_000)
    args = parser.parse_args()

    from sqlalchemy import text

    from threatflow.devstack import services
    from threatflow.intel import enrichment as intel_enrichment
    from threatflow.iocs import repository as iocs_repository

    with Stack("tf-bench-cover-") as stack:
        stack.start(services.start_postgres(stack.state))
        engine = migrated_engine(stack.env(uses="postgres", DB_TIMEOUT_SECONDS="600"))
        began = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text(LOAD_CIDRS), {"rows": args.cidrs})
            conn.execute(text(LOAD_IPV6_HOSTS), {"rows": args.cidrs // 5})
        with engine.begin() as conn:
            conn.execute(text("ANALYZE iocs"))
            counts = dict(conn.execute(text("SELECT type, count(*) FROM iocs GROUP BY type")).all())
        print(f"loaded {counts.get('cidr', 0):,} cidr and {counts.get('ipv6', 0):,} ipv6 IoCs in {time.perf_counter() - began:.1f}s")

        rng = random.Random(7)
        hosts = []
        for _ in range(args.lookups):  # half inside a stored /24 or /16, half anywhere
            if rng.random() < 0.5:
                g = rng.randrange(1, args.cidrs)
                hosts.append(f"{1 + g % 223}.{(g // 223) % 256}.{(g // 57088) % 256}.{rng.randrange(1, 255)}")
            else:
                hosts.append(str(ipaddress.IPv4Address(rng.randrange(1 << 24, 223 << 24))))

        def without(conn: object, host: str) -> object:  # what GET /detect/intel read before: the spellings only
            keys = [("ipv4", host), *intel_enrichment._spelling_keys({"type": "ipv4", "value": host})]
            return iocs_repository.get_many_by_value(conn, keys)  # type: ignore[arg-type]

        def with_cover(conn: object, host: str) -> object:
            return intel_enrichment.host_tlp(conn, "ipv4", host)  # type: ignore[arg-type]

        timings = {"without": 0.0, "with": 0.0}
        covered = 0
        with engine.connect() as conn:
            for host in hosts[:200]:  # warm the buffers and plans for both
                without(conn, host)
                with_cover(conn, host)
            for host in hosts:
                t = time.perf_counter()
                without(conn, host)
                timings["without"] += time.perf_counter() - t
                t = time.perf_counter()
                result = with_cover(conn, host)
                timings["with"] += time.perf_counter() - t
                covered += result.sent is not None  # type: ignore[attr-defined]
            rate_without = len(hosts) / timings["without"]
            rate_with = len(hosts) / timings["with"]
            print(f"{len(hosts):,} single-host lookups ({covered:,} covered by a stored record), alternating in one connection:")
            print(f"  spellings only (before):       {rate_without:8.0f} lookups/s  {timings['without'] / len(hosts) * 1e3:.3f} ms each")
            print(f"  spellings + covering (after):  {rate_with:8.0f} lookups/s  {timings['with'] / len(hosts) * 1e3:.3f} ms each")
            print(f"  ratio after/before time: {timings['with'] / timings['without']:.2f}x")

            probe = hosts[0]
            within = [(0, a, prefix) for a, prefix in intel_enrichment._cover_probes("ipv4", probe)[0]]
            sql = iocs_repository._COVERING_TLPS
            params = {
                "order": iocs_repository._ORDER,
                "within_k": [k for k, _, _ in within],
                "within": [a for _, a, _ in within],
                "within_prefix": [p for _, _, p in within],
                "site_prefix": intel_enrichment.MIN_COVER_PREFIX_SITE,
                "teredo_prefix": intel_enrichment.MIN_COVER_PREFIX_TEREDO_CLIENTS,
                "sites_k": [0],
                "sites": [f"2002:{int(ipaddress.IPv4Address(probe)) >> 16:x}:{int(ipaddress.IPv4Address(probe)) & 0xFFFF:x}::/48"],
                "teredo_k": [0],
                "teredo": [int(ipaddress.IPv4Address(probe))],
            }
            plan = [r[0] for r in conn.execute(text("EXPLAIN ANALYZE " + sql), params)]
            print(f"plan of the covering query for {probe} (its scans and times):")
            for line in plan:
                if any(word in line for word in ("Scan", "Time", "JIT")):
                    print("   ", line.strip()[:150])

            batch = [{"type": "ipv4", "value": h, "tlp": "amber"} for h in hosts[:1000]]
            for _ in range(3):
                t = time.perf_counter()  # what _with_carried_tlps read before: the spellings' keys, one query
                keys = sorted({key for h in batch for key in [("ipv4", h["value"]), *intel_enrichment._spelling_keys(h)]})
                iocs_repository.get_many_by_value(conn, keys)  # type: ignore[arg-type]
                before = time.perf_counter() - t
                t = time.perf_counter()
                intel_enrichment.host_tlps(conn, dict(enumerate(batch)))  # type: ignore[arg-type]
                after = time.perf_counter() - t
                print(f"1,000-host batch: spellings only {before * 1e3:.0f} ms, spellings + covering {after * 1e3:.0f} ms")

        with engine.begin() as conn:
            conn.execute(text(CROWDED_SITE), {"rows": 10_000})
            conn.execute(text("ANALYZE iocs"))
        with engine.connect() as conn:
            with_cover(conn, "185.220.101.17")
            t = time.perf_counter()
            for _ in range(20):
                result = with_cover(conn, "185.220.101.17")
            print(f"worst case, a host whose 6to4 /48 holds 10,000 stored IoCs: {(time.perf_counter() - t) / 20 * 1e3:.1f} ms a lookup")
        engine.dispose()


if __name__ == "__main__":
    main()
