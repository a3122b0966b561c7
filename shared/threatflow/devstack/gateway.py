"""One WSGI process hosting every function behind the public /api/v1 paths.

This plays API Gateway locally: HTTP functions are matched by the manifest's
route prefixes (longest first) and see the full public path, as they do behind
API Gateway with path appending; topic-triggered functions sit behind
`/_push/<name>`, where the Pub/Sub emulator's push subscriptions deliver.
Each function is loaded with functions-framework's own `create_app`, so the
code path is the one Cloud Functions runs.

Like Google's front end, the gateway bounds what it accepts before a function
sees it: a body over MAX_REQUEST_BYTES is refused (413) without being read,
with or without Content-Length (a chunked body is cut off at the limit), and
every error it or gunicorn writes (431 for oversized headers, 400 for a
malformed request) is JSON like the functions' own errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from threatflow.platform.manifest import REPO_ROOT, Manifest, TriggerType, load_manifest

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
PUSH_PREFIX = "/_push/"
SCHEDULE_PREFIX = "/_schedule/"


def push_path(function: str) -> str:
    return f"{PUSH_PREFIX}{function}"


def load_function_apps(manifest: Manifest, functions_dir: Path) -> dict[str, WsgiApp]:
    import os

    import functions_framework

    apps: dict[str, WsgiApp] = {}
    for fn in manifest.functions.values():
        source = functions_dir / fn.folder / "main.py"
        # A per-source deployment (enrich-<source>) is its folder's code loaded with its own
        # env (ENRICH_SOURCE), as in the cloud; the module reads it at import. Any other manifest
        # value is a default: a variable the gateway was started with wins, so a bench's or an
        # operator's FLOWS_SEARCH_CACHE=on is not silently replaced by the manifest's `flag`.
        env = dict(fn.env) if fn.source else {k: v for k, v in fn.env.items() if k not in os.environ}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            apps[fn.name] = functions_framework.create_app(target=fn.entry_point, source=str(source), signature_type=fn.signature_type)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return apps


class Gateway:
    def __init__(self, manifest: Manifest, apps: dict[str, WsgiApp], *, max_body: int) -> None:
        self._routes = manifest.route_table()
        self._apps = apps
        self._push = {fn.name for fn in manifest.functions.values() if fn.trigger is TriggerType.TOPIC}
        self._scheduled = {fn.name for fn in manifest.functions.values() if fn.trigger is TriggerType.SCHEDULE}
        self._max_body = max_body

    @classmethod
    def from_settings(cls, manifest: Manifest, apps: dict[str, WsgiApp]) -> Gateway:
        from threatflow.platform.config import Settings

        return cls(manifest, apps, max_body=Settings.from_env().max_request_bytes)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _json_error(start_response, 400, "Bad Request", "Content-Length is not a number")
        if length > self._max_body:
            return _json_error(start_response, 413, "Content Too Large", f"request body exceeds {self._max_body} bytes")
        if "wsgi.input" in environ:
            environ["wsgi.input"] = _BoundedInput(environ["wsgi.input"], self._max_body)
        return self._route(environ, start_response)

    def _route(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        for prefix, names in ((PUSH_PREFIX, self._push), (SCHEDULE_PREFIX, self._scheduled)):
            if path.startswith(prefix) and path[len(prefix) :] in names:
                # functions-framework serves event functions at "/".
                return self._apps[path[len(prefix) :]]({**environ, "PATH_INFO": "/"}, start_response)
        for prefix, name in self._routes:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return self._apps[name](environ, start_response)
        return _json_error(start_response, 404, "Not Found", f"no function serves {path}")


class _BoundedInput:
    """wsgi.input that ends one byte past `limit`: the function then sees an over-long body and answers 413,
    and nobody buffers the rest of a chunked upload."""

    def __init__(self, stream: Any, limit: int) -> None:
        self._stream = stream
        self._left = limit + 1

    def read(self, size: int | None = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        data: bytes = self._stream.read(want)
        self._left -= len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        data: bytes = self._stream.readline(want)
        self._left -= len(data)
        return data

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


_CODES = {400: "bad_request", 404: "not_found", 413: "payload_too_large", 414: "uri_too_long", 431: "headers_too_large"}


def _json_error(start_response: Callable[..., Any], status: int, reason: str, message: str) -> list[bytes]:
    body = json.dumps({"error": {"code": _CODES.get(status, "bad_request"), "message": message, "details": None}}).encode()
    start_response(f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's writer for requests it cannot parse (431, 400...), as JSON instead of an HTML page."""
    from gunicorn import util

    code = _CODES.get(status_int, "bad_request" if status_int < 500 else "internal")
    body = json.dumps({"error": {"code": code, "message": f"{reason}: {mesg}"[:500], "details": None}}).encode()
    head = f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    util.write_nonblock(sock, head.encode("latin1") + body)


def build(manifest_path: Path | None = None, functions_dir: Path | None = None) -> Gateway:
    manifest = load_manifest(manifest_path)
    return Gateway.from_settings(manifest, load_function_apps(manifest, functions_dir or REPO_ROOT / "functions"))


def serve(host: str, port: int, *, workers: int = 1, threads: int = 32) -> None:
    """Serve with gunicorn (what functions-framework uses in production) so a
    slow request never blocks the emulator's pushes."""
    from gunicorn import util
    from gunicorn.app.base import BaseApplication

    util.write_error = _write_json_error  # gunicorn's parse errors (431, 400) as JSON, like every other error

    class _App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {
                "bind": f"{host}:{port}",
                "workers": workers,
                "threads": threads,
                "worker_class": "gthread",
                # Load every function before the port is bound, so a client polling /ready during
                # start-up is refused (and retries) instead of waiting on a socket nobody serves yet.
                "preload_app": True,
                "timeout": 600,
                "graceful_timeout": 5,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": "warning",
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Gateway:
            return build()

    print(json.dumps({"severity": "INFO", "message": f"gateway listening on http://{host}:{port}"}), flush=True)
    _App().run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve every ThreatFlow function on one port.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="processes (each loads every function)")
    parser.add_argument("--threads", type=int, default=32, help="threads per process")
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port, workers=args.workers, threads=args.threads)
    except Exception as exc:  # a start-up error must be readable in the stack's log
        print(json.dumps({"severity": "CRITICAL", "message": f"gateway failed to start: {exc}"}), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
