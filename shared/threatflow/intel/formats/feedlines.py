"""Feeds given as text: which part of each line is an indicator.

A text import is a report (prose: every indicator the extractor finds is one) or a feed (one record a line:
Spamhaus DROP, FireHOL netsets, abuse.ch's text lists, Emerging Threats' and blocklist.de's address lists). A
document is read as a feed when its lines are records of the shapes below, with at most one prose line per
PROSE_PER_RECORDS records; otherwise it is a report and read whole, as before.

In a feed, comment lines ('#', ';', '!', '//') and a record's trailing comment are not read: they hold the feed's
own URLs ("; https://www.spamhaus.org/drop/drop.txt"), its publisher ("abuse.ch", "urlhaus [at] abuse.ch") and
notes, which became IoCs; and what a record holds besides its entry is counted in `skipped`, not stored.

The record shapes, and what their entry is:

    value                       one token a line (addresses, networks, URLs, names, hashes; "*.name" and
                                ".name" stand for the name; "$<40 hex>" is a Tor relay, no entry)
    value ; note                Spamhaus DROP; "value # note"
    {"cidr": ...}               JSON Lines (Spamhaus drop_v4.json); a "type": "metadata" line is no entry
    <sink> name...              hosts files: 0.0.0.0, 127.0.0.1, 0, ::, ::1 and the preamble's addresses
    <address> name...           a name pinned to an address: in a hosts file the name, else both
    ExitNode / ExitAddress      Tor's exit-addresses: the address, never the relay fingerprint
    address=/name/...           dnsmasq; ||name^ Adblock (@@ exceptions, ## cosmetic and /regex/ rules skipped)
    name [ttl] [IN] CNAME .     response-policy zones (rpz-passthru is an exception; SOA, NS, $TTL skipped)
    local-zone: "name" type     unbound (transparent zones are exceptions)
    alert ip [a,b] any -> ...   IDS rules: the header's addresses, not the options (reference URLs)
    start end prefix ...        DShield's block.txt: the network
    start-end, name:start-end   address ranges (PeerGuardian .p2p): the covering networks, about one per 8 bytes
    name,description,...        comma rows: read whole, but for a row keyed by an address or a name, a URL
                                on another host (a manual page) is a detail

In a feed, addresses and networks that name no host on the internet (RFC 1918, loopback, bogons) are not entries.

Bounded work: a line is split once and looked up in tables; no expression backtracks over a line, and every value
still goes through the extractor, in one call for all records.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from threatflow.iocs.types import ExtractedIndicator, IocType

PROSE_PER_RECORDS = 10
_COMMENT_START = ("#", ";", "!", "//", "[Adblock", "[uBlock", "[AdGuard")
# A comment after a record: a marker after a blank ("1.10.16.0/20 ; SBL256894", "198.51.100.7 # note").
_TRAILING_COMMENT = re.compile(r"\s(?:#|;|//)")


@dataclass
class FeedLines:
    """What of a feed is read, in document order: its records' entries as written (each still to be extracted) and
    its prose lines whole; and what was skipped, by kind."""

    readable: list[str | ExtractedIndicator] = field(default_factory=list)  # or a range's network, already canonical
    skipped: dict[str, int] = field(default_factory=dict)
    pinned: list[int] = field(default_factory=list)  # where an address naming hosts ("<address> <name>") was read
    records: int = 0
    prose: int = 0
    range_budget: int = 0  # networks that address ranges may still give

    def skip(self, kind: str, count: int = 1) -> None:
        if count:
            self.skipped[kind] = self.skipped.get(kind, 0) + count

    def entry(self, value: str) -> None:
        self.readable.append(value)

    def network(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network, written: str) -> None:
        # Canonical as it is (normalise gives str(network) for a network): the extractor's scan and checks of each of
        # a range list's networks took two thirds of its import.
        self.readable.append(ExtractedIndicator(IocType.CIDR, str(network), written))


# A hosts file's sinks: the address a blocked name is sent to, never an indicator ("0" is Pi-hole's short form).
_SINKS = frozenset({"0.0.0.0", "0", "127.0.0.1", "::", "::1", "0:0:0:0:0:0:0:0", "0:0:0:0:0:0:0:1"})  # noqa: S104 (not a bind)
# Names a hosts file's preamble maps, not indicators ("localhost", "broadcasthost", "ip6-allnodes", "local").
_LOCAL_SUFFIXES = (".localdomain", ".local", ".localhost", ".lan", ".home.arpa")


_ADDRESS_LIKE = re.compile(r"[0-9A-Fa-f:.]+(?:%\w+)?")


def _address(token: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not _ADDRESS_LIKE.fullmatch(token):
        return None  # most first tokens are names: no exception raised and caught for each
    try:
        return ipaddress.ip_address(token.partition("%")[0])  # "fe80::1%lo0": a scope after the address
    except ValueError:
        return None


def _hosts(feed: FeedLines, tokens: list[str]) -> bool:
    """'<address> <name>...': a hosts file's line when the address is a sink or names no host on the internet
    (the preamble's 127.0.0.1, ::1, ff02::1, 255.255.255.255): its names are the entries."""
    address = _address(tokens[0])
    if address is not None and tokens[0] not in _SINKS and not _no_host(address):
        if not all(_NAME.fullmatch(name) for name in tokens[1:]):
            return False
        # "93.184.216.34 name": in a hosts file, a name pinned to an address (the names are the entries); in a list
        # of pairs, both are indicators. Which one is decided once the whole document is read.
        feed.pinned.append(len(feed.readable))
        feed.entry(tokens[0])
        for name in tokens[1:]:
            feed.entry(name)
        return True
    if tokens[0] not in _SINKS and (address is None or not _no_host(address)):
        return False
    feed.skip("sink addresses")
    for name in tokens[1:]:
        if name in _SINKS:
            feed.skip("sink addresses")
        elif "." not in name or name.lower().endswith(_LOCAL_SUFFIXES):
            feed.skip("hosts-file local names")
        else:
            feed.entry(name)
    return True


def _no_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_unspecified or address.is_loopback or address.is_link_local or address.is_multicast or address.is_reserved


_FINGERPRINT = re.compile(r"\$?[0-9A-Fa-f]{40}")


def _tor_relay(feed: FeedLines, tokens: list[str]) -> bool:
    """'ExitNode <fingerprint>' (Tor's exit-addresses): a relay's identity, 40 hex digits, is no SHA-1 of a file."""
    if len(tokens) != 2 or not _FINGERPRINT.fullmatch(tokens[1]):
        return False
    feed.skip("tor relay fingerprints")
    return True


def _tor_exit_address(feed: FeedLines, tokens: list[str]) -> bool:
    """'ExitAddress <address> <date> <time>': the address is the entry."""
    feed.entry(tokens[1])
    return True


def _metadata(feed: FeedLines, tokens: list[str]) -> bool:
    feed.skip("feed metadata lines")
    return True


_DATE = re.compile(r"\d{4}-\d\d-\d\d")


def _tor_time(feed: FeedLines, tokens: list[str]) -> bool:
    """'Published 2026-11-26 10:18:36', 'LastStatus ...' of Tor's exit-addresses (not "Published research shows")."""
    return len(tokens) == 3 and _DATE.fullmatch(tokens[1]) is not None and _metadata(feed, tokens)


def _dnsmasq(feed: FeedLines, tokens: list[str]) -> bool:
    """'address=/name/0.0.0.0', 'address=/a/b/#', 'server=/name/', 'local=/name/': the names are the entries."""
    if len(tokens) != 1:
        return False
    *names, target = tokens[0].partition("=")[2].split("/")[1:]
    for name in names:
        if name:
            feed.entry(name)
    if target:
        feed.skip("sink addresses")
    return True


def _adblock(feed: FeedLines, tokens: list[str]) -> bool:
    """'||name^', '||name^$third-party' (Adblock-style DNS lists): the name is the entry."""
    if len(tokens) != 1:
        return False
    name = _ADBLOCK_NAME_END.split(tokens[0][2:], maxsplit=1)[0]
    if name:
        feed.entry(name)
    return True


_ADBLOCK_NAME_END = re.compile(r"[\^$/|:]")


def _allowlisted(feed: FeedLines, tokens: list[str]) -> bool:
    """An exception ('@@||name^', RPZ's rpz-passthru, unbound's transparent): the feed says the name is NOT bad."""
    feed.skip("allowlist entries")
    return True


# Resource record types of a zone file (a response-policy zone) and how each is read.
_ZONE_CLASSES = frozenset({"IN", "CH", "HS"})
_ZONE_METADATA = frozenset({"SOA", "NS", "TXT", "MX"})
_ZONE_TIME = re.compile(r"[()\d]+[smhdwSMHDW]?|[()]")
_RPZ_ALLOW = frozenset({"rpz-passthru.", "rpz-passthru"})
# RPZ triggers on addresses and name servers are written as reversed addresses under these labels: not names.
_RPZ_TRIGGERS = (".rpz-ip", ".rpz-nsip", ".rpz-client-ip", ".rpz-nsdname")


def _zone(feed: FeedLines, tokens: list[str]) -> bool:
    """'<owner> [ttl] [IN] <type> <data>' of a response-policy zone: a CNAME's owner is the entry ('name CNAME .',
    '*.name CNAME .'), unless its target is rpz-passthru (an exception); an A/AAAA record's owner is a name sent to a
    walled garden; SOA and NS records, and a multi-line SOA's numbers, are the zone's own."""
    if all(_ZONE_TIME.fullmatch(token) for token in tokens):
        feed.skip("zone records")
        return True
    owner = None if tokens[0].upper() in _ZONE_CLASSES or tokens[0].isdigit() else tokens[0]
    position = 0 if owner is None else 1
    while position < len(tokens) - 1 and (tokens[position].isdigit() or tokens[position].upper() in _ZONE_CLASSES):
        position += 1
    kind = tokens[position].upper() if position < len(tokens) else ""
    if owner is not None and owner != "@" and "." not in owner:
        return False  # "Plan A works", "The NS servers": prose, not a zone's owner name
    if kind in _ZONE_METADATA:
        feed.skip("zone records")
        return True
    if kind not in ("CNAME", "A", "AAAA") or owner is None or position != len(tokens) - 2:
        return False
    name = owner.removeprefix("*.").rstrip(".")
    if tokens[position + 1].lower() in _RPZ_ALLOW:
        return _allowlisted(feed, tokens)
    if name.lower().endswith(_RPZ_TRIGGERS):
        feed.skip("rpz address triggers")
    elif name and name != "@":
        feed.entry(name)
    if kind != "CNAME":
        feed.skip("sink addresses")
    return True


_UNBOUND_ALLOW = frozenset({"transparent", "typetransparent", "always_transparent", "nodefault", "noview"})


def _unbound_zone(feed: FeedLines, tokens: list[str]) -> bool:
    """'local-zone: "name" always_nxdomain' blocks the name; a transparent zone lets it through."""
    if len(tokens) < 3:
        return False
    if tokens[2].strip('"').lower() in _UNBOUND_ALLOW:
        return _allowlisted(feed, tokens)
    feed.entry(tokens[1].strip('"').rstrip("."))
    return True


def _unbound_data(feed: FeedLines, tokens: list[str]) -> bool:
    """'local-data: "name. A 0.0.0.0"': the name is the entry, its address a sink."""
    feed.entry(tokens[1].strip('"').rstrip("."))
    feed.skip("sink addresses")
    return True


def _ids_rule(feed: FeedLines, tokens: list[str]) -> bool:
    """'alert ip [a,b,c] any -> $HOME_NET any (msg:...; reference:url,...;)' (Suricata/Snort, e.g. Emerging Threats'
    compromised rules): the addresses of the header are the entries, not the options (a reference URL is the
    rule's documentation); variables, 'any' and negated addresses are not; a pass rule is an exception."""
    if len(tokens) < 7 or tokens[4] not in ("->", "<>"):
        return False
    if tokens[0] == "pass":
        return _allowlisted(feed, tokens)
    for field_ in (tokens[2], tokens[5]):
        if field_.startswith("!"):
            continue  # "![a,b]": every address but those
        for address in field_.replace("[", "").replace("]", "").split(","):
            if address and address[0] not in "!$" and address != "any":
                feed.entry(address)
    feed.skip("rule options")
    return True


def _unwildcarded(entry: str) -> str:
    """'*.name' (wildcard DNS lists) and '.name' (Squid's dstdomain: the name and its subdomains) stand for the name,
    which the extractor did not find behind the '*.' or '.'."""
    for prefix in ("*.", "."):
        if entry.startswith(prefix) and entry[len(prefix) : len(prefix) + 1].isalnum():
            return entry[len(prefix) :]
    return entry


_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")


def _address_range(feed: FeedLines, tokens: list[str]) -> bool:
    """'<start> <end> <prefix length> <attacks> <name> <country> <abuse contact>' (DShield's block.txt): the network
    is the entry, not its two ends, and not the network owner's name or abuse mailbox."""
    if len(tokens) < 3 or not (_IPV4.fullmatch(tokens[0]) and _IPV4.fullmatch(tokens[1]) and tokens[2].isdigit()):
        return False
    if int(tokens[2]) > 32:
        return False
    feed.entry(f"{tokens[0]}/{tokens[2]}")
    if len(tokens) > 3:
        feed.skip("row details")
    return True


def _column_header(feed: FeedLines, tokens: list[str]) -> bool:
    """DShield's uncommented 'Start End Netblock Attacks Name Country email'."""
    if tokens[1:3] != ["End", "Netblock"]:
        return False
    feed.skip("column headers")
    return True


def _comma_row(feed: FeedLines, tokens: list[str]) -> bool:
    """'name,description,date' under a '#' banner: a row, so the banner is a comment. The row is read whole, but
    when its first field is an address or a host name, a field that is a URL on another host is a reference, not an
    indicator, and is counted as `row details` (Bambenek's lists end each row with the URL of the family's manual
    page, which was stored as an IoC). The row's other fields stay: 'address, name' pairs, a name and its URL,
    Bambenek's addresses and name servers; and a first field that only looks like a name (a date 27.11.2026, a
    score 0.95, a version 1.2.3) keys nothing, so the indicator in a later field is kept."""
    first = tokens[0].partition(",")[0]
    if "," not in tokens[0] or not first:
        return False
    row = " ".join(tokens)
    key = _row_key(first)
    fields = row.split(",")
    kept = [part for part in fields if key is None or not _reference(part.strip(), key)]
    if len(kept) < len(fields):
        feed.skip("row details")
    feed.entry(",".join(kept))
    return True


_TOP_LABEL = re.compile(r"[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59}")  # as normalise reads a domain's last label


def _row_key(field: str) -> str | None:
    """The row's indicator when its first field is an address or a host name (its last label a top-level domain's
    shape: not 27.11.2026, 0.95 or 1.2.3), lower-cased; else None."""
    if _address(field) is not None:
        return field.lower()
    if _NAME.fullmatch(field) and _TOP_LABEL.fullmatch(field.rstrip(".").rpartition(".")[2]):
        return field.rstrip(".").lower()
    return None


def _reference(field: str, key: str) -> bool:
    """Whether a row's field is one URL on a host other than the row's indicator (a manual page, a report)."""
    if "://" not in field or any(c.isspace() for c in field):
        return False
    try:
        host = urllib.parse.urlsplit(field).hostname
    except ValueError:  # a malformed bracketed host: not a reference we can tell, so read as written
        return False
    return host is not None and host.rstrip(".").lower() != key


# A host name as a list writes it, in any case, with or without the root's dot.
_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+\.?")
# Adblock's regular-expression rules ("/^ad[0-9]+\.example\.com$/"): patterns, not paths.
_REGEX_SYNTAX = re.compile(r"[\^$\\\[\](|+?*]")


def _is_regex_rule(token: str) -> bool:
    return len(token) > 2 and token[0] == token[-1] == "/" and _REGEX_SYNTAX.search(token, 1, len(token) - 1) is not None


# The field of a JSON Lines record that holds its indicator (Spamhaus's drop_v4.json: "cidr"), in order of preference.
_JSON_VALUE_KEYS = ("cidr", "value", "indicator", "ioc", "ioc_value", "ip", "ip_address", "dst_ip", "address", "url", "domain")


def _json_record(feed: FeedLines, line: str) -> bool:
    """One JSON object a line (JSON Lines): its value field is the entry; a '"type": "metadata"' line is the feed's
    own (Spamhaus's copyright and terms URL); an object without a known field is read whole."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # nested past the interpreter's limit (a 500 it was): not a record either
        return False
    if not isinstance(record, dict):
        return False
    if record.get("type") == "metadata":
        feed.skip("feed metadata lines")
        return True
    value = next((record[key] for key in _JSON_VALUE_KEYS if isinstance(record.get(key), str)), None)
    feed.entry(value if value is not None else line)
    if value is not None and len(record) > 1:
        feed.skip("row details")
    return True


# Networks that address ranges may give, per byte of the document: a range needs up to 62 networks (IPv6: 254), so a
# 4 KB list of wide ranges made thousands of rows. Most ranges are a few networks; the budget is about one row per
# 8 bytes, what a list of names gives, and a range past it is counted, not stored in part.
RANGE_NETWORKS_PER_BYTE = 1 / 8
# A bare range is tried first: an IPv6 range has colons of its own, and read as "description:range" first
# ('2001:db8::1-2001:db8::3' as '2001' and db8::1 to 2001:db8::3) it stored the ~130 networks between those.
# PeerGuardian's description may hold colons before an IPv4 range; before an IPv6 one it is taken to hold none.
_RANGES = (
    re.compile(r"([0-9.]+|[0-9A-Fa-f:]+)\s*-\s*([0-9.]+|[0-9A-Fa-f:]+)"),
    re.compile(r".*:([0-9.]+)\s*-\s*([0-9.]+)"),
    re.compile(r"[^:]*:([0-9A-Fa-f:]+)\s*-\s*([0-9A-Fa-f:]+)"),
)


def _range(feed: FeedLines, body: str) -> bool:
    """'start-end', 'start - end', PeerGuardian's 'description:start-end': the networks that cover the range (an aligned
    block is one), within the document's budget of networks."""
    bare, named_v4, named_v6 = _RANGES
    match = bare.fullmatch(body)
    if match is None and ":" in body:  # most lines with a '-' are names: one pattern, as before
        match = named_v4.fullmatch(body) or named_v6.fullmatch(body)
    if match is None:
        return False
    start, end = _address(match.group(1)), _address(match.group(2))
    if start is None or end is None or start.version != end.version or int(start) > int(end):
        return False
    summarised: Iterator[ipaddress.IPv4Network | ipaddress.IPv6Network] = ipaddress.summarize_address_range(start, end)  # type: ignore[assignment]  # both ends one version
    networks = list(itertools.islice(summarised, feed.range_budget + 1))
    if len(networks) > feed.range_budget:
        feed.skip("address ranges past the budget of networks")
        return True
    feed.range_budget -= len(networks)
    for network in networks:
        feed.network(network, body)
    return True


