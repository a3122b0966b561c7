"""The `threatflow` command line.

Operator commands (devstack, db, users, jobs) talk to the services directly,
with the environment of a running local stack filled in when the shell has no
DATABASE_URL etc. of its own. Client commands (login, api, whoami) talk to the
HTTP API like any other client.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from threatflow.cli import common
from threatflow.platform.errors import DependencyError, ThreatFlowError, ValidationError

if TYPE_CHECKING:
    from threatflow.auth.repository import UserRepository

CREDENTIALS = Path(os.environ.get("THREATFLOW_CREDENTIALS") or Path.home() / ".config" / "threatflow" / "credentials.json")


_with_stack_env = common.with_stack_env
_settings = common.settings
_engine = common.engine


# -- devstack ----------------------------------------------------------------------


def cmd_devstack(args: argparse.Namespace) -> int:
    from threatflow.devstack import stack

    state_dir = Path(args.state_dir).resolve() if args.state_dir else stack.state_dir_from_env()
    if args.action == "up":
        port = args.port if args.port is not None else int(os.environ.get("THREATFLOW_PORT") or stack.DEFAULT_PORT)
        return stack.up(state_dir=state_dir, port=port, scheduler=not args.no_scheduler)
    if args.action == "down":
        return stack.down(state_dir=state_dir)
    return stack.status(state_dir=state_dir)


# -- db ------------------------------------------------------------------------------


def cmd_db(args: argparse.Namespace) -> int:
    from threatflow.db import migrate

    engine = _engine()
    sql_dir = Path(args.sql_dir) if args.sql_dir else migrate.DEFAULT_SQL_DIR
    if args.action == "migrate":
        report = migrate.migrate(engine, sql_dir=sql_dir)
        print(f"{len(report.applied)} applied, {len(report.already_applied)} already applied")
    else:
        for version, name in migrate.applied_versions(engine):
            print(f"{version:04d} {name}")
    return 0


# -- users ---------------------------------------------------------------------------


def cmd_users(args: argparse.Namespace) -> int:
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.auth.repository import UserRepository

    with unit_of_work(_engine()) as conn:  # one transaction for the command
        return _users_action(args, UserRepository(conn))


def _users_action(args: argparse.Namespace, users: UserRepository) -> int:
    from threatflow.auth import clearance as tlp_clearance
    from threatflow.auth import service
    from threatflow.auth.model import Role

    if args.action == "create":
        if not args.password_stdin:
            raise SystemExit("pass the password on standard input with --password-stdin (it never goes on the command line)")
        # The bootstrap of clearances: an admin grants at most their own, so the first red one is made here.
        level = tlp_clearance.parse(args.clearance) if args.clearance is not None else None
        password = sys.stdin.readline().rstrip("\r\n")
        role = Role.parse(args.role)
        user = service.create_user(
            username=args.name, password=password, role=role, users=users, clearance=level, actor=None, actor_clearance=None
        )
        print(f"created {user.username} ({user.role.value}, clearance {user.clearance}), id {user.id}")
    elif args.action == "list":
        after = 0
        while page := users.list(after_id=after, limit=500):
            for u in page:
                state = "disabled" if u.disabled else "active"
                print(f"{u.id:>6}  {u.username:<32} {u.role.value:<8} {state:<8} last login {u.last_login_at or '-'}")
            after = page[-1].id
    else:
        disabled = args.action == "disable"
        service.set_disabled(username=args.name, disabled=disabled, users=users, actor=None, actor_clearance=None, via="cli")
        print(f"{args.name} {args.action}d")
    return 0


# -- jobs ----------------------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace) -> int:
    from threatflow.platform.manifest import load_manifest

    manifest = load_manifest()
    if args.action == "list":
        for s in manifest.schedules.values():
            target = f"topic {s.topic} {s.attributes}" if s.topic else f"function {s.function}"
            print(f"{s.name:<18} {s.schedule:<14} {s.time_zone:<10} -> {target}  {s.description}")
        return 0
    schedule = manifest.schedules.get(args.name)
    if schedule is None:
        raise SystemExit(f"unknown job {args.name!r}; known: {', '.join(sorted(manifest.schedules))}")
    from threatflow.adapters.pubsub import PubSubPublisher
    from threatflow.devstack.scheduler import fire, manual_body

    consumers = sorted(f.name for f in manifest.functions.values() if schedule.topic and f.topic == schedule.topic)
    given = _given_params(args)
    manual = given is None
    if given is not None:  # checked before anything is published, as POST /api/v1/admin/jobs/{job}/run checks them
        job = schedule.attributes.get("job") if "maintenance" in consumers else None  # only its jobs take params
        schedule = dataclasses.replace(schedule, body=_body_with_params(schedule.name, job, manual_body(schedule.body), given))
    from threatflow.devstack.stack import StackState, state_dir_from_env

    settings = _settings()
    state = StackState.read(state_dir_from_env())
    gateway_url = state.gateway_url if state else f"http://127.0.0.1:{os.environ.get('THREATFLOW_PORT', '8080')}"
    fired = fire(schedule, publisher=PubSubPublisher(settings.project), gateway_url=gateway_url, manual=manual)
    if fired.run_id is None:
        print(f"fired {schedule.name}: HTTP {fired.ident}")
    elif "maintenance" not in consumers:  # only the maintenance function keeps run records
        print(f"fired {schedule.name}: message {fired.ident} on topic {schedule.topic} (for {', '.join(consumers)}: no run record)")
    else:
        record = f"threatflow api GET /api/v1/admin/runs/{fired.run_id}"
        print(f"fired {schedule.name}: run {fired.run_id} (message {fired.ident}); its record: {record}")
    return 0


def _given_params(args: argparse.Namespace) -> dict[str, Any] | None:
    """`--params JSON`, then each `--param name=value` over it (a value that parses as JSON is that JSON: 30, true,
    null, "30"; else the text); None when neither is given."""
    if args.params is None and not args.param:
        return None
    given: dict[str, Any] = {}
    if args.params is not None:
        try:
            given = json.loads(args.params)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested past the decoder's depth
            raise ValidationError(f"--params is not JSON ({exc})", field="params") from None
        if not isinstance(given, dict):
            raise ValidationError("--params must be a JSON object, e.g. '{\"retention_days\": 30}'", field="params")
    for pair in args.param:
        name, equals, text = pair.partition("=")
        if not equals or not name.strip():
            raise ValidationError(f"--param takes name=value, e.g. retention_days=30; got {pair!r}", field="params")
        try:
            given[name.strip()] = json.loads(text)
        except (ValueError, RecursionError):
            given[name.strip()] = text
    return given


def _body_with_params(name: str, job: str | None, body: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Schedule `name`'s (manual) body with `given` over its params, checked as the admin API checks a run's params
    (runs.validate_params, what the maintenance function checks again); a ValidationError names params.<name>.
    Only the maintenance function's jobs (`job`) take params."""
    from threatflow.jobs.runs import validate_params

    if job is None:
        first = next(iter(given), "")
        raise ValidationError(f"{name} takes no params: it is not a maintenance job (params.{first})", field=f"params.{first}")
    params = body.get("params")
    merged = {**(params if isinstance(params, dict) else {}), **given}
    try:
        validate_params(job, merged)
    except ValidationError as exc:
        named = f" ({exc.field})" if exc.field and exc.field not in exc.message else ""
        raise ValidationError(f"{exc.message}{named}", field=exc.field) from None
    return {**body, "params": merged}


