"""Each user's enrichment budget: source lookups that leave the cache, per user and hour.

The unit is what spends the team's intel quota: one call to one source. A cache hit is free, and so is a source
the request does not reach (it does not look up the type, the IoC is warninglisted, its TLP is above the source's
maximum). The routes count it before any work:

    GET  /detect/intel/{ip}    1 per source the lookup is about to call (after the cache and the single flight),
                               given back when that source's quota refuses the call (LookupCharge)
    POST /enrichment/enrich    the sources dispatch will ask whose answer is not in the Redis cache (all, forced)
    POST /enrichment/batch     the same over the batch's distinct (IoC, source) pairs, charged at once
    POST /iocs/batch           its new IoCs' auto-enrichment, the `auto_enrich` sources with no cached answer: as
                               many IoCs as the budget has room for are queued, in order, the rest are not (the
                               write is never refused for it; the answer says how many were left out and why)

It is charged on the GCRA limiter the request rates use (`adapters.redis.RateLimiter.hit`, with a cost), so one
Lua script decides atomically for every instance: a user may spend the whole budget at once, and it refills
smoothly (budget / 3600 a second). A refusal charges nothing and says when the request would fit (429, Retry-After);
a request costing more than the whole budget never would (413, naming the field to cut). Redis unreachable: allowed
(logged), as the request rates are; the cache and the sources' quotas need Redis too, so little is spent meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from threatflow.enrichment import dispatch
from threatflow.platform import logging as tf_logging
from threatflow.platform.errors import DependencyError, PayloadTooLargeError, RateLimitedError

if TYPE_CHECKING:
    from threatflow.adapters.redis import RateLimiter
    from threatflow.enrichment.cache import ResultCache
    from threatflow.enrichment.keys import KeyRing
    from threatflow.enrichment.settings import SourceSettings


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

    def charge_up_to(self, username: str, costs: Sequence[int]) -> list[bool]:
        """Spend, of `username`'s budget, the costs in order that still fit, each whole or not at all: which were
        charged. A cost of 0 is always admitted. Two round trips when the whole does not fit (what is left, then the
        part that fits); a concurrent charge taking that room meanwhile leaves the part uncharged and unadmitted.
        Redis unreachable: every cost admitted (logged), as `charge` allows a request."""
        total = sum(max(cost, 0) for cost in costs)
        if total <= 0:
            return [True] * len(costs)
        try:
            decision = self._limiter.hit(_key(username), limit=self.per_hour, period_seconds=PERIOD_SECONDS, cost=total)
            if decision.allowed:
                return [True] * len(costs)
            left = self._limiter.hit(_key(username), limit=self.per_hour, period_seconds=PERIOD_SECONDS, cost=0).remaining
            admitted = []
            spent = 0
            for cost in costs:
                fits = spent + max(cost, 0) <= left
                spent += max(cost, 0) if fits else 0
                admitted.append(fits)
            if spent and not self._limiter.hit(_key(username), limit=self.per_hour, period_seconds=PERIOD_SECONDS, cost=spent).allowed:
                return [cost <= 0 for cost in costs]
            return admitted
        except DependencyError:
            tf_logging.log(log, logging.WARNING, "enrichment budget unavailable (Redis); lookups allowed", user=username, cost=total)
            return [True] * len(costs)

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


@dataclass(frozen=True)
class Plan:
    """What a request's runs will cost: `cached`, ioc_id -> every source's cached answer for the unforced IoCs whose
    every source has one (a batch answers those at once); `lookups`, the distinct (IoC, source) pairs that will leave
    the cache, every source of a forced IoC and the others' sources with no answer in Redis (the budget's cost)."""

    cached: dict[int, list[Any]]
    lookups: int
    costs: dict[int, int]  # ioc_id -> how many of the `lookups` are its own


class Planning(Protocol):
    """What `plan` reads of the enrichment context (handlers.Enrichment)."""

    @property
    def settings(self) -> SourceSettings: ...
    @property
    def keys(self) -> KeyRing: ...
    @property
    def cache(self) -> ResultCache: ...
    def reliability(self) -> dict[str, float]: ...


def plan(ctx: Planning, wanted: Sequence[tuple[dict[str, Any], list[str], bool]], *, auto: bool = False) -> Plan:
    """The plan of runs of (IoC, sources named, force), with the sources enrich-dispatch will choose (one MGET);
    `auto`: auto-enrichment's runs, which ask only the sources auto-enriching the IoC's type.
    Redis only: an answer only the enrichment_cache table still holds counts as a lookup (charged, then free)."""
    implemented = ctx.reliability().keys()
    enabled = ctx.settings.enabled()
    unforced: list[tuple[int, list[Any]]] = []
    pairs: list[tuple[Any, str, str]] = []
    charged: set[tuple[int, str]] = set()
    selections: dict[tuple[Any, ...], list[str]] = {}
    for ioc, sources, force in wanted:
        rule = (
            str(ioc["type"]),
            str(ioc["sent_tlp"]),
            bool(ioc["tlp_withheld"]),
            bool(ioc.get("warninglists")),
            tuple(sources),
            force,
        )
        if rule not in selections:  # the same answer for every IoC of a type, TLP and source list
            selections[rule] = dispatch.select(
                enabled,
                ioc_type=rule[0],
                tlp=rule[1],
                tlp_withheld=rule[2],
                warninglisted=rule[3],
                force=force,
                wanted=sources,
                usable_key=ctx.keys.usable,
                implemented=implemented,
                auto=auto,
            )[0]
        chosen = selections[rule]
        if force:
            charged.update((int(ioc["id"]), name) for name in chosen)
        elif chosen:
            configs = [ctx.settings.sources[name] for name in chosen]
            unforced.append((int(ioc["id"]), configs))
            pairs += [(c, str(ioc["type"]), str(ioc["value"])) for c in configs]
    results = iter(ctx.cache.get_many(pairs))
    cached: dict[int, list[Any]] = {}
    for ioc_id, configs in unforced:
        answers = [next(results) for _ in configs]
        charged.update((ioc_id, c.name) for c, answer in zip(configs, answers, strict=True) if answer is None)
        if all(a is not None for a in answers):
            cached[ioc_id] = answers
    costs: dict[int, int] = {}
    for ioc_id, _ in charged:
        costs[ioc_id] = costs.get(ioc_id, 0) + 1
    return Plan(cached=cached, lookups=len(charged), costs=costs)
