"""Find indicators in free text such as threat reports, advisories and chat logs.

`extract(text)` returns each indicator once, in order of first appearance, with
its canonical value (see `normalise`) and the text as written (`original`,
possibly defanged; for a URL wrapped over two lines it includes the line break,
for "evil [.] com" the spaces).

How it works: a first pass joins defangs written with spaces ("evil [.] com",
"user @ evil.com", "bob AT evil.com", "http:// evil.com", "1<.>2") so that each
indicator is one token, remembering where every character came from; it runs
only where such a form occurs. Then one regular expression picks
whitespace-delimited tokens that contain a trigger character (. : @ \\ /, or a
closing bracket for "[dot]" and "[at]"); each token is refanged, classified and
validated by `normalise` (each distinct spelling once per call); a second
expression finds hashes. This keeps the per-character work inside the regex
engine and the Python work per candidate token, which is what makes several
MB/s possible; every repetition that could meet a long run of brackets or
spaces is bounded, so that no input costs more than linear time.

Defang forms undone, besides those of `normalise.refang`: scheme look-alikes
(hxxp, h__p, h00p, httx, xxxx, meow, fxp, ftx, sfxp) with any written separator
and brackets of any kind around or inside it ("[http]://", "https(://(",
"http[:]//", "http//", ":///", "__" for http); bracket debris around a dot or
a comma written for a dot, in a host ("10[[.]]1", "www].[evil", "evil[.com",
"1(,)2", "x^.com", "evil[]com"); brackets around an "@" ("me)@(evil.com");
partial "[dot"/"dot]"; "(punto)" "(punkt)" "(arroba)" "(et)" "[-]" "(/)";
"-dot-" and "DOT" between lower-case words before a top-level domain; an
unbracketed IPv6 host ("http://2001:db8::1"). A URL written percent-encoded,
in base64 or in hex as a token of its own is decoded ("http%3A%2F%2Fevil%2Ecom",
"aHR0cDovL2V2aWwuY29t", "687474703a2f2f..."). In Chinese, Japanese or Korean
prose, which has no spaces, an indicator ends where those characters meet it
("恶意域名evil.com，").

Choices and false-positive guards:

- a host inside a URL or an email, and a hash inside a URL, email or file path,
  are not reported on their own: the URL/email/path is the indicator. The same
  host written elsewhere on its own is reported as a domain;
- when a URL or email does not validate, its host still counts: "a@1.2.3.4" and
  "test@[1.2.3.4]" give the IPv4, "http://evil.com:99999/" the domain, "@evil.com"
  the domain; an RFC 5322 comment in a mailbox ("john(x)@evil.com") is dropped;
- a host with a port but no path ("1.2.3.4:443", "evil[.]com:443") is the host;
  with a path it is a URL ("1.2.3.4:8080/admin"), taken as http;
- "name.ext" with a common file extension ("invoice.zip", "setup.exe",
  "script.py") is not a domain unless it was defanged ("evil[.]zip"), which
  shows the author meant a host; names whose top-level label is in mixed case
  ("System.IO", "end.The") are taken for code or a missing space, not domains;
- a dotted quad right after "version", "ver", "v", "build", "release" or
  "firmware" is a version number, not an IP; so is anything with an octet above
  255 ("10.0.19041.1"), a leading zero ("01.2.3.4") or a fifth part ("1.2.3.4.5");
- hashes are 32/40/64 hex characters with no hex digit on either side, so a
  sha256 never also yields an md5 or sha1 from its substrings, and no letter
  in front ("test<32 hex>" is an identifier);
- trailing punctuation (. , ; : ! ? quotes and unbalanced closing brackets) is
  not part of an indicator, and typographic punctuation (— … • and the
  full-width forms of CJK text) ends a token; a URL ends at a markdown "](" and, inside a
  comma-separated field ("url,https://x/y,label"), at the next comma;
- "user @ evil.com", "bob AT evil.com" and "evil DOT com" are joined, but plain
  "at" and "dot" in prose are words: "contact at evil.com" is the domain;
- a URL broken by a line break inside its path is joined again when the break
  follows a path separator or the next line starts like a path continuation
  ("/x", ".php", "?id=", or a fragment holding "/" or "=");
- a Windows path may hold spaces when quoted, or when a later word carries on
  with a backslash ("C:\\Program Files\\Evil\\x.exe"); a POSIX path likewise
  when the words are capitalised ("/Library/Application Support/X/y");
- a POSIX path needs two or more components ("/tmp/x"), so "/24" or "and/or"
  are not paths; a host with a path but no scheme ("evil[.]com/gate.php") is a
  URL, taken as http, as `normalise` does.

With refang=False only indicators written in plain (fanged) form are found.
"""

from __future__ import annotations

import base64
import re
from bisect import bisect_right
from typing import NamedTuple
from urllib.parse import unquote

from threatflow.iocs.normalise import normalise
from threatflow.iocs.normalise import refang as refang_text
from threatflow.iocs.types import ExtractedIndicator, Indicator, IocType
from threatflow.platform.errors import ValidationError

__all__ = ["extract"]

