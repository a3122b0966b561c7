"""Wiring, once per function instance: settings, lazily built adapters and the snapshot cache.

Entry points create one Runtime at import; nothing heavy happens until a
request needs it, so importing a function module stays cheap (cold starts).

Reference data that changes slowly is held in the runtime's snapshot cache
(threatflow.platform.snapshots) and handed to services as required keyword
arguments: `warninglists()`, `attack()` and `decay_policies()` below, and
`snapshot(name, load=..., refresh_seconds=...)` for the next ones (the intel-source
registry, the served flow model). `readiness()` reports each snapshot's age.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from threatflow.platform import collector
from threatflow.platform import logging as tf_logging
from threatflow.platform.config import Settings
from threatflow.platform.errors import ConfigError, DependencyError
from threatflow.platform.ports import Clock, SystemClock
from threatflow.platform.snapshots import Load, Loaded, Snapshot, SnapshotCache

if TYPE_CHECKING:
    import redis
    from sqlalchemy.engine import Engine

    from threatflow.adapters import postgres
    from threatflow.adapters import redis as redis_adapter
    from threatflow.adapters.firestore import FirestoreDocuments
    from threatflow.adapters.pubsub import PubSubPublisher
    from threatflow.adapters.pushauth import PushVerifier
    from threatflow.adapters.redis import RateLimiter
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.iocs.model import DecayPolicy
    from threatflow.iocs.warninglists import Matcher, WarninglistIndex
    from threatflow.platform.ports import BlobStore, SecretSource
    from threatflow.threats.attack import AttackCatalog


T = TypeVar("T")

WARNINGLISTS = "warninglists"
ATTACK = "attack"
DECAY_POLICIES = "decay-policies"
_warninglist_log = logging.getLogger("threatflow.iocs.warninglists")


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        clients: Mapping[str, Any] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        """`clients` are prebuilt adapters by property name ("blobs", "engine"...), for tests
        and tools that bring their own; `monotonic` drives the snapshot timers (tests)."""
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.RLock()  # re-entrant: one client may be built from another
        self._built: dict[str, Any] = dict(clients or {})
        self.snapshots = SnapshotCache(monotonic=monotonic)
        self._noted: set[str] = set()
        tf_logging.configure(settings.log_level)
        collector.tune()

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

    def scoped(self, key: str, build: Callable[[], T]) -> T:
        """A domain's object built once per runtime (e.g. the enrichment context), kept on the runtime so it
        lives and dies with it. A module-level cache keyed by runtime kept every runtime a process ever
        built alive with its connection pools: in the test suite, that exhausted PostgreSQL's connections."""
        return self._get(f"scoped:{key}", build)

    @property
    def engine(self) -> Engine:
        from threatflow.adapters import postgres

        return self._get("engine", lambda: postgres.create_engine(self.settings))

    def read_engine(self, session: postgres.ReadSession) -> Engine:
        """A read-only pool whose sessions carry `session`'s settings (one per distinct session, built on first use)."""
        from threatflow.adapters import postgres

        return self._get(f"read_engine:{session}", lambda: postgres.create_read_engine(self.settings, session=session))

    @property
    def redis(self) -> redis.Redis:
        from threatflow.adapters import redis as redis_adapter

        return self._get(
            "redis",
            lambda: redis_adapter.connect(
                self.settings.redis_url,
                password=self.settings.redis_password,
                ca_cert=self.settings.redis_ca_cert,
                timeout_seconds=self.settings.redis_timeout_ms / 1000,
            ),
        )

    @property
    def redis_breaker(self) -> redis_adapter.CircuitBreaker:
        """One per instance: once Redis is known hung, every Redis call fails in microseconds for a while."""
        from threatflow.adapters import redis as redis_adapter

        return self._get("redis_breaker", lambda: redis_adapter.CircuitBreaker(open_seconds=self.settings.redis_breaker_seconds))

    @property
    def push_verifier(self) -> PushVerifier:
        from threatflow.adapters.pushauth import PushVerifier

        return self._get("push_verifier", lambda: PushVerifier.from_settings(self.settings))

    def dependency_error(self, exc: BaseException) -> DependencyError | None:
        """A backing service's failure as a 503 naming it, or None when `exc` is a bug."""
        from threatflow.adapters import cloud_errors, postgres

        return postgres.unavailable(exc) or cloud_errors.unavailable(exc)

    @property
    def rate_limiter(self) -> RateLimiter:
        from threatflow.adapters.redis import RateLimiter

        return self._get("rate_limiter", lambda: RateLimiter(self.redis, breaker=self.redis_breaker))

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

    # -- reference data: one snapshot cache ------------------------------------------------

    def snapshot(self, name: str, *, load: Load[T], refresh_seconds: float, retry_seconds: float | None = None) -> Snapshot[T]:
        """The named snapshot of this instance, registered on first call (see threatflow.platform.snapshots)."""
        return self.snapshots.snapshot(name, load=load, refresh_seconds=refresh_seconds, retry_seconds=retry_seconds)

    def warninglists(self) -> Snapshot[WarninglistIndex] | None:
        """The MISP warninglists, or None when WARNINGLISTS_SOURCE is unset (they are off)."""
        source = self.settings.warninglists_source
        if not source:
            if "warninglists-off" not in self._noted:
                self._noted.add("warninglists-off")
                _warninglist_log.warning("warninglists are off: WARNINGLISTS_SOURCE is not set")
            return None
        from threatflow.iocs import warninglists

        load = warninglists.snapshot_loader(source=source, bucket=self.settings.bucket_models, blobs=self._blob_store, clock=self.clock)
        return self.snapshot(WARNINGLISTS, load=load, refresh_seconds=self.settings.warninglists_refresh_seconds)

    def warninglist_index(self) -> WarninglistIndex | None:
        """The loaded index; None when the lists are off or not loaded yet (`warninglists_reason()` says why)."""
        snapshot = self.warninglists()
        return snapshot.current() if snapshot is not None else None

    def warninglist_matcher(self) -> Matcher | None:
        """What services take as `warninglists=`: the index's `match`, or None when off or not loaded.

        Cheap (a clock read): call it per request or batch, so the refresh reaches the caller."""
        index = self.warninglist_index()
        return index.match if index is not None else None

    def warninglists_reason(self) -> str:
        """Why `warninglist_index()` is None (or why the last reload failed), in words for an API answer."""
        snapshot = self.warninglists()
        return "WARNINGLISTS_SOURCE is not set" if snapshot is None else snapshot.reason

    def attack(self) -> Snapshot[AttackCatalog]:
        """The ATT&CK catalogue: ATTACK_DATA_PATH, else the sync-attack snapshot in the models bucket.

        `.get()` raises ConfigError naming what to do when there is no data."""
        from threatflow.threats import attack

        settings = self.settings
        load = attack.catalog_loader(data_path=settings.attack_data_path, bucket_models=settings.bucket_models, blobs=self._blob_store)
        # A local file is checked (one stat) on every use; a bucket object every ATTACK_REFRESH_SECONDS.
        # Missing data is looked for again on the next use (retry 0), so a sync is seen at once.
        local = bool(settings.attack_data_path) and not (settings.attack_data_path or "").startswith("gs://")
        return self.snapshot(ATTACK, load=load, refresh_seconds=0 if local else settings.attack_refresh_seconds, retry_seconds=0)

    def decay_policies(self) -> Snapshot[dict[str, DecayPolicy]]:
        """Per IoC type TTL and decay, from PostgreSQL; `.invalidate()` after an admin changes one."""

        def load(version: str | None) -> Loaded[dict[str, DecayPolicy]]:
            from threatflow.adapters.postgres import unit_of_work
            from threatflow.iocs import repository

            with unit_of_work(self.engine) as conn:
                return Loaded(repository.policies(conn))

        return self.snapshot(DECAY_POLICIES, load=load, refresh_seconds=self.settings.policy_refresh_seconds, retry_seconds=0)

    def _blob_store(self) -> BlobStore:
        return self.blobs

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
        # Reference data: never "down" (a function serves with the last good copy, or without it,
        # and says so per route), but its age and last load are worth seeing next to the services.
        for name, status in self.snapshots.status().items():
            results[f"snapshot:{name}"] = {"ok": True, **status.to_json()}
        return results

    def _ping_postgres(self) -> None:
        from threatflow.adapters import postgres

        postgres.ping(self.engine)

    def _ping_redis(self) -> None:
        from threatflow.adapters import redis as redis_adapter

        redis_adapter.ping(self.redis, breaker=self.redis_breaker)
