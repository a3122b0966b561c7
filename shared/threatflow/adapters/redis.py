"""Redis: the client, and a GCRA rate limiter evaluated atomically in one round trip.

GCRA (the generic cell rate algorithm) keeps one timestamp per key, allows a
burst of `limit` and refills smoothly, and tells the caller exactly how long to
wait, which becomes Retry-After.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from threatflow.platform.errors import ConfigError, DependencyError

if TYPE_CHECKING:
    import redis as redis_lib

T = TypeVar("T")

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
if new_tat < now then new_tat = now end  -- a negative cost (a refund) gives back no more than a full bucket
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, allow_at - now, 0}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
-- remaining: the largest cost the test above admits now. The quotient alone rounds one below it for some limits
-- (a full bucket of 243 read 242), so it is settled by that same comparison.
local remaining = math.floor((tolerance - (new_tat - now)) / interval)
if new_tat + interval * (remaining + 1) - tolerance <= now then
  remaining = remaining + 1
elseif remaining > 0 and new_tat + interval * remaining - tolerance > now then
  remaining = remaining - 1
end
return {1, 0, remaining}
"""


# The GCRA above for every key of one request, in order, in one round trip (one EVALSHA).
# KEYS: bucket keys; ARGV: interval ms and tolerance ms per key (2 values a key). The first
# key that refuses ends the script and returns {its 1-based index, retry_after_ms}; the keys
# before it have been charged, the ones after it are not touched -- exactly what separate
# `hit` calls in the same order do. {0, 0}: every key allowed (and charged). One server clock
# reading serves all keys.
_GCRA_ALL = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - tolerance
  if allow_at > now then
    return {i, allow_at - now}
  end
  redis.call('SET', key, new_tat, 'PX', math.ceil(new_tat - now) + 1000)
end
return {0, 0}
"""


def connect(url: str | None, *, password: str | None = None, ca_cert: str | None = None, timeout_seconds: float = 0.25) -> redis_lib.Redis:
    import redis as redis_lib
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if not url:
        raise ConfigError("REDIS_URL is not set; it is required for caching and rate limits")
    options: dict[str, Any] = {}
    if password:
        options["password"] = password
    if url.startswith("rediss://") and ca_cert:
        options["ssl_ca_data"] = ca_cert  # Memorystore's own CA, not a public one
    # Short timeouts and no client-side retries: a dead or frozen Redis must turn into a fast
    # failure (and open the circuit breaker), not a request held for seconds.
    return redis_lib.Redis.from_url(
        url,
        socket_connect_timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
        decode_responses=False,
        **options,
    )


class CircuitBreaker:
    """Fails Redis calls fast once Redis is known to be down or hung.

    Closed: calls go through. A call that fails (error or timeout) opens the
    breaker for `open_seconds`: calls then raise DependencyError at once, without
    touching the network. After that, one trial call is let through (half-open);
    its success closes the breaker, its failure opens it again."""

    def __init__(self, *, open_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._open_seconds = open_seconds
        self._clock = clock
        self._open_until = 0.0
        self._trial = False
        self._lock = threading.Lock()
        self.last_error = ""

    @property
    def is_open(self) -> bool:
        return self._clock() < self._open_until

    def call(self, fn: Callable[[], T]) -> T:
        import redis as redis_lib

        with self._lock:
            now = self._clock()
            if now < self._open_until or self._trial:
                raise DependencyError(f"Redis is unavailable ({self.last_error}); skipping it for up to {self._open_seconds:g} s")
            half_open = self._open_until > 0.0
            self._trial = half_open
        try:
            result = fn()
        except (redis_lib.RedisError, OSError) as exc:
            with self._lock:
                self.last_error = exc.__class__.__name__
                self._open_until = self._clock() + self._open_seconds
                self._trial = False
            raise DependencyError(f"Redis is unreachable: {exc.__class__.__name__}") from exc
        if half_open:
            with self._lock:
                self._open_until = 0.0
                self._trial = False
        return result


def ping(client: redis_lib.Redis, *, breaker: CircuitBreaker | None = None) -> None:
    (breaker or CircuitBreaker(open_seconds=0)).call(client.ping)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_seconds: float
    remaining: int


@dataclass(frozen=True)
class Refusal:
    index: int  # the refused check, 0-based, in the order given to `hit_all`
    retry_after_seconds: float


class RateLimiter:
    def __init__(self, client: redis_lib.Redis, *, breaker: CircuitBreaker, prefix: str = "rl") -> None:
        self._client = client
        self._breaker = breaker
        self._script = client.register_script(_GCRA)
        self._script_all = client.register_script(_GCRA_ALL)  # EVALSHA; redis-py loads it again on NOSCRIPT
        self._prefix = prefix
        self._args: dict[tuple[int, int], tuple[bytes, bytes]] = {}  # a handful of configured limits
        self._local = threading.local()  # .client: this thread's own connection (a single-connection Redis)

    def hit(self, key: str, *, limit: int, period_seconds: int, cost: int = 1) -> Decision:
        """Charge `cost` to `key` if it fits (GCRA); a negative `cost` gives that much back, never past a full bucket."""
        interval_ms = period_seconds * 1000 / limit
        tolerance_ms = interval_ms * limit
        allowed, retry_ms, remaining = self._breaker.call(
            lambda: self._script(keys=[f"{self._prefix}:{key}"], args=[interval_ms, tolerance_ms, cost])
        )
        return Decision(bool(allowed), int(retry_ms) / 1000.0, int(remaining))

    def _gcra_args(self, limit: int, period_seconds: int) -> tuple[bytes, bytes]:
        """A limit's interval and tolerance (ms) as the bytes redis-py sends for them (repr of the float)."""
        args = self._args.get((limit, period_seconds))
        if args is None:
            interval_ms = period_seconds * 1000 / limit
            args = self._args[(limit, period_seconds)] = (repr(interval_ms).encode(), repr(interval_ms * limit).encode())
        return args

    def _evalsha(self, script: Any, keys: list[str], args: list[bytes]) -> Any:
        """EVALSHA as Script.__call__ sends it (loading the script again on NOSCRIPT), on this thread's
        own connection, without its per-call checks and argument encoding: this runs on every read.

        The thread keeps a connection taken from the client's pool. redis-py checks a pooled connection
        for unread data at every checkout: three socket calls (non-blocking, a recv, blocking again),
        each of which lets another thread take the GIL and makes this one wait to get it back. A kept
        connection is not checked; redis-py closes it after any error, so nothing unread is ever left
        on it. A ConnectionError on a kept connection is one Redis closed while it was kept (a restart,
        CLIENT KILL, an idle timeout), so Redis never saw the command: it is sent once more, on a new
        connection, as the pool's check would have replaced the dead one before sending it (only a
        Redis that ran the script and then died before answering, its state kept, would count that
        request twice). A timeout is not sent again: Redis may be running the script."""
        import redis as redis_lib

        kept = getattr(self._local, "client", None)
        client = kept or self._new_thread_client()
        try:
            return self._run_script(client, script, keys, args)
        except redis_lib.ConnectionError:
            if kept is None:
                raise
            kept.close()  # back to the pool, closed by redis-py; the new one is checked out (and checked)
            return self._run_script(self._new_thread_client(), script, keys, args)

    def _new_thread_client(self) -> Any:
        import redis as redis_lib

        self._local.client = None
        client = redis_lib.Redis(connection_pool=self._client.connection_pool, single_connection_client=True)
        self._local.client = client
        return client

    @staticmethod
    def _run_script(client: Any, script: Any, keys: list[str], args: list[bytes]) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            script.sha = client.script_load(script.script)
            return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    def hit_all(self, checks: Sequence[tuple[str, int, int]]) -> Refusal | None:
        """Charge one request to each (key, limit, period_seconds), in order, in one round trip.

        None: every key allowed it. Otherwise the first refusal; the keys before it were charged,
        the keys after it were not (as with `hit` per key, minus the extra round trips)."""
        keys = [f"{self._prefix}:{key}" for key, _, _ in checks]
        args: list[bytes] = []
        for _, limit, period_seconds in checks:
            args += self._gcra_args(limit, period_seconds)
        index, retry_ms = self._breaker.call(lambda: self._evalsha(self._script_all, keys, args))
        if int(index) == 0:
            return None
        return Refusal(int(index) - 1, int(retry_ms) / 1000.0)