# Characters that end a token: no indicator holds them (typographic punctuation included, as in "evil.com—the").
_STOP = "\\s\"'<>`|“”‘’«»—–…•，、；：（）【】「」『』《》！？。"
_CANDIDATE = re.compile(rf"(?<![^{_STOP}])[^{_STOP}]*[.:@\\/][^{_STOP}]*")
# Also a closing bracket, for "evil[dot]com" and "user[at]evil(dot)com"; as fast as the plain one.
_CANDIDATE_DEFANGED = re.compile(rf"(?<![^{_STOP}])[^{_STOP}]*[.:@\\/\])}}][^{_STOP}]*")
_NEXT_TOKEN = re.compile(rf"[^{_STOP}]+")
# Not glued to a word in front ("test<hex>" is an identifier); a letter after it is fine ("<hash>hash" in command lines).
_HASH = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{32}(?:[0-9a-fA-F]{8}(?:[0-9a-fA-F]{24})?)?(?![0-9A-Fa-f])")

# Scheme look-alikes of the http family (hxxp, h**p, h__p, h00p, httx, hpp, meow, xxxx) may also be followed by
# "__" ("http__evil.com"); the others need a written "://" in some form.
_HTTPISH = r"h(?:[xt*_0]{2}|xxx|___|ttx|p)ps?|httxs?|me[o0]ws?|x{4}[sx]?"
_OTHER_SCHEMES = r"f[xt*]ps?|ftx|sf[xt]p|wss?|tcp|udp|ssh|smb|ldaps?|rtsp|irc|telnet|tftp|socks[45]?|file"
_SLASHES = r"(?:/{2,}|\\/\\/|\[/\]\[/\]|\[//\]|\(/\)\(/\))"
# Brackets of any kind may stand around or inside "://" ("[://]", "(:)//", "http]://", "https:(//"); after it
# not a "[" that opens an IPv6 literal ("http://[2001:db8::1]/").
_BRACKETS = r"[\[\](){}]{0,6}"
_BRACKETS_AFTER = r"(?:[\](){}]|\[(?![0-9A-Fa-f.:]{0,45}\]))*"
_SEPARATOR = rf"{_BRACKETS}:{_BRACKETS}{_SLASHES}{_BRACKETS_AFTER}|{_BRACKETS}\[:/\]/"
# Only an http look-alike may drop the colon ("http//evil.com") or write "__": "tcp//" is too likely a typo or a path.
_URL_START = re.compile(
    rf"(?<![A-Za-z])(?:(?P<http>{_HTTPISH})(?P<hsep>{_SEPARATOR}|{_BRACKETS}{_SLASHES}{_BRACKETS_AFTER}|__)"
    rf"|(?P<other>{_OTHER_SCHEMES})(?P<osep>{_SEPARATOR}))",
    re.IGNORECASE,
)
# fmt: off
_REAL_SCHEMES = frozenset((
    "http", "https", "ftp", "ftps", "sftp", "ws", "wss", "tcp", "udp", "ssh", "smb", "ldap", "ldaps", "rtsp", "irc", "telnet",
    "tftp", "socks", "socks4", "socks5", "file",
))
# fmt: on
# URLs written encoded, as a whole token: percent-encoded (an href, a redirect target; not one inside a
# URL's query), base64 ("aHR0cDovL..." is "http://...") or hex ("687474703a2f2f..."). Each pattern starts
# with a literal so that the regex engine can skip to it; the rest of the token is taken from there.
_PERCENT_SEPARATOR = re.compile(r"%3[Aa]%2[Ff]%2[Ff]")
_PERCENT_SCHEME = re.compile(rf"(?:^|(?<=[{_STOP}(\[]))(?:https?|ftps?)$", re.IGNORECASE)
_BASE64_URLS = (
    re.compile(r"aHR0c(?<![A-Za-z0-9+/=]aHR0c)[A-Za-z0-9+/]*=*(?![A-Za-z0-9+/=])"),  # "http"
    re.compile(r"ZnRwOi8v(?<![A-Za-z0-9+/=]ZnRwOi8v)[A-Za-z0-9+/]*=*(?![A-Za-z0-9+/=])"),  # "ftp://"
)
_HEX_URL = re.compile(r"68747470(?:73)?3[Aa]2[Ff]2[Ff][0-9A-Fa-f]*(?![0-9A-Fa-f])")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_TOKEN_END = re.compile(rf"[{_STOP}]")
_DECODED_END = re.compile(r"[\s\x00-\x1f\x7f\ufffd\"'<>`|]")
_TRIGGER = re.compile(r"[.:@\\/]|[\[({](?:dot|at|et|arroba|punto|punkt)[\])}]|\[\]|[\[\](){}],|,[\[\](){}]", re.IGNORECASE)
_WINDOWS_START = re.compile(r"[A-Za-z]:\\|[A-Za-z]:/(?!/)|\\\\[\w.$?-]|%[A-Za-z_][\w()]*%\\")
_POSIX = re.compile(r"~?/[^/]+/")
_FIELD_PREFIX = re.compile(r"[A-Za-z][\w-]{0,24}[:=](?![\\/])")
_IPV4ISH = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_IPV4_START = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9.])")
_PORT_SUFFIX = re.compile(r":[0-9]{1,5}")
_PORT_PATH = re.compile(r":[0-9]{1,5}[/?#]")
_IPV6ISH = re.compile(r"\[?[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3}\]?(?::[0-9]{1,5}|/[0-9]{1,3})?")
_BRACKETED_IPV6 = re.compile(r"\[[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*\]")
_BARE_IPV6 = re.compile(r"[0-9A-Fa-f:.]+")
_HOSTISH = re.compile(r"[\w-]+(?:\.[\w-]+)+\.?")
_VERSION_BEFORE = re.compile(r"(?:\bv|\bver|\bversions?|\bbuild|\brelease|\bfirmware|\bupdate|\bpatch|\bkb)\.?\s*[:#]?\s*$", re.IGNORECASE)
_ALL_UPPER_OR_LOWER = re.compile(r"[^A-Z]*|[^a-z]*")
# A dot written with a bracket, backslash or caret next to it, or a spelled-out dot: the author meant a host.
# Not ")." alone: "Archive (1).zip" is a file name whose "(" was stripped as punctuation.
_DEFANG_EVIDENCE = re.compile(
    r"[\[({\\^]\.|\.[\])}\[({]|[\]}]\.|\[\]|[\[({<]\s*dot|dot\s*[\])}>]|\[-\]|[\[\](){}],|,[\[\](){}]", re.IGNORECASE
)
# An address inside junk ("!@..1.2.3.4!@#"), tried only when the token as a whole gave nothing.
_JUNK = re.compile(r"[!@#$%^&*+=|~]")
_EMBEDDED_IPV4 = re.compile(r"(?<![0-9A-Za-z_])(?<![0-9]\.)[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9A-Za-z_])(?!\.[0-9])")
_EMBEDDED_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![0-9A-Fa-f:])")
# A run of CJK characters or full-width forms glued to an ASCII indicator.
_CJK = "\u3000-\u9fff\uac00-\ud7af\uff00-\uffef"
_CJK_GLUE = re.compile(rf"(?<=[A-Za-z0-9])[{_CJK}]+|(?<![{_CJK}])[{_CJK}]+(?=[A-Za-z0-9])")
_COMMENT = re.compile(r"\([^()@]*\)")
_FIELD_NAME = re.compile(r"[A-Za-z_][\w.-]*")
_SEPARATORS = re.compile(r"(?<![\[\](){}]),(?![\[\](){}])|[=;]")  # not the comma of a "[,]" defang

