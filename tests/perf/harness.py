"""What the gateway benches share: their own services on free ports, the gateway served by gunicorn,
a bench user's token, and the percentile used for every p50/p99.

    with Stack("tf-bench-x-") as stack:
        pg = stack.start(services.start_postgres(stack.state))
        redis = stack.start(services.start_redis(stack.state))
        env = stack.env(uses="postgres,redis")
        engine = migrated_engine(env)
        port = stack.serve_gateway(env, workers=2, threads=4)
        token = login(port, "bench", create_user(pg.env["DATABASE_URL"], "bench", "reader"))

On leaving the block the gateway is terminated and the services are stopped, last started first.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))  # `helpers`, `flowgen`, `flows_support`

# High enough that the bench's own clients never meet the limits.
UNLIMITED = "1000000/60"


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of `samples` by nearest rank; NaN when there are none."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def _tree_total(pid: int, read: Callable[[str], tuple[int, float]]) -> float:
    """The sum of `read(entry)`'s value over `pid` and its live descendants, from /proc; `read` gives a process's
    parent pid and its value (OSError: the process is gone, skipped)."""
    children: dict[int, list[int]] = {}
    values: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent, value = read(entry)
        except OSError:
            continue
        children.setdefault(parent, []).append(int(entry))
        values[int(entry)] = value
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += values.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its live descendants, from /proc.

    For server-side cost per request: a bench samples it before and after a load level. A
    descendant that exits in between is missed (the benches' servers keep theirs)."""
    tick = os.sysconf("SC_CLK_TCK")

    def read(entry: str) -> tuple[int, float]:
        fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick  # fields 4, 14, 15: ppid, utime, stime

    return _tree_total(pid, read)


def tree_rss_mb(pid: int) -> float:
    """Resident memory (MB) of `pid` and its live descendants now, from /proc."""

    def read(entry: str) -> tuple[int, float]:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text().splitlines() if ":" in line)
        return int(fields["PPid"].strip()), int(fields.get("VmRSS", "0 kB").split()[0]) / 1024

    return _tree_total(pid, read)


def migrated_engine(env: dict[str, str]) -> Any:
    """Put `env` in this process's environment and migrate its database; returns the engine (the caller disposes of it)."""
    from threatflow.adapters.postgres import create_engine
    from threatflow.db.migrate import migrate
    from threatflow.platform.config import Settings

    os.environ.update(env)
    engine = create_engine(Settings.from_env())
    migrate(engine, progress=lambda _m: None)
    return engine


def login(port: int, username: str, password: str, *, headers: dict[str, str] | None = None, timeout: float = 60) -> str:
    """A bearer token from POST /api/v1/auth/token on the gateway at `port`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(
            "POST",
            "/api/v1/auth/token",
            body=json.dumps({"username": username, "password": password}),
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        token: str = json.loads(conn.getresponse().read())["access_token"]
        return token
    finally:
        conn.close()


class Stack:
    """The services a bench started in its own temporary folder, and the gateway it serves in front of them."""

    def __init__(self, prefix: str) -> None:
        self.state = Path(tempfile.mkdtemp(prefix=prefix))
        self.services: list[Any] = []
        self.gateway: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()

    def start(self, service: Any) -> Any:
        """Record a started service (from `threatflow.devstack.services.start_*`) so it is stopped on exit."""
        self.services.append(service)
        return service

    def env(self, *, uses: str | None, log_level: str = "WARNING", rate_limit: str = UNLIMITED, **extra: str) -> dict[str, str]:
        """The gateway's environment: this process's, every started service's, a fresh JWT secret, then `extra`.
        `uses` is THREATFLOW_USES (None leaves it as this process has it)."""
        env = dict(os.environ)
        for service in self.services:
            env.update(service.env)
        env.update(
            {
                "JWT_SECRET": os.urandom(32).hex(),
                "LOG_LEVEL": log_level,
                "RATE_LIMIT_PER_USER": rate_limit,
                "RATE_LIMIT_PER_IP": rate_limit,
            }
        )
        if uses is not None:
            env["THREATFLOW_USES"] = uses
        env.update(extra)
        return env

    def serve_gateway(self, env: dict[str, str], *, workers: int, threads: int, timeout: float = 90) -> int:
        """Serve every function with the local gateway (gunicorn) on a free port; returns the port."""
        from threatflow.devstack import services

        self.stop_gateway()
        port = services.free_port()
        command = [sys.executable, "-m", "threatflow.devstack.gateway", "--port", str(port)]
        # BENCH_GATEWAY_LOG=PATH keeps the gateway's log (a 500's traceback) instead of dropping it.
        log_path = os.environ.get("BENCH_GATEWAY_LOG")
        with open(log_path, "ab") if log_path else open(os.devnull, "wb") as log:  # the child keeps its own copy
            self.gateway = subprocess.Popen(
                [*command, "--workers", str(workers), "--threads", str(threads)], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        services.wait_for_port(port, timeout=timeout, name="gateway")
        return port

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.terminate()
            self.gateway.wait(timeout=20)
            self.gateway = None

    def close(self) -> None:
        from threatflow.devstack import services

        try:
            self.stop_gateway()
        finally:
            for service in reversed(self.services):
                services.stop(service)
            self.services.clear()
