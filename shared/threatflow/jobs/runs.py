"""Maintenance runs: idempotent execution records in Firestore.

A run id comes with the message (or is its message id), so a redelivered
message finds its run already succeeded and does nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from threatflow.platform.errors import NotFoundError, ValidationError
from threatflow.platform.ports import BlobStore, Clock, DocumentStore, Publisher, Versioned

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from threatflow.platform.config import Settings

log = logging.getLogger(__name__)

RUNS = "maintenance_runs"
HEARTBEATS = "heartbeats"


class RunState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class JobContext:
    engine: Engine
    documents: DocumentStore
    blobs: BlobStore
    clock: Clock
    settings: Settings
    run_id: str
    params: Mapping[str, Any]
    # The jobs that queue work again publish with it; built on first use (lambda: runtime.publisher), so the
    # jobs that publish nothing never load the Pub/Sub client.
    publisher: Callable[[], Publisher] | None = None

    def require_publisher(self) -> Publisher:
        if self.publisher is None:
            raise RuntimeError("this maintenance job publishes messages: build its JobContext with a publisher")
        return self.publisher()


def heartbeat(ctx: JobContext) -> dict[str, Any]:
    """Records the last tick, so an alert can fire when the scheduler path stalls."""
    now = ctx.clock.now()
    ctx.documents.set(HEARTBEATS, "maintenance", {"at": now, "run_id": ctx.run_id})
    return {"at": now.isoformat()}


# A delivery of the maintenance function lasts at most its timeout (540 s, functions/topology.yaml) and each
# attempt writes started_at again: a run still 'running' an hour after its last attempt started has no
# delivery left (one killed by the timeout or out of memory runs no `except` to record it failed).
ABANDONED_AFTER = timedelta(hours=1)
PURGE_PAGE = 200


def abandoned_runs(documents: DocumentStore, *, before: datetime, limit: int) -> list[dict[str, Any]]:
    """Runs still 'running' whose last attempt started before `before`, oldest first (index (state, started_at))."""
    return documents.query(
        RUNS, where=[("state", "==", RunState.RUNNING.value), ("started_at", "<", before)], order_by="started_at", limit=limit
    )


def close_abandoned(documents: DocumentStore, *, now: datetime) -> int:
    """Marks failed the runs no delivery is running any more, each by compare-and-set on the run as read
    (a redelivery that starts it again in between wins); returns how many were closed."""
    closed = 0
    while True:
        page = abandoned_runs(documents, before=now - ABANDONED_AFTER, limit=PURGE_PAGE)
        done = 0
        for doc in page:
            current = documents.get_versioned(RUNS, doc["id"])
            if current is None or current.data.get("state") != RunState.RUNNING.value:
                continue
            error = (
                f"abandoned: attempt {current.data.get('attempts', '?')} started {current.data.get('started_at')} and no delivery"
                " finished it (killed by the function's timeout or out of memory, or its redelivery came too late)"
            )
            change = {"state": RunState.FAILED.value, "error": error, "finished_at": now}
            if documents.update_if_unchanged(RUNS, doc["id"], change, version=current.version) is not None:
                done += 1
        closed += done
        if len(page) < PURGE_PAGE or done == 0:
            return closed


def purge_runs(ctx: JobContext) -> dict[str, Any]:
    """Closes abandoned runs (see ABANDONED_AFTER), then deletes runs finished before the retention; then deletes at
    most params.applied_limit async import jobs' applied records past their retention (stalled_imports.prune_applied),
    in the result's `import_jobs_applied`."""
    from threatflow.intel import stalled_imports

    applied_limit = int_param(
        ctx.params, "applied_limit", default=stalled_imports.PRUNE_LIMIT, minimum=1, maximum=stalled_imports.PRUNE_MAX
    )
    now = ctx.clock.now()
    abandoned = close_abandoned(ctx.documents, now=now)
    cutoff = now - timedelta(days=ctx.settings.run_retention_days)
    deleted = 0
    while True:
        old = ctx.documents.query(RUNS, where=[("finished_at", "<", cutoff)], limit=PURGE_PAGE)
        for doc in old:
            ctx.documents.delete(RUNS, doc["id"])
        deleted += len(old)
        if len(old) < PURGE_PAGE:
            break
    applied = stalled_imports.prune_applied(engine=ctx.engine, now=now, limit=applied_limit)
    return {"deleted": deleted, "cutoff": cutoff.isoformat(), "abandoned": abandoned, "import_jobs_applied": applied}


