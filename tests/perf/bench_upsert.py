"""IoC batch upsert through the HTTP function into PostgreSQL.

Starts its own PostgreSQL and Redis on free ports, serves the functions with
the local gateway (gunicorn), and POSTs batches of 1,000 mixed IoCs (with
normalisation and validation) from several client threads. Prints IoCs/s and
p50/p99 per batch for first inserts and for re-upserting the same batches (all
updates), plus the same store call without HTTP as an in-run baseline.
Target: >= 20,000 IoCs/s sustained on 2 cores.
Run: make bench   (or .venv/bin/python tests/perf/bench_upsert.py [--batches N])
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time

from harness import Stack, login, migrated_engine, percentile


def make_values(n: int, seed: int) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    out: list[dict[str, object]] = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            value = f"{rnd.randint(11, 220)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
        elif kind == 1:
            value = f"bad-{seed}-{i}-{rnd.getrandbits(24):x}.example-{i % 97}.com"
        elif kind == 2:
            value = f"hxxps://evil-{seed}-{i}[.]net/path/{rnd.getrandbits(32):x}?q={i}"
        elif kind == 3:
            value = f"{rnd.getrandbits(256):064x}"
        elif kind == 4:
            value = f"{rnd.getrandbits(128):032x}"
        else:
            value = f"user{seed}x{i}@phish-{i % 51}.org"
        out.append({"value": value, "tags": ["bench", f"set-{seed % 7}"], "source": "bench", "confidence": 60})
    return out


def run_phase(port: int, token: str, bodies: list[bytes], clients: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    queue = list(enumerate(bodies))

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if not queue:
                    break
                _, body = queue.pop()
            started = time.perf_counter()
            conn.request(
                "POST", "/api/v1/iocs/batch", body=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            )
            response = conn.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                raise SystemExit(f"batch failed: {response.status} {payload[:300]!r}")
            with lock:
                latencies.append(elapsed)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - began, latencies


def report(label: str, seconds: float, latencies: list[float], batch: int) -> None:
    total = len(latencies) * batch
    print(
        f"{label:<28} {total / seconds:>10,.0f} IoCs/s   batch p50 {percentile(latencies, 0.5) * 1000:7.1f} ms"
        f"   p99 {percentile(latencies, 0.99) * 1000:7.1f} ms   ({len(latencies)} batches of {batch})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=200)  # 200,000 IoCs: long enough to be "sustained"
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from threatflow.adapters.postgres import unit_of_work
    from threatflow.devstack import services
    from threatflow.iocs import repository, service

    with Stack("tf-bench-") as stack:
        pg = stack.start(services.start_postgres(stack.state))
        stack.start(services.start_redis(stack.state))
        env = stack.env(uses="postgres,redis")
        engine = migrated_engine(env)
        from helpers import create_user

        password = create_user(pg.env["DATABASE_URL"], "bench", "analyst")
        port = stack.serve_gateway(env, workers=args.workers, threads=4, timeout=60)
        token = login(port, "bench", password)

        bodies = [json.dumps({"iocs": make_values(args.batch_size, seed)}).encode() for seed in range(args.batches)]
        warm = [json.dumps({"iocs": make_values(args.batch_size, 10_000 + s)}).encode() for s in range(4)]
        run_phase(port, token, warm, args.clients)  # warm every worker's pool and caches

        print(f"batch upsert over HTTP: {args.batches} batches x {args.batch_size}, {args.clients} clients, gateway {args.workers} workers")
        seconds, latencies = run_phase(port, token, bodies, args.clients)
        report("insert (all created)", seconds, latencies, args.batch_size)
        seconds, latencies = run_phase(port, token, bodies, args.clients)
        report("re-upsert (all updated)", seconds, latencies, args.batch_size)

        # Baseline in the same run: the service call without HTTP, one thread.
        with unit_of_work(engine) as conn:
            policies = repository.policies(conn)
        import msgspec

        raws = [msgspec.json.decode(b, type=service.BatchIn).iocs for b in bodies[:10]]
        from datetime import UTC, datetime

        samples = []
        began = time.perf_counter()
        for raw in raws:
            t = time.perf_counter()
            with unit_of_work(engine) as conn:
                service.upsert_batch(
                    raw, conn=conn, now=datetime.now(UTC), policies=policies, warninglists=None, clearance="red", new_tlp="amber"
                )
            samples.append(time.perf_counter() - t)
        report("baseline: service, no HTTP", time.perf_counter() - began, samples, args.batch_size)
        with engine.connect() as c:
            from sqlalchemy import text

            rows = c.execute(text("SELECT count(*), sum(detection_count) FROM iocs")).one()
        print(f"rows stored: {rows[0]:,}; detections recorded: {rows[1]:,}")
        engine.dispose()


if __name__ == "__main__":
    main()
