"""detect: scores network flows with the promoted flow model (/api/v1/detect)."""

import functions_framework

from threatflow.flows.detect_api import build_router
from threatflow.runtime import Runtime

router = build_router(Runtime.from_env(require=("JWT_SECRET",)))


@functions_framework.http
def detect(request):  # type: ignore[no-untyped-def]
    return router.handle(request)
