"""MISP warninglists: flag known-benign indicator values with the lists that hold them.

A warninglist (the MISP `misp-warninglists` format) is a folder holding a
`list.json`: name, description, type, list (the entries), matching_attributes
(the MISP attribute types it applies to) and version. ThreatFlow names a list by
its folder (`rfc1918`, `public-dns-v4`): a short, stable key stored on the IoC.

How the lists reach a function:

    WARNINGLISTS_SOURCE (a directory, or gs://bucket/prefix)
      -> sync-warninglists job: validate every list, report and skip bad ones
      -> gs://<BUCKET_MODELS>/warninglists/snapshot.json (one compact blob)
      -> matcher_for(runtime): loaded once per instance, refreshed hourly

Matching follows MISP, per list type:

    cidr       the IP is inside a listed network; a CIDR indicator when wholly inside
    hostname   the value or any parent domain is listed (google.com flags mail.google.com)
    string     exact; case-insensitive for domains, hashes and e-mail addresses
    substring  a listed entry occurs in the value
    regex      a listed pattern is found in the value

A list applies to the IoC types its matching_attributes map onto (`_ATTRIBUTE_TYPES`).
A URL is also checked by its host, and an e-mail address by its domain, against the
lists that apply to domains (or IPs, for an IP host).

`WarninglistIndex` compiles all lists into one structure per IoC type, so `match`
costs a few dict lookups, one bisect or one regex search, whatever the list count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import threading
import time
import weakref
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from threatflow.platform.errors import ConfigError, DependencyError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from threatflow.platform.ports import BlobStore, Clock

log = logging.getLogger("threatflow.iocs.warninglists")

SNAPSHOT_NAME = "warninglists/snapshot.json"
SNAPSHOT_FORMAT = "threatflow.warninglists/1"
RETRY_SECONDS = 60  # after a failed load, try again this soon rather than waiting a whole refresh
MAX_PROBLEM_EXAMPLES = 5

Matcher = Callable[[str, str], list[str]]

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
_IP_TYPES = (IPV4, IPV6, CIDR)
# Compared lower-cased: a list entry `GOOGLE.COM` or an upper-case hash still matches.
_CASE_INSENSITIVE = frozenset({DOMAIN, MD5, SHA1, SHA256, EMAIL})

# MISP attribute type -> the ThreatFlow IoC types it covers. A composite type
# (`filename|md5`, `domain|ip`) covers each part we model. Types with no IoC
# counterpart here (sha224, sha512, ssdeep, ...) are ignored.
_ATTRIBUTE_TYPES: dict[str, tuple[str, ...]] = {
    "ip-src": _IP_TYPES,
    "ip-dst": _IP_TYPES,
    "ip-src|port": _IP_TYPES,
    "ip-dst|port": _IP_TYPES,
    "ip": _IP_TYPES,
    "domain|ip": (DOMAIN, *_IP_TYPES),
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
            return frozenset(t for a in self.matching_attributes for t in _ATTRIBUTE_TYPES.get(a, ()) if t in _IP_TYPES)
        # A domain|ip attribute checks its domain part against a domain list, never an IP against its names.
        return frozenset(t for a in self.matching_attributes for t in _ATTRIBUTE_TYPES.get(a, ()) if a != "domain|ip" or t not in _IP_TYPES)

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
                _compile_regex(text)
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


def _compile_regex(entry: str) -> re.Pattern[str]:
    """MISP regex entries are PCRE, usually delimited: /pattern/flags."""
    delimited = _REGEX_DELIMITED.match(entry)
    if not delimited:
        return re.compile(entry)
    flags = 0
    for letter in delimited.group("flags"):
        flags |= _REGEX_FLAGS[letter]
    return re.compile(delimited.group("body"), flags)


# -- the compiled index -----------------------------------------------------------

_Step = Callable[[str], "Sequence[str] | None"]


class _Ranges:
    """Disjoint integer ranges of one address family, each tagged with the list keys covering it.

    Built by one sweep over every list's merged ranges (a list's bit toggles at each
    range edge), so one bisect answers for all lists at once.
    """

    __slots__ = ("starts", "tags")

    def __init__(self, ranges_by_key: Mapping[str, Iterable[tuple[int, int]]]) -> None:
        keys = sorted(ranges_by_key)
        shift = len(keys).bit_length()
        low = (1 << shift) - 1
        # Edge events packed as position << shift | list index: one sort of plain ints.
        codes: list[int] = []
        for index, key in enumerate(keys):
            for first, last in _merge(ranges_by_key[key]):
                codes.append(first << shift | index)
                codes.append((last + 1) << shift | index)
        codes.sort()
        starts: list[int] = [0]
        masks: list[int] = [0]
        mask = 0
        for n, code in enumerate(codes):
            mask ^= 1 << (code & low)
            position = code >> shift
            if n + 1 < len(codes) and codes[n + 1] >> shift == position:
                continue  # more edges at this position
            if mask == masks[-1]:
                continue
            if position == starts[-1]:
                masks[-1] = mask
            else:
                starts.append(position)
                masks.append(mask)
        decoded: dict[int, tuple[str, ...]] = {}
        for m in masks:
            if m not in decoded:
                decoded[m] = tuple(key for i, key in enumerate(keys) if m >> i & 1)
        self.starts = starts
        self.tags = [decoded[m] for m in masks]

    def covering(self, first: int, last: int) -> tuple[str, ...]:
        """Keys whose ranges cover all of first..last."""
        starts = self.starts
        i = bisect_right(starts, first) - 1
        j = bisect_right(starts, last) - 1
        keys = set(self.tags[i])
        for k in range(i + 1, j + 1):
            if not keys:
                break
            keys.intersection_update(self.tags[k])
        return tuple(sorted(keys))


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def _literal_alternation(words: Iterable[str]) -> str:
    """A regex matching any of `words`, shaped as a trie so the engine never backtracks across entries."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = True

    def emit(node: dict[str, Any]) -> str:
        if "" in node and len(node) == 1:
            return ""
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(trie)


