"""URLs written encoded as a token of their own: percent-encoded, base64 or hex.

Percent-encoded: an href or a redirect target, not one inside a URL's query; base64:
"aHR0cDovL..." is "http://...", and a base64 token is read whenever it holds "://" at one of its
three alignments, so a URL after other text or with another scheme is found too; hex: "687474703a2f2f...". Each pattern starts with a
literal so that the regex engine can skip to it; the rest of the token is taken from there.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import NamedTuple
from urllib.parse import unquote

from threatflow.iocs.defang import URL_START
from threatflow.iocs.extraction.tokens import MAX_TOKEN_CHARS, STOP, TOKEN_END, strip_trailing

PERCENT_SEPARATOR = re.compile(r"%3[Aa]%2[Ff]%2[Ff]")
_PERCENT_SCHEME = re.compile(rf"(?:^|(?<=[{STOP}(\[]))(?:https?|ftps?)$", re.IGNORECASE)
# "://" in base64, at each of its three byte alignments: whatever the scheme, its case, or the text before it.
_BASE64_SEPARATORS = (re.compile("Oi8v"), re.compile("ovL"), re.compile("6Ly"))
_BASE64_BEFORE = re.compile(r"(?s).*[^A-Za-z0-9+/=]")  # up to the last character that is not base64
_BASE64_AFTER = re.compile(r"[A-Za-z0-9+/]*=*")
# In decoded text a URL may follow letters ("somethinghttp://"), which in prose would make it a word.
_URL_IN_DECODED = re.compile(URL_START.pattern.replace("(?<![A-Za-z])", "", 1), re.IGNORECASE)
# A base64 blob wrapped over lines (MIME at 76 characters, PEM at 64): its lines are one token.
_MAX_WRAP = 256  # no encoder wraps wider; a longer line is a token of its own
_BLOB_LINE = re.compile(r"[A-Za-z0-9+/]{16,}")  # a line before the last: no padding
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/]+=*")
_BINARY = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")
_LINE_BREAK = re.compile(r"\r?\n")
_LINE_END = re.compile(r"[\r\n]")
_HEX_URL = re.compile(r"68747470(?:73)?3[Aa]2[Ff]2[Ff][0-9A-Fa-f]*(?![0-9A-Fa-f])")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_DECODED_END = re.compile(r"[\s\x00-\x1f\x7f\ufffd\"'<>`|]")


class EncodedUrl(NamedTuple):
    start: int  # where the encoded token starts in the text
    original: str  # the token as written
    url: str  # the decoded URL (its scheme possibly a look-alike), cut where the decoded text stops being one


def encoded_urls(text: str) -> Iterator[EncodedUrl]:
    """The URLs written percent-encoded, in base64 or in hex in `text`, each a token of its own."""
    done = 0
    for match in PERCENT_SEPARATOR.finditer(text):
        scheme = _PERCENT_SCHEME.search(text, max(0, match.start() - 6), match.start())
        if scheme is None or match.start() < done:
            continue  # inside a longer token, such as a URL's query: that URL is the indicator
        end = TOKEN_END.search(text, match.end())
        done = end.start() if end is not None else len(text)
        original = strip_trailing(text[scheme.start() : done])
        if len(original) > MAX_TOKEN_CHARS:
            continue
        yield from _decoded(scheme.start(), original, unquote(original))
    yield from _base64_urls(text)
    for match in _HEX_URL.finditer(text):
        start = match.start()
        while start > 0 and text[start - 1] in _HEX_DIGITS:
            start -= 1  # the whole hex token, which may encode text before the URL ("2020" for two spaces)
        if (match.start() - start) % 2:
            continue  # "http" is not on a byte boundary, so this is not hex-encoded text
        if start > 0 and text[start - 1].isalnum():
            continue
        if match.end() - start > 2 * MAX_TOKEN_CHARS:
            continue  # bounded work: no URL is this long
        hexed = match.group()
        decoded = bytes.fromhex(hexed[: len(hexed) - len(hexed) % 2]).decode("utf-8", "replace")
        yield from _decoded(start, text[start : match.end()], decoded)


def _base64_urls(text: str) -> Iterator[EncodedUrl]:
    """Base64 tokens whose decoded text holds URLs ("aHR0cDovL...", or text before them), each token once."""
    hits = sorted(match.start() for pattern in _BASE64_SEPARATORS for match in pattern.finditer(text))
    done = 0
    for hit in hits:
        if hit < done:
            continue  # in a token already read
        start = _token_start(text, hit)
        after = _BASE64_AFTER.match(text, hit)
        start, end = _wrapped_blob(text, start, after.end() if after is not None else hit)
        done = end
        if end - start > MAX_TOKEN_CHARS:
            continue  # bounded work: no URL is this long
        token = text[start:end]
        decoded = _base64(_LINE_BREAK.sub("", token)).decode("utf-8", "replace")
        read = 0
        for url in _URL_IN_DECODED.finditer(decoded):
            if url.start() < read:
                continue  # inside the URL before ("http://a/?next=http://b")
            if _BINARY.search(decoded, 0, url.start()) is not None:
                break  # binary, such as a certificate's DER: a URL in it ends where a length byte says, not at a delimiter
            for found in _decoded(start, token, decoded[url.start() :]):
                read = url.start() + len(found.url)
                yield found


def _wrapped_blob(text: str, start: int, end: int) -> tuple[int, int]:
    """The token text[start:end], or, when it is a whole line of base64 wrapped at a width (a MIME part, a PEM
    block), that line with the one before it (where the scheme may be) and the lines after it up to the blob's
    last: a line decoded on its own cuts a URL where the line ends. At most MAX_TOKEN_CHARS characters."""
    if (start and text[start - 1] != "\n") or (end < len(text) and text[end] not in "\r\n") or end - start > _MAX_WRAP:
        return start, end
    width = end - start if _BLOB_LINE.fullmatch(text, start, end) and (end - start) % 4 == 0 else None
    first = start
    before = _line_before(text, start)
    if before is not None:  # the line before: as wide, or wider than a last line
        wide = before[1] - before[0]
        if wide % 4 == 0 and wide >= end - start and width in (None, wide) and _BLOB_LINE.fullmatch(text, *before):
            first, width = before[0], wide
    if width != end - start:
        return first, end  # the blob's last line, or a token of its own
    last = end
    while (line := _line_after(text, last)) is not None and line[1] - first <= MAX_TOKEN_CHARS:
        if line[1] - line[0] > width or _BASE64_LINE.fullmatch(text, *line) is None:
            break
        last = line[1]
        if line[1] - line[0] < width or text[last - 1] == "=":
            break  # the blob's last line
    return first, last


def _line_before(text: str, start: int) -> tuple[int, int] | None:
    """The line ending just before `start` (a line's first character), at most _MAX_WRAP characters long."""
    end = start - 1
    if end < 1:
        return None
    if text[end - 1] == "\r":
        end -= 1
    begin = text.rfind("\n", max(0, end - _MAX_WRAP - 1), end) + 1
    if begin == 0 and end > _MAX_WRAP:
        return None
    return begin, end


def _line_after(text: str, end: int) -> tuple[int, int] | None:
    """The line starting just after the line break at `end`, bounded to _MAX_WRAP + 1 characters."""
    if text.startswith("\r\n", end):
        end += 2
    elif text.startswith("\n", end):
        end += 1
    else:
        return None
    stop = _LINE_END.search(text, end, end + _MAX_WRAP + 1)
    return end, stop.start() if stop is not None else min(len(text), end + _MAX_WRAP + 1)


def _token_start(text: str, position: int) -> int:
    """Where the run of base64 characters holding `position` starts (at most MAX_TOKEN_CHARS + 1 back).

    The window doubles from 64 characters, so the work is linear in the token's length, not in the bound."""
    size = 64
    while True:
        window = max(0, position - size)
        before = _BASE64_BEFORE.match(text, window, position)
        if before is not None:
            return before.end()
        if window == 0 or size > MAX_TOKEN_CHARS:
            return window
        size *= 2


def _decoded(start: int, original: str, decoded: str) -> Iterator[EncodedUrl]:
    """The URL at the start of `decoded`, if there is one."""
    if _URL_IN_DECODED.match(decoded) is None:
        return
    end = _DECODED_END.search(decoded)
    yield EncodedUrl(start, original, strip_trailing(decoded[: end.start()] if end is not None else decoded))


def _base64(token: str) -> bytes:
    """`token` decoded, padded if it lacks padding; when that is not how an encoder would have written it
    (a stray character after the data), only the whole 4-character groups."""
    data = token.rstrip("=")
    whole = data[: len(data) - len(data) % 4]
    try:
        if len(data) % 4 in (2, 3):
            decoded = base64.b64decode(data + "=" * (-len(data) % 4))
            if base64.b64encode(decoded).decode("ascii").rstrip("=") == data:
                return decoded
        return base64.b64decode(whole)
    except ValueError:
        return b""