_LEAD = "([{<*\"'-"
_TRAIL = ".,;:!?*\"')]}>。｡．"  # with the ideographic full stops, which IDNA would read as a dot
_OPENER = {")": "(", "]": "[", "}": "{", ">": "<"}
_JOIN_AFTER = tuple("/?&=-_.%")
_JOIN_BEFORE = tuple("/?&=._-%#")

# -- refang beyond normalise.refang -----------------------------------------------------------------------------
# Words and marks that normalise.refang does not know; kept here because only free text needs them.
_EXTRA_HINT = re.compile(r"[\[\](){}\\^]")
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
# Only in a host, where brackets never belong: debris around a dot, partial "[dot"/"dot]", "[]", "^.".
_HOST_HINT = re.compile(r"[\[\](){}\\^]")
_HOST_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("dot", re.compile(r"[\[({]dot|dot[\])}]", re.IGNORECASE), "."),
    (".", re.compile(r"[\[\](){}\\^]{1,12}\.[\[\](){}]{0,12}|\.[\[\](){}]{1,12}"), "."),
    (",", re.compile(r"[\[\](){}]{1,12},[\[\](){}]{0,12}|,[\[\](){}]{1,12}"), "."),  # "1(,)2],[3": a comma written for a dot
    ("[]", re.compile(r"(?<=\w)\[\](?=\w)"), "."),
)
_HOST_END = re.compile(r"[/?#\\]")
_PATH_START = re.compile(r"[/?#]")

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
# Each starts with its literal so that the regex engine can skip to it.
_HYPHEN_DOT = re.compile(r"-dot-(?<=[A-Za-z0-9]-dot-)(?=[A-Za-z]{2,}(?![\w.-]))")
_GLUED_DOT = re.compile(r"DOT(?<=[a-z0-9]DOT)(?=[a-z]{2,}(?![\w.-]))")
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
    rf"(?<![A-Za-z])(?:{_HTTPISH}|{_OTHER_SCHEMES})(?P<gap>[ \t]{{0,8}}:?[ \t]{{0,8}}/{{2,8}}[ \t]{{0,8}})(?=[\w\[])", re.IGNORECASE
)
_LABEL_AFTER = re.compile(r"[A-Za-z0-9-]+")
_AT_MARK = re.compile(r"[\[({<]\s*(?:@|at|et|arroba)\s*[\])}>]|(?-i:AT)", re.IGNORECASE)
# Top-level domains common enough that "evil DOT com" is a host, not a sentence.
# fmt: off
_SPOKEN_TLDS = frozenset((
    "com", "net", "org", "info", "biz", "ru", "su", "cn", "io", "co", "uk", "de", "fr", "nl", "jp", "kr", "br", "ir", "ua", "pl",
    "xyz", "top", "tk", "ml", "ga", "cf", "gq", "pw", "cc", "ws", "club", "online", "site", "live", "shop", "icu", "vip", "onion",
    "gov", "edu", "mil", "eu", "ch", "tv", "me", "in", "es", "it", "us", "ca", "au",
))
# fmt: on

