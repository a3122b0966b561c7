"""Routes of the flows function: flow ingest (/api/v1/flows) and event hunting (/api/v1/events).

Ingest needs the analyst role, reads need reader. Ingest goes through the
hunting pipeline (score, store, bridge attack sources to IoCs) in one unit of work;
the host view reads the linked IoC through the iocs domain, shown only when the
caller's TLP clearance covers it (auth/clearance.py), as everywhere else.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec

from threatflow.auth import clearance as tlp_clearance
from threatflow.auth.api import authenticator
from threatflow.auth.model import Role
from threatflow.detect.api import model_snapshot
from threatflow.flows import ingest, repository, search, upload_markers
from threatflow.hunting import pipeline
from threatflow.iocs import repository as ioc_repository
from threatflow.iocs.normalise import host_keys
from threatflow.platform import limits
from threatflow.platform import logging as tf_logging
from threatflow.platform.errors import ConflictError, NotFoundError, ValidationError
from threatflow.platform.web import Request, Response, Router
from threatflow.runtime import Runtime

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from threatflow.flows.repository import EventQuery

log = logging.getLogger("threatflow.flows")
MAX_PROBLEMS_LISTED = 1000
INGEST_JOBS = "flow_ingest_jobs"
INGEST_TOPIC = "flow-ingest"
HOST_WINDOW = timedelta(days=30)
HOST_TOP = 20
RESERVED_SOURCES = ("gcs:", "batch:")  # the flow-ingest worker's sources before it named files `file:`, and the route's default one


class FlowBatch(msgspec.Struct, forbid_unknown_fields=True):
    # The flows are checked here, not by the web layer's generic walk: a batch's thousands of
    # objects always tripped its pre-screen (it counts brackets), so every batch paid a Python walk
    # of its decoded JSON, a fifth of the server's time per flow. Validation rejects NUL, unknown
    # fields and non-numbers item by item; `batch` runs the generic check when the raw body holds
    # a NUL escape or an integer too long for 64 bits.
    batch_field: ClassVar[str] = "flows"
    flows: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1, max_length=ingest.MAX_BATCH)]
    # Optional idempotency: a client resending the same rows (the CLI) names them, so
    # event keys are stable even if batches are cut differently on a resume.
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9:._/-]+$")] | None = None
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Row numbers of the flows in their source (the CLI skips invalid rows); default offset + index.
    positions: list[Annotated[int, msgspec.Meta(ge=0)]] | None = None
    observed_at: datetime | None = None
    # A loader streaming a file (the CLI) asks for invalid flows to be skipped and listed
    # instead of failing the batch: validation then happens once, here, not also in the client.
    skip_invalid: bool = False


class UploadJobIn(msgspec.Struct, forbid_unknown_fields=True):
    object: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    bucket: Annotated[str, msgspec.Meta(min_length=3, max_length=222)] | None = None
    # Checks the caller's role, the bucket and that a model is served, and queues nothing (200): `flows load
    # --upload` asks it before copying a file of up to 2 GiB that the job request would then refuse.
    dry_run: bool = False


def readable_job(request: Request, job: Mapping[str, Any]) -> bool:
    """An upload job is read by the user who queued it and by admins, as IoC import jobs are: to anyone
    else it does not exist (404, not 403, so a guessed or leaked id is not confirmed)."""
    principal = request.principal
    if principal is None:
        return False
    return principal.role is Role.ADMIN or (job.get("requested_by") is not None and job.get("requested_by") == principal.username)


def build_router(runtime: Runtime) -> Router:
    router = Router("flows", runtime=runtime, authenticator=authenticator(runtime))
    settings = runtime.settings
    lazy: dict[str, Any] = {}  # clients are built on first use, not at import (cold starts)

    def cache() -> search.SearchCache:
        if "cache" not in lazy:
            lazy["cache"] = search.SearchCache(
                mode=settings.flows_search_cache, redis=lambda: runtime.redis, documents=lambda: runtime.documents
            )
        return lazy["cache"]  # type: ignore[no-any-return]

    # -- ingest ---------------------------------------------------------------------------

    @router.route("POST", "/api/v1/flows/batch", role=Role.ANALYST, body=FlowBatch)
    def batch(request: Request, body: FlowBatch) -> dict[str, Any]:
        if b"\\u0000" in request.body or limits.has_long_digits(request.body):
            limits.check_raw_json(request.body)  # rare: the full walk names the field
        if body.source is not None and body.source.startswith(RESERVED_SOURCES):
            # An upload's events were keyed by its sha256 under gcs: (a job an earlier version started still is) and a
            # batch's by its hash (batch:): a client naming either stored its own rows first under those keys, and the
            # upload's own were "duplicates". Uploads are now file:, as `flows load` names the file: an event's key covers
            # its flow, so rows posted first under that name are other events, never the upload's.
            raise ValidationError(
                f"source may not start with {' or '.join(RESERVED_SOURCES)}: those name uploads and unnamed batches", field="source"
            )
        canonical, fields, problems = ingest.validate(body.flows)
        if body.positions is not None and len(body.positions) != len(body.flows):
            raise ValidationError("positions must have one row number per flow", field="positions")
        now = runtime.clock.now()
        oldest = ingest.retained_since(now, settings.flows_retention_days)
        canonical, fields, problems = ingest.drop_unretained(canonical, fields, problems, count=len(body.flows), oldest=oldest)
        skipped: dict[str, Any] = {"invalid": 0, "problems": [], "problems_total": 0} if body.skip_invalid else {}
        positions = body.positions
        listed = [p.to_json() for p in problems[:MAX_PROBLEMS_LISTED]]
        if problems and body.skip_invalid:
            keep = ingest.valid_indices(len(body.flows), problems)
            positions = [(positions[i] if positions is not None else body.offset + i) for i in keep]
            skipped = {"invalid": len(body.flows) - len(keep), "problems": listed, "problems_total": len(problems)}
        elif problems:
            first = problems[0]
            flows_bad = len({p.index for p in problems})
            raise ValidationError(
                f"{len(problems)} invalid field(s) in {flows_bad} flow(s); first: flows[{first.index}].{first.field}: {first.reason}",
                field=f"flows[{first.index}].{first.field}",
                details={"field": f"flows[{first.index}].{first.field}", "errors": listed, "total": len(problems)},
            )
        observed_at = body.observed_at or now
        if observed_at.tzinfo is None:
            raise ValidationError("observed_at needs a time zone", field="observed_at")
        if observed_at > now + ingest.MAX_AHEAD:  # each day is a partition: 9999-12-31 broke the retention job
            raise ValidationError("observed_at is in the future; flows are observed up to now", field="observed_at")
        if observed_at < oldest:  # year 1 at +14:00 was a 500 (its UTC day is before year 1), 1970 a partition
            raise ValidationError(
                f"observed_at is older than the {settings.flows_retention_days}-day retention (FLOWS_RETENTION_DAYS)", field="observed_at"
            )
        source = body.source or "batch:" + hashlib.sha256(request.body).hexdigest()[:32]
        if not canonical:  # every flow skipped as invalid
            return {"received": 0, "stored": 0, "duplicates": 0, "predicted_attacks": 0, **skipped}
        if body.observed_at is None:  # undated flows: when the source was first observed, so a re-send is a no-op
            observed_at = ingest.undated_time(runtime.engine, source, fields, now=now, oldest=oldest)
        return skipped | pipeline.ingest_batch(
            canonical,
            fields,
            engine=runtime.engine,
            model=model_snapshot(runtime).get(),
            source=source,
            first_position=body.offset,
            positions=positions,
            observed_at=observed_at,
            threshold=settings.flows_bridge_threshold,
            enrich_per_hour=settings.flows_bridge_enrich_per_hour,
            publisher=runtime.publisher,
            policies=runtime.decay_policies().get(),
            warninglists=runtime.warninglist_matcher(),
            now=now,
            shown_to=tlp_clearance.of(request.principal),  # the answer's bridge counts: IoCs within the caller's clearance
            authorise=None,  # the request's token was checked as it came in
        )

    @router.route("POST", "/api/v1/flows/uploads", role=Role.ANALYST, body=UploadJobIn)
    def upload(request: Request, body: UploadJobIn) -> Response:
        """Queue an uploaded UNSW CSV (in the uploads bucket) for the flow-ingest worker."""
        from threatflow.platform import events

        bucket = body.bucket or settings.bucket_uploads
        if bucket != settings.bucket_uploads:
            raise ValidationError(f"uploads are read from the uploads bucket ({settings.bucket_uploads}) only", field="bucket")
        limits.check_object_name(body.object)  # also before a dry run: the name is the one the upload will be given
        if body.dry_run:
            model_snapshot(runtime).get()
            return Response({"dry_run": True, "bucket": bucket, "object": body.object}, status=200)
        try:
            generation = runtime.blobs.stat(bucket, body.object).generation
        except NotFoundError:
            raise NotFoundError(f"no object {body.object!r} in bucket {bucket!r}; upload it first") from None
        # Every flow is scored as it is stored: with no model served, each delivery of the job would fail and be retried
        # ("running", 0 rows, until the stalled-job sweep gave up on it). The 503 names the command, as /flows/batch does.
        model_snapshot(runtime).get()
        # One active job per object generation: each job reads the whole object (up to 2 GiB), so twenty
        # posts of one object were twenty full passes. The marker is claimed atomically (upload_markers):
        # of requests at the same instant only the one that claims it queues a job.
        active_id = upload_markers.marker_id(bucket, body.object, generation)
        job_id = uuid.uuid4().hex
        created = runtime.clock.now()
        existing = upload_markers.claim(
            runtime.documents,
            active_id,
            job_id=job_id,
            bucket=bucket,
            name=body.object,
            generation=generation,
            requested_by=request.principal.username if request.principal else None,
            now=created,
        )
        if existing is not None:
            if not readable_job(request, existing):  # its id and progress are its owner's (and admins')
                raise ConflictError(
                    f"object {body.object!r} (this generation) is already being ingested by another user's job;"
                    " its events are stored once; post again after that job ends, or upload the file again"
                )
            return Response({**existing, "status_url": f"/api/v1/flows/uploads/{existing['job_id']}", "deduplicated": True}, status=202)
        job = {
            "job_id": job_id,
            "state": "queued",
            "bucket": bucket,
            "object": body.object,
            "rows_done": 0,
            "stored": 0,
            "duplicates": 0,
            "invalid": 0,
            "created_at": created,
            "updated_at": created,  # a job nothing runs is found by recover-stalled-flow-ingest-jobs from here
            "requested_by": request.principal.username if request.principal else None,
            # The job acts for this account as it is when the worker runs (auth.requester.acting_for, as an async IoC
            # import): no stored event or IoC once the token that queued it would be refused or the role no longer writes.
            "requested_by_id": request.principal.user_id if request.principal else None,
            "requester_version": request.principal.version if request.principal else None,
        }
        try:
            runtime.documents.set(INGEST_JOBS, job_id, job)
            try:
                runtime.publisher.publish(INGEST_TOPIC, events.encode({"job_id": job_id}), {"job_id": job_id})
            except Exception as exc:
                # Nothing will run it: no job left "queued" forever. A delete that fails too is logged, and the
                # publish's error is still the one answered (recover-stalled-flow-ingest-jobs publishes such a job).
                tf_logging.cleanup_after(
                    exc,
                    lambda: runtime.documents.delete(INGEST_JOBS, job_id),
                    logger=log,
                    what="deleting an unpublished job",
                    job_id=job_id,
                )
                raise
        except Exception:
            # The next post of the object claims it at once; a marker left here would be taken over after its grace.
            with contextlib.suppress(Exception):
                upload_markers.release(runtime.documents, active_id, job_id=job_id)
            raise
        return Response({**job, "status_url": f"/api/v1/flows/uploads/{job_id}"}, status=202)

    @router.route("GET", "/api/v1/flows/uploads/{job_id}", role=Role.READER)
    def upload_job(request: Request) -> dict[str, Any]:
        job_id = request.path_params["job_id"]
        if not job_id.isalnum() or len(job_id) > 64:
            raise ValidationError("job_id is a 32-character hex id", field="job_id")
        job = runtime.documents.get(INGEST_JOBS, job_id)
        if job is None or not readable_job(request, job):  # another user's job does not exist for the caller
            raise NotFoundError(f"no flow ingest job {job_id!r}")
        return job

    # -- search and hunting -------------------------------------------------------------------

    @router.route("GET", "/api/v1/events/search", role=Role.READER)
    def search_events(request: Request) -> Response:
        request.refuse_repeated()
        use_cache = cache().enabled()
        now = runtime.clock.now()
        query = None
        if use_cache:
            try:  # a window ending "now" ends at the cache period's last boundary, so repeats share a key
                query = search.parse_search(request.query, now=search.round_now(now, phase=search.cache_phase(request.query)))
            except ValidationError:  # e.g. `from` within the current period: the rounded clock cannot hold it
                use_cache = False
        if query is None:
            query = search.parse_search(request.query, now=now)  # a real error is raised here, as without the cache
        if use_cache:
            key = cache().key(query)
            hit = cache().get(key)
            if hit is not None:
                return Response(hit, headers={"X-Cache": "hit"})
            with search_connection(query) as conn:
                payload = search.search(query, conn=conn)
            cache().put(key, payload)
            return Response(payload, headers={"X-Cache": "miss"})
        with search_connection(query) as conn:
            return Response(search.search(query, conn=conn))

    def search_connection(query: EventQuery) -> contextlib.AbstractContextManager[Connection]:
        engine = runtime.read_engine(search.SEARCH_SESSION) if search.uses_read_pool(query) else runtime.engine
        # Waiting for a connection longer than the search may run helps nobody: the pool's own 10 s
        # held a request (and its client) that long before the 503.
        return repository.read_only(engine, wait_seconds=search.SEARCH_TIMEOUT_MS / 1000)

    def window(request: Request, default: timedelta, maximum: timedelta) -> tuple[datetime, datetime]:
        return search.parse_window(request.query, now=runtime.clock.now(), default=default, maximum=maximum)

    def hunt_deadline(what: str) -> repository.Deadline:
        """Started before the request takes a connection: the pool's queue is part of its budget."""
        return repository.Deadline(what, budget_ms=settings.flows_hunt_timeout_ms)

    def rollup(
        request: Request, fetch: Callable[..., list[dict[str, Any]]], *, view: str, key: str, default_limit: int, max_limit: int
    ) -> dict[str, Any]:
        """One hourly materialised-view roll-up over ?from&to, top ?limit rows, with the view's refresh time.

        The views hold whole hours, so the figures cover every hour the window touches: the answer's
        `window` is that span (from rounded down, to rounded up to the hour), not the one asked for."""
        request.only("from", "to", "limit")
        start, end = window(request, timedelta(days=1), timedelta(days=400))
        first_hour, past_hour = search.whole_hours_within(start, end, maximum=timedelta(days=400))
        limit = request.query_int("limit", default_limit, minimum=1, maximum=max_limit)
        deadline = hunt_deadline("roll-up")  # one budget for the connection and both statements
        with deadline.unit_of_work(runtime.engine) as conn:
            rows = fetch(conn, start=start, end=end, limit=limit, deadline=deadline)
            refreshed = repository.view_refreshed_at(conn, deadline=deadline).get(view)
        covered = {"from": first_hour.isoformat(), "to": past_hour.isoformat(), "resolution_seconds": 3600}
        return {"window": covered, key: rows, "refreshed_at": refreshed}

    @router.route("GET", "/api/v1/events/top/attack-categories", role=Role.READER)
    def top_categories(request: Request) -> dict[str, Any]:
        return rollup(
            request,
            repository.top_attack_categories,
            view="flow_attack_categories_hourly",
            key="categories",
            default_limit=10,
            max_limit=100,
        )

    @router.route("GET", "/api/v1/events/stats/bytes-by-proto", role=Role.READER)
    def bytes_by_proto(request: Request) -> dict[str, Any]:
        return rollup(
            request, repository.bytes_by_proto, view="flow_bytes_by_proto_hourly", key="protocols", default_limit=20, max_limit=200
        )

    @router.route("GET", "/api/v1/events/timeline", role=Role.READER)
    def timeline(request: Request) -> dict[str, Any]:
        request.only("srcip", "from", "to")
        srcip = search.parse_ip(request.query.get("srcip"), "srcip")
        if srcip is None:
            raise ValidationError("srcip is required", field="srcip")
        # Whole hours, as the roll-ups: a bucket is labelled with its hour, and the first and last counted only
        # their part inside from/to. The answer's window is the span counted, and the 31 days bound it.
        start, end = search.whole_hours_within(*window(request, timedelta(days=7), timedelta(days=31)), maximum=timedelta(days=31))
        deadline = hunt_deadline("timeline")
        with deadline.unit_of_work(runtime.engine) as conn:
            hours = repository.timeline(conn, srcip=srcip, start=start, end=end, deadline=deadline)
        covered = {"from": start.isoformat(), "to": end.isoformat(), "resolution_seconds": 3600}
        return {"srcip": srcip, "window": covered, "hours": hours}

    @router.route("GET", "/api/v1/events/hosts/{ip}", role=Role.READER)
    def host(request: Request) -> dict[str, Any]:
        request.only("from", "to")
        ip = search.parse_ip(request.path_params["ip"], "ip")
        if ip is None:
            raise ValidationError("ip is required", field="ip")
        start, end = window(request, HOST_WINDOW, timedelta(days=92))
        # One deadline (FLOWS_HUNT_TIMEOUT_MS) for the wait for a connection and the seven statements, not 5 s each.
        deadline = hunt_deadline("host view")
        with deadline.unit_of_work(runtime.engine) as conn:
            summary = repository.host_summary(conn, ip=ip, start=start, end=end, top=HOST_TOP, deadline=deadline)
            clearance = tlp_clearance.of(request.principal)
            deadline.arm(conn)
            with deadline.cancellations():
                # Under either spelling of the host (an IPv4 address also as ::ffff:a.b.c.d typed ipv6); an IoC
                # above the caller's TLP clearance does not exist for them: the next spelling's, or none.
                record = ioc_repository.first_by_values(conn, host_keys(ip), readable=lambda tlp: tlp_clearance.can_read(clearance, tlp))
        linked = None
        if record is not None:
            ioc = record.to_json()
            linked = {
                k: ioc[k]
                for k in (
                    "id",
                    "type",
                    "value",
                    "tlp",
                    "verdict",
                    "score",
                    "severity",
                    "tags",
                    "sources",
                    "first_seen",
                    "last_seen",
                    "detection_count",
                )
            }
        seen = [summary[r][k] for r in ("as_source", "as_destination") for k in ("first_seen", "last_seen") if summary[r][k]]
        return {
            "ip": ip,
            "window": {"from": start.isoformat(), "to": end.isoformat()},
            "first_seen": min(seen) if seen else None,
            "last_seen": max(seen) if seen else None,
            **summary,
            "ioc": linked,
        }

    return router
