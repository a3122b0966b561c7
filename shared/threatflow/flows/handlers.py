"""The flow-ingest worker: streams an uploaded UNSW CSV from Cloud Storage into flow events.

A job (Firestore `flow_ingest_jobs/<id>`, made by POST /api/v1/flows/uploads) is
run by one delivery at a time under a lease, and records its progress (rows done)
after every batch. A redelivery after a crash resumes from there; rows it
repeats are no-ops, because each event's key is the file's hash plus the row
number and its time is the flow's stime or when the file was first observed
(ingest.undated_time, the same for every job of the file). The lease
(LEASE_SECONDS) is renewed as the delivery goes (Lease.keep: before and after each
batch is stored and during the hash pass, once a quarter of it has passed), so a delivery
that dies leaves it to a redelivery within LEASE_SECONDS; a delivery that finds its
lease taken over stores nothing more, writes no progress, and stops (LeaseTakenOver:
acked, the holder runs the job; LeaseVanished: redelivered).

A long upload is run by a chain of deliveries, never by retries: a delivery whose
time budget (FLOW_INGEST_DELIVERY_SECONDS, well under the function's timeout) is
spent after a batch has its progress recorded (every batch writes it), releases the
lease, publishes a continuation (same topic, same job_id, the next `continuation`
number and a new `continuation_token`), then records that number and token, and acks.
Published before it is recorded, so an instance that dies at any point of the
hand-over leaves a message that resumes the job at once: before the publish, this
delivery's own (redelivered, still current); after it, the continuation (a number
above the job's is current: ingest_jobs.superseded). A message known superseded
(a redelivery whose ack was lost, the losing copy of a continuation published twice)
is acked without waiting for the lease; the lease keeps runs from overlapping, and
MAX_CONTINUATIONS bounds the chain. A job left `queued` or `running` with no delivery
to run it (one killed by the timeout or out of memory) is published again by the
recover-stalled-flow-ingest-jobs maintenance job (flows/ingest_jobs.py).

The object is read as a stream (memory holds a chunk and a batch, not the file),
pinned to the generation the job first saw: a first pass hashes it (the event
keys' `source`, stored on the job so later deliveries skip the pass), a second
parses it. Two passes because each row's event key is made from the whole file's
hash before that row is stored, and a hash is known only at the end of the bytes:
hashing while parsing would store the first delivery's rows under some other key,
and the same file uploaded again (or under another name) would no longer map to
the same events. An object replaced while its job runs fails the job.

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
import logging
import re
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from threatflow.adapters.postgres import unit_of_work
from threatflow.auth import clearance as tlp_clearance
from threatflow.auth import requester as auth_requester
from threatflow.auth.model import Role
from threatflow.auth.repository import UserRepository
from threatflow.flows import ingest
from threatflow.flows.ingest_jobs import (
    INGEST_JOBS,
    INGEST_LEASES,
    INGEST_TOPIC,
    LEASE_SECONDS,
    MAX_DELIVERY_ATTEMPTS,
    WRITE_ATTEMPTS,
    job_message,
    record_continuation,
    superseded,
)
from threatflow.flows.model import serving_snapshot
from threatflow.hunting import pipeline
from threatflow.platform import logging as tf_logging
from threatflow.platform.errors import AuthError, ConflictError, NotFoundError, PermanentError, RetryableError, ValidationError
from threatflow.platform.events import Message
from threatflow.platform.ports import BlobStore, Clock, DocumentStore, Publisher, Versioned
from threatflow.runtime import Runtime

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("threatflow.flows.ingest")
# A delivery releases the lease before it publishes its continuation, so the continuation never waits
# for its own predecessor; this is for a copy of a live message meeting the delivery that runs it.
LEASE_WAIT_SECONDS = 5.0
BATCH_ROWS = 5000
JOB_ID = re.compile(r"^[0-9a-f]{32}$")  # what POST /api/v1/flows/uploads makes (uuid4().hex)
CONTINUATION_TOKEN = re.compile(r"^[0-9a-f]{32}$")  # what continue_job makes (uuid4().hex)
# Bounds on one upload's decompressed text. The official UNSW-NB15 files are ~2.5 M rows of
# ~250 characters and at most 49 columns (partitioned: 45); these leave ample room for them.
MAX_LINE_CHARS = ingest.MAX_LINE_CHARS
MAX_LINES = 10_000_000
MAX_TEXT_CHARS = 2 * 1024**3
MAX_COLUMNS = 64
# Every delivery that continues has stored at least one full batch, so a file within MAX_LINES
# never needs more continuations than this; reaching it means no progress, and the job fails.
MAX_CONTINUATIONS = MAX_LINES // BATCH_ROWS
HASH_CHUNK_BYTES = 1024 * 1024
# A UNSW CSV is ASCII: an object within MAX_TEXT_CHARS has at most this many bytes (gzipped, fewer).
# Checked before the first delivery's hash pass, which reads the whole object within no time budget.
MAX_OBJECT_BYTES = MAX_TEXT_CHARS


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


def bounded_rows(rows: Iterable[ingest.CsvRow]) -> Iterator[ingest.CsvRow]:
    """read_csv_rows's rows, refusing a row with more columns than any UNSW layout has (a 10,000-column
    header would otherwise make every row a 10,000-problem validation), and csv's own errors."""
    iterator = iter(rows)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field larger than csv.field_size_limit()
            raise UnreadableUpload(f"not a readable CSV: {exc}") from None
        if isinstance(item.flow, dict) and len(item.flow) > MAX_COLUMNS:
            raise UnreadableUpload(f"line {item.line} has {len(item.flow)} columns; a UNSW-NB15 CSV has at most 49")
        yield item


