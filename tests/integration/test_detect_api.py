"""The model registry against the storage emulator, and the detect function over its real HTTP surface."""

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from flows_support import emptied_models_bucket
from helpers import create_user
from ml_helpers import flow_without_targets, sample_rows, small_model

from threatflow.flows import features as F
from threatflow.flows import model as M
from threatflow.flows import registry
from threatflow.platform.errors import ConflictError, DependencyError

pytestmark = pytest.mark.integration
BUCKET = "threatflow-models"


def _now():
    return datetime.now(UTC)


@pytest.fixture
def blobs(backend_env):
    return emptied_models_bucket(backend_env["GOOGLE_CLOUD_PROJECT"])


def _publish(blobs, version):
    result = replace(small_model(), version=version)
    result.metadata = {**result.metadata, "version": version}
    registry.publish(result, blobs=blobs, bucket=BUCKET)
    return result


def test_publish_list_promote_load(blobs):
    with pytest.raises(DependencyError, match="threatflow models train"):
        M.load_serving_model(blobs=blobs, bucket=BUCKET)
    first = _publish(blobs, "v1")
    _publish(blobs, "v2")
    with pytest.raises(ConflictError):
        _publish(blobs, "v1")
    assert [(v.version, v.serving) for v in registry.list_versions(blobs=blobs, bucket=BUCKET)] == [("v2", False), ("v1", False)]

    pointer = registry.promote(blobs=blobs, bucket=BUCKET, version="v1", now=_now)
    assert pointer["version"] == "v1" and pointer["sha256"] == first.metadata["sha256"]
    assert json.loads(blobs.get(BUCKET, "flows/serving.json"))["version"] == "v1"
    model = M.load_serving_model(blobs=blobs, bucket=BUCKET)
    assert model.version == "v1" and model.sha256 == first.metadata["sha256"]
    assert [v.version for v in registry.list_versions(blobs=blobs, bucket=BUCKET) if v.serving] == ["v1"]


def test_a_tampered_artifact_is_neither_promoted_nor_loaded(blobs):
    _publish(blobs, "good")
    registry.promote(blobs=blobs, bucket=BUCKET, version="good", now=_now)
    data = bytearray(blobs.get(BUCKET, "flows/models/good/model.npz"))
    data[100] ^= 0x01
    blobs.put(BUCKET, "flows/models/good/model.npz", bytes(data))
    with pytest.raises(ConflictError, match="sha256"):
        registry.promote(blobs=blobs, bucket=BUCKET, version="good", now=_now)
    with pytest.raises(DependencyError, match="sha256"):
        M.load_serving_model(blobs=blobs, bucket=BUCKET)


def test_the_model_snapshot_picks_up_a_new_promotion_without_a_restart(blobs):
    from threatflow.platform.snapshots import Snapshot

    clock = [0.0]
    snapshot = Snapshot(
        "flow-model",
        load=M.serving_model_loader(blobs=lambda: blobs, bucket=BUCKET),
        refresh_seconds=30,
        retry_seconds=5,
        monotonic=lambda: clock[0],
    )
    with pytest.raises(DependencyError, match="threatflow models train"):
        snapshot.get()
    _publish(blobs, "a")
    _publish(blobs, "b")
    registry.promote(blobs=blobs, bucket=BUCKET, version="a", now=_now)
    clock[0] = 6.0  # past the retry interval after the failed first load
    first = snapshot.get()
    assert first.version == "a" and first.load_seconds is not None
    registry.promote(blobs=blobs, bucket=BUCKET, version="b", now=_now)
    assert snapshot.get().version == "a"  # within the refresh interval: no storage call
    clock[0] = 37.0
    assert snapshot.get().version == "b"
    clock[0] = 68.0
    assert snapshot.get().version == "b" and snapshot.status().changes == 2  # unchanged pointer: not loaded again


@pytest.fixture
def detect(function_client, backend_env, blobs):
    password = create_user(backend_env["DATABASE_URL"], "reader1", "reader")
    auth = function_client("auth")
    token = auth.post("/api/v1/auth/token", json={"username": "reader1", "password": password}).get_json()["access_token"]
    client = function_client("detect")

    class Api:
        headers = {"Authorization": f"Bearer {token}"}

        def post(self, path, body):
            return client.post(path, json=body, headers=self.headers)

        def get(self, path):
            return client.get(path, headers=self.headers)

        def post_raw(self, path, data):
            return client.post(path, data=data, headers={**self.headers, "Content-Type": "application/json"})

    return Api()