def decay_iocs(ctx: JobContext) -> dict[str, Any]:
    from threatflow.iocs import service

    return service.decay_and_expire(engine=ctx.engine, now=ctx.clock.now())


def sync_warninglists(ctx: JobContext) -> dict[str, Any]:
    """Validates WARNINGLISTS_SOURCE and writes the compiled snapshot the functions load."""
    from threatflow.iocs import warninglists

    return warninglists.sync(source=ctx.settings.warninglists_source, blobs=ctx.blobs, bucket=ctx.settings.bucket_models, clock=ctx.clock)


def sync_attack(ctx: JobContext) -> dict[str, Any]:
    """Fetches ATTACK_SOURCE, validates it and writes the ATT&CK snapshot the functions load."""
    from threatflow.threats import attack

    return attack.sync(
        source=ctx.settings.attack_source,
        blobs=ctx.blobs,
        bucket=ctx.settings.bucket_models,
        clock=ctx.clock,
        force=bool_param(ctx.params, "force", default=False),
    )


def retrain_flows(ctx: JobContext) -> dict[str, Any]:
    """Retrains the flow model on stored labelled flow events; promotes the candidate only if it beats the serving model.

    The manifest's schedule ships with params.enabled false (a run then does nothing); a manual run
    (`threatflow jobs run retrain-flows`) leaves params.enabled out (devstack/scheduler.py: manual_body)
    and trains. params.evaluation_object names a trusted evaluation set in the models bucket
    (flows/retrain.py); without it the stored flows are split.
    """
    if not bool_param(ctx.params, "enabled", default=True):
        return {"status": "disabled", "enable": "set body.params.enabled: true on schedule retrain-flows in functions/topology.yaml"}
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.flows import retrain
    from threatflow.flows.repository import labelled_flows

    def fetch(limit: int) -> Iterator[dict[str, Any]]:
        with unit_of_work(ctx.engine) as conn:  # the cursor streams in this transaction: retrain holds the flows compactly
            yield from labelled_flows(conn, limit=limit)

    return retrain.retrain(
        labelled_flows=fetch,
        blobs=ctx.blobs,
        bucket=ctx.settings.bucket_models,
        now=ctx.clock.now,
        # At most the default: its memory is measured against the function's (retrain.training_config); 5x it was allowed.
        min_rows=int_param(ctx.params, "min_rows", default=retrain.DEFAULT_MIN_ROWS, minimum=1, maximum=retrain.DEFAULT_MAX_ROWS),
        max_rows=int_param(ctx.params, "max_rows", default=retrain.DEFAULT_MAX_ROWS, minimum=1, maximum=retrain.DEFAULT_MAX_ROWS),
        evaluation_object=object_param(ctx.params, "evaluation_object"),
    )


