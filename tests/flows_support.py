"""Shared helpers for the flow tests: a small model trained once on dev data, published to the emulator bucket,
and the flows function signed in per role."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "perf"))

MODELS_BUCKET = "threatflow-models"
UPLOADS_BUCKET = "threatflow-uploads"
PROJECT = "threatflow-test"
_TRAINED: dict[str, Any] = {}


def trained_model(*, rows: int = 2000, quick: bool = False) -> Any:
    """A small model trained once per process on dev flows, through ml's programmatic training.

    Tiny on purpose (2 folds, 15 + 10 trees, one thread): the tests need a real, published
    model to score with, not a good one, and training must stay fast on a busy machine.
    """
    key = f"{rows}:{quick}"
    if key not in _TRAINED:
        from helpers import require_shared_data
        from threadpoolctl import threadpool_limits

        from threatflow.flows import training

        require_shared_data("unsw-nb15", "unsw_nb15_dev.csv.gz")
        import flowgen

        data = flowgen.dev_rows()
        sample = data[:: max(1, len(data) // rows)]
        config = (
            training.TrainConfig.quick()
            if quick
            else training.TrainConfig(cv_folds=2, max_iter=15, category_max_iter=10, compare_random_forest=False, n_jobs=1)
        )
        with threadpool_limits(1):  # OpenMP threads on a shared, loaded machine slow training down by an order of magnitude
            _TRAINED[key] = training.train_from_flows(sample, config=config, version=f"test-flows-{'quick' if quick else 'tiny'}")
    return _TRAINED[key]


def publish(blobs: Any, result: Any, *, bucket: str = MODELS_BUCKET) -> None:
    """Publish and promote a trained model through ml's registry (what `threatflow models train --promote` does)."""
    from threatflow.flows import registry

    if not blobs.exists(bucket, f"flows/models/{result.version}/metadata.json"):  # the emulator lives for the whole run
        registry.publish(result, blobs=blobs, bucket=bucket)
    registry.promote(blobs=blobs, bucket=bucket, version=result.version, now=lambda: datetime.now(UTC))


def json_flows(count: int, *, seed: int = 11) -> list[dict[str, Any]]:
    """Generated flows as a JSON client sends them: partitioned names, numbers as numbers, addresses and stime."""
    import flowgen

    out = []
    for flow in flowgen.generate(count, seed=seed):
        item: dict[str, Any] = {}
        for key, value in flow.items():
            if key in ("proto", "service", "state", "srcip", "dstip", "attack_cat"):
                item[key] = value
            elif key == "id":
                continue
            else:
                item[key] = float(value) if "." in value or "e" in value.lower() else int(value)
        out.append(item)
    return out


def emptied_models_bucket(project: str) -> Any:
    """The emulator's models bucket (GcsBlobs) with no flow model in it: no serving pointer, no published version."""
    from threatflow.adapters.storage import GcsBlobs

    store = GcsBlobs(project)
    for name in store.list(MODELS_BUCKET, prefix="flows/"):
        store.delete(MODELS_BUCKET, name)
    return store


