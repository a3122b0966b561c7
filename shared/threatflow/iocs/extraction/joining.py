"""Joining defangs written with spaces ("evil [.] com", "user @ evil.com", "bob AT evil.com", "http:// evil.com").

`join_spaced(text)` returns the text with each such form made one token, and the way back
from a position in it to the text as written; None when there is none (the usual case).
"""

from __future__ import annotations

import re
from bisect import bisect_right

from threatflow.iocs.defang import GLUED_DOT, HTTPISH, HYPHEN_DOT, OTHER_SCHEMES, SPOKEN_TLDS, URL_START
from threatflow.iocs.extraction.tokens import MAX_TOKEN_CHARS

# Only at the start of a run (the look-behind), so that finding the runs is linear.
_LONG_RUN = re.compile(rf"(?<!\S)\S{{{MAX_TOKEN_CHARS + 1},}}")

# -- joining defangs written with spaces ---------------------------------------------------------------------------
# A bracketed dot or at with a space before, inside or after it, or in angle brackets (which split tokens).
# The first character is always a bracket, so the regex engine skips to brackets; the glued "[.]" of most
# defanged text fails inside the engine, without a Python step per bracket.
_MARK_WORD = r"(?:\.|dot|@|at|et|arroba|punto|punkt)"
# Every repetition is bounded, so that a long run of brackets or spaces costs linear time.
_MARK_REST = rf"[\[({{< \t]{{0,12}}{_MARK_WORD}[\])}}> \t]{{0,12}}[\])}}>]"
_SPACED_MARK = re.compile(
    rf"[\[({{<](?:(?<=[ \t][\[({{<]){_MARK_REST}|(?<=<){_MARK_REST}|[\[({{<]{{0,12}}[ \t]{_MARK_REST}"
    rf"|[\[({{<]{{0,12}}{_MARK_WORD}[\])}}>]{{0,12}}[ \t][\])}}> \t]{{0,12}}[\])}}>]|{_MARK_REST}(?=[ \t]))",
    re.IGNORECASE,
)
_AT_SIGN = re.compile(r"@")
_SPACED_AT_WORD = re.compile(r"(?<=[a-z0-9])[ \t]+AT[ \t]+(?=[a-z0-9])")
_SPACED_DOT_WORD = re.compile(r"(?<=[A-Za-z0-9])[ \t]+(?:DOT|dot)[ \t]+(?=[A-Za-z0-9])")
_BACKSLASH_DOT = re.compile(r"\\\.")
# Cheap probes (each a literal search) for the rarer spaced forms; their full patterns run only when a probe hits.
_PROBE_AT = re.compile(r"@(?:(?<=[ \t]@)|(?=[ \t]))")
_PROBE_AT_WORD = re.compile(r"AT(?<=[ \t]AT)(?=[ \t])")
_PROBE_DOT_WORD = re.compile(r"dot(?<=[ \t]dot)(?=[ \t])")
_PROBE_DOT_UPPER = re.compile(r"DOT(?<=[ \t]DOT)(?=[ \t])")
_PROBE_BACKSLASH_DOT = re.compile(r"\\\.(?:(?<=[ \t]\\\.)|(?=[ \t]))")
# A comma written for a dot, with brackets: "1(,)2", "1],[2", "1[,2". Only these probes' forms make a token that the
# candidate expression would miss (no closing bracket); the others are handled per token.
_PROBE_COMMAS = (re.compile(r",[\[({]"), re.compile(r"\(,"), re.compile(r"\[,"), re.compile(r"\{,"))
_BRACKET_COMMA = re.compile(r"[\[\](){}]{1,8},[\[\](){}]{0,8}|,[\[\](){}]{1,8}")
_PROBE_SCHEME = re.compile(r"//(?:(?<=[ \t]//)|(?=[ \t]))")
_PROBE_SCHEME_COLON = re.compile(r":/(?<=[ \t]:/)")
_SPACED_SCHEME = re.compile(
    rf"(?<![A-Za-z])(?:{HTTPISH}|{OTHER_SCHEMES})(?P<gap>[ \t]{{0,8}}:?[ \t]{{0,8}}/{{2,8}}[ \t]{{0,8}})(?=[\w\[])", re.IGNORECASE
)
# A URL whose host is one label, then spaces before a lower-case ".tld" ("http://evil .com/x"): the space is a defang, as the
# label alone is no host. Found from each " .tld" (a literal the regex engine skips to), looking back a bounded way.
_SPACED_TLD = re.compile(r"\.(?<=[ \t]\.)[a-z]{2,63}(?![\w-])")
_URL_BEFORE_GAP = re.compile(rf"(?:{URL_START.pattern})[ \t]{{0,8}}[\w-]{{1,63}}\Z", re.IGNORECASE)
_LABEL_AFTER = re.compile(r"[A-Za-z0-9-]+")
_AT_MARK = re.compile(r"[\[({<]\s*(?:@|at|et|arroba)\s*[\])}>]|(?-i:AT)", re.IGNORECASE)


