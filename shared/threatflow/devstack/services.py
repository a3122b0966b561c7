"""Start and stop the backing services on free 127.0.0.1 ports.

Used by the local stack (`threatflow devstack up`) and by the pytest session
fixtures alike, so each run has its own PostgreSQL, Redis and emulators in its
own state folder (`state_dir/<name>/` holds a service's data and log).

Design points:

* Every service runs in the foreground as our direct child (no daemonising, no
  launcher script that forks), so the pid we return is the server's own pid and
  `stop()` can signal it, from this process or from another one.
* Each child gets its own session (`start_new_session=True`): a Ctrl-C in the
  terminal reaches only the supervisor, which then stops the children in order.
* A `start_*` returns only once the service really answers: a real PostgreSQL
  connection, a Redis PING, an HTTP answer from the emulators.
* When we picked the port ourselves and lose the race for it to another process
  ("Address already in use"), the start is retried on a new free port.
* As root, PostgreSQL runs as the `postgres` system user (initdb and postgres
  refuse root). The child drops privileges itself (Popen `user=`/`group=`), so
  no `runuser`/`su` parent sits between us and the postmaster. The only changes
  outside `state_dir/postgres` are execute (search) bits added to ancestor
  folders that the postgres user could not traverse, e.g. pytest's
  `/tmp/pytest-of-root/...`, which are created 0700: see `_let_traverse`.
  Every new pytest session resets `/tmp/pytest-of-root` to 0700, so a start that
  meets "Permission denied" repairs the bit and retries; a running server does
  not care (it works relative to its data folder once up).

Only the standard library is imported at module level; pg8000 is imported when
PostgreSQL is started.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "RunningService",
    "ServiceStartError",
    "free_port",
    "gcloud_sdk_root",
    "is_alive",
    "reset_firestore",
    "start_firestore_emulator",
    "start_postgres",
    "start_pubsub_emulator",
    "start_redis",
    "start_storage_emulator",
    "stop",
    "wait_for_port",
]

LOG_TAIL_LINES = 20
JAVA_HEAP = "-Xmx512m"  # the emulators idle at ~120 MB; cap them so parallel runs stay comfortable
EMULATOR_TIMEOUT = 60.0
SDK_FALLBACK = Path("/usr/lib/google-cloud-sdk")
STORAGE_PROJECT = "threatflow-local"  # the storage emulator ignores it, the JSON API wants one
# Linux caps a Unix socket path (sun_path) at 107 bytes plus the NUL.
_MAX_SOCKET_PATH = 107
_PORT_TAKEN = re.compile(r"address already in use", re.IGNORECASE)
_PORT_ATTEMPTS = 3
_PERMISSION_ATTEMPTS = 4
_EMULATOR_INSTALL_HINT = (
    "install the Google Cloud CLI and `gcloud components install pubsub-emulator cloud-firestore-emulator`, "
    "or the apt packages google-cloud-cli google-cloud-cli-pubsub-emulator google-cloud-cli-firestore-emulator "
    "(with a Java 17 runtime, e.g. openjdk-17-jre-headless)"
)


class ServiceStartError(RuntimeError):
    """A service could not be started; the message names it, its command and the end of its log."""

    def __init__(self, service: str, reason: str, *, command: Sequence[str] | None = None, log_path: Path | None = None) -> None:
        self.service = service
        self.command = list(command) if command is not None else None
        self.log_path = log_path
        self.log_tail = _tail(log_path)
        parts = [f"{service}: {reason}"]
        if self.command:
            parts.append(f"command: {shlex.join(self.command)}")
        if log_path is not None:
            parts.append(f"last {LOG_TAIL_LINES} lines of {log_path}:\n{self.log_tail or '(empty)'}")
        super().__init__("\n".join(parts))


@dataclass(frozen=True)
class RunningService:
    name: str  # "postgres" | "redis" | "pubsub" | "firestore" | "storage"
    pid: int
    port: int
    env: dict[str, str]  # what clients need, e.g. {"REDIS_URL": "redis://127.0.0.1:P/0"}
    log_path: Path


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path | None, lines: int = LOG_TAIL_LINES, *, since: int = 0) -> str:
    if path is None:
        return ""
    try:
        with path.open("rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, *, timeout: float, name: str, log_path: Path | None = None, command: Sequence[str] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while not _port_open(port):
        if time.monotonic() > deadline:
            raise ServiceStartError(name, f"nothing listened on 127.0.0.1:{port} within {timeout:.0f}s", command=command, log_path=log_path)
        time.sleep(0.05)


# -- process handling -----------------------------------------------------------------


@dataclass(frozen=True)
class _Runner:
    """How to run one service: the argv for a port, and when it counts as ready."""

    name: str
    command: Callable[[int], list[str]]
    ready: Callable[[int], bool]  # one quick probe; False (never raise) while not ready yet
    log_path: Path
    timeout: float
    cwd: Path
    user: str | None = None  # run as this user (root only), see _postgres_user


def _launch(runner: _Runner, port: int | None) -> tuple[int, int]:
    """Spawn the service and wait until it is ready; returns (pid, port)."""
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        chosen = port or free_port()
        cmd = runner.command(chosen)
        runner.log_path.parent.mkdir(parents=True, exist_ok=True)
        with runner.log_path.open("ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shlex.join(cmd)}\n".encode())
            log.flush()
            log_start = log.tell()
            try:
                process = subprocess.Popen(  # noqa: S603 - argv of known binaries, never a shell
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=runner.cwd,
                    start_new_session=True,  # Ctrl-C in the terminal must not reach it before our orderly stop
                    user=runner.user,
                    group=runner.user,
                    extra_groups=[] if runner.user else None,  # do not keep root's supplementary groups
                )
            except OSError as exc:
                raise ServiceStartError(runner.name, f"could not run it: {exc}", command=cmd, log_path=runner.log_path) from None
        deadline = time.monotonic() + runner.timeout
        while True:
            if process.poll() is not None:
                if port is None and attempt < _PORT_ATTEMPTS and _PORT_TAKEN.search(_tail(runner.log_path, since=log_start)):
                    break  # someone took the free port between our probe and its bind: try another one
                raise ServiceStartError(
                    runner.name, f"exited with code {process.returncode} while starting", command=cmd, log_path=runner.log_path
                )
            if runner.ready(chosen):
                # From here on the child is tracked by pid only (RunningService is plain data);
                # is_alive/stop reap it with waitpid.
                return process.pid, chosen
            if time.monotonic() > deadline:
                _terminate(process.pid, signal.SIGTERM, timeout=5)
                raise ServiceStartError(
                    runner.name, f"not ready on 127.0.0.1:{chosen} within {runner.timeout:.0f}s", command=cmd, log_path=runner.log_path
                )
            time.sleep(0.05)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _is_dead_zombie(pid: int) -> bool:
    """An exited process that its parent has not reaped yet (only for pids that are not our children)."""
    try:
        # Field 3 of /proc/<pid>/stat is the state; the command name before it may contain spaces.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        # A multi-threaded process whose main thread exited first shows "Z" while its other
        # threads (and its open sockets) are still there: only a lone zombie is really gone.
        return state == "Z" and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except (OSError, IndexError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        # Our child (the usual case): waitpid is the truth, and reaps it so no zombie lingers.
        done, _status = os.waitpid(pid, os.WNOHANG)
        return done != pid
    except ChildProcessError:
        pass  # not our child (e.g. `devstack down` from another shell), or already reaped by subprocess
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return not _is_dead_zombie(pid)


def is_alive(service: RunningService) -> bool:
    return _pid_alive(service.pid)


def _terminate(pid: int, first: signal.Signals, *, timeout: float) -> None:
    """`first` to the process, then SIGKILL to its whole process group after `timeout`."""
    if not _pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            # Its own session, so pgid == pid: this also takes down children it left (e.g. PostgreSQL backends).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 5
            while _pid_alive(pid) and time.monotonic() < kill_deadline:
                time.sleep(0.02)
            return
        time.sleep(0.02)


def stop(service: RunningService, *, timeout: float = 10.0) -> None:
    """Stop a service; idempotent. PostgreSQL gets SIGINT (what `pg_ctl stop -m fast` sends:
    roll back sessions, checkpoint, exit), the others SIGTERM; SIGKILL after `timeout`."""
    first = signal.SIGINT if service.name == "postgres" else signal.SIGTERM
    _terminate(service.pid, first, timeout=timeout)


# -- PostgreSQL -----------------------------------------------------------------------


def _pg_version(bin_dir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<major>/bin
    return tuple(int(part) for part in bin_dir.parent.name.split(".") if part.isdigit())


@lru_cache(maxsize=1)
def _pg_bin() -> Path:
    """The folder holding initdb and postgres: PATH first, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found:
        # Resolve symlinks (e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb) so
        # that postgres is taken from the same installation.
        bin_dir = Path(found).resolve().parent
        if (bin_dir / "postgres").exists():
            return bin_dir
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb") if Path(p).with_name("postgres").exists()]
    if not candidates:
        raise ServiceStartError(
            "postgres",
            "PostgreSQL server binaries (initdb, postgres) not found in PATH or /usr/lib/postgresql/*/bin: "
            "apt-get install postgresql (or set DATABASE_URL to use an existing server)",
        )
    return max(candidates, key=_pg_version)


