"""flows: flow ingest (/api/v1/flows) and event hunting (/api/v1/events)."""

import functions_framework

from threatflow.flows.api import build_router
from threatflow.runtime import Runtime

router = build_router(Runtime.from_env(require=("JWT_SECRET",)))


@functions_framework.http
def flows(request):  # type: ignore[no-untyped-def]
    return router.handle(request)
