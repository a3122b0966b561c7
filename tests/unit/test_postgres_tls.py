"""The TLS a DATABASE_URL asks pg8000 for: none on the loopback address, pg8000's default elsewhere.

pg8000 built a TLS context per connection (~23 ms of CPU loading the CA store) to offer unverified TLS to a server on
the same machine; every test and the local stack paid it for each connection. The arguments are read where pg8000
would get them (SQLAlchemy's do_connect), so no server is needed.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event

from threatflow.adapters import postgres
from threatflow.platform.config import Settings


class _Stop(Exception):
    pass


def _driver_kwargs(make: Any, url: str) -> dict[str, Any]:
    engine = make(Settings.from_env({"DATABASE_URL": url}))
    seen: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def capture(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        seen.update(cparams)
        raise _Stop

    with pytest.raises(_Stop):
        engine.connect()
    engine.dispose()
    return seen


READ = postgres.ReadSession(statement_timeout_ms=1000)


@pytest.mark.parametrize("make", [postgres.create_engine, lambda s: postgres.create_read_engine(s, session=READ)], ids=["engine", "read"])
@pytest.mark.parametrize(
    ("host", "ssl_context"),
    [("127.0.0.1", False), ("localhost", False), ("[::1]", False), ("127.8.9.10", False), ("db.example.com", None), ("10.0.0.3", None)],
)
def test_a_loopback_server_is_asked_for_no_tls_and_any_other_keeps_the_drivers_default(make: Any, host: str, ssl_context: Any) -> None:
    kwargs = _driver_kwargs(make, f"postgresql+pg8000://postgres@{host}:5432/threatflow")
    assert kwargs.get("ssl_context") is ssl_context, kwargs
    assert kwargs["host"] == host.strip("[]") and kwargs["timeout"] > 0 and "startup_params" in kwargs


@pytest.mark.parametrize("make", [postgres.create_engine, lambda s: postgres.create_read_engine(s, session=READ)], ids=["engine", "read"])
@pytest.mark.parametrize(
    ("url", "host", "ssl_context"),
    [
        # SQLAlchemy's pg8000 dialect lets the query's host override the one before the path: that one is connected to
        ("postgresql+pg8000://postgres@127.0.0.1:5432/threatflow?host=db.example.com", "db.example.com", None),
        ("postgresql+pg8000://postgres@db.example.com:5432/threatflow?host=127.0.0.1", "127.0.0.1", False),
        ("postgresql+pg8000://postgres@LocalHost:5432/threatflow", "LocalHost", False),
    ],
    ids=["loopback-overridden-by-query", "query-host-loopback", "localhost-any-case"],
)
def test_the_tls_decision_reads_the_host_pg8000_connects_to(make: Any, url: str, host: str, ssl_context: Any) -> None:
    kwargs = _driver_kwargs(make, url)
    assert kwargs["host"] == host
    assert kwargs.get("ssl_context") is ssl_context, kwargs
