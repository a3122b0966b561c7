"""IP reputation for the detect function: GET /api/v1/detect/intel/{ip}.

AbuseIPDB first, then the other IP sources in order, each through the same
cache, single flight and quota as the pipeline, so a detection burst never
spends more calls than enrichment would. The integrator mounts the route on the
detect router with `add_detect_intel_routes(router, runtime)`.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from threatflow.auth.model import Role
from threatflow.enrichment.handlers import Enrichment, context, lookup_source
from threatflow.enrichment.model import ResultStatus
from threatflow.enrichment.tasks import Task
from threatflow.enrichment.worker import execute
from threatflow.platform.errors import DependencyError, RateLimitedError, ValidationError
from threatflow.platform.web import Request, Router
from threatflow.runtime import Runtime

IP_SOURCE_ORDER = ("abuseipdb", "greynoise", "internetdb", "virustotal", "otx")


def ip_reputation(ip: str, *, enrichment: Enrichment, sources: tuple[str, ...] = IP_SOURCE_ORDER) -> dict[str, Any]:
    """The first usable answer for an IP; raises RateLimitedError when every source is out of quota."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        raise ValidationError(f"ip: {ip[:64]!r} is not an IPv4 or IPv6 address", field="ip") from None
    if not address.is_global:
        raise ValidationError(f"ip: {address} is not a public address; intel sources know nothing about it", field="ip")
    ioc_type = "ipv4" if address.version == 4 else "ipv6"
    value = str(address)
    waits: list[float] = []
    tried: dict[str, str] = {}
    for name in sources:
        source = enrichment.settings.sources.get(name)
        if source is None or not source.enabled or ioc_type not in source.indicator_types or not enrichment.keys.usable(source):
            continue
        api_key = enrichment.keys.get(source)
        task = Task("detect-intel", 0, ioc_type, value, name)
        outcome = execute(
            task,
            source=source,
            key_id=enrichment.keys.fingerprint(source),
            cache=enrichment.cache,
            redis=enrichment.redis,
            quota=enrichment.quota,
            call=lambda source=source, task=task, api_key=api_key: lookup_source(enrichment, source, task, api_key),  # type: ignore[misc]
            now=enrichment.now,
        )
        if outcome.defer_seconds is not None:
            waits.append(outcome.defer_seconds)
            tried[name] = outcome.reason or "no quota"
            continue
        result = outcome.result
        assert result is not None
        if result.status in (ResultStatus.OK, ResultStatus.NOT_FOUND):
            return {
                "ip": value,
                "source": name,
                "status": result.status.value,
                "verdict": result.verdict.value,
                "score": result.score,
                "cached": outcome.cached,
                "fetched_at": result.fetched_at.isoformat(),
                "evidence": result.evidence.to_dict(),
                "tried": tried,
            }
        tried[name] = result.status.value
    if waits:
        raise RateLimitedError(f"every IP source is out of quota ({tried})", retry_after=min(waits))
    raise DependencyError(f"no IP intel source answered ({tried or 'none usable'})")


def add_detect_intel_routes(router: Router, runtime: Runtime) -> None:
    """Mount GET /api/v1/detect/intel/{ip} on a router (the detect function's)."""
    enrichment = context(runtime)

    @router.route("GET", "/api/v1/detect/intel/{ip}", role=Role.READER)
    def intel(request: Request) -> dict[str, Any]:
        return ip_reputation(request.path_params["ip"], enrichment=enrichment)
