"""Quota per API key: a token bucket per window (per minute, per hour) plus a
daily cap that resets at 00:00 UTC, all in Redis so every instance shares them.

A task that finds no token is deferred (never dropped, never failed) for as long
as the bucket says. A 429 from the API puts the source in a cool-down for its
Retry-After, so the other tasks wait instead of spending calls on more 429s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from threatflow.platform.sources import SourceConfig

if TYPE_CHECKING:
    from threatflow.adapters.redis import RateLimiter, RedisPrimitives


@dataclass(frozen=True)
class QuotaDecision:
    allowed: bool
    retry_after: float
    reason: str = ""


def _next_midnight(now: datetime) -> datetime:
    return (now.astimezone(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


class QuotaGate:
    def __init__(self, *, limiter: RateLimiter, redis: RedisPrimitives) -> None:
        self._limiter = limiter
        self._redis = redis

    @staticmethod
    def _day_key(source: SourceConfig, key_id: str, now: datetime) -> str:
        return f"enr:quota:{source.name}:{key_id}:day:{now.astimezone(UTC):%Y%m%d}"

    def _cooldown_key(self, source: SourceConfig, key_id: str) -> str:
        return f"enr:cooldown:{source.name}:{key_id}"

    def take(self, source: SourceConfig, key_id: str, *, now: datetime) -> QuotaDecision:
        """Take one call's worth of quota, or say how long to wait."""
        cooldown = self._redis.get(self._cooldown_key(source, key_id))
        if cooldown is not None:
            wait = float(cooldown) - now.timestamp()
            if wait > 0:
                return QuotaDecision(False, wait, "cooling down after a 429")
        # The day's count is kept for every source (the sources route shows it), capped only under a per_day.
        midnight = _next_midnight(now)
        day_key = self._day_key(source, key_id, now)
        used = self._redis.incr(day_key, expire_at=int(midnight.timestamp()) + 3600)
        if source.quota.per_day and used > source.quota.per_day:
            self._redis.incr(day_key, -1)
            return QuotaDecision(False, (midnight - now).total_seconds() + 1, f"daily cap of {source.quota.per_day} reached")
        for window, limit, period in source.quota.buckets():
            decision = self._limiter.hit(f"enr:{source.name}:{key_id}:{window}", limit=limit, period_seconds=period)
            if not decision.allowed:
                self._redis.incr(day_key, -1)
                return QuotaDecision(False, max(decision.retry_after_seconds, 0.05), f"{limit} per {window} bucket empty")
        return QuotaDecision(True, 0.0)

    def cool_down(self, source: SourceConfig, key_id: str, *, seconds: float, now: datetime) -> None:
        until = now.timestamp() + seconds
        self._redis.set(self._cooldown_key(source, key_id), str(until).encode(), ttl_seconds=seconds + 1)

    def used_today(self, source: SourceConfig, key_id: str, *, now: datetime) -> int:
        return self._redis.counter(self._day_key(source, key_id, now))
