"""The flow-ingest worker: streams an uploaded UNSW CSV from Cloud Storage into flow events.

A job (Firestore `flow_ingest_jobs/<id>`, made by POST /api/v1/flows/uploads) is
run by one delivery at a time under a lease, and records its progress (rows done)
after every batch. A redelivery after a crash resumes from there; rows it
repeats are no-ops, because each event's key is the file's hash plus the row
number and its time is the flow's stime or the job's creation time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from threatflow.flows import ingest
from threatflow.flows.model import serving_snapshot
from threatflow.hunting import pipeline
from threatflow.platform.errors import RetryableError, ValidationError
from threatflow.platform.events import Message
from threatflow.platform.ports import DocumentStore
from threatflow.runtime import Runtime

INGEST_JOBS = "flow_ingest_jobs"
INGEST_LEASES = "flow_ingest_leases"
LEASE_SECONDS = 600  # longer than the function's timeout (540 s): a live run never loses it
BATCH_ROWS = 5000


@contextlib.contextmanager
def lease(documents: DocumentStore, job_id: str, *, now: datetime) -> Iterator[None]:
    holder = uuid.uuid4().hex
    record = {"holder": holder, "until": now + timedelta(seconds=LEASE_SECONDS)}
    if not documents.create(INGEST_LEASES, job_id, record):
        current = documents.get(INGEST_LEASES, job_id) or {}
        until = current.get("until")
        if until is not None and until > now:
            raise RetryableError(f"flow ingest job {job_id} is being run by another delivery (lease until {until.isoformat()})")
        documents.delete(INGEST_LEASES, job_id)  # expired: its holder died
        if not documents.create(INGEST_LEASES, job_id, record):
            raise RetryableError(f"flow ingest job {job_id} was taken over by another delivery")
    try:
        yield
    finally:
        if (documents.get(INGEST_LEASES, job_id) or {}).get("holder") == holder:
            documents.delete(INGEST_LEASES, job_id)


def build_handler(runtime: Runtime) -> Callable[[Message], dict[str, Any]]:
    """The worker's one service call, with this instance's serving model (the runtime's "flow-model" snapshot)."""
    settings = runtime.settings
    model = serving_snapshot(
        runtime.snapshots,
        blobs=lambda: runtime.blobs,
        bucket=settings.bucket_models,
        refresh_seconds=settings.detect_model_refresh_seconds,
    )

    def ingest_rows(flows: list[dict[str, Any]], positions: list[int], *, source: str, observed_at: datetime) -> dict[str, Any]:
        canonical, fields, problems = ingest.validate(flows)
        keep = ingest.valid_indices(len(flows), problems)
        invalid = len(flows) - len(keep)
        if not keep:
            return {"stored": 0, "duplicates": 0, "invalid": invalid, "first_problem": problems[0].to_json() if problems else None}
        result = pipeline.ingest_batch(
            canonical,
            fields,
            engine=runtime.engine,
            model=model.get(),
            source=source,
            first_position=0,
            positions=[positions[i] for i in keep],
            observed_at=observed_at,
            threshold=runtime.settings.flows_bridge_threshold,
            publisher=runtime.publisher,
            policies=runtime.decay_policies().get(),
            warninglists=runtime.warninglist_matcher(),
            now=runtime.clock.now(),
        )
        result["invalid"] = invalid
        result["first_problem"] = problems[0].to_json() if problems else None
        return result

    def handle(message: Message) -> dict[str, Any]:
        job_id = str(message.attributes.get("job_id") or message.data.get("job_id") or "")
        if not job_id:
            raise ValidationError("flow-ingest message names no job (attribute 'job_id')", field="job_id")
        documents = runtime.documents
        with lease(documents, job_id, now=runtime.clock.now()):
            job = documents.get(INGEST_JOBS, job_id)
            if job is None:
                raise ValidationError(f"no flow ingest job {job_id!r}", field="job_id")
            if job.get("state") in ("succeeded", "failed"):
                return dict(job)  # a redelivery of finished work
            return run_job(job_id, job, documents=documents, blobs=runtime.blobs, ingest_rows=ingest_rows, clock=runtime.clock)

    return handle


def run_job(
    job_id: str,
    job: dict[str, Any],
    *,
    documents: DocumentStore,
    blobs: Any,
    ingest_rows: Callable[..., dict[str, Any]],
    clock: Any,
) -> dict[str, Any]:
    data = blobs.get(job["bucket"], job["object"])
    source = "gcs:" + hashlib.sha256(data).hexdigest()[:32]
    created = job.get("created_at")
    observed_at = created if isinstance(created, datetime) else datetime.now(UTC)
    progress = {k: int(job.get(k) or 0) for k in ("rows_done", "stored", "duplicates", "invalid", "predicted_attacks")}
    documents.set(INGEST_JOBS, job_id, {"state": "running", "started_at": clock.now(), "source": source}, merge=True)
    try:
        rows = ingest.read_csv(ingest.open_text(io.BytesIO(data)), skip_rows=progress["rows_done"])
        flows: list[dict[str, Any]] = []
        positions: list[int] = []

        def flush() -> None:
            result = ingest_rows(flows, positions, source=source, observed_at=observed_at)
            for key in ("stored", "duplicates", "invalid", "predicted_attacks"):
                progress[key] += int(result.get(key) or 0)
            progress["rows_done"] = positions[-1] + 1
            update: dict[str, Any] = {**progress, "updated_at": clock.now()}
            if result.get("first_problem") and not job.get("first_problem"):
                update["first_problem"] = job["first_problem"] = result["first_problem"]
            documents.set(INGEST_JOBS, job_id, update, merge=True)
            flows.clear()
            positions.clear()

        for number, flow in rows:
            flows.append(flow)
            positions.append(number)
            if len(flows) >= BATCH_ROWS:
                flush()
        if flows:
            flush()
    except ValueError as exc:  # not a UNSW CSV: retrying cannot help
        documents.set(INGEST_JOBS, job_id, {"state": "failed", "error": str(exc), "finished_at": clock.now()}, merge=True)
        raise ValidationError(str(exc), field="object") from None
    done = {**progress, "state": "succeeded", "finished_at": clock.now()}
    documents.set(INGEST_JOBS, job_id, done, merge=True)
    return {**job, **done}
