"""Redis: the client, and a GCRA rate limiter evaluated atomically in one round trip.

GCRA (the generic cell rate algorithm) keeps one timestamp per key, allows a
burst of `limit` and refills smoothly, and tells the caller exactly how long to
wait, which becomes Retry-After.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from threatflow.platform.errors import ConfigError, DependencyError

if TYPE_CHECKING:
    import redis as redis_lib

# KEYS[1] bucket key; ARGV: emission interval ms, burst tolerance ms, cost.
# Returns {allowed (0/1), retry_after_ms, remaining}. Uses the server clock so
# every instance agrees.
_GCRA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, allow_at - now, 0}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
return {1, 0, math.floor((tolerance - (new_tat - now)) / interval)}
"""


def connect(url: str | None, *, password: str | None = None, ca_cert: str | None = None) -> redis_lib.Redis:
    import redis as redis_lib

    if not url:
        raise ConfigError("REDIS_URL is not set; it is required for caching and rate limits")
    options: dict[str, Any] = {}
    if password:
        options["password"] = password
    if url.startswith("rediss://") and ca_cert:
        options["ssl_ca_data"] = ca_cert  # Memorystore's own CA, not a public one
    # Short timeouts: a dead Redis must turn into a fast 503, not a hung request.
    return redis_lib.Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=30, decode_responses=False, **options
    )


def ping(client: redis_lib.Redis) -> None:
    import redis as redis_lib

    try:
        client.ping()
    except redis_lib.RedisError as exc:
        raise DependencyError(f"Redis is unreachable: {exc.__class__.__name__}") from exc


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_seconds: float
    remaining: int


class RateLimiter:
    def __init__(self, client: redis_lib.Redis, *, prefix: str = "rl") -> None:
        self._client = client
        self._script = client.register_script(_GCRA)
        self._prefix = prefix

    def hit(self, key: str, *, limit: int, period_seconds: int, cost: int = 1) -> Decision:
        import redis as redis_lib

        interval_ms = period_seconds * 1000 / limit
        tolerance_ms = interval_ms * limit
        try:
            allowed, retry_ms, remaining = self._script(keys=[f"{self._prefix}:{key}"], args=[interval_ms, tolerance_ms, cost])
        except redis_lib.RedisError as exc:
            raise DependencyError(f"Redis is unreachable: {exc.__class__.__name__}") from exc
        return Decision(bool(allowed), int(retry_ms) / 1000.0, int(remaining))


# -- primitives the enrichment pipeline builds on: a TTL cache, locks, counters, a delay queue --

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisPrimitives:
    """Small atomic operations on one Redis; every RedisError becomes a DependencyError."""

    def __init__(self, client: redis_lib.Redis) -> None:
        self._client = client
        self._release = client.register_script(_RELEASE)

    def _call(self, fn: Any) -> Any:
        import redis as redis_lib

        try:
            return fn()
        except redis_lib.RedisError as exc:
            raise DependencyError(f"Redis is unreachable: {exc.__class__.__name__}") from exc

    def get(self, key: str) -> bytes | None:
        return self._call(lambda: self._client.get(key))  # type: ignore[no-any-return]

    def mget(self, keys: list[str]) -> list[bytes | None]:
        return list(self._call(lambda: self._client.mget(keys))) if keys else []

    def set(self, key: str, value: bytes, *, ttl_seconds: float) -> None:
        self._call(lambda: self._client.set(key, value, px=max(1, int(ttl_seconds * 1000))))

    def delete(self, key: str) -> None:
        self._call(lambda: self._client.delete(key))

    def acquire(self, key: str, token: str, *, ttl_seconds: float) -> bool:
        """SET NX PX: True when this caller holds the lock."""
        return bool(self._call(lambda: self._client.set(key, token, nx=True, px=max(1, int(ttl_seconds * 1000)))))

    def release(self, key: str, token: str) -> None:
        """Delete the lock only if this caller still holds it."""
        self._call(lambda: self._release(keys=[key], args=[token]))

    def exists(self, key: str) -> bool:
        return bool(self._call(lambda: self._client.exists(key)))

    def incr(self, key: str, amount: int = 1, *, expire_at: int | None = None) -> int:
        def run() -> int:
            pipe = self._client.pipeline()
            pipe.incrby(key, amount)
            if expire_at is not None:
                pipe.expireat(key, expire_at)
            return int(pipe.execute()[0])

        return self._call(run)  # type: ignore[no-any-return]

    def counter(self, key: str) -> int:
        value = self.get(key)
        return int(value) if value else 0

    def hincr(self, key: str, field: str, amount: int = 1) -> None:
        self._call(lambda: self._client.hincrby(key, field, amount))

    def hgetall(self, key: str) -> dict[str, int]:
        raw = self._call(lambda: self._client.hgetall(key))
        return {k.decode(): int(v) for k, v in raw.items()}

    def schedule(self, key: str, member: bytes, *, due_epoch: float) -> None:
        """Add to a delay queue (sorted set scored by due time)."""
        self._call(lambda: self._client.zadd(key, {member: due_epoch}))

    def take_due(self, key: str, *, now_epoch: float, limit: int = 100) -> list[bytes]:
        """Remove and return members due by now; each is returned to one caller only."""

        def run() -> list[bytes]:
            members: list[bytes] = list(self._client.zrangebyscore(key, "-inf", now_epoch, start=0, num=limit))  # type: ignore[arg-type]
            return [m for m in members if self._client.zrem(key, m)]

        return self._call(run)  # type: ignore[no-any-return]