class FlowsApi:
    """The flows function's test client with a bearer token per role (`headers`, plus "anonymous": none).

    post() sends as the analyst and get() as the reader unless given another role or headers."""

    def __init__(self, client: Any, headers: dict[str, dict[str, str]], function_client: Callable[..., Any]) -> None:
        self.client = client
        self.headers = headers
        self._function_client = function_client
        self._detect: Any = None

    @property
    def analyst(self) -> dict[str, str]:
        return self.headers["analyst"]

    @property
    def reader(self) -> dict[str, str]:
        return self.headers["reader"]

    @property
    def detect(self) -> Any:
        """The detect function's test client, loaded on first use."""
        if self._detect is None:
            self._detect = self._function_client("detect")
        return self._detect

    def post(self, path: str, body: Any, role: str = "analyst", headers: dict[str, str] | None = None) -> Any:
        return self.client.post(path, json=body, headers=self.headers[role] if headers is None else headers)

    def get(self, path: str, role: str = "reader", headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        return self.client.get(path, headers=self.headers[role] if headers is None else headers, **kwargs)


def flows_api(function_client: Callable[..., Any], database_url: str, *, roles: tuple[str, ...] = ("reader", "analyst")) -> FlowsApi:
    """What the flows tests start from: the tiny model promoted, the topics the flows functions publish to,
    and one user per role signed in (`flows-<role>`)."""
    from google.cloud import pubsub_v1
    from helpers import create_user

    from threatflow.adapters.storage import GcsBlobs

    publish(GcsBlobs(PROJECT), trained_model())
    publisher = pubsub_v1.PublisherClient()
    for name in ("ioc-enrichment-requested", "flow-ingest"):
        with contextlib.suppress(Exception):  # already made by an earlier test in this run
            publisher.create_topic(name=publisher.topic_path(PROJECT, name))
    headers: dict[str, dict[str, str]] = {"anonymous": {}}
    auth = function_client("auth")
    for role in roles:
        username = f"flows-{role}"
        password = create_user(database_url, username, role)
        body = auth.post("/api/v1/auth/token", json={"username": username, "password": password}).get_json()
        headers[role] = {"Authorization": f"Bearer {body['access_token']}"}
    return FlowsApi(function_client("flows"), headers, function_client)


# -- the upload path and the database, as the flow tests reach them ----------------------------------------------


def sql_scalar(database_url: str, statement: str) -> Any:
    """One statement's single value, on an engine of its own."""
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": database_url}))
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(statement).scalar_one()
    finally:
        engine.dispose()


def sql_row(database_url: str, statement: str) -> tuple[Any, ...]:
    """One statement's single row, on an engine of its own."""
    from threatflow.adapters.postgres import create_engine
    from threatflow.platform.config import Settings

    engine = create_engine(Settings.from_env({"DATABASE_URL": database_url}))
    try:
        with engine.connect() as conn:
            return tuple(conn.exec_driver_sql(statement).one())
    finally:
        engine.dispose()


def queue_upload(api: FlowsApi, name: str, data: bytes) -> str:
    """Put `data` in the uploads bucket as `name` and queue its flow-ingest job (202); returns the job id."""
    from threatflow.adapters.storage import GcsBlobs

    GcsBlobs(PROJECT).put(UPLOADS_BUCKET, name, data)
    response = api.post("/api/v1/flows/uploads", {"object": name})
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["job_id"])


def ingest_push(job_id: str) -> dict[str, Any]:
    """The flow-ingest subscription's push of a job's message."""
    from helpers import push_envelope

    return push_envelope({"schema_version": 1, "job_id": job_id}, {"job_id": job_id}, "flow-ingest-push")


def deliver_upload(worker: Any, job_id: str) -> Any:
    """The job's message pushed to the flow-ingest function's test client."""
    return worker.post("/", json=ingest_push(job_id))


def deliver_at_once(worker: Any, job_ids: list[str]) -> list[dict[str, Any]]:
    """Each job's message pushed at the same time (as two instances would take them), each push answered 200;
    returns the jobs' records once both are done."""
    import threading

    statuses: list[int] = []
    threads = [threading.Thread(target=lambda j=j: statuses.append(deliver_upload(worker, j).status_code)) for j in job_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert statuses == [200] * len(job_ids)
    return [ingest_job(j) for j in job_ids]


def ingest_job(job_id: str) -> dict[str, Any]:
    """The job's record in Firestore ({} when there is none)."""
    from threatflow.adapters.firestore import FirestoreDocuments

    return FirestoreDocuments(PROJECT).get("flow_ingest_jobs", job_id) or {}


def event_keys(flows: list[dict[str, Any]], *, source: str, positions: list[int]) -> list[str]:
    """The keys ingest gives these flows at these positions of `source` (validated as the route does; an event's
    key covers its flow, not only where it came from)."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from threatflow.flows import ingest

    clean, fields, problems = ingest.validate(flows)
    assert not problems, problems[:3]
    verdict = SimpleNamespace(is_attack=False, probability=0.0, attack_cat="Normal", model_version="-")  # not in the key
    rows = ingest.build_rows(
        clean, fields, [verdict] * len(clean), source=source, first_position=0, observed_at=datetime.now(UTC), positions=positions
    )
    return [row.event_key for row in rows]
