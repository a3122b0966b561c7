"""One active flow-ingest job per uploaded object generation: the markers of POST /api/v1/flows/uploads.

A marker (`flow_ingest_active/<marker_id>`, the id a hash of bucket, object and generation) names the job
queued for that object generation: job_id, bucket, object, generation, claimed_at and expires_at.

    claim         create-if-absent: of two requests at the same instant exactly one creates it and queues
                  a job; the other answers the job it names (still to be written for a moment: CLAIM_GRACE)
    take over     a marker naming no active job (finished, failed, vanished, or the marker expired) is
                  rewritten by compare-and-set on the version read: again only one request wins
    release       the winner whose job could not be queued deletes the marker if it still names that job

Markers expire: expires_at is MARKER_SECONDS after the claim, and a Firestore TTL policy on that field
(terraform/firestore.tf) deletes expired markers. TTL deletion is lazy (typically within a day of expiry), so
an expired marker still there is never trusted: it is taken over as if absent. A job still active when its
marker expires can then get a second job: MARKER_SECONDS outlasts the time a job stays queued before the
recovery sweep fails it (QUEUED_PATIENCE_SECONDS) by a day.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from threatflow.flows.ingest_jobs import INGEST_JOBS, QUEUED_PATIENCE_SECONDS
from threatflow.platform.errors import ConflictError
from threatflow.platform.ports import DocumentStore

ACTIVE_UPLOADS = "flow_ingest_active"
EXPIRES_AT = "expires_at"  # the TTL field (terraform/firestore.tf google_firestore_field.flow_ingest_active_expiry)
ACTIVE_STATES = ("queued", "running")
MARKER_SECONDS = QUEUED_PATIENCE_SECONDS + 24 * 3600
# A claimed marker whose job is not written yet: its winner is between its two writes (milliseconds), unless it
# died there. Within the grace the claim is answered as that job; after it, the marker is taken over.
CLAIM_GRACE_SECONDS = 30
JOB_WAITS = (0.05, 0.1, 0.2, 0.3)  # how long a loser waits, in turn, for the winner's job document
CLAIM_ATTEMPTS = 3


def marker_id(bucket: str, name: str, generation: int) -> str:
    return hashlib.sha256(f"{bucket}\n{name}\n{generation}".encode()).hexdigest()[:32]


def claim(
    documents: DocumentStore,
    active_id: str,
    *,
    job_id: str,
    bucket: str,
    name: str,
    generation: int,
    requested_by: str | None,
    now: datetime,
) -> dict[str, Any] | None:
    """Claim the object generation for `job_id`. None: this request holds the marker now and queues its job.
    Otherwise the active job the marker names, which the request answers (the job document, or while its
    winner has not written it yet, the job id with state queued). ConflictError when other requests changed
    the marker under each of CLAIM_ATTEMPTS attempts."""
    marker = {
        "job_id": job_id,
        "bucket": bucket,
        "object": name,
        "generation": generation,
        "claimed_at": now,
        "requested_by": requested_by,  # who may read the job before its winner has written it
        EXPIRES_AT: now + timedelta(seconds=MARKER_SECONDS),
    }
    for _ in range(CLAIM_ATTEMPTS):
        if documents.create(ACTIVE_UPLOADS, active_id, marker):
            return None
        read = documents.get_versioned(ACTIVE_UPLOADS, active_id)
        if read is None:
            continue  # released since (its job could not be queued): claim it again
        job = active_job(documents, read.data, now=now)
        if job is not None:
            return job
        # Expired, or naming a job that finished, failed or vanished: rewritten only if nobody did since the read.
        if documents.update_if_unchanged(ACTIVE_UPLOADS, active_id, marker, version=read.version) is not None:
            return None
    raise ConflictError(f"the upload {name!r} is being queued by other requests at this instant; ask again")


def active_job(documents: DocumentStore, marker: Mapping[str, Any], *, now: datetime) -> dict[str, Any] | None:
    """The queued or running job `marker` names, or None when it names none: expired (whether or not the TTL
    has deleted it yet), its job finished or failed, or its job absent past the claim's grace. A marker
    without expires_at (written before markers expired) is judged by its job alone."""
    expires = marker.get(EXPIRES_AT)
    if isinstance(expires, datetime) and expires <= now:
        return None
    job_id = marker.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        return None
    job = documents.get(INGEST_JOBS, job_id)
    claimed = marker.get("claimed_at")
    if job is None and isinstance(claimed, datetime) and now - claimed < timedelta(seconds=CLAIM_GRACE_SECONDS):
        for wait in JOB_WAITS:  # its winner writes it just after the claim
            time.sleep(wait)
            job = documents.get(INGEST_JOBS, job_id)
            if job is not None:
                break
        else:
            return {
                "job_id": job_id,
                "state": "queued",
                "bucket": marker.get("bucket"),
                "object": marker.get("object"),
                "requested_by": marker.get("requested_by"),
            }
    if job is None or job.get("state") not in ACTIVE_STATES:
        return None
    return job


def release(documents: DocumentStore, active_id: str, *, job_id: str) -> bool:
    """Delete the marker if it still names `job_id` (a job that could not be queued)."""
    return documents.delete_if(ACTIVE_UPLOADS, active_id, field="job_id", value=job_id)
