"""The sync job's core and the per-instance matcher, on an in-memory blob store."""

import json
import logging
from datetime import UTC, datetime

import pytest
from helpers import require_shared_data

from threatflow.iocs import warninglists
from threatflow.platform import logging as tf_logging
from threatflow.platform import snapshots
from threatflow.platform.config import Settings
from threatflow.platform.errors import DependencyError, NotFoundError, ValidationError
from threatflow.runtime import Runtime

NOW = datetime(2026, 11, 23, tzinfo=UTC)
MODELS = "models-bucket"
RFC1918 = {
    "name": "List of RFC 1918 CIDR blocks",
    "description": "private networks",
    "type": "cidr",
    "version": 5,
    "matching_attributes": ["ip-src", "ip-dst"],
    "list": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
}


class MemoryBlobs:
    """The BlobStore port in memory; `down` makes every call fail as an outage would."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.down = False
        self.gets = 0

    def _check(self) -> None:
        if self.down:
            raise DependencyError("Cloud Storage is unreachable: test")

    def put(self, bucket, name, data, *, content_type="application/octet-stream"):
        self._check()
        self.objects[(bucket, name)] = data

    def get(self, bucket, name):
        self._check()
        self.gets += 1
        try:
            return self.objects[(bucket, name)]
        except KeyError:
            raise NotFoundError(f"no object {name!r} in bucket {bucket!r}") from None

    def exists(self, bucket, name):
        return (bucket, name) in self.objects

    def delete(self, bucket, name):
        self.objects.pop((bucket, name), None)

    def list(self, bucket, *, prefix="", limit=1000):
        self._check()
        return sorted(n for b, n in self.objects if b == bucket and n.startswith(prefix))[:limit]


class FixedClock:
    def now(self):
        return NOW


# A Runtime routes the root logger to JSON once per process; do it at import, before caplog adds its handler.
tf_logging.configure()


class FakeRuntime(Runtime):
    """A real Runtime whose blob store is in memory; its snapshot timers read time.monotonic."""

    def __init__(self, **env: str) -> None:
        super().__init__(Settings.from_env({"BUCKET_MODELS": MODELS, **env}), clock=FixedClock(), clients={"blobs": MemoryBlobs()})


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic(monkeypatch):
    clock = FakeMonotonic()
    monkeypatch.setattr(snapshots.time, "monotonic", clock)
    return clock


def put_list(blobs, bucket, prefix, key, doc):
    blobs.put(bucket, f"{prefix}/{key}/list.json", doc if isinstance(doc, bytes) else json.dumps(doc).encode())


def test_sync_from_a_bucket_reports_bad_lists_and_writes_the_snapshot():
    blobs = MemoryBlobs()
    put_list(blobs, "src", "wl/lists", "rfc1918", RFC1918)
    put_list(blobs, "src", "wl/lists", "broken", b"[not json")
    put_list(blobs, "src", "wl/lists", "half", {**RFC1918, "name": "Half", "list": ["192.0.2.0/24", "nope"]})
    blobs.put("src", "wl/README.md", b"not a list")

    result = warninglists.sync(source="gs://src/wl", blobs=blobs, bucket=MODELS, clock=FixedClock())

    assert result["snapshot"] == f"gs://{MODELS}/warninglists/snapshot.json"
    assert result["loaded"] == 2
    assert [(item["key"], item["entries"], item["dropped_entries"]) for item in result["lists"]] == [("half", 1, 1), ("rfc1918", 3, 0)]
    assert result["rejected"] == [{"key": "broken", "error": result["rejected"][0]["error"]}]
    assert "not valid JSON" in result["rejected"][0]["error"]
    assert result["dropped"][0]["key"] == "half" and result["dropped"][0]["examples"] == ["nope"]
    index = warninglists.load_snapshot(blobs.objects[(MODELS, warninglists.SNAPSHOT_NAME)])
    assert index.match("ipv4", "10.9.9.9") == ["rfc1918"]
    assert index.source == "gs://src/wl"


def test_sync_refuses_to_replace_the_snapshot_with_nothing():
    blobs = MemoryBlobs()
    put_list(blobs, "src", "wl", "broken", b"{")
    blobs.put(MODELS, warninglists.SNAPSHOT_NAME, b"the previous snapshot")
    with pytest.raises(ValidationError, match="holds no valid warninglist") as caught:
        warninglists.sync(source="gs://src/wl", blobs=blobs, bucket=MODELS, clock=FixedClock())
    assert caught.value.details["rejected"][0]["key"] == "broken"
    assert blobs.objects[(MODELS, warninglists.SNAPSHOT_NAME)] == b"the previous snapshot"


def test_sync_without_a_source_is_skipped_not_failed():
    assert warninglists.sync(source=None, blobs=MemoryBlobs(), bucket=MODELS, clock=FixedClock())["skipped"] is True


def test_sync_of_the_shared_lists():
    source = str(require_shared_data("feeds", "misp-warninglists"))
    blobs = MemoryBlobs()
    result = warninglists.sync(source=source, blobs=blobs, bucket=MODELS, clock=FixedClock())
    assert result["loaded"] == 32 and result["rejected"] == [] and result["dropped"] == []
    counts = {item["key"]: item["entries"] for item in result["lists"]}
    assert counts["rfc1918"] == 3 and counts["public-dns-v4"] > 60_000


def test_matcher_is_none_and_logged_once_without_a_source(caplog):
    runtime = FakeRuntime()
    with caplog.at_level(logging.WARNING, logger="threatflow.iocs.warninglists"):
        assert runtime.warninglist_matcher() is None
        assert runtime.warninglist_matcher() is None
    assert [r.getMessage() for r in caplog.records] == ["warninglists are off: WARNINGLISTS_SOURCE is not set"]
    assert runtime.warninglists_reason() == "WARNINGLISTS_SOURCE is not set"


def test_matcher_loads_the_snapshot_from_the_models_bucket(tmp_path):
    runtime = FakeRuntime(WARNINGLISTS_SOURCE="gs://src/wl")
    index = warninglists.index_from_sources([("rfc1918", RFC1918)], source="gs://src/wl")
    runtime.blobs.put(MODELS, warninglists.SNAPSHOT_NAME, index.snapshot())

    match = runtime.warninglist_matcher()

    assert match is not None and match("ipv4", "192.168.1.1") == ["rfc1918"]
    loaded = runtime.warninglist_index()
    assert loaded is not None and loaded.origin == f"gs://{MODELS}/warninglists/snapshot.json"
    assert runtime.blobs.gets == 1  # cached for the instance


def test_matcher_compiles_a_local_source_when_there_is_no_snapshot():
    source = str(require_shared_data("feeds", "misp-warninglists"))
    runtime = FakeRuntime(WARNINGLISTS_SOURCE=source)
    match = runtime.warninglist_matcher()
    assert match is not None and match("ipv4", "8.8.8.8") == ["public-dns-v4"]
    assert runtime.warninglist_index().origin == source


def test_matcher_waits_for_the_sync_job_when_the_source_is_a_bucket(monotonic):
    runtime = FakeRuntime(WARNINGLISTS_SOURCE="gs://src/wl")
    assert runtime.warninglist_matcher() is None
    assert "run the sync-warninglists job" in runtime.warninglists_reason()
    # Once the job has written the snapshot, the next retry picks it up.
    index = warninglists.index_from_sources([("rfc1918", RFC1918)], source="gs://src/wl")
    runtime.blobs.put(MODELS, warninglists.SNAPSHOT_NAME, index.snapshot())
    assert runtime.warninglist_matcher() is None  # not yet: retries are spaced
    monotonic.now += 301
    assert runtime.warninglist_matcher()("ipv4", "10.0.0.1") == ["rfc1918"]


def test_refresh_picks_up_a_new_snapshot_and_survives_an_outage(monotonic):
    runtime = FakeRuntime(WARNINGLISTS_SOURCE="gs://src/wl", WARNINGLISTS_REFRESH_SECONDS="600")
    first = warninglists.index_from_sources([("rfc1918", RFC1918)], source="gs://src/wl")
    runtime.blobs.put(MODELS, warninglists.SNAPSHOT_NAME, first.snapshot())
    assert runtime.warninglist_matcher()("ipv4", "192.0.2.1") == []

    second = warninglists.index_from_sources(
        [("rfc1918", RFC1918), ("test-net", {**RFC1918, "name": "TEST-NET", "list": ["192.0.2.0/24"]})], source="gs://src/wl"
    )
    runtime.blobs.put(MODELS, warninglists.SNAPSHOT_NAME, second.snapshot())
    monotonic.now += 599
    assert runtime.warninglist_matcher()("ipv4", "192.0.2.1") == []  # still within the refresh period
    monotonic.now += 2
    assert runtime.warninglist_matcher()("ipv4", "192.0.2.1") == ["test-net"]

    # An unchanged snapshot is not recompiled.
    before = runtime.warninglist_index()
    monotonic.now += 601
    assert runtime.warninglist_index() is before

    # Storage down at refresh time: keep serving what we have.
    runtime.blobs.down = True
    monotonic.now += 601
    assert runtime.warninglist_matcher()("ipv4", "192.0.2.1") == ["test-net"]
    assert "unreachable" in runtime.warninglists_reason()


def test_check_value_normalises_and_explains_bad_values():
    from threatflow.iocs.types import IocType
    from threatflow.iocs.warninglist_routes import CheckItem, check_value

    index = warninglists.index_from_sources([("rfc1918", RFC1918)], source="test")
    assert check_value("10.1.2.3", index=index) == {
        "value": "10.1.2.3",
        "type": "ipv4",
        "normalised": "10.1.2.3",
        "warninglists": ["rfc1918"],
    }
    assert check_value("hxxp://10[.]1.2.3/x", index=index)["warninglists"] == ["rfc1918"]
    bad = check_value(CheckItem(value="not an ip", type=IocType.IPV4), index=index)
    assert bad["normalised"] is None and bad["warninglists"] == [] and bad["type"] == "ipv4" and bad["reason"]
