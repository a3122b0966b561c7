"""A read's rate-limit check (RateLimiter.hit_all, two keys) under thread contention, as in a gateway worker:
8 threads, each looping over one check and a fixed slice of Python work (the rest of a request), against a
Redis of its own. Prints the process's CPU per loop: what the check costs once threads hand the GIL to
each other at every socket call. Trees (worktree roots) are alternated, each in a process of its own.

Run: .venv/bin/python tests/perf/bench_rate_limit_threads.py /tmp/base . [--loops 1500] [--rounds 3]
(no tree named, as under `make bench`: this checkout alone)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from harness import Stack

_ONE_TREE = """
import sys, threading, time
from threatflow.adapters import redis as adapter
limiter = adapter.RateLimiter(adapter.connect(sys.argv[1]), breaker=adapter.CircuitBreaker(open_seconds=5))
loops, checks = int(sys.argv[2]), [("ip:default:127.0.0.1", 100_000_000, 60), ("user:bench", 100_000_000, 60)]
def request():
    for _ in range(loops):
        limiter.hit_all(checks)
        sum(i * i for i in range(3000))  # the rest of a request
limiter.hit_all(checks)
threads = [threading.Thread(target=request) for _ in range(8)]
began = time.process_time()
for t in threads: t.start()
for t in threads: t.join()
print(f"{(time.process_time() - began) * 1e6 / (8 * loops):.0f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    # No tree named (make bench): this checkout alone, its figure without a pair.
    parser.add_argument("trees", nargs="*", default=[str(Path(__file__).resolve().parents[2])])
    parser.add_argument("--loops", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from threatflow.devstack import services

    with Stack("tf-bench-rl-threads-") as stack:
        url = stack.start(services.start_redis(stack.state)).env["REDIS_URL"]
        results: dict[str, list[str]] = {str(Path(t).resolve()): [] for t in args.trees}
        for round_ in range(args.rounds):
            for tree in results if round_ % 2 == 0 else list(reversed(results)):
                env = {**os.environ, "PYTHONPATH": f"{tree}/shared"}
                run = subprocess.run(
                    [sys.executable, "-c", _ONE_TREE, url, str(args.loops)], env=env, capture_output=True, text=True, check=True
                )
                results[tree].append(run.stdout.strip())
        for tree, cpu in results.items():
            print(f"{tree}: CPU per loop (check + work) {' / '.join(cpu)} µs")


if __name__ == "__main__":
    main()
