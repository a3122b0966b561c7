"""Result cache: Redis first, then the enrichment_cache table, TTL per source.

Only answers worth reusing are cached (ok and not_found); errors, timeouts and
rate limits never are. Hits and misses are counted per source and day for the
sources view.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from threatflow.enrichment import repository
from threatflow.enrichment.model import ResultStatus, SourceResult
from threatflow.platform.sources import SourceConfig

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from threatflow.adapters.redis import RedisPrimitives

CACHEABLE = frozenset({ResultStatus.OK, ResultStatus.NOT_FOUND})


def cache_key(source: str, ioc_type: str, value: str) -> str:
    return f"enr:c:{source}:{ioc_type}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"


def stats_key(source: str, now: datetime) -> str:
    return f"enr:stats:{source}:{now.astimezone(UTC):%Y%m%d}"


class ResultCache:
    def __init__(self, *, redis: RedisPrimitives, engine: Engine, now: Callable[[], datetime]) -> None:
        self._redis = redis
        self._engine = engine
        self._now = now

    def get(self, source: SourceConfig, ioc_type: str, value: str, *, count: bool = True) -> SourceResult | None:
        now = self._now()
        raw = self._redis.get(cache_key(source.name, ioc_type, value))
        result = SourceResult.from_json(raw) if raw else None
        if result is None:
            with self._engine.connect() as conn:
                row = repository.cached_result(conn, source=source.name, ioc_type=ioc_type, value=value, now=now)
            if row is not None:
                result = SourceResult.from_dict(row)
                left = source.ttl_seconds - (now - result.fetched_at).total_seconds()
                if left > 0:
                    self._redis.set(cache_key(source.name, ioc_type, value), result.to_json().encode(), ttl_seconds=left)
        if result is not None and (now - result.fetched_at).total_seconds() > source.ttl_seconds:
            result = None
        if count:
            self._redis.hincr(stats_key(source.name, now), "hit" if result is not None else "miss")
        return result

    def get_many(self, pairs: list[tuple[SourceConfig, str, str]]) -> list[dict[str, Any] | None]:
        """Redis only, one round trip (the batch fast path); results as their JSON dicts (SourceResult.to_dict)."""
        import msgspec

        now = self._now()
        raws = self._redis.mget([cache_key(s.name, t, v) for s, t, v in pairs])
        out: list[dict[str, Any] | None] = []
        decode = msgspec.json.Decoder(dict[str, Any]).decode
        for (source, _, _), raw in zip(pairs, raws, strict=True):
            result = decode(raw) if raw else None
            if result is not None:
                fetched = datetime.fromisoformat(result["fetched_at"])
                if (now - fetched).total_seconds() > source.ttl_seconds:
                    result = None
            out.append(result)
        return out

    def put(self, source: SourceConfig, ioc_type: str, value: str, result: SourceResult) -> None:
        if result.status not in CACHEABLE:
            return
        self._redis.set(cache_key(source.name, ioc_type, value), result.to_json().encode(), ttl_seconds=source.ttl_seconds)
        with self._engine.begin() as conn:
            repository.put_cached_result(
                conn,
                source=source.name,
                ioc_type=ioc_type,
                value=value,
                result=result.to_dict(),
                fetched_at=result.fetched_at,
                expires_at=result.fetched_at + timedelta(seconds=source.ttl_seconds),
            )

    def hit_rate(self, source: str) -> dict[str, Any]:
        counts = self._redis.hgetall(stats_key(source, self._now()))
        hits, misses = counts.get("hit", 0), counts.get("miss", 0)
        return {"hits": hits, "misses": misses, "rate": round(hits / (hits + misses), 3) if hits + misses else None}