# A record's shape by its first token (after a trailing comment is cut): whether it was one, the entries taken.
_Shape = Callable[[FeedLines, list[str]], bool]
_BY_FIRST_TOKEN: dict[str, _Shape] = {
    "ExitNode": _tor_relay,
    "ExitAddress": _tor_exit_address,
    "Published": _tor_time,
    "LastStatus": _tor_time,
    "server:": _metadata,
    "local-zone:": _unbound_zone,
    "local-data:": _unbound_data,
    "$TTL": _metadata,
    "$ORIGIN": _metadata,
    "$INCLUDE": _metadata,
    "Start": _column_header,
    **dict.fromkeys(("alert", "drop", "reject", "rejectsrc", "rejectdst", "rejectboth", "sdrop", "pass", "log"), _ids_rule),
}
# ... or by how it begins, for a record written as one token.
_BY_PREFIX: tuple[tuple[str, _Shape], ...] = (
    ("address=/", _dnsmasq),
    ("server=/", _dnsmasq),
    ("local=/", _dnsmasq),
    ("||", _adblock),
    ("@@", _allowlisted),
)
# Cosmetic filters of Adblock lists ("example.com##.ad", "#@#", "#?#"): page elements, not hosts to block.
_COSMETIC = re.compile(r"#[@?$%]?#")
# Shapes tried in turn when the first token names none.
_SHAPES: tuple[_Shape, ...] = (_hosts, _address_range, _zone, _comma_row)


