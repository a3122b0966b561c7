"""A small fake of the Secret Manager v1 REST API (there is no emulator).

It follows the real contract for what ThreatFlow calls:
`GET /v1/projects/{project}/secrets/{secret}/versions/{version}:access` returns
`{"name", "payload": {"data": base64, "dataCrc32c": "<int as string>"}}`, and a
missing secret is a 404 with the Google error envelope (`status: NOT_FOUND`).
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import google_crc32c

_ACCESS = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/]+)/versions/([^/:]+):access$")


class FakeSecretManager:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], list[bytes]] = {}
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(self.path)
                match = _ACCESS.match(self.path.split("?")[0])
                if not match:
                    return self._send(404, _error(404, "NOT_FOUND", f"unknown path {self.path}"))
                project, secret, version = match.groups()
                versions = fake.secrets.get((project, secret))
                if not versions:
                    return self._send(404, _error(404, "NOT_FOUND", f"Secret [projects/{project}/secrets/{secret}] not found."))
                index = len(versions) if version == "latest" else int(version)
                data = versions[index - 1]
                return self._send(
                    200,
                    {
                        "name": f"projects/{project}/secrets/{secret}/versions/{index}",
                        "payload": {"data": base64.b64encode(data).decode(), "dataCrc32c": str(google_crc32c.value(data))},
                    },
                )

            def _send(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add_version(self, project: str, secret: str, value: str) -> None:
        self.secrets.setdefault((project, secret), []).append(value.encode())

    def __enter__(self) -> FakeSecretManager:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}