class Joined:
    """Text with spaced defangs joined, and the way back to positions in the text as written."""

    def __init__(self, text: str, edits: list[tuple[int, int, str]]) -> None:
        pieces: list[str] = []
        # One segment per run of unchanged text and per replacement: where it starts in the scanned text, and
        # (start, end, replaced) in the text as written.
        self.scan_starts: list[int] = []
        self.segments: list[tuple[int, int, bool]] = []
        position = scan = 0
        for start, end, replacement in edits:
            if start < position:
                continue  # overlaps an earlier edit
            if start > position:
                self._segment(scan, position, start, replaced=False)
                pieces.append(text[position:start])
                scan += start - position
            self._segment(scan, start, end, replaced=True)
            pieces.append(replacement)
            scan += len(replacement)
            position = end
        self._segment(scan, position, len(text), replaced=False)
        pieces.append(text[position:])
        self.text = "".join(pieces)

    def _segment(self, scan: int, start: int, end: int, *, replaced: bool) -> None:
        self.scan_starts.append(scan)
        self.segments.append((start, end, replaced))

    def start(self, scan: int) -> int:
        index = bisect_right(self.scan_starts, scan) - 1
        start, _end, replaced = self.segments[index]
        return start if replaced else start + scan - self.scan_starts[index]

    def end(self, scan: int) -> int:
        """The original end (exclusive) of a span that ends (exclusive) at `scan`."""
        index = bisect_right(self.scan_starts, scan - 1) - 1
        start, end, replaced = self.segments[index]
        return end if replaced else start + scan - self.scan_starts[index]


def _spaces_around(text: str, start: int, end: int) -> tuple[int, int]:
    """`start` and `end` widened over up to 8 spaces or tabs on each side, but not to the start or end of a line."""
    left, right = start, end
    while left > 0 and start - left < 8 and text[left - 1] in " \t":
        left -= 1
    while right < len(text) and right - end < 8 and text[right] in " \t":
        right += 1
    if left == 0 or text[left - 1] in "\r\n \t":
        left = start
    if right == len(text) or text[right] in "\r\n \t":
        right = end
    return left, right


def _word_char(char: str) -> bool:
    return char.isalnum() or char in "_-."


def join_spaced(text: str) -> Joined | None:
    """Join the defangs written with spaces, or None when there are none (the usual case)."""
    edits: list[tuple[int, int, str]] = []
    length = len(text)
    # The passes that stop at every bracket skip runs too long to be an indicator (bounded work).
    spans = _short_spans(text)
    for pos, endpos in spans:
        for match in _SPACED_MARK.finditer(text, pos, endpos):
            start, end = match.span()
            left, right = _spaces_around(text, start, end)
            marker = match.group().lower()
            at = "@" in marker or "at" in marker or "et" in marker or "arroba" in marker
            edits.append((left, right, "[@]" if at else "[.]"))
    if _PROBE_AT.search(text) is not None:
        for match in _AT_SIGN.finditer(text):
            start, end = _spaces_around(text, match.start(), match.end())
            if end - start > 1 and start > 0 and end < length and _word_char(text[start - 1]) and text[end].isalnum():
                edits.append((start, end, "@"))
    if _PROBE_AT_WORD.search(text) is not None:
        edits.extend((m.start(), m.end(), "[at]") for m in _SPACED_AT_WORD.finditer(text))
    if _PROBE_DOT_WORD.search(text) is not None or _PROBE_DOT_UPPER.search(text) is not None:
        edits.extend(_spaced_dots(text))
    if _PROBE_BACKSLASH_DOT.search(text) is not None:
        for match in _BACKSLASH_DOT.finditer(text):
            start, end = _spaces_around(text, match.start(), match.end())
            if end - start > 2 and start > 0 and end < length and text[start - 1].isalnum() and text[end].isalnum():
                edits.append((start, end, "[.]"))
    edits.extend((m.start(), m.end(), "[.]") for m in HYPHEN_DOT.finditer(text))
    edits.extend((m.start(), m.end(), "[.]") for m in GLUED_DOT.finditer(text))
    if any(probe.search(text) is not None for probe in _PROBE_COMMAS):
        for pos, endpos in spans:
            for match in _BRACKET_COMMA.finditer(text, pos, endpos):
                start, end = match.span()
                if start > 0 and end < length and text[start - 1].isalnum() and text[end].isalnum() and match.group() != "),":
                    edits.append((start, end, "[.]"))
    if _PROBE_SCHEME.search(text) is not None or _PROBE_SCHEME_COLON.search(text) is not None:
        for match in _SPACED_SCHEME.finditer(text):
            gap = match.group("gap")
            if " " in gap or "\t" in gap:
                edits.append((match.start("gap"), match.end("gap"), "://"))
    for match in _SPACED_TLD.finditer(text):
        gap_end = gap_start = match.start()
        while gap_start > 0 and gap_end - gap_start < 8 and text[gap_start - 1] in " \t":
            gap_start -= 1
        if _URL_BEFORE_GAP.search(text, max(0, gap_start - 100), gap_start) is not None:
            edits.append((gap_start, gap_end, ""))
    if not edits:
        return None
    edits.sort()
    return Joined(text, edits)


def _short_spans(text: str) -> list[tuple[int, int]]:
    """(pos, endpos) of the text between runs of more than MAX_TOKEN_CHARS non-space characters."""
    spans: list[tuple[int, int]] = []
    position = 0
    for run in _LONG_RUN.finditer(text):
        if run.start() > position:
            spans.append((position, run.start()))
        position = run.end()
    if position < len(text) or not spans:
        spans.append((position, len(text)))
    return spans


def _spaced_dots(text: str) -> list[tuple[int, int, str]]:
    """Spaced "DOT" between a lower-case word and a top-level domain, or spaced "dot"/"DOT" in an email's domain."""
    edits: list[tuple[int, int, str]] = []
    for match in _SPACED_DOT_WORD.finditer(text):
        words = text[max(0, match.start() - 80) : match.start()].split()
        word = words[-1] if words else ""
        after = _LABEL_AFTER.match(text, match.end())
        label = after.group() if after is not None else ""
        upper = "DOT" in match.group()
        # An email's domain: "bob@evil dot com", "info (at) evil dot com", "bob AT evil DOT com".
        mailbox = any("@" in w or _AT_MARK.fullmatch(w) for w in words[-3:])
        if mailbox or (upper and label in SPOKEN_TLDS and word != word.upper()):
            edits.append((match.start(), match.end(), "[.]"))
    return edits
