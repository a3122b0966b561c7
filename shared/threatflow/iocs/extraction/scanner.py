"""The scanner: each candidate token classified into URLs, emails, hosts, IPs, CIDRs, file paths; then hashes."""

from __future__ import annotations

import re
from typing import NamedTuple

from threatflow.iocs.defang import HOST_END, URL_START, refang_token, refang_url
from threatflow.iocs.extraction.classify import plausible_host
from threatflow.iocs.extraction.encoded import PERCENT_SEPARATOR, encoded_urls
from threatflow.iocs.extraction.tokens import (
    BRACKETED_IPV6,
    MAX_TOKEN_CHARS,
    NEXT_TOKEN,
    strip,
    strip_trailing,
    strip_unbalanced,
)
from threatflow.iocs.normalise import normalise
from threatflow.iocs.types import Indicator, IocType
from threatflow.platform.errors import ValidationError

# Not glued to a word in front ("test<hex>" is an identifier); a letter after it is fine ("<hash>hash" in command lines).
_HASH = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{32}(?:[0-9a-fA-F]{8}(?:[0-9a-fA-F]{24})?)?(?![0-9A-Fa-f])")
_TRIGGER = re.compile(r"[.:@\\/]|[\[({](?:dot|at|et|arroba|punto|punkt)[\])}]|\[\]|[\[\](){}],|,[\[\](){}]", re.IGNORECASE)
_WINDOWS_START = re.compile(r"[A-Za-z]:\\|[A-Za-z]:/(?!/)|\\\\[\w.$?-]|%[A-Za-z_][\w()]*%\\")
_POSIX = re.compile(r"~?/[^/]+/")
_FIELD_PREFIX = re.compile(r"[A-Za-z][\w-]{0,24}[:=](?![\\/])")
_IPV4ISH = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_IPV4_START = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9.])")
# "2001:678:738::/48" on the next line is an address or network of its own: no URL path goes on with "hex:hex:".
_IPV6_START = re.compile(r"[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{0,4}:")
_PORT_SUFFIX = re.compile(r":[0-9]{1,5}")
_PORT_PATH = re.compile(r":[0-9]{1,5}[/?#]")
_IPV6ISH = re.compile(r"\[?[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3}\]?(?::[0-9]{1,5}|/[0-9]{1,3})?")
_HOSTISH = re.compile(r"[\w-]+(?:\.[\w-]+)+\.?")
_VERSION_BEFORE = re.compile(r"(?:\bv|\bver|\bversions?|\bbuild|\brelease|\bfirmware|\bupdate|\bpatch|\bkb)\.?\s*[:#]?\s*$", re.IGNORECASE)
# An address inside junk ("!@..1.2.3.4!@#"), tried only when the token as a whole gave nothing.
_JUNK = re.compile(r"[!@#$%^&*+=|~]")
# A percent-escape of a character no host name holds (space, "/", ":", "@", quotes, brackets ...): outside a URL it
# ends a host ("evil.com%2F", "%2Fevil.com" in a log line); "%2E" and "%2D" ("." and "-") do not.
# "%25" is an escaped "%": "%252F" (an escape escaped again) is one delimiter, not "%25" then a label "2F...".
_ESCAPED_DELIMITER = re.compile(r"%(?:25)*(?:2[0-9A-Ca-c]|2[Ff]|3[A-Fa-f]|40|5[B-Eb-e]|60|7[B-Eb-e])")
# An escaped "/" or "\" after a name or ".." is a path's separator: the piece after it is a file or directory name.
_ESCAPED_PATH_SEPARATOR = re.compile(r"%(?:25)*(?:2[Ff]|5[Cc])")
_PATH_PIECE_END = re.compile(r"[\w.-]\Z")
_EMBEDDED_IPV4 = re.compile(r"(?<![0-9A-Za-z_])(?<![0-9]\.)[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9A-Za-z_])(?!\.[0-9])")
_EMBEDDED_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![0-9A-Fa-f:])")
# A run of CJK characters or full-width forms glued to an ASCII indicator.
_CJK = "\u3000-\u9fff\uac00-\ud7af\uff00-\uffef"
_CJK_GLUE = re.compile(rf"(?<=[A-Za-z0-9])[{_CJK}]+|(?<![{_CJK}])[{_CJK}]+(?=[A-Za-z0-9])")
_COMMENT = re.compile(r"\([^()@]*\)")
_FIELD_NAME = re.compile(r"[A-Za-z_][\w.-]*")
_SEPARATORS = re.compile(r"(?<![\[\](){}]),(?![\[\](){}])|[=;]")  # not the comma of a "[,]" defang
_PIECE_END = re.compile(r"[,;=]")  # where an over-long token is cut into pieces
_JOIN_AFTER = tuple("/?&=-_.%")
_JOIN_BEFORE = tuple("/?&=._-%#")


