"""Enrichment meets IoCs and threats (cross-domain): the stored IoC for an
enrichment request, the merged verdict onto the IoC, threat correlation from the
evidence, and the IoCs an ingest auto-enriches.

Every function takes the request's connection (one unit of work per request/message)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from threatflow.auth import clearance as tlp_clearance
from threatflow.enrichment import repository as enrichment_repository
from threatflow.enrichment import verdict
from threatflow.enrichment.tasks import EnrichRequest
from threatflow.intel import correlate
from threatflow.iocs import repository as iocs_repository
from threatflow.iocs import service as iocs_service
from threatflow.iocs.model import DecayPolicy
from threatflow.iocs.normalise import normalise
from threatflow.platform.errors import NotFoundError, ValidationError
from threatflow.platform.vocabulary import Tlp, new_record_tlp
from threatflow.threats import repository as threats_repository

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from threatflow.iocs.service import WarninglistMatcher


log = logging.getLogger(__name__)


def _record(ioc: Any) -> dict[str, Any]:
    return {"id": ioc.id, "type": ioc.type, "value": ioc.value, "tlp": ioc.tlp, "warninglists": list(ioc.warninglists or [])}


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# RFC 8215's local-use NAT64 prefix: its translators' prefixes are mostly /96, the IPv4 address in the last 32 bits
_NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT (RFC 2765): global to Python, so not refused


def carried_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: IPv4-mapped (::ffff:0:0/96: typed ipv6 it stays an ipv6 IoC, and
    Python counts it global), NAT64 (64:ff9b::/96, and 64:ff9b:1::/48 read as /96 prefixes), 6to4 (2002::/16),
    IPv4-compatible (::/96), IPv4-translated (::ffff:0:0:0/96), Teredo's client (2001::/32)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in network for network in (_NAT64, _NAT64_LOCAL_USE, _IPV4_COMPATIBLE, _IPV4_TRANSLATED)):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour or (address.teredo[1] if address.teredo else None)


_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


_FIXED_PREFIXES = tuple(int(n.network_address) for n in (_IPV4_MAPPED, _NAT64, _IPV4_COMPATIBLE, _IPV4_TRANSLATED))


def _fixed_spellings(address: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """The IPv6 addresses carrying `address` at a fixed place (see ipv6_spellings), not normalised."""
    return [ipaddress.IPv6Address(prefix | int(address)) for prefix in _FIXED_PREFIXES]


def ipv6_spellings(address: ipaddress.IPv4Address) -> list[str]:
    """The IPv6 IoC values (as the iocs domain normalises them) that carry `address` at a fixed place: IPv4-mapped,
    NAT64's well-known prefix, IPv4-compatible, IPv4-translated. carried_ipv4 read backwards; 6to4, Teredo and
    NAT64's local-use prefix carry it beside bits of their own (a subnet, a server, a port), so no one value is theirs."""
    spellings = []
    for ipv6 in _fixed_spellings(address):
        try:
            spellings.append(normalise(str(ipv6), "ipv6").value)
        except ValidationError:  # not an address the iocs domain stores as ipv6, so no IoC can hold it
            continue
    return spellings


def _carried_key(record: Mapping[str, Any]) -> tuple[str, str] | None:
    """The stored-IoC key (ipv4, address) of the IPv4 address an IPv6 record carries, if any."""
    if record.get("type") != "ipv6":
        return None
    try:
        carried = carried_ipv4(ipaddress.IPv6Address(str(record["value"]).partition("/")[0]))
    except ValueError:
        return None
    return None if carried is None else ("ipv4", str(carried))