class _Plan:
    """Every check for one IoC type, flattened into a list of steps."""

    __slots__ = ("steps",)

    def __init__(self, steps: list[_Step]) -> None:
        self.steps = steps

    def run(self, value: str, hits: list[str]) -> None:
        for step in self.steps:
            found = step(value)
            if found:
                hits.extend(found)


class _Compiler:
    """Builds each IoC type's steps from the lists that apply to it."""

    def __init__(self, lists: list[Warninglist], *, accelerated: bool) -> None:
        self.lists = lists
        self.accelerated = accelerated
        self.networks = {wl.key: _networks(wl) for wl in lists if wl.type is ListType.CIDR}
        self.ranges_cache: dict[tuple[int, frozenset[str]], _Ranges] = {}
        self.substring_cache: dict[tuple[str, bool], _Step] = {}

    def applicable(self, ioc_type: str, list_type: ListType) -> list[Warninglist]:
        return [wl for wl in self.lists if wl.type is list_type and ioc_type in wl.ioc_types]

    def steps_for(self, ioc_type: str) -> list[_Step]:
        steps: list[_Step] = []
        lower = ioc_type in _CASE_INSENSITIVE
        if ioc_type in _IP_TYPES:
            steps.extend(self.cidr_steps(ioc_type))
        exact = self.keyed(self.applicable(ioc_type, ListType.STRING), lower=lower)
        if exact:
            steps.append(exact.get)
        hostname_lists = self.applicable(ioc_type, ListType.HOSTNAME)
        if ioc_type in (URL, EMAIL):
            # match() checks the host (or mail domain) as a domain too; don't walk it twice.
            hostname_lists = [wl for wl in hostname_lists if DOMAIN not in wl.ioc_types]
        hostnames = self.keyed(hostname_lists, lower=True)
        if hostnames:
            steps.append(_hostname_step(hostnames, ioc_type))
        for wl in self.applicable(ioc_type, ListType.SUBSTRING):
            steps.append(self.substring_step(wl, lower=lower))
        for wl in self.applicable(ioc_type, ListType.REGEX):
            steps.append(_regex_step([_compile_regex(e) for e in wl.entries], wl.key))
        return steps

    def substring_step(self, wl: Warninglist, *, lower: bool) -> _Step:
        cache_key = (wl.key, lower)
        if cache_key not in self.substring_cache:
            words = {e.lower() for e in wl.entries} if lower else set(wl.entries)
            self.substring_cache[cache_key] = _substring_step(words, wl.key, accelerated=self.accelerated)
        return self.substring_cache[cache_key]

    @staticmethod
    def keyed(lists: list[Warninglist], *, lower: bool) -> dict[str, tuple[str, ...]]:
        keyed: dict[str, tuple[str, ...]] = {}
        for wl in lists:
            for entry in wl.entries:
                text = entry.lower() if lower else entry
                current = keyed.get(text, ())
                if wl.key not in current:
                    keyed[text] = (*current, wl.key)
        return keyed

    def ranges(self, family: int, lists: list[Warninglist]) -> _Ranges | None:
        by_key = {wl.key: [(lo, hi) for fam, lo, hi in self.networks[wl.key] if fam == family] for wl in lists}
        by_key = {key: ranges for key, ranges in by_key.items() if ranges}
        if not by_key:
            return None
        cache_key = (family, frozenset(by_key))  # ipv4 and cidr usually share one structure
        if cache_key not in self.ranges_cache:
            self.ranges_cache[cache_key] = _Ranges(by_key)
        return self.ranges_cache[cache_key]

    def cidr_steps(self, ioc_type: str) -> list[_Step]:
        lists = self.applicable(ioc_type, ListType.CIDR)
        v4 = self.ranges(4, lists) if ioc_type in (IPV4, CIDR) else None
        v6 = self.ranges(6, lists) if ioc_type in (IPV6, CIDR) else None
        if ioc_type == IPV4 and v4:
            return [_ip_step(v4, socket.AF_INET)]
        if ioc_type == IPV6 and v6:
            return [_ip_step(v6, socket.AF_INET6)]
        if ioc_type == CIDR and (v4 or v6):
            return [_network_step(v4, v6)]
        return []