class LeaseTakenOver(ConflictError):
    """Another delivery holds the job's lease now (this one's expired unrenewed and was taken over): that one
    runs the job, and its own message answers for it; this delivery stops and its message is acked."""


class LeaseVanished(RetryableError):
    """This delivery's lease is gone and nobody holds it (taken over, then released): the message is redelivered,
    and the redelivery finds the job finished, superseded, or resumes it."""


class Lease:
    """A job's lease as held by one delivery. keep() renews it once a quarter of it has passed, so a live
    delivery that calls it between batches keeps the job, and one that died leaves it to a redelivery
    within `seconds`."""

    def __init__(self, documents: DocumentStore, job_id: str, *, holder: str, seconds: float, clock: Callable[[], datetime]) -> None:
        self.documents, self.job_id, self.holder, self.seconds, self.clock = documents, job_id, holder, seconds, clock
        self.renewed = clock()

    def keep(self) -> None:
        """Renew the lease if due. Fails safe: LeaseTakenOver when another delivery holds it, LeaseVanished
        when nobody does (nothing is written then); a store that fails raises its own error (retried).

        Between renewals the lease is this delivery's until renewed + seconds (a taker needs it expired), so
        a batch stored right after keep() is stored under it unless storing it takes 3/4 of the lease."""
        now = self.clock()
        if (now - self.renewed).total_seconds() < self.seconds / 4:
            return
        read = self.documents.get_versioned(INGEST_LEASES, self.job_id)
        if read is not None and read.data.get("holder") == self.holder:
            until = now + timedelta(seconds=self.seconds)
            if self.documents.update_if_unchanged(INGEST_LEASES, self.job_id, {"until": until}, version=read.version) is not None:
                self.renewed = now
                return
            read = self.documents.get_versioned(INGEST_LEASES, self.job_id)  # written since: by whom?
        if read is None:
            raise LeaseVanished(f"flow ingest job {self.job_id}: this delivery's lease expired and was taken over; it stops")
        raise LeaseTakenOver(f"flow ingest job {self.job_id}: another delivery took over this one's expired lease; it stops")


