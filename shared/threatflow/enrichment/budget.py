"""Each user's enrichment budget: source lookups that leave the cache, per user and hour.

The unit is what spends the team's intel quota: one call to one source. A cache hit is free, and so is a source
the request does not reach (it does not look up the type, the IoC is warninglisted, its TLP is above the source's
maximum). The routes count it before any work:

    GET  /detect/intel/{ip}    1 per source the lookup is about to call (after the cache and the single flight),
                               given back when that source's quota refuses the call (LookupCharge)
    POST /enrichment/enrich    the sources dispatch will ask whose answer is not in the Redis cache (all, forced)
    POST /enrichment/batch     the same over the batch's distinct (IoC, source) pairs, charged at once

It is charged on the GCRA limiter the request rates use (`adapters.redis.RateLimiter.hit`, with a cost), so one
Lua script decides atomically for every instance: a user may spend the whole budget at once, and it refills
smoothly (budget / 3600 a second). A refusal charges nothing and says when the request would fit (429, Retry-After);
a request costing more than the whole budget never would (413, naming the field to cut). Redis unreachable: allowed
(logged), as the request rates are; the cache and the sources' quotas need Redis too, so little is spent meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from threatflow.platform import logging as tf_logging
from threatflow.platform.errors import DependencyError, PayloadTooLargeError, RateLimitedError

if TYPE_CHECKING:
    from threatflow.adapters.redis import RateLimiter


class Charge(Protocol):
    def __call__(self, lookups: int, *, field: str) -> None: ...


log = logging.getLogger("threatflow.enrichment")
PERIOD_SECONDS = 3600


def _key(username: str) -> str:
    """A user's GCRA key on the limiter (charges and refunds)."""
    return f"enrich-budget:{username}"


class UserBudget:
    def __init__(self, *, limiter: RateLimiter, per_hour: int) -> None:
        self._limiter = limiter
        self.per_hour = per_hour

    def _details(self, lookups: int, **extra: str) -> dict[str, object]:
        return {"budget": "enrichment", **extra, "limit": self.per_hour, "period_seconds": PERIOD_SECONDS, "cost": lookups}

    def charge(self, username: str, lookups: int, *, field: str) -> None:
        """Spend `lookups` of `username`'s budget, all or nothing; RateLimitedError when they do not fit now,
        PayloadTooLargeError naming `field` when they never would."""
        if lookups <= 0:
            return
        if lookups > self.per_hour:
            raise PayloadTooLargeError(
                f"{field}: this request needs {lookups} source lookups that leave the cache; the enrichment budget is"
                f" {self.per_hour} per {PERIOD_SECONDS} s per user: ask for fewer values or sources",
                details=self._details(lookups, field=field),
            )
        try:
            decision = self._limiter.hit(_key(username), limit=self.per_hour, period_seconds=PERIOD_SECONDS, cost=lookups)
        except DependencyError:
            tf_logging.log(log, logging.WARNING, "enrichment budget unavailable (Redis); request allowed", user=username, cost=lookups)
            return
        if not decision.allowed:
            raise RateLimitedError(
                f"enrichment budget of {self.per_hour} source lookups per {PERIOD_SECONDS} s exceeded: this request needs"
                f" {lookups} (cache hits are free); it fits in {decision.retry_after_seconds:.0f} s",
                retry_after=decision.retry_after_seconds,
                details=self._details(lookups),
            )

    @contextlib.contextmanager
    def charging(self, username: str) -> Iterator[Charge]:
        """`charge` for `username` within the block, all of it given back if the block then raises: the caller gets an
        error and no run (POST /enrich and /batch, whose publish failed and whose runs were deleted, kept the charge)."""
        spent = 0

        def charge(lookups: int, *, field: str) -> None:
            nonlocal spent
            self.charge(username, lookups, field=field)
            spent += max(lookups, 0)

        try:
            yield charge
        except BaseException:
            self.refund(username, spent)
            raise

    def refund(self, username: str, lookups: int) -> None:
        """Give back `lookups` that `charge` spent on calls never made (a negative cost on the same GCRA key: what
        concurrent charges spent meanwhile stays spent, and no more than the whole budget comes back)."""
        if lookups <= 0:
            return
        try:
            self._limiter.hit(_key(username), limit=self.per_hour, period_seconds=PERIOD_SECONDS, cost=-lookups)
        except DependencyError:
            tf_logging.log(log, logging.WARNING, "enrichment budget unavailable (Redis); refund lost", user=username, cost=lookups)


@dataclass(frozen=True)
class LookupCharge:
    """One source call charged to a user's budget, as GET /detect/intel charges it (worker.execute): `spend` just
    before the source's quota is taken, `refund` when the quota refuses it, so no call was made. Spent after the
    quota, a refusal of the budget would have taken the team's quota for no call; spent before it and kept, a source
    cooling down or out of its day cost the user a lookup (each of the five IP sources, on one 429)."""

    budget: UserBudget
    username: str
    field: str

    def spend(self) -> None:
        self.budget.charge(self.username, 1, field=self.field)

    def refund(self) -> None:
        self.budget.refund(self.username, 1)