class WarninglistIndex:
    """All lists compiled for lookups; immutable once built (a refresh builds a new one)."""

    def __init__(
        self,
        lists: Iterable[Warninglist],
        *,
        problems: Sequence[ListProblem] = (),
        source: str = "",
        generated_at: datetime | None = None,
        origin: str = "",
        loaded_at: datetime | None = None,
        accelerated: bool = True,
    ) -> None:
        self.lists: dict[str, Warninglist] = {wl.key: wl for wl in sorted(lists, key=lambda wl: wl.key)}
        self.problems: tuple[ListProblem, ...] = tuple(problems)
        self.source = source  # where the lists came from (WARNINGLISTS_SOURCE at sync time)
        self.origin = origin or source  # where this instance loaded them from (the snapshot or the source)
        self.generated_at = generated_at or datetime.now(UTC)
        self.loaded_at = loaded_at or datetime.now(UTC)
        compiler = _Compiler(list(self.lists.values()), accelerated=accelerated)
        self._plans: dict[str, _Plan] = {ioc_type: _Plan(compiler.steps_for(ioc_type)) for ioc_type in IOC_TYPES}

    # -- lookups --------------------------------------------------------------------

    def match(self, ioc_type: str, value: str) -> list[str]:
        """Keys of the lists flagging this normalised value, sorted; [] for an unknown type."""
        plan = self._plans.get(ioc_type)
        if plan is None or not value:
            return []
        hits: list[str] = []
        if ioc_type == EMAIL:
            value = value.lower()
            plan.run(value, hits)
            domain = value.rpartition("@")[2]
            if domain:
                self._plans[DOMAIN].run(domain, hits)
        elif ioc_type == URL:
            plan.run(value, hits)
            host = url_host(value)
            if host:
                self._plans[_host_type(host)].run(host, hits)
        else:
            plan.run(value, hits)
        if not hits:
            return hits
        return sorted(set(hits)) if len(hits) > 1 else hits

    def describe(self) -> list[dict[str, Any]]:
        """The loaded lists, for the API: no entries, just what they are."""
        loaded_at = self.loaded_at.isoformat()
        return [
            {
                "key": wl.key,
                "name": wl.name,
                "description": wl.description,
                "type": wl.type.value,
                "entries": len(wl.entries),
                "version": wl.version,
                "matching_attributes": list(wl.matching_attributes),
                "ioc_types": sorted(wl.ioc_types),
                "loaded_at": loaded_at,
            }
            for wl in self.lists.values()
        ]

    def snapshot(self) -> bytes:
        """One compact JSON blob of every list, in key order (deterministic for equal lists)."""
        doc = {
            "format": SNAPSHOT_FORMAT,
            "source": self.source,
            "generated_at": self.generated_at.isoformat(),
            "lists": [wl.to_json() for wl in self.lists.values()],
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _hostname_step(hostnames: dict[str, tuple[str, ...]], ioc_type: str) -> _Step:
    get = hostnames.get

    def walk(host: str) -> list[str] | None:
        # The value itself, then each parent domain: a.b.example.com, b.example.com, example.com, com.
        hits: list[str] | None = None
        while True:
            found = get(host)
            if found:
                hits = [*hits, *found] if hits else list(found)
            dot = host.find(".")
            if dot < 0:
                return hits
            host = host[dot + 1 :]

    if ioc_type == DOMAIN:
        return walk
    if ioc_type == URL:
        return lambda value: walk(url_host(value))
    if ioc_type == EMAIL:
        return lambda value: walk(value.rpartition("@")[2])
    return walk


def _networks(wl: Warninglist) -> list[tuple[int, int, int]]:
    try:
        return [parse_network(e) for e in wl.entries]
    except ValueError as exc:  # only from a hand-edited snapshot: sync validated every entry
        raise ValidationError(f"warninglist {wl.key}: {exc}", field=wl.key) from None


def _substring_step(words: set[str], key: str, *, accelerated: bool) -> _Step:
    """Does any word occur in the value? Aho-Corasick (pyahocorasick) when installed, else one trie-shaped regex."""
    found = (key,)
    if accelerated:
        try:
            import ahocorasick
        except ImportError:
            pass
        else:
            automaton = ahocorasick.Automaton()
            for word in words:
                automaton.add_word(word, True)
            automaton.make_automaton()
            scan = automaton.iter
            return lambda value: found if next(scan(value), None) is not None else None
    # The trie regex nests one group per character; very long words are checked plainly instead.
    long_words = [w for w in words if len(w) > 200]
    short = [w for w in words if len(w) <= 200]
    search = re.compile(_literal_alternation(short)).search if short else None
    return lambda value: found if (search and search(value)) or any(w in value for w in long_words) else None


def _regex_step(patterns: list[re.Pattern[str]], key: str) -> _Step:
    searches = [p.search for p in patterns]
    found = (key,)
    return lambda value: found if any(search(value) for search in searches) else None


def _ip_step(ranges: _Ranges, family: int) -> _Step:
    starts, tags, pton, from_bytes = ranges.starts, ranges.tags, socket.inet_pton, int.from_bytes

    def lookup(value: str) -> tuple[str, ...] | None:
        try:
            number = from_bytes(pton(family, value), "big")
        except OSError:
            return None
        return tags[bisect_right(starts, number) - 1]

    return lookup


def _network_step(v4: _Ranges | None, v6: _Ranges | None) -> _Step:
    def lookup(value: str) -> tuple[str, ...] | None:
        try:
            family, first, last = parse_network(value)
        except ValueError:
            return None
        ranges = v4 if family == 4 else v6
        return ranges.covering(first, last) if ranges else None

    return lookup


def url_host(url: str) -> str:
    """The host of a canonical URL (scheme://[user@]host[:port]/...), without brackets or port."""
    start = url.find("://")
    start = 0 if start < 0 else start + 3
    end = len(url)
    for stop in "/?#":
        at = url.find(stop, start)
        if 0 <= at < end:
            end = at
    host = url[start:end].rpartition("@")[2]
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    return host.partition(":")[0].rstrip(".").lower()


def _host_type(host: str) -> str:
    if ":" in host:
        return IPV6
    if host[-1:].isdigit():
        try:
            socket.inet_pton(socket.AF_INET, host)
            return IPV4
        except OSError:
            pass
    return DOMAIN


# -- loading ---------------------------------------------------------------------------


def index_from_sources(
    documents: Iterable[tuple[str, bytes | Mapping[str, Any]]],
    *,
    source: str,
    origin: str = "",
    now: datetime | None = None,
    trusted: bool = False,
) -> WarninglistIndex:
    """Validate (key, list.json) pairs into an index; problems are kept on `index.problems`."""
    lists: list[Warninglist] = []
    problems: list[ListProblem] = []
    seen: set[str] = set()
    for key, raw in documents:
        if key in seen:
            problems.append(ListProblem(key, f"a second list with key {key!r}; the first one is kept", rejected=True))
            continue
        wl, found = parse_list(key, raw, trusted=trusted)
        problems.extend(found)
        if wl is not None:
            seen.add(key)
            lists.append(wl)
    for problem in problems:
        log.warning("warninglist %s: %s", problem.key, problem.error)
    return WarninglistIndex(lists, problems=problems, source=source, origin=origin or source, generated_at=now, loaded_at=now)


def load_directory(path: str | Path, *, now: datetime | None = None) -> WarninglistIndex:
    """Folders holding list.json under `path` (or under `path`/lists, the MISP repository layout)."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"WARNINGLISTS_SOURCE={str(path)!r}: no such directory")
    if not any(root.glob("*/list.json")) and (root / "lists").is_dir():
        root = root / "lists"
    files = sorted(root.glob("*/list.json"))
    return index_from_sources(((f.parent.name, f.read_bytes()) for f in files), source=str(path), now=now)


def parse_gs_url(source: str) -> tuple[str, str]:
    bucket, _, prefix = source.removeprefix("gs://").partition("/")
    if not bucket:
        raise ConfigError(f"WARNINGLISTS_SOURCE={source!r}: expected gs://bucket/prefix")
    return bucket, prefix.strip("/")


def load_bucket(source: str, *, blobs: BlobStore, now: datetime | None = None) -> WarninglistIndex:
    """Folders of list.json objects under gs://bucket/prefix."""
    bucket, prefix = parse_gs_url(source)
    names = sorted(n for n in blobs.list(bucket, prefix=f"{prefix}/" if prefix else "", limit=100_000) if n.endswith("/list.json"))
    return index_from_sources(((name.rsplit("/", 2)[-2], blobs.get(bucket, name)) for name in names), source=source, now=now)


def load_source(source: str, *, blobs: BlobStore | None = None, now: datetime | None = None) -> WarninglistIndex:
    if source.startswith("gs://"):
        if blobs is None:
            raise ConfigError(f"WARNINGLISTS_SOURCE={source!r} is a bucket, but no blob store was given")
        return load_bucket(source, blobs=blobs, now=now)
    return load_directory(source, now=now)


def load_snapshot(data: bytes, *, origin: str = "snapshot", now: datetime | None = None) -> WarninglistIndex:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"warninglist snapshot {origin} is not valid JSON: {exc}", field="snapshot") from None
    if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT or not isinstance(doc.get("lists"), list):
        raise ValidationError(f"warninglist snapshot {origin} is not in format {SNAPSHOT_FORMAT}", field="snapshot")
    try:
        generated_at = datetime.fromisoformat(doc["generated_at"])
    except (KeyError, TypeError, ValueError):
        raise ValidationError(f"warninglist snapshot {origin} has no valid generated_at", field="generated_at") from None
    pairs = [(str(item.get("key", "")), {**item, "list": item.get("entries")}) for item in doc["lists"] if isinstance(item, dict)]
    index = index_from_sources(pairs, source=str(doc.get("source", "")), origin=origin, now=now, trusted=True)
    index.generated_at = generated_at
    return index


