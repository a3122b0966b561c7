"""Flow-event maintenance: refresh the roll-up views, create partitions ahead, drop old ones.

Run by the maintenance function on the `refresh-flow-views` and `flow-retention`
schedules (jobs/runs.py names them).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from threatflow.adapters.postgres import unit_of_work
from threatflow.flows import ingest, repository

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

PARTITIONS_AHEAD_DAYS = 7


def refresh_views(*, engine: Engine, now: datetime) -> dict[str, Any]:
    """REFRESH ... CONCURRENTLY each roll-up view, one short transaction per view."""
    took: dict[str, int] = {}
    for view in repository.VIEWS:
        with unit_of_work(engine) as conn:
            took[view] = repository.refresh_view(conn, view, now=now)
    return {"refreshed": took, "at": now.isoformat()}


def retention(*, engine: Engine, now: datetime, retention_days: int, ahead_days: int = PARTITIONS_AHEAD_DAYS) -> dict[str, Any]:
    """Create the next days' partitions; detach and drop those wholly older than the retention, and the
    sources' first-observed times (ingest.undated_time) older than it.

    A partition goes only when its whole day ended before `now - retention_days`,
    so no event younger than the retention is ever dropped.
    """
    today = now.astimezone(UTC).date()
    cutoff = (now - timedelta(days=retention_days)).astimezone(UTC).date()
    with unit_of_work(engine) as conn:
        created = repository.ensure_partitions(conn, [today + timedelta(days=d) for d in range(ahead_days + 1)])
    dropped = []
    with unit_of_work(engine) as conn:
        existing = repository.partitions(conn)
    for partition in existing:
        if partition.end <= cutoff:
            with unit_of_work(engine) as conn:
                gone = repository.drop_partition(conn, partition)  # False: another run dropped it since the listing
            if gone:
                dropped.append(partition.name)
    with unit_of_work(engine) as conn:  # first-observed times of sources whose undated events are gone
        pruned = repository.prune_sources(conn, oldest=ingest.retained_since(now, retention_days))
    return {
        "dropped": dropped,
        "ensured": created,
        "cutoff": cutoff.isoformat(),
        "retention_days": retention_days,
        "sources_pruned": pruned,
    }
