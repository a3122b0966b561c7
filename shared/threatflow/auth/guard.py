"""Login that cannot be used to burn CPU.

Every password check costs an Argon2 hash (tens of ms of one core, and memory).
Three bounds, on top of the per-IP limit the router applies:

1. per account name (known or unknown, so a lock reveals nothing): after
   LOGIN_MAX_FAILURES failures the name is locked, for LOGIN_LOCKOUT_SECONDS
   doubling with each further failure; a locked name is refused before any
   hash is computed. A new lock is written to the security audit log
   (`security_events`), which admins list at GET /api/v1/admin/security-events.
2. per instance: at most LOGIN_CONCURRENT_HASHES hashes at once, and hashing
   may take at most LOGIN_HASH_SHARE_PERCENT of the instance's time: a budget of
   hashing seconds (a token bucket holding share x HASH_WINDOW_SECONDS, refilled
   at `share` seconds per second, each hash paying what it took), so a few
   logins in a row always pass and a flood gets at most that share of the CPU,
   whatever the machine's speed. A login over
   either bound is answered 503 with Retry-After at once (it never waits more
   than HASH_WAIT_SECONDS for a slot), so a flood queues nowhere, holds no
   worker threads, and the other routes keep their CPU.
3. unknown users cost the same hash as known ones (passwords.verify_password).

If Redis is unreachable the lockout is skipped (the router's in-process
fallback limit on the token endpoint still applies).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from threatflow.platform import logging as tf_logging
from threatflow.platform.errors import DependencyError, RateLimitedError

log = logging.getLogger("threatflow.auth")
HASH_WAIT_SECONDS = 0.05
HASH_WINDOW_SECONDS = 10.0


class LoginGuard:
    def __init__(
        self,
        *,
        lockout: Any,
        concurrent_hashes: int,
        record_event: Any,
        hash_share_percent: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`lockout`: an AccountLockout (or None where Redis is not configured); `record_event(kind, username=,
        client_ip=, detail=)` writes the audit record."""
        self._lockout = lockout
        self._slots = threading.BoundedSemaphore(concurrent_hashes)
        self._record_event = record_event
        self._share = max(1, min(100, hash_share_percent)) / 100
        self._capacity = self._share * HASH_WINDOW_SECONDS
        self._budget = self._capacity  # seconds of hashing available now
        self._clock = clock
        self._refilled_at = clock()
        self._lock = threading.Lock()

    def _refill(self) -> float:
        now = self._clock()
        self._budget = min(self._capacity, self._budget + (now - self._refilled_at) * self._share)
        self._refilled_at = now
        return self._budget

    def check(self, username: str) -> None:
        state = self._call("check", username)
        if state is not None and state.locked_seconds > 0:
            raise RateLimitedError(
                "too many failed logins for this account; try again later",
                retry_after=state.locked_seconds,
                details={"field": "username"},
            )

    @contextlib.contextmanager
    def hashing(self) -> Iterator[None]:
        with self._lock:
            budget = self._refill()
        if budget <= 0 and self._share < 1:
            wait = -budget / self._share
            raise DependencyError("too many logins on this instance; retry shortly", retry_after=max(1, math.ceil(wait)))
        if not self._slots.acquire(timeout=HASH_WAIT_SECONDS):
            raise DependencyError("too many logins in progress on this instance; retry shortly", retry_after=1)
        started = self._clock()
        try:
            yield
        finally:
            took = self._clock() - started
            with self._lock:
                self._refill()
                self._budget -= took
            self._slots.release()

    def failed(self, username: str, *, client_ip: str | None) -> None:
        state = self._call("failed", username)
        if state is not None and state.newly_locked:
            detail = {"failures": state.failures, "locked_seconds": state.locked_seconds}
            tf_logging.log(log, logging.WARNING, "account locked after failed logins", username=username, client_ip=client_ip, **detail)
            self._record_event("account_locked", username=username, client_ip=client_ip, detail=detail)

    def succeeded(self, username: str) -> None:
        self._call("succeeded", username)

    def _call(self, what: str, username: str) -> Any:
        if self._lockout is None:
            return None
        try:
            return getattr(self._lockout, what)(username)
        except DependencyError:
            log.warning("login lockout unavailable (Redis); per-instance limit only")
            return None
