"""The one defang table: how threat reports write indicators so that nobody clicks them, and how to undo it.

Normalisation (`threatflow.iocs.normalise`, behind /batch and /value) and extraction
(`threatflow.iocs.extraction`, behind /extract and text imports) both read their rules
from here, so that every defang the extractor reads is also accepted by /batch (a
property test holds the two together). What lives here:

- `SPOKEN_TLDS`: top-level domains common enough that "evil dot com" is a host;
- scheme look-alikes (`URL_START`, `canonical_scheme`): hxxp, h__p, h00p, httx, hpp,
  meow, xxxx, fxp, ftx, sfxp..., with any written separator and brackets of any kind
  around or inside it ("[http]://", "https(://(", "http[:]//", "http//", ":///", "__");
- the refang rules, in three tiers, each run only when its hint is in the text:
  `refang(text)` the common forms ([.] (.) {.} <.> [dot] \\. [:] [://] [/] [@] [at],
  "evil dot com" before a spoken TLD, hxxp and fxp before a colon); `refang_token` adds
  the rarer marks (punto, punkt, et, arroba, "(,)", "[-]", "(/)", escaped brackets,
  "-dot-" and glued "DOT" before a TLD) and tidies bracket debris in a host ("10[[.]]1",
  "www].[evil", "evil[.com", "x^.com", "evil[]com");
- `refang_url`: a URL whose scheme is a look-alike, made canonical ("h__p://evil.com/x");
- `refang_value`: what normalise applies to one value (a URL by `refang_url`, anything
  else by `refang_token`);
- `DOT_FORMS`, `AT_FORMS`, `HTTP_LOOKALIKES` and `SCHEME_SEPARATORS`: written examples
  of each rule, for the property test and the docs.

File paths are never refanged (brackets and backslashes are legitimate there).
"""

from __future__ import annotations

import re

__all__ = [
    "AT_FORMS",
    "DOT_FORMS",
    "HTTP_LOOKALIKES",
    "REAL_SCHEMES",
    "SCHEME_SEPARATORS",
    "SPOKEN_TLDS",
    "URL_START",
    "canonical_scheme",
    "refang",
    "refang_token",
    "refang_url",
    "refang_value",
    "tidy_host",
]

# Top-level domains common enough that "evil dot com" / "evil DOT com" is a host, not a sentence.
# fmt: off
SPOKEN_TLDS = frozenset((
    "com", "net", "org", "info", "biz", "ru", "su", "cn", "io", "co", "uk", "de", "fr", "nl", "jp", "kr", "br", "ir", "ua", "pl",
    "xyz", "top", "tk", "ml", "ga", "cf", "gq", "pw", "cc", "ws", "club", "online", "site", "live", "shop", "icu", "vip", "onion",
    "gov", "edu", "mil", "eu", "ch", "tv", "me", "in", "es", "it", "us", "ca", "au",
))
# fmt: on
_SPOKEN_TLD_ALTERNATION = "|".join(sorted(SPOKEN_TLDS, key=lambda tld: (-len(tld), tld)))