# Extensions whose bare "name.ext" is far more often a file than a host. Only
# the ones that are also top-level domains change anything (the others already
# fail the Public Suffix List check); they are listed with their neighbours to
# keep the rule obvious. Deliberately absent, because hosts under them are common
# in reports: com (DOS .com files), ai, cc, ws, ms, ml, pl, sc, bz.
# fmt: off
_FILE_EXTENSIONS = frozenset({
    "zip", "mov", "py", "sh", "rs", "md", "ps", "so", "cab", "one", "pub", "app", "run", "jar", "exe", "dll", "sys",
    "scr", "cpl", "ocx", "drv", "bat", "cmd", "ps1", "psm1", "vbs", "vbe", "js", "jse", "wsf", "wsh", "hta", "lnk", "msi",
    "msp", "iso", "img", "vhd", "vhdx", "dmg", "pkg", "deb", "rpm", "apk", "ipa", "doc", "docx", "docm", "dot", "dotm",
    "xls", "xlsx", "xlsm", "xlsb", "ppt", "pptx", "pptm", "rtf", "pdf", "txt", "csv", "log", "ini", "cfg", "conf", "json",
    "xml", "yaml", "yml", "html", "htm", "php", "asp", "aspx", "jsp", "css", "png", "jpg", "jpeg", "gif", "bmp", "ico",
    "svg", "mp3", "mp4", "wav", "avi", "mkv", "7z", "rar", "tar", "gz", "tgz", "bz2", "xz", "dat", "bin", "tmp", "bak",
    "db", "sqlite", "key", "pem", "crt", "cer", "der", "p12", "pfx", "class", "elf", "dylib", "ko", "chm", "inf", "reg",
    "sct", "xll", "wll", "iqy", "slk",
})
# fmt: on
# Names that look like domains but are nearly always technology names in prose.
_NOT_DOMAINS = frozenset(("asp.net", "vb.net", "ado.net", "node.js", "vue.js", "next.js", "react.js"))


class _Found(NamedTuple):
    position: int
    end: int
    type: IocType
    value: str
    original: str


def _strip_trailing(token: str) -> str:
    end = len(token)
    # Counts of each closing bracket still in the token, and of its opener (never stripped here): linear time.
    counts: dict[str, tuple[int, int]] = {}
    while end and token[end - 1] in _TRAIL:
        last = token[end - 1]
        opener = _OPENER.get(last)
        if opener is not None:
            closers, openers = counts.get(last) or (token.count(last, 0, end), token.count(opener, 0, end))
            if openers >= closers:
                break  # balanced: "…/a_(b)" keeps its ")"
            counts[last] = (closers - 1, openers)
        end -= 1
    return token[:end]


def _strip(token: str) -> tuple[int, str]:
    """(characters dropped in front, token without surrounding punctuation)."""
    stripped = token.lstrip(_LEAD)
    if stripped[:1] != token[:1] and _BRACKETED_IPV6.match(token, len(token) - len(stripped) - 1):
        stripped = token[len(token) - len(stripped) - 1 :]  # keep the "[" of "[2001:db8::1]:443"
    core = _strip_trailing(stripped)
    if core[:1] == "_" and core[-1:] == "_":  # markdown emphasis: "_evil.com_"; "_dmarc.evil.com" keeps its "_"
        inner = core.strip("_")
        return len(token) - len(stripped) + len(core) - len(core.lstrip("_")), _strip_trailing(inner)
    return len(token) - len(stripped), core


def _strip_unbalanced(local: str) -> str:
    """`local` without the brackets at its end that close nothing ("me)") or open nothing ("me(")."""
    end = len(local)
    while end and local[end - 1] in "([{)]}":
        last = local[end - 1]
        opener = _OPENER.get(last)
        if opener is not None and local.count(opener, 0, end) >= local.count(last, 0, end):
            break  # balanced: "john(comment)" keeps its ")"
        end -= 1
        if len(local) - end > 8:
            return local  # not the one or two brackets of a defang
    return local[:end]


def _canonical_scheme(word: str) -> str:
    """The scheme a look-alike stands for; a real scheme keeps its case (refang=False compares)."""
    bare = word.strip("[]()")
    lower = bare.lower()
    if lower in _REAL_SCHEMES:
        return bare
    if lower[0] in "hmx":
        return "https" if lower.endswith(("s", "xxxxx")) else "http"
    if lower.startswith("sf"):
        return "sftp"
    return "ftps" if lower.endswith("s") else "ftp"


def _tidy_host(host: str) -> str:
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
    return authority[:at] + _tidy_host(authority[at:]) + tail


def _refang(raw: str, *, tidy: bool = True) -> str:
    """`raw` with every defang form undone and, unless told otherwise, its host tidied."""
    if _EXTRA_HINT.search(raw) is None:
        # No bracket, backslash or caret: at most a scheme look-alike, which normalise.refang knows.
        return refang_text(raw) if "://" in raw else raw
    text = raw
    lower = raw.lower()
    for hint, pattern, replacement in _EXTRA_RULES:
        if hint in lower:
            text = pattern.sub(replacement, text)
    text = refang_text(text)
    return _tidy(text) if tidy else text


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


class _Joined:
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


