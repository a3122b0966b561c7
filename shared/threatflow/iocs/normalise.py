"""Refang, detect, validate and canonicalise indicator values.

`normalise(value, type=None)` returns exactly one canonical value per indicator,
so the store's UNIQUE (type, value) means "no duplicates". It is idempotent:
normalising a canonical value returns it unchanged, and a defanged value gives
the same result as the fanged one. Pure Python, no I/O; the Public Suffix List
ships inside the `publicsuffixlist` package and is loaded once, on first use.

Choices, per type:

- refang first with the one defang table (`threatflow.iocs.defang.refang_value`, the
  same rules the extractor reads: "h__p://evil[.]com", "evil(punto)com", "10[[.]]1"),
  except for file paths, where brackets and backslashes are legitimate characters;
- domain: lower-cased, IDNA 2008 with UTS 46 mapping, stored as the A-label
  (punycode) form, one trailing dot stripped; labels may hold "_" (seen in
  malicious subdomains) but not leading/trailing "-"; the top-level domain must
  be in the ICANN section of the Public Suffix List (".onion" is) or one of the
  alternative roots malware uses (`ALTERNATIVE_ROOTS`: .bit, .bazar, ...), and the
  whole name must not itself be a public suffix ("co.uk" is rejected, while a
  private-section suffix such as "github.io" is a valid indicator);
- ipv4: strict dotted quad; an octet above 255 or with a leading zero (octal in
  some parsers, decimal in others) is rejected, as are the integer and hex forms;
- ipv6: RFC 5952 compressed lower case, zone ids rejected. An IPv4-mapped
  address (::ffff:a.b.c.d) becomes that ipv4 when no type is given, because it
  is the same host on the wire; asked for as ipv6 it stays ipv6, written
  ::ffff:a.b.c.d;
- cidr: host bits are cleared (10.0.0.1/8 -> 10.0.0.0/8) rather than rejected,
  since feeds routinely write a member address with the prefix;
- url: scheme and host lower-cased, host validated and IDNA-encoded like a
  domain (or an IP, IPv6 in brackets), default port dropped (http 80, https 443,
  ftp 21, ws 80, wss 443), empty path becomes "/", an empty query is dropped,
  the fragment is dropped (it never reaches the server). Percent-encoding per
  RFC 3986: escapes of unreserved characters are decoded, other escapes are
  upper-cased, characters that may not appear raw (space, non-ASCII, quotes,
  braces, backslash...) are encoded as UTF-8; "%2F" stays encoded and dot
  segments ("/../") are kept, because a server may treat them differently and
  traversal is part of what an attacker sent. Userinfo is kept (it is how
  "https://bank.com@evil.com/" phishing works). A value without a scheme but with
  a path or a port ("evil.com/gate.php", "1.2.3.4:8080") is taken as http;
- md5/sha1/sha256: lower-case hex of exactly 32/40/64 characters;
- email: dot-atom local part kept as written (RFC 5321 leaves its case to the
  receiving server; RFC 6531 lets it hold non-ASCII letters, marks and
  digits), domain lower-cased and validated like a domain, a leading
  "mailto:" dropped; quoted local parts and address literals are rejected;
- file_path: absolute paths only. Windows (C:\\..., UNC \\\\server\\share,
  %VAR%\\..., \\\\?\\ and \\\\.\\ prefixes): "/" becomes "\\", repeated separators
  collapse, a trailing separator is dropped, the drive letter and %VAR% name are
  upper-cased (Windows treats both case-insensitively) and everything else keeps
  its case, since names are case-preserving and analysts search for what they
  saw. POSIX (/..., ~/...): repeated "/" collapse, a trailing "/" is dropped,
  case kept (POSIX names are case-sensitive). Neither resolves "..".

A value that does not fit raises ValidationError(field="value") with the reason;
an unknown type name raises ValidationError(field="type").
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from functools import lru_cache
from typing import TYPE_CHECKING

from threatflow.iocs.defang import refang, refang_value
from threatflow.iocs.types import Indicator, IocType
from threatflow.platform import urls
from threatflow.platform.errors import ValidationError

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

__all__ = ["MAX_VALUE_LENGTH", "detect", "normalise", "refang"]

MAX_VALUE_LENGTH = 8192

# -- shared patterns --------------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-fA-F]+")
_HASH_BY_LENGTH = {32: IocType.MD5, 40: IocType.SHA1, 64: IocType.SHA256}
_HASH_LENGTH = {IocType.MD5: 32, IocType.SHA1: 40, IocType.SHA256: 64}
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_IPV4_LOOSE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_IPV6_CHARS = re.compile(r"\[?[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%[\w.-]+)?\]?")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_TLD = re.compile(r"[a-z]{2,63}|xn--[a-z0-9-]{1,59}")
# Top-level domains of alternative roots (Namecoin's .bit; EmerDNS's .bazar, .coin, .emc, .lib): outside
# ICANN's root, so not in the Public Suffix List, but malware resolves them for its C2 (BazarLoader's .bazar)
# and feeds list them. Each is a suffix of its own: "evil.bit" is a name someone registered, "bit" is not.
ALTERNATIVE_ROOTS = frozenset({"bit", "bazar", "coin", "emc", "lib"})
_URL = urls.URL
_SCHEMELESS = re.compile(r"[^/?#:@\s]+(?::[0-9]*)?(?:[/?#].*)?", re.DOTALL)
_PORT = re.compile(r"[0-9]{1,5}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DEFAULT_PORTS = {"http": "80", "https": "443", "ftp": "21", "ws": "80", "wss": "443"}
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_WINDOWS_ENV = re.compile(r"%([A-Za-z_][A-Za-z0-9_()]*)%(?=[\\/]|$)")
_WINDOWS_BAD = re.compile(r'[<>"|?*\x00-\x1f]')
_BACKSLASHES = re.compile(r"\\{2,}")
_SLASHES = re.compile(r"/{2,}")

# RFC 3986: what may appear raw in a path (and, with "?", a query); "%" is handled apart.
_PATH_NEEDS_WORK = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/]")
_QUERY_NEEDS_WORK = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?]")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PATH_RAW = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]|%(?![0-9A-F]{2})")
_QUERY_RAW = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]|%(?![0-9A-F]{2})")


def _fail(expected: IocType | str, value: str, reason: str) -> ValidationError:
    shown = value if len(value) <= 120 else value[:117] + "..."
    return ValidationError(f"expected {expected}: {shown!r} {reason}", field="value")


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(accept_unknown=False, only_icann=True)


# -- per type ---------------------------------------------------------------------------------


def _ipv4(value: str, expected: IocType = IocType.IPV4) -> str:
    if _IPV4.fullmatch(value):
        return value
    if _IPV4_LOOSE.fullmatch(value):
        octets = value.split(".")
        if any(int(o) > 255 for o in octets):
            raise _fail(expected, value, "has an octet above 255")
        raise _fail(expected, value, "has an octet with a leading zero (octal or decimal is ambiguous)")
    raise _fail(expected, value, "is not a dotted-quad IPv4 address")


def _ipv6(value: str, *, mapped_to_ipv4: bool, expected: IocType = IocType.IPV6) -> tuple[IocType, str]:
    text = value[1:-1] if value[:1] == "[" and value[-1:] == "]" else value
    if "%" in text:
        raise _fail(expected, value, "has a zone id, which is local to one host")
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        raise _fail(expected, value, "is not a valid IPv6 address") from None
    mapped = address.ipv4_mapped
    if mapped is not None:
        if mapped_to_ipv4:
            return IocType.IPV4, str(mapped)
        return IocType.IPV6, f"::ffff:{mapped}"
    return IocType.IPV6, address.compressed


def host_keys(address: str) -> list[tuple[str, str]]:
    """The (type, value) keys an IoC of one host may be stored under, its own first. An IPv4 address is also
    `::ffff:a.b.c.d` typed ipv6, which stays an ipv6 IoC, while flows store that spelling as the IPv4 host: the host
    view looked up the IPv4 key alone and showed no IoC for it. ValueError for a non-address."""
    ip = ipaddress.ip_address(address.strip())
    if isinstance(ip, ipaddress.IPv6Address):
        return [(IocType.IPV6.value, _ipv6(str(ip), mapped_to_ipv4=False)[1])]
    return [(IocType.IPV4.value, str(ip)), (IocType.IPV6.value, _ipv6(f"::ffff:{ip}", mapped_to_ipv4=False)[1])]


def _cidr(value: str) -> str:
    address, slash, prefix = value.partition("/")
    if not slash or not prefix.isascii() or not prefix.isdigit() or len(prefix) > 3:
        raise _fail(IocType.CIDR, value, "is not address/prefix-length")
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    try:
        if ":" in address:
            network = ipaddress.IPv6Network(f"{_ipv6(address, mapped_to_ipv4=False, expected=IocType.CIDR)[1]}/{int(prefix)}", strict=False)
        else:
            network = ipaddress.IPv4Network(f"{_ipv4(address, IocType.CIDR)}/{int(prefix)}", strict=False)
    except ValueError as exc:
        raise _fail(IocType.CIDR, value, f"is not a valid network ({exc})") from None
    return str(network)


def _idna(host: str, original: str, expected: IocType) -> str:
    import idna

    try:
        return idna.encode(host, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise _fail(expected, original, f"is not a valid internationalised domain name ({exc})") from None


@lru_cache(maxsize=131072)
def _domain_cached(value: str, expected: IocType) -> str:
    host = value[:-1] if value.endswith(".") else value
    host = host.lower()
    if not host.isascii():
        host = _idna(host, value, expected)
    elif "xn--" in host:
        # Decode and re-encode: rejects broken punycode, fixes non-canonical A-labels.
        import idna

        try:
            host = _idna(idna.decode(host), value, expected)
        except (idna.IDNAError, UnicodeError) as exc:
            raise _fail(expected, value, f"has an invalid punycode label ({exc})") from None
    if len(host) > 253:
        raise _fail(expected, value, "is longer than 253 characters")
    labels = host.split(".")
    if len(labels) < 2:
        raise _fail(expected, value, "has no top-level domain")
    for label in labels:
        if not _LABEL.fullmatch(label):
            reason = "has an empty label" if not label else f"has an invalid label {label!r}"
            raise _fail(expected, value, reason)
    tld = labels[-1]
    if not _TLD.fullmatch(tld):
        raise _fail(expected, value, "looks like an IP address or has a malformed top-level domain")
    suffix = _psl().publicsuffix(host) if tld not in ALTERNATIVE_ROOTS else tld
    if suffix is None:
        raise _fail(expected, value, f"has no known top-level domain (.{tld} is not in the Public Suffix List)")
    if suffix == host:
        raise _fail(expected, value, "is a public suffix, not a domain someone registered")
    return host


def _domain(value: str, expected: IocType = IocType.DOMAIN) -> str:
    if not value or len(value) > 300:
        raise _fail(expected, value, "is not a domain name of a valid length")
    return _domain_cached(value, expected)


def _host(value: str, expected: IocType) -> tuple[IocType, str]:
    """The host of a URL: a domain, a strict IPv4 or a bracketed IPv6 (returned without brackets)."""
    if value[:1] == "[":
        if value[-1:] != "]":
            raise _fail(expected, value, "has an unclosed IPv6 bracket")
        return _ipv6(value, mapped_to_ipv4=False, expected=expected)
    last = value.rstrip(".").rpartition(".")[2]
    if last.isdigit():
        return IocType.IPV4, _ipv4(value, expected)
    return IocType.DOMAIN, _domain(value, expected)


def _unescape_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _encode(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group(0).encode("utf-8", "surrogatepass"))


def _percent(text: str, needs_work: re.Pattern[str], raw: re.Pattern[str]) -> str:
    if needs_work.search(text) is None:
        return text
    if "%" in text:
        text = _ESCAPE.sub(_unescape_unreserved, text)
    return raw.sub(_encode, text)


def _url(value: str) -> str:
    if _CONTROL.search(value):
        raise _fail(IocType.URL, value, "contains control characters")
    match = _URL.fullmatch(value)
    if match is None:
        if _SCHEMELESS.fullmatch(value) is None:
            raise _fail(IocType.URL, value, "is not a URL (scheme://host/path)")
        match = _URL.fullmatch("http://" + value)
        if match is None:
            raise _fail(IocType.URL, value, "is not a URL (scheme://host/path)")
    scheme, authority, path, query = match.group(1, 2, 3, 4)
    scheme = scheme.lower()
    userinfo, at, hostport = authority.rpartition("@")
    if hostport[:1] == "[":
        host, _, rest = hostport.partition("]")
        host += "]"
        if rest and rest[:1] != ":":
            raise _fail(IocType.URL, value, "has text after the IPv6 host")
        port = rest[1:]
    else:
        host, _, port = hostport.partition(":")
    if not host:
        raise _fail(IocType.URL, value, "has no host")
    if port:
        if not _PORT.fullmatch(port) or int(port) > 65535:
            raise _fail(IocType.URL, value, f"has an invalid port {port!r}")
        port = str(int(port))
        if _DEFAULT_PORTS.get(scheme) == port:
            port = ""
    kind, canonical_host = _host(host, IocType.URL)
    netloc = f"[{canonical_host}]" if kind is IocType.IPV6 else canonical_host
    if port:
        netloc = f"{netloc}:{port}"
    if at and userinfo:
        netloc = f"{_percent(userinfo, _PATH_NEEDS_WORK, _PATH_RAW)}@{netloc}"
    path = _percent(path, _PATH_NEEDS_WORK, _PATH_RAW) if path else "/"
    if query:
        return f"{scheme}://{netloc}{path}?{_percent(query, _QUERY_NEEDS_WORK, _QUERY_RAW)}"
    return f"{scheme}://{netloc}{path}"


def _email_local_ok(local: str) -> bool:
    if local.isascii():
        return _EMAIL_LOCAL.fullmatch(local) is not None
    # RFC 6531 (SMTPUTF8): a non-ASCII letter, mark or digit stands where an ASCII letter may; punctuation may not.
    view = "".join("a" if not char.isascii() and unicodedata.category(char)[0] in "LMN" else char for char in local)
    return _EMAIL_LOCAL.fullmatch(view) is not None


def _email(value: str) -> str:
    text = value[7:] if value[:7].lower() == "mailto:" else value
    local, at, domain = text.rpartition("@")
    if not at or not local:
        raise _fail(IocType.EMAIL, value, "is not an email address (local@domain)")
    if len(local) > 64 or not _email_local_ok(local):
        raise _fail(IocType.EMAIL, value, f"has an invalid mailbox name {local!r}")
    host = _domain(domain, IocType.EMAIL)
    if len(local) + 1 + len(host) > 254:
        raise _fail(IocType.EMAIL, value, "is longer than 254 characters")
    return f"{local}@{host}"


def _hash(value: str, expected: IocType | None) -> tuple[IocType, str]:
    shown = expected or "a hash"
    if not _HEX.fullmatch(value):
        raise _fail(shown, value, "is not hexadecimal")
    if expected is not None:
        if len(value) != _HASH_LENGTH[expected]:
            raise _fail(expected, value, f"has {len(value)} hex characters, not {_HASH_LENGTH[expected]}")
        return expected, value.lower()
    detected = _HASH_BY_LENGTH.get(len(value))
    if detected is None:
        raise _fail(shown, value, f"has {len(value)} hex characters; md5 has 32, sha1 40, sha256 64")
    return detected, value.lower()


def _windows_split(value: str) -> tuple[str, str] | None:
    """(canonical prefix, rest) of a Windows path, or None when it does not start like one."""
    device, rest = "", value
    if value[:4] in ("\\\\?\\", "\\\\.\\"):
        device, rest = value[:4], value[4:]
    if rest[1:2] == ":" and rest[2:3] in ("\\", "/") and rest[:1].isascii() and rest[:1].isalpha():
        return f"{device}{rest[0].upper()}:", rest[2:]
    env = _WINDOWS_ENV.match(rest)
    if env is not None:
        return f"{device}%{env.group(1).upper()}%", rest[env.end() :]
    if not device and rest[:2] == "\\\\" and rest[2:3] not in ("", "\\", "/"):
        return "\\\\", rest[2:]
    if device and rest:
        return device, rest
    return None


def _windows_path(value: str, head: str, body: str) -> str:
    body = body.replace("/", "\\")
    if _WINDOWS_BAD.search(body):
        raise _fail(IocType.FILE_PATH, value, 'contains a character Windows does not allow in names (<>"|?* or control)')
    body = _BACKSLASHES.sub(r"\\", body)
    if len(body) > 1 and body.endswith("\\"):
        body = body[:-1]
    if head == "\\\\" and not body.strip("\\"):
        raise _fail(IocType.FILE_PATH, value, "has no server name")
    return head + body


def _posix_path(value: str) -> str:
    if "\x00" in value or "\n" in value or "\r" in value:
        raise _fail(IocType.FILE_PATH, value, "contains a NUL or line break")
    text = _SLASHES.sub("/", value) if "//" in value else value
    if len(text) > 1 and text.endswith("/"):
        text = text[:-1]
    if text in ("/", "~"):
        raise _fail(IocType.FILE_PATH, value, "is only a root directory")
    return text


def _file_path(value: str) -> str:
    if value[:1] == "/" or value[:2] == "~/":
        return _posix_path(value)
    windows = _windows_split(value)
    if windows is not None:
        return _windows_path(value, *windows)
    raise _fail(IocType.FILE_PATH, value, "is not an absolute Windows or POSIX path")


# -- detection ----------------------------------------------------------------------------


def _looks_like_path(value: str) -> bool:
    first = value[:1]
    if first == "/" or value[:2] == "~/":
        return True
    if first == "\\" or value[1:2] == ":" or (first == "%" and ("\\" in value or "/" in value)):
        return _windows_split(value) is not None
    return False


def detect(value: str) -> IocType:
    """The type of an already refanged, stripped value; raises ValidationError when it cannot tell."""
    if "://" in value:
        return IocType.URL
    if _looks_like_path(value):
        return IocType.FILE_PATH
    if len(value) in _HASH_BY_LENGTH and _HEX.fullmatch(value):
        return _HASH_BY_LENGTH[len(value)]
    if _IPV4_LOOSE.fullmatch(value):
        return IocType.IPV4
    if "/" in value:
        head = value.partition("/")[0]
        if ":" in head or _IPV4_LOOSE.fullmatch(head):
            rest = value.partition("/")[2]
            return IocType.CIDR if rest.isdigit() or ":" in head else IocType.URL
        return IocType.URL
    if "@" in value:
        return IocType.EMAIL
    if ":" in value:
        return IocType.IPV6 if value.count(":") >= 2 and _IPV6_CHARS.fullmatch(value) else IocType.URL
    if "." in value:
        return IocType.DOMAIN
    if _HEX.fullmatch(value):
        raise _fail("a hash", value, f"has {len(value)} hex characters; md5 has 32, sha1 40, sha256 64")
    raise _fail("an indicator", value, "is not a recognisable indicator; give its type")


def _coerce_type(type: IocType | str | None) -> IocType | None:
    if type is None or isinstance(type, IocType):
        return type
    try:
        return IocType(str(type).strip().lower())
    except ValueError:
        known = ", ".join(t.value for t in IocType)
        raise ValidationError(f"unknown type {type!r}; expected one of {known}", field="type") from None


def normalise(value: str, type: IocType | str | None = None) -> Indicator:
    """The canonical Indicator for `value`, of the given type or, when None, the detected one."""
    wanted = _coerce_type(type)
    if not isinstance(value, str):
        raise ValidationError("value must be a string", field="value")
    text = value.strip()
    if not text:
        raise ValidationError("value is empty", field="value")
    if len(text) > MAX_VALUE_LENGTH:
        raise ValidationError(f"value is longer than {MAX_VALUE_LENGTH} characters", field="value")
    if wanted is IocType.FILE_PATH or (wanted is None and _looks_like_path(text)):
        return Indicator(IocType.FILE_PATH, _file_path(text))
    text = refang_value(text)
    if wanted is None:
        wanted = detect(text)
        if wanted is IocType.FILE_PATH:
            return Indicator(IocType.FILE_PATH, _file_path(text))
        forced = False
    else:
        forced = True
    if wanted is IocType.IPV4:
        if ":" in text:  # ::ffff:a.b.c.d asked for as ipv4
            kind, canonical = _ipv6(text, mapped_to_ipv4=True, expected=IocType.IPV4)
            if kind is not IocType.IPV4:
                raise _fail(IocType.IPV4, text, "is an IPv6 address")
            return Indicator(IocType.IPV4, canonical)
        return Indicator(IocType.IPV4, _ipv4(text))
    if wanted is IocType.DOMAIN:
        if _IPV4_LOOSE.fullmatch(text):
            raise _fail(IocType.DOMAIN, text, "is an IPv4 address")
        if "/" in text or "@" in text or ":" in text:
            raise _fail(IocType.DOMAIN, text, "is not a bare host name (it has '/', '@' or ':')")
        return Indicator(IocType.DOMAIN, _domain(text))
    if wanted is IocType.URL:
        return Indicator(IocType.URL, _url(text))
    if wanted is IocType.IPV6:
        kind, canonical = _ipv6(text, mapped_to_ipv4=not forced)
        return Indicator(kind, canonical)
    if wanted is IocType.CIDR:
        return Indicator(IocType.CIDR, _cidr(text))
    if wanted is IocType.EMAIL:
        return Indicator(IocType.EMAIL, _email(text))
    kind, canonical = _hash(text, wanted if forced else None)
    return Indicator(kind, canonical)
