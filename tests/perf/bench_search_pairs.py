"""Uncached GET /api/v1/events/search, alternated same-run pairs: one PostgreSQL and Redis with N events,
the gateway served in turn from each of several code trees, in alternating order, each for a fixed time.

On a shared, noisy machine two separate bench runs differ by more than most changes do; the same data
and services, with the trees alternated (A B, B A, A B ...), leave the change as the main difference.
A tree is a worktree root (`git worktree add --detach /tmp/base <commit>`); its gateway runs with
PYTHONPATH=<tree>/shared. Prints, per run, RPS, p50/p99 and the CPU per request of the gateway and of
PostgreSQL (their process trees), then each tree's figures side by side.

Run: BENCH_EVENTS=300000 .venv/bin/python tests/perf/bench_search_pairs.py /tmp/base . [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from pathlib import Path

from bench_events import hammer, load_events
from harness import Stack, login, migrated_engine

_COLUMNS = {"rps": "{:,.0f}", "p99": "{:.1f}", "gateway_ms": "{:.2f}", "postgres_ms": "{:.2f}"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "trees",
        nargs="*",
        default=[str(Path(__file__).resolve().parents[2])],
        help="code trees (worktree roots) to alternate (default: this checkout alone, as under make bench)",
    )
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_EVENTS") or 300_000))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS") or 8))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    trees = [str(Path(tree).resolve()) for tree in args.trees]

    import flowgen
    from helpers import create_user

    from threatflow.devstack import services

    with Stack("tf-bench-pairs-") as stack:
        pg = stack.start(services.start_postgres(stack.state))
        stack.start(services.start_redis(stack.state))
        env = stack.env(uses="postgres,redis", rate_limit="100000000/60", DB_POOL_SIZE="8", DB_TIMEOUT_SECONDS="900")
        engine = migrated_engine(env)
        took = load_events(engine, args.rows, end=flowgen.default_end() + timedelta(days=1))
        engine.dispose()
        print(f"loaded {args.rows:,} events in {took:.1f} s; {args.clients} clients, {args.seconds:g} s a run, cache off")
        password = create_user(pg.env["DATABASE_URL"], "bench", "reader")
        paths = [f"/api/v1/events/search?srcip={ip}&limit=50" for ip in flowgen.NORMAL_SOURCES + flowgen.ATTACK_SOURCES]
        results: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
        for round_ in range(args.rounds):
            for tree in trees if round_ % 2 == 0 else list(reversed(trees)):
                port = stack.serve_gateway({**env, "FLOWS_SEARCH_CACHE": "off", "PYTHONPATH": f"{tree}/shared"}, workers=2, threads=8)
                token = login(port, "bench", password)
                hammer(port, token, paths, clients=4, seconds=2, lean=True)  # warm both workers' pools
                servers = {"gateway": stack.gateway.pid, "postgres": pg.pid}  # type: ignore[union-attr]
                r = hammer(port, token, paths, clients=args.clients, seconds=args.seconds, servers=servers, lean=True)
                results[tree].append(r)
                print(
                    f"round {round_} {tree}: {r['rps']:,.0f} RPS, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, errors {r['errors']},"
                    f" CPU per request: gateway {r['gateway_ms']:.3f} ms, PostgreSQL {r['postgres_ms']:.3f} ms",
                    flush=True,
                )
                stack.stop_gateway()
        for tree, runs in results.items():
            figures = {name: " / ".join(fmt.format(r[name]) for r in runs) for name, fmt in _COLUMNS.items()}
            print(f"{tree}: RPS {figures['rps']}; p99 {figures['p99']} ms; gateway {figures['gateway_ms']} ms;"
                  f" PostgreSQL {figures['postgres_ms']} ms")  # fmt: skip


if __name__ == "__main__":
    main()