def object_param(params: Mapping[str, Any], name: str) -> str | None:
    """A job's optional object name (in the models bucket): absent, null or empty means none."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 1024 or value.startswith("/") or ".." in value.split("/"):
        raise ValidationError(f"params.{name} must be an object name in the models bucket", field=f"params.{name}")
    return value


def bool_param(params: Mapping[str, Any], name: str, *, default: bool) -> bool:
    """A job's boolean parameter: true, false, or absent/null for the default. Anything else fails the run
    for good: bool("false") is True, so {"force": "false"} forced a truncated ATT&CK source over a good snapshot."""
    value = params.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValidationError(f"params.{name} must be true or false", field=f"params.{name}")
    return value


def int_param(params: Mapping[str, Any], name: str, *, default: int, minimum: int, maximum: int) -> int:
    """A job's integer parameter, in range: a bad one fails the run for good (retrying cannot fix it);
    retention_days=-1 would otherwise drop every partition up to tomorrow."""
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValidationError(f"params.{name} must be an integer from {minimum} to {maximum}", field=f"params.{name}")
    return value


def refresh_flow_views(ctx: JobContext) -> dict[str, Any]:
    """REFRESH ... CONCURRENTLY the flow-event roll-up views."""
    from threatflow.flows import events_jobs

    return events_jobs.refresh_views(engine=ctx.engine, now=ctx.clock.now())


RETENTION_DAYS_MAX = 36_500


def flow_retention(ctx: JobContext) -> dict[str, Any]:
    """Creates the coming days' flow-event partitions and drops those past FLOWS_RETENTION_DAYS;
    then prunes the flow bridge's old enrichment-budget hours."""
    from threatflow.adapters.postgres import unit_of_work
    from threatflow.flows import events_jobs
    from threatflow.hunting import bridge

    days = int_param(ctx.params, "retention_days", default=ctx.settings.flows_retention_days, minimum=1, maximum=RETENTION_DAYS_MAX)
    now = ctx.clock.now()
    result = events_jobs.retention(engine=ctx.engine, now=now, retention_days=days)
    with unit_of_work(ctx.engine) as conn:
        pruned = bridge.prune_enrichment_budget(conn, now=now)
    return {**result, "bridge_budget_hours_pruned": pruned}


def prune_sightings(ctx: JobContext) -> dict[str, Any]:
    """Deletes the IoC sightings seen more than params.retention_days ago (default 365), at most params.limit
    per invocation in short transactions; `more` says some remain. The IoCs' own first_seen, last_seen and
    detection_count are left as they are (iocs/retention.py)."""
    from threatflow.iocs import retention

    return retention.prune_sightings(
        engine=ctx.engine,
        now=ctx.clock.now(),
        retention_days=int_param(
            ctx.params, "retention_days", default=retention.RETENTION_DAYS, minimum=1, maximum=retention.RETENTION_DAYS_MAX
        ),
        limit=int_param(ctx.params, "limit", default=retention.PRUNE_LIMIT, minimum=1, maximum=retention.PRUNE_MAX),
    )


def close_overdue_enrichment_runs(ctx: JobContext) -> dict[str, Any]:
    """Closes enrichment runs past their deadline that nobody read, through the same close as
    enrich-aggregate and GET /runs/{id}; at most params.limit runs per invocation, `more` says if some remain.
    Then (`queued` in the result, bounded by the same limit) dispatches again, or closes, runs that
    enrich-dispatch never started."""
    from threatflow.enrichment import closing
    from threatflow.intel import enrichment as intel_enrichment

    limit = int_param(ctx.params, "limit", default=closing.SWEEP_LIMIT, minimum=1, maximum=closing.SWEEP_MAX)
    overdue = closing.close_overdue(
        documents=ctx.documents,
        engine=ctx.engine,
        now=ctx.clock.now,
        reliability=closing.reliability(),
        apply_verdict=intel_enrichment.apply_verdict,
        limit=limit,
    )
    return {**overdue, "queued": closing.sweep_queued(documents=ctx.documents, publisher=ctx.require_publisher(), limit=limit)}


def recover_stalled_flow_ingest_jobs(ctx: JobContext) -> dict[str, Any]:
    """Publishes again the message of flow-ingest jobs that no delivery is running (queued or running,
    not written for longer than a lease and a timeout, no live lease), and fails those recovered too
    often; at most params.limit jobs per invocation, `more` says if some remain."""
    from threatflow.flows import ingest_jobs

    return ingest_jobs.recover_stalled(
        documents=ctx.documents,
        publisher=ctx.require_publisher(),
        now=ctx.clock.now,
        limit=int_param(ctx.params, "limit", default=ingest_jobs.SWEEP_LIMIT, minimum=1, maximum=ingest_jobs.SWEEP_MAX),
    )


def fail_stalled_import_jobs(ctx: JobContext) -> dict[str, Any]:
    """Fails the async import jobs nothing will run again (dead-lettered, killed, lost), with the reason, so the
    user polling GET /import/{id} is told; at most params.limit jobs per invocation, `more` says if some remain."""
    from threatflow.intel import stalled_imports

    return stalled_imports.fail_stalled(
        documents=ctx.documents,
        engine=ctx.engine,
        now=ctx.clock.now,
        limit=int_param(ctx.params, "limit", default=stalled_imports.SWEEP_LIMIT, minimum=1, maximum=stalled_imports.SWEEP_MAX),
    )


