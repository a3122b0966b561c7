"""The flow-ingest worker: streams an uploaded UNSW CSV from Cloud Storage into flow events.

A job (Firestore `flow_ingest_jobs/<id>`, made by POST /api/v1/flows/uploads) is
run by one delivery at a time under a lease, and records its progress (rows done)
after every batch. A redelivery after a crash resumes from there; rows it
repeats are no-ops, because each event's key is the file's hash plus the row
number and its time is the flow's stime or the job's creation time.

An upload is untrusted input: its decompressed text, its lines, their length and
the columns of a row are all bounded (a gzip bomb or a 10,000-column header
fails the job, it does not fill the worker's memory), and a file that cannot be
read (corrupt gzip, a CSV field past the csv module's limit, a vanished object)
fails the job with the reason instead of being redelivered forever.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import re
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from threatflow.flows import ingest
from threatflow.flows.model import serving_snapshot
from threatflow.hunting import pipeline
from threatflow.platform.errors import NotFoundError, RetryableError, ValidationError
from threatflow.platform.events import Message
from threatflow.platform.ports import DocumentStore
from threatflow.runtime import Runtime

INGEST_JOBS = "flow_ingest_jobs"
INGEST_LEASES = "flow_ingest_leases"
LEASE_SECONDS = 600  # longer than the function's timeout (540 s): a live run never loses it
BATCH_ROWS = 5000
JOB_ID = re.compile(r"^[0-9a-f]{32}$")  # what POST /api/v1/flows/uploads makes (uuid4().hex)
# Bounds on one upload's decompressed text. The official UNSW-NB15 files are ~2.5 M rows of
# ~250 characters and at most 49 columns (partitioned: 45); these leave ample room for them.
MAX_LINE_CHARS = 16_384
MAX_LINES = 10_000_000
MAX_TEXT_CHARS = 2 * 1024**3
MAX_COLUMNS = 64


class UnreadableUpload(ValueError):
    """The uploaded object is not a readable UNSW CSV within the bounds: retrying cannot help."""


def bounded_lines(text: io.TextIOBase) -> Iterator[str]:
    """The lines of `text`, never reading more than max_line + 1 characters at once.

    A line without an end within the bound (one huge line, binary junk), more lines or more
    text than the bounds (a tiny gzip expanding to millions of rows) raise UnreadableUpload;
    decompression errors (corrupt or truncated gzip) are turned into it too."""
    max_line, max_lines, max_chars = MAX_LINE_CHARS, MAX_LINES, MAX_TEXT_CHARS
    lines = chars = 0
    while True:
        try:
            line = text.readline(max_line + 1)
        except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise UnreadableUpload(f"the upload is not readable after line {lines}: {exc}") from None
        if not line:
            return
        lines += 1
        chars += len(line)
        if len(line) > max_line:
            raise UnreadableUpload(f"line {lines} is longer than {max_line} characters; not a UNSW-NB15 CSV")
        if lines > max_lines:
            raise UnreadableUpload(f"the upload has more than {max_lines} lines; split it into several uploads")
        if chars > max_chars:
            raise UnreadableUpload(f"the upload expands to more than {max_chars} characters; split it into several uploads")
        yield line


def bounded_rows(rows: Iterable[tuple[int, dict[str, Any]]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """read_csv's rows, refusing a row with more columns than any UNSW layout has (a 10,000-column
    header would otherwise make every row a 10,000-problem validation), and csv's own errors."""
    iterator = iter(rows)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field larger than csv.field_size_limit()
            raise UnreadableUpload(f"not a readable CSV: {exc}") from None
        if len(item[1]) > MAX_COLUMNS:
            raise UnreadableUpload(f"row {item[0]} has {len(item[1])} columns; a UNSW-NB15 CSV has at most 49")
        yield item


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
        if not JOB_ID.match(job_id):  # checked before it becomes a Firestore document id ("a/b", "__x__" are errors there)
            raise ValidationError(f"flow-ingest job id {job_id[:80]!r} is not a 32-character hex id", field="job_id")
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
    try:
        data = blobs.get(str(job.get("bucket")), str(job.get("object")))
    except NotFoundError as exc:  # deleted after it was queued: fail the job, do not leave it "running"
        documents.set(INGEST_JOBS, job_id, {"state": "failed", "error": exc.message, "finished_at": clock.now()}, merge=True)
        raise
    source = "gcs:" + hashlib.sha256(data).hexdigest()[:32]
    created = job.get("created_at")
    observed_at = created if isinstance(created, datetime) else datetime.now(UTC)
    progress = {k: int(job.get(k) or 0) for k in ("rows_done", "stored", "duplicates", "invalid", "predicted_attacks")}
    documents.set(INGEST_JOBS, job_id, {"state": "running", "started_at": clock.now(), "source": source}, merge=True)
    try:
        text = ingest.open_text(io.BytesIO(data))
        rows = bounded_rows(ingest.read_csv(bounded_lines(text), skip_rows=progress["rows_done"]))  # type: ignore[arg-type]
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
