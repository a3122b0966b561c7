"""Bounds every request must respect before any real work starts.

- `read_body`: read at most `limit` bytes of a request body, whether or not it
  came with Content-Length (chunked bodies are read in pieces and abandoned at
  the limit, so memory is bounded by MAX_REQUEST_BYTES per request).
- `check_json`: decoded JSON is refused with a 400 naming the field when it
  nests deeper than MAX_JSON_DEPTH, holds an integer outside a 64-bit signed
  range (ids, cursors), or a string with a NUL character (PostgreSQL rejects
  those, and they are never meaningful in intel data).
- `check_utf8`: a body's bytes are UTF-8, checked in bounded pieces (msgspec raised UnicodeDecodeError for a string
  that is not, a 500, and skips unread what a struct leaves raw).
- `looks_suspicious`: a cheap pre-screen on raw bytes, so the full walk only
  runs on bodies that could fail it.
- `check_text`: the same NUL rule for query strings, path parameters and headers.
- `check_aware`: a time from a body must carry its time zone.
- `query_time_text`: a time from a query string whose offset's '+' was decoded to a space, as '+'.
- `check_object_name`: a Cloud Storage object name as Cloud Storage allows it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any, overload

from threatflow.platform.errors import PayloadTooLargeError, ValidationError

MAX_JSON_DEPTH = 400
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
_CHUNK = 64 * 1024
# Every digit as "0", so a run of 19 is one substring search: the regex \d{19,} restarted at each
# digit of every shorter run and cost ~9 us per flow of a 5,000-flow batch (10x this).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19


def read_body(stream: IO[bytes], *, limit: int, content_length: int | None) -> bytes:
    """At most `limit` bytes; PayloadTooLargeError as soon as the body is known to be longer."""
    if content_length is not None and content_length > limit:
        raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
    return b"".join(parts)


def check_utf8(raw: bytes, *, field: str = "body") -> None:
    """ValidationError naming `field` unless `raw` is UTF-8: ASCII is one C scan, anything else is decoded 64 KiB at a
    time and thrown away (a 32 MiB body never becomes a 32 MiB str)."""
    if raw.isascii():
        return
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(raw)
    try:
        for start in range(0, len(raw), _CHUNK):
            decoder.decode(view[start : start + _CHUNK])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise ValidationError(f"request body is not valid UTF-8: {exc.reason} (near byte {start + exc.start:,})", field=field) from None


def looks_suspicious(raw: bytes) -> bool:
    """True when `raw` may hold a NUL escape, a huge integer or deep nesting (cheap C-level scans)."""
    return b"\\u0000" in raw or (raw.count(b"[") + raw.count(b"{")) > MAX_JSON_DEPTH or has_long_digits(raw)


def has_long_digits(raw: bytes) -> bool:
    """True when `raw` holds 19 or more digits in a row: an integer that may not fit 64 bits."""
    return _NINETEEN_DIGITS in raw.translate(_DIGITS_AS_ZERO)


# A number given as text, in query strings and flow fields: what a JSON number looks like (a UNSW CSV cell too).
# float() also reads "١٢", "１２", "1_000", " 12 ", "+5", "inf" and "nan".
DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def decimal_text(text: str) -> float | None:
    """The number an ASCII decimal text writes (float() of it, inf past a float's range), or None for any other text."""
    return float(text) if DECIMAL.fullmatch(text) else None


def check_json(value: Any, *, field: str = "", skip: str | None = None) -> None:
    """Walk decoded JSON iteratively; raise ValidationError naming the first bad field.

    `skip` names a top-level list whose items are validated one by one later
    (a batch rejects a bad item, not the whole request).

    One frame (an iterator) per level, and a child's path is built only when it is a container or refused: every
    child was pushed with its path before the first was checked, ~150 bytes an item (a 5 MB list of zeros, ~400 MB)."""
    _check_node(value, field, 0)
    frames: list[tuple[Any, str, int, bool]] = []
    _push_frame(frames, value, field, 0)
    while frames:
        items, path, depth, is_mapping = frames[-1]
        entry = next(items, None)
        if entry is None:
            frames.pop()
            continue
        key, item = entry
        if is_mapping:
            if isinstance(key, str) and "\x00" in key:
                raise ValidationError(f"{path or 'body'}: NUL characters are not allowed in keys", field=path or "body")
            if depth == 0 and skip is not None and key == skip:
                continue
        if isinstance(item, (Mapping, list, tuple)) or not _fine_leaf(item) or depth + 1 > MAX_JSON_DEPTH:
            child = (f"{path}.{key}" if path else str(key)) if is_mapping else f"{path}[{key}]"
            _check_node(item, child, depth + 1)
            _push_frame(frames, item, child, depth + 1)


def _fine_leaf(node: Any) -> bool:
    """A scalar check_json accepts (checked without its path: most of a document's values)."""
    if isinstance(node, str):
        return "\x00" not in node
    if isinstance(node, int) and not isinstance(node, bool):
        return INT64_MIN <= node <= INT64_MAX
    return True


def _check_node(node: Any, path: str, depth: int) -> None:
    where = path or "body"
    if depth > MAX_JSON_DEPTH:
        raise ValidationError(f"{where}: JSON nests deeper than {MAX_JSON_DEPTH} levels", field=where)
    if isinstance(node, str):
        if "\x00" in node:
            raise ValidationError(f"{where}: NUL characters are not allowed", field=where)
    elif isinstance(node, int) and not isinstance(node, bool) and not INT64_MIN <= node <= INT64_MAX:
        raise ValidationError(f"{where}: integer out of range (at most {INT64_MAX})", field=where)


def _push_frame(frames: list[tuple[Any, str, int, bool]], node: Any, path: str, depth: int) -> None:
    if isinstance(node, Mapping):
        frames.append((iter(node.items()), path, depth, True))
    elif isinstance(node, (list, tuple)):
        frames.append((enumerate(node), path, depth, False))


def check_raw_json(raw: bytes, *, field: str = "", skip: str | None = None) -> None:
    """`check_json` on raw bytes, only when the cheap pre-screen says it could fail."""
    if not raw or not looks_suspicious(raw):
        return
    import msgspec

    try:
        decoded = _decode_untyped(raw)
    except RecursionError:  # msgspec gives up (below a crash, above our limit): find the field without recursion
        raise too_deep(raw, prefix=field) from None
    except msgspec.DecodeError:
        return  # the typed decode reports malformed JSON with its own message
    check_json(decoded, field=field, skip=skip)


_MSGSPEC_PATH = re.compile(r"at `\$((?:\.[^.`\[]+|\[\d+\])+)`")
_MSGSPEC_MISSING = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


def decode_body(raw: bytes, body_type: type) -> Any:
    """Decode and validate JSON into a typed struct; errors name the field. Pure (no request, no runtime): the routes
    (platform.web) and the jobs that read a stored request decode with it and answer in the same words."""
    import msgspec

    if not raw:
        raise ValidationError("request body is required (JSON)", field="body")
    # Before any decode: msgspec raised UnicodeDecodeError (a 500) for a string that is not UTF-8, and a field it leaves
    # raw (an async import's content, a batch's items) it skips unchecked, so the job or item failed later instead.
    check_utf8(raw)
    # Depth, NUL and 64-bit checks. A batch's items are checked one by one by its service (a bad item is
    # rejected, not the batch), and the typed decode below checks the rest of a batch envelope.
    if getattr(body_type, "batch_field", None) is None:
        check_raw_json(raw)
    try:
        return msgspec.json.decode(raw, type=body_type)
    except RecursionError:  # msgspec's own limit, met where the screen above did not run (a batch, raw content)
        raise too_deep(raw) from None
    except msgspec.ValidationError as exc:
        message = str(exc)
        missing = _MSGSPEC_MISSING.search(message)
        at = _MSGSPEC_PATH.search(message)
        if missing:
            prefix = at.group(1).lstrip(".") + "." if at else ""
            field_name = prefix + missing.group(1)
        else:
            field_name = at.group(1).lstrip(".") if at else "body"
        raise ValidationError(f"{field_name}: {message.split(' - at ', maxsplit=1)[0]}", field=field_name) from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"request body is not valid JSON: {exc}", field="body") from None