# -- the maintenance job ------------------------------------------------------------------


def sync(*, source: str | None, blobs: BlobStore, bucket: str, clock: Clock) -> dict[str, Any]:
    """Read the source, validate every list, write the snapshot; the result names each list and each problem."""
    if not source:
        log.warning("sync-warninglists skipped: WARNINGLISTS_SOURCE is not set")
        return {"skipped": True, "reason": "WARNINGLISTS_SOURCE is not set"}
    started = time.perf_counter()
    index = load_source(source, blobs=blobs, now=clock.now())
    rejected = [p.to_json() for p in index.problems if p.rejected]
    if not index.lists:
        raise ValidationError(
            f"WARNINGLISTS_SOURCE={source!r} holds no valid warninglist ({len(rejected)} rejected); the snapshot was not replaced",
            field="WARNINGLISTS_SOURCE",
            details={"rejected": rejected},
        )
    data = index.snapshot()
    blobs.put(bucket, SNAPSHOT_NAME, data, content_type="application/json")
    dropped = {p.key: p for p in index.problems if not p.rejected}
    return {
        "snapshot": f"gs://{bucket}/{SNAPSHOT_NAME}",
        "bytes": len(data),
        "loaded": len(index.lists),
        "lists": [
            {
                "key": wl.key,
                "type": wl.type.value,
                "entries": len(wl.entries),
                "version": wl.version,
                "dropped_entries": dropped[wl.key].dropped_entries if wl.key in dropped else 0,
            }
            for wl in index.lists.values()
        ],
        "rejected": rejected,
        "dropped": [p.to_json() for p in dropped.values()],
        "seconds": round(time.perf_counter() - started, 3),
    }


