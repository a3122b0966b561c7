"""The wiring of the sweeps (close-overdue-enrichment-runs, recover-stalled-flow-ingest-jobs) that the
emulator cannot check: the composite indexes their Firestore queries need in the cloud, and the schedules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from threatflow.enrichment import closing, runs
from threatflow.flows import ingest_jobs
from threatflow.intel import stalled_imports
from threatflow.jobs import runs as maintenance_runs
from threatflow.jobs.runs import JOBS

REPO = Path(__file__).resolve().parents[3]


class RecordingDocuments:
    """A DocumentStore that records the queries it is asked (and answers none)."""

    def __init__(self) -> None:
        self.queries: list[dict[str, Any]] = []

    def query(
        self, collection: str, *, where: Sequence[tuple[str, str, Any]] = (), order_by: str | None = None, **_: Any
    ) -> list[dict[str, Any]]:
        self.queries.append({"collection": collection, "where": list(where), "order_by": order_by})
        return []


def _unquote(value: str) -> str:
    # python-hcl2 8 keeps the quotes of strings and block labels; older versions drop them.
    return value.strip('"')


def _indexes() -> list[Mapping[str, Any]]:
    """Every composite index firestore.tf declares: one resource per index, or one per entry of the local
    map its for_each iterates (`fields` listed in order, the dynamic block giving each its order)."""
    import hcl2

    with (REPO / "terraform" / "firestore.tf").open() as handle:
        parsed = hcl2.load(handle)
    local_maps: dict[str, Any] = {}
    for block in parsed.get("locals", []):
        local_maps.update(block)
    found = []
    for block in parsed.get("resource", []):
        for rtype, named in block.items():
            if _unquote(rtype) != "google_firestore_index":
                continue
            for body in named.values():
                if "for_each" not in body:
                    fields = [(_unquote(f["field_path"]), _unquote(f["order"])) for f in body["fields"]]
                    found.append({"collection": _unquote(body["collection"]), "database": _unquote(body["database"]), "fields": fields})
                    continue
                entries = local_maps[body["for_each"].removeprefix("${local.").removesuffix("}")]
                assert body["collection"] == "${each.value.collection}", body
                [dynamic] = [d[k] for d in body["dynamic"] for k in d if _unquote(k) == "fields"]
                assert dynamic["for_each"] == "${each.value.fields}", dynamic
                [content] = dynamic["content"]
                assert content["field_path"] == "${fields.value}", content
                for entry in (v for k, v in entries.items() if not k.startswith("__")):
                    fields = [(_unquote(f), _unquote(content["order"])) for f in entry["fields"]]
                    found.append({"collection": _unquote(entry["collection"]), "database": _unquote(body["database"]), "fields": fields})
    return found


SWEEP_QUERIES = {
    "overdue enrichment runs": lambda docs: runs.overdue_runs(docs, before=0.0, limit=1),
    "overdue enrichment runs after a cursor": lambda docs: runs.overdue_runs(docs, before=0.0, after=-1.0, limit=1),
    "queued enrichment runs": lambda docs: runs.queued_runs(docs, before=0.0, limit=1),
    "requeued enrichment runs": lambda docs: runs.requeued_runs(docs, before=0.0, limit=1),
    "stalled flow-ingest jobs": lambda docs: ingest_jobs.stalled_jobs(docs, before=datetime.now(UTC), limit=1),
    "unwritten flow-ingest jobs": lambda docs: ingest_jobs.unwritten_jobs(docs, before=datetime.now(UTC), limit=1),
    "abandoned maintenance runs": lambda docs: maintenance_runs.abandoned_runs(docs, before=datetime.now(UTC), limit=1),
    "stalled import jobs": lambda docs: stalled_imports.unfinished_jobs(docs, field="started_at", before=datetime.now(UTC), limit=1),
    "never started import jobs": lambda docs: stalled_imports.unfinished_jobs(docs, field="created_at", before=datetime.now(UTC), limit=1),
}


@pytest.mark.parametrize("name", sorted(SWEEP_QUERIES))
def test_each_sweep_query_has_its_composite_index_in_terraform(name: str) -> None:
    docs = RecordingDocuments()
    SWEEP_QUERIES[name](docs)
    [query] = docs.queries
    equality = [f for f, op, _ in query["where"] if op in ("==", "in")]
    ranged = sorted({f for f, op, _ in query["where"] if op not in ("==", "in")})  # a cursor is a second range on the same field
    assert ranged == [query["order_by"]], "Firestore orders by the range field first"
    needed = {"collection": query["collection"], "database": "(default)", "fields": [(f, "ASCENDING") for f in [*equality, *ranged]]}
    assert needed in _indexes(), f"terraform/firestore.tf declares no index {needed}; found {_indexes()}"


@pytest.mark.parametrize(
    ("name", "most"),
    [
        ("close-overdue-enrichment-runs", closing.SWEEP_MAX),
        ("recover-stalled-flow-ingest-jobs", ingest_jobs.SWEEP_MAX),
        ("fail-stalled-import-jobs", stalled_imports.SWEEP_MAX),
    ],
)
def test_the_schedule_runs_the_job_within_its_page_bound(name: str, most: int) -> None:
    manifest = yaml.safe_load((REPO / "functions" / "topology.yaml").read_text())
    schedule = manifest["schedules"][name]
    assert schedule["topic"] == "maintenance" and schedule["attributes"]["job"] == name and name in JOBS
    assert 1 <= schedule["body"]["params"]["limit"] <= most


def test_the_maintenance_function_may_publish() -> None:
    """Both sweeps queue work again through the runtime's publisher (IAM and requirements follow `uses`)."""
    manifest = yaml.safe_load((REPO / "functions" / "topology.yaml").read_text())
    assert "pubsub" in manifest["functions"]["maintenance"]["uses"]


def test_every_maintenance_schedule_names_a_known_job() -> None:
    manifest = yaml.safe_load((REPO / "functions" / "topology.yaml").read_text())
    unknown = {
        name: s["attributes"]["job"]
        for name, s in manifest["schedules"].items()
        if s.get("topic") == "maintenance" and s["attributes"]["job"] not in JOBS
    }
    assert not unknown, f"schedules naming no job of jobs/runs.py JOBS: {unknown}"


def test_an_import_job_is_stalled_only_after_the_longest_gap_between_two_deliveries() -> None:
    """A delivery starts within the ioc-import function's timeout plus ioc-import-push's longest retry backoff
    of the one before: a job failed sooner might still be retried."""
    manifest = yaml.safe_load((REPO / "functions" / "topology.yaml").read_text())
    timeout = manifest["functions"]["ioc-import"]["timeout_seconds"]
    backoff = manifest["subscriptions"]["ioc-import-push"]["retry"]["maximum_backoff_seconds"]
    assert timeout + backoff <= stalled_imports.STALL_SECONDS