# -- scheme look-alikes ------------------------------------------------------------------------------------------
# Of the http family (hxxp, h**p, h__p, h00p, httx, hpp, meow, xxxx), which may also be followed by "__"
# ("http__evil.com"); the others need a written "://" in some form.
HTTPISH = r"h(?:[xt*_0]{2}|xxx|___|ttx|p)ps?|httxs?|me[o0]ws?|x{4}[sx]?"
OTHER_SCHEMES = r"f[xt*]ps?|ftx|sf[xt]p|wss?|tcp|udp|ssh|smb|ldaps?|rtsp|irc|telnet|tftp|socks[45]?|file"
_SLASHES = r"(?:/{2,}|\\/\\/|\[/\]\[/\]|\[//\]|\(/\)\(/\))"
# Brackets of any kind may stand around or inside "://" ("[://]", "(:)//", "http]://", "https:(//"); after it
# not a "[" that opens an IPv6 literal ("http://[2001:db8::1]/").
_BRACKETS = r"[\[\](){}]{0,6}"
_BRACKETS_AFTER = r"(?:[\](){}]|\[(?![0-9A-Fa-f.:]{0,45}\]))*"
_SEPARATOR = rf"{_BRACKETS}:{_BRACKETS}{_SLASHES}{_BRACKETS_AFTER}|{_BRACKETS}\[:/\]/"
# Only an http look-alike may drop the colon ("http//evil.com") or write "__": "tcp//" is too likely a typo or a path.
URL_START = re.compile(
    rf"(?<![A-Za-z])(?:(?P<http>{HTTPISH})(?P<hsep>{_SEPARATOR}|{_BRACKETS}{_SLASHES}{_BRACKETS_AFTER}|__)"
    rf"|(?P<other>{OTHER_SCHEMES})(?P<osep>{_SEPARATOR}))",
    re.IGNORECASE,
)
# fmt: off
REAL_SCHEMES = frozenset((
    "http", "https", "ftp", "ftps", "sftp", "ws", "wss", "tcp", "udp", "ssh", "smb", "ldap", "ldaps", "rtsp", "irc", "telnet",
    "tftp", "socks", "socks4", "socks5", "file",
))
# fmt: on


def canonical_scheme(word: str) -> str:
    """The scheme a look-alike stands for; a real scheme keeps its case (refang=False compares)."""
    bare = word.strip("[]()")
    lower = bare.lower()
    if lower in REAL_SCHEMES:
        return bare
    if lower[0] in "hmx":
        return "https" if lower.endswith(("s", "xxxxx")) else "http"
    if lower.startswith("sf"):
        return "sftp"
    return "ftps" if lower.endswith("s") else "ftp"


# -- the common forms ----------------------------------------------------------------------------------------------
# (hints, pattern, replacement): a rule runs only when one of its hints is in the
# text, which skips most regex passes for the usual one or two defang forms.
_REFANG_RULES: tuple[tuple[tuple[str, ...], re.Pattern[str], str], ...] = (
    # Scheme look-alikes, only when followed by a (possibly defanged) colon.
    (("x", "X", "*", "eow", "EOW"), re.compile(r"\b(?:h[xt*]{2}p|hxxxp|meow)(s?)(?=[\[({]?:)", re.IGNORECASE), r"http\1"),
    (("xp", "XP", "Xp", "xP", "*p", "*P"), re.compile(r"\bf[x*]p(s?)(?=[\[({]?:)", re.IGNORECASE), r"ftp\1"),
    (("[:", "(:", "{:", ":\\/"), re.compile(r"\[://\]|\(://\)|\{://\}|[\[({]:[\])}]//|:\\/\\/|\[:/\]/"), "://"),
    (("[:", "(:", "{:"), re.compile(r"\[:\]|\(:\)|\{:\}"), ":"),
    (("[//]",), re.compile(r"\[//\]"), "//"),
    (("[/]", "\\/"), re.compile(r"\[/\]|\\/"), "/"),
    (
        ("[", "(", "{", "<", "\\", ".]"),
        re.compile(
            r"\s?\[\s*(?:\.|dot)\s*\]\s?|\(\s*(?:\.|dot)\s*\)|\{\s*(?:\.|dot)\s*\}|<\s*(?:\.|dot)\s*>|\\\.|\[\.(?=\w)|(?<=\w)\.\]",
            re.IGNORECASE,
        ),
        ".",
    ),
    (
        ("[", "(", "{", "<"),
        re.compile(r"\s?\[\s*(?:@|at)\s*\]\s?|\(\s*(?:@|at)\s*\)|\{\s*(?:@|at)\s*\}|<\s*(?:@|at)\s*>", re.IGNORECASE),
        "@",
    ),
    (
        ("dot", "DOT"),
        re.compile(
            rf"(?<=[A-Za-z0-9])\s+(?:dot|DOT)\s+(?=[A-Za-z0-9-]+(?:\s+(?:dot|DOT)\s+[A-Za-z0-9-]+)*\s+(?:dot|DOT)\s+"
            rf"(?:{_SPOKEN_TLD_ALTERNATION})\b|(?:{_SPOKEN_TLD_ALTERNATION})\b)"
        ),
        ".",
    ),
)
_DEFANG_HINT = re.compile(r"[\[\](){}<>\\]|h[xt*]{2}p|hxxxp|meow|f[x*]p|\sdot\s", re.IGNORECASE)