# Ranges whose addresses name no host on the internet: "this network", RFC 1918 and shared (CGNAT) space,
# loopback, link-local, multicast, reserved (with the broadcast address), and their IPv6 counterparts. A feed made
# for inbound filtering lists them (FireHOL's level1 holds the bogons 0/8, 10/8, 127/8, 192.168/16, 224/3); as
# indicators they would flag every internal address as malicious. Documentation ranges are not among them.
_NO_HOST_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16",
        "224.0.0.0/4", "240.0.0.0/4", "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
    )
)  # fmt: skip


# How those ranges begin as canonical text: most of a feed's addresses are told public by their first characters,
# without parsing them (parsing every one of 240,000 addresses cost more than the rest of the import did).
_NO_HOST_STARTS = tuple([f"{octet}." for octet in (0, 10, 100, 127, 169, 172, 192, *range(224, 256))] + ["::", "fc", "fd", "fe", "ff"])


def names_no_host(value: str) -> bool:
    """Whether an address or network (canonical) lies wholly in ranges that name no host on the internet."""
    if not value.startswith(_NO_HOST_STARTS):
        return False
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    ends = (network.network_address, network.broadcast_address)
    return all(any(end in no_host for no_host in _NO_HOST_NETWORKS if no_host.version == end.version) for end in ends)