# KEYS[1] failure counter, KEYS[2] lock; ARGV: mode ("check" | "fail" | "ok"), max failures,
# base lock ms, max lock ms, counter ttl ms. Returns {locked_ms, failures, newly_locked}.
_LOCKOUT = """
local mode = ARGV[1]
if mode == 'ok' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {0, 0, 0}
end
local locked = redis.call('PTTL', KEYS[2])
if mode == 'check' then
  if locked > 0 then return {locked, 0, 0} end
  return {0, 0, 0}
end
local failures = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
local maxf = tonumber(ARGV[2])
if failures >= maxf then
  local ms = math.min(tonumber(ARGV[3]) * (2 ^ (failures - maxf)), tonumber(ARGV[4]))
  redis.call('SET', KEYS[2], failures, 'PX', math.floor(ms))
  return {math.floor(ms), failures, 1}
end
return {0, failures, 0}
"""


@dataclass(frozen=True)
class LockoutState:
    locked_seconds: float  # > 0: the account is locked for this long
    failures: int
    newly_locked: bool


class AccountLockout:
    """Failed logins per account name (known or not, so a lock reveals nothing), in Redis.

    `max_failures` failures lock the name for `base_seconds`, doubling with each
    further failure up to `max_seconds`; a success clears it. Failures are
    forgotten a day after the last one."""

    def __init__(self, client: redis_lib.Redis, *, breaker: CircuitBreaker, max_failures: int, base_seconds: int, max_seconds: int) -> None:
        self._breaker = breaker
        self._script = client.register_script(_LOCKOUT)
        self._args = (max_failures, base_seconds * 1000, max_seconds * 1000, 86_400_000)

    def _run(self, mode: str, username: str) -> LockoutState:
        name = username.lower()
        locked_ms, failures, newly = self._breaker.call(lambda: self._script(keys=[f"lf:{name}", f"lock:{name}"], args=[mode, *self._args]))
        return LockoutState(int(locked_ms) / 1000.0, int(failures), bool(newly))

    def check(self, username: str) -> LockoutState:
        return self._run("check", username)

    def failed(self, username: str) -> LockoutState:
        return self._run("fail", username)

    def succeeded(self, username: str) -> None:
        self._run("ok", username)


# -- primitives the enrichment pipeline builds on: a TTL cache, locks, counters, a delay queue --

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisPrimitives:
    """Small atomic operations on one Redis, through the instance's circuit breaker:
    every RedisError (and every call while the breaker is open) becomes a DependencyError."""

    def __init__(self, client: redis_lib.Redis, *, breaker: CircuitBreaker) -> None:
        self._client = client
        self._breaker = breaker
        self._release = client.register_script(_RELEASE)

    def _call(self, fn: Any) -> Any:
        return self._breaker.call(fn)

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