def refang(text: str) -> str:
    """Undo the common defang forms used in threat reports.

    hxxp/hXXp/hxxps/h**p/meow -> http(s), fxp -> ftp (before a colon); [.] (.) {.} <.> [dot] (dot)
    {dot} \\. "[." ".]" -> "."; [:] (:) {:} -> ":"; [://] (://) [:]// :\\/\\/ -> "://";
    [/] \\/ -> "/"; [@] (@) {@} [at] (at) -> "@"; "evil dot com" -> "evil.com" only
    before a common top-level domain. Text without any of these comes back as is.
    """
    if _DEFANG_HINT.search(text) is None:
        return text
    for hints, pattern, replacement in _REFANG_RULES:
        if any(hint in text for hint in hints):
            text = pattern.sub(replacement, text)
    return text


# -- the rarer marks, and a host's bracket debris -------------------------------------------------------------------
_EXTRA_HINT = re.compile(r"[\[\](){}\\^]|-dot-|DOT")
# (hint in the lower-cased text, pattern, replacement): a rule runs only when its hint is there.
_EXTRA_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("\\", re.compile(r"\\([\[\](){}])"), r"\1"),  # "evil\(.\)com": escaped brackets
    ("pun", re.compile(r"[\[({<]\s*(?:punto|punkt)\s*[\])}>]", re.IGNORECASE), "."),
    ("et", re.compile(r"[\[({<]\s*et\s*[\])}>]", re.IGNORECASE), "@"),
    ("arroba", re.compile(r"[\[({<]\s*arroba\s*[\])}>]", re.IGNORECASE), "@"),
    (",", re.compile(r"[\[(],[\])]"), "."),
    ("[-]", re.compile(r"\[-\]"), "-"),
    ("(/)", re.compile(r"\(/\)"), "/"),
)
# Words for a dot glued between labels, only before a final label ("evil-dot-com", "evilDOTcom"). Each starts
# with its literal so that the regex engine can skip to it; the extractor finds them in running text too.
HYPHEN_DOT = re.compile(r"-dot-(?<=[A-Za-z0-9]-dot-)(?=[A-Za-z]{2,}(?![\w.-]))")
GLUED_DOT = re.compile(r"DOT(?<=[a-z0-9]DOT)(?=[a-z]{2,}(?![\w.-]))")
# Only in a host, where brackets never belong: debris around a dot, partial "[dot"/"dot]", "[]", "^.".
_HOST_HINT = re.compile(r"[\[\](){}\\^]")
_HOST_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("dot", re.compile(r"[\[({]dot|dot[\])}]", re.IGNORECASE), "."),
    (".", re.compile(r"[\[\](){}\\^]{1,12}\.[\[\](){}]{0,12}|\.[\[\](){}]{1,12}"), "."),
    (",", re.compile(r"[\[\](){}]{1,12},[\[\](){}]{0,12}|,[\[\](){}]{1,12}"), "."),  # "1(,)2],[3": a comma written for a dot
    ("[]", re.compile(r"(?<=\w)\[\](?=\w)"), "."),
)
HOST_END = re.compile(r"[/?#\\]")
_PATH_START = re.compile(r"[/?#]")
_BARE_IPV6 = re.compile(r"[0-9A-Fa-f:.]+")
_PLAIN_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9]*):/{2,}")


def tidy_host(host: str) -> str:
    """A host without the bracket debris that only a defang leaves in one; an IPv6 literal is left alone."""
    if _HOST_HINT.search(host) is None or (host[:1] == "[" and "]" in host and ":" in host):
        return host
    lower = host.lower()
    for hint, pattern, replacement in _HOST_RULES:
        if hint in lower:
            host = pattern.sub(replacement, host)
    return host.strip("[](){}")


