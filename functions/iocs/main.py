"""iocs: the system of record for indicators (upsert, search, lookups, sightings, import and export)."""

import functions_framework

from threatflow.iocs.api import build_router
from threatflow.runtime import Runtime

router = build_router(Runtime.from_env(require=("JWT_SECRET",)))


@functions_framework.http
def iocs(request):  # type: ignore[no-untyped-def]
    return router.handle(request)
