"""One cache for reference data that changes slowly: the snapshot cache a `Runtime` owns.

Warninglists, the ATT&CK catalogue and the decay policies (and next the intel-source
registry and the served flow model) are read from a bucket, a file or the database,
used on every request, and changed by a sync job or an admin now and then. Each is
one named `Snapshot` in the runtime's `SnapshotCache`:

    snapshot = runtime.snapshot(
        "attack",
        load=attack.catalog_loader(data_path=..., bucket_models=..., blobs=lambda: runtime.blobs),
        refresh_seconds=3600,
        retry_seconds=0,
    )
    catalog = snapshot.get()      # the value; loads on first use, reloads when due
    index = snapshot.current()    # the same, but None instead of raising when nothing ever loaded

A loader is `load(version) -> Loaded(value, version) | None`. It is given the version of
the value held (None before the first load) and returns None when the source still holds
that version (an unchanged blob digest or file mtime), so an unchanged source is not
parsed again. `Loaded(value)` with no version always replaces the value.

Rules, the same for every snapshot:

- the first `get()` loads and blocks; later, once `refresh_seconds` have passed, one
  caller reloads while the others go on with the value held (no thundering herd);
- a reload that fails keeps the last good value (logged once per distinct error) and is
  retried after `retry_seconds` (default: min(refresh, 60 s)) rather than a whole refresh;
- with no good value yet, `get()` raises the loader's error (a ConfigError or
  DependencyError naming what to do) and `current()` returns None;
- `invalidate()` makes the next `get()` reload at once (an admin changed the data here);
- `status()` is the metrics of age, for /ready and logs: loaded, version, age_seconds
  (since the value was last confirmed current), last_load_ok, last_error, loads, changes
  and failures. `SnapshotCache.status()` gives them for every snapshot of the instance.

`runtime.snapshot(name, ...)` registers a name once per instance; asking again returns the
same snapshot (the first registration's loader is kept), so routes may call it per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from threatflow.platform.errors import ThreatFlowError

__all__ = ["Load", "Loaded", "Snapshot", "SnapshotCache", "SnapshotStatus"]

log = logging.getLogger("threatflow.platform.snapshots")

T = TypeVar("T")
DEFAULT_RETRY_SECONDS = 60.0


class Loaded(NamedTuple, Generic[T]):
    """What a loader read: the value and an opaque version (a digest, an mtime), "" if none."""

    value: T
    version: str = ""


Load = Callable[[str | None], "Loaded[T] | None"]


@dataclass(frozen=True, slots=True)
class SnapshotStatus:
    name: str
    loaded: bool
    version: str | None
    age_seconds: float | None
    refresh_seconds: float
    last_load_ok: bool | None
    last_error: str | None
    loads: int
    changes: int
    failures: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "loaded": self.loaded,
            "version": self.version,
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds, 1),
            "refresh_seconds": self.refresh_seconds,
            "last_load_ok": self.last_load_ok,
            "last_error": self.last_error,
            "loads": self.loads,
            "changes": self.changes,
            "failures": self.failures,
        }


def _describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ThreatFlowError) else f"{exc.__class__.__name__}: {exc}"


class Snapshot(Generic[T]):
    """One named piece of reference data, loaded lazily and refreshed on a timer."""

    def __init__(
        self,
        name: str,
        *,
        load: Load[T],
        refresh_seconds: float,
        retry_seconds: float | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        if refresh_seconds < 0:
            raise ValueError(f"snapshot {name!r}: refresh_seconds must not be negative")
        self.name = name
        self.refresh_seconds = float(refresh_seconds)
        self.retry_seconds = float(min(refresh_seconds, DEFAULT_RETRY_SECONDS) if retry_seconds is None else retry_seconds)
        self._load = load
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._has_value = False
        self._value: T | None = None
        self._version: str | None = None
        self._confirmed_at: float | None = None  # when a load last succeeded (changed or unchanged)
        self._next_load = 0.0
        self._error: BaseException | None = None
        self._last_ok: bool | None = None
        self._logged: set[str] = set()
        self._loads = self._changes = self._failures = 0

    def _now(self) -> float:
        # Looked up per call, so a test may patch time.monotonic.
        return self._monotonic() if self._monotonic is not None else time.monotonic()

    def get(self) -> T:
        """The value, loading it if due; raises the loader's error when no load ever succeeded."""
        self._refresh_if_due()
        if not self._has_value:
            error = self._error
            if error is None:  # another thread is loading the first value and we did not wait
                raise RuntimeError(f"snapshot {self.name!r} is not loaded")
            raise error
        return self._value  # type: ignore[return-value]

    def current(self) -> T | None:
        """The value, loading it if due; None when no load ever succeeded (see `reason`)."""
        self._refresh_if_due()
        return self._value if self._has_value else None

    @property
    def reason(self) -> str:
        """Why `current()` is None, or why the last reload failed; "" when all is well."""
        if self._error is not None:
            return _describe(self._error)
        return "" if self._has_value else "not loaded yet"

    def invalidate(self) -> None:
        """Reload on the next `get()` (the data changed and this instance knows it)."""
        self._next_load = 0.0

    def status(self) -> SnapshotStatus:
        confirmed = self._confirmed_at
        return SnapshotStatus(
            name=self.name,
            loaded=self._has_value,
            version=self._version,
            age_seconds=None if confirmed is None else max(0.0, self._now() - confirmed),
            refresh_seconds=self.refresh_seconds,
            last_load_ok=self._last_ok,
            last_error=None if self._error is None else _describe(self._error),
            loads=self._loads,
            changes=self._changes,
            failures=self._failures,
        )

    def _refresh_if_due(self) -> None:
        if self._now() < self._next_load:
            return
        # The first load blocks; a refresh lets other callers go on with the value held meanwhile.
        if not self._lock.acquire(blocking=not self._has_value):
            return
        try:
            if self._now() >= self._next_load:
                self._reload()
        finally:
            self._lock.release()

    def _reload(self) -> None:
        self._loads += 1
        try:
            loaded = self._load(self._version if self._has_value else None)
        except Exception as exc:
            self._failures += 1
            self._error = exc
            self._last_ok = False
            self._next_load = self._now() + self.retry_seconds
            message = _describe(exc)
            if message not in self._logged:
                self._logged.add(message)
                kept = "keeping the last good value" if self._has_value else "no value yet"
                log.warning("snapshot %s not (re)loaded (%s): %s", self.name, kept, message)
            return
        now = self._now()
        if loaded is not None:
            self._value, self._version = loaded.value, loaded.version
            self._has_value = True
            self._changes += 1
        self._error = None
        self._last_ok = True
        self._logged.clear()
        self._confirmed_at = now
        self._next_load = now + self.refresh_seconds


class SnapshotCache:
    """The snapshots of one function instance, by name."""

    def __init__(self, *, monotonic: Callable[[], float] | None = None) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._snapshots: dict[str, Snapshot[Any]] = {}

    def snapshot(self, name: str, *, load: Load[T], refresh_seconds: float, retry_seconds: float | None = None) -> Snapshot[T]:
        """The snapshot called `name`, registered on first call with `load` and its timings."""
        found = self._snapshots.get(name)
        if found is None:
            with self._lock:
                found = self._snapshots.get(name)
                if found is None:
                    found = self._snapshots[name] = Snapshot(
                        name, load=load, refresh_seconds=refresh_seconds, retry_seconds=retry_seconds, monotonic=self._monotonic
                    )
        return found

    def find(self, name: str) -> Snapshot[Any] | None:
        return self._snapshots.get(name)

    def names(self) -> list[str]:
        return sorted(self._snapshots)

    def status(self) -> dict[str, SnapshotStatus]:
        return {name: self._snapshots[name].status() for name in self.names()}