def too_deep(raw: bytes, *, prefix: str = "") -> ValidationError:
    """The error for JSON nested past MAX_JSON_DEPTH, naming the top-level field (under `prefix`) that nests too deep."""
    where = _too_deep_at(raw, prefix=prefix)
    return ValidationError(f"{where}: JSON nests deeper than {MAX_JSON_DEPTH} levels", field=where)


_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:]')


def _too_deep_at(raw: bytes, *, prefix: str) -> str:
    """The top-level field whose value nests too deep, found by a flat scan of the tokens."""
    depth = 0
    last_string = b""
    key = ""
    for match in _TOKEN.finditer(raw):
        token = match.group()
        if token in (b"{", b"["):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                break
        elif token in (b"}", b"]"):
            depth -= 1
        elif token == b":":
            if depth == 1:
                key = last_string[1:-1].decode("utf-8", "replace")
        else:
            last_string = token
    name = f"{prefix}.{key}" if prefix and key else (key or prefix)
    return name or "body"


def _decode_untyped(raw: bytes) -> Any:
    import msgspec

    return msgspec.json.decode(raw)


def check_text(value: str, *, field: str) -> str:
    if "\x00" in value:
        raise ValidationError(f"{field}: NUL characters are not allowed", field=field)
    return value


@overload
def check_aware(value: datetime, *, field: str) -> datetime: ...
@overload
def check_aware(value: None, *, field: str) -> None: ...
def check_aware(value: datetime | None, *, field: str) -> datetime | None:
    """A time from a body must carry its zone: a naive one is ambiguous, so a 400 naming the field. Its UTC instant must
    lie in years 1 to 9999: PostgreSQL stores 0001-01-01T00:00:00+05:00 as 1 BC, which the driver reads back as text,
    not a datetime (echoed by GET, a 500 in exports)."""
    if value is not None and value.tzinfo is None:
        raise ValidationError(f"{field} needs a time zone (e.g. 2026-01-01T00:00:00Z)", field=field)
    if value is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValidationError(f"{field} is out of range: in UTC it falls before year 1 or after year 9999", field=field) from None
    return value


