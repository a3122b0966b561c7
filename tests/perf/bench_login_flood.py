"""`/auth/me` latency while wrong logins flood the token endpoint (issue 7).

Serves the functions with the local gateway (gunicorn, TRUSTED_PROXY_HOPS=1 so
X-Forwarded-For names the client), then measures `/auth/me` p50/p99 from one
client: idle (the in-run baseline), then under ~10 wrong logins/s in total
from 16 addresses (each under the per-IP login limit), twice:
  (a) all against one account: the per-account lockout stops hashing after LOGIN_MAX_FAILURES;
  (b) each attempt a different unknown username: every attempt costs an Argon2
      hash, bounded by LOGIN_CONCURRENT_HASHES per instance.
Target: p50 under flood within 2x of idle.
Run: .venv/bin/python tests/perf/bench_login_flood.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
import uuid
from collections import Counter

from harness import Stack, login, migrated_engine, percentile


def measure_me(port: int, token: str, seconds: float) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        conn.request("GET", "/api/v1/auth/me", headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "192.0.2.250"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"/auth/me answered {response.status}")
        out.append(time.perf_counter() - began)
        time.sleep(0.02)
    return out


def flood(port: int, *, seconds: float, rate: float, addresses: int, username: str | None, statuses: Counter[int]) -> threading.Thread:
    def one_address(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        interval = addresses / rate
        end = time.monotonic() + seconds
        next_at = time.monotonic() + index * interval / addresses
        while time.monotonic() < end:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            name = username or f"nobody-{uuid.uuid4().hex[:10]}"
            try:
                conn.request(
                    "POST",
                    "/api/v1/auth/token",
                    body=json.dumps({"username": name, "password": "wrong password guess"}),
                    headers={"Content-Type": "application/json", "X-Forwarded-For": f"198.51.100.{index + 1}"},
                )
                response = conn.getresponse()
                response.read()
                statuses[response.status] += 1
            except (ConnectionError, http.client.HTTPException):
                statuses[0] += 1  # the server closed the connection (counted as 0); open a new one
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    threads = [threading.Thread(target=one_address, args=(i,), daemon=True) for i in range(addresses)]
    for t in threads:
        t.start()
    runner = threading.Thread(target=lambda: [t.join() for t in threads], daemon=True)
    runner.start()
    return runner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=10, help="wrong logins per second, all addresses together")
    parser.add_argument("--addresses", type=int, default=16)
    args = parser.parse_args()

    from threatflow.devstack import services

    with Stack("tf-bench-login-") as stack:
        pg = stack.start(services.start_postgres(stack.state))
        stack.start(services.start_redis(stack.state))
        # The watcher's own requests must not hit its limits; the token endpoint keeps its default per-IP limit.
        env = stack.env(uses="postgres,redis", log_level="ERROR", TRUSTED_PROXY_HOPS="1")
        migrated_engine(env).dispose()
        from helpers import create_user

        password = create_user(pg.env["DATABASE_URL"], "watcher", "reader")
        create_user(pg.env["DATABASE_URL"], "victim", "analyst")
        port = stack.serve_gateway(env, workers=1, threads=8, timeout=60)
        token = login(port, "watcher", password, headers={"X-Forwarded-For": "192.0.2.250"})
        measure_me(port, token, 2)  # warm

        print(f"/auth/me under a login flood: {args.rate:g} wrong logins/s from {args.addresses} addresses, {args.seconds:g} s each phase")
        idle = measure_me(port, token, args.seconds / 2)
        base = percentile(idle, 0.5)
        print(
            f"idle (baseline)              p50 {base * 1000:7.2f} ms   p99 {percentile(idle, 0.99) * 1000:7.2f} ms   ({len(idle)} requests)"
        )
        for label, username in (("(a) one account", "victim"), ("(b) unknown names", None)):
            statuses: Counter[int] = Counter()
            runner = flood(port, seconds=args.seconds, rate=args.rate, addresses=args.addresses, username=username, statuses=statuses)
            samples = measure_me(port, token, args.seconds)
            runner.join()
            p50 = percentile(samples, 0.5)
            print(
                f"flood {label:<22} p50 {p50 * 1000:7.2f} ms   p99 {percentile(samples, 0.99) * 1000:7.2f} ms   "
                f"{p50 / base:4.2f}x idle   login answers {dict(sorted(statuses.items()))}"
            )


if __name__ == "__main__":
    main()
