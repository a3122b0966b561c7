"""The interfaces the domain needs; adapters/ implements each once on a real client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Protocol


class Publisher(Protocol):
    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Publish and wait for the server's message id."""


@dataclass(frozen=True)
class Versioned:
    """A document as read, with the version a compare-and-set names (Firestore: its update time,
    which every write changes). The token is opaque: compare it, pass it back, never parse it."""

    data: dict[str, Any]
    version: str


class DocumentStore(Protocol):
    def get(self, collection: str, doc_id: str) -> dict[str, Any] | None: ...

    def get_many(self, collection: str, doc_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Every named document by id (None for an absent one), read in batched gets of at most 500 ids,
        not one round trip per document."""

    def get_versioned(self, collection: str, doc_id: str) -> Versioned | None:
        """The document with its version (for update_if_unchanged); None when there is no such document."""

    def create(self, collection: str, doc_id: str, data: Mapping[str, Any]) -> bool:
        """Write only if absent; False when the document already exists (idempotency key)."""

    def set(self, collection: str, doc_id: str, data: Mapping[str, Any], *, merge: bool = False) -> None: ...

    def delete(self, collection: str, doc_id: str) -> None: ...

    def set_many(self, collection: str, docs: Mapping[str, Mapping[str, Any]]) -> None:
        """Write every document whole ({doc_id: data}), in batched writes of at most 500 (Firestore's limit per
        commit) and a bounded size: each batch is atomic, the call as a whole is not; writing again is harmless."""

    def delete_many(self, collection: str, doc_ids: Sequence[str]) -> None:
        """Delete every named document (absent ones are no error), in batched writes of at most 500."""

    def delete_if(self, collection: str, doc_id: str, *, field: str, value: Any) -> bool:
        """Delete the document only if its `field` still equals `value`, atomically (a compare-and-delete);
        False when it does not, or there is no such document."""

    def delete_many_if(self, collection: str, doc_ids: Sequence[str], *, field: str, value: Any) -> list[str]:
        """`delete_if` for many documents: those whose `field` equals `value` are deleted, each batch of at most 500
        read and deleted atomically (a write landing between makes the batch's transaction run again). The ids
        deleted."""

    def update_if_unchanged(self, collection: str, doc_id: str, data: Mapping[str, Any], *, version: str) -> str | None:
        """Compare-and-set: write the top-level fields of `data` (a value replaces the field whole; other
        fields are kept) only if the document is still at `version`, atomically. The new version, or None
        when the document was written or deleted since (nothing is written then)."""

    def query(
        self,
        collection: str,
        *,
        where: Sequence[tuple[str, str, Any]] = (),
        order_by: str | None = None,
        descending: bool = False,
        limit: int = 100,
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class BlobInfo:
    """What the store says about one object: its size and its generation (a new one per overwrite)."""

    size: int
    generation: int


class BlobStore(Protocol):
    def put(self, bucket: str, name: str, data: bytes, *, content_type: str = "application/octet-stream") -> None: ...

    def get(self, bucket: str, name: str) -> bytes: ...

    def stat(self, bucket: str, name: str) -> BlobInfo:
        """NotFoundError when there is no such object."""

    def open_read(self, bucket: str, name: str, *, generation: int | None = None) -> AbstractContextManager[IO[bytes]]:
        """The object as a stream read in bounded chunks (memory holds a chunk, not the object);
        `generation` pins one version. Read errors are NotFoundError or DependencyError."""

    def exists(self, bucket: str, name: str) -> bool: ...

    def delete(self, bucket: str, name: str) -> None: ...

    def list(self, bucket: str, *, prefix: str = "", limit: int = 1000) -> list[str]: ...


class SecretSource(Protocol):
    def get(self, name: str) -> str: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
