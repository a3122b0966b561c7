"""Ingest with the bridge: score and store a batch of flows, then turn its attack sources into IoCs.

One transaction per batch holds the events and the IoC upsert, so a batch is
either stored and bridged, or not at all; enrichment requests go out after the
commit. Used by POST /api/v1/flows/batch (and so `threatflow flows load`) and by
the flow-ingest worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from threatflow.adapters.postgres import unit_of_work
from threatflow.flows import ingest
from threatflow.hunting import bridge
from threatflow.iocs.model import DecayPolicy
from threatflow.platform.ports import Publisher

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("threatflow.hunting")


def ingest_batch(
    flows: Sequence[Mapping[str, Any]],
    fields: Sequence[ingest.EventFields],
    *,
    engine: Engine,
    model: ingest.Scorer,
    source: str,
    first_position: int,
    observed_at: datetime,
    threshold: float,
    enrich_per_hour: int,
    publisher: Publisher,
    policies: dict[str, DecayPolicy],
    warninglists: Callable[[str, str], list[str]] | None,
    now: datetime,
    shown_to: str,
    authorise: Callable[[Connection], object] | None,
    positions: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Score and store a batch of flows, and bridge its attack sources to IoCs, in one unit of work.

    `authorise` (None: the request's own token was checked) runs first in that unit of work and raises to store
    nothing: a queued upload's check of its requester's account as it is now (flow-ingest), in the writing transaction."""
    with unit_of_work(engine) as conn:  # events and IoCs: one unit of work; enrichment after the commit
        if authorise is not None:
            authorise(conn)
        outcome = ingest.score_and_store(
            conn, flows, fields, model=model, source=source, first_position=first_position, observed_at=observed_at, positions=positions
        )
        bridged = bridge.upsert_attack_sources(
            conn, outcome.new_events, threshold=threshold, policies=policies, warninglists=warninglists, now=now, shown_to=shown_to
        )
    wanted = bridge.by_priority(bridged.to_enrich)
    granted = 0
    if wanted:
        with unit_of_work(engine) as conn:
            granted = bridge.take_enrichment_budget(conn, len(wanted), per_hour=enrich_per_hour, now=now)
        if granted < len(wanted):
            log.warning(
                "bridge: enrichment budget spent; %d new IoCs not queued (FLOWS_BRIDGE_ENRICH_PER_HOUR=%d)",
                len(wanted) - granted,
                enrich_per_hour,
            )
    enrichment = bridge.request_enrichment(wanted[:granted], publisher=publisher)
    return {
        **outcome.to_json(),
        "bridge": {
            **bridged.to_json(),
            "enrichment_requested": enrichment["queued"],
            "enrichment_failed": enrichment["failed"],
            "enrichment_over_budget": len(wanted) - granted,
        },
    }
