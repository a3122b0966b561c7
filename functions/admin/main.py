"""admin: users, maintenance runs, and the readiness of the whole system."""

import functions_framework

from threatflow.admin.api import build_router
from threatflow.runtime import Runtime

router = build_router(Runtime.from_env(require=("JWT_SECRET",)))


@functions_framework.http
def admin(request):  # type: ignore[no-untyped-def]
    return router.handle(request)
