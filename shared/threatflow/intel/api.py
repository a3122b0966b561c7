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
from threatflow.auth.model import Role
from threatflow.intel import importer
from threatflow.intel.formats import ImportFormat
from threatflow.intel.formats import export as exporter
from threatflow.platform import events
from threatflow.platform.errors import ConfigError, NotFoundError, PayloadTooLargeError, ValidationError
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
    def catalog() -> Any:
        from threatflow.threats import attack

        return attack.catalog_from_env(blobs=lambda: runtime.blobs)  # cached per instance, re-read when synced

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
        body = decode_body(request.body, importer.ImportRequest)
        parsed = importer.parse_request(body)  # a malformed document fails here, before anything is written
        with unit_of_work(runtime.engine) as conn:
            result = importer.apply_import(
                parsed,
                conn=conn,
                now=runtime.clock.now(),
                actor=request.principal.username if request.principal else None,
                catalog=catalog() if importer.needs_catalog(parsed) else None,
                source_default=body.source,
            )
        return Response(result)

    def _queue(request: Request) -> Response:
        body = decode_body(request.body, importer.ImportRequest)  # check the envelope now; the content is parsed by the job
        try:
            ImportFormat(body.format.lower())
        except ValueError:
            raise ValidationError(f"unknown import format {body.format!r}", field="format") from None
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
                "format": body.format.lower(),
                "size_bytes": len(request.body),
                "blob": name,
                "requested_by": request.principal.username if request.principal else None,
                "created_at": now,
                "attempts": 0,
            },
        )
        runtime.publisher.publish(IMPORT_TOPIC, events.encode({"job_id": job_id}), {"job_id": job_id})
        return Response({"job_id": job_id, "status_url": f"/api/v1/iocs/import/{job_id}"}, status=202)

    @router.route("GET", "/api/v1/iocs/import/{job_id}", role=Role.READER)
    def import_job(request: Request) -> dict[str, Any]:
        job = runtime.documents.get(importer.IMPORT_JOBS, request.path_params["job_id"])
        if job is None:
            raise NotFoundError(f"no import job {request.path_params['job_id']!r}")
        return job

    @router.route("POST", "/api/v1/iocs/extract", role=Role.READER)
    def extract(request: Request) -> dict[str, Any]:
        if len(request.body) > MAX_EXTRACT_BYTES + 4096:
            raise PayloadTooLargeError(f"text is limited to {MAX_EXTRACT_BYTES // (1024 * 1024)} MB")
        body = decode_body(request.body, ExtractIn)
        if len(body.text.encode()) > MAX_EXTRACT_BYTES:
            raise PayloadTooLargeError(f"text is limited to {MAX_EXTRACT_BYTES // (1024 * 1024)} MB")
        from threatflow.iocs.extract import extract as find

        found = find(body.text, refang=body.refang)
        return {"iocs": [{"type": str(f.type), "value": f.value, "original": f.original} for f in found], "count": len(found)}

    @router.route("GET", "/api/v1/iocs/export", role=Role.READER)
    def export(request: Request) -> Response:
        fmt = request.query.get("format") or "stix"
        flt = exporter.filter_from_query(request.query)
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
            },
        )

    def _optional_catalog() -> Any:
        # Names for exported attack patterns; without ATT&CK data the technique id is the name.
        try:
            return catalog()
        except ConfigError:
            return None
