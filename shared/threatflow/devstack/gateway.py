"""One WSGI process hosting every function behind the public /api/v1 paths.

This plays API Gateway locally: HTTP functions are matched by the manifest's
route prefixes (longest first) and see the full public path, as they do behind
API Gateway with path appending; topic-triggered functions sit behind
`/_push/<name>`, where the Pub/Sub emulator's push subscriptions deliver.
Each function is loaded with functions-framework's own `create_app`, so the
code path is the one Cloud Functions runs.
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
        # env (ENRICH_SOURCE), as in the cloud; the module reads it at import.
        saved = {k: os.environ.get(k) for k in fn.env}
        os.environ.update(fn.env)
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
    def __init__(self, manifest: Manifest, apps: dict[str, WsgiApp]) -> None:
        self._routes = manifest.route_table()
        self._apps = apps
        self._push = {fn.name for fn in manifest.functions.values() if fn.trigger is TriggerType.TOPIC}
        self._scheduled = {fn.name for fn in manifest.functions.values() if fn.trigger is TriggerType.SCHEDULE}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        for prefix, names in ((PUSH_PREFIX, self._push), (SCHEDULE_PREFIX, self._scheduled)):
            if path.startswith(prefix) and path[len(prefix) :] in names:
                # functions-framework serves event functions at "/".
                return self._apps[path[len(prefix) :]]({**environ, "PATH_INFO": "/"}, start_response)
        for prefix, name in self._routes:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return self._apps[name](environ, start_response)
        body = json.dumps({"error": {"code": "not_found", "message": f"no function serves {path}", "details": None}}).encode()
        start_response("404 Not Found", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def build(manifest_path: Path | None = None, functions_dir: Path | None = None) -> Gateway:
    manifest = load_manifest(manifest_path)
    return Gateway(manifest, load_function_apps(manifest, functions_dir or REPO_ROOT / "functions"))


def serve(host: str, port: int, *, workers: int = 1, threads: int = 32) -> None:
    """Serve with gunicorn (what functions-framework uses in production) so a
    slow request never blocks the emulator's pushes."""
    from gunicorn.app.base import BaseApplication

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
