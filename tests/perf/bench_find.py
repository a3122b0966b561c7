"""POST /api/v1/iocs/find on 1,000,000 IoCs: p50/p99 per filter path, with EXPLAIN.

Loads a synthetic million IoCs straight into its own PostgreSQL (SQL
generate_series, indexes built after the load as a restore would), then times
each indexed filter path over HTTP through the gateway, and prints the plan
PostgreSQL chose for it. The in-run baseline is GET /health through the same
gateway, so the ratio shows the query's share. Target: p99 < 50 ms.
Run: make bench   (or .venv/bin/python tests/perf/bench_find.py [--rows N])
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from datetime import UTC, datetime, timedelta

from harness import Stack, login, migrated_engine, percentile

LOAD = """
INSERT INTO iocs (type, value, tags, sources, tlp, confidence, verdict, base_score, score, severity,
                  first_seen, last_seen, last_seen_day, detection_count, expires_at, active)
SELECT t.type,
       CASE t.type
         WHEN 'ipv4' THEN (10 + mod(g, 200)) || '.' || mod(g / 65536, 256) || '.' || mod(g / 256, 256) || '.' || mod(g, 256)
         WHEN 'domain' THEN 'host' || g || '.zone' || mod(g, 1000) || '.com'
         WHEN 'url' THEN 'http://site' || g || '.net/p/' || md5(g::text)
         WHEN 'sha256' THEN encode(sha256(g::text::bytea), 'hex')
         ELSE md5(g::text) END,
       ARRAY['campaign-' || mod(g, 500), CASE WHEN mod(g, 10) = 0 THEN 'emotet' ELSE 'misc' END],
       ARRAY['feed-' || mod(g, 20)],
       (ARRAY['clear','green','amber','red'])[1 + mod(g, 4)],
       mod(g, 101),
       (ARRAY['malicious','suspicious','harmless','unknown'])[1 + mod(g, 4)],
       mod(g, 101), mod(g, 101),
       (ARRAY['info','low','medium','high','critical'])[1 + mod(g, 5)],
       now() - mod(g, 365) * interval '1 day', now() - mod(g, 90) * interval '1 day',
       ((now() - mod(g, 90) * interval '1 day') AT TIME ZONE 'UTC')::date, 1 + mod(g, 5),
       now() + (mod(g, 120) - 30) * interval '1 day', mod(g, 17) <> 0
FROM generate_series(1, :rows) g
CROSS JOIN LATERAL (SELECT (ARRAY['ipv4','domain','url','sha256','md5'])[1 + mod(g, 5)] AS type) t
"""

REBUILT = ("iocs_tags_gin", "iocs_sources_gin", "iocs_value_trgm", "iocs_value_prefix_idx")


def filters(now: datetime) -> dict[str, dict[str, object]]:
    return {
        "type": {"type": ["domain"]},
        "verdict+severity": {"verdict": ["malicious"], "severity": ["critical"]},
        "tags (all of)": {"tags": ["emotet", "campaign-10"]},
        "source": {"source": "feed-7"},
        "tlp (max)": {"max_tlp": "green", "type": ["md5"]},
        "score range": {"score_min": 95, "score_max": 100},
        "last_seen range": {"last_seen_from": (now - timedelta(days=2)).isoformat(), "last_seen_to": now.isoformat()},
        "value prefix": {"value_prefix": "host12345"},
        "value substring": {"value_contains": "zone771.co"},
        "expired": {"expired": True},
        "active type+tag": {"active": True, "type": ["ipv4"], "tags": ["campaign-40"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=60)
    args = parser.parse_args()

    import msgspec
    from sqlalchemy import text

    from threatflow.devstack import services
    from threatflow.iocs.search import FindRequest, find_sql

    with Stack("tf-bench-find-") as stack:
        pg = stack.start(services.start_postgres(stack.state))
        stack.start(services.start_redis(stack.state))
        env = stack.env(uses="postgres,redis", DB_TIMEOUT_SECONDS="900")  # the one-off load of a million rows
        engine = migrated_engine(env)
        began = time.perf_counter()
        with engine.begin() as conn:
            definitions = {
                name: conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": name}).scalar_one()
                for name in REBUILT
            }
            for name in REBUILT:
                conn.execute(text(f"DROP INDEX {name}"))
            conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
            conn.execute(text(LOAD), {"rows": args.rows})
            for definition in definitions.values():
                conn.execute(text(definition))
        with engine.begin() as conn:
            conn.execute(text("ANALYZE iocs"))
        print(f"loaded {args.rows:,} IoCs in {time.perf_counter() - began:.1f}s")

        from helpers import create_user

        password = create_user(pg.env["DATABASE_URL"], "bench", "reader")
        port = stack.serve_gateway(env, workers=1, threads=4, timeout=60)
        token = login(port, "bench", password)
        conn_http = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def call(method: str, path: str, body: object | None = None, token: str | None = None) -> tuple[int, bytes]:
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            conn_http.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = conn_http.getresponse()
            return response.status, response.read()

        def timed(method: str, path: str, body: object | None) -> list[float]:
            samples = []
            for _ in range(args.requests):
                t = time.perf_counter()
                status, payload = call(method, path, body, token)
                samples.append(time.perf_counter() - t)
                if status != 200:
                    raise SystemExit(f"{path} {body}: {status} {payload[:300]!r}")
            return samples

        base = timed("GET", "/health", None)
        print(f"baseline GET /health: p50 {percentile(base, 0.5) * 1000:.1f} ms, p99 {percentile(base, 0.99) * 1000:.1f} ms")
        print("first = the filter's first call (cold buffers and plan), reported apart from the steady-state p50/p99")
        print(f"{'filter':<20} {'first ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'rows':>5}  plan")
        now = datetime.now(UTC)
        for name, flt in filters(now).items():
            body = {**flt, "limit": 100}
            began = time.perf_counter()
            call("POST", "/api/v1/iocs/find", body, token)
            first = time.perf_counter() - began
            samples = timed("POST", "/api/v1/iocs/find", body)
            _, payload = call("POST", "/api/v1/iocs/find", body, token)
            page = json.loads(payload)
            if page["next_cursor"]:  # the second page costs the same as the first
                samples += timed("POST", "/api/v1/iocs/find", {**body, "cursor": page["next_cursor"]})
            sql, params = find_sql(msgspec.convert(body, FindRequest), now=now)
            with engine.connect() as conn:
                plan = [r[0] for r in conn.execute(text("EXPLAIN " + sql), params)]
            scans = " | ".join(p.strip() for p in plan if "Scan" in p or "Index" in p)[:150]
            p50, p99 = percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000
            print(f"{name:<20} {first * 1000:>8.1f} {p50:>8.1f} {p99:>8.1f} {page['count']:>5}  {scans}")
        engine.dispose()


if __name__ == "__main__":
    main()
