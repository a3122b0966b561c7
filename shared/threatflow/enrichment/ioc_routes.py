"""Enrichment routes served by the iocs function: GET /api/v1/iocs/{id}/enrichment,
and the enrichment summary GET /api/v1/iocs/{id} includes."""

from __future__ import annotations

from typing import Any

from threatflow.auth.model import Role
from threatflow.enrichment import repository
from threatflow.platform.errors import ValidationError
from threatflow.platform.web import Request, Router
from threatflow.runtime import Runtime


def summary(runtime: Runtime, ioc_id: int) -> dict[str, Any] | None:
    """The merged verdict of the latest closed run with every contributing source and reason."""
    with runtime.engine.connect() as conn:
        return repository.get_verdict(conn, ioc_id)


def register(router: Router, runtime: Runtime) -> None:
    @router.route("GET", "/api/v1/iocs/{ioc_id:int}/enrichment", role=Role.READER)
    def latest(request: Request) -> dict[str, Any]:
        try:
            ioc_id = int(request.path_params["ioc_id"])
        except ValueError:
            raise ValidationError("id must be an integer", field="id") from None
        with runtime.engine.connect() as conn:
            results = repository.latest_results(conn, ioc_id)
            verdict = repository.get_verdict(conn, ioc_id)
        return {"ioc_id": ioc_id, "verdict": verdict, "sources": {r.pop("source"): r for r in results}}
