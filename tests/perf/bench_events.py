"""GET /api/v1/events/search on 1,000,000 flow events: RPS and p50/p95/p99 at 20 and 50 clients.

Setup: its own PostgreSQL and Redis; N events from tests/perf/flowgen.py (dev-data
flows, 340 sources, 30 days) COPY'd straight into the partitioned flow_events
(the prediction columns are the ground truth, model_version "bench-groundtruth":
scoring is not what this measures; bench_ingest.py does), then VACUUM ANALYZE.
Then the gateway (gunicorn, 2 workers x 8 threads) is hit by client processes,
each request a random srcip with limit 50, for a fixed time per level: once with
the Redis cache off, once on (FLOWS_SEARCH_CACHE in the gateway's environment,
which wins over the manifest's `flag`). The in-run baseline is GET /health
through the same gateway at the same concurrency; "client cores" is the load
generator's own CPU on the same machine.
Targets: p99 < 50 ms at 20 clients; at least 1,200 requests/s.

Run: .venv/bin/python tests/perf/bench_events.py            (1,000,000 events)
     BENCH_EVENTS=100000 BENCH_SECONDS=5 .venv/bin/python tests/perf/bench_events.py --cache on   (quick)
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from harness import Stack, login, migrated_engine, percentile, tree_cpu_seconds

COLUMNS = (
    "event_time, event_key, srcip, sport, dstip, dsport, proto, service, state, stime, ltime, dur, sbytes, dbytes, spkts, dpkts,"
    " features, label, attack_cat, predicted_attack, probability, predicted_cat, model_version, source"
)


def load_events(engine, rows: int, *, end: datetime) -> float:
    """COPY `rows` generated events into flow_events; returns seconds taken."""
    import flowgen

    from threatflow.flows import repository

    began = time.perf_counter()
    with engine.begin() as conn:
        repository.ensure_partitions(conn, [(end - timedelta(days=d)).date() for d in range(32)])
    namespace = uuid.UUID("3b0c4f8e-5a4c-4a3e-9d0b-8e2f6a7c1d10")
    stored = repository.STORED_FEATURES
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        chunk: list[str] = []
        for index, flow in enumerate(flowgen.generate(rows, end=end)):
            at = datetime.fromtimestamp(int(flow["stime"]), UTC).isoformat()
            features = "{" + ",".join(flow.get(name) or "NULL" for name in stored) + "}"
            attack = flow["label"] == "1"
            category = flow["attack_cat"] or "Normal"
            values = (
                at, str(uuid.uuid5(namespace, str(index))), flow["srcip"], flow["sport"], flow["dstip"], flow["dsport"],
                flow["proto"], flow["service"], flow["state"], at,
                datetime.fromtimestamp(int(flow["ltime"]), UTC).isoformat(), flow["dur"], flow["sbytes"], flow["dbytes"],
                flow["spkts"], flow["dpkts"], f'"{features}"', flow["label"], category, "t" if attack else "f",
                "0.99" if attack else "0.01", category, "bench-groundtruth", "bench",
            )  # fmt: skip
            chunk.append(",".join(values) + "\n")
            if len(chunk) >= 100_000:
                cursor.execute(f"COPY flow_events ({COLUMNS}) FROM STDIN WITH (FORMAT csv)", stream=flowgen.copy_buffer(chunk))
                chunk = []
        if chunk:
            cursor.execute(f"COPY flow_events ({COLUMNS}) FROM STDIN WITH (FORMAT csv)", stream=flowgen.copy_buffer(chunk))
        raw.commit()
        # VACUUM runs outside a transaction: autocommit on the driver's connection (the pool's proxy
        # would only take the attribute itself), and off again before it goes back to the pool.
        raw.dbapi_connection.autocommit = True
        try:
            cursor.execute("VACUUM (ANALYZE) flow_events")
        finally:
            raw.dbapi_connection.autocommit = False
    finally:
        raw.close()
    return time.perf_counter() - began


def _client(
    port: int, token: str, paths: list[str], seconds: float, threads: int, out: multiprocessing.Queue, log_errors: bool, lean: bool
) -> None:
    import threading

    results: list[tuple[float, int, str]] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    ask = _lean_request if lean else _http_client_request

    def run(seed: int) -> None:
        rng = random.Random(seed)
        conn = _LeanConnection(port, token) if lean else http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        while time.perf_counter() < stop_at:
            path = rng.choice(paths)
            began = time.perf_counter()
            status, cache, body = ask(conn, path, token)
            mine.append((time.perf_counter() - began, status, cache))
            if status != 200 and log_errors:
                print(f"{path}: {status} {body[:200]!r}", file=sys.stderr)
        with lock:
            results.extend(mine)

    workers = [threading.Thread(target=run, args=(os.getpid() * 100 + i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(results)


def _http_client_request(conn: http.client.HTTPConnection, path: str, token: str) -> tuple[int, str, bytes]:
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    body = response.read()
    return response.status, response.getheader("X-Cache") or "", body


class _LeanConnection:
    """A keep-alive HTTP/1.1 client that sends prebuilt GETs and reads Content-Length bodies.

    The load generator shares the 2 cores with the server: http.client spends about 0.3 ms of
    CPU per request, a fifth of what is measured, so the server's own limit would be hidden
    behind the client's (what wrk or hey avoid by being written in C). This one spends a
    fraction of that. It only reads what the gateway sends: a status line, headers with a
    Content-Length (never chunked), a body."""

    def __init__(self, port: int, token: str) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.requests: dict[str, bytes] = {}
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.buffer = b""

    def get(self, path: str) -> tuple[int, str, bytes]:
        request = self.requests.get(path)
        if request is None:
            request = self.requests[path] = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + self.auth + b"\r\n"
        self.sock.sendall(request)
        data = self.buffer
        while (end := data.find(b"\r\n\r\n")) < 0:
            data += self._recv()
        head, data = data[:end].decode("latin-1"), data[end + 4 :]
        lines = head.split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" not in headers:
            raise RuntimeError(f"the lean client reads Content-Length bodies only; got {head!r}")
        size = int(headers["content-length"])
        while len(data) < size:
            data += self._recv()
        self.buffer = data[size:]
        return int(lines[0].split(" ", 2)[1]), headers.get("x-cache", ""), data[:size]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("the gateway closed the connection")
        return chunk


def _lean_request(conn: _LeanConnection, path: str, token: str) -> tuple[int, str, bytes]:
    return conn.get(path)


def hammer(
    port: int,
    token: str,
    paths: list[str],
    *,
    clients: int,
    seconds: float,
    processes: int = 4,
    servers: dict[str, int] | None = None,
    log_errors: bool = True,
    lean: bool = False,
) -> dict[str, float]:
    """`clients` concurrent keep-alive connections spread over client processes, for `seconds`.
    `servers` (name -> pid) get their process trees' CPU per request reported as `<name>_ms`.
    Answers other than 200 are counted as `errors` (and printed, unless `log_errors` is false).
    `lean` sends with _LeanConnection instead of http.client (less client CPU on the shared cores)."""
    import resource

    queue: multiprocessing.Queue = multiprocessing.Queue()
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    procs = [multiprocessing.Process(target=_client, args=(port, token, paths, seconds, n, queue, log_errors, lean)) for n in per if n]
    began = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = {name: tree_cpu_seconds(pid) for name, pid in (servers or {}).items()}
    for p in procs:
        p.start()
    results = [r for _ in procs for r in queue.get()]
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - began
    server_cpu = {name: tree_cpu_seconds(pid) - server_before[name] for name, pid in (servers or {}).items()}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the client processes, once joined
    client_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    latencies = [r[0] for r in results]
    errors = sum(1 for r in results if r[1] != 200)
    hits = sum(1 for r in results if r[2] == "hit")
    return {
        "requests": len(results),
        "rps": len(results) / seconds if seconds else 0.0,
        "p50": percentile(latencies, 0.50) * 1000,
        "p95": percentile(latencies, 0.95) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "errors": errors,
        "hit_ratio": hits / len(results) if results else 0.0,
        "elapsed": elapsed,
        "client_cores": client_cpu / elapsed,
        "client_ms": client_cpu * 1000 / max(1, len(results)),
        **{f"{name}_ms": cpu * 1000 / max(1, len(results)) for name, cpu in server_cpu.items()},
    }


def window_cost(engine, *, now: datetime, runs: int = 1500) -> None:
    """PostgreSQL CPU per page, one connection, the same prepared generic plan over 30 days and over the
    newest day, for the attack sources (dense enough that both windows fill the 50-row page: a window
    that returns fewer rows is cheaper for that reason alone, which an earlier reading of this took
    for the cost of starting a scan in each partition)."""
    from dataclasses import replace

    import flowgen

    from threatflow.flows import repository, search

    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        conn.rollback()
        conn.autocommit = True  # a transaction would keep its partition locks and make the next statements cheaper
        conn.run("SET plan_cache_mode = force_generic_plan")
        backend = conn.run("SELECT pg_backend_pid()")[0][0]
        base = search.parse_search({"srcip": flowgen.ATTACK_SOURCES[0], "limit": "50"}, now=now)
        pick = random.Random(5)
        costs = {}
        for days in (30, 1, 30, 1):
            statements: dict[str, object] = {}
            rows = 0
            before = tree_cpu_seconds(backend)
            for _ in range(runs):
                query = replace(base, srcip=pick.choice(flowgen.ATTACK_SOURCES), start=base.end - timedelta(days=days))
                sql, params = repository.search_sql(query)
                statement = statements.get(sql) or statements.setdefault(sql, conn.prepare(sql))
                rows += statement.run(**params)[0][0]
            costs.setdefault(days, []).append((tree_cpu_seconds(backend) - before) * 1000 / runs)
            for statement in statements.values():
                statement.close()
            if rows != 50 * runs:  # too few events (BENCH_EVENTS=100000: a day's attack rows do not fill each page)
                print(f"PostgreSQL CPU per page: skipped, a {days}-day window did not fill every page ({rows} rows), not comparable")
                return
        print(
            "PostgreSQL CPU per page, one connection, generic plan, 50 rows each: 30 days "
            + " / ".join(f"{c:.3f}" for c in costs[30])
            + " ms, newest day "
            + " / ".join(f"{c:.3f}" for c in costs[1])
            + " ms"
        )
    finally:
        raw.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_EVENTS") or 1_000_000))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS") or 10))
    parser.add_argument("--clients", default="20,50")
    parser.add_argument("--cache", default="off,on", help="cache modes to run: off, on or both")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes of the gateway")
    parser.add_argument("--threads", type=int, default=8, help="threads per gunicorn worker")
    parser.add_argument(
        "--client", choices=("lean", "http.client"), default="lean", help="load generator: lean sockets (default) or http.client"
    )
    args = parser.parse_args()
    lean = args.client == "lean"

    import flowgen
    from sqlalchemy import text

    from threatflow.devstack import services
    from threatflow.flows import repository, search

    with Stack("tf-bench-events-") as stack:
        pg = stack.start(services.start_postgres(stack.state))
        stack.start(services.start_redis(stack.state))
        env = stack.env(uses="postgres,redis", rate_limit="100000000/60", DB_POOL_SIZE="8", DB_TIMEOUT_SECONDS="900")
        engine = migrated_engine(env)
        end = flowgen.default_end() + timedelta(days=1)
        took = load_events(engine, args.rows, end=end)
        with engine.connect() as conn:
            size = conn.execute(
                text(
                    "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_inherits i"
                    " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'flow_events'::regclass"
                )
            ).scalar_one()
        print(f"loaded {args.rows:,} events by COPY in {took:.1f} s ({args.rows / took:,.0f} rows/s); flow_events with indexes: {size}")

        now = datetime.now(UTC)
        sample = search.parse_search({"srcip": flowgen.ATTACK_SOURCES[3], "limit": "50"}, now=now)
        sql, params = repository.search_sql(sample)
        with engine.connect() as conn:
            # The generic plan each connection prepares once and reuses (its planning time is paid once).
            conn.execute(text("SET plan_cache_mode = force_generic_plan"))
            plan = [r[0] for r in conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql), params)]
        print("generic plan of one search (srcip, 30 days, limit 50), as prepared per connection:")
        scans = [line for line in plan if "Scan" in line]
        for line in plan:
            if any(k in line for k in ("Limit", "Append", "Subplans Removed", "Execution", "Planning Time")) or line in scans[:2]:
                print("   ", line.strip()[:140])
        print(f"    ... {len(scans)} partition scans in the plan, {sum('never executed' in line for line in plan)} never executed")
        window_cost(engine, now=now)
        engine.dispose()

        from helpers import create_user

        password = create_user(pg.env["DATABASE_URL"], "bench", "reader")
        sources = flowgen.NORMAL_SOURCES + flowgen.ATTACK_SOURCES
        paths = [f"/api/v1/events/search?srcip={ip}&limit=50" for ip in sources]
        levels = [int(c) for c in args.clients.split(",")]
        header = ("cache", "path", "clients", "requests", "RPS", "p50 ms", "p95 ms", "p99 ms", "hit", "err", "client cores")
        header += ("client CPU ms", "gw CPU ms", "pg CPU ms")
        print(f"load generator: {args.client}")
        print("{:<6} {:<8} {:>7} {:>9} {:>8} {:>7} {:>7} {:>7} {:>5} {:>4} {:>12} {:>13} {:>9} {:>9}".format(*header))
        for mode in args.cache.split(","):
            port = stack.serve_gateway({**env, "FLOWS_SEARCH_CACHE": mode}, workers=args.workers, threads=args.threads, timeout=90)
            token = login(port, "bench", password)
            hammer(port, token, paths, clients=4, seconds=2, lean=lean)  # warm both workers' pools and caches
            for clients in levels:
                for name, targets in (("/health", ["/health"]), ("search", paths)):
                    servers = {"gateway": stack.gateway.pid, "postgres": pg.pid}
                    r = hammer(port, token, targets, clients=clients, seconds=args.seconds, servers=servers, lean=lean)
                    print(
                        f"{mode:<6} {name:<8} {clients:>7} {r['requests']:>9,} {r['rps']:>8,.0f} {r['p50']:>7.1f} {r['p95']:>7.1f}"
                        f" {r['p99']:>7.1f} {r['hit_ratio']:>5.2f} {r['errors']:>4} {r['client_cores']:>12.2f} {r['client_ms']:>13.2f}"
                        f" {r['gateway_ms']:>9.2f} {r['postgres_ms']:>9.2f}"
                    )
            stack.stop_gateway()
        print("ratio: a search's RPS over /health's at the same concurrency is the share of the work the query and its JSON add;")
        print("client cores / client CPU ms: the load generator's own CPU (same 2 cores) in all and per request; /health's RPS is")
        print("bounded by it as much as by the server (--client http.client spends about 3x the lean client's)")
        print("gw / pg CPU ms: the gateway's and PostgreSQL's CPU per request (their process trees, from /proc): steadier than RPS")
        print("on a shared machine, and what sets the RPS one instance of each can reach")


if __name__ == "__main__":
    main()
