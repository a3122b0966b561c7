"""Find indicators in free text such as threat reports, advisories and chat logs.

`extract(text)` returns each indicator once, in order of first appearance, with
its canonical value (see `normalise`) and the text as written (`original`,
possibly defanged; for a URL wrapped over two lines it includes the line break).

How it works: one regular expression picks whitespace-delimited tokens that
contain a trigger character (. : @ \\ /, or a closing bracket for "[dot]" and
"[at]"); each token is refanged, classified and validated by `normalise` (each
distinct spelling once per call); a second expression finds hashes. This keeps
the per-character work inside the regex engine and the Python work per
candidate token, which is what makes several MB/s possible.

Choices and false-positive guards:

- a host inside a URL or an email, and a hash inside a URL, email or file path,
  are not reported on their own: the URL/email/path is the indicator. The same
  host written elsewhere on its own is reported as a domain;
- "name.ext" with a common file extension ("invoice.zip", "setup.exe",
  "script.py") is not a domain unless it was defanged ("evil[.]zip"), which
  shows the author meant a host; names whose top-level label is in mixed case
  ("System.IO", "end.The") are taken for code or a missing space, not domains;
- a dotted quad right after "version", "ver", "v", "build", "release" or
  "firmware" is a version number, not an IP; so is anything with an octet above
  255 ("10.0.19041.1") or a fifth part ("1.2.3.4.5");
- hashes are 32/40/64 hex characters with no letter or digit on either side, so
  a sha256 never also yields an md5 or sha1 from its substrings;
- trailing punctuation (. , ; : ! ? quotes and unbalanced closing brackets) is
  not part of an indicator;
- a URL broken by a line break inside its path is joined again when the break
  follows a path separator or the next line starts like a path continuation
  ("/x", ".php", "?id=", or a fragment holding "/" or "=");
- a Windows path may hold spaces when quoted, or when a later word carries on
  with a backslash ("C:\\Program Files\\Evil\\x.exe");
- a POSIX path needs two or more components ("/tmp/x"), so "/24" or "and/or"
  are not paths; a host with a path but no scheme ("evil[.]com/gate.php") is a
  URL, taken as http, as `normalise` does.

With refang=False only indicators written in plain (fanged) form are found.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from threatflow.iocs.normalise import normalise
from threatflow.iocs.normalise import refang as refang_text
from threatflow.iocs.types import ExtractedIndicator, Indicator, IocType
from threatflow.platform.errors import ValidationError

__all__ = ["extract"]

_STOP = "\\s\"'<>`|“”‘’«»"
_CANDIDATE = re.compile(rf"(?<![^{_STOP}])[^{_STOP}]*[.:@\\/][^{_STOP}]*")
# Also a closing bracket, for "evil[dot]com" and "user[at]evil(dot)com"; as fast as the plain one.
_CANDIDATE_DEFANGED = re.compile(rf"(?<![^{_STOP}])[^{_STOP}]*[.:@\\/\])}}][^{_STOP}]*")
_NEXT_TOKEN = re.compile(rf"[^{_STOP}]+")
_HASH = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{32}(?:[0-9a-fA-F]{8}(?:[0-9a-fA-F]{24})?)?(?![0-9A-Za-z])")

_SCHEMES = r"h[xt*]{2}ps?|hxxxps?|meows?|f[xt*]ps?|sftp|wss?|tcp|udp|ssh|smb|ldaps?|rtsp|irc|telnet|tftp|socks[45]?"
_URL_START = re.compile(
    rf"(?<![A-Za-z])(?:{_SCHEMES})(?:(?:\[:\]|\(:\)|\{{:\}}|:)(?://|\\/\\/|\[/\]\[/\]|\[//\])|\[://\]|\(://\)|\{{://\}})",
    re.IGNORECASE,
)
_TRIGGER = re.compile(r"[.:@\\/]|[\[({](?:dot|at)[\])}]", re.IGNORECASE)
_WINDOWS_START = re.compile(r"[A-Za-z]:\\|\\\\[\w.$?-]|%[A-Za-z_][\w()]*%\\")
_POSIX = re.compile(r"~?/[^/]+/")
_FIELD_PREFIX = re.compile(r"[A-Za-z][\w-]{0,24}[:=](?![\\/])")
_IPV4ISH = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_IPV4_START = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9.])")
_PORT_SUFFIX = re.compile(r":[0-9]{1,5}")
_IPV6ISH = re.compile(r"\[?[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3}\]?(?::[0-9]{1,5}|/[0-9]{1,3})?")
_BRACKETED_IPV6 = re.compile(r"\[[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*\]")
_HOSTISH = re.compile(r"[\w-]+(?:\.[\w-]+)+\.?")
_VERSION_BEFORE = re.compile(r"(?:\bv|\bver|\bversions?|\bbuild|\brelease|\bfirmware|\bupdate|\bpatch|\bkb)\.?\s*[:#]?\s*$", re.IGNORECASE)
_ALL_UPPER_OR_LOWER = re.compile(r"[^A-Z]*|[^a-z]*")

_LEAD = "([{<*\"'"
_TRAIL = ".,;:!?*\"')]}>"
_OPENER = {")": "(", "]": "[", "}": "{", ">": "<"}
_JOIN_AFTER = tuple("/?&=-_.%")
_JOIN_BEFORE = tuple("/?&=._-%#")

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
    while token and token[-1] in _TRAIL:
        last = token[-1]
        opener = _OPENER.get(last)
        if opener is not None and token.count(opener) >= token.count(last):
            break  # balanced: "…/a_(b)" keeps its ")"
        token = token[:-1]
    return token


def _strip(token: str) -> tuple[int, str]:
    """(characters dropped in front, token without surrounding punctuation)."""
    stripped = token.lstrip(_LEAD)
    if stripped[:1] != token[:1] and _BRACKETED_IPV6.match(token, len(token) - len(stripped) - 1):
        stripped = token[len(token) - len(stripped) - 1 :]  # keep the "[" of "[2001:db8::1]:443"
    return len(token) - len(stripped), _strip_trailing(stripped)


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
        fanged = refang_text(raw)
        if not self.refang and fanged != raw:
            return None
        return fanged

    # -- URLs -----------------------------------------------------------------------------

    def _url(self, start: int, token_end: int, url: str) -> None:
        """`url` begins at `start` and runs to the end of its token at `token_end`."""
        text = self.text
        end = token_end
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
        fanged = self._clean(stripped)
        if fanged is None:
            return
        value = self._normalised(fanged, IocType.URL)
        if value is not None:
            self._add(start, start + len(original), IocType.URL, value, original)

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
            end = self._windows_continuation(end)
        raw = _strip_trailing(text[start:end])
        self.consumed = max(self.consumed, end)
        value = self._normalised(raw, IocType.FILE_PATH)
        if value is not None:
            self._add(start, start + len(raw), IocType.FILE_PATH, value, raw)

    def _windows_continuation(self, end: int) -> int:
        """Extend over "Program Files\\..." style words: up to two plain words, then one holding a backslash."""
        text = self.text
        position = end
        for _ in range(3):
            if not text.startswith(" ", position):
                return end
            nxt = _NEXT_TOKEN.match(text, position + 1)
            if nxt is None:
                return end
            word = nxt.group()
            if _WINDOWS_START.match(word) or _URL_START.search(word):
                return end
            position = nxt.end()
            if "\\" in word:
                end = position
                continue
            if not re.fullmatch(r"[\w().-]{1,32}", word):
                return end
        return end

    # -- everything else ------------------------------------------------------------------

    def token(self, start: int, token: str) -> None:
        lead, core = _strip(token)
        if not core or _TRIGGER.search(core) is None:
            return
        start += lead
        url = _URL_START.search(core)
        if url is not None:
            if url.start():
                self._parts(start, core[: url.start()])
            self._url(start + url.start(), start + len(core), core[url.start() :])
            return
        if _WINDOWS_START.match(core):
            self._windows(start, start + len(token) - lead)
            return
        if core[:1] in ("/", "~") and _POSIX.match(core):
            if core[:2] != "//":
                value = self._normalised(core, IocType.FILE_PATH)
                if value is not None:
                    self._add(start, start + len(core), IocType.FILE_PATH, value, core)
            return
        self._parts(start, core)

    def _parts(self, start: int, text: str) -> None:
        offset = 0
        for piece in re.split(r"([,=;])", text) if ("," in text or "=" in text or ";" in text) else (text,):
            if piece in (",", "=", ";"):
                offset += 1
                continue
            lead, part = _strip(piece)
            if part:
                self._part(start + offset + lead, part)
            offset += len(piece)

    def _part(self, start: int, part: str) -> None:
        prefix = _FIELD_PREFIX.match(part)
        if prefix is not None and not _IPV6ISH.fullmatch(part) and not part[: prefix.end() - 1].isdigit():
            start += prefix.end()
            part = part[prefix.end() :]
            if not part:
                return
        fanged = self._clean(part)
        if fanged is None:
            return
        if "@" in fanged:
            self._emit(start, part, IocType.EMAIL, fanged)
            return
        if _IPV4ISH.match(fanged):
            self._ipv4(start, part, fanged)
            return
        if fanged.count(":") >= 2 and _IPV6ISH.fullmatch(fanged):
            self._ipv6(start, part, fanged)
            return
        host, slash, _ = fanged.partition("/")
        if not _HOSTISH.fullmatch(host.partition(":")[0]) or not self._plausible_host(host.partition(":")[0], part, fanged):
            return
        if slash or ":" in host:
            self._emit(start, part, IocType.URL, fanged)
        else:
            self._emit(start, part, IocType.DOMAIN, fanged)

    def _plausible_host(self, host: str, original: str, fanged: str) -> bool:
        if original != fanged:
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
        elif rest[:1] == "/":
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
    scanner = _Scanner(text, refang=refang)
    candidate = _CANDIDATE_DEFANGED if refang else _CANDIDATE
    for match in candidate.finditer(text):
        if match.start() < scanner.consumed:
            continue
        scanner.token(match.start(), match.group())
    scanner.hashes()
    scanner.found.sort(key=lambda f: f.position)
    seen: set[tuple[IocType, str]] = set()
    out: list[ExtractedIndicator] = []
    for found in scanner.found:
        key = (found.type, found.value)
        if key not in seen:
            seen.add(key)
            out.append(ExtractedIndicator(found.type, found.value, found.original))
    return out
