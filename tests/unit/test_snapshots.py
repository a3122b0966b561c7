"""The runtime's snapshot cache: load once, refresh when due, keep the last good value, report its age."""

import pytest

from threatflow.platform.config import Settings
from threatflow.platform.errors import ConfigError, DependencyError
from threatflow.platform.snapshots import Loaded, SnapshotCache
from threatflow.runtime import Runtime


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Source:
    """A versioned source; `down` makes the next loads fail as an outage would."""

    def __init__(self) -> None:
        self.value = "v1"
        self.down = False
        self.reads = 0

    def load(self, version):
        self.reads += 1
        if self.down:
            raise DependencyError("source unreachable")
        if version == self.value:
            return None
        return Loaded(f"parsed {self.value}", self.value)


def test_loads_once_then_refreshes_when_due_and_reuses_an_unchanged_version():
    clock, source = Clock(), Source()
    snapshot = SnapshotCache(monotonic=clock).snapshot("ref", load=source.load, refresh_seconds=60)
    assert snapshot.get() == "parsed v1" and source.reads == 1
    clock.now += 59
    assert snapshot.get() == "parsed v1" and source.reads == 1
    clock.now += 2
    first = snapshot.get()
    assert source.reads == 2 and first == "parsed v1"
    source.value = "v2"
    clock.now += 61
    assert snapshot.get() == "parsed v2"
    status = snapshot.status()
    assert (status.loads, status.changes, status.failures, status.version, status.last_load_ok) == (3, 2, 0, "v2", True)


def test_a_failed_reload_keeps_the_last_good_value_and_retries_sooner():
    clock, source = Clock(), Source()
    snapshot = SnapshotCache(monotonic=clock).snapshot("ref", load=source.load, refresh_seconds=600, retry_seconds=30)
    assert snapshot.get() == "parsed v1"
    source.down = True
    clock.now += 601
    assert snapshot.get() == "parsed v1"
    status = snapshot.status()
    assert status.last_load_ok is False and status.last_error == "source unreachable" and status.failures == 1
    assert status.age_seconds == pytest.approx(601)
    assert "unreachable" in snapshot.reason
    source.down = False
    source.value = "v2"
    clock.now += 29
    assert snapshot.get() == "parsed v1"  # not yet: the retry is 30 s away
    clock.now += 2
    assert snapshot.get() == "parsed v2" and snapshot.reason == ""
    assert snapshot.status().age_seconds == 0


def test_without_a_good_value_get_raises_the_loaders_error_and_current_is_none():
    clock, source = Clock(), Source()
    source.down = True
    snapshot = SnapshotCache(monotonic=clock).snapshot("ref", load=source.load, refresh_seconds=60, retry_seconds=0)
    with pytest.raises(DependencyError, match="source unreachable"):
        snapshot.get()
    assert snapshot.current() is None and snapshot.status().loaded is False
    source.down = False
    assert snapshot.current() == "parsed v1"  # retry 0: the next use tries again


def test_invalidate_reloads_at_once_and_a_name_is_registered_once():
    clock, source = Clock(), Source()
    cache = SnapshotCache(monotonic=clock)
    snapshot = cache.snapshot("ref", load=source.load, refresh_seconds=3600)
    assert cache.snapshot("ref", load=lambda version: Loaded("other"), refresh_seconds=1) is snapshot
    snapshot.get()
    source.value = "v2"
    snapshot.invalidate()
    assert snapshot.get() == "parsed v2"
    assert list(cache.status()) == ["ref"] and cache.status()["ref"].to_json()["changes"] == 2


def test_runtime_snapshots_show_in_readiness_and_attack_data_comes_from_settings(tmp_path):
    runtime = Runtime(Settings.from_env({"THREATFLOW_USES": "", "ATTACK_DATA_PATH": str(tmp_path / "none.json")}))
    assert runtime.settings.attack_data_path == str(tmp_path / "none.json")
    with pytest.raises(ConfigError, match="ATTACK_DATA_PATH="):
        runtime.attack().get()
    assert runtime.attack() is runtime.attack()
    checks = runtime.readiness()
    assert checks["snapshot:attack"]["ok"] is True and checks["snapshot:attack"]["last_load_ok"] is False
    assert checks["snapshot:attack"]["loaded"] is False and checks["snapshot:attack"]["failures"] == 1
