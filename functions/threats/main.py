"""threats: actors, campaigns, malware, tools and intrusion sets; ATT&CK TTPs, IoC links and correlation."""

import functions_framework

from threatflow.runtime import Runtime
from threatflow.threats.api import build_router

router = build_router(Runtime.from_env(require=("JWT_SECRET",)))


@functions_framework.http
def threats(request):  # type: ignore[no-untyped-def]
    return router.handle(request)
