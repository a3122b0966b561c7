"""Import, export and extraction routes of the iocs function.

POST /api/v1/iocs/import           analyst; up to SYNC_IMPORT_BYTES inline, else 413
POST /api/v1/iocs/import?async=true analyst; stored, queued on `ioc-import`, 202
GET  /api/v1/iocs/import/{job_id}  reader; the job document
POST /api/v1/iocs/extract          reader; indicators found in text, nothing stored
GET  /api/v1/iocs/export           reader; stix | csv | txt, filtered like find
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from threatflow.adapters.postgres import unit_of_work
from threatflow.auth import clearance as tlp_clearance
from threatflow.auth.model import Role
from threatflow.intel import importer
from threatflow.intel.formats import export as exporter
from threatflow.iocs.model import Tlp
from threatflow.platform import events
from threatflow.platform.errors import ConfigError, NotFoundError, PayloadTooLargeError
from threatflow.platform.web import Request, Response, Router, decode_body
from threatflow.runtime import Runtime

SYNC_IMPORT_BYTES = 5 * 1024 * 1024
MAX_EXTRACT_BYTES = 10 * 1024 * 1024
IMPORT_TOPIC = "ioc-import"
DEFAULT_EXPORT_LIMIT = 10_000
MAX_EXPORT_LIMIT = 100_000


class ExtractIn(msgspec.Struct, forbid_unknown_fields=True):
    text: str
    refang: bool = True


def register(router: Router, runtime: Runtime) -> None:

    def is_async(request: Request) -> bool:
        return str(request.query.get("async", "")).lower() in ("1", "true", "yes")

    @router.route("POST", "/api/v1/iocs/import", role=Role.ANALYST)
    def import_iocs(request: Request) -> Response:
        if is_async(request):
            return _queue(request)
        if len(request.body) > SYNC_IMPORT_BYTES:
            raise PayloadTooLargeError(
                f"imports over {SYNC_IMPORT_BYTES // (1024 * 1024)} MB run asynchronously: POST /api/v1/iocs/import?async=true"
                f" (up to {runtime.settings.max_request_bytes} bytes), then poll the status_url it returns"
            )
        importer.check_containers(request.body)  # before decode_body, which decodes the whole document
        body = decode_body(request.body, importer.ImportRequest)
        parsed = importer.parse_request(body)  # a malformed document fails here, before anything is written
        with unit_of_work(runtime.engine) as conn:
            result = importer.apply_import(
                parsed,
                conn=conn,
                now=runtime.clock.now(),
                actor=request.principal.username if request.principal else None,
                clearance=tlp_clearance.of(request.principal),
                catalog=runtime.attack().get() if importer.needs_catalog(parsed) else None,
                warninglists=runtime.warninglist_matcher(),
                policies=runtime.decay_policies().get(),
                source_default=body.source,
            )
        return Response(result)

    def _queue(request: Request) -> Response:
        importer.check_containers(request.body)
        body = decode_body(request.body, importer.ImportEnvelope)  # the envelope now, undecoded content; the job parses it
        importer.check_request(body)  # tlp, source, tags and content as a sync import checks them: a 400, not a job that fails
        # Then the format, as a sync import's parser_for reads it (stripped, any case; its words for an unknown one):
        # unstripped, " json" was a 400 here that a sync import took.
        fmt = importer.import_format(body.format)
        importer.check_content_kind(fmt, body.content)  # CSV that is no string...: the sync 400, not a job that fails
        job_id = uuid.uuid4().hex
        name = importer.blob_name(job_id)
        runtime.blobs.put(runtime.settings.bucket_uploads, name, request.body, content_type="application/json")
        now = runtime.clock.now()
        runtime.documents.create(
            importer.IMPORT_JOBS,
            job_id,
            {
                "job_id": job_id,
                "state": importer.JobState.QUEUED.value,
                "format": fmt.value,
                "size_bytes": len(request.body),
                "blob": name,
                "requested_by": request.principal.username if request.principal else None,
                # The job acts for this account as it is when the job runs (auth.requester.acting_for): its current
                # clearance, and no run once the token that queued it would be refused.
                "requested_by_id": request.principal.user_id if request.principal else None,
                "requester_version": request.principal.version if request.principal else None,
                # Who else may read the job's record (importer.job_readable_by): admins cleared this far.
                "clearance": tlp_clearance.of(request.principal),
                "created_at": now,
                "attempts": 0,
            },
        )
        runtime.publisher.publish(IMPORT_TOPIC, events.encode({"job_id": job_id}), {"job_id": job_id})
        return Response({"job_id": job_id, "status_url": f"/api/v1/iocs/import/{job_id}"}, status=202)

    @router.route("GET", "/api/v1/iocs/import/{job_id}", role=Role.READER)
    def import_job(request: Request) -> dict[str, Any]:
        job = runtime.documents.get(importer.IMPORT_JOBS, request.path_params["job_id"])
        if job is None or not importer.job_readable_by(job, request.principal):  # another user's job does not exist for the caller
            raise NotFoundError(f"no import job {request.path_params['job_id']!r}")
        return job

    @router.route("POST", "/api/v1/iocs/extract", role=Role.READER)
    def extract(request: Request) -> dict[str, Any]:
        if len(request.body) > MAX_EXTRACT_BYTES + 4096:
            raise PayloadTooLargeError(f"text is limited to {MAX_EXTRACT_BYTES // (1024 * 1024)} MB")
        body = decode_body(request.body, ExtractIn)
        if len(body.text.encode()) > MAX_EXTRACT_BYTES:
            raise PayloadTooLargeError(f"text is limited to {MAX_EXTRACT_BYTES // (1024 * 1024)} MB")
        from threatflow.intel.formats.text import indicators

        read = indicators(body.text, refang=body.refang)  # a pasted feed as its text import reads it
        return {
            "iocs": [{"type": str(f.type), "value": f.value, "original": f.original} for f in read.found],
            "count": len(read.found),
            "feed": read.feed,
            "skipped": read.skipped,
        }

    @router.route("GET", "/api/v1/iocs/export", role=Role.READER)
    def export(request: Request) -> Response:
        fmt = request.query.get("format") or "stix"
        flt = exporter.filter_from_query(request.query)
        # max_tlp (default amber) can never exceed the caller's clearance.
        ceiling = tlp_clearance.cap(flt.max_tlp.value if flt.max_tlp else None, tlp_clearance.of(request.principal))
        flt = msgspec.structs.replace(flt, max_tlp=Tlp(ceiling))
        limit = request.query_int("limit", DEFAULT_EXPORT_LIMIT, minimum=1, maximum=MAX_EXPORT_LIMIT)
        with unit_of_work(runtime.engine) as conn:
            out = exporter.export(conn, fmt, flt, now=runtime.clock.now(), limit=limit, catalog=_optional_catalog())
        return Response(
            out.body,
            content_type=out.content_type,
            headers={
                "Content-Disposition": f'attachment; filename="{out.filename}"',
                "X-Export-Count": str(out.count),
                "X-Export-Truncated": "true" if out.truncated else "false",
                "X-Export-Links-Truncated": "true" if out.links_truncated else "false",
            },
        )

    def _optional_catalog() -> Any:
        # Names for exported attack patterns; without ATT&CK data the technique id is the name.
        try:
            return runtime.attack().get()
        except ConfigError:
            return None
