"""API keys of the intel sources, read through the secret source with a short cache.

Secret Manager in the cloud, the environment locally (secret `vt-api-key` is
VT_API_KEY). The cache is short (ENRICH_KEY_CACHE_SECONDS), so a new secret
version is used without a redeploy. Keys are never logged or returned: callers
get the key itself only to send it, and otherwise `present()` or `fingerprint()`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

from threatflow.platform.errors import ConfigError
from threatflow.platform.ports import SecretSource
from threatflow.platform.sources import SourceConfig


class KeyRing:
    def __init__(self, *, secrets: SecretSource, cache_seconds: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._secrets = secrets
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def get(self, source: SourceConfig) -> str | None:
        if source.secret is None:
            return None
        now = self._monotonic()
        with self._lock:
            cached = self._cache.get(source.secret)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        try:
            value: str | None = self._secrets.get(source.secret).strip() or None
        except ConfigError:  # no such secret or no version: the source has no key
            value = None
        with self._lock:
            self._cache[source.secret] = (now, value)
        return value

    def present(self, source: SourceConfig) -> bool:
        return source.secret is None or self.get(source) is not None

    def usable(self, source: SourceConfig) -> bool:
        """Keyless, key optional, or key present."""
        return source.keyless or source.key_optional or self.get(source) is not None

    def fingerprint(self, source: SourceConfig) -> str:
        """Names the key in quota counters without revealing it; one bucket per key."""
        key = self.get(source)
        return "keyless" if key is None else hashlib.sha256(key.encode()).hexdigest()[:12]
