"""The URL split that IoC normalisation and the intel client share, so that what is stored and what is sent agree
on where a URL's authority, and its userinfo, end: scheme://authority path ?query #fragment (RFC 3986's generic
syntax; a backslash ends the authority, as browsers read it)."""

from __future__ import annotations

import re

URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#\\]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?", re.DOTALL)


def without_userinfo(url: str) -> tuple[str, bool]:
    """The URL without its userinfo ("http://user:pass@host/p" -> "http://host/p"), and whether it had one.
    The userinfo is everything before the authority's last "@"; an "@" in the path, query or fragment is not one."""
    match = URL.fullmatch(url)
    if match is None or "@" not in match[2]:
        return url, False
    return f"{url[: match.start(2)]}{match[2].rpartition('@')[2]}{url[match.end(2) :]}", True
