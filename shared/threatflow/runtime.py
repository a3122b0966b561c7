"""Wiring, once per function instance: settings plus lazily built adapters.

Entry points create one Runtime at import; nothing heavy happens until a
request needs it, so importing a function module stays cheap (cold starts).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from threatflow.platform import logging as tf_logging
from threatflow.platform.config import Settings
from threatflow.platform.errors import ConfigError, DependencyError
from threatflow.ports import SystemClock

if TYPE_CHECKING:
    import redis
    from sqlalchemy.engine import Engine

    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.adapters.pubsub import PubSubPublisher
    from threatflow.adapters.redis import RateLimiter
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.ports import SecretSource


T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = SystemClock()
        self._lock = threading.RLock()  # re-entrant: one client may be built from another
        self._built: dict[str, Any] = {}
        tf_logging.configure(settings.log_level)

    @classmethod
    def from_env(cls, *, require: tuple[str, ...] = ()) -> Runtime:
        return cls(Settings.from_env(require=require))

    def _get(self, key: str, build: Callable[[], T]) -> T:
        """Build a client on first use, once per instance even under concurrent requests."""
        value = self._built.get(key)
        if value is None:
            with self._lock:
                value = self._built.get(key)
                if value is None:
                    value = self._built[key] = build()
        return cast(T, value)

    @property
    def engine(self) -> Engine:
        from threatflow.adapters import postgres

        return self._get("engine", lambda: postgres.create_engine(self.settings))

    @property
    def redis(self) -> redis.Redis:
        from threatflow.adapters import redis as redis_adapter

        return self._get(
            "redis",
            lambda: redis_adapter.connect(
                self.settings.redis_url, password=self.settings.redis_password, ca_cert=self.settings.redis_ca_cert
            ),
        )

    @property
    def rate_limiter(self) -> RateLimiter:
        from threatflow.adapters.redis import RateLimiter

        return self._get("rate_limiter", lambda: RateLimiter(self.redis))

    @property
    def publisher(self) -> PubSubPublisher:
        from threatflow.adapters.pubsub import PubSubPublisher

        return self._get("publisher", lambda: PubSubPublisher(self.settings.project))

    @property
    def documents(self) -> FirestoreDocuments:
        from threatflow.adapters.firestore import FirestoreDocuments

        return self._get("documents", lambda: FirestoreDocuments(self.settings.project))

    @property
    def blobs(self) -> GcsBlobs:
        from threatflow.adapters.storage import GcsBlobs

        return self._get("blobs", lambda: GcsBlobs(self.settings.project))

    @property
    def secrets(self) -> SecretSource:
        from threatflow.adapters import secrets

        if self.settings.env == "cloud":
            # Short cache: rotated intel API keys are used without a redeploy.
            return self._get("secrets", lambda: secrets.SecretManagerSecrets(self.settings.project, cache_seconds=30.0))
        return self._get("secrets", secrets.EnvSecrets)

    def readiness(self) -> dict[str, dict[str, Any]]:
        """Check every backing service this function uses, in parallel, each bounded."""
        from concurrent.futures import ThreadPoolExecutor, wait

        checks: dict[str, Callable[[], None]] = {
            "postgres": self._ping_postgres,
            "redis": self._ping_redis,
            "pubsub": lambda: self.publisher.ping(),
            "firestore": lambda: self.documents.ping(),
            "storage": lambda: self.blobs.ping(self.settings.bucket_reports),
        }
        wanted = [name for name in self.settings.uses if name in checks]
        results: dict[str, dict[str, Any]] = {}
        pool = ThreadPoolExecutor(max_workers=len(wanted) or 1)
        futures = {name: pool.submit(checks[name]) for name in wanted}
        wait(futures.values(), timeout=5)
        for name, future in futures.items():
            if not future.done():
                results[name] = {"ok": False, "error": "timed out after 5 s"}
                continue
            exc = future.exception()
            if exc is None:
                results[name] = {"ok": True}
            elif isinstance(exc, (DependencyError, ConfigError)):
                results[name] = {"ok": False, "error": exc.message}
            else:
                results[name] = {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
        pool.shutdown(wait=False, cancel_futures=True)
        return results

    def _ping_postgres(self) -> None:
        from threatflow.adapters import postgres

        postgres.ping(self.engine)

    def _ping_redis(self) -> None:
        from threatflow.adapters import redis as redis_adapter

        redis_adapter.ping(self.redis)