@pytest.mark.parametrize("path", ["/api/v1/detect", "/api/v1/detect/batch"])
@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_json_nested_past_the_decoder_is_a_400_not_a_500(detect, path, where):
    """Found by fuzzing through the gateway (bench_gateway_limits.py): the detect routes decode their body
    themselves (no typed envelope), and msgspec's RecursionError on deep nesting was a 500. The in-process
    fuzz test missed it because Hypothesis raises the recursion limit while a test runs (it now restores the
    default around each request); a request from a thread of its own is tried too."""
    import threading

    body = b'{"flow": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    answers = []
    if where == "main thread":
        answers.append(detect.post_raw(path, body))
    else:
        worker = threading.Thread(target=lambda: answers.append(detect.post_raw(path, body)))
        worker.start()
        worker.join(30)
    response = answers[0]
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert "nests deeper than" in response.get_json()["error"]["message"]


def test_detect_answers_503_naming_the_command_until_a_model_is_promoted(detect):
    response = detect.post("/api/v1/detect", {"flow": flow_without_targets(sample_rows(2500)[0])})
    assert response.status_code == 503
    assert "threatflow models train" in response.get_json()["error"]["message"]


def test_detect_single_batch_model_and_strict_errors(detect, blobs):
    trained = _publish(blobs, "served")
    registry.promote(blobs=blobs, bucket=BUCKET, version="served", now=_now)
    rows = sample_rows(2500)[:200]
    flows = [flow_without_targets(r) for r in rows]

    one = detect.post("/api/v1/detect", {"flow": flows[0]})
    assert one.status_code == 200, one.get_json()
    result = one.get_json()["result"]
    assert set(result) == {"is_attack", "probability", "attack_cat", "category_probabilities", "model_version"}
    assert result["model_version"] == "served"

    batch = detect.post("/api/v1/detect/batch", {"flows": flows})
    assert batch.status_code == 200
    results = batch.get_json()["results"]
    expected = [{**p.to_json(), "model_version": "served"} for p in trained.model.predict(flows)]
    assert results == expected  # input order, same scores as the model in-process
    assert results[0] == result

    # Raw-layout names score the same flow identically.
    raw = {("ct_src_ ltm" if k == "ct_src_ltm" else "Sload" if k == "sload" else k): v for k, v in flows[0].items()}
    assert detect.post("/api/v1/detect", {"flow": raw}).get_json()["result"] == result

    explained = detect.post("/api/v1/detect/batch?explain=true", {"flows": flows[:2]}).get_json()["results"]
    assert all(len(r["top_features"]) == 5 for r in explained)

    bad = [dict(flows[0]), dict(flows[1], sbytes="many", colour="blue")]
    del bad[0]["dur"]
    error = detect.post("/api/v1/detect/batch", {"flows": bad})
    assert error.status_code == 400
    listed = {(e["index"], e["field"]) for e in error.get_json()["error"]["details"]["errors"]}
    assert listed == {(0, "dur"), (1, "sbytes"), (1, "colour")}

    assert detect.post("/api/v1/detect/batch", {"flows": [flows[0]] * 10_001}).status_code == 400
    assert detect.post("/api/v1/detect/batch", {"flows": []}).status_code == 400
    assert detect.post("/api/v1/detect", {"flow": flows[0], "extra": 1}).status_code == 400

    info = detect.get("/api/v1/detect/model").get_json()
    assert info["version"] == "served" and info["features"] == list(F.FEATURE_COLUMNS)
    assert info["training_data_sha256"] == trained.metadata["training_data"]["sha256"]
    assert info["threshold"] == trained.metadata["threshold"] and "heldout" in info["metrics"]


@pytest.mark.parametrize("text", ["١٢", "１２", "1_000", " 12 ", "+5"])
def test_a_number_written_other_than_in_ascii_decimal_is_a_400_naming_the_field(detect, blobs, text):
    """float() read these (Arabic-Indic and fullwidth digits, underscores, padding, a '+'): /detect scored them."""
    _publish(blobs, "served")
    registry.promote(blobs=blobs, bucket=BUCKET, version="served", now=_now)
    flow = flow_without_targets(sample_rows(2500)[0])
    assert detect.post("/api/v1/detect", {"flow": dict(flow, sbytes="12")}).status_code == 200
    one = detect.post("/api/v1/detect", {"flow": dict(flow, sbytes=text)})
    assert one.status_code == 400, one.get_data(as_text=True)[:300]
    assert [(e["index"], e["field"]) for e in one.get_json()["error"]["details"]["errors"]] == [(0, "sbytes")]
    batch = detect.post("/api/v1/detect/batch", {"flows": [flow, dict(flow, dpkts=text), flow]})
    assert batch.status_code == 400
    assert [(e["index"], e["field"]) for e in batch.get_json()["error"]["details"]["errors"]] == [(1, "dpkts")]