# -- per-instance matcher ---------------------------------------------------------------------


@dataclass
class _Cached:
    lock: threading.Lock = field(default_factory=threading.Lock)
    index: WarninglistIndex | None = None
    digest: str = ""
    next_load: float = 0.0
    reason: str = "not loaded yet"  # why index is None, for the API
    logged: set[str] = field(default_factory=set)


_CACHE: weakref.WeakKeyDictionary[Any, _Cached] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def matcher_for(runtime: Any) -> Matcher | None:
    """`index.match` of this instance's lists, or None when warninglists are off or not loaded yet.

    Cheap (a dict lookup and a clock read): call it per request or batch, not once at
    import, so the hourly refresh reaches the caller.
    """
    index = index_for(runtime)
    return index.match if index is not None else None


def index_for(runtime: Any) -> WarninglistIndex | None:
    """This instance's index: the snapshot in the models bucket, else a local source directory."""
    settings = runtime.settings
    with _CACHE_LOCK:
        cached = _CACHE.get(runtime)
        if cached is None:
            cached = _CACHE[runtime] = _Cached()
    source = settings.warninglists_source
    if not source:
        cached.reason = "WARNINGLISTS_SOURCE is not set"
        _log_once(cached, "off", "warninglists are off: WARNINGLISTS_SOURCE is not set")
        return None
    if time.monotonic() < cached.next_load:
        return cached.index
    # The first load blocks; a refresh lets other requests go on with the old index meanwhile.
    if not cached.lock.acquire(blocking=cached.index is None):
        return cached.index
    try:
        if time.monotonic() >= cached.next_load:
            _reload(runtime, cached, source)
    finally:
        cached.lock.release()
    return cached.index


