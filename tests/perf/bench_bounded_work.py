"""What the bounded reads cost on hub-shaped data (a plain script that prints, not a test).

    .venv/bin/python tests/perf/bench_bounded_work.py [--iocs 200000] [--links 30000] [--tags 19200]

Loads, straight into its own PostgreSQL: --iocs domains tagged `emotet` (a threat's name on much of the
store), one hub IoC linked to --links threats and holding --tags tags (20,000 IoCs share one of them),
the threat Emotet related to each of those threats by two verbs and each of them to Emotet by one, then times
each route once through the gateway (gunicorn) and prints milliseconds, answer bytes and the flag that says the
answer was cut. GET /health is the in-run baseline. tests/integration/test_bounded_work.py
asserts the bounds by counts; these figures are what the bounds buy on this machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time

from harness import Stack, login, migrated_engine

LOAD = """
INSERT INTO iocs (type, value, tags, sources, tlp, confidence, verdict, base_score, score, severity,
                  first_seen, last_seen, last_seen_day, detection_count, expires_at, active)
SELECT 'domain', 'host' || g || '.example.com', ARRAY['emotet', 'c' || mod(g, 500)], ARRAY['feed-' || mod(g, 20)], 'amber', 50,
       'unknown', 50, 50, 'medium', now(), now(), current_date, 1, now() + interval '30 days', true
FROM generate_series(1, :n) g
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iocs", type=int, default=200_000)
    parser.add_argument("--links", type=int, default=30_000)
    parser.add_argument("--tags", type=int, default=19_200)
    args = parser.parse_args()

    from helpers import create_user
    from sqlalchemy import text

    from threatflow.devstack import services

    with Stack("tf-bench-bounded-") as stack:
        pg = stack.start(services.start_postgres(stack.state))
        stack.start(services.start_redis(stack.state))
        env = stack.env(uses="postgres,redis", DB_TIMEOUT_SECONDS="900")
        engine = migrated_engine(env)
        began = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text(LOAD), {"n": args.iocs})
            hub = conn.execute(
                text(
                    "INSERT INTO iocs (type, value, tags, sources, first_seen, last_seen, last_seen_day)"
                    " SELECT 'domain', 'hub.example.com', ARRAY(SELECT 'tag-' || g FROM generate_series(1, :t) g),"
                    " ARRAY['bench'], now(), now(), current_date RETURNING id"
                ),
                {"t": args.tags},
            ).scalar_one()
            conn.execute(text("UPDATE iocs SET tags = tags || ARRAY['tag-1'] WHERE id <= 20000"))
            conn.execute(
                text("INSERT INTO threats (kind, name) SELECT 'malware', 'family-' || g FROM generate_series(1, :n) g"), {"n": args.links}
            )
            threat = conn.execute(text("INSERT INTO threats (kind, name) VALUES ('malware', 'Emotet') RETURNING id")).scalar_one()
            conn.execute(
                text("INSERT INTO threat_iocs (threat_id, ioc_id) SELECT id, :h FROM threats WHERE id <> :t"), {"h": hub, "t": threat}
            )
            for relation in ("SELECT :t, id, 'uses'", "SELECT :t, id, 'drops'", "SELECT id, :t, 'attributed-to'"):
                conn.execute(
                    text(f"INSERT INTO threat_relations (source_id, target_id, type) {relation} FROM threats WHERE id <> :t"), {"t": threat}
                )
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        print(
            f"loaded {args.iocs:,} IoCs, a hub with {args.links:,} threat links and {args.tags:,} tags"
            f" in {time.perf_counter() - began:.1f}s"
        )

        password = create_user(pg.env["DATABASE_URL"], "bench", "analyst")
        port = stack.serve_gateway(env, workers=1, threads=2, timeout=300)
        token = login(port, "bench", password)
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

        def call(method: str, path: str, body: object | None = None) -> tuple[float, int, bytes, dict[str, str]]:
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            started = time.perf_counter()
            client.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = client.getresponse()
            payload = response.read()
            return (time.perf_counter() - started) * 1000, response.status, payload, dict(response.getheaders())

        def flag(payload: bytes, headers: dict[str, str]) -> str:
            if "X-Export-Truncated" in headers:
                return f"truncated={headers['X-Export-Truncated']} links_truncated={headers.get('X-Export-Links-Truncated')}"
            try:
                body = json.loads(payload)
            except ValueError:
                return ""
            if not isinstance(body, dict):
                return ""
            flags = ("truncated", "threats_truncated", "tags_truncated", "relations_truncated", "read")
            return " ".join(f"{k}={body[k]}" for k in flags if k in body)

        cases = [
            ("baseline GET /health", "GET", "/health", None),
            ("threats of the hub", "GET", f"/api/v1/threats/by-ioc/{hub}", None),
            ("related of the hub", "GET", f"/api/v1/iocs/{hub}/related", None),
            ("Emotet, related to the hub's", "GET", f"/api/v1/threats/{threat}", None),
            ("correlate Emotet (dry run)", "POST", "/api/v1/threats/correlate", {"threat_id": threat, "link": False}),
            ("STIX export, limit 10,000", "GET", "/api/v1/iocs/export?format=stix&limit=10000", None),
            ("STIX export of the hub", "GET", f"/api/v1/iocs/export?format=stix&ids={hub}&limit=1", None),
            ("find tags_any of 64", "POST", "/api/v1/iocs/find", {"tags_any": [f"none-{i}" for i in range(64)], "limit": 1000}),
            ("stats (counted)", "GET", "/api/v1/iocs/stats", None),
            ("stats (the instance's copy)", "GET", "/api/v1/iocs/stats", None),
        ]
        print(f"{'request':<30} {'ms':>9} {'status':>6} {'bytes':>10}  cut")
        for name, method, path, body in cases:
            ms, status, payload, headers = call(method, path, body)
            print(f"{name:<30} {ms:>9.1f} {status:>6} {len(payload):>10,}  {flag(payload, headers)}")


if __name__ == "__main__":
    main()