@pytest.mark.parametrize(("field", "text"), [("proto", "tcp\x00"), ("state", "FIN\x01"), ("srcip", "10.0.0.1\x00")])
def test_a_control_character_in_a_text_field_is_a_400_as_on_flows_batch(detect, blobs, field, text):
    """A proto of "tcp\\u0000" was a 200 (scored as an unknown protocol) where /flows/batch refused it."""
    _publish(blobs, "served")
    registry.promote(blobs=blobs, bucket=BUCKET, version="served", now=_now)
    flow = flow_without_targets(sample_rows(2500)[0])
    one = detect.post("/api/v1/detect", {"flow": dict(flow, **{field: text})})
    assert one.status_code == 400, one.get_data(as_text=True)[:300]
    assert [(e["index"], e["field"]) for e in one.get_json()["error"]["details"]["errors"]] == [(0, field)]
    batch = detect.post("/api/v1/detect/batch", {"flows": [flow, dict(flow, **{field: text})]})
    assert batch.status_code == 400
    assert [(e["index"], e["field"]) for e in batch.get_json()["error"]["details"]["errors"]] == [(1, field)]


def test_detect_requires_a_token(function_client, backend_env):
    client = function_client("detect")
    assert client.post("/api/v1/detect", json={"flow": {}}).status_code == 401


def test_retrain_publishes_a_candidate_and_promotes_only_a_better_one(blobs):
    from threatflow.flows import retrain
    from threatflow.flows.training import TrainConfig

    rows = sample_rows(2500)
    config = TrainConfig(cv_folds=2, max_iter=30, category_max_iter=15, compare_random_forest=False)
    skipped = retrain.retrain(labelled_flows=lambda limit: rows[:100], blobs=blobs, bucket=BUCKET, now=_now, min_rows=1000, config=config)
    assert skipped["status"] == "skipped"

    first = retrain.retrain(labelled_flows=lambda limit: rows[:limit], blobs=blobs, bucket=BUCKET, now=_now, min_rows=1000, config=config)
    assert first["status"] == "promoted" and first["serving"] is None
    # The same data again: a candidate that does not beat the serving model is published but not promoted.
    clock = [datetime(2030, 1, 1, tzinfo=UTC)]
    second = retrain.retrain(
        labelled_flows=lambda limit: rows[:limit], blobs=blobs, bucket=BUCKET, now=lambda: clock[0], min_rows=1000, config=config
    )
    assert second["status"] == "kept serving model" and second["serving"] == first["candidate"]
    assert {v.version for v in registry.list_versions(blobs=blobs, bucket=BUCKET)} == {first["candidate"], second["candidate"]}
    assert M.read_serving_pointer(blobs=blobs, bucket=BUCKET)["version"] == first["candidate"]


def _copy_version(blobs, source, target, metadata):
    """A version folder made by hand (a copied, hand-edited or half-written one): source's npz, this metadata."""
    blobs.put(BUCKET, f"flows/models/{target}/model.npz", blobs.get(BUCKET, f"flows/models/{source}/model.npz"))
    blobs.put(BUCKET, f"flows/models/{target}/metadata.json", metadata if isinstance(metadata, bytes) else json.dumps(metadata).encode())