def read(text: str) -> FeedLines | None:
    """The feed's lines, or None when `text` is a report."""
    feed = FeedLines(range_budget=int(len(text) * RANGE_NETWORKS_PER_BYTE))
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if feed.prose * PROSE_PER_RECORDS > feed.records + len(lines) - index:
            return None  # a report: the lines left could not make it a feed
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith(_COMMENT_START):
            feed.skip("comment lines")
            continue
        if stripped[:1] == "{" and stripped[-1:] == "}" and _json_record(feed, stripped):
            feed.records += 1
            continue
        comment = _TRAILING_COMMENT.search(stripped)
        body = stripped[: comment.start()] if comment is not None else stripped
        if "-" in body and _range(feed, body):
            feed.records += 1
            continue
        tokens = body.split()
        by_prefix = next((shape for prefix, shape in _BY_PREFIX if tokens[0].startswith(prefix)), None)
        if by_prefix is not None and by_prefix(feed, tokens):
            feed.records += 1
            continue
        if len(tokens) == 1:
            if _COSMETIC.search(tokens[0]):
                feed.skip("cosmetic filters")
            elif _is_regex_rule(tokens[0]):
                feed.skip("regex rules")
            elif tokens[0][:1] == "$" and _FINGERPRINT.fullmatch(tokens[0]):
                feed.skip("tor relay fingerprints")  # "$<fingerprint>", Tor's notation for a relay (torrc, relay lists)
            else:
                entry = _unwildcarded(tokens[0])
                feed.entry(entry.lower() if _NAME.fullmatch(entry) else entry)  # "UPPER.Example.COM." is a name
            feed.records += 1
            continue
        shape = _BY_FIRST_TOKEN.get(tokens[0])
        if (shape is not None and shape(feed, tokens)) or any(other(feed, tokens) for other in _SHAPES):
            feed.records += 1
        else:
            feed.readable.append(line)
            feed.prose += 1
    if feed.records == 0 or feed.prose * PROSE_PER_RECORDS > feed.records:
        return None
    if feed.pinned and "sink addresses" in feed.skipped:  # a hosts file: its other addresses are redirect targets
        for position in feed.pinned:
            feed.readable[position] = ""
        feed.skip("redirect addresses", len(feed.pinned))
    return feed
