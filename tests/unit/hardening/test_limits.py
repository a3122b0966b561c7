"""Request bounds: body size with and without Content-Length, JSON depth, NUL, 64-bit integers."""

import io

import msgspec
import pytest

from threatflow.platform import limits
from threatflow.platform.errors import PayloadTooLargeError, ValidationError
from threatflow.platform.web import decode_body


class CountingStream(io.RawIOBase):
    """An endless chunked upload: counts what the reader pulled."""

    def __init__(self) -> None:
        self.pulled = 0

    def read(self, size: int = -1) -> bytes:
        size = 1 << 20 if size is None or size < 0 else size
        self.pulled += size
        return b"x" * size


def test_chunked_body_is_cut_at_the_limit_not_read_to_the_end():
    stream = CountingStream()
    with pytest.raises(PayloadTooLargeError):
        limits.read_body(stream, limit=100_000, content_length=None)
    assert stream.pulled <= 100_001  # never more than the limit plus one byte


def test_declared_length_over_the_limit_reads_nothing():
    stream = CountingStream()
    with pytest.raises(PayloadTooLargeError):
        limits.read_body(stream, limit=10, content_length=11)
    assert stream.pulled == 0


def test_body_within_the_limit_is_returned_whole():
    assert limits.read_body(io.BytesIO(b"a" * 1000), limit=1000, content_length=None) == b"a" * 1000


class Body(msgspec.Struct):
    ids: list[int] = []
    params: dict = {}
    name: str = ""


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"ids": [1, 99999999999999999999999]}', "ids[1]"),
        (b'{"ids": [-99999999999999999999999]}', "ids[0]"),
        (b'{"name": "a\\u0000b"}', "name"),
        (b'{"params": {"k\\u0000": 1}}', "params"),
        (b'{"params": ' + b'{"a": ' * 1000 + b"1" + b"}" * 1000 + b"}", "params"),
        (b'{"params": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}", "params"),  # deeper than msgspec decodes
        (b"[" * 5000 + b"]" * 5000, "body"),
    ],
)
def test_bad_json_is_a_validation_error_naming_the_field(raw, field):
    with pytest.raises(ValidationError) as caught:
        decode_body(raw, Body)
    assert caught.value.field is not None and caught.value.field.startswith(field)


@pytest.mark.parametrize(
    ("raw", "long"),
    [
        (b"1234567890123456789", True),
        (b'{"a": 9223372036854775807}', True),  # fits, but the walk decides
        (b'{"a": "x1234567890123456789y"}', True),  # inside a string too: a harmless walk
        (b'{"a": 123456789012345678}', False),
        (b'{"a": 123456789, "b": 012345678901234567}', False),
        (b"", False),
        (b"1.5e300, 99999999-99999999999", False),
    ],
)
def test_long_digit_runs_are_found_without_a_regex(raw, long):
    assert limits.has_long_digits(raw) is long
    assert limits.looks_suspicious(raw) is long


def test_depth_400_is_accepted():
    raw = b'{"params": ' + b'{"a": ' * 398 + b"1" + b"}" * 398 + b"}"
    assert decode_body(raw, Body).params


def test_path_and_query_ints_are_bounded():
    assert limits.check_int("9223372036854775807", field="id") == 2**63 - 1
    with pytest.raises(ValidationError, match="out of range") as caught:
        limits.check_int("9223372036854775808", field="id")
    assert caught.value.field == "id"


def test_local_rate_limiter_refuses_after_the_burst_and_refills():
    now = [0.0]
    limiter = limits.LocalRateLimiter(limit=3, period_seconds=60, clock=lambda: now[0])
    assert [limiter.hit("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.hit("k") == pytest.approx(20.0)
    now[0] = 20.0
    assert limiter.hit("k") == 0.0


def test_local_rate_limiter_keeps_a_bounded_number_of_keys():
    limiter = limits.LocalRateLimiter(limit=1, period_seconds=60, max_keys=100)
    for i in range(1000):
        limiter.hit(str(i))
    assert len(limiter._buckets) <= 100


@pytest.mark.parametrize("text", ["１５", "1_5", "٥", " 5", "+5", "5.", "inf"])
def test_query_numbers_are_ascii_decimal_syntax(text):
    """Request.query_number (a cursor such as a timestamp) read what float() reads: fullwidth and Arabic-Indic digits,
    underscores, padding. It takes what a JSON number looks like, as query_int takes ASCII digits."""
    from threatflow.platform.web import Request

    def request(value: str) -> Request:
        return Request("GET", "/", {}, {"before": value}, b"", "127.0.0.1", "r")

    with pytest.raises(ValidationError) as caught:
        request(text).query_number("before")
    assert caught.value.field == "before"
    assert request("1764201600.25").query_number("before") == 1764201600.25


def test_the_walk_holds_memory_by_depth_not_by_items():
    """check_json pushed every child of a list with its path ("content[1234567]") before checking the first: a 5 MB
    sync import of `[0,0,...]` with one 20-digit integer (the pre-screen's trigger) walked 2.6 million items at once,
    ~400 MB in the iocs function; 32 MiB, as the ioc-import worker screens a stored request, over 2 GB. Now one frame
    per level, and a path is built only for a container or the value refused; the first bad value is named."""
    import tracemalloc

    doc = {"content": [0] * 1_000_000 + [{"confidence": 2**70}], "tags": ["a"] * 100_000}
    tracemalloc.start()
    try:
        with pytest.raises(ValidationError) as caught:
            limits.check_json(doc)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.field == "content[1000000].confidence"
    assert peak < 1_000_000, f"{peak:,} bytes"
    with pytest.raises(ValidationError) as caught:
        limits.check_json({"a": ["x", "y\x00", "z\x00"]})
    assert caught.value.field == "a[1]"
