"""One HTTP server on 127.0.0.1 that answers every request with the same canned (status, headers, body): the
answers real intel APIs and the proxies in front of them send that the fake APIs (`fakes.intel`) do not."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Canned:
    def __init__(self) -> None:
        self.status = 200
        self.headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
        self.body = b"{}"
        self.url = ""

    def answer(self, status: int, body: bytes, *headers: tuple[str, str], content_type: str = "application/json") -> None:
        self.status, self.body = status, body
        self.headers = [("Content-Type", content_type), *headers]


@contextmanager
def start_canned() -> Iterator[Canned]:
    answer = Canned()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(answer.status)
            for name, value in answer.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        do_GET = do_POST = do_HEAD = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    answer.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield answer
    finally:
        server.shutdown()
        server.server_close()
