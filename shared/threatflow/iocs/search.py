"""IoC search: typed filters, compiled to one parameterised WHERE clause by the
repository (`threatflow.iocs.repository.compile_filter`).

Pages are keyset pages on id (newest first): the cursor is the last id seen,
so page N costs the same as page 1 and concurrent inserts never shift a page.
Every filter maps to an index (see sql/0002_iocs.sql).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from threatflow.iocs import repository
from threatflow.iocs.model import DEFAULT_PAGE, MAX_PAGE, FindRequest, IocFilter
from threatflow.iocs.repository import Compiled, compile_filter
from threatflow.platform.pagination import decode_cursor, encode_cursor

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "Compiled",
    "FindRequest",
    "IocFilter",
    "compile_filter",
    "decode_cursor",
    "encode_cursor",
    "find",
    "find_sql",
]


def find_sql(request: FindRequest, *, now: datetime) -> tuple[str, dict[str, Any]]:
    """The page query; one extra row tells whether there is a next page."""
    after_id = decode_cursor(request.cursor) if request.cursor else None
    return repository.find_sql(request, now=now, after_id=after_id, limit=request.limit + 1)


def find(conn: Connection, request: FindRequest, *, now: datetime) -> dict[str, Any]:
    after_id = decode_cursor(request.cursor) if request.cursor else None
    rows = repository.find_page(conn, request, now=now, after_id=after_id, limit=request.limit + 1)
    page = rows[: request.limit]
    next_cursor = encode_cursor(page[-1]["id"]) if len(rows) > request.limit else None
    return {"iocs": page, "next_cursor": next_cursor, "count": len(page)}