# -- HTTP client ---------------------------------------------------------------------------


def _stored_login() -> dict[str, Any]:
    """`threatflow login`'s {"url", "access_token"}, or {} when there is none (or it is unreadable)."""
    try:
        stored = json.loads(CREDENTIALS.read_text()) if CREDENTIALS.exists() else {}
    except ValueError:
        return {}
    return stored if isinstance(stored, dict) else {}


def _base_url(args: argparse.Namespace) -> str:
    """--url, else THREATFLOW_URL, else the stored login's server, else the local stack (the running one's gateway,
    whatever port it serves on; else THREATFLOW_PORT or 8080). The variable wins over the stored login, as
    THREATFLOW_TOKEN does: a stored URL that won sent the variable's token to another server."""
    if getattr(args, "url", None):
        return str(args.url).rstrip("/")
    if os.environ.get("THREATFLOW_URL"):
        return os.environ["THREATFLOW_URL"].rstrip("/")
    stored = _stored_login().get("url")
    if stored:
        return str(stored).rstrip("/")
    from threatflow.devstack.stack import running_gateway_url

    return running_gateway_url() or f"http://127.0.0.1:{os.environ.get('THREATFLOW_PORT', '8080')}"


def _request(method: str, url: str, *, token: str | None, body: Any = None, raw: bool = False) -> tuple[int, Any]:
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = requests.request(method, url, json=body, headers=headers, timeout=300)
    except requests.ConnectionError as exc:
        raise DependencyError(
            f"cannot reach the API at {url.split('/api/', 1)[0]}: is the stack up (make run)? ({exc.__class__.__name__})"
        ) from None
    if raw:
        return response.status_code, response
    try:
        payload = response.json()
    except ValueError:
        payload = response.text
    return response.status_code, payload