@contextlib.contextmanager
def lease(
    documents: DocumentStore,
    job_id: str,
    *,
    now: datetime,
    wait_seconds: float | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Iterator[Lease]:
    """Hold the job's lease (LEASE_SECONDS, renewed by Lease.keep) while the block runs, waiting up to
    wait_seconds for a live one (then RetryableError) and taking over an expired one."""
    began = time.monotonic()
    current_time = clock or (lambda: now + timedelta(seconds=time.monotonic() - began))
    seconds = LEASE_SECONDS  # read at each call: tests shorten it
    holder = uuid.uuid4().hex
    give_up = began + (LEASE_WAIT_SECONDS if wait_seconds is None else wait_seconds)
    while not documents.create(INGEST_LEASES, job_id, {"holder": holder, "until": current_time() + timedelta(seconds=seconds)}):
        current = documents.get(INGEST_LEASES, job_id) or {}
        until = current.get("until")
        if until is not None and until <= current_time():
            # Expired: its holder died. Deleted only if it is still that holder's (another delivery that
            # read it may have taken it over since); then whoever creates the lease first runs the job.
            documents.delete_if(INGEST_LEASES, job_id, field="holder", value=current.get("holder"))
        elif time.monotonic() >= give_up:
            held = f" (lease until {until.isoformat()})" if until is not None else ""
            raise RetryableError(f"flow ingest job {job_id} is being run by another delivery{held}")
        else:
            time.sleep(0.2)
    try:
        yield Lease(documents, job_id, holder=holder, seconds=seconds, clock=current_time)
    finally:
        documents.delete_if(INGEST_LEASES, job_id, field="holder", value=holder)


def build_handler(runtime: Runtime) -> Callable[[Message], dict[str, Any]]:
    """The worker's one service call, with this instance's serving model (the runtime's "flow-model" snapshot)."""
    settings = runtime.settings
    model = serving_snapshot(
        runtime.snapshots,
        blobs=lambda: runtime.blobs,
        bucket=settings.bucket_models,
        refresh_seconds=settings.detect_model_refresh_seconds,
    )

    def ingest_rows(
        flows: list[dict[str, Any]], positions: list[int], *, source: str, authorise: Callable[[Connection], object]
    ) -> dict[str, Any]:
        canonical, fields, problems = ingest.validate(flows)
        now = runtime.clock.now()
        oldest = ingest.retained_since(now, settings.flows_retention_days)  # as POST /flows/batch: a partition a day
        canonical, fields, problems = ingest.drop_unretained(canonical, fields, problems, count=len(flows), oldest=oldest)
        keep = ingest.valid_indices(len(flows), problems)
        invalid = len(flows) - len(keep)
        if not keep:
            return {"stored": 0, "duplicates": 0, "invalid": invalid, "first_problem": problems[0].to_json() if problems else None}
        # Undated rows: when the file (its sha256, whatever its name or job) was first observed, so it is stored once.
        observed_at = ingest.undated_time(runtime.engine, source, fields, now=now, oldest=oldest)
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
            enrich_per_hour=runtime.settings.flows_bridge_enrich_per_hour,
            publisher=runtime.publisher,
            policies=runtime.decay_policies().get(),
            warninglists=runtime.warninglist_matcher(),
            now=runtime.clock.now(),
            shown_to=tlp_clearance.SYSTEM,  # the job's record keeps none of the bridge's counts
            authorise=authorise,
        )
        result["invalid"] = invalid
        result["first_problem"] = problems[0].to_json() if problems else None
        return result

    def handle(message: Message) -> dict[str, Any]:
        started = runtime.clock.now()
        job_id = str(message.attributes.get("job_id") or message.data.get("job_id") or "")
        if not job_id:
            raise ValidationError("flow-ingest message names no job (attribute 'job_id')", field="job_id")
        if not JOB_ID.match(job_id):  # checked before it becomes a Firestore document id ("a/b", "__x__" are errors there)
            raise ValidationError(f"flow-ingest job id {job_id[:80]!r} is not a 32-character hex id", field="job_id")
        continuation = message.data.get("continuation", 0)
        if type(continuation) is not int or not 0 <= continuation <= MAX_CONTINUATIONS:
            raise ValidationError(
                f"flow-ingest continuation {str(continuation)[:40]!r} is not a number of 0..{MAX_CONTINUATIONS}", field="continuation"
            )
        token = message.data.get("continuation_token")
        if token is not None and (type(token) is not str or not CONTINUATION_TOKEN.match(token)):
            raise ValidationError(
                f"flow-ingest continuation_token {str(token)[:40]!r} is not a 32-character hex token", field="continuation_token"
            )
        documents = runtime.documents
        # Read once before the lease: a finished job or a superseded message is acked at once, not after
        # waiting for a lease another delivery holds (and being retried into the dead letter).
        if (answer := settled(existing_job(documents, job_id), job_id, continuation=continuation, token=token)) is not None:
            return answer
        with lease(documents, job_id, now=started, clock=runtime.clock.now) as held:
            read = existing_job_versioned(documents, job_id)  # again: another delivery may have moved it on meanwhile
            job = read.data
            if (answer := settled(job, job_id, continuation=continuation, token=token)) is not None:
                return answer
            if continuation > int(job.get("continuation") or 0):
                tf_logging.log(
                    log, logging.WARNING, "flow-ingest continuation runs unrecorded: its publisher died before recording it",
                    job_id=job_id, continuation=continuation,
                )  # fmt: skip
            authorise = requester_check(job)

            def as_requester() -> dict[str, Any] | Handover:
                try:
                    refuse_early(runtime.engine, authorise)
                    return run_job(
                        job_id,
                        read,
                        continuation=continuation,
                        token=token,
                        started=started,
                        budget_seconds=settings.flow_ingest_delivery_seconds,
                        documents=documents,
                        blobs=runtime.blobs,
                        ingest_rows=lambda flows, positions, *, source: ingest_rows(flows, positions, source=source, authorise=authorise),
                        clock=runtime.clock,
                        held=held,
                    )
                except AuthError as exc:  # the requester's account changed since the job was queued: it stores no more
                    fail_job(documents, job_id, exc.message, clock=runtime.clock)
                    raise

            outcome = last_attempt_fails_job(
                as_requester,
                job_id=job_id,
                message=message,
                documents=documents,
                clock=runtime.clock,
            )
        if isinstance(outcome, Handover):  # published after the lease is released: see continue_job
            return last_attempt_fails_job(
                lambda: continue_job(job_id, outcome, documents=documents, publisher=runtime.publisher, clock=runtime.clock),
                job_id=job_id,
                message=message,
                documents=documents,
                clock=runtime.clock,
            )
        return outcome

    return handle