JOBS: dict[str, Callable[[JobContext], dict[str, Any]]] = {
    "heartbeat": heartbeat,
    "decay-iocs": decay_iocs,
    "purge-runs": purge_runs,
    "sync-warninglists": sync_warninglists,
    "sync-attack": sync_attack,
    "retrain-flows": retrain_flows,
    "refresh-flow-views": refresh_flow_views,
    "flow-retention": flow_retention,
    "prune-sightings": prune_sightings,
    "close-overdue-enrichment-runs": close_overdue_enrichment_runs,
    "recover-stalled-flow-ingest-jobs": recover_stalled_flow_ingest_jobs,
    "fail-stalled-import-jobs": fail_stalled_import_jobs,
}


def require_job(name: str) -> None:
    if name not in JOBS:
        raise ValidationError(f"unknown job {name!r}; known jobs: {', '.join(sorted(JOBS))}", field="job")


# -- the params each job takes -------------------------------------------------------------------------
# Declared once and checked before a run is queued (POST /api/v1/admin/jobs/{job}/run) and again when it runs
# (a message published around the API): {"retention_day": 30}, a typo, ran flow-retention with the default.


@dataclass(frozen=True)
class IntParam:
    minimum: int
    maximum: int

    def check(self, params: Mapping[str, Any], name: str) -> None:
        int_param(params, name, default=self.minimum, minimum=self.minimum, maximum=self.maximum)


@dataclass(frozen=True)
class BoolParam:
    def check(self, params: Mapping[str, Any], name: str) -> None:
        bool_param(params, name, default=False)


@dataclass(frozen=True)
class ObjectParam:
    def check(self, params: Mapping[str, Any], name: str) -> None:
        object_param(params, name)


Param = IntParam | BoolParam | ObjectParam


def _retrain_flows_params() -> dict[str, Param]:
    from threatflow.flows import retrain

    rows = IntParam(1, retrain.DEFAULT_MAX_ROWS)
    return {"enabled": BoolParam(), "min_rows": rows, "max_rows": rows, "evaluation_object": ObjectParam()}


def _prune_sightings_params() -> dict[str, Param]:
    from threatflow.iocs import retention

    return {"retention_days": IntParam(1, retention.RETENTION_DAYS_MAX), "limit": IntParam(1, retention.PRUNE_MAX)}


def _close_overdue_params() -> dict[str, Param]:
    from threatflow.enrichment import closing

    return {"limit": IntParam(1, closing.SWEEP_MAX)}


def _recover_stalled_params() -> dict[str, Param]:
    from threatflow.flows import ingest_jobs

    return {"limit": IntParam(1, ingest_jobs.SWEEP_MAX)}


def _purge_runs_params() -> dict[str, Param]:
    from threatflow.intel import stalled_imports

    return {"applied_limit": IntParam(1, stalled_imports.PRUNE_MAX)}


def _fail_stalled_imports_params() -> dict[str, Param]:
    from threatflow.intel import stalled_imports

    return {"limit": IntParam(1, stalled_imports.SWEEP_MAX)}


# Per job, its params by name (built on use: the bounds live in the jobs' own modules, loaded lazily).
JOB_PARAMS: dict[str, Callable[[], Mapping[str, Param]]] = {
    "heartbeat": dict,
    "decay-iocs": dict,
    "purge-runs": _purge_runs_params,
    "sync-warninglists": dict,
    "sync-attack": lambda: {"force": BoolParam()},
    "retrain-flows": _retrain_flows_params,
    "refresh-flow-views": dict,
    "flow-retention": lambda: {"retention_days": IntParam(1, RETENTION_DAYS_MAX)},
    "prune-sightings": _prune_sightings_params,
    "close-overdue-enrichment-runs": _close_overdue_params,
    "recover-stalled-flow-ingest-jobs": _recover_stalled_params,
    "fail-stalled-import-jobs": _fail_stalled_imports_params,
}