def cmd_login(args: argparse.Namespace) -> int:
    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else __import__("getpass").getpass()
    url = _base_url(args)
    status, payload = _request("POST", f"{url}/api/v1/auth/token", token=None, body={"username": args.username, "password": password})
    if status != 200:
        print(json.dumps(payload, indent=2), file=sys.stderr)
        return 1
    CREDENTIALS.parent.mkdir(parents=True, exist_ok=True)
    CREDENTIALS.write_text(json.dumps({"url": url, "access_token": payload["access_token"]}))
    CREDENTIALS.chmod(0o600)
    print(f"logged in to {url} as {args.username}; token valid for {payload['expires_in']} s")
    return 0


def _token(base: str) -> str | None:
    """THREATFLOW_TOKEN, else the stored login's token if `base` is the server that issued it (never another's).

    THREATFLOW_TOKEN set with THREATFLOW_URL (scripts, the e2e tests) is that server's token: `--url` naming another
    server sent it there. Alone, it names no server and goes wherever the command is pointed."""
    token = os.environ.get("THREATFLOW_TOKEN")
    env_url = os.environ.get("THREATFLOW_URL")
    if token is not None and (not env_url or env_url.rstrip("/") == base.rstrip("/")):
        return token
    stored = _stored_login()
    if str(stored.get("url") or "").rstrip("/") == base.rstrip("/") and stored.get("access_token"):
        return str(stored["access_token"])
    return None


def cmd_iocs(args: argparse.Namespace) -> int:
    from threatflow.cli import iocs

    base = _base_url(args)
    token = _token(base)

    def call(method: str, path: str, body: Any = None, raw: bool = False) -> tuple[int, Any]:
        return _request(method, f"{base}{path}", token=token, body=body, raw=raw)

    return iocs.COMMANDS[args.action](args, call)


def cmd_flows(args: argparse.Namespace) -> int:
    from threatflow.cli import flows

    if args.upload if args.action == "load" else False:
        _with_stack_env()  # the upload goes to the stack's Cloud Storage emulator
    base = _base_url(args)
    return flows.cmd_load(args, base=base, token=_token(base))


def cmd_enrich(args: argparse.Namespace) -> int:
    from threatflow.cli import enrich

    base = _base_url(args)
    token = _token(base)

    def call(method: str, path: str, body: Any = None, raw: bool = False) -> tuple[int, Any]:
        return _request(method, f"{base}{path}", token=token, body=body, raw=raw)

    return enrich.run(args, call)


def _json_data(data: str) -> Any:
    """--data as JSON: the text itself, or `@FILE`'s."""
    where = "--data"
    if data.startswith("@"):
        where = data[1:]
        try:
            data = Path(where).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError(f"{where}: {getattr(exc, 'strerror', None) or exc}", field="data") from None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValidationError(f"{where}: not JSON ({getattr(exc, 'msg', exc)})", field="data") from None


