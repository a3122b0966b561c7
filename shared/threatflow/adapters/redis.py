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
