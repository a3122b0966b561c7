"""Tokens: what ends one, the candidate expressions, and stripping the punctuation around an indicator."""

from __future__ import annotations

import re

from threatflow.iocs.normalise import MAX_VALUE_LENGTH

# No indicator is longer than MAX_VALUE_LENGTH once refanged, and a defang at most about quadruples it
# ("." -> "[.]", "@" -> "[at]"): a longer run without a space is not one indicator (bounded work).
MAX_TOKEN_CHARS = 4 * MAX_VALUE_LENGTH

# Characters that end a token: no indicator holds them (typographic punctuation included, as in "evil.com—the").
STOP = "\\s\"'<>`|“”‘’«»—–…•，、；：（）【】「」『』《》！？。"
CANDIDATE = re.compile(rf"(?<![^{STOP}])[^{STOP}]*[.:@\\/][^{STOP}]*")
# Also a closing bracket, for "evil[dot]com" and "user[at]evil(dot)com"; as fast as the plain one.
CANDIDATE_DEFANGED = re.compile(rf"(?<![^{STOP}])[^{STOP}]*[.:@\\/\])}}][^{STOP}]*")
NEXT_TOKEN = re.compile(rf"[^{STOP}]+")
TOKEN_END = re.compile(rf"[{STOP}]")
BRACKETED_IPV6 = re.compile(r"\[[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*\]")

_LEAD = "([{<*\"'-"
_TRAIL = ".,;:!?*\"')]}>。｡．"  # with the ideographic full stops, which IDNA would read as a dot
OPENER = {")": "(", "]": "[", "}": "{", ">": "<"}


def strip_trailing(token: str) -> str:
    end = len(token)
    # Counts of each closing bracket still in the token, and of its opener (never stripped here): linear time.
    counts: dict[str, tuple[int, int]] = {}
    while end and token[end - 1] in _TRAIL:
        last = token[end - 1]
        opener = OPENER.get(last)
        if opener is not None:
            closers, openers = counts.get(last) or (token.count(last, 0, end), token.count(opener, 0, end))
            if openers >= closers:
                break  # balanced: "…/a_(b)" keeps its ")"
            counts[last] = (closers - 1, openers)
        end -= 1
    return token[:end]


def strip(token: str) -> tuple[int, str]:
    """(characters dropped in front, token without surrounding punctuation)."""
    stripped = token.lstrip(_LEAD)
    if stripped[:1] != token[:1] and BRACKETED_IPV6.match(token, len(token) - len(stripped) - 1):
        stripped = token[len(token) - len(stripped) - 1 :]  # keep the "[" of "[2001:db8::1]:443"
    core = strip_trailing(stripped)
    if core[:1] == "_" and core[-1:] == "_":  # markdown emphasis: "_evil.com_"; "_dmarc.evil.com" keeps its "_"
        inner = core.strip("_")
        return len(token) - len(stripped) + len(core) - len(core.lstrip("_")), strip_trailing(inner)
    return len(token) - len(stripped), core


def strip_unbalanced(local: str) -> str:
    """`local` without the brackets at its end that close nothing ("me)") or open nothing ("me(")."""
    end = len(local)
    while end and local[end - 1] in "([{)]}":
        last = local[end - 1]
        opener = OPENER.get(last)
        if opener is not None and local.count(opener, 0, end) >= local.count(last, 0, end):
            break  # balanced: "john(comment)" keeps its ")"
        end -= 1
        if len(local) - end > 8:
            return local  # not the one or two brackets of a defang
    return local[:end]