def cmd_api(args: argparse.Namespace) -> int:
    base = _base_url(args)
    token = _token(base)
    body = None
    if args.data is not None:
        body = _json_data(args.data)
    path = args.path if args.path.startswith("/") else f"/{args.path}"
    status, payload = _request(args.method.upper(), f"{base}{path}", token=token, body=body)
    print(json.dumps(payload, indent=2) if not isinstance(payload, str) else payload)
    return 0 if status < 400 else 1


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threatflow", description="ThreatFlow operator and API client.")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("devstack", help="run the whole system locally")
    dev.add_argument("action", choices=["up", "down", "status"])
    dev.add_argument("--port", type=int, help="gateway port (default THREATFLOW_PORT or 8080)")
    dev.add_argument("--state-dir", help="state folder (default THREATFLOW_STATE_DIR or ./.devstack)")
    dev.add_argument("--no-scheduler", action="store_true", help="do not run the manifest's schedules")
    dev.set_defaults(run=cmd_devstack)

    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["migrate", "status"])
    db.add_argument("--sql-dir", help="migrations folder (default ./sql)")
    db.set_defaults(run=cmd_db)

    users = sub.add_parser("users", help="manage API users")
    users_sub = users.add_subparsers(dest="action", required=True)
    create = users_sub.add_parser("create", help="create a user")
    create.add_argument("name")
    create.add_argument("--role", required=True, choices=["admin", "analyst", "reader"])
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    create.add_argument("--clearance", help="TLP clearance (default amber); admins grant at most their own, the first red one is made here")
    users_sub.add_parser("list", help="list users")
    for action in ("disable", "enable"):
        p = users_sub.add_parser(action, help=f"{action} a user")
        p.add_argument("name")
    users.set_defaults(run=cmd_users)

    jobs = sub.add_parser("jobs", help="scheduled jobs")
    jobs.add_argument("action", choices=["list", "run"])
    jobs.add_argument("name", nargs="?")
    jobs.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="a param of the job (run); JSON when it parses, else text"
    )
    jobs.add_argument("--params", metavar="JSON", help="the job's params as a JSON object (run); --param values go over it")
    jobs.set_defaults(run=cmd_jobs)

    login = sub.add_parser("login", help="get a token and remember it")
    login.add_argument("username")
    login.add_argument("--url", help="API base URL (default THREATFLOW_URL or the local stack)")
    login.add_argument("--password-stdin", action="store_true")
    login.set_defaults(run=cmd_login)

    api = sub.add_parser("api", help="call the API: threatflow api GET /api/v1/auth/me")
    api.add_argument("method", choices=["GET", "POST", "PUT", "PATCH", "DELETE", "get", "post", "put", "patch", "delete"])
    api.add_argument("path")
    api.add_argument("--data", help="JSON body, or @file")
    api.add_argument("--url", help="API base URL")
    api.set_defaults(run=cmd_api)

    from threatflow.cli import iocs

    iocs.add_parser(sub, cmd_iocs)

    from threatflow.cli import flows

    flows.add_parser(sub, cmd_flows)

    from threatflow.cli import models

    models.add_parser(sub)

    from threatflow.cli import enrich

    enrich.add_parser(sub, cmd_enrich)

    whoami = sub.add_parser("whoami", help="who the stored token belongs to")
    whoami.add_argument("--url")
    whoami.set_defaults(run=lambda a: cmd_api(argparse.Namespace(method="GET", path="/api/v1/auth/me", data=None, url=a.url)))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "jobs" and args.action == "run" and not args.name:
        raise SystemExit("threatflow jobs run NAME: name a job (threatflow jobs list)")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        sys.exit(run(args))
    except ThreatFlowError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        # The reader went away (`threatflow api ... | head`): stop as a program killed by SIGPIPE does. stdout is
        # pointed at /dev/null first, so the interpreter's flush of the unwritten rest at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)


if __name__ == "__main__":
    main()