def unavailable_reason(runtime: Any) -> str:
    """Why index_for(runtime) returned None, in words for an API answer."""
    cached = _CACHE.get(runtime)
    return cached.reason if cached else "not loaded yet"


def reset_cache(runtime: Any) -> None:
    """Forget this instance's lists (tests; or to force a reload now)."""
    with _CACHE_LOCK:
        _CACHE.pop(runtime, None)


def _reload(runtime: Any, cached: _Cached, source: str) -> None:
    settings = runtime.settings
    refresh = int(settings.warninglists_refresh_seconds)
    bucket = settings.bucket_models
    origin = f"gs://{bucket}/{SNAPSHOT_NAME}"
    now = runtime.clock.now()
    try:
        try:
            data = runtime.blobs.get(bucket, SNAPSHOT_NAME)
        except NotFoundError:
            if source.startswith("gs://"):
                cached.reason = f"no snapshot at {origin} yet; run the sync-warninglists job"
                _log_once(cached, "no-snapshot", f"warninglists not loaded: {cached.reason}")
                cached.next_load = time.monotonic() + min(refresh, 300)
                return
            cached.index = load_directory(source, now=now)
            cached.next_load = time.monotonic() + refresh
            log.info("warninglists compiled from %s (no snapshot at %s): %d lists", source, origin, len(cached.index.lists))
            return
        digest = hashlib.sha256(data).hexdigest()
        if digest != cached.digest or cached.index is None:
            cached.index = load_snapshot(data, origin=origin, now=now)
            cached.digest = digest
            log.info("warninglists loaded from %s: %d lists", origin, len(cached.index.lists))
        cached.next_load = time.monotonic() + refresh
    except (DependencyError, ConfigError, ValidationError) as exc:
        # Keep serving the lists we have; IoC upserts must not fail because the lists are unreachable.
        cached.reason = f"loading {origin} failed: {exc.message}"
        log.warning("warninglists not (re)loaded from %s: %s", origin, exc.message)
        cached.next_load = time.monotonic() + min(refresh, RETRY_SECONDS)


def _log_once(cached: _Cached, key: str, message: str) -> None:
    if key not in cached.logged:
        cached.logged.add(key)
        log.warning(message)
