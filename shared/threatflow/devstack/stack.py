"""`threatflow devstack up|down|status`: the whole system on one machine.

`up` starts PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are given),
the Pub/Sub, Firestore and Cloud Storage emulators, migrates, creates the
manifest's topics and push subscriptions, serves every function on one port,
runs the manifest's schedules, prints where everything listens, and stops every
child on Ctrl-C or `devstack down`. Its state (data, logs, the generated JWT
secret, `stack.json`) lives in one folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from threatflow.platform.manifest import REPO_ROOT, Manifest, load_manifest

DEFAULT_STATE_DIR = REPO_ROOT / ".devstack"
DEFAULT_PORT = 8080
DEFAULT_PROJECT = "threatflow-local"
STACK_FILE = "stack.json"


@dataclass
class StackState:
    supervisor_pid: int
    gateway_url: str
    env: dict[str, str]
    services: dict[str, dict[str, Any]] = field(default_factory=dict)

    def write(self, state_dir: Path) -> None:
        path = state_dir / STACK_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        path.chmod(0o600)  # it holds the JWT secret

    @classmethod
    def read(cls, state_dir: Path) -> StackState | None:
        path = state_dir / STACK_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def state_dir_from_env() -> Path:
    return Path(os.environ.get("THREATFLOW_STATE_DIR") or DEFAULT_STATE_DIR).resolve()


def jwt_secret(state_dir: Path) -> str:
    """Generated once per state folder; never shipped in code."""
    path = state_dir / "jwt_secret"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _say(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


def _bucket_names(manifest: Manifest) -> dict[str, str]:
    from threatflow.platform.config import VARIABLES

    defaults = {v.name: v.default for v in VARIABLES}
    return {b.env: os.environ.get(b.env) or defaults.get(b.env) or f"threatflow-{b.name}" for b in manifest.buckets.values()}


def write_env_file(state_dir: Path, env: dict[str, str]) -> Path:
    """The stack's environment as `export NAME=value` lines in `<state>/env` (owner-only: it holds the secrets),
    each value shell-quoted so that `. <state>/env` gives it back as it is (the JSON settings hold spaces and braces)."""
    path = state_dir / "env"
    path.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items())))
    path.chmod(0o600)
    return path


def start_services(state_dir: Path, manifest: Manifest, *, project: str) -> tuple[dict[str, str], list[Any]]:
    """Start the backing services; returns the environment clients need and the handles."""
    from threatflow.devstack import services

    env: dict[str, str] = {"GOOGLE_CLOUD_PROJECT": project}
    started: list[Any] = []

    def launch(name: str, start: Any) -> None:
        began = time.monotonic()
        service = start()
        started.append(service)
        env.update(service.env)
        _say(f"{name:<10} ready on 127.0.0.1:{service.port} in {time.monotonic() - began:.1f}s (log {service.log_path})")

    try:
        if os.environ.get("DATABASE_URL"):
            env["DATABASE_URL"] = os.environ["DATABASE_URL"]
            _say("postgres   using DATABASE_URL")
        else:
            launch("postgres", lambda: services.start_postgres(state_dir))
        if os.environ.get("REDIS_URL"):
            env["REDIS_URL"] = os.environ["REDIS_URL"]
            _say("redis      using REDIS_URL")
        else:
            launch("redis", lambda: services.start_redis(state_dir))
        buckets = _bucket_names(manifest)
        env.update(buckets)
        launch("pubsub", lambda: services.start_pubsub_emulator(state_dir, project=project))
        launch("firestore", lambda: services.start_firestore_emulator(state_dir, project=project))
        launch("storage", lambda: services.start_storage_emulator(state_dir, buckets=sorted(buckets.values())))
    except BaseException:
        stop_services(started)
        raise
    return env, started


def start_fake_intel(state_dir: Path, manifest: Manifest) -> tuple[dict[str, str], subprocess.Popen[bytes]]:
    """FAKE_INTEL=1: the fake intel APIs (tests/fakes/intel) in a child process; every
    source points at them (INTEL_<SOURCE>_URL) and every missing key gets a dummy value."""
    log_path = state_dir / "fake-intel.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.intel", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=log_path.open("ab"),
        start_new_session=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the fake intel servers did not start; see {log_path}")
    info = json.loads(line)
    env = dict(info["env"])
    for source in manifest.sources.values():
        if source.secret_env and not os.environ.get(source.secret_env):
            env[source.secret_env] = f"fake-{source.name}-key"
    _say(f"fake-intel ready at {info['url']} (pid {process.pid}); every source points at it")
    return env, process


def stop_services(started: list[Any]) -> None:
    from threatflow.devstack import services

    for service in reversed(started):
        try:
            services.stop(service)
        except Exception as exc:  # keep stopping the rest
            _say(f"could not stop {service.name}: {exc}")


def push_token(state_dir: Path) -> str:
    """The local push authentication: the emulator cannot attach OIDC tokens, so each push
    subscription's endpoint URL carries this secret (see adapters/pushauth.py)."""
    path = state_dir / "push_token"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def provision_pubsub(manifest: Manifest, *, project: str, gateway_url: str, token: str) -> None:
    """Topics and subscriptions from the manifest, push endpoints at the gateway (authenticated by `token`)."""
    from threatflow.adapters.pubsub import PubSubAdmin
    from threatflow.devstack.gateway import push_path

    admin = PubSubAdmin(project)
    try:
        for topic in manifest.topics:
            admin.ensure_topic(topic)
        for sub in manifest.subscriptions.values():
            endpoint = f"{gateway_url}{push_path(sub.push_to)}?token={token}" if sub.push_to else None
            admin.ensure_subscription(sub, push_endpoint=endpoint)
    finally:
        admin.close()


