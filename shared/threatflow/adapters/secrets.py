"""Secrets: Secret Manager in the cloud, the environment locally.

Cloud Functions can also mount secrets as environment variables (the manifest's
`secrets` list does that), so most code only sees the environment; this adapter
is for values read at run time, such as per-source API keys that rotate.
"""

from __future__ import annotations

import os
import time
from typing import Any

from threatflow.platform.errors import ConfigError, DependencyError


class EnvSecrets:
    """Local source: secret `vt-api-key` is read from VT_API_KEY."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def get(self, name: str) -> str:
        key = name.upper().replace("-", "_")
        value = self._environ.get(key)
        if not value:
            raise ConfigError(f"secret {name!r} is not set; export {key}")
        return value


class SecretManagerSecrets:
    def __init__(self, project: str, *, endpoint: str | None = None, cache_seconds: float = 300.0) -> None:
        from google.cloud import secretmanager

        options: dict[str, Any] = {}
        if endpoint:  # a test fake of the REST API
            from google.api_core.client_options import ClientOptions
            from google.auth.credentials import AnonymousCredentials

            options = {
                "transport": "rest",
                "credentials": AnonymousCredentials(),
                "client_options": ClientOptions(api_endpoint=endpoint),
            }
        self._client = secretmanager.SecretManagerServiceClient(**options)
        self._project = project
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, str]] = {}

    def get(self, name: str) -> str:
        from google.api_core import exceptions

        cached = self._cache.get(name)
        if cached and time.monotonic() - cached[0] < self._cache_seconds:
            return cached[1]
        path = f"projects/{self._project}/secrets/{name}/versions/latest"
        try:
            response = self._client.access_secret_version(request={"name": path}, timeout=10)
        except exceptions.NotFound:
            raise ConfigError(f"secret {name!r} has no enabled version in project {self._project!r}") from None
        except exceptions.PermissionDenied:
            raise ConfigError(f"this service account may not read secret {name!r}") from None
        except exceptions.GoogleAPICallError as exc:
            raise DependencyError(f"Secret Manager is unreachable: {exc.__class__.__name__}") from exc
        value = response.payload.data.decode("utf-8")
        self._cache[name] = (time.monotonic(), value)
        return value
