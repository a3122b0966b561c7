"""One task for one source: cache, single flight, quota, call.

cache hit (Redis, then PostgreSQL)          -> the cached result, no call
another task holds the (source, IoC) flight -> wait for its result, no call
`charge` (a caller's budget, enrichment/budget.py) -> raises when the caller may not cause the call
no quota token / source cooling down        -> defer (the task comes back later); `charge` given back
call                                        -> 429: cool the source down, defer
                                               401/403, errors, timeouts: a final result
                                               ok / not_found: cached for the source's TTL
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from threatflow.enrichment.cache import ResultCache, cache_key
from threatflow.enrichment.model import ResultStatus, SourceResult
from threatflow.enrichment.quota import QuotaGate
from threatflow.enrichment.tasks import Task
from threatflow.platform.sources import SourceConfig

if TYPE_CHECKING:
    from threatflow.adapters.redis import RedisPrimitives
    from threatflow.enrichment.budget import LookupCharge

POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Outcome:
    result: SourceResult | None = None
    cached: bool = False
    defer_seconds: float | None = None
    reason: str = ""


def flight_key(source: str, ioc_type: str, value: str) -> str:
    return cache_key(source, ioc_type, value).replace("enr:c:", "enr:sf:", 1)


def execute(
    task: Task,
    *,
    source: SourceConfig,
    key_id: str,
    cache: ResultCache,
    redis: RedisPrimitives,
    quota: QuotaGate,
    call: Callable[[], SourceResult],
    now: Callable[[], datetime],
    charge: LookupCharge | None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> Outcome:
    started = now()
    # What a cached answer must be at least as recent as: none for a plain task; for a forced one, its run's
    # request (an older message without it: this delivery's start, so it always calls).
    fresh_since = datetime.fromtimestamp(task.requested_at, UTC) if task.force and task.requested_at is not None else started

    def usable(hit: SourceResult | None) -> bool:
        return hit is not None and (not task.force or hit.fetched_at >= fresh_since)

    # A forced task with its request time may find what an earlier delivery of it fetched; one without, nothing.
    if not task.force or task.requested_at is not None:
        hit = cache.get(source, task.ioc_type, task.value, count=not task.force)  # counted for plain tasks only
        if usable(hit):
            return Outcome(hit, cached=True)
    lock = flight_key(source.name, task.ioc_type, task.value)
    token = uuid.uuid4().hex
    hold = source.timeout_seconds * 2 + 5
    give_up = monotonic() + hold
    while not redis.acquire(lock, token, ttl_seconds=hold):
        # Someone else is asking this source about this IoC: wait for its answer.
        while redis.exists(lock) and monotonic() < give_up:
            sleep(POLL_SECONDS)
        hit = cache.get(source, task.ioc_type, task.value, count=False)
        if usable(hit):
            return Outcome(hit, cached=True)
        if monotonic() >= give_up:
            return Outcome(defer_seconds=1.0, reason="another task holds the flight")
    try:
        # The previous holder may have just cached it (for a forced task: fetched it since the request).
        hit = cache.get(source, task.ioc_type, task.value, count=False)
        if usable(hit):
            return Outcome(hit, cached=True)
        if charge is not None:  # None: the lookup was charged when its run was requested (or is nobody's)
            charge.spend()
        decision = quota.take(source, key_id, now=now())
        if not decision.allowed:
            if charge is not None:  # no call is made: the lookup is given back
                charge.refund()
            return Outcome(defer_seconds=decision.retry_after, reason=decision.reason)
        result = call()
        if result.status is ResultStatus.RATE_LIMITED:
            wait = result.retry_after if result.retry_after is not None else 60.0
            quota.cool_down(source, key_id, seconds=wait, now=now())
            return Outcome(defer_seconds=wait, reason=f"{source.name} answered 429 ({result.detail or 'rate limited'})")
        cache.put(source, task.ioc_type, task.value, result)
        return Outcome(result, cached=False)
    finally:
        redis.release(lock, token)