def wait_ready(url: str, *, timeout: float, process: subprocess.Popen[bytes] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the gateway exited with code {process.returncode}; see its log")
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=10) as response:  # noqa: S310 - loopback
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
        time.sleep(0.3)
    raise RuntimeError(f"{url}/ready did not answer 200 within {timeout:.0f}s: {last}")


def up(*, state_dir: Path, port: int, project: str = DEFAULT_PROJECT, scheduler: bool = True) -> int:
    from threatflow.adapters.pubsub import PubSubPublisher
    from threatflow.devstack.scheduler import LocalScheduler
    from threatflow.devstack.services import free_port

    existing = StackState.read(state_dir)
    if existing and _alive(existing.supervisor_pid):
        _say(f"already running (pid {existing.supervisor_pid}) at {existing.gateway_url}; `threatflow devstack down` stops it")
        return 1
    state_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest()
    port = port or free_port()
    if _port_taken(port):  # else every service starts, and the pushes and the readiness check reach the other server
        _say(
            f"port {port} is in use (another stack? `threatflow devstack status` in its folder); choose one with THREATFLOW_PORT=N make run"
        )
        return 1
    gateway_url = f"http://127.0.0.1:{port}"
    began = time.monotonic()
    env, started = start_services(state_dir, manifest, project=project)
    fake_intel: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    local_scheduler: LocalScheduler | None = None
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        env.update(
            {
                "THREATFLOW_ENV": "local",
                "JWT_SECRET": jwt_secret(state_dir),
                "PUSH_AUTH_MODE": "token",
                "PUSH_AUTH_TOKEN": push_token(state_dir),
                "THREATFLOW_STATE_DIR": str(state_dir),
                **manifest.sources_env(),  # the enrichment functions' intel sources, as Terraform gives them
            }
        )
        if os.environ.get("FAKE_INTEL") == "1":
            intel_env, fake_intel = start_fake_intel(state_dir, manifest)
            env.update(intel_env)
        os.environ.update(env)
        from threatflow.adapters.postgres import create_engine
        from threatflow.db.migrate import migrate
        from threatflow.platform.config import Settings

        engine = create_engine(Settings.from_env())
        report = migrate(engine, progress=lambda m: _say(f"migrate: {m}"))
        engine.dispose()
        _say(f"migrations: {len(report.applied)} applied, {len(report.already_applied)} already applied")
        provision_pubsub(manifest, project=project, gateway_url=gateway_url, token=env["PUSH_AUTH_TOKEN"])
        _say(f"pub/sub: {len(manifest.topics)} topics, {len(manifest.subscriptions)} subscriptions")
        log_path = state_dir / "gateway.log"
        gateway = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "threatflow.devstack.gateway", "--port", str(port)],
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
        readiness = wait_ready(gateway_url, timeout=120, process=gateway)
        publisher = PubSubPublisher(project)
        if scheduler:
            local_scheduler = LocalScheduler(manifest, publisher=publisher, gateway_url=gateway_url)
            local_scheduler.start()
        services_info = {s.name: {"pid": s.pid, "port": s.port, "log": str(s.log_path)} for s in started}
        services_info["gateway"] = {"pid": gateway.pid, "port": port, "log": str(log_path)}
        StackState(os.getpid(), gateway_url, env, services_info).write(state_dir)
        write_env_file(state_dir, env)
        _print_summary(manifest, gateway_url, services_info, readiness, local_scheduler, time.monotonic() - began)
        while not stopping.wait(1.0):
            if gateway.poll() is not None:
                _say(f"the gateway exited with code {gateway.returncode}; stopping (see {log_path})")
                return 1
        return 0
    finally:
        _say("stopping")
        if local_scheduler:
            local_scheduler.stop()
        if gateway and gateway.poll() is None:
            gateway.terminate()
            try:
                gateway.wait(timeout=10)
            except subprocess.TimeoutExpired:
                gateway.kill()
        if fake_intel and fake_intel.poll() is None:
            fake_intel.terminate()
            try:
                fake_intel.wait(timeout=10)
            except subprocess.TimeoutExpired:
                fake_intel.kill()
        stop_services(started)
        (state_dir / STACK_FILE).unlink(missing_ok=True)
        _say("stopped")