def _join_spaced(text: str) -> _Joined | None:
    """Join the defangs written with spaces, or None when there are none (the usual case)."""
    edits: list[tuple[int, int, str]] = []
    length = len(text)
    for match in _SPACED_MARK.finditer(text):
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
    edits.extend((m.start(), m.end(), "[.]") for m in _HYPHEN_DOT.finditer(text))
    edits.extend((m.start(), m.end(), "[.]") for m in _GLUED_DOT.finditer(text))
    if any(probe.search(text) is not None for probe in _PROBE_COMMAS):
        for match in _BRACKET_COMMA.finditer(text):
            start, end = match.span()
            if start > 0 and end < length and text[start - 1].isalnum() and text[end].isalnum() and match.group() != "),":
                edits.append((start, end, "[.]"))
    if _PROBE_SCHEME.search(text) is not None or _PROBE_SCHEME_COLON.search(text) is not None:
        for match in _SPACED_SCHEME.finditer(text):
            gap = match.group("gap")
            if " " in gap or "\t" in gap:
                edits.append((match.start("gap"), match.end("gap"), "://"))
    if not edits:
        return None
    edits.sort()
    return _Joined(text, edits)


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
        if mailbox or (upper and label in _SPOKEN_TLDS and word != word.upper()):
            edits.append((match.start(), match.end(), "[.]"))
    return edits


