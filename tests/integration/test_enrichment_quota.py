"""The quota `GET /api/v1/enrichment/sources` shows: `used_today` counts every call a source was given a token for,
also for the sources with no daily cap (abuse.ch's, InternetDB, Hybrid Analysis), on the run's own Redis."""

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
def gate(backend_env):
    from threatflow.adapters.redis import CircuitBreaker, RateLimiter, RedisPrimitives, connect
    from threatflow.enrichment.quota import QuotaGate

    client = connect(backend_env["REDIS_URL"])
    return QuotaGate(
        limiter=RateLimiter(client, breaker=CircuitBreaker(open_seconds=1)),
        redis=RedisPrimitives(client, breaker=CircuitBreaker(open_seconds=1)),
    )


def _source(name, **quota):
    from threatflow.platform.manifest import load_manifest
    from threatflow.platform.sources import Quota

    source = load_manifest().sources[name]
    return dataclasses.replace(source, quota=Quota(**{"per_minute": None, "per_hour": None, "per_day": None, **quota}))


def test_used_today_counts_the_calls_of_a_source_without_a_daily_cap(gate):
    """ThreatFox, URLhaus, MalwareBazaar, InternetDB and Hybrid Analysis have minute or hour buckets only: after six
    ThreatFox calls (the fake's /_control/calls said 6) the sources route showed used_today 0."""
    source, key = _source("threatfox", per_minute=2), uuid.uuid4().hex
    decisions = [gate.take(source, key, now=NOW) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert gate.used_today(source, key, now=NOW) == 2  # the refused take spent nothing


def test_used_today_of_a_source_with_a_daily_cap_is_unchanged(gate):
    source, key = _source("virustotal", per_minute=10, per_day=2), uuid.uuid4().hex
    decisions = [gate.take(source, key, now=NOW) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False] and "daily cap" in decisions[2].reason
    assert gate.used_today(source, key, now=NOW) == 2