def _print_summary(
    manifest: Manifest, url: str, services_info: dict[str, Any], readiness: dict[str, Any], sched: Any, seconds: float
) -> None:
    lines = [f"ThreatFlow local stack is up in {seconds:.1f}s: {url}", ""]
    lines += [f"  {name:<10} 127.0.0.1:{info['port']:<6} pid {info['pid']:<7} log {info['log']}" for name, info in services_info.items()]
    lines += ["", "  routes:"]
    lines += [f"    {url}{prefix:<22} -> {fn}" for prefix, fn in sorted(manifest.route_table())]
    lines += [f"    {url}/_push/{s.push_to:<16} <- push from subscription {s.name}" for s in manifest.push_subscriptions()]
    if sched:
        lines += ["", "  schedules:"]
        lines += [f"    {name:<16} next at {when:%Y-%m-%d %H:%M:%S %Z}" for name, when in sched.next_runs().items()]
    lines += ["", f"  ready: {json.dumps({k: v['ok'] for k, v in readiness.get('checks', {}).items()})}"]
    lines += ["  create the first admin:  threatflow users create NAME --role admin --password-stdin", "  Ctrl-C stops everything."]
    print("\n".join(lines), flush=True)


def _port_taken(port: int) -> bool:
    """Whether the gateway could not bind 127.0.0.1:port (it binds with SO_REUSEADDR, as this check does)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def down(*, state_dir: Path, timeout: float = 30.0) -> int:
    state = StackState.read(state_dir)
    if state is None:
        _say("no stack is running from this state folder")
        return 0
    if _alive(state.supervisor_pid):
        os.kill(state.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(state.supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    # A supervisor killed with SIGKILL leaves children; stop whatever is left.
    from threatflow.devstack import services

    for name, info in state.services.items():
        leftover = services.RunningService(name, info["pid"], info["port"], {}, Path(info["log"]))
        if services.is_alive(leftover):
            _say(f"stopping leftover {name} (pid {info['pid']})")
            services.stop(leftover)
    (state_dir / STACK_FILE).unlink(missing_ok=True)
    _say("down")
    return 0


def status(*, state_dir: Path) -> int:
    state = StackState.read(state_dir)
    if state is None or not _alive(state.supervisor_pid):
        print("not running")
        return 1
    print(f"running (supervisor pid {state.supervisor_pid}) at {state.gateway_url}")
    for name, info in state.services.items():
        print(f"  {name:<10} 127.0.0.1:{info['port']:<6} pid {info['pid']:<7} {'up' if _alive(info['pid']) else 'DOWN'}")
    try:
        with urllib.request.urlopen(f"{state.gateway_url}/ready", timeout=10) as response:  # noqa: S310 - loopback
            print(f"  /ready: {response.status} {response.read().decode()}")
            return 0
    except urllib.error.HTTPError as exc:
        print(f"  /ready: {exc.code} {exc.read().decode()}")
    except urllib.error.URLError as exc:
        print(f"  /ready: unreachable ({exc.reason})")
    return 1


def stack_env(state_dir: Path | None = None) -> dict[str, str]:
    """The running stack's environment, for CLI commands run from another shell."""
    state = StackState.read(state_dir or state_dir_from_env())
    return dict(state.env) if state and _alive(state.supervisor_pid) else {}


def running_gateway_url(state_dir: Path | None = None) -> str | None:
    """The running stack's gateway (it serves on THREATFLOW_PORT as it was when it started), else None."""
    state = StackState.read(state_dir or state_dir_from_env())
    return state.gateway_url if state and _alive(state.supervisor_pid) else None