class _Scanner:
    def __init__(self, text: str, *, refang: bool) -> None:
        self.text = text
        self.refang = refang
        self.found: list[_Found] = []
        self.consumed = 0
        # Reports repeat their indicators; normalise each distinct spelling once.
        self.memo: dict[tuple[IocType | None, str], Indicator | None] = {}

    # -- helpers ------------------------------------------------------------------------

    def _add(self, start: int, end: int, kind: IocType, value: str, original: str) -> None:
        self.found.append(_Found(start, end, kind, value, original))

    def _normalise(self, value: str, kind: IocType | None) -> Indicator | None:
        key = (kind, value)
        try:
            return self.memo[key]
        except KeyError:
            pass
        try:
            indicator: Indicator | None = normalise(value, kind)
        except ValidationError:
            indicator = None
        self.memo[key] = indicator
        return indicator

    def _normalised(self, value: str, kind: IocType) -> str | None:
        indicator = self._normalise(value, kind)
        return None if indicator is None else indicator.value

    def _clean(self, raw: str) -> str | None:
        """The refanged form, or None when refanging is off and the text is defanged."""
        fanged = _refang(raw)
        if not self.refang and fanged != raw:
            return None
        return fanged

    def _host_only(self, start: int, part: str, host: str) -> bool:
        """Emit `host` (an IPv4, IPv6 or domain written at `start`) on its own; whether it was one."""
        host = host.strip("[]")
        if host[:5].lower() == "ipv6:":
            host = host[5:]
        if not host or "%" in host:
            return False
        if _IPV4ISH.fullmatch(host):
            kind = IocType.IPV4
        elif ":" in host:
            kind = IocType.IPV6
        elif "." in host:
            kind = IocType.DOMAIN
        else:
            return False
        before = len(self.found)
        self._emit(start, part, kind, host)
        return len(self.found) > before

    # -- URLs -----------------------------------------------------------------------------

    def _url(self, start: int, token_end: int, url: str, *, csv: bool = False) -> None:
        """`url` begins at `start` and runs to the end of its token at `token_end`."""
        text = self.text
        end = token_end
        # A markdown link "[x](y)" and a comma-separated field end the URL; what follows is scanned on its own.
        scheme = _URL_START.match(url)
        after = scheme.end() if scheme is not None else 0
        cut = url.find("](", after)
        if csv and cut == -1:
            cut = url.find(",", after)
        if cut > 0:
            self._url(start, start + cut, url[:cut])
            rest_start = start + cut + (2 if url[cut] == "]" else 1)
            self.token(rest_start, text[rest_start:token_end])
            self.consumed = max(self.consumed, token_end)
            return
        stripped = _strip_trailing(url)
        while stripped == url and (text.startswith("\n", end) or text.startswith("\r\n", end)):
            nxt_start = end + (2 if text[end] == "\r" else 1)
            nxt = _NEXT_TOKEN.match(text, nxt_start)
            if nxt is None or not self._continues(url, nxt.group()):
                break
            url += nxt.group()
            end = nxt.end()
            stripped = _strip_trailing(url)
        original = text[start : end - (len(url) - len(stripped))]
        self.consumed = max(self.consumed, end)
        fanged = self._clean_url(stripped)
        if fanged is None:
            return
        self._emit_url(start, original, fanged)

    def _emit_url(self, start: int, original: str, fanged: str) -> None:
        value = self._normalised(fanged, IocType.URL)
        if value is not None:
            self._add(start, start + len(original), IocType.URL, value, original)
            return
        # Not a valid URL (a bad port, say): its host is still worth reporting.
        authority = fanged.partition("://")[2]
        authority = _HOST_END.split(authority, maxsplit=1)[0].rpartition("@")[2]
        host = authority.partition("]")[0] + "]" if authority[:1] == "[" else authority.partition(":")[0]
        self._host_only(start, original, host)

    def _clean_url(self, url: str) -> str | None:
        """`url` (starting with a possibly defanged scheme) refanged, or None when refanging is off and it is defanged."""
        match = _URL_START.match(url)
        if match is None:
            return self._clean(url)
        word = match.group("http") or match.group("other")
        scheme = _canonical_scheme(word)
        rest = _refang(url[match.end() :], tidy=False)
        authority_end = _HOST_END.search(rest)
        split = authority_end.start() if authority_end is not None else len(rest)
        authority, path = rest[:split], rest[split:]
        at = authority.rfind("@") + 1
        authority = authority[:at] + _tidy_host(authority[at:])
        if path[:1] == "\\":
            backslashes = len(path) - len(path.lstrip("\\"))
            path = "/" * backslashes + path[backslashes:]  # browsers read "\" as "/" after an http host
        if authority.count(":") >= 2 and "[" not in authority and "@" not in authority and _BARE_IPV6.fullmatch(authority):
            authority = f"[{authority}]"  # "http://2001:db8::1" means the address, not a port
        elif "," in authority and "." not in authority:
            authority = authority.replace(",", ".")  # "http://192,168,0,1"
        fanged = f"{scheme}://{authority}{path}"
        if not self.refang and fanged != url:
            return None
        return fanged

    @staticmethod
    def _continues(url: str, nxt: str) -> bool:
        """Whether `nxt`, at the start of the next line, is the rest of a wrapped URL."""
        after_scheme = url.partition("//")[2]
        if "/" not in after_scheme.replace("[/]", "/"):
            return False  # the break is not inside the path
        if _URL_START.match(nxt) or _IPV4_START.match(nxt):
            return False
        if url.endswith(_JOIN_AFTER):
            return True
        return nxt.startswith(_JOIN_BEFORE) or "/" in nxt or "=" in nxt

    def encoded_urls(self) -> None:
        """URLs written percent-encoded, in base64 or in hex, each as a token of its own."""
        text = self.text
        done = 0
        for match in _PERCENT_SEPARATOR.finditer(text):
            scheme = _PERCENT_SCHEME.search(text, max(0, match.start() - 6), match.start())
            if scheme is None or match.start() < done:
                continue  # inside a longer token, such as a URL's query: that URL is the indicator
            end = _TOKEN_END.search(text, match.end())
            done = end.start() if end is not None else len(text)
            original = _strip_trailing(text[scheme.start() : done])
            self._decoded_url(scheme.start(), original, unquote(original))
        for pattern in _BASE64_URLS:
            for match in pattern.finditer(text):
                self._decoded_url(match.start(), match.group(), _base64(match.group()).decode("utf-8", "replace"))
        for match in _HEX_URL.finditer(text):
            start = match.start()
            while start > 0 and text[start - 1] in _HEX_DIGITS:
                start -= 1  # the whole hex token, which may encode text before the URL ("2020" for two spaces)
            if (match.start() - start) % 2:
                continue  # "http" is not on a byte boundary, so this is not hex-encoded text
            if start > 0 and text[start - 1].isalnum():
                continue
            hexed = match.group()
            decoded = bytes.fromhex(hexed[: len(hexed) - len(hexed) % 2]).decode("utf-8", "replace")
            self._decoded_url(start, text[start : match.end()], decoded)

    def _decoded_url(self, start: int, original: str, decoded: str) -> None:
        """The URL at the start of `decoded`, reported as written (`original`)."""
        url = _URL_START.match(decoded)
        if url is None:
            return
        end = _DECODED_END.search(decoded)
        fanged = self._clean_url(_strip_trailing(decoded[: end.start()] if end is not None else decoded))
        if fanged is not None:
            self._emit_url(start, original, fanged)

    # -- file paths -----------------------------------------------------------------------

    def _windows(self, start: int, token_end: int) -> None:
        text = self.text
        quote = text[start - 1] if start else ""
        end = token_end
        if quote in ('"', "'", "“"):
            close = text.find("”" if quote == "“" else quote, start)
            newline = text.find("\n", start)
            if close != -1 and (newline == -1 or close < newline):
                end = close
        else:
            end = self._continuation(end, "\\")
        raw = _strip_trailing(text[start:end])
        self.consumed = max(self.consumed, end)
        if text.startswith("<", end) and raw.endswith("\\"):
            # "C:\Users\<username>\AppData\...": a template, not a path; "C:\Users" alone would be noise.
            rest = _NEXT_TOKEN.match(text, text.find(">", end) + 1) if ">" in text[end : end + 64] else None
            self.consumed = max(self.consumed, rest.end() if rest is not None else end)
            return
        value = self._normalised(raw, IocType.FILE_PATH)
        if value is not None:
            self._add(start, start + len(raw), IocType.FILE_PATH, value, raw)

    def _continuation(self, end: int, separator: str) -> int:
        """Extend over "Program Files\\..." style words: up to two plain words, then one holding `separator`.

        For POSIX ("/") every word must be capitalised ("Application Support/..."), since "and/or" is prose.
        """
        text = self.text
        position = end
        posix = separator == "/"
        if posix:
            component = text[text.rfind("/", 0, end) + 1 : end]
            if not component[:1].isupper():
                return end
        for _ in range(3):
            if not text.startswith(" ", position):
                return end
            nxt = _NEXT_TOKEN.match(text, position + 1)
            if nxt is None:
                return end
            word = nxt.group()
            if _WINDOWS_START.match(word) or _URL_START.search(word) or (posix and not word[:1].isupper()):
                return end
            position = nxt.end()
            if separator in word:
                end = position
                continue
            if not re.fullmatch(r"[\w().-]{1,32}", word):
                return end
        return end

    def _posix(self, start: int, core: str) -> None:
        end = self._continuation(start + len(core), "/")
        raw = _strip_trailing(self.text[start:end]) if end != start + len(core) else core
        self.consumed = max(self.consumed, end)
        value = self._normalised(raw, IocType.FILE_PATH)
        if value is not None:
            self._add(start, start + len(raw), IocType.FILE_PATH, value, raw)

    # -- everything else ------------------------------------------------------------------

    def token(self, start: int, token: str) -> None:
        lead, core = _strip(token)
        if not core or _TRIGGER.search(core) is None:
            return
        start += lead
        if not core.isascii():
            glue = _CJK_GLUE.search(core)
            if glue is not None:
                self._unglue(start, core)
                return
        # Every written scheme separator holds a "/" (or is "__"); most tokens have neither.
        url = _URL_START.search(core) if "/" in core or "__" in core else None
        if url is not None:
            if url.start():
                self._parts(start, core[: url.start()])
            if (url.group("other") or "").lower() == "file" and url.group("osep").endswith("///"):
                # "file:///etc/passwd", "file:///C:/x.exe": no host, the indicator is the path.
                path = "/" + core[url.end() :]
                path = path[1:] if path[2:4] == ":/" else path
                self._emit(start + url.start(), core[url.start() :], IocType.FILE_PATH, _strip_trailing(path))
                return
            csv = url.start() > 0 and core[url.start() - 1] == ","
            self._url(start + url.start(), start + len(core), core[url.start() :], csv=csv)
            return
        if _WINDOWS_START.match(core):
            self._windows(start, start + len(token) - lead)
            return
        if core[:1] in ("/", "~") and _POSIX.match(core):
            if core[:2] != "//":
                self._posix(start, core)
            return
        self._parts(start, core)

    def _unglue(self, start: int, core: str) -> None:
        """Chinese, Japanese and Korean prose has no spaces: in "恶意域名evil.com作为C2" the domain sits between words.

        A run of such characters next to an ASCII letter or digit ends a token; next to a "." or "/" it is part of
        an internationalised name ("例子.广告", "http://example.com/中文") and stays.
        """
        position = 0
        for glue in _CJK_GLUE.finditer(core):
            if glue.start() > position:
                self.token(start + position, core[position : glue.start()])
            position = glue.end()
        if position < len(core):
            self.token(start + position, core[position:])

    def _parts(self, start: int, text: str) -> None:
        offset = 0
        while True:
            separator = _SEPARATORS.search(text, offset)
            # A separator inside a query ("evil.com/?q=a,b") belongs to the URL, and "=" after something that is
            # not a field name, with an "@" later, to a mailbox ("user+box/dept=shipping@evil.com", RFC 5322).
            whole = separator is not None and (
                "?" in text[offset : separator.start()]
                or (
                    separator.group() == "="
                    and separator.start() > offset
                    and text.rfind("@") > separator.end()
                    and not _FIELD_NAME.fullmatch(text, offset, separator.start())
                )
            )
            piece = text[offset:] if separator is None or whole else text[offset : separator.start()]
            lead, part = _strip(piece)
            if part:
                self._part(start + offset + lead, part)
            if separator is None or len(piece) == len(text) - offset:
                return
            offset = separator.end()

    def _part(self, start: int, part: str) -> None:
        prefix = _FIELD_PREFIX.match(part)
        if prefix is not None and not _IPV6ISH.fullmatch(part) and not part[: prefix.end() - 1].isdigit():
            lead, part = _strip(part[prefix.end() :])
            start += prefix.end() + lead
            if not part:
                return
        if _WINDOWS_START.match(part) or (part[:1] in "/~" and _POSIX.match(part) and part[:2] != "//"):
            self._emit(start, part, IocType.FILE_PATH, part)  # "path=/tmp/x", "-file:C:\\x.exe"
            return
        fanged = self._clean(part)
        if fanged is None:
            return
        before = len(self.found)
        self._classify(start, part, fanged)
        if len(self.found) == before and _JUNK.search(fanged) is not None:
            self._embedded(start, part, fanged)

    def _classify(self, start: int, part: str, fanged: str) -> None:
        if "@" in fanged:
            self._email(start, part, fanged)
            return
        if _IPV4ISH.match(fanged):
            self._ipv4(start, part, fanged)
            return
        if fanged.count(":") >= 2:
            bracketed = _BRACKETED_IPV6.match(fanged)
            if bracketed is not None and _PORT_PATH.match(fanged + "/", bracketed.end()) and "/" in fanged[bracketed.end() :]:
                self._emit(start, part, IocType.URL, "http://" + fanged)  # "[2001:db8::1]:80/path"
                return
            if _IPV6ISH.fullmatch(fanged):
                self._ipv6(start, part, fanged)
                return
        host, slash, _ = fanged.partition("/")
        name, colon, port = host.partition(":")
        if not _HOSTISH.fullmatch(name) or not self._plausible_host(name, part, fanged):
            return
        if slash:
            self._emit(start, part, IocType.URL, fanged)
        elif colon:
            # "evil[.]com:443": the host; as for an IP, the port is not part of the indicator.
            if port.isdigit() and part.endswith(":" + port):
                self._emit(start, part[: -len(port) - 1], IocType.DOMAIN, name)
        else:
            self._emit(start, part, IocType.DOMAIN, fanged)

    def _email(self, start: int, part: str, fanged: str) -> None:
        before = len(self.found)
        local, _, domain = fanged.rpartition("@")
        bare = _strip_unbalanced(local)
        if bare != local:
            # "me)@(evil.com", "me{@evil.com": brackets of a defanged "@", though "{" and "}" are legal in a mailbox.
            self._emit(start, part, IocType.EMAIL, f"{bare}@{domain}")
            if len(self.found) > before:
                return
        self._emit(start, part, IocType.EMAIL, fanged)
        if len(self.found) > before:
            return
        if "(" in local:  # "john.smith(comment)@evil.com": an RFC 5322 comment is not part of the mailbox
            self._emit(start, part, IocType.EMAIL, f"{_COMMENT.sub('', local)}@{domain}")
            if len(self.found) > before:
                return
        if not local or "@" not in part or not domain:
            if not local and domain:
                self._host_only(start, part, domain)  # "@evil.com"
            return
        # "a@1.2.3.4", "test@[1.2.3.4]": not an email we store, but the host is an indicator.
        at = part.rfind("@") + 1
        if _IPV4ISH.search(domain) or domain[:1] == "[":
            self._host_only(start + at, part[at:], domain)

    def _embedded(self, start: int, part: str, fanged: str) -> None:
        """Addresses inside junk around them ("!@..1.2.3.4!@#"); positions are approximate when refanged."""
        exact = part == fanged
        for pattern, kind in ((_EMBEDDED_IPV4, IocType.IPV4), (_EMBEDDED_IPV6, IocType.IPV6)):
            for match in pattern.finditer(fanged):
                if kind is IocType.IPV6 and match.group().count(":") < 2:
                    continue
                offset = match.start() if exact else 0
                shown = match.group() if exact else part
                self._emit(start + offset, shown, kind, match.group())

    def _plausible_host(self, host: str, original: str, fanged: str) -> bool:
        if original != fanged and _DEFANG_EVIDENCE.search(original):
            return True  # defanged on purpose: the author meant a host
        labels = host.rstrip(".").split(".")
        tld = labels[-1]
        if len(labels) == 2 and tld.lower() in _FILE_EXTENSIONS:
            return False
        if host.lower() in _NOT_DOMAINS:
            return False
        # "System.IO", "end.The": a mixed-case name is code or a missing space.
        return not (tld != tld.lower() and not _ALL_UPPER_OR_LOWER.fullmatch(host))

    def _ipv4(self, start: int, part: str, fanged: str) -> None:
        context = self.text[max(0, start - 12) : start]
        if _VERSION_BEFORE.search(context):
            return
        if _IPV4ISH.fullmatch(fanged):
            self._emit(start, part, IocType.IPV4, fanged)
            return
        head = _IPV4ISH.match(fanged)
        assert head is not None
        rest = fanged[head.end() :]
        if rest[:1] == "/" and rest[1:].isdigit():
            self._emit(start, part, IocType.CIDR, fanged)
        elif rest[:1] == "/" or _PORT_PATH.match(rest):
            self._emit(start, part, IocType.URL, fanged)
        elif _PORT_SUFFIX.fullmatch(rest) and part.endswith(rest):
            self._emit(start, part[: -len(rest)], IocType.IPV4, head.group())

    def _ipv6(self, start: int, part: str, fanged: str) -> None:
        address = fanged
        if address.startswith("["):
            address = address[1:].partition("]")[0]
        elif "/" in address:
            self._emit(start, part, IocType.CIDR, address)
            return
        if address.strip(":") == "":
            return  # "::" alone is prose more often than an address
        self._emit(start, part, IocType.IPV6, address, original=part)

    def _emit(self, start: int, part: str, kind: IocType, fanged: str, *, original: str | None = None) -> None:
        # An IPv6 is detected rather than forced, so an IPv4-mapped one becomes its IPv4 (see normalise).
        indicator = self._normalise(fanged, None if kind is IocType.IPV6 else kind)
        if indicator is None:
            return
        if kind is IocType.IPV6 and indicator.type not in (IocType.IPV4, IocType.IPV6):
            return
        self._add(start, start + len(part), indicator.type, indicator.value, original if original is not None else part)

    # -- hashes -----------------------------------------------------------------------------

    def hashes(self) -> None:
        spans = sorted((f.position, f.end) for f in self.found if f.type in (IocType.URL, IocType.EMAIL, IocType.FILE_PATH))
        index = 0
        for match in _HASH.finditer(self.text):
            position = match.start()
            while index < len(spans) and spans[index][1] <= position:
                index += 1
            if index < len(spans) and spans[index][0] <= position:
                continue  # inside a URL, email or path: that is the indicator
            digest = match.group()
            kind = {32: IocType.MD5, 40: IocType.SHA1}.get(len(digest), IocType.SHA256)
            self._add(position, match.end(), kind, digest.lower(), digest)


def extract(text: str, *, refang: bool = True) -> list[ExtractedIndicator]:
    """Indicators in `text`, each (type, value) once, in order of first appearance."""
    joined = _join_spaced(text) if refang else None
    scanner = _Scanner(joined.text if joined is not None else text, refang=refang)
    candidate = _CANDIDATE_DEFANGED if refang else _CANDIDATE
    for match in candidate.finditer(scanner.text):
        if match.start() < scanner.consumed:
            continue
        scanner.token(match.start(), match.group())
    if refang:
        scanner.encoded_urls()
    scanner.hashes()
    scanner.found.sort(key=lambda f: f.position)
    seen: set[tuple[IocType, str]] = set()
    out: list[ExtractedIndicator] = []
    for found in scanner.found:
        key = (found.type, found.value)
        if key not in seen:
            seen.add(key)
            original = found.original
            if joined is not None:
                original = text[joined.start(found.position) : joined.end(found.end)]
            out.append(ExtractedIndicator(found.type, found.value, original))
    return out