def _spelling_keys(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The other stored-IoC keys of the host a record names: the IPv4 address an IPv6 record carries, or the IPv6
    spellings of an IPv4 record (ipv6_spellings)."""
    carried = _carried_key(record)
    if carried is not None:
        return [carried]
    if record.get("type") != "ipv4":
        return []
    try:
        address = ipaddress.IPv4Address(str(record["value"]))
    except ValueError:
        return []
    return [("ipv6", spelling) for spelling in ipv6_spellings(address)]


_SIXTOFOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")


@dataclass(frozen=True, slots=True)
class HostTlp:
    """What a host's stored records say about it. `stored`: the strictest TLP of the IoCs holding the host (its value,
    the IPv4 address an IPv6 one carries, an IPv4 address's IPv6 spellings), or None: a reader cleared below it is
    answered 404. `sent`: `stored`, or stricter where a record covers the host without holding it (a CIDR IoC containing
    it, a 6to4 or Teredo IoC carrying its IPv4 address): no source whose max_tlp is below it is asked, and a reader
    below it is not answered 404, since the host is theirs and the record covering it is not shown."""

    stored: Tlp | None
    sent: Tlp | None

    @property
    def withheld(self) -> bool:
        """The sending TLP comes from a covering record that not every reader of the host may read: name no TLP."""
        return self.sent is not None and (self.stored is None or self.sent.rank > self.stored.rank)


def _strictest(tlps: Sequence[Tlp | None]) -> Tlp | None:
    known = [tlp for tlp in tlps if tlp is not None]
    return max(known, key=lambda tlp: tlp.rank) if known else None


# A range covers a host only while it is intel about hosts: at most an IPv4 /8, or an IPv6 /32 (an ISP's allocation),
# or an IPv6 range embedding at most an IPv4 /8 (6to4 carries the IPv4 address from bit 16, Teredo its server from bit 32
# and the others theirs from bit 96). A red 0.0.0.0/0, ::ffff:0:0/96 or 2002::/16 withheld every address from every
# source below red, for every reader and run: one record turned enrichment of addresses off platform-wide.
MIN_COVER_PREFIX_IPV4 = 8
MIN_COVER_PREFIX_IPV6 = 32
_MIN_COVER_PREFIX_EMBEDDING = (
    (_SIXTOFOUR, 16 + MIN_COVER_PREFIX_IPV4),
    (_TEREDO, 32 + MIN_COVER_PREFIX_IPV4),
    *((network, 96 + MIN_COVER_PREFIX_IPV4) for network in (_IPV4_MAPPED, _NAT64, _NAT64_LOCAL_USE, _IPV4_COMPATIBLE, _IPV4_TRANSLATED)),
)
# The 6to4 /48 of an IPv4 address (sites) is overlapped by ranges of 6to4 routers: as narrow as a /8 of them.
MIN_COVER_PREFIX_SITE = 16 + MIN_COVER_PREFIX_IPV4
# A cidr IoC of Teredo addresses covers the clients of its last 32 bits: as narrow as a /8 of them.
MIN_COVER_PREFIX_TEREDO_CLIENTS = 96 + MIN_COVER_PREFIX_IPV4


def _min_cover_prefix(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """The shortest prefix of a range that covers `address` (see MIN_COVER_PREFIX_IPV4)."""
    if isinstance(address, ipaddress.IPv4Address):
        return MIN_COVER_PREFIX_IPV4
    return next((prefix for network, prefix in _MIN_COVER_PREFIX_EMBEDDING if address in network), MIN_COVER_PREFIX_IPV6)


def _cover_probes(ioc_type: str, value: str) -> tuple[list[tuple[str, int]], ipaddress.IPv4Address | None]:
    """The addresses a containing CIDR IoC covers the host through (the host, the IPv4 address it carries and that
    address's fixed IPv6 spellings), each with the shortest prefix of a range that covers it, and the IPv4 address whose
    6to4 and Teredo IoCs cover it; nothing for a non-IP."""
    if ioc_type not in ("ipv4", "ipv6"):
        return [], None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return [], None
    ipv4 = address if isinstance(address, ipaddress.IPv4Address) else carried_ipv4(address)
    within: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = {address}
    if ipv4 is not None:  # inet reads any spelling: no need of the iocs domain's normalised form
        within |= {ipv4, *_fixed_spellings(ipv4)}
    return sorted((str(a), _min_cover_prefix(a)) for a in within), ipv4


def host_tlps(conn: Connection, hosts: Mapping[Any, Mapping[str, Any]]) -> dict[Any, HostTlp]:
    """The TLPs (HostTlp) of hosts given as records (type, value, and the stored IoC's own tlp when there is one), in
    two queries for all: the IoCs holding each host (by value), and those covering it (iocs.repository.covering_tlps,
    one index scan a probe). The one rule for GET /detect/intel/{ip} and every enrichment run. A non-IP record takes
    its own TLP and no query."""
    # a record read from the store has its own TLP: only its other spellings are looked up
    own_key = {k: [(str(h["type"]), str(h["value"]))] if h.get("tlp") is None else [] for k, h in hosts.items()}
    spelled = {k: ks for k, h in hosts.items() if (ks := own_key[k] + _spelling_keys(h))}
    wanted = sorted({key for ks in spelled.values() for key in ks})
    stored_iocs = iocs_repository.get_many_by_value(conn, wanted) if wanted else {}
    numbered = list(hosts)  # covering_tlps keys are ints
    within: list[tuple[int, str, int]] = []
    sites: list[tuple[int, str]] = []
    teredo: list[tuple[int, int]] = []
    for n, k in enumerate(numbered):
        addresses, ipv4 = _cover_probes(str(hosts[k].get("type")), str(hosts[k].get("value")))
        within += [(n, a, prefix) for a, prefix in addresses]
        if ipv4 is not None:
            sites.append((n, str(ipaddress.IPv6Network((int(_SIXTOFOUR.network_address) | int(ipv4) << 80, 48)))))
            teredo.append((n, int(ipv4)))
    covering = iocs_repository.covering_tlps(
        conn,
        within=within,
        sites=sites,
        teredo=teredo,
        min_site_prefix=MIN_COVER_PREFIX_SITE,
        min_teredo_prefix=MIN_COVER_PREFIX_TEREDO_CLIENTS,
    )
    out = {}
    for n, k in enumerate(numbered):
        own = hosts[k].get("tlp")
        found = [Tlp.parse(str(stored_iocs[key]["tlp"])) for key in spelled.get(k, []) if key in stored_iocs]
        stored = _strictest([Tlp.parse(str(own)) if own is not None else None, *found])
        out[k] = HostTlp(stored=stored, sent=_strictest([stored, covering.get(n)]))
    return out


def _with_carried_tlps(conn: Connection, records: Mapping[Any, dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """An IPv6 IoC carrying a stored IPv4 address discloses that address to whichever source it is sent to: its
    request and clearance take the stricter TLP of the two (a red IPv4 address, spelled NAT64, went to every
    IPv6 source for any analyst). So does an IPv4 IoC whose IPv6 spelling is stored (a red ::ffff:a.b.c.d typed ipv6,
    and the IPv4 address went at amber to every IPv4 source). A record covering the host (host_tlps: a CIDR IoC
    containing it, a 6to4 or Teredo IoC carrying it) makes `sent_tlp` stricter, what its request is sent at, not
    `tlp`, what the caller's clearance is checked against. The stored IoC keeps its own. Two queries for all."""
    tlps = host_tlps(conn, {k: r for k, r in records.items() if r.get("type") in ("ipv4", "ipv6")})
    out = {}
    for k, record in records.items():
        own = str(record.get("tlp") or "amber")
        tlp = tlps.get(k)
        if tlp is None or tlp.stored is None or tlp.sent is None:
            out[k] = {**record, "tlp": own, "sent_tlp": own, "tlp_withheld": False}
            continue
        out[k] = {**record, "tlp": tlp.stored.value, "sent_tlp": tlp.sent.value, "tlp_withheld": tlp.withheld}
    return out


def _with_carried_tlp(conn: Connection, record: dict[str, Any]) -> dict[str, Any]:
    """_with_carried_tlps for one record."""
    return _with_carried_tlps(conn, {0: record})[0]


def resolve_ioc(
    conn: Connection,
    value: str,
    type_: str | None,
    *,
    where: str,
    now: datetime,
    warninglists: WarninglistMatcher | None,
    policies: dict[str, DecayPolicy],
    clearance: str,
) -> dict[str, Any]:
    """The stored IoC for a value (id, type, value, tlp, warninglists), stored first when new
    at the lower of the default TLP and the requester's `clearance`, so that they can read it (see upsert_batch)."""
    try:
        indicator = normalise(value, type_)
    except ValidationError as exc:
        raise ValidationError(f"{where}: {exc.message}", field=where) from None
    ioc = iocs_repository.get_by_value(conn, str(indicator.type), indicator.value)
    if ioc is None:
        iocs_service.upsert_batch(
            [iocs_service.IocIn(value=indicator.value, type=str(indicator.type), source="enrichment")],
            conn=conn,
            now=now,
            warninglists=warninglists,
            policies=policies,
            clearance=tlp_clearance.SYSTEM,  # creates only: an existing IoC is read, not written
            new_tlp=new_record_tlp(clearance),
        )
        ioc = iocs_repository.get_by_value(conn, str(indicator.type), indicator.value)
    if ioc is None:  # deleted in between
        raise NotFoundError(f"{where}: the indicator could not be stored")
    return _with_carried_tlp(conn, _record(ioc))


def resolve_many(
    conn: Connection,
    items: Sequence[tuple[str, str | None]],
    *,
    now: datetime,
    warninglists: WarninglistMatcher | None,
    policies: dict[str, DecayPolicy],
    clearance: str,
) -> list[dict[str, Any] | str]:
    """Stored IoCs for many (value, type) in two statements (new ones are stored, as
    resolve_ioc stores one); an error string per bad item."""
    keys: list[tuple[str, str] | str] = []
    for index, (value, type_) in enumerate(items):
        try:
            indicator = normalise(value, type_)
            keys.append((str(indicator.type), indicator.value))
        except ValidationError as exc:
            keys.append(f"iocs[{index}].value: {exc.message}")
    wanted = sorted({k for k in keys if isinstance(k, tuple)})
    found = iocs_repository.get_many_by_value(conn, wanted)
    missing = [k for k in wanted if k not in found]
    if missing:
        iocs_service.upsert_batch(
            [iocs_service.IocIn(value=v, type=t, source="enrichment") for t, v in missing],
            conn=conn,
            now=now,
            warninglists=warninglists,
            policies=policies,
            clearance=tlp_clearance.SYSTEM,  # creates only: an existing IoC is read, not written
            new_tlp=new_record_tlp(clearance),
        )
        found.update(iocs_repository.get_many_by_value(conn, missing))
    resolved = _with_carried_tlps(conn, found)
    return [k if isinstance(k, str) else resolved.get(k, "the indicator could not be stored") for k in keys]


def auto_enrichment_costed(conn: Connection, ioc_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The IoCs of `ioc_ids` (in that order) auto-enrichment would run, as the budget's plan reads them: by their own
    TLP (`sent_tlp`). It is what a write charges its writer (iocs POST /batch), so it leaves out ingest_requests'
    carried and covering TLPs (host_tlps, ~0.3 s a 1,000 new addresses: 3x the write): a stricter record can only
    leave more sources unasked, so the charge is an upper bound that is exact but for such addresses."""
    found = iocs_repository.enrichable(conn, ioc_ids)
    return [
        {"id": int(i), "type": found[int(i)][0], "value": found[int(i)][1], "sent_tlp": found[int(i)][2], "tlp_withheld": False}
        for i in ioc_ids
        if int(i) in found
    ]


def ingest_requests(
    conn: Connection, ioc_ids: Sequence[Any], *, message_id: str, charged_tlps: Sequence[Any] | None = None
) -> list[EnrichRequest]:
    """Auto-enrichment on ingest: one run per new IoC, run ids derived from the message so a redelivery repeats nothing.
    `charged_tlps`, one per id (a write's message, handlers.auto_enrich): the TLP its writer was charged at; each run
    is sent at the stricter of it and the IoC's TLP now, so a TLP lowered since the write asks no uncharged source."""
    ids = [int(ioc_id) for ioc_id in ioc_ids]
    charged: dict[int, Tlp] = {}
    if isinstance(charged_tlps, list) and len(charged_tlps) == len(ids):
        for ioc_id, tlp in zip(ids, charged_tlps, strict=True):
            with contextlib.suppress(ValueError):
                charged[ioc_id] = Tlp.parse(str(tlp))
    found = iocs_repository.get_many(conn, ids)  # one query for up to AUTO_MAX ids (it was one each, and one more per IPv6)
    # deleted since, or warninglisted: not auto-enriched
    records = _with_carried_tlps(conn, {i: _record(ioc) for i, ioc in found.items() if not ioc.warninglists})
    out = []
    for ioc_id in ids:
        record = records.get(ioc_id)
        if record is None:
            continue
        run_id = uuid.uuid5(uuid.NAMESPACE_URL, f"ingest:{message_id}:{ioc_id}").hex
        out.append(
            EnrichRequest(
                run_id,
                ioc_id,
                str(record["type"]),
                str(record["value"]),
                str(_strictest([Tlp.parse(str(record["sent_tlp"])), charged.get(ioc_id)])),
                origin="ingest",
                tlp_withheld=bool(record["tlp_withheld"]),
            )
        )
    return out


def apply_verdict(conn: Connection, *, ioc_id: int, run_id: str, merged: verdict.Merged, results: Sequence[Mapping[str, Any]]) -> None:
    """The IoC's verdict and score, and threat correlation from the evidence."""
    rows = verdict.evidence_rows(results)
    cut = enrichment_repository.put_evidence(conn, ioc_id, rows)
    if cut:  # the IoC holds MAX_EVIDENCE_PER_SOURCE rows of a source: it keeps those (the run's verdict still applies)
        log.info("evidence not stored: the IoC is full", extra={"ioc_id": ioc_id, "run_id": run_id, "evidence_cut": cut})
    if merged.verdict != "unknown" and merged.score is not None:
        iocs_repository.apply_enrichment_verdict(conn, ioc_id=ioc_id, verdict=merged.verdict, score=merged.score)
    names = [value for _, kind, value in rows if kind in ("malware_family", "tag")]
    links: list[dict[str, Any]] = []
    everything = tlp_clearance.allowed(tlp_clearance.SYSTEM)
    # The verdict's reasons are shown to every reader of the IoC: they say only what a reader cleared for exactly its
    # TLP reads. The links are made reading every TLP (each as strict as what it was scored through).
    ioc_tlp = iocs_repository.tlps_of(conn, [ioc_id]).get(ioc_id)
    shown = Tlp.parse(ioc_tlp).at_most() if ioc_tlp is not None else []
    threat_ids = sorted(threats_repository.threat_ids_by_names(conn, names))
    threat_tlps = threats_repository.tlp_of_threats(conn, threat_ids)
    for threat_id in threat_ids:
        outcome = correlate.correlate(conn, threat_id=threat_id, visible_tlps=everything, threshold=70, link=True, source="enrichment")
        if threat_tlps.get(threat_id) not in shown:
            continue  # a threat above the IoC's TLP: its name is not the IoC's readers' to read
        if not set(shown) >= set(everything):
            outcome = correlate.correlate(conn, threat_id=threat_id, visible_tlps=shown, threshold=70, link=False)
        links += [
            {
                "kind": "threat",
                "threat_id": threat_id,
                "threat": ", ".join(outcome["names"]),
                "score": c["score"],
                "linked": c["linked"] or c["already_linked"],
                "reason": "; ".join(c["reasons"]),
            }
            for c in outcome["candidates"]
            if c["ioc_id"] == ioc_id
        ]
    reasons = [*merged.reasons, *links]
    enrichment_repository.put_verdict(conn, ioc_id=ioc_id, run_id=run_id, verdict=merged.verdict, score=merged.score, reasons=reasons)


def host_tlp(conn: Connection, ioc_type: str, value: str) -> HostTlp:
    """host_tlps for one address not read as a stored record (GET /detect/intel/{ip}): the TLP of the stored IoC
    (type, normalised value) or of its other spellings, and of the records covering it. An IPv6 address carrying a
    stored IPv4 one (NAT64, 6to4...) discloses that one too; so does an IPv4 address whose IPv6 spelling is stored
    (ipv6_spellings: ::ffff:a.b.c.d typed ipv6 stays an ipv6 IoC, and the intel route asks for it as the IPv4 host)."""
    return host_tlps(conn, {0: {"type": ioc_type, "value": value}})[0]


def visible_ioc_ids(conn: Connection, ioc_ids: Sequence[int], *, visible_tlps: Sequence[str]) -> set[int]:
    """The ids among ioc_ids of existing IoCs whose TLP is in visible_tlps."""
    allowed = set(visible_tlps)
    return {i for i, tlp in iocs_repository.tlps_of(conn, ioc_ids).items() if tlp in allowed}


def hidden_ioc_ids(conn: Connection, ioc_ids: Sequence[int], *, visible_tlps: Sequence[str]) -> set[int]:
    """The ids among ioc_ids of existing IoCs whose TLP is NOT in visible_tlps (what a listing leaves out)."""
    allowed = set(visible_tlps)
    return {i for i, tlp in iocs_repository.tlps_of(conn, ioc_ids).items() if tlp not in allowed}
