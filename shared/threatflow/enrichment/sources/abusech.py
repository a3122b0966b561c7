"""What abuse.ch's APIs (URLhaus, ThreatFox, MalwareBazaar) put in `query_status`, mapped once for the three.

ok                                   a hit: the source's parse reads the body
no_results / no_result / hash_not_found   not_found (URLhaus plural, ThreatFox singular, MalwareBazaar)
*auth* (unknown_auth_key, ...)       auth_error
invalid_* / illegal_* / no_* / http_post_expected / unknown_query   bad_request
anything else                        upstream_error
"""

from __future__ import annotations

from typing import Any

from threatflow.enrichment.model import ResultStatus, Verdict
from threatflow.enrichment.sources.base import Parsed, ShapeError, as_dict, as_str, not_found

_AUTH_ERRORS = ("unknown_auth_key", "auth_key_required", "invalid_auth_key")


def query_status(body: Any) -> tuple[str, Parsed | None]:
    """The status, and a Parsed for anything other than a hit."""
    data = as_dict(body)
    status = as_str(data.get("query_status"))
    if status is None:
        raise ShapeError("query_status missing")
    if status == "ok":
        return status, None
    if status in ("no_results", "no_result", "hash_not_found"):
        return status, not_found(status)
    if status in _AUTH_ERRORS or "auth" in status:
        return status, Parsed(Verdict.UNKNOWN, None, status=ResultStatus.AUTH_ERROR, detail=status)
    if status.startswith(("invalid_", "illegal_", "no_")) or status in ("http_post_expected", "unknown_query"):
        return status, Parsed(Verdict.UNKNOWN, None, status=ResultStatus.BAD_REQUEST, detail=status)
    return status, Parsed(Verdict.UNKNOWN, None, status=ResultStatus.UPSTREAM_ERROR, detail=f"query_status {status}")
