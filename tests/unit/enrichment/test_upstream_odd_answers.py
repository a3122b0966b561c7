"""Answers real intel APIs (or the proxies in front of them) send that the fakes do not: `client.lookup` must map
each to a status and never raise, and a 429's wait must stay within what a quota can mean.

`fakes.canned` answers every request with one (status, headers, body)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
import requests
from fakes.canned import Canned, start_canned

from threatflow.enrichment import verdict
from threatflow.enrichment.model import ResultStatus, SourceResult, Verdict
from threatflow.enrichment.sources import client


@pytest.fixture(scope="module")
def canned() -> Iterator[Canned]:
    with start_canned() as server:
        yield server


def ask(canned: Canned, status: int, body: bytes, *headers: tuple[str, str]) -> SourceResult:
    canned.answer(status, body, *headers)
    with requests.Session() as session:
        return client.lookup("greynoise", "ipv4", "185.220.101.1", session=session, api_key=None, timeout=5, base_url=canned.url)


@pytest.mark.parametrize("status", [200, 429, 500])
def test_a_body_nested_deeper_than_the_decoder_allows_is_an_upstream_error_not_a_crash(canned: Canned, status: int) -> None:
    """json.loads raises RecursionError (not a ValueError) past the interpreter's depth: it escaped lookup, so the
    task failed every delivery (spending a call each time) into the dead letter, and /detect/intel answered 500."""
    result = ask(canned, status, b"[" * 100_000)
    assert result.status in (ResultStatus.UPSTREAM_ERROR, ResultStatus.RATE_LIMITED)
    assert (result.verdict, result.score) == (Verdict.UNKNOWN, None)
    if status == 200:
        assert result.status is ResultStatus.UPSTREAM_ERROR and "malformed" in result.detail


@pytest.mark.parametrize(
    "retry_after",
    ["99999999999", "1e300", format_datetime(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), usegmt=True)],
)
def test_a_retry_after_beyond_a_day_waits_a_day(canned: Canned, retry_after: str) -> None:
    """A 429 cools the source down for its Retry-After. 1e300 seconds made Redis refuse the cool-down's expiry (the
    task failed into the dead letter); 99999999999 s or a date in the year 9999 cooled the source for centuries, so
    every later task of it was parked and every run timed it out. No quota resets later than a day."""
    result = ask(canned, 429, b'{"message": "slow down"}', ("Retry-After", retry_after))
    assert result.status is ResultStatus.RATE_LIMITED
    assert result.retry_after is not None and 0 < result.retry_after <= 86400


def test_a_retry_after_within_a_day_is_kept(canned: Canned) -> None:
    result = ask(canned, 429, b"", ("Retry-After", "29241"))  # AbuseIPDB's documented example
    assert result.status is ResultStatus.RATE_LIMITED and result.retry_after == 29241.0


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (200, b"", "application/json", ResultStatus.UPSTREAM_ERROR),
        (200, b"<html><body>Service Unavailable</body></html>", "text/html", ResultStatus.UPSTREAM_ERROR),
        (502, b"<html><body>Bad gateway</body></html>", "text/html", ResultStatus.UPSTREAM_ERROR),
        (200, b"null", "application/json", ResultStatus.UPSTREAM_ERROR),
        (200, b'{"ip": "185.220.101.1", "noise": tr', "application/json", ResultStatus.UPSTREAM_ERROR),
        (200, b"\xff\xfe\x00{", "application/json", ResultStatus.UPSTREAM_ERROR),
    ],
)
def test_empty_html_null_partial_and_undecodable_bodies_are_mapped(
    canned: Canned, status: int, body: bytes, content_type: str, expected: ResultStatus
) -> None:
    canned.answer(status, body, content_type=content_type)
    with requests.Session() as session:
        result = client.lookup("greynoise", "ipv4", "185.220.101.1", session=session, api_key=None, timeout=5, base_url=canned.url)
    assert result.status is expected and (result.verdict, result.score) == (Verdict.UNKNOWN, None)


@pytest.mark.parametrize("last_seen", ["0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z", 0, "0"])
def test_a_placeholder_last_seen_does_not_erase_a_verdict(canned: Canned, last_seen: object) -> None:
    """An API's "never" written as a time (Go's zero time 0001-01-01, the epoch) was read as a sighting that long
    ago: recency 0.5 ** (age / 30 days) made the source's weight 0 (year 1) or 1e-205 (1970), so GreyNoise's
    malicious answer merged to `unknown` alone and lost to any fresh harmless one (harmless instead of
    suspicious). It now counts as no time."""
    body = {"ip": "185.220.101.1", "noise": True, "riot": False, "classification": "malicious", "last_seen": last_seen}
    result = ask(canned, 200, json.dumps(body).encode())
    assert result.status is ResultStatus.OK
    row = {**result.to_dict(), "evidence": result.evidence.to_dict(), "fetched_at": result.fetched_at.isoformat()}
    harmless = {"source": "otx", "status": "ok", "verdict": "harmless", "score": 0, "evidence": {}, "fetched_at": row["fetched_at"]}
    reliability = {"greynoise": 0.7, "otx": 0.5}
    assert verdict.merge([row], reliability=reliability, now=result.fetched_at).verdict == "malicious"
    mixed = verdict.merge([row, harmless], reliability=reliability, now=result.fetched_at)
    assert mixed.verdict == "suspicious" and mixed.reasons[0]["recency"] == 1.0  # weighed as a fresh answer
    assert result.evidence.last_seen is None


def test_dropping_a_nul_holds_no_more_memory_than_decoding_the_answer() -> None:
    """The body is walked to drop NULs and lone surrogates when its bytes hold such an escape. The walk queued a
    (container, key) pair for every value, scalars included, before cleaning any: one NUL in a 5 MB answer of small
    numbers took 283 MB at its peak where decoding took 27 MB (a function of 512 MB holds a few such answers)."""
    import tracemalloc

    raw = b"[" + b"0," * 300_000 + b'"tag\\u0000", {"a\\u0000": ["x\\ud800"]}]'
    tracemalloc.start()
    try:
        json.loads(raw)
        decoding = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        body, parsed = client._decode(raw)
        walking = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert parsed and body[-2:] == ["tag", {"a": ["x"]}]
    assert walking <= 2 * decoding