def refuse_early(engine: Engine, authorise: Callable[[Connection], object]) -> None:
    """The requester check before the object is hashed or read, so a refused job reads none of it (AuthError). An
    unreachable database skips it: the check in the first batch's transaction then decides, and the delivery
    starts and fails as it did (counted in `deliveries`, the job failed on the last attempt)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with unit_of_work(engine) as conn:
            authorise(conn)
    except (SQLAlchemyError, TimeoutError) as exc:
        tf_logging.log(log, logging.WARNING, "requester not checked before the run: database unreachable", error=str(exc)[:200])


def requester_check(job: dict[str, Any]) -> Callable[[Connection], object]:
    """The check a job's batches run in the transaction that stores them: its requester's account as it is now
    (auth.requester.acting_for, as a queued IoC import). AuthError once the token that queued it would be refused
    (disabled or gone, role or password changed) or the role is no longer analyst: the batch stores nothing, and the
    job fails. Each batch checks again, so a change during a long upload stops it at the next batch."""

    def check(conn: Connection) -> object:
        return auth_requester.acting_for(
            UserRepository(conn),
            user_id=job.get("requested_by_id"),
            username=job.get("requested_by"),
            version=job.get("requester_version"),
            role=Role.ANALYST,
        )

    return check


def existing_job(documents: DocumentStore, job_id: str) -> dict[str, Any]:
    job = documents.get(INGEST_JOBS, job_id)
    if job is None:
        raise ValidationError(f"no flow ingest job {job_id!r}", field="job_id")
    return job


def existing_job_versioned(documents: DocumentStore, job_id: str) -> Versioned:
    read = documents.get_versioned(INGEST_JOBS, job_id)
    if read is None:
        raise ValidationError(f"no flow ingest job {job_id!r}", field="job_id")
    return read


def settled(job: dict[str, Any], job_id: str, *, continuation: int, token: str | None) -> dict[str, Any] | None:
    """The answer to a message with no work left (the job finished, or the message superseded), else None."""
    if job.get("state") in ("succeeded", "failed"):
        return dict(job)  # a redelivery of finished work
    reason = superseded(job, continuation=continuation, token=token)
    if reason is not None:
        tf_logging.log(log, logging.INFO, f"stale flow-ingest message acked: {reason}", job_id=job_id, continuation=continuation)
        return dict(job)
    return None


T = TypeVar("T")


def last_attempt_fails_job(work: Callable[[], T], *, job_id: str, message: Message, documents: DocumentStore, clock: Clock) -> T:
    """Run a delivery's work; an error on the subscription's last attempt fails the job before it is raised.

    Pub/Sub sets deliveryAttempt on pushes from a subscription with a dead-letter policy (flow-ingest-push
    has one) and dead-letters the message after the last attempt fails; so the last attempt fails the job
    first, or it would stay "running" with nothing left to run it. The count is best effort: a delivery
    killed at the timeout runs no code, which the time budget keeps a healthy run from reaching."""
    try:
        return work()
    except (PermanentError, LeaseVanished):
        raise  # acked, the work has already failed the job with the reason; or the lease was lost: the job is not broken
    except Exception as exc:
        if message.delivery_attempt >= MAX_DELIVERY_ATTEMPTS:
            reason = f"gave up after {message.delivery_attempt} delivery attempts: {exc.__class__.__name__}: {str(exc)[:300]}"
            with contextlib.suppress(Exception):  # the store may be what failed: the re-raise still counts
                fail_job(documents, job_id, reason, clock=clock)
        raise


def fail_job(documents: DocumentStore, job_id: str, reason: str, *, clock: Clock) -> None:
    documents.set(INGEST_JOBS, job_id, {"state": "failed", "error": reason, "finished_at": clock.now()}, merge=True)


def source_of(blobs: BlobStore, bucket: str, name: str, *, generation: int, keep: Callable[[], None] = lambda: None) -> str:
    """The event keys' `source`: sha256 of the object's bytes, in one streaming pass (keep() between chunks:
    the lease's renewal, as the pass over a large object can outlast it). `file:<sha256>`, the name `flows load`
    gives the same file: uploaded or posted by the CLI, one file is one set of events (the worker's `gcs:` stored
    a file loaded both ways twice). A job an earlier version started keeps the source recorded on it."""
    digest = hashlib.sha256()
    with blobs.open_read(bucket, name, generation=generation) as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            keep()
    return ingest.FILE_SOURCE + digest.hexdigest()[:32]


@dataclass(frozen=True)
class Handover:
    """A delivery out of time with its progress recorded: the rest of the job goes to continuation `following`."""

    job: dict[str, Any]
    following: int
    rows_done: int


def run_job(
    job_id: str,
    read: Versioned,
    *,
    continuation: int,
    token: str | None,
    started: datetime,
    budget_seconds: float,
    documents: DocumentStore,
    blobs: BlobStore,
    ingest_rows: Callable[..., dict[str, Any]],
    clock: Clock,
    held: Lease,
) -> dict[str, Any] | Handover:
    """Run the job (as read under its lease, with its version) from rows_done: the finished job, or a Handover
    once the budget is spent, or the job as it is when another write since the read settled this message."""
    job = read.data
    bucket, name = str(job.get("bucket")), str(job.get("object"))
    try:
        info = blobs.stat(bucket, name)
        if info.size > MAX_OBJECT_BYTES:
            raise ValidationError(
                f"the upload has {info.size} bytes, more than {MAX_OBJECT_BYTES}; split it into several uploads", field="object"
            )
        pinned = job.get("generation")
        if pinned is not None and int(pinned) != info.generation:
            raise NotFoundError(
                f"object {name!r} was replaced after its job started (generation {pinned}, now {info.generation}); queue it again"
            )
        # The hash of the pinned generation's bytes, so a later delivery reuses it without a pass.
        source = (
            str(job["source"])
            if pinned is not None and job.get("source")
            else source_of(blobs, bucket, name, generation=info.generation, keep=held.keep)
        )
    except (NotFoundError, ValidationError) as exc:  # too large, deleted or replaced after it was queued: fail the job
        fail_job(documents, job_id, exc.message, clock=clock)
        raise
    # The start is a compare-and-set on the version read under the lease: a write that came in since (the late
    # hand-over record of an earlier delivery, a recovery) is read again, and may have superseded this message.
    version: str | None = read.version
    for _ in range(WRITE_ATTEMPTS):
        running: dict[str, Any] = {
            "state": "running",
            "source": source,
            "generation": info.generation,
            "continuation": continuation,  # never below the job's: superseded() refused a lower one
            "continuation_token": token,
            "deliveries": int(job.get("deliveries") or 0) + 1,
            "delivery_started_at": started,
            "updated_at": started,  # what recover-stalled-flow-ingest-jobs measures a stall from
        }
        if not job.get("started_at"):
            running["started_at"] = started
        if documents.update_if_unchanged(INGEST_JOBS, job_id, running, version=str(version)) is not None:
            break
        again = existing_job_versioned(documents, job_id)
        job, version = again.data, again.version
        if (answer := settled(job, job_id, continuation=continuation, token=token)) is not None:
            return answer
    else:
        raise RetryableError(f"flow ingest job {job_id} kept changing: this delivery could not start it in {WRITE_ATTEMPTS} attempts")
    progress = {k: int(job.get(k) or 0) for k in ("rows_done", "stored", "duplicates", "invalid", "predicted_attacks")}
    flushed = out_of_time = False
    try:
        with blobs.open_read(bucket, name, generation=info.generation) as stream:
            text = ingest.open_text(stream)
            rows = bounded_rows(ingest.read_csv_rows(bounded_lines(text), skip_rows=progress["rows_done"]))
            flows: list[dict[str, Any]] = []
            positions: list[int] = []
            lines: list[int] = []  # each flow's line in the file, for its problem
            misshapen: list[ingest.CsvRow] = []  # rows of another width read since the last flush

            def flush() -> None:
                held.keep()  # before storing: a delivery whose lease was taken over stores nothing more
                result = ingest_rows(flows, positions, source=source) if flows else {}
                for key in ("stored", "duplicates", "invalid", "predicted_attacks"):
                    progress[key] += int(result.get(key) or 0)
                progress["invalid"] += len(misshapen)
                # Again before the progress is written: a store that outlasted the lease (taken over meanwhile) leaves the
                # progress to the new holder; its rows are duplicates to that one, never stored twice.
                held.keep()
                progress["rows_done"] = max(positions[-1:] + [row.number for row in misshapen[-1:]]) + 1
                update: dict[str, Any] = {**progress, "updated_at": clock.now()}
                first = _first_problem(result.get("first_problem"), lines, misshapen)
                if first and not job.get("first_problem"):
                    update["first_problem"] = job["first_problem"] = first
                documents.set(INGEST_JOBS, job_id, update, merge=True)
                flows.clear()
                positions.clear()
                lines.clear()
                misshapen.clear()

            for row in rows:
                # Checked at a batch boundary, once this delivery has stored a batch: every delivery
                # progresses, and a row read here is read again by the continuation (rows_done).
                if flushed and not flows and not misshapen and (clock.now() - started).total_seconds() >= budget_seconds:
                    out_of_time = True
                    break
                if isinstance(row.flow, ingest.MisshapenRow):
                    misshapen.append(row)
                else:
                    flows.append(row.flow)
                    positions.append(row.number)
                    lines.append(row.line)
                # Rows of another width count toward the batch: a file of nothing else held every one of them until
                # 5,000 flows came (10 M two-cell lines, a 40 KB gzip, were 2.4 GB).
                if len(flows) + len(misshapen) >= BATCH_ROWS:
                    flush()
                    flushed = True
            if flows or (misshapen and not out_of_time):
                flush()
    except (ValueError, NotFoundError) as exc:  # not a UNSW CSV, or gone mid-read: retrying cannot help
        reason = exc.message if isinstance(exc, NotFoundError) else str(exc)
        fail_job(documents, job_id, reason, clock=clock)
        raise ValidationError(reason, field="object") from None
    if out_of_time:
        following = continuation + 1
        if following > MAX_CONTINUATIONS:
            reason = (
                f"gave up after {MAX_CONTINUATIONS} continuations at row {progress['rows_done']}: a file within"
                f" {MAX_LINES} lines needs fewer; split it into several uploads"
            )
            fail_job(documents, job_id, reason, clock=clock)
            raise ValidationError(reason, field="object")
        return Handover({**job, **running, **progress}, following, progress["rows_done"])
    done = {**progress, "state": "succeeded", "finished_at": clock.now()}
    documents.set(INGEST_JOBS, job_id, done, merge=True)
    return {**job, **running, **done}


def _first_problem(stored: Mapping[str, Any] | None, lines: Sequence[int], misshapen: Sequence[ingest.CsvRow]) -> dict[str, Any] | None:
    """The batch's first problem in file order, named by its line in the file (from 1, header and blank lines counted,
    as `flows load` names a skipped row): validation's (its index is the flow's in the batch) or a row of another width.
    It was that index, restarting at 0 every batch, and a row of another width gave its data-row number instead."""
    line = lines[int(stored["index"])] if stored else None
    if misshapen and (line is None or misshapen[0].line < line):
        row = misshapen[0]
        return {"line": row.line, "field": "", "reason": row.flow.reason if isinstance(row.flow, ingest.MisshapenRow) else ""}
    return {"line": line, "field": stored["field"], "reason": stored["reason"]} if stored else None


def continue_job(job_id: str, handover: Handover, *, documents: DocumentStore, publisher: Publisher, clock: Clock) -> dict[str, Any]:
    """Hand the rest of the job to a new message and ack this one: a long upload spends no delivery attempts.

    Called once the lease is released (a continuation delivered at once finds it free). The message is
    published first and recorded after, so no crash leaves the job without a current message: dead
    before the publish, this delivery's own message is redelivered and still current; dead after it,
    the continuation is current by its number (ingest_jobs.superseded). A publish that fails is raised
    (this message is redelivered and resumes); a record that fails is logged and this message acked:
    the continuation runs anyway, and a redelivery of this one would meet its record or lose to its token.
    The record is a compare-and-set that never lowers the job's number (ingest_jobs.record_continuation):
    a continuation fast enough to hand over again before this record lands keeps its own, later record."""
    token = uuid.uuid4().hex
    publisher.publish(INGEST_TOPIC, *job_message(job_id, handover.following, token))
    now = clock.now()
    # Only the hand-over: progress was recorded by the last batch, and the continuation, free to start
    # already, may be writing its own.
    record = {"continuation": handover.following, "continuation_token": token, "continued_at": now, "updated_at": now}
    try:
        if not record_continuation(documents, job_id, record):
            tf_logging.log(
                log, logging.INFO, "flow-ingest continuation published; the job had moved past it, so it is not recorded",
                job_id=job_id, continuation=handover.following,
            )  # fmt: skip
    except Exception as exc:
        tf_logging.log(
            log, logging.WARNING, f"flow-ingest continuation published, not recorded: {exc.__class__.__name__}: {str(exc)[:200]}",
            job_id=job_id, continuation=handover.following,
        )  # fmt: skip
    tf_logging.log(
        log,
        logging.INFO,
        "flow-ingest delivery out of time: continued",
        job_id=job_id,
        rows_done=handover.rows_done,
        continuation=handover.following,
    )
    return {**handover.job, **record}