class _Found(NamedTuple):
    position: int
    end: int
    type: IocType
    value: str
    original: str


class Scanner:
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
        fanged = refang_token(raw)
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
        scheme = URL_START.match(url)
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
        stripped = strip_trailing(url)
        while stripped == url and len(url) <= MAX_TOKEN_CHARS and (text.startswith("\n", end) or text.startswith("\r\n", end)):
            nxt_start = end + (2 if text[end] == "\r" else 1)
            nxt = NEXT_TOKEN.match(text, nxt_start)
            if nxt is None or not self._continues(url, nxt.group()):
                break
            url += nxt.group()
            end = nxt.end()
            stripped = strip_trailing(url)
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
        authority = HOST_END.split(authority, maxsplit=1)[0].rpartition("@")[2]
        host = authority.partition("]")[0] + "]" if authority[:1] == "[" else authority.partition(":")[0]
        self._host_only(start, original, host)

    def _clean_url(self, url: str) -> str | None:
        """`url` (starting with a possibly defanged scheme) refanged, or None when refanging is off and it is defanged."""
        match = URL_START.match(url)
        if match is None:
            return self._clean(url)
        fanged = refang_url(url, match)
        if not self.refang and fanged != url:
            return None
        return fanged

    def _continues(self, url: str, nxt: str) -> bool:
        """Whether `nxt`, at the start of the next line, is the rest of a wrapped URL."""
        after_scheme = url.partition("//")[2]
        if "/" not in after_scheme.replace("[/]", "/"):
            return False  # the break is not inside the path
        if URL_START.match(nxt) or _IPV4_START.match(nxt) or _IPV6_START.match(nxt) or self._starts_with_host(nxt):
            return False
        if url.endswith(_JOIN_AFTER):
            return True
        return nxt.startswith(_JOIN_BEFORE) or "/" in nxt or "=" in nxt

    def _starts_with_host(self, nxt: str) -> bool:
        """Whether `nxt` begins with a host name of its own ("evil[.]com", "evil.com/x"): the next entry of a list of
        indicators, not the rest of a URL that ended with "/" ("report.zip" or "index.php" are not hosts)."""
        head = strip(nxt)[1].partition("/")[0]
        fanged = refang_token(head)
        name = fanged.partition(":")[0]
        if not _HOSTISH.fullmatch(name) or not plausible_host(name, head, fanged):
            return False
        return self._normalise(name, IocType.DOMAIN) is not None

    def encoded_urls(self) -> None:
        """URLs written percent-encoded, in base64 or in hex, each as a token of its own, reported as written."""
        for found in encoded_urls(self.text):
            fanged = self._clean_url(found.url)
            if fanged is not None:
                self._emit_url(found.start, found.original, fanged)

    # -- file paths -----------------------------------------------------------------------

    def _windows(self, start: int, token_end: int) -> None:
        text = self.text
        quote = text[start - 1] if start else ""
        end = token_end
        if quote in ('"', "'", "“"):
            # Bounded: a quoted path is one value, so the closing quote is near or not there.
            close = text.find("”" if quote == "“" else quote, start, start + MAX_TOKEN_CHARS)
            newline = text.find("\n", start, start + MAX_TOKEN_CHARS)
            if close != -1 and (newline == -1 or close < newline):
                end = close
        else:
            end = self._continuation(end, "\\")
        raw = strip_trailing(text[start:end])
        self.consumed = max(self.consumed, end)
        if text.startswith("<", end) and raw.endswith("\\"):
            # "C:\Users\<username>\AppData\...": a template, not a path; "C:\Users" alone would be noise.
            rest = NEXT_TOKEN.match(text, text.find(">", end) + 1) if ">" in text[end : end + 64] else None
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
            nxt = NEXT_TOKEN.match(text, position + 1)
            if nxt is None:
                return end
            word = nxt.group()
            if _WINDOWS_START.match(word) or URL_START.search(word) or (posix and not word[:1].isupper()):
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
        raw = strip_trailing(self.text[start:end]) if end != start + len(core) else core
        self.consumed = max(self.consumed, end)
        value = self._normalised(raw, IocType.FILE_PATH)
        if value is not None:
            self._add(start, start + len(raw), IocType.FILE_PATH, value, raw)

    # -- everything else ------------------------------------------------------------------

    def token(self, start: int, token: str) -> None:
        lead, core = strip(token)
        if not core or _TRIGGER.search(core) is None:
            return
        start += lead
        if not core.isascii():
            glue = _CJK_GLUE.search(core)
            if glue is not None:
                self._unglue(start, core)
                return
        # Every written scheme separator holds a "/" (or is "__"); most tokens have neither.
        url = URL_START.search(core) if "/" in core or "__" in core else None
        if url is not None:
            if url.start():
                self._parts(start, core[: url.start()])
            if (url.group("other") or "").lower() == "file" and url.group("osep").endswith("///"):
                # "file:///etc/passwd", "file:///C:/x.exe": no host, the indicator is the path.
                path = "/" + core[url.end() :]
                path = path[1:] if path[2:4] == ":/" else path
                self._emit(start + url.start(), core[url.start() :], IocType.FILE_PATH, strip_trailing(path))
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

    def long_token(self, start: int, token: str) -> None:
        """A token over MAX_TOKEN_CHARS: only its pieces between separators that fit are read ("a,b,..." feeds)."""
        self.consumed = max(self.consumed, start + len(token))
        begin = 0
        for separator in _PIECE_END.finditer(token):
            self._piece(start, token, begin, separator.start())
            begin = separator.end()
        self._piece(start, token, begin, len(token))

    def _piece(self, start: int, token: str, begin: int, end: int) -> None:
        if 0 < end - begin <= MAX_TOKEN_CHARS:
            piece = token[begin:end]
            if _TRIGGER.search(piece) is not None:
                self.token(start + begin, piece)

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
            lead, part = strip(piece)
            if part:
                self._part(start + offset + lead, part)
            if separator is None or len(piece) == len(text) - offset:
                return
            offset = separator.end()

    def _part(self, start: int, part: str) -> None:
        prefix = _FIELD_PREFIX.match(part)
        if prefix is not None and not _IPV6ISH.fullmatch(part) and not part[: prefix.end() - 1].isdigit():
            lead, part = strip(part[prefix.end() :])
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
        if len(self.found) == before and "%" in fanged and PERCENT_SEPARATOR.search(fanged) is None:
            self._escaped_pieces(start, part, fanged)  # an encoded URL is read whole by encoded_urls
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
            bracketed = BRACKETED_IPV6.match(fanged)
            if bracketed is not None and _PORT_PATH.match(fanged + "/", bracketed.end()) and "/" in fanged[bracketed.end() :]:
                self._emit(start, part, IocType.URL, "http://" + fanged)  # "[2001:db8::1]:80/path"
                return
            if _IPV6ISH.fullmatch(fanged):
                self._ipv6(start, part, fanged)
                return
        host, slash, _ = fanged.partition("/")
        name, colon, port = host.partition(":")
        if not _HOSTISH.fullmatch(name) or not plausible_host(name, part, fanged):
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
        bare = strip_unbalanced(local)
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

    def _escaped_pieces(self, start: int, part: str, fanged: str) -> None:
        """The pieces between percent-escaped delimiters ("%2Fevil.com"); positions are approximate when refanged."""
        exact = part == fanged
        offset = 0
        in_path = False  # the piece follows "name%2F": "path%2Fto%2Freport.name" is a path, as "path/to/report.name" is
        for escape in _ESCAPED_DELIMITER.finditer(fanged):
            if not in_path:
                self._escaped_piece(start, fanged, offset, escape.start(), exact=exact, part=part)
            in_path = _ESCAPED_PATH_SEPARATOR.fullmatch(escape.group()) is not None and (
                in_path or _PATH_PIECE_END.search(fanged, offset, escape.start()) is not None
            )
            offset = escape.end()
        if offset and not in_path:
            self._escaped_piece(start, fanged, offset, len(fanged), exact=exact, part=part)

    def _escaped_piece(self, start: int, fanged: str, begin: int, end: int, *, exact: bool, part: str) -> None:
        lead, piece = strip(fanged[begin:end])
        if piece and _TRIGGER.search(piece) is not None:
            if exact:
                self._classify(start + begin + lead, piece, piece)
            else:
                self._classify(start, part, piece)

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
