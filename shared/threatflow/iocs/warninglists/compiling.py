"""Compiling lists into per-IoC-type lookup steps: merged IP ranges, keyed strings, hostname walks, tries."""

from __future__ import annotations

import re
import socket
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from threatflow.iocs.warninglists.lists import (
    CASE_INSENSITIVE,
    CIDR,
    DOMAIN,
    EMAIL,
    IOC_TYPES,
    IP_TYPES,
    IPV4,
    IPV6,
    URL,
    ListType,
    Warninglist,
    compile_regex,
    parse_network,
)
from threatflow.platform.errors import ValidationError

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


class Plan:
    """Every check for one IoC type, flattened into a list of steps."""

    __slots__ = ("steps",)

    def __init__(self, steps: list[_Step]) -> None:
        self.steps = steps

    def run(self, value: str, hits: list[str]) -> None:
        for step in self.steps:
            found = step(value)
            if found:
                hits.extend(found)


def compile_plans(lists: list[Warninglist], *, accelerated: bool) -> dict[str, Plan]:
    """One lookup plan per IoC type for these lists."""
    compiler = _Compiler(lists, accelerated=accelerated)
    return {ioc_type: Plan(compiler.steps_for(ioc_type)) for ioc_type in IOC_TYPES}


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
        lower = ioc_type in CASE_INSENSITIVE
        if ioc_type in IP_TYPES:
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
            steps.append(_regex_step([compile_regex(e) for e in wl.entries], wl.key))
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


def host_type(host: str) -> str:
    if ":" in host:
        return IPV6
    if host[-1:].isdigit():
        try:
            socket.inet_pton(socket.AF_INET, host)
            return IPV4
        except OSError:
            pass
    return DOMAIN
