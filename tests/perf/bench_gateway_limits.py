"""The local gateway under hostile HTTP (issue 7): chunked uploads, large headers, fuzzed routes, forged pushes.

Serves the functions with the local gateway (gunicorn) on this run's own
PostgreSQL, Redis and emulators, then prints:
- memory growth of the gateway processes while 4 clients each stream a 200 MB
  chunked body (no Content-Length) to /health, against the bound
  MAX_REQUEST_BYTES x 4;
- the answer to a request with 64 KB of headers (431, JSON);
- N fuzzed requests over every route (tests/route_fuzz.py) and how many got a 5xx;
- forged pushes to every push endpoint and how many were accepted;
- a read flood over its address's limit (with a valid and with a forged token): the gateway's CPU
  and the Redis commands per 429, against /health's CPU in the same run.
Run: .venv/bin/python tests/perf/bench_gateway_limits.py [--fuzz 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path

from harness import REPO, Stack, login, migrated_engine

MAX_BODY = 8 * 1024 * 1024


def rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (gunicorn master + workers)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def chunked_upload(port: int, megabytes: int, result: list[str]) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n")
    chunk = b"a" * (1024 * 1024)
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    try:
        for _ in range(megabytes):
            sock.sendall(frame)
            sent += 1
        sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the gateway answered 413 and closed: it stopped reading
    try:
        answer = sock.recv(200).split(b"\r\n", 1)[0].decode(errors="replace")
    except OSError as exc:
        answer = f"connection closed ({exc.__class__.__name__})"
    result.append(f"{answer} after {sent} MB sent")
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fuzz", type=int, default=2000, help="fuzzed requests over every route")
    parser.add_argument("--upload-mb", type=int, default=200)
    parser.add_argument("--flood-seconds", type=float, default=5.0)
    args = parser.parse_args()

    from threatflow.devstack import services
    from threatflow.platform.manifest import load_manifest

    with Stack("tf-bench-gw-") as stack:
        state = stack.state
        stack.start(services.start_postgres(state))
        stack.start(services.start_redis(state))
        stack.start(services.start_pubsub_emulator(state, project="threatflow-bench"))
        stack.start(services.start_firestore_emulator(state, project="threatflow-bench"))
        stack.start(services.start_storage_emulator(state, buckets=["threatflow-uploads", "threatflow-reports", "threatflow-models"]))
        env = stack.env(
            uses=None,
            log_level="ERROR",
            GOOGLE_CLOUD_PROJECT="threatflow-bench",
            MAX_REQUEST_BYTES=str(MAX_BODY),
            RATE_LIMIT_LOGIN_PER_IP="1000000/60",
            PUSH_AUTH_MODE="token",
            PUSH_AUTH_TOKEN=os.urandom(16).hex(),
        )
        attack = REPO.parent / "shared" / "data" / "attack" / "attack_techniques.json"
        if attack.exists():
            env["ATTACK_DATA_PATH"] = str(attack)
        migrated_engine(env).dispose()
        # A small real model promoted first (as tests/integration/test_fuzz_routes.py does): without one,
        # every scoring route of detect and flows answered its 503 "no flow model is published", counted
        # as a 5xx here and never exercised past it.
        from flows_support import publish, trained_model

        from threatflow.adapters.storage import GcsBlobs

        publish(GcsBlobs("threatflow-bench"), trained_model())  # migrated_engine put env in os.environ
        # The manifest's topics, as the local stack makes them: a route that publishes (running a job)
        # answered the fuzz a 503 "Topic not found", a missing fixture counted as a 5xx.
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        for topic in load_manifest().topics:
            publisher.create_topic(name=publisher.topic_path("threatflow-bench", topic))
        from helpers import create_user

        password = create_user(env["DATABASE_URL"], "bench", "admin", clearance="red")
        port = stack.serve_gateway(env, workers=1, threads=8, timeout=90)
        gateway = stack.gateway
        assert gateway is not None
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/health")
        conn.getresponse().read()

        # 1. chunked uploads
        before = rss_kb(gateway.pid)
        results: list[str] = []
        threads = [threading.Thread(target=chunked_upload, args=(port, args.upload_mb, results)) for _ in range(4)]
        peak = before
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_kb(gateway.pid))
            time.sleep(0.05)
        growth_mb = (peak - before) / 1024
        bound_mb = MAX_BODY * 4 / (1024 * 1024)
        print(f"chunked uploads: 4 x {args.upload_mb} MB to /health, MAX_REQUEST_BYTES {MAX_BODY // (1024 * 1024)} MB")
        print(
            f"  gateway memory growth {growth_mb:7.1f} MB for 4 uploads of {args.upload_mb} MB each"
            f" (MAX_REQUEST_BYTES x 4 = {bound_mb:.0f} MB, plus allocator slack)"
        )
        for line in results:
            print(f"  answer: {line}")

        # 2. large headers
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/health", headers={"X-Big": "b" * 65536})
        response = conn.getresponse()
        body = response.read()
        print(f"64 KB of headers: {response.status} {response.getheader('Content-Type')} {body[:90]!r}")

        # 3. fuzz over every route
        from route_fuzz import HTTP_FUNCTIONS, Tally, fuzz_over_http

        tally = Tally()
        fuzz_over_http(
            port, lambda: login(port, "bench", password), examples_per_function=max(1, args.fuzz // len(HTTP_FUNCTIONS)), tally=tally
        )
        print(
            f"fuzzed requests: {tally.requests}, 5xx: {len(tally.server_errors)}, non-JSON errors: {len(tally.not_json)}"
            f" (logins shed by the hashing budget, 503 by design: {tally.shed};"
            f" 503 naming unconfigured reference data: {len(tally.missing)})"
        )
        for line in (tally.server_errors + tally.not_json)[:10]:
            print(f"  {line}")

        # 4. forged pushes
        manifest = load_manifest()
        accepted = tried = 0
        message = {"data": "e30=", "attributes": {"job": "heartbeat"}, "messageId": "1", "publishTime": "2026-01-01T00:00:00Z"}
        envelope = json.dumps({"message": message, "subscription": "projects/x/subscriptions/y"}).encode()
        for sub in manifest.push_subscriptions():
            for query, auth in (("", None), ("?token=guess", None), ("", "Bearer forged.oidc.token")):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
                c.request("POST", f"/_push/{sub.push_to}{query}", body=envelope, headers=headers)
                r = c.getresponse()
                r.read()
                tried += 1
                accepted += int(r.status < 300)
        print(f"forged pushes: {tried} tried, {accepted} accepted")
        stack.stop_gateway()

        # 5. a read flood over its address's limit
        import redis
        from bench_events import hammer

        port = stack.serve_gateway({**env, "RATE_LIMIT_PER_IP": "60/60"}, workers=1, threads=8, timeout=90)
        token = login(port, "bench", password)
        counter = redis.Redis.from_url(env["REDIS_URL"])

        def evalsha_calls() -> int:
            return int(counter.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

        servers = {"gateway": stack.gateway.pid}
        health = hammer(port, token, ["/health"], clients=8, seconds=args.flood_seconds, servers=servers)
        print(
            f"a read flood over its IP limit (60/min), 8 clients, {args.flood_seconds:.0f} s each; /health: {health['rps']:,.0f} RPS,"
            f" gateway CPU {health['gateway_ms']:.3f} ms a request"
        )
        for label, bearer in (("valid token", token), ("forged token", "x" * 40)):
            before = evalsha_calls()
            flood = hammer(port, bearer, ["/api/v1/auth/me"], clients=8, seconds=args.flood_seconds, servers=servers, log_errors=False)
            refused = flood["errors"]
            print(
                f"  {label}: {flood['requests']:,} requests, {refused:,} refused, {flood['rps']:,.0f} RPS;"
                f" gateway CPU {flood['gateway_ms']:.3f} ms a request ({flood['gateway_ms'] / health['gateway_ms']:.2f}x /health);"
                f" Redis scripts run: {evalsha_calls() - before:,}"
            )
        counter.close()


if __name__ == "__main__":
    main()
