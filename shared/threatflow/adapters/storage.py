"""Cloud Storage blobs on the official client (STORAGE_EMULATOR_HOST locally)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import IO, Any

from threatflow.platform import limits
from threatflow.platform.errors import ConfigError, DependencyError, NotFoundError
from threatflow.platform.ports import BlobInfo

_TIMEOUT = 30.0
READ_CHUNK_BYTES = 8 * 1024 * 1024  # one ranged GET per chunk: what a streaming read holds in memory


class GcsBlobs:
    def __init__(self, project: str) -> None:
        from google.cloud import storage  # type: ignore[attr-defined]

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            self._client = storage.Client(project=project, credentials=AnonymousCredentials())
        else:
            from google.auth.exceptions import DefaultCredentialsError

            try:
                self._client = storage.Client(project=project)
            except DefaultCredentialsError:
                raise ConfigError(
                    "Cloud Storage: no STORAGE_EMULATOR_HOST and no Google credentials (locally, a running stack:"
                    " make run; against Google Cloud: gcloud auth application-default login)"
                ) from None

    def _blob(self, bucket: str, name: str) -> Any:
        return self._client.bucket(bucket).blob(limits.check_object_name(name))

    def put(self, bucket: str, name: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        self._call(lambda: self._blob(bucket, name).upload_from_string(data, content_type=content_type, timeout=_TIMEOUT))

    def put_file(self, bucket: str, name: str, path: str, *, content_type: str = "application/octet-stream") -> None:
        """Upload a local file in resumable chunks of READ_CHUNK_BYTES, read from disk as they go:
        a file of any size costs one chunk of memory (upload_from_string holds all of it)."""

        def upload() -> None:
            blob = self._blob(bucket, name)
            blob.chunk_size = READ_CHUNK_BYTES
            blob.upload_from_filename(path, content_type=content_type, timeout=_TIMEOUT)

        self._call(upload)

    def get(self, bucket: str, name: str) -> bytes:
        from google.api_core import exceptions

        try:
            return bytes(self._call(lambda: self._blob(bucket, name).download_as_bytes(timeout=_TIMEOUT)))
        except exceptions.NotFound:
            raise NotFoundError(f"no object {name!r} in bucket {bucket!r}") from None

    def stat(self, bucket: str, name: str) -> BlobInfo:
        blob = self._call(lambda: self._client.bucket(bucket).get_blob(name, timeout=_TIMEOUT))
        if blob is None:
            raise NotFoundError(f"no object {name!r} in bucket {bucket!r}")
        return BlobInfo(size=int(blob.size or 0), generation=int(blob.generation or 0))

    @contextlib.contextmanager
    def open_read(self, bucket: str, name: str, *, generation: int | None = None) -> Iterator[IO[bytes]]:
        """The client's BlobReader (ranged GETs of READ_CHUNK_BYTES, with its own retry on transient
        errors), its errors mapped to ours so a caller sees only the one error tree."""
        blob = self._client.bucket(bucket).blob(name, generation=generation)
        reader = blob.open("rb", chunk_size=READ_CHUNK_BYTES, timeout=_TIMEOUT)
        raw = _ErrorMappingReader(reader, where=f"object {name!r} in bucket {bucket!r}")
        try:
            yield io.BufferedReader(raw, buffer_size=64 * 1024)
        finally:
            reader.close()

    def exists(self, bucket: str, name: str) -> bool:
        return bool(self._call(lambda: self._blob(bucket, name).exists(timeout=_TIMEOUT)))

    def delete(self, bucket: str, name: str) -> None:
        from google.api_core import exceptions

        with contextlib.suppress(exceptions.NotFound):
            self._call(lambda: self._blob(bucket, name).delete(timeout=_TIMEOUT))

    def list(self, bucket: str, *, prefix: str = "", limit: int = 1000) -> list[str]:
        blobs = self._call(lambda: list(self._client.list_blobs(bucket, prefix=prefix, max_results=limit, timeout=_TIMEOUT)))
        return [b.name for b in blobs]

    def ping(self, bucket: str) -> None:
        if self._call(lambda: self._client.lookup_bucket(bucket, timeout=3)) is None:
            raise DependencyError(f"Cloud Storage bucket {bucket!r} does not exist")

    @staticmethod
    def _call(fn: Any) -> Any:
        from google.api_core import exceptions
        from requests import exceptions as http_exceptions

        try:
            return fn()
        except (exceptions.ServiceUnavailable, exceptions.InternalServerError, http_exceptions.ConnectionError) as exc:
            raise DependencyError(f"Cloud Storage is unreachable: {exc.__class__.__name__}") from exc


class _ErrorMappingReader(io.RawIOBase):
    """A raw stream over a BlobReader whose read errors are NotFoundError (the object or its
    generation is gone) or DependencyError (Cloud Storage unreachable), never a client exception."""

    def __init__(self, reader: Any, *, where: str) -> None:
        self._reader = reader
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from google.api_core import exceptions

        try:
            data = GcsBlobs._call(lambda: self._reader.read(len(buffer)))
        except exceptions.NotFound:
            raise NotFoundError(f"no {self._where} (deleted or replaced while it was read)") from None
        except exceptions.GoogleAPICallError as exc:
            raise DependencyError(f"Cloud Storage read of {self._where} failed: {exc.__class__.__name__}") from exc
        buffer[: len(data)] = data
        return len(data)