def validate_params(job: str, params: Any) -> None:
    """Raises ValidationError naming the first unknown or bad param of `job` (field params.<name>)."""
    require_job(job)
    if not isinstance(params, Mapping):
        raise ValidationError("params must be an object", field="params")
    declared = JOB_PARAMS[job]()
    for name in params:
        if name not in declared:
            takes = ", ".join(sorted(declared)) or "none"
            raise ValidationError(f"job {job} takes no param {name!r} (it takes: {takes})", field=f"params.{name}")
    for name, param in declared.items():
        param.check(params, name)


@dataclass(frozen=True)
class RunLease:
    """How a running delivery shows it is alive: it renews lease_until (now + seconds) every renew_every
    seconds; another delivery of the same run polls every poll_every seconds for a renewal or a lapse. A delivery
    renews for `longest` seconds at most (the maintenance function's timeout_seconds, functions/topology.yaml): past
    it Pub/Sub has had its answer (a timeout: redeliver), but Cloud Run does not stop the code, and a hung job's
    renewals would keep every redelivery answering duplicate_delivery for as long as the instance lived."""

    seconds: float = 60.0
    renew_every: float = 10.0
    poll_every: float = 2.0
    longest: float = 540.0


LEASE = RunLease()


class _Renewal:
    """Renews a run's lease from a daemon thread while its job works; stops at once when the run names
    another holder (taken over after this delivery stalled past its lease: the job cannot be cancelled,
    but this delivery no longer claims the run)."""

    def __init__(self, documents: DocumentStore, run_id: str, *, holder: str, clock: Clock, lease: RunLease, renew_until: float) -> None:
        self._documents, self._run_id, self._holder, self._clock, self._lease = documents, run_id, holder, clock, lease
        self._renew_until = renew_until  # time.monotonic(): the delivery's start plus lease.longest
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"run-lease-{run_id}", daemon=True)

    def __enter__(self) -> _Renewal:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self._lease.renew_every + 30)

    def _loop(self) -> None:
        while not self._stop.wait(self._lease.renew_every):
            if time.monotonic() >= self._renew_until:
                log.warning("maintenance run outlived its delivery's timeout; lease no longer renewed", extra={"run_id": self._run_id})
                return
            try:
                current = self._documents.get_versioned(RUNS, self._run_id)
                if current is None or current.data.get("holder") != self._holder:
                    log.warning("maintenance run taken over; lease no longer renewed", extra={"run_id": self._run_id})
                    return
                until = self._clock.now() + timedelta(seconds=self._lease.seconds)
                self._documents.update_if_unchanged(RUNS, self._run_id, {"lease_until": until}, version=current.version)
            except Exception:  # a missed renewal is retried at the next tick; a lapsed lease is the worst case
                log.warning("maintenance run lease not renewed", extra={"run_id": self._run_id}, exc_info=True)


def _lease_live(data: Mapping[str, Any], now: datetime) -> bool:
    until = data.get("lease_until")
    return isinstance(until, datetime) and until > now


def _await_holder(documents: DocumentStore, run_id: str, seen: Mapping[str, Any], *, clock: Clock, lease: RunLease) -> Versioned | None:
    """Waits while another delivery holds a live lease on the run. Returns the record once it changed state
    or its lease lapsed (the caller looks again), or None when the holder renewed: it is alive and runs the job."""
    deadline = time.monotonic() + lease.seconds + lease.renew_every
    while time.monotonic() < deadline:
        time.sleep(lease.poll_every)
        current = documents.get_versioned(RUNS, run_id)
        if current is None or current.data.get("state") != RunState.RUNNING.value:
            return current
        if current.data.get("holder") != seen.get("holder") or current.data.get("lease_until") != seen.get("lease_until"):
            return None  # renewed (or taken over) since this delivery arrived: someone live runs it
        if not _lease_live(current.data, clock.now()):
            return current
    return documents.get_versioned(RUNS, run_id)


