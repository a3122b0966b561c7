"""Cloud Storage blobs on the official client (STORAGE_EMULATOR_HOST locally)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from threatflow.platform.errors import DependencyError, NotFoundError

_TIMEOUT = 30.0


class GcsBlobs:
    def __init__(self, project: str) -> None:
        from google.cloud import storage  # type: ignore[attr-defined]

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            self._client = storage.Client(project=project, credentials=AnonymousCredentials())
        else:
            self._client = storage.Client(project=project)

    def _blob(self, bucket: str, name: str) -> Any:
        return self._client.bucket(bucket).blob(name)

    def put(self, bucket: str, name: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        self._call(lambda: self._blob(bucket, name).upload_from_string(data, content_type=content_type, timeout=_TIMEOUT))

    def get(self, bucket: str, name: str) -> bytes:
        from google.api_core import exceptions

        try:
            return bytes(self._call(lambda: self._blob(bucket, name).download_as_bytes(timeout=_TIMEOUT)))
        except exceptions.NotFound:
            raise NotFoundError(f"no object {name!r} in bucket {bucket!r}") from None

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
