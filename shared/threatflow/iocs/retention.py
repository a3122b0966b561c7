"""Sightings retention: the prune-sightings maintenance job.

ioc_sightings is a log (one row per sighting: POST /iocs/{id}/sightings and the flow bridge; batch and
import merges raise the IoC's counters only) that nothing else deletes. The job deletes the sightings seen before a cutoff, oldest
first, in batches of PRUNE_BATCH rows, each its own short transaction (no long lock, no long statement),
and stops after `limit` rows (so one invocation's work is bounded; `more` says some are left for the
next). The IoCs themselves are not touched: first_seen, last_seen and detection_count stay what every
sighting made them, and GET /iocs/{id} lists only the sightings still kept.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from threatflow.adapters.postgres import delete_in_batches
from threatflow.iocs import repository
from threatflow.platform.logging import log

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

logger = logging.getLogger(__name__)

RETENTION_DAYS = 365  # the default age past which a sighting is deleted
RETENTION_DAYS_MAX = 36_500
PRUNE_LIMIT = 200_000  # the default of rows one invocation deletes at most
PRUNE_MAX = 2_000_000
# Rows one transaction deletes: its locks and its statement stay short whatever the backlog.
PRUNE_BATCH = 5_000


def prune_sightings(*, engine: Engine, now: datetime, retention_days: int, limit: int, batch: int = PRUNE_BATCH) -> dict[str, Any]:
    """Delete at most `limit` sightings seen more than `retention_days` before `now`, `batch` rows a transaction.
    Idempotent: a second run deletes what the first left (its limit, or rows another prune held), nothing else."""
    cutoff = now - timedelta(days=retention_days)
    deleted, batches, more = delete_in_batches(
        engine,
        delete=lambda conn, n: repository.prune_sightings(conn, before=cutoff, limit=n),
        remaining=lambda conn: repository.sightings_before(conn, before=cutoff),
        limit=limit,
        batch=batch,
    )
    result = {
        "deleted": deleted,
        "batches": batches,
        "more": more,
        "cutoff": cutoff.isoformat(),
        "retention_days": retention_days,
        "limit": limit,
    }
    log(logger, logging.INFO, "sightings pruned", job="prune-sightings", **result)
    return result