def _postgres_user() -> str | None:
    """The user to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceStartError(
            "postgres", "running as root needs a 'postgres' system user to run the server as (apt-get install postgresql creates it)"
        ) from None
    return "postgres"


def _let_traverse(path: Path, user: str) -> None:
    """Make every ancestor of `path` searchable by `user`, adding only the missing x bit.

    Needed as root when the state folder sits under a 0700 folder such as pytest's
    /tmp/pytest-of-root/pytest-N/. Only execute (search) permission is added, never
    read or write, and only where the user lacks it.
    """
    entry = pwd.getpwnam(user)
    groups = set(os.getgrouplist(user, entry.pw_gid))
    for folder in reversed(path.resolve().parents):
        st = folder.stat()
        if st.st_uid == entry.pw_uid:
            needed = stat.S_IXUSR
        elif st.st_gid in groups:
            needed = stat.S_IXGRP
        else:
            needed = stat.S_IXOTH
        if not st.st_mode & needed:
            folder.chmod(stat.S_IMODE(st.st_mode) | needed)


def _give_to(path: Path, user: str, *, recursive: bool) -> None:
    entry = pwd.getpwnam(user)
    if path.stat().st_uid == entry.pw_uid and not recursive:
        return
    os.chown(path, entry.pw_uid, entry.pw_gid)
    if recursive:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _pg_ready(port: int) -> bool:
    import pg8000.native

    # A real connection, like pg_isready but stricter: "starting up" is not ready.
    try:
        conn = pg8000.native.Connection("postgres", host="127.0.0.1", port=port, database="postgres", timeout=2, ssl_context=False)
    except Exception:  # pg8000 raises InterfaceError/DatabaseError while it starts; any failure means "not yet"
        return False
    try:
        conn.run("SELECT 1")
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def _prepare_for(user: str, home: Path, data: Path, sockets: Path) -> None:
    """Root only: let `user` reach and own the PostgreSQL folder."""
    _let_traverse(home, user)
    _give_to(home, user, recursive=False)
    _give_to(sockets, user, recursive=False)
    if data.exists() and data.stat().st_uid != pwd.getpwnam(user).pw_uid:
        _give_to(data, user, recursive=True)  # e.g. initialised by a non-root run earlier


def _initdb(bin_dir: Path, data: Path, *, log_path: Path, user: str | None) -> None:
    """initdb into a side folder, renamed into place only on success: a failed initdb can leave
    PG_VERSION behind, and a half-made cluster must never pass for an initialised one."""
    partial = data.with_name(data.name + ".initdb")
    shutil.rmtree(partial, ignore_errors=True)  # a failed earlier attempt's leftovers
    cmd = [str(bin_dir / "initdb"), "-D", str(partial), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} initdb: {shlex.join(cmd)}\n".encode())
        log.flush()
        init = subprocess.run(  # noqa: S603 - fixed argv
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data.parent,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            check=False,
        )
    if init.returncode != 0:
        raise ServiceStartError("postgres", f"initdb failed with code {init.returncode}", command=cmd, log_path=log_path)
    partial.rename(data)


def start_postgres(state_dir: Path, *, port: int | None = None, database: str = "threatflow") -> RunningService:
    """A PostgreSQL server with trust auth for user postgres; data in state_dir/postgres/data survives restarts."""
    import pg8000.native

    bin_dir = _pg_bin()
    user = _postgres_user()
    home = (state_dir / "postgres").absolute()
    data = home / "data"
    sockets = home / "run"
    log_path = home / "postgres.log"
    sockets.mkdir(parents=True, exist_ok=True)
    log_path.touch()  # we open it and hand the fd to postgres, so root may own it

    def command(chosen: int) -> list[str]:
        socket_dir = str(sockets) if len(str(sockets / f".s.PGSQL.{chosen}.lock")) <= _MAX_SOCKET_PATH else ""
        settings = {
            "unix_socket_directories": socket_dir,  # "" (TCP only) when the path is too long for a Unix socket
            # A throwaway dev/test instance: speed over durability.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "128MB",
            "max_connections": "200",
            "logging_collector": "off",  # log to stdout, i.e. our log file
        }
        cmd = [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(chosen)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd

    runner = _Runner("postgres", command, _pg_ready, log_path, timeout=60, cwd=home, user=user)
    # As root, a search bit we add above state_dir can be taken away again while we start: every new
    # pytest session resets /tmp/pytest-of-root to 0700. So on "Permission denied" we repair and retry.
    attempts = _PERMISSION_ATTEMPTS if user else 1
    for attempt in range(1, attempts + 1):
        try:
            if user is not None:
                _prepare_for(user, home, data, sockets)
            if not data.exists():
                _initdb(bin_dir, data, log_path=log_path, user=user)
            pid, chosen = _launch(runner, port)
            break
        except ServiceStartError as exc:
            if attempt == attempts or "Permission denied" not in exc.log_tail:
                raise
            time.sleep(0.2 * attempt)
    port = chosen
    service = RunningService("postgres", pid, port, {"DATABASE_URL": f"postgresql+pg8000://postgres@127.0.0.1:{port}/{database}"}, log_path)
    try:
        conn = pg8000.native.Connection("postgres", host="127.0.0.1", port=port, database="postgres", timeout=10, ssl_context=False)
        try:
            if not conn.run("SELECT 1 FROM pg_database WHERE datname = :name", name=database):
                conn.run(f"CREATE DATABASE {pg8000.native.identifier(database)}")
        finally:
            conn.close()
    except Exception as exc:
        stop(service)
        raise ServiceStartError("postgres", f"could not create database {database!r}: {exc}", log_path=log_path) from exc
    return service


# -- Redis ----------------------------------------------------------------------------


def _redis_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")  # "-LOADING ..." while it loads a dump
    except OSError:
        return False


def start_redis(state_dir: Path, *, port: int | None = None) -> RunningService:
    """A Redis server without persistence (no RDB, no AOF)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceStartError("redis", "redis-server not found in PATH: apt-get install redis-server (or set REDIS_URL)")
    home = (state_dir / "redis").absolute()
    home.mkdir(parents=True, exist_ok=True)

    def command(chosen: int) -> list[str]:
        # Foreground (no --daemonize) so the pid we hold is the server's; --save "" turns RDB snapshots off.
        persistence = ["--save", "", "--appendonly", "no", "--dir", str(home)]
        return [binary, "--bind", "127.0.0.1", "--port", str(chosen), *persistence, "--daemonize", "no"]

    pid, port = _launch(_Runner("redis", command, _redis_ready, home / "redis.log", timeout=30, cwd=home), port)
    return RunningService("redis", pid, port, {"REDIS_URL": f"redis://127.0.0.1:{port}/0"}, home / "redis.log")