def _tidy(value: str) -> str:
    """`value` with its host part (before any "/?#", after the last "@" there) tidied."""
    if _HOST_HINT.search(value) is None:
        return value
    end = _PATH_START.search(value)
    authority, tail = (value[: end.start()], value[end.start() :]) if end is not None else (value, "")
    at = authority.rfind("@") + 1
    return authority[:at] + tidy_host(authority[at:]) + tail


def refang_token(raw: str, *, tidy: bool = True, common: bool = False) -> str:
    """`raw` (one whitespace-free token) with every defang form undone and, unless told otherwise, its host tidied.

    Without brackets, backslashes, carets or a dot word, only the common forms can be there, and the
    extractor (which has already joined spaced forms) runs them only on a token holding "://";
    `common=True` always runs them (a value given on its own may be "evil dot com").
    """
    if _EXTRA_HINT.search(raw) is None:
        return refang(raw) if common or "://" in raw else raw
    text = raw
    lower = raw.lower()
    for hint, pattern, replacement in _EXTRA_RULES:
        if hint in lower:
            text = pattern.sub(replacement, text)
    if "-dot-" in text:
        text = HYPHEN_DOT.sub(".", text)
    if "DOT" in text:
        text = GLUED_DOT.sub(".", text)
    text = refang(text)
    return _tidy(text) if tidy else text


def refang_url(url: str, match: re.Match[str] | None = None) -> str:
    """`url`, starting with a (possibly look-alike, possibly defanged) scheme, refanged to scheme://host/path.

    A real scheme with extra slashes before no host keeps them ("http:///x" stays a URL without a host),
    while "http:///evil.com/x" is a defang of "http://evil.com/x"."""
    match = match or URL_START.match(url)
    if match is None:
        return refang_token(url)
    scheme_and_separator = canonical_scheme(match.group("http") or match.group("other")) + "://"
    rest = refang_token(url[match.end() :], tidy=False, common=True)
    plain = _PLAIN_SCHEME.fullmatch(match.group())
    # Whether a dot follows is read refanged: "http:///evil[dot]com/x" is a defang of http://evil.com/x too.
    if plain is not None and plain.group(1).lower() in REAL_SCHEMES and "." not in rest.partition("/")[0]:
        scheme_and_separator = match.group()  # "http:///x" is a URL without a host, not a defang of "http://x"
    authority_end = HOST_END.search(rest)
    split = authority_end.start() if authority_end is not None else len(rest)
    authority, path = rest[:split], rest[split:]
    at = authority.rfind("@") + 1
    authority = authority[:at] + tidy_host(authority[at:])
    if path[:1] == "\\":
        backslashes = len(path) - len(path.lstrip("\\"))
        path = "/" * backslashes + path[backslashes:]  # browsers read "\" as "/" after an http host
    if authority.count(":") >= 2 and "[" not in authority and "@" not in authority and _BARE_IPV6.fullmatch(authority):
        authority = f"[{authority}]"  # "http://2001:db8::1" means the address, not a port
    elif "," in authority and "." not in authority:
        authority = authority.replace(",", ".")  # "http://192,168,0,1"
    return f"{scheme_and_separator}{authority}{path}"


def refang_value(value: str) -> str:
    """One indicator value (not a file path) with every defang form of this table undone."""
    match = URL_START.match(value)
    if match is not None:
        return refang_url(value, match)
    return refang_token(value, common=True)


# -- written examples of each rule, for the property test and the docs ----------------------------------------------
DOT_FORMS = ("[.]", "(.)", "{.}", "<.>", "[dot]", "(dot)", "{dot}", "[DOT]", "\\.", "[[.]]", "(,)", "[,]", "[punto]", "(punkt)")
AT_FORMS = ("[@]", "(@)", "{@}", "<@>", "[at]", "(at)", "{at}", "(et)", "[arroba]")
HTTP_LOOKALIKES = ("http", "hxxp", "hXXp", "h**p", "h__p", "h00p", "httx", "hpp", "meow", "xxxx")
SCHEME_SEPARATORS = ("://", ":///", "[://]", "(://)", "[:]//", "(:)//", ":\\/\\/", "[:/]/", "//", ":[//]", "]://", "__")
