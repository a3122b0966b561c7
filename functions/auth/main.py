"""auth: issues access tokens and answers who the caller is."""

import functions_framework

from threatflow.auth.api import build_router
from threatflow.runtime import Runtime

router = build_router(Runtime.from_env(require=("JWT_SECRET",)))


@functions_framework.http
def auth(request):  # type: ignore[no-untyped-def]
    return router.handle(request)