def test_an_unreadable_metadata_or_pointer_is_a_named_error_never_a_500(detect, blobs):
    """A truncated or non-UTF-8 metadata.json, or a truncated flows/serving.json, raised json's own
    JSONDecodeError: every detect route answered 500 on a fresh instance, `models promote` printed a
    traceback, and one such version made `models list` fail for every version."""
    good = _publish(blobs, "good")
    registry.promote(blobs=blobs, bucket=BUCKET, version="good", now=_now)
    metadata = json.dumps(good.metadata).encode()
    _copy_version(blobs, "good", "cut", metadata[: len(metadata) // 2])
    _copy_version(blobs, "good", "binary", b"\xff\xfe not json")
    for version in ("cut", "binary"):
        with pytest.raises(ConflictError, match="metadata"):
            registry.promote(blobs=blobs, bucket=BUCKET, version=version, now=_now)
    listed = {v.version: v for v in registry.list_versions(blobs=blobs, bucket=BUCKET)}
    assert set(listed) == {"good", "cut", "binary"} and listed["good"].serving
    assert listed["cut"].problem and listed["binary"].problem and listed["good"].problem is None

    blobs.put(BUCKET, "flows/serving.json", json.dumps({"version": "cut", "sha256": good.metadata["sha256"]}).encode())
    response = detect.get("/api/v1/detect/model")
    assert response.status_code == 503, response.get_data(as_text=True)[:300]
    assert "cut" in response.get_json()["error"]["message"]

    pointer = json.dumps({"version": "good", "sha256": good.metadata["sha256"]}).encode()
    for broken in (pointer[:20], b"\xff" + pointer, json.dumps({"version": "../good", "sha256": good.metadata["sha256"]}).encode()):
        blobs.put(BUCKET, "flows/serving.json", broken)
        with pytest.raises(DependencyError, match=r"serving\.json"):
            M.load_serving_model(blobs=blobs, bucket=BUCKET)
        with pytest.raises(DependencyError, match=r"serving\.json"):
            registry.list_versions(blobs=blobs, bucket=BUCKET)


def test_promotion_points_at_the_version_it_verified(blobs):
    """promote(version) verified that version's files, then wrote the pointer with the version its
    metadata.json names: a copied folder made the pointer name the original, and a hand-edited one a
    version that was never verified (or does not exist)."""
    good = _publish(blobs, "good")
    _copy_version(blobs, "good", "copy", good.metadata)  # metadata still says "good"
    _copy_version(blobs, "good", "elsewhere", {**good.metadata, "version": "ghost"})
    for version in ("copy", "elsewhere"):
        with pytest.raises(ConflictError, match="names version"):
            registry.promote(blobs=blobs, bucket=BUCKET, version=version, now=_now)
    assert M.read_serving_pointer(blobs=blobs, bucket=BUCKET) is None
    blobs.put(BUCKET, "flows/serving.json", json.dumps({"version": "copy", "sha256": good.metadata["sha256"]}).encode())
    with pytest.raises(DependencyError, match="names version"):
        M.load_serving_model(blobs=blobs, bucket=BUCKET)  # served as "good" before: events stored under another name


@pytest.mark.parametrize(
    ("field", "value"),
    [("threshold", "NaN"), ("threshold", 0.0), ("threshold", 1.5), ("threshold", float("inf")), ("category_bias", "nan-in-bias")],
)
def test_a_threshold_or_category_bias_out_of_bounds_is_neither_promoted_nor_served(blobs, field, value):
    """metadata.json's threshold and adjustments were read unchecked: threshold "NaN" was promoted and
    flagged no flow at all (GET /detect/model showed "threshold": null), a NaN adjustment answered
    null category probabilities, 0.0 flagged every flow."""
    good = _publish(blobs, "good")
    if value == "nan-in-bias":
        value = [float("nan"), *good.metadata["category_bias"][1:]]
    _copy_version(blobs, "good", "edited", {**good.metadata, "version": "edited", field: value})
    with pytest.raises(ConflictError, match=field):
        registry.promote(blobs=blobs, bucket=BUCKET, version="edited", now=_now)
    blobs.put(BUCKET, "flows/serving.json", json.dumps({"version": "edited", "sha256": good.metadata["sha256"]}).encode())
    with pytest.raises(DependencyError, match=field):
        M.load_serving_model(blobs=blobs, bucket=BUCKET)


def test_a_metadata_json_changed_after_promotion_is_not_served(blobs):
    """The pointer's sha256 covered model.npz only: metadata.json (vocabulary, threshold, category labels and
    adjustments) could be edited after promotion, within the loader's bounds, and a new instance served it.
    The pointer now pins the metadata it verified; promoting the version again accepts the edit."""
    good = _publish(blobs, "good")
    registry.promote(blobs=blobs, bucket=BUCKET, version="good", now=_now)
    assert M.load_serving_model(blobs=blobs, bucket=BUCKET).threshold == good.metadata["threshold"]
    edited = {**good.metadata, "threshold": 0.999}  # in bounds: flags almost nothing
    blobs.put(BUCKET, "flows/models/good/metadata.json", json.dumps(edited).encode())
    with pytest.raises(DependencyError, match=r"metadata\.json changed since it was promoted"):
        M.load_serving_model(blobs=blobs, bucket=BUCKET)
    registry.promote(blobs=blobs, bucket=BUCKET, version="good", now=_now)  # a human re-verifies and accepts it
    assert M.load_serving_model(blobs=blobs, bucket=BUCKET).threshold == 0.999
    # a pointer written before the pin (no metadata_sha256) still loads
    pointer = json.loads(blobs.get(BUCKET, "flows/serving.json"))
    blobs.put(BUCKET, "flows/serving.json", json.dumps({k: v for k, v in pointer.items() if k != "metadata_sha256"}).encode())
    assert M.load_serving_model(blobs=blobs, bucket=BUCKET).version == "good"
