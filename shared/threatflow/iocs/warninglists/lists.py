"""Warninglists as data: the list model, validating a list.json, and IP network parsing."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from threatflow.platform.errors import ValidationError

MAX_PROBLEM_EXAMPLES = 5

# IoC type names (threatflow.iocs.types.IocType values), kept as plain strings so
# `match` compares str to str and this module imports nothing heavy.
IPV4, IPV6, CIDR, DOMAIN, URL, MD5, SHA1, SHA256, FILE_PATH, EMAIL = (
    "ipv4",
    "ipv6",
    "cidr",
    "domain",
    "url",
    "md5",
    "sha1",
    "sha256",
    "file_path",
    "email",
)
IOC_TYPES = (IPV4, IPV6, CIDR, DOMAIN, URL, MD5, SHA1, SHA256, FILE_PATH, EMAIL)
IP_TYPES = (IPV4, IPV6, CIDR)
# Compared lower-cased: a list entry `GOOGLE.COM` or an upper-case hash still matches.
CASE_INSENSITIVE = frozenset({DOMAIN, MD5, SHA1, SHA256, EMAIL})

# MISP attribute type -> the ThreatFlow IoC types it covers. A composite type
# (`filename|md5`, `domain|ip`) covers each part we model. Types with no IoC
# counterpart here (sha224, sha512, ssdeep, ...) are ignored.
_ATTRIBUTE_TYPES: dict[str, tuple[str, ...]] = {
    "ip-src": IP_TYPES,
    "ip-dst": IP_TYPES,
    "ip-src|port": IP_TYPES,
    "ip-dst|port": IP_TYPES,
    "ip": IP_TYPES,
    "domain|ip": (DOMAIN, *IP_TYPES),
    "domain": (DOMAIN,),
    "hostname": (DOMAIN,),
    "hostname|port": (DOMAIN,),
    "url": (URL,),
    "uri": (URL,),
    "link": (URL,),
    "md5": (MD5,),
    "filename|md5": (MD5,),
    "sha1": (SHA1,),
    "filename|sha1": (SHA1,),
    "sha256": (SHA256,),
    "filename|sha256": (SHA256,),
    "email": (EMAIL,),
    "email-src": (EMAIL,),
    "email-dst": (EMAIL,),
    "target-email": (EMAIL,),
    "whois-registrant-email": (EMAIL,),
    "dns-soa-email": (EMAIL,),
    "filename": (FILE_PATH,),
}
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_REGEX_DELIMITED = re.compile(r"^/(?P<body>.*)/(?P<flags>[imsxu]*)$", re.DOTALL)
_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "u": 0}


class ListType(StrEnum):
    CIDR = "cidr"
    HOSTNAME = "hostname"
    STRING = "string"
    SUBSTRING = "substring"
    REGEX = "regex"


@dataclass(frozen=True)
class Warninglist:
    """One validated list; `entries` are cleaned (trimmed, de-duplicated, valid)."""

    key: str
    name: str
    description: str
    type: ListType
    version: int | str
    matching_attributes: tuple[str, ...]
    entries: tuple[str, ...]

    @property
    def ioc_types(self) -> frozenset[str]:
        if self.type is ListType.CIDR:  # a network only ever contains IPs
            return frozenset(t for a in self.matching_attributes for t in _ATTRIBUTE_TYPES.get(a, ()) if t in IP_TYPES)
        # A domain|ip attribute checks its domain part against a domain list, never an IP against its names.
        return frozenset(t for a in self.matching_attributes for t in _ATTRIBUTE_TYPES.get(a, ()) if a != "domain|ip" or t not in IP_TYPES)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "description": self.description,
            "type": self.type.value,
            "version": self.version,
            "matching_attributes": list(self.matching_attributes),
            "entries": list(self.entries),
        }


@dataclass(frozen=True)
class ListProblem:
    """A list rejected as a whole, or entries of a kept list that were dropped."""

    key: str
    error: str
    rejected: bool
    dropped_entries: int = 0
    examples: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "error": self.error}
        if not self.rejected:
            out["dropped_entries"] = self.dropped_entries
            out["examples"] = list(self.examples)
        return out


# -- validation -----------------------------------------------------------------


def parse_list(key: str, raw: bytes | Mapping[str, Any], *, trusted: bool = False) -> tuple[Warninglist | None, list[ListProblem]]:
    """Validate one list.json. A structural fault rejects the list; bad entries are dropped and reported.

    `trusted` (a snapshot that sync wrote) checks the structure but keeps the entries as they are.
    """
    if not _KEY.match(key):
        return None, [ListProblem(key, f"folder name {key!r} is not a usable list key (letters, digits, . _ -)", rejected=True)]
    if isinstance(raw, bytes):
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return None, [ListProblem(key, f"list.json is not valid JSON: {exc}", rejected=True)]
    else:
        doc = raw
    try:
        return _validate(key, doc, trusted=trusted)
    except ValidationError as exc:
        return None, [ListProblem(key, exc.message, rejected=True)]


def _validate(key: str, doc: Any, *, trusted: bool) -> tuple[Warninglist | None, list[ListProblem]]:
    if not isinstance(doc, Mapping):
        raise ValidationError("list.json must be a JSON object", field="list.json")
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("field 'name' must be a non-empty string", field="name")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise ValidationError("field 'description' must be a string", field="description")
    try:
        list_type = ListType(str(doc.get("type")))
    except ValueError:
        allowed = ", ".join(t.value for t in ListType)
        raise ValidationError(f"field 'type' is {doc.get('type')!r}; expected one of {allowed}", field="type") from None
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise ValidationError("field 'version' must be an integer or a string", field="version")
    attributes = doc.get("matching_attributes")
    if not isinstance(attributes, list) or not attributes or not all(isinstance(a, str) for a in attributes):
        raise ValidationError("field 'matching_attributes' must be a non-empty array of strings", field="matching_attributes")
    entries = doc.get("list")
    if not isinstance(entries, list):
        raise ValidationError("field 'list' must be an array of strings", field="list")
    if trusted:
        cleaned, bad = [e for e in entries if isinstance(e, str) and e], [e for e in entries if not isinstance(e, str) or not e]
    else:
        cleaned, bad = _clean_entries(list_type, entries)
    if not cleaned:
        reason = f"; e.g. {bad[0]!r}" if bad else ""
        raise ValidationError(f"field 'list' has no valid {list_type.value} entries{reason}", field="list")
    problems = []
    if bad:
        examples = tuple(str(b)[:200] for b in bad[:MAX_PROBLEM_EXAMPLES])
        problems.append(
            ListProblem(
                key, f"dropped {len(bad)} invalid {list_type.value} entries", rejected=False, dropped_entries=len(bad), examples=examples
            )
        )
    wl = Warninglist(
        key=key,
        name=name.strip(),
        description=description.strip(),
        type=list_type,
        version=version,
        matching_attributes=tuple(a.strip() for a in attributes),
        entries=tuple(cleaned),
    )
    return wl, problems


def _clean_entries(list_type: ListType, entries: Sequence[Any]) -> tuple[list[str], list[Any]]:
    cleaned: dict[str, None] = {}  # ordered de-duplication
    bad: list[Any] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            bad.append(entry)
            continue
        text = entry.strip()
        if list_type is ListType.CIDR:
            try:
                family, lo, hi = parse_network(text)
            except ValueError:
                bad.append(entry)
                continue
            text = _format_network(family, lo, hi)
        elif list_type is ListType.HOSTNAME:
            # MISP lists write "every subdomain of" as a leading dot or "*.": the parent walk covers both.
            text = text.lower().removeprefix("*.").strip(".")
            if not text:
                bad.append(entry)
                continue
        elif list_type is ListType.REGEX:
            try:
                compile_regex(text)
            except re.error:
                bad.append(entry)
                continue
        cleaned[text] = None
    return list(cleaned), bad


def parse_network(text: str) -> tuple[int, int, int]:
    """'10.0.0.0/8' or a bare IP -> (family 4|6, first, last) as integers; host bits are ignored, as MISP does."""
    address, slash, prefix_text = text.partition("/")
    if ":" in address:
        family, bits, packed = 6, 128, _pton(socket.AF_INET6, address)
    else:
        family, bits, packed = 4, 32, _pton(socket.AF_INET, address)
    if slash:
        if not prefix_text.isdigit() or not 0 <= int(prefix_text) <= bits:
            raise ValueError(f"bad prefix length in {text!r}")
        prefix = int(prefix_text)
    else:
        prefix = bits
    host = (1 << (bits - prefix)) - 1
    first = int.from_bytes(packed, "big") & ~host
    return family, first, first | host


def _pton(family: int, address: str) -> bytes:
    try:
        return socket.inet_pton(family, address)
    except OSError:
        raise ValueError(f"not an IP address: {address!r}") from None


def _format_network(family: int, first: int, last: int) -> str:
    bits = 32 if family == 4 else 128
    prefix = bits - (last - first).bit_length()
    text = socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, first.to_bytes(bits // 8, "big"))
    return text if prefix == bits else f"{text}/{prefix}"


def compile_regex(entry: str) -> re.Pattern[str]:
    """MISP regex entries are PCRE, usually delimited: /pattern/flags."""
    delimited = _REGEX_DELIMITED.match(entry)
    if not delimited:
        return re.compile(entry)
    flags = 0
    for letter in delimited.group("flags"):
        flags |= _REGEX_FLAGS[letter]
    return re.compile(delimited.group("body"), flags)


# -- the compiled index -----------------------------------------------------------