# -- Google emulators -----------------------------------------------------------------


@lru_cache(maxsize=1)
def gcloud_sdk_root() -> Path:
    """The Google Cloud SDK folder (asked once per process: `gcloud info` takes ~0.7 s)."""
    gcloud = shutil.which("gcloud")
    if gcloud:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(  # noqa: S603 - fixed argv
                [gcloud, "info", "--format=value(installation.sdk_root)"], capture_output=True, text=True, check=False, timeout=60
            )
            root = Path(out.stdout.strip())
            if out.returncode == 0 and out.stdout.strip() and root.is_dir():
                return root
    if SDK_FALLBACK.is_dir():
        return SDK_FALLBACK
    raise ServiceStartError(
        "emulators", f"the Google Cloud CLI was not found (no gcloud in PATH, no {SDK_FALLBACK}): {_EMULATOR_INSTALL_HINT}"
    )


def _java(name: str) -> str:
    java = shutil.which("java")
    if java is None:
        raise ServiceStartError(name, "java not found in PATH: the emulators need Java 17+ (apt-get install openjdk-17-jre-headless)")
    return java


def _http_ready(path: str = "/") -> Callable[[int], bool]:
    def probe(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP status means the server is up
        except (urllib.error.URLError, OSError):
            return False

    return probe


def start_pubsub_emulator(state_dir: Path, *, port: int | None = None, project: str) -> RunningService:
    """The official Pub/Sub emulator, run from its jar (not via gcloud, which forks and hides the pid)."""
    jar_glob = str(gcloud_sdk_root() / "platform" / "pubsub-emulator" / "lib" / "cloud-pubsub-emulator-*-all.jar")
    jars = sorted(glob.glob(jar_glob))
    if not jars:
        raise ServiceStartError("pubsub", f"Pub/Sub emulator jar not found ({jar_glob}): {_EMULATOR_INSTALL_HINT}")
    java = _java("pubsub")
    home = (state_dir / "pubsub").absolute()
    home.mkdir(parents=True, exist_ok=True)

    def command(chosen: int) -> list[str]:
        return [java, JAVA_HEAP, "-jar", jars[-1], "--host=127.0.0.1", f"--port={chosen}"]

    log_path = home / "pubsub.log"
    pid, port = _launch(_Runner("pubsub", command, _http_ready(), log_path, timeout=EMULATOR_TIMEOUT, cwd=home), port)
    return RunningService("pubsub", pid, port, {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{port}", "PUBSUB_PROJECT_ID": project}, log_path)


def start_firestore_emulator(state_dir: Path, *, port: int | None = None, project: str) -> RunningService:
    """The official Firestore emulator (native mode), run from its jar. `project` is any id clients use."""
    del project  # the emulator serves every project id; kept in the signature for symmetry with pubsub
    jar = gcloud_sdk_root() / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"
    if not jar.is_file():
        raise ServiceStartError("firestore", f"Firestore emulator jar not found ({jar}): {_EMULATOR_INSTALL_HINT}")
    java = _java("firestore")
    home = (state_dir / "firestore").absolute()
    home.mkdir(parents=True, exist_ok=True)

    def command(chosen: int) -> list[str]:
        return [
            java,
            JAVA_HEAP,
            "-Duser.language=en",  # its startup messages are localised otherwise
            "-cp",
            str(jar),
            "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
            "start",
            "--host=127.0.0.1",
            f"--port={chosen}",
        ]

    log_path = home / "firestore.log"
    pid, port = _launch(_Runner("firestore", command, _http_ready(), log_path, timeout=EMULATOR_TIMEOUT, cwd=home), port)
    return RunningService("firestore", pid, port, {"FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{port}"}, log_path)


def reset_firestore(host: str, project: str) -> None:
    """Delete every document of `project` in the Firestore emulator at host ("127.0.0.1:P")."""
    request = urllib.request.Request(f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents", method="DELETE")
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - loopback emulator
        pass


def create_bucket(port: int, bucket: str) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/storage/v1/b?project={STORAGE_PROJECT}",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - loopback emulator
            pass
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # 409: it exists already, which is what we want
            raise


def start_storage_emulator(state_dir: Path, *, port: int | None = None, buckets: Sequence[str] = ()) -> RunningService:
    """gcp-storage-emulator, in memory, with `buckets` created."""
    # The console script sits next to this interpreter when the venv is not activated.
    binary = Path(sys.executable).parent / "gcp-storage-emulator"
    if not binary.exists():
        raise ServiceStartError("storage", f"{binary} not found: pip install gcp-storage-emulator into this environment")
    home = (state_dir / "storage").absolute()
    home.mkdir(parents=True, exist_ok=True)

    def command(chosen: int) -> list[str]:
        # --default-bucket takes a single name, so every bucket is created through the JSON API instead.
        return [str(binary), "start", "--host", "127.0.0.1", "--port", str(chosen), "--in-memory"]

    log_path = home / "storage.log"
    pid, port = _launch(_Runner("storage", command, _http_ready("/storage/v1/b"), log_path, timeout=30, cwd=home), port)
    service = RunningService("storage", pid, port, {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}, log_path)
    for bucket in buckets:
        try:
            create_bucket(port, bucket)
        except (urllib.error.URLError, OSError) as exc:
            stop(service)
            raise ServiceStartError("storage", f"could not create bucket {bucket!r}: {exc}", log_path=log_path) from exc
    return service
