"""enrichment: requests, runs, batches, source health and quota, dead letters (/api/v1/enrichment)."""

import functions_framework

from threatflow.enrichment.api import build_router
from threatflow.runtime import Runtime

router = build_router(Runtime.from_env(require=("JWT_SECRET",)))


@functions_framework.http
def enrichment(request):  # type: ignore[no-untyped-def]
    return router.handle(request)