def execute(
    *,
    job: str,
    run_id: str,
    params: Mapping[str, Any],
    engine: Engine,
    documents: DocumentStore,
    blobs: BlobStore,
    clock: Clock,
    settings: Settings,
    publisher: Callable[[], Publisher] | None = None,
) -> dict[str, Any]:
    """Runs a job once per run id. Pub/Sub delivers at least once, so a second delivery can come while the
    first still works (a duplicate) or after it died (timeout, out of memory; no `except` runs then). The
    running delivery holds a lease it renews (RunLease); another delivery that finds it live waits until it
    sees a renewal (the holder lives: answered without running, the holder finishes the run) or a lapse
    (the holder died: the run is taken over by compare-and-set, so one delivery wins). A succeeded run is
    answered as it is; a failed one, or one without a lease, is run again."""
    require_job(job)
    began = time.monotonic()
    lease = LEASE
    holder = uuid.uuid4().hex
    while True:
        now = clock.now()
        record: dict[str, Any] = {
            "run_id": run_id,
            "job": job,
            "state": RunState.RUNNING.value,
            "started_at": now,
            "attempts": 1,
            "holder": holder,
            "lease_until": now + timedelta(seconds=lease.seconds),
        }
        if documents.create(RUNS, run_id, record):
            break
        current = documents.get_versioned(RUNS, run_id)
        if current is None:
            continue  # deleted in between: create it again
        if current.data.get("state") == RunState.SUCCEEDED.value:
            return current.data  # a redelivery: the work is done
        if current.data.get("state") == RunState.RUNNING.value and _lease_live(current.data, now):
            changed = _await_holder(documents, run_id, current.data, clock=clock, lease=lease)
            if changed is None:
                log.info("maintenance run already running elsewhere", extra={"job": job, "run_id": run_id})
                return {**current.data, "duplicate_delivery": True}
            continue  # finished, failed or lapsed meanwhile: look again
        record["attempts"] = int(current.data.get("attempts", 0)) + 1
        record.update({"error": None, "finished_at": None})
        if documents.update_if_unchanged(RUNS, run_id, record, version=current.version) is not None:
            break
        # another delivery wrote it in between: look again
    ctx = JobContext(
        engine=engine, documents=documents, blobs=blobs, clock=clock, settings=settings, run_id=run_id, params=params, publisher=publisher
    )
    try:
        with _Renewal(documents, run_id, holder=holder, clock=clock, lease=lease, renew_until=began + lease.longest):
            validate_params(job, params)
            result = JOBS[job](ctx)
    except Exception as exc:
        failed = {"state": RunState.FAILED.value, "error": f"{exc.__class__.__name__}: {exc}", "finished_at": clock.now()}
        _record_outcome(documents, run_id, failed, holder=holder)
        raise
    done = {"state": RunState.SUCCEEDED.value, "result": result, "finished_at": clock.now(), "error": None}
    _record_outcome(documents, run_id, done, holder=holder)
    return {**record, **done}


def _record_outcome(documents: DocumentStore, run_id: str, outcome: Mapping[str, Any], *, holder: str) -> bool:
    """Writes a run's outcome while this delivery still holds it (compare-and-set on the run as read). A delivery
    that stalled past its lease and lost the run leaves it to the new holder: its `failed` over the new holder's
    running run let the next delivery run the job a third time alongside it."""
    for _ in range(5):
        current = documents.get_versioned(RUNS, run_id)
        if current is None or current.data.get("holder") != holder:
            log.warning("maintenance run taken over; its outcome is the new holder's to record", extra={"run_id": run_id})
            return False
        if documents.update_if_unchanged(RUNS, run_id, dict(outcome), version=current.version) is not None:
            return True
    log.warning("maintenance run kept changing; outcome not recorded", extra={"run_id": run_id})
    return False


def get_run(run_id: str, *, documents: DocumentStore) -> dict[str, Any]:
    run = documents.get(RUNS, run_id)
    if run is None:
        raise NotFoundError(f"no maintenance run {run_id!r} (yet)")
    return run


def recent_runs(*, documents: DocumentStore, limit: int) -> list[dict[str, Any]]:
    return documents.query(RUNS, order_by="started_at", descending=True, limit=limit)
