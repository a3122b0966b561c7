"""The detect function serves GET /api/v1/detect/intel/{ip} (the enrichment capability's route, mounted on detect's router)."""

from __future__ import annotations


def test_detect_router_serves_the_ip_intel_route(monkeypatch):
    from threatflow.detect.api import build_router
    from threatflow.platform.manifest import load_manifest
    from threatflow.runtime import Runtime

    monkeypatch.setenv("JWT_SECRET", "x" * 40)
    for key, value in load_manifest().sources_env().items():
        monkeypatch.setenv(key, value)
    router = build_router(Runtime.from_env())
    routes = {(route.method, route.pattern) for route in router.routes}
    assert ("GET", "/api/v1/detect/intel/{ip}") in routes
    assert ("POST", "/api/v1/detect/batch") in routes
