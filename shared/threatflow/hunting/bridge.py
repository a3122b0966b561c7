"""The flow→IoC bridge: sources of detected attacks become IoCs, public ones get enriched.

Bounded by construction: one IoC upsert (one statement) and one sightings insert
per ingest batch, deduplicated by address, and only for events the batch newly
stored, so a re-sent batch bridges nothing twice. Enrichment is requested for
public addresses whose IoC the bridge just created (an existing IoC was already
queued when it was made, or by whoever made it) and is active (one whose expiry was past when written, a flow at
the retention edge, is stored inactive: iocs.repository.upsert), the way every newly stored IoC
is: the enrichment capability's auto-enrichment message; requests are published
after the transaction commits, so the consumer always finds the IoC. At most
FLOWS_BRIDGE_ENRICH_PER_HOUR of them per clock hour, across instances (take_enrichment_budget),
the most probable attackers first: spoofed sources must not queue days of every source's quota.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from threatflow.auth import clearance as tlp_clearance
from threatflow.enrichment import tasks as enrichment_tasks
from threatflow.flows.repository import StoredEvent
from threatflow.intel import enrichment as intel_enrichment
from threatflow.iocs import repository as ioc_repository
from threatflow.iocs import service as ioc_service
from threatflow.iocs.model import DecayPolicy
from threatflow.iocs.normalise import normalise
from threatflow.platform import events
from threatflow.platform.errors import ValidationError
from threatflow.platform.ports import Publisher
from threatflow.platform.vocabulary import new_record_tlp

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger("threatflow.hunting")
SIGHTING_SOURCE = "flows"
DETECTION_TAG = "flow-detected"
DESCRIPTION = "source of network flows the flow model predicted as attacks"
ENRICH_CHUNK = 1000  # IoC ids per enrichment request (enrich-dispatch takes up to 10,000)
BUDGET_KEPT = timedelta(days=2)  # hour rows of the enrichment budget kept by prune_enrichment_budget


def category_tag(category: str) -> str:
    return f"attack-category:{category.lower()}"


@dataclass
class _Source:
    address: str
    first_seen: datetime
    last_seen: datetime
    flows: int = 0
    max_probability: float = 0.0
    categories: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EnrichmentRequest:
    ioc_id: int
    type: str
    value: str
    max_probability: float = 0.0  # the order in which the hourly budget is spent
    flows: int = 0


@dataclass(frozen=True)
class BridgeResult:
    sources: int
    created: int
    updated: int
    rejected: int
    to_enrich: list[EnrichmentRequest]
    tags_cut: int = 0  # detection and category tags a full IoC could not take (iocs.model.MAX_TAGS_PER_IOC)
    sources_cut: int = 0  # the bridge's source, on an IoC already holding iocs.model.MAX_SOURCES_PER_IOC others

    def to_json(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "iocs_created": self.created,
            "iocs_updated": self.updated,
            "rejected": self.rejected,
            "tags_cut": self.tags_cut,
            "sources_cut": self.sources_cut,
        }


def names_a_host(address: str) -> bool:
    """Whether a flow's source address can be an attacker's: not unspecified (0.0.0.0, a DHCP discover),
    loopback, multicast, link-local (169.254.169.254 is the cloud metadata server) or IPv4 reserved
    (240/4, the broadcast address). Those became IoCs of severity high, and so blocklist entries.
    An IPv6 address carrying an IPv4 one (NAT64, 6to4, ...: intel.enrichment.carried_ipv4) is judged by both:
    64:ff9b::7f00:1 is 127.0.0.1."""
    ip = ipaddress.ip_address(address)
    carried = intel_enrichment.carried_ipv4(ip)
    for one in (ip,) if carried is None else (ip, carried):
        if one.is_unspecified or one.is_loopback or one.is_multicast or one.is_link_local or (one.version == 4 and one.is_reserved):
            return False
    return True


def is_public(address: str) -> bool:
    """Whether intel sources may be asked about an address: global, and so is the IPv4 address it carries
    (64:ff9b::a00:1 is 10.0.0.1, which Python counts global in its NAT64 spelling), as GET /detect/intel decides."""
    ip = ipaddress.ip_address(address)
    carried = intel_enrichment.carried_ipv4(ip)
    return ip.is_global and (carried is None or carried.is_global)


def attack_sources(new_events: Sequence[StoredEvent], *, threshold: float) -> list[_Source]:
    """Distinct source addresses of the events predicted as attacks at or above the threshold
    (addresses that name no host left out: names_a_host)."""
    by_address: dict[str, _Source] = {}
    for event in new_events:
        if not event.predicted_attack or event.probability < threshold or not event.srcip:
            continue
        if event.srcip not in by_address and not _host_address(event.srcip):
            continue
        source = by_address.get(event.srcip)
        if source is None:
            source = by_address[event.srcip] = _Source(event.srcip, event.event_time, event.event_time)
        source.first_seen = min(source.first_seen, event.event_time)
        source.last_seen = max(source.last_seen, event.event_time)
        source.flows += 1
        source.max_probability = max(source.max_probability, event.probability)
        source.categories[event.predicted_cat] = source.categories.get(event.predicted_cat, 0) + 1
    return sorted(by_address.values(), key=lambda s: s.address)


def upsert_attack_sources(
    conn: Connection,
    new_events: Sequence[StoredEvent],
    *,
    threshold: float,
    policies: dict[str, DecayPolicy],
    warninglists: Callable[[str, str], list[str]] | None,
    now: datetime,
    shown_to: str,
) -> BridgeResult:
    """Upsert the batch's attack sources as IoCs, with one sighting each, in the caller's transaction.

    The bridge writes as the system (it sights IoCs of every TLP); `shown_to` is the clearance of whom the result is
    for (auth.clearance.of(principal), or SYSTEM when no one reads it): `tags_cut` counts only IoCs within it, as
    /iocs/batch answers no tags_cut for an IoC above the writer's clearance (how full it is, and which of the bridge's
    tags it holds, is not theirs to learn)."""
    sources = attack_sources(new_events, threshold=threshold)
    if not sources:
        return BridgeResult(0, 0, 0, 0, [])
    # The model's confidence and the bridge's description are for an IoC the bridge creates. An address
    # already stored keeps what an analyst (or an earlier sighting) gave it: a re-sighting replaced both.
    # Looked up in the IoC's form (the upsert normalises): PostgreSQL writes host(srcip) its own way, e.g. the
    # IPv6 ::abcd:1234 as ::171.205.18.52, so the address as read back from the events is not always the IoC's value.
    as_stored = {s.address: _ioc_value(s.address) for s in sources}
    known = ioc_repository.stored_values(conn, sorted(set(as_stored.values())))
    items = [
        ioc_service.IocIn(
            value=s.address,
            tags=[DETECTION_TAG, *(category_tag(c) for c in sorted(s.categories))],
            source=SIGHTING_SOURCE,
            seen_at=s.last_seen,
            first_seen=s.first_seen,  # the batch's flows span a period: the IoC was first seen at the earliest
            confidence=None if as_stored[s.address] in known else min(100, round(s.max_probability * 100)),
            description=None if as_stored[s.address] in known else DESCRIPTION,
        )
        for s in sources
    ]
    outcome = ioc_service.upsert_batch(
        items,
        conn=conn,
        now=now,
        warninglists=warninglists,
        policies=policies,
        clearance=tlp_clearance.SYSTEM,
        new_tlp=new_record_tlp(tlp_clearance.SYSTEM),
    )
    sightings = []
    to_enrich = []
    counts = {"created": 0, "updated": 0, "rejected": 0, "unchanged": 0}
    for source, result in zip(sources, outcome["results"], strict=True):
        counts[result["status"]] += 1
        if result["status"] == "rejected":
            log.warning("bridge: %s rejected as an IoC: %s", source.address, result.get("reason"))
            continue
        context = {
            "flows": source.flows,
            "categories": source.categories,
            "max_probability": round(source.max_probability, 4),
            "first_flow_at": source.first_seen.isoformat(),
        }
        sightings.append((int(result["id"]), source.last_seen, SIGHTING_SOURCE, context))
        # An IoC stored inactive (a flow at the retention edge: its expiry past when written) is not worth a source's quota
        if result["status"] == "created" and result.get("active", True) and is_public(source.address):
            to_enrich.append(
                EnrichmentRequest(int(result["id"]), str(result["type"]), str(result["value"]), source.max_probability, source.flows)
            )
    ioc_repository.log_sightings(conn, sightings)
    # Cut counts of IoCs within the caller's clearance only (full IoCs only: rare); the bridge names no TLP: as before its write
    cut = {
        int(r["id"]): (int(r.get("tags_cut") or 0), int(r.get("sources_cut") or 0))
        for r in outcome["results"]
        if r.get("tags_cut") or r.get("sources_cut")
    }
    tlps = ioc_repository.tlps_of(conn, list(cut)) if cut else {}
    shown = [n for ioc_id, n in cut.items() if ioc_id in tlps and tlp_clearance.can_read(shown_to, tlps[ioc_id])]
    tags_cut, sources_cut = sum(t for t, _ in shown), sum(c for _, c in shown)
    return BridgeResult(len(sources), counts["created"], counts["updated"], counts["rejected"], to_enrich, tags_cut, sources_cut)


_host_address = functools.lru_cache(maxsize=4096)(names_a_host)


def _ioc_value(address: str) -> str:
    """The address as the iocs domain stores it (the upsert normalises with no type given, as here); an address it
    refuses is returned as written (the upsert rejects that item)."""
    try:
        return normalise(address).value
    except ValidationError:
        return address


def by_priority(requests: Sequence[EnrichmentRequest]) -> list[EnrichmentRequest]:
    """The order the enrichment budget is spent in: most probable attacker first, then most flows."""
    return sorted(requests, key=lambda r: (-r.max_probability, -r.flows, r.ioc_id))


def take_enrichment_budget(conn: Connection, wanted: int, *, per_hour: int, now: datetime) -> int:
    """Take up to `wanted` of this clock hour's FLOWS_BRIDGE_ENRICH_PER_HOUR; returns how many were granted.

    In its own short transaction (the caller's unit of work): the hour's row is locked only between
    reading and raising its count, so concurrent batches serialise on it for one statement each."""
    from sqlalchemy import text

    if wanted <= 0 or per_hour <= 0:
        return 0
    window = now.replace(minute=0, second=0, microsecond=0)
    conn.execute(
        text("INSERT INTO flow_bridge_enrichment (window_start, queued) VALUES (:w, 0) ON CONFLICT (window_start) DO NOTHING"),
        {"w": window},
    )
    granted = conn.execute(
        text(
            "UPDATE flow_bridge_enrichment t SET queued = t.queued + s.granted"
            " FROM (SELECT LEAST(CAST(:n AS integer), GREATEST(CAST(:cap AS integer) - queued, 0)) AS granted"
            "       FROM flow_bridge_enrichment WHERE window_start = :w FOR UPDATE) s"
            " WHERE t.window_start = :w RETURNING s.granted"
        ),
        {"w": window, "n": wanted, "cap": per_hour},
    ).scalar_one()
    return int(granted)


def prune_enrichment_budget(conn: Connection, *, now: datetime) -> int:
    """Delete the budget's hour rows older than BUDGET_KEPT; returns how many.

    Run by the daily flow-retention job, not by every batch: the table gains one row an hour,
    so a few days of them cost nothing, while a DELETE per ingest batch did."""
    from sqlalchemy import text

    window = now.replace(minute=0, second=0, microsecond=0)
    return conn.execute(text("DELETE FROM flow_bridge_enrichment WHERE window_start < :old"), {"old": window - BUDGET_KEPT}).rowcount


def request_enrichment(requests: Sequence[EnrichmentRequest], *, publisher: Publisher) -> dict[str, int]:
    """Queue the new IoCs for enrichment as any newly stored IoC is queued (enrichment's `auto_enrich`):
    `enrichment.tasks.auto_enrich_request`, one message per ENRICH_CHUNK IoCs. enrich-dispatch gives
    each IoC its own run with the manifest's `auto_enrich` sources for its type (a flood of detected
    sources never spends a free tier such as VirusTotal's 4/min) and skips warninglisted ones; run ids
    derive from the message id, so a redelivery repeats nothing.

    A failed publish is logged and counted, not raised: the events and IoCs are
    committed, and the IoC can be enriched on request (POST /api/v1/enrichment/enrich or /batch).
    """
    ids = [r.ioc_id for r in requests]
    queued = failed = 0
    for start in range(0, len(ids), ENRICH_CHUNK):
        chunk = ids[start : start + ENRICH_CHUNK]
        try:
            payload = events.encode(enrichment_tasks.auto_enrich_request(chunk))
            publisher.publish(enrichment_tasks.TOPIC_REQUESTED, payload, {"origin": enrichment_tasks.AUTO_ENRICH_ORIGIN})
            queued += len(chunk)
        except Exception as exc:  # one failed publish must not hide the others' outcome
            log.warning("bridge: enrichment request for %d IoCs not published: %s", len(chunk), exc)
            failed += len(chunk)
    return {"queued": queued, "failed": failed}
