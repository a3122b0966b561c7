"""Feeds given as text: which part of each line is an indicator.

A text import is a report (prose: every indicator the extractor finds is one) or a feed (one record a line:
Spamhaus DROP, FireHOL netsets, abuse.ch's text lists, Emerging Threats' and blocklist.de's address lists). A
document is read as a feed when its lines are records of the shapes below, with at most one prose line per
PROSE_PER_RECORDS records; otherwise it is a report and read whole, as before.

In a feed, comment lines ('#', ';', '!', '//') and a record's trailing comment are not read: they hold the feed's
own URLs ("; https://www.spamhaus.org/drop/drop.txt"), its publisher ("abuse.ch", "urlhaus [at] abuse.ch") and
notes, which became IoCs; and what a record holds besides its entry is counted in `skipped`, not stored.

Bounded work: a line is split once and looked up in tables; no expression backtracks over a line, and every value
still goes through the extractor, in one call for all records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PROSE_PER_RECORDS = 10
_COMMENT_START = ("#", ";", "!", "//")
# A comment after a record: a marker after a blank ("1.10.16.0/20 ; SBL256894", "198.51.100.7 # note").
_TRAILING_COMMENT = re.compile(r"\s(?:#|;|//)")


@dataclass
class FeedLines:
    """What of a feed is read, in document order: its records' entries as written (each still to be extracted) and
    its prose lines whole; and what was skipped, by kind."""

    readable: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    records: int = 0
    prose: int = 0

    def skip(self, kind: str, count: int = 1) -> None:
        if count:
            self.skipped[kind] = self.skipped.get(kind, 0) + count


def read(text: str) -> FeedLines | None:
    """The feed's lines, or None when `text` is a report."""
    feed = FeedLines()
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith(_COMMENT_START):
            feed.skip("comment lines")
            continue
        comment = _TRAILING_COMMENT.search(stripped)
        body = stripped[: comment.start()] if comment is not None else stripped
        tokens = body.split()
        if len(tokens) == 1:
            feed.readable.append(tokens[0])
            feed.records += 1
        else:
            feed.readable.append(line)
            feed.prose += 1
    if feed.records == 0 or feed.prose * PROSE_PER_RECORDS > feed.records:
        return None
    return feed
