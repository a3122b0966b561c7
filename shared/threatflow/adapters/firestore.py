"""Firestore documents on the official client (FIRESTORE_EMULATOR_HOST locally)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from threatflow.platform.errors import DependencyError, ValidationError
from threatflow.platform.ports import Versioned

_TIMEOUT = 10.0  # one attempt, and all of a call's retries together (FirestoreDocuments._retry)
WRITE_BATCH = 500  # Firestore's limit of writes in one commit
# Bytes of documents (estimated as JSON) in one commit: under the emulator's 4 MiB gRPC message and Firestore's
# 10 MiB request, whatever 500 documents hold (each may be up to 1 MiB).
WRITE_BATCH_BYTES = 3 * 1024 * 1024
READ_BATCH = 500  # ids per batched get (one BatchGetDocuments call), so one answer stays bounded


class FirestoreDocuments:
    def __init__(self, project: str) -> None:
        from google.api_core.retry import Retry, if_transient_error
        from google.cloud import firestore

        self._client = firestore.Client(project=project)
        # The client's default retry for transient errors, bounded to _TIMEOUT in all. Its own budget
        # is 60 s: an unreachable Firestore held every request or message that long before its 503
        # (a Pub/Sub delivery then retries), and tied up the instance meanwhile.
        self._retry = Retry(predicate=if_transient_error, initial=0.1, maximum=2.0, multiplier=2.0, timeout=_TIMEOUT)

    def _ref(self, collection: str, doc_id: str) -> Any:
        return self._client.collection(collection).document(check_id(doc_id))

    def get(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        snapshot = self._call(lambda: self._ref(collection, doc_id).get(retry=self._retry, timeout=_TIMEOUT))
        return snapshot.to_dict() if snapshot.exists else None

    def get_many(self, collection: str, doc_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """client.get_all: one BatchGetDocuments call per READ_BATCH ids (answered in any order, keyed by id)
        instead of one get per document."""
        unique = list(dict.fromkeys(doc_ids))
        found: dict[str, dict[str, Any] | None] = dict.fromkeys(unique)
        for start in range(0, len(unique), READ_BATCH):
            refs = [self._ref(collection, doc_id) for doc_id in unique[start : start + READ_BATCH]]
            snapshots = self._call(lambda refs=refs: list(self._client.get_all(refs, retry=self._retry, timeout=_TIMEOUT)))
            for snapshot in snapshots:
                if snapshot.exists:
                    found[snapshot.id] = snapshot.to_dict()
        return found

    def get_versioned(self, collection: str, doc_id: str) -> Versioned | None:
        snapshot = self._call(lambda: self._ref(collection, doc_id).get(retry=self._retry, timeout=_TIMEOUT))
        if not snapshot.exists:
            return None
        return Versioned(snapshot.to_dict() or {}, snapshot.update_time.rfc3339())

    def update_if_unchanged(self, collection: str, doc_id: str, data: Mapping[str, Any], *, version: str) -> str | None:
        """One write with an update-time precondition (the server compares and writes atomically).
        Not retried: an attempt that timed out may have been applied, and its retry would then fail the
        precondition and pass our own write off as someone else's; a DependencyError says "unknown"."""
        from google.api_core import exceptions
        from google.api_core.datetime_helpers import DatetimeWithNanoseconds
        from google.cloud.firestore_v1.field_path import FieldPath

        option = self._client.write_option(last_update_time=DatetimeWithNanoseconds.from_rfc3339(version))
        # update() reads "a.b" as a nested path; quoted, every key is the top-level field it names.
        fields = {FieldPath(key).to_api_repr(): value for key, value in data.items()}
        ref = self._ref(collection, doc_id)
        try:
            result = self._call(lambda: ref.update(fields, option=option, retry=None, timeout=_TIMEOUT))
        except (exceptions.FailedPrecondition, exceptions.NotFound):
            return None  # written since (another update time), or deleted
        return str(result.update_time.rfc3339())

    def create(self, collection: str, doc_id: str, data: Mapping[str, Any]) -> bool:
        from google.api_core import exceptions

        try:
            self._call(lambda: self._ref(collection, doc_id).create(dict(data), retry=self._retry, timeout=_TIMEOUT))
        except exceptions.AlreadyExists:
            return False
        return True

    def set(self, collection: str, doc_id: str, data: Mapping[str, Any], *, merge: bool = False) -> None:
        self._call(lambda: self._ref(collection, doc_id).set(dict(data), merge=merge, retry=self._retry, timeout=_TIMEOUT))

    def delete(self, collection: str, doc_id: str) -> None:
        self._call(lambda: self._ref(collection, doc_id).delete(retry=self._retry, timeout=_TIMEOUT))

    def set_many(self, collection: str, docs: Mapping[str, Mapping[str, Any]]) -> None:
        """Commits of at most WRITE_BATCH documents and about WRITE_BATCH_BYTES each (a document alone over it
        goes in a commit of its own)."""
        chunk: list[tuple[Any, dict[str, Any]]] = []
        size = 0
        for doc_id, data in docs.items():
            item = (self._ref(collection, doc_id), dict(data))
            weight = len(doc_id) + len(json.dumps(item[1], default=str).encode())
            if chunk and (len(chunk) >= WRITE_BATCH or size + weight > WRITE_BATCH_BYTES):
                self._commit_sets(chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += weight
        if chunk:
            self._commit_sets(chunk)

    def _commit_sets(self, items: Sequence[tuple[Any, dict[str, Any]]]) -> None:
        batch = self._client.batch()
        for ref, data in items:
            batch.set(ref, data)
        self._call(lambda: batch.commit(retry=self._retry, timeout=_TIMEOUT))

    def delete_many(self, collection: str, doc_ids: Sequence[str]) -> None:
        refs = [self._ref(collection, doc_id) for doc_id in doc_ids]
        for start in range(0, len(refs), WRITE_BATCH):
            batch = self._client.batch()
            for ref in refs[start : start + WRITE_BATCH]:
                batch.delete(ref)
            self._call(lambda batch=batch: batch.commit(retry=self._retry, timeout=_TIMEOUT))

    def delete_if(self, collection: str, doc_id: str, *, field: str, value: Any) -> bool:
        from google.cloud import firestore

        ref = self._ref(collection, doc_id)

        @firestore.transactional  # type: ignore[misc]
        def compare_and_delete(transaction: Any) -> bool:
            snapshot = ref.get(transaction=transaction, timeout=_TIMEOUT)
            if not snapshot.exists or (snapshot.to_dict() or {}).get(field) != value:
                return False
            transaction.delete(ref)
            return True

        return bool(self._call(lambda: compare_and_delete(self._client.transaction())))

    def delete_many_if(self, collection: str, doc_ids: Sequence[str], *, field: str, value: Any) -> list[str]:
        from google.cloud import firestore

        unique = list(dict.fromkeys(doc_ids))
        deleted: list[str] = []
        for start in range(0, len(unique), WRITE_BATCH):
            refs = [self._ref(collection, doc_id) for doc_id in unique[start : start + WRITE_BATCH]]

            @firestore.transactional  # type: ignore[misc]
            def compare_and_delete(transaction: Any, refs: list[Any] = refs) -> list[str]:
                snapshots = list(transaction.get_all(refs, timeout=_TIMEOUT))
                matching = [s for s in snapshots if s.exists and (s.to_dict() or {}).get(field) == value]
                for snapshot in matching:
                    transaction.delete(snapshot.reference)
                return [snapshot.id for snapshot in matching]

            deleted += self._call(lambda compare_and_delete=compare_and_delete: compare_and_delete(self._client.transaction()))
        return deleted

    def query(
        self,
        collection: str,
        *,
        where: Sequence[tuple[str, str, Any]] = (),
        order_by: str | None = None,
        descending: bool = False,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        from google.cloud import firestore
        from google.cloud.firestore_v1.base_query import FieldFilter

        query: Any = self._client.collection(collection)
        for field, op, value in where:
            query = query.where(filter=FieldFilter(field, op, value))
        if order_by:
            query = query.order_by(order_by, direction=firestore.Query.DESCENDING if descending else firestore.Query.ASCENDING)
        docs = self._call(lambda: list(query.limit(limit).stream(retry=self._retry, timeout=_TIMEOUT)))
        return [{"id": d.id, **d.to_dict()} for d in docs]

    def ping(self) -> None:
        self.get("_ready", "probe")

    @staticmethod
    def _call(fn: Any) -> Any:
        from google.api_core import exceptions

        try:
            return fn()
        except exceptions.AlreadyExists:
            raise
        except (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded, exceptions.RetryError) as exc:
            raise DependencyError(f"Firestore is unreachable: {exc.__class__.__name__}") from exc


def check_id(doc_id: str) -> str:
    """Firestore's document id rules, as a 400 naming the id instead of the client's 500:
    not empty, at most 1,500 bytes, no `/`, not `.` or `..`, not `__...__`."""
    if (
        not doc_id
        or len(doc_id.encode()) > 1500
        or "/" in doc_id
        or doc_id in (".", "..")
        or (doc_id.startswith("__") and doc_id.endswith("__"))
    ):
        raise ValidationError(f"{doc_id[:64]!r} is not a valid id", field="id")
    return doc_id