# A date-time, one space, HH:MM or HHMM: `?from=2026-11-27T00:00:00+00:00` typed unencoded (curl) arrives with the '+'
# decoded to a space (form encoding), and was a 400. Only this shape: any other space is left for the parser to refuse.
_OFFSET_SIGN_AS_SPACE = re.compile(r"(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?) (\d{2}):?(\d{2})")


def query_time_text(text: str) -> str:
    """A time query parameter's text with an offset sign decoded to a space read as '+' (2026-11-27T00:00:00 05:30 is
    2026-11-27T00:00:00+05:30); anything else unchanged."""
    match = _OFFSET_SIGN_AS_SPACE.fullmatch(text)
    return f"{match[1]}+{match[2]}:{match[3]}" if match else text


def check_int(text: str, *, field: str) -> int:
    """An id or cursor from a path or query: an integer in the 64-bit signed range, else a 400 naming it."""
    try:
        value = int(text)
    except ValueError:
        raise ValidationError(f"{field} must be an integer", field=field) from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValidationError(f"{field} is out of range (at most {INT64_MAX})", field=field)
    return value


class LocalRateLimiter:
    """An in-process token bucket per key: the fallback when Redis is unreachable.

    Per instance only, so it is a floor, not the real limit; it keeps a Redis
    outage from opening the token endpoint to unlimited guessing. Keys are
    bounded (oldest dropped) so it cannot grow without end."""

    def __init__(self, *, limit: int, period_seconds: float, max_keys: int = 10_000, clock: Any = None) -> None:
        import threading
        import time

        self._rate = limit / period_seconds
        self._burst = float(limit)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._max_keys = max_keys
        self._clock: Callable[[], float] = clock or time.monotonic
        self._lock = threading.Lock()

    def hit(self, key: str) -> float:
        """0.0 when allowed, else the seconds to wait."""
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.pop(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - at) * self._rate)
            if len(self._buckets) >= self._max_keys:
                self._buckets.pop(next(iter(self._buckets)))
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self._rate
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0


class RefusalMemo:
    """Rate-limit keys the shared limiter refused, remembered until it would allow them again.

    A GCRA refusal changes nothing in Redis, so until its retry-after has passed the limiter can
    only refuse the same key again: answering the 429 from memory is the same answer, minus the
    round trip and (for an address) the token check. It only ever refuses what Redis would refuse:
    the wait is counted from `asked_at`, a reading of this memo's clock taken before the call, so
    it ends no later than Redis's own (counted from Redis's clock, read during the call), however
    late the answer arrives. Keys are bounded (oldest dropped)."""

    def __init__(self, *, max_keys: int, clock: Callable[[], float]) -> None:
        import threading

        self._until: dict[str, float] = {}
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()

    def remaining(self, key: str) -> float:
        """Seconds this key stays refused; 0.0 when the shared limiter must decide."""
        until = self._until.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left > 0:
            return left
        with self._lock:
            if self._until.get(key) == until:
                del self._until[key]
        return 0.0

    def now(self) -> float:
        """The memo's clock: read it before asking the shared limiter, and pass it to `refuse`."""
        return self._clock()

    def refuse(self, key: str, seconds: float, *, asked_at: float | None = None) -> None:
        """Remember `key` for the `seconds` the shared limiter answered to a call made at `asked_at`
        (now when not given: only right for an answer that took no time)."""
        if seconds <= 0:
            return
        start = self._clock() if asked_at is None else asked_at
        with self._lock:
            self._until.pop(key, None)
            while len(self._until) >= self._max_keys:  # the oldest refusal: O(1), whatever a flood's spread
                self._until.pop(next(iter(self._until)))
            self._until[key] = start + seconds


MAX_OBJECT_NAME_BYTES = 1024
_ACME = ".well-known/acme-challenge/"


def check_object_name(name: str, *, field: str = "object") -> str:
    """A Cloud Storage object name as its naming rules allow one: 1 to 1,024 bytes of UTF-8, no carriage return or
    line feed, neither `.` nor `..`, not under `.well-known/acme-challenge/`. Anything else is refused before the
    client is asked (`.` and `..` made it request another URL, a 500)."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= MAX_OBJECT_NAME_BYTES:
        raise ValidationError(f"an object name is 1 to {MAX_OBJECT_NAME_BYTES} bytes of UTF-8; this one has {size}", field=field)
    if "\r" in name or "\n" in name:
        raise ValidationError("an object name holds no carriage return or line feed", field=field)
    if name in (".", "..") or name.startswith(_ACME):
        raise ValidationError(f"{name[:40]!r} is not an object name Cloud Storage allows", field=field)
    return name
