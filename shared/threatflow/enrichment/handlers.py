"""Pub/Sub handlers of the pipeline, and the wiring they share per function instance.

    ioc-enrichment-requested -> handle_request   (enrich-dispatch)
    enrichment-tasks         -> handle_task      (enrich-<source>)
    enrichment-completed     -> handle_completed (enrich-aggregate)

Deferral never counts as a failure: a task without quota (or after a 429) is
republished as a fresh message with a not-before time and the old one is acked,
so a 429 storm cannot dead-letter anything. A task that keeps failing for real
is sent to its source's dead-letter topic on its last attempt, with the error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from threatflow.adapters.postgres import unit_of_work
from threatflow.enrichment import closing, dispatch, repository, runs
from threatflow.enrichment.budget import LookupCharge, UserBudget, plan
from threatflow.enrichment.cache import ResultCache
from threatflow.enrichment.keys import KeyRing
from threatflow.enrichment.model import ResultStatus, SourceResult
from threatflow.enrichment.quota import QuotaGate
from threatflow.enrichment.settings import SourceSettings, load
from threatflow.enrichment.tasks import (
    AUTO_ENRICH_ORIGIN,
    TOPIC_COMPLETED,
    TOPIC_REQUESTED,
    TOPIC_TASKS,
    EnrichRequest,
    Task,
    auto_enrich_request,
)
from threatflow.enrichment.worker import Outcome, execute
from threatflow.intel import enrichment as intel_enrichment
from threatflow.platform import events
from threatflow.platform import logging as tf_logging
from threatflow.platform.errors import DependencyError, PermanentError, RetryableError, ValidationError
from threatflow.platform.sources import SourceConfig

if TYPE_CHECKING:
    import requests

    from threatflow.adapters.redis import RedisPrimitives
    from threatflow.runtime import Runtime

log = logging.getLogger("threatflow.enrichment")
HOLD_SECONDS = 2.0  # a deferred task that is nearly due waits in the handler at most this long
PARK_AFTER_SECONDS = 900.0  # longer deferrals (daily caps) wait in a Redis delay queue, released by the next enrichment messages
DEFERRED_QUEUE = "enr:deferred"
HEALTH_TTL_SECONDS = 3600
AUTO_MAX = 10_000
# dispatch_request reads a run written under its start (a close, another delivery's start) and decides again, this many times in all.
START_ATTEMPTS = 3


class Enrichment:
    """Everything the handlers and routes need, built lazily once per instance."""

    def __init__(self, runtime: Runtime, *, settings: SourceSettings | None = None) -> None:
        self.runtime = runtime
        self._settings = settings
        self._lock = threading.RLock()  # one client may be built from another
        self._built: dict[str, Any] = {}

    def _get(self, key: str, build: Any) -> Any:
        with self._lock:
            if key not in self._built:
                self._built[key] = build()
            return self._built[key]

    @property
    def settings(self) -> SourceSettings:
        return self._settings or self._get("settings", load)  # type: ignore[no-any-return]

    @property
    def redis(self) -> RedisPrimitives:
        from threatflow.adapters.redis import RedisPrimitives

        return self._get("redis", lambda: RedisPrimitives(self.runtime.redis, breaker=self.runtime.redis_breaker))  # type: ignore[no-any-return]

    @property
    def keys(self) -> KeyRing:
        return self._get("keys", lambda: KeyRing(secrets=self.runtime.secrets, cache_seconds=self.settings.key_cache_seconds))  # type: ignore[no-any-return]

    @property
    def quota(self) -> QuotaGate:
        return self._get("quota", lambda: QuotaGate(limiter=self.runtime.rate_limiter, redis=self.redis))  # type: ignore[no-any-return]

    @property
    def budget(self) -> UserBudget:
        return self._get("budget", lambda: UserBudget(limiter=self.runtime.rate_limiter, per_hour=self.settings.user_budget_per_hour))  # type: ignore[no-any-return]

    @property
    def cache(self) -> ResultCache:
        return self._get("cache", lambda: ResultCache(redis=self.redis, engine=self.runtime.engine, now=self.runtime.clock.now))  # type: ignore[no-any-return]

    @property
    def session(self) -> requests.Session:
        import requests

        def build() -> requests.Session:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=32, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            return session

        return self._get("session", build)  # type: ignore[no-any-return]

    def reliability(self) -> dict[str, float]:
        return closing.reliability()

    def publish(self, topic: str, payload: Mapping[str, Any], **attributes: str) -> str:
        return self.runtime.publisher.publish(topic, events.encode(payload), attributes)

    def now(self) -> datetime:
        return self.runtime.clock.now()


def context(runtime: Runtime) -> Enrichment:
    """The runtime's enrichment context, built once per runtime."""
    return runtime.scoped("enrichment", lambda: Enrichment(runtime))


# -- requesting --------------------------------------------------------------------


def _run_document(req: EnrichRequest) -> dict[str, Any]:
    """A new run's Firestore record (queued), whoever records it first: the request or the dispatcher."""
    return {
        "run_id": req.run_id,
        "ioc_id": req.ioc_id,
        "type": req.ioc_type,
        "value": req.value,
        "force": req.force,
        "origin": req.origin,
        "batch_id": req.batch_id,
        "created_at": time.time(),
        "request": req.to_json(),  # what close-overdue-enrichment-runs publishes again if it is never dispatched
    }


def request(ctx: Enrichment, req: EnrichRequest) -> None:
    """Record the run (queued) and publish the request, marked `recorded`; the dispatcher does the rest."""
    req = dataclasses.replace(req, recorded=True)
    runs.create_run(ctx.runtime.documents, _run_document(req))
    try:
        ctx.publish(TOPIC_REQUESTED, req.to_json(), run_id=req.run_id)
    except Exception as exc:
        # The caller gets an error and never sees the run id: nothing will read it, so no run is left queued. The
        # broker may have taken the message before the wait failed: enrich-dispatch drops a recorded request whose
        # run is gone. A run it started already is kept (it closes as any run does).
        _cancel_runs(ctx, exc, [req.run_id])
        raise


def request_many(ctx: Enrichment, reqs: Sequence[EnrichRequest], *, batch_id: str) -> None:
    """A batch's requests: every run recorded queued (batched writes), then the requests published together.
    Recorded first, a run whose request is dead-lettered or never delivered is seen by close-overdue-enrichment-runs
    (published again, then closed as never dispatched), as POST /enrich's are; unrecorded, it stayed running forever."""
    if not reqs:
        return
    reqs = [dataclasses.replace(req, recorded=True) for req in reqs]
    try:
        runs.create_runs(ctx.runtime.documents, [_run_document(req) for req in reqs])
    except Exception as exc:
        # Recorded in several commits, the first ones may have landed: queued with their requests, the queued sweep
        # would publish them for nobody (the caller gets an error, never the batch id). Nothing was published yet.
        _cancel_runs(ctx, exc, [req.run_id for req in reqs], failed="recording the runs")
        raise
    messages: list[tuple[bytes, Mapping[str, str]]] = [
        (events.encode(req.to_json()), {"run_id": req.run_id, "batch_id": batch_id}) for req in reqs
    ]
    try:
        ctx.runtime.publisher.publish_many(TOPIC_REQUESTED, messages)
    except Exception as exc:
        # As request(): the caller gets an error and never sees the batch id. A request published before the
        # failure is dropped by enrich-dispatch once its run is gone; one it started already keeps its run.
        _cancel_runs(ctx, exc, [req.run_id for req in reqs])
        raise


def _cancel_runs(ctx: Enrichment, failure: Exception, run_ids: Sequence[str], *, failed: str = "publish") -> None:
    """Deletes the runs of a failed request still queued. When that fails too, its error is logged (with the runs left
    queued, which close-overdue-enrichment-runs finds) and `failure`, the caller's to raise, stays the error answered."""
    kept = tf_logging.cleanup_after(
        failure,
        lambda: runs.delete_queued_runs(ctx.runtime.documents, run_ids),
        logger=log,
        what=f"cancelling the runs of a failed enrichment {failed}",
        run_ids=list(run_ids[:20]),
    )
    if kept is not None:
        _cancelled(run_ids, kept=kept, failed=failed)


def _cancelled(run_ids: Sequence[str], *, kept: Sequence[str], failed: str = "publish") -> None:
    """The runs of a request whose publish (or recording) failed: deleted, except those enrich-dispatch started already."""
    tf_logging.log(
        log,
        logging.WARNING,
        f"enrichment {failed} failed: {len(run_ids) - len(kept)} runs cancelled (queued ones deleted), {len(kept)} started already kept",
        run_ids=list(run_ids[:20]),
        kept=list(kept[:20]),
    )


def auto_enrich(runtime: Runtime, results: Sequence[Mapping[str, Any]], *, writer: str) -> dict[str, Any]:
    """After an upsert: one small message naming the newly created, active IoCs whose type some source
    auto-enriches, as many of them, in order, as `writer`'s enrichment budget has room for (budget.plan with
    `auto`: the auto-enriching sources with no cached answer); enrich-dispatch expands it (and skips warninglisted
    ones). What is said for the write's answer: `queued`, `lookups` charged, and the IoCs `not_queued` (how many,
    `not_queued_ids` which) with why.
    Never raises: ingest must not fail because enrichment is unavailable (nothing queued, the charge given back)."""
    summary: dict[str, Any] = {"queued": 0, "lookups": 0}
    try:
        ctx = context(runtime)
        auto_types = {t for s in ctx.settings.enabled() for t in s.auto_enrich}
        # Created and active: one expired when written is stored inactive (iocs repository.upsert), not worth quota
        wanted = [r for r in results if r.get("status") == "created" and r.get("active", True) and r.get("type") in auto_types]
        ids = [int(r["id"]) for r in wanted][:AUTO_MAX]
        if not ids:
            return summary
        with unit_of_work(runtime.engine) as conn:  # their TLPs and warninglists, as enrich-dispatch reads them
            iocs = intel_enrichment.auto_enrichment_costed(conn, ids)
        try:
            costs = plan(ctx, [(ioc, [], False) for ioc in iocs], auto=True).costs
        except DependencyError:  # Redis unreachable: allowed uncounted, as the budget allows a request (budget.py)
            tf_logging.log(log, logging.WARNING, "enrichment budget unavailable (Redis); auto-enrichment queued uncharged", user=writer)
            costs = {}
        charged = [costs.get(int(ioc["id"]), 0) for ioc in iocs]
        admitted = ctx.budget.charge_up_to(writer, charged)
        queued = [int(ioc["id"]) for ioc, ok in zip(iocs, admitted, strict=True) if ok]
        # Each at the TLP it was charged at: enrich-dispatch reads the IoC again, maybe lowered since (not charged)
        tlps = [str(ioc["sent_tlp"]) for ioc, ok in zip(iocs, admitted, strict=True) if ok]
        lookups = sum(cost for cost, ok in zip(charged, admitted, strict=True) if ok)
        left_out = len(iocs) - len(queued)
        if queued:
            try:
                ctx.publish(TOPIC_REQUESTED, auto_enrich_request(queued, tlps=tlps), origin=AUTO_ENRICH_ORIGIN)
            except Exception:
                ctx.budget.refund(writer, lookups)
                raise
        summary = {"queued": len(queued), "lookups": lookups}
        if left_out:
            summary["not_queued"] = left_out
            # which ones: each IoC fits whole or not at all, so a cheaper one after one left out may be queued
            summary["not_queued_ids"] = [int(ioc["id"]) for ioc, ok in zip(iocs, admitted, strict=True) if not ok]
            summary["reason"] = (
                f"enrichment budget: {left_out} new IoCs need more source lookups than {writer}'s budget of"
                f" {ctx.budget.per_hour} an hour has left; enrich them (not_queued_ids) later (POST /api/v1/enrichment/batch)"
            )
        return summary
    except Exception as exc:  # failure-tolerant by design; logged for the operator
        tf_logging.log(log, logging.WARNING, f"auto-enrichment not requested: {exc.__class__.__name__}: {exc}")
        return {"queued": 0, "lookups": 0, "error": "auto-enrichment could not be requested; it has been logged"}


# -- enrich-dispatch ----------------------------------------------------------------


def handle_request(message: events.Message, *, runtime: Runtime) -> None:
    ctx = context(runtime)
    release_parked(ctx)
    if message.data.get("origin") == "tick":  # the release-deferred-enrichment schedule: releasing was the point
        return
    if message.data.get("origin") == "ingest" and "ioc_ids" in message.data:
        for req in _ingest_requests(runtime, message):
            dispatch_request(ctx, req)
        return
    dispatch_request(ctx, EnrichRequest.from_json(message.data))


def _ingest_requests(runtime: Runtime, message: events.Message) -> list[EnrichRequest]:
    """Auto-enrichment on ingest: one run per new IoC (see intel.enrichment.ingest_requests)."""
    with unit_of_work(runtime.engine) as conn:
        return intel_enrichment.ingest_requests(
            conn, list(message.data["ioc_ids"]), message_id=message.message_id, charged_tlps=message.data.get("tlps")
        )


def _started_already(run: Mapping[str, Any] | None) -> bool:
    """The rules for a request whose run exists: True when it must not be started (again)."""
    if run is None:
        return False
    if run.get("status") in ("running", "done") and run.get("dispatched"):
        return True  # a redelivery: tasks were published already
    # Closed with its verdict, its dispatcher having died before marking it dispatched: a redelivery too.
    # Only a run closed as never dispatched (it has a reason) is started by a late request.
    return run.get("status") == "done" and not run.get("reason")


def dispatch_request(ctx: Enrichment, req: EnrichRequest) -> None:
    """Start the run and publish one task per chosen source. The start is a compare-and-set on the run as read
    (a create for a run not recorded): a close or another start landing between the read and the write makes it
    refuse, and the run is read again and judged again by the same rules, at most START_ATTEMPTS times."""
    runtime = ctx.runtime
    selection: tuple[list[str], dict[str, str]] | None = None
    for _ in range(START_ATTEMPTS):
        read = runs.get_run_versioned(runtime.documents, req.run_id)
        if read is None and req.recorded:
            # Recorded before its publish, and gone: the publish failed (the caller was answered an error) and the
            # run was deleted, but the broker had taken the message. Nobody would read the run: acked, not run.
            tf_logging.log(log, logging.WARNING, "enrichment request dropped: its run was cancelled", run_id=req.run_id)
            return
        if _started_already(read.data if read else None):
            return
        if selection is None:
            selection = dispatch.select(
                ctx.settings.enabled(),
                ioc_type=req.ioc_type,
                tlp=req.tlp,
                tlp_withheld=req.tlp_withheld,
                warninglisted=bool(req.warninglists),
                force=req.force,
                wanted=req.sources,
                usable_key=ctx.keys.usable,
                implemented=ctx.reliability().keys(),
                auto=req.origin == "ingest",
            )
        chosen, skipped = selection
        if req.origin == "ingest" and not chosen:
            return  # nothing to auto-enrich: no run is recorded
        deadline = time.time() + ctx.settings.run_deadline_seconds
        if read is None:
            document = _run_document(req)
            requested_at = float(document["created_at"])
            started = runs.create_started_run(runtime.documents, document, expected=chosen, skipped=skipped, deadline_at=deadline)
        else:
            requested_at = float(read.data.get("created_at") or time.time())
            started = runs.start_run(
                runtime.documents, req.run_id, version=read.version, expected=chosen, skipped=skipped, deadline_at=deadline
            )
        if started:
            break
        tf_logging.log(log, logging.INFO, "enrichment run written since it was read: read again", run_id=req.run_id)
    else:
        raise RetryableError(f"enrichment run {req.run_id} was written by others on each of {START_ATTEMPTS} starts; delivered again")
    for name in chosen:
        requested = requested_at if req.force else None  # a forced run's answers must be fetched since its request
        task = Task(req.run_id, req.ioc_id, req.ioc_type, req.value, name, force=req.force, requested_at=requested)
        ctx.publish(TOPIC_TASKS, task.to_json(), source=name, run_id=req.run_id)
    runtime.documents.set(runs.RUNS, req.run_id, {"dispatched": True}, merge=True)
    if not chosen:
        finalize(ctx, req.run_id)


# -- enrich-<source> ------------------------------------------------------------------


def release_parked(ctx: Enrichment, *, limit: int = 50) -> int:
    """Republish parked (long-deferred) tasks that are due."""
    released = 0
    for raw in ctx.redis.take_due(DEFERRED_QUEUE, now_epoch=time.time(), limit=limit):
        data = json.loads(raw)
        ctx.publish(TOPIC_TASKS, data, source=str(data["source"]), run_id=str(data["run_id"]))
        released += 1
    return released


def defer(ctx: Enrichment, task: Task, seconds: float, reason: str) -> None:
    """The task comes back later: never dropped, never counted as a failed delivery."""
    due = time.time() + max(seconds, 0.05)
    again = Task(**{**task.to_json(), "not_before": due, "deferrals": task.deferrals + 1, "reasons": [*task.reasons, reason][-5:]})
    if seconds > PARK_AFTER_SECONDS:
        ctx.redis.schedule(DEFERRED_QUEUE, json.dumps(again.to_json(), sort_keys=True).encode(), due_epoch=due)
    else:
        ctx.publish(TOPIC_TASKS, again.to_json(), source=task.source, run_id=task.run_id, deferred="1")
    tf_logging.log(log, logging.INFO, f"deferred {seconds:.2f}s: {reason}", source=task.source, run_id=task.run_id)


def run_task(ctx: Enrichment, source: SourceConfig, task: Task, *, charge: LookupCharge | None) -> Outcome:
    """`task` through the worker (cache, single flight, `charge`, quota, then the source) with this context's parts.
    `charge` spends a caller's budget just before a call would leave the cache, given back if the quota refuses
    it (GET /detect/intel); None for the
    pipeline's tasks, whose runs were charged when requested (enrichment/budget.py)."""
    api_key = ctx.keys.get(source)
    return execute(
        task,
        source=source,
        key_id=ctx.keys.fingerprint(source),
        cache=ctx.cache,
        redis=ctx.redis,
        quota=ctx.quota,
        call=lambda: lookup_source(ctx, source, task, api_key),
        now=ctx.now,
        charge=charge,
    )


def lookup_source(ctx: Enrichment, source: SourceConfig, task: Task, api_key: str | None) -> SourceResult:
    from threatflow.enrichment.sources import client

    return client.lookup(
        source.name,
        task.ioc_type,
        task.value,
        session=ctx.session,
        api_key=api_key,
        timeout=source.timeout_seconds,
        base_url=ctx.settings.base_urls.get(source.name),
    )


def handle_task(message: events.Message, *, runtime: Runtime, only_source: str | None = None) -> None:
    ctx = context(runtime)
    if only_source and message.attributes.get("source") not in (None, only_source):
        return  # another source's task (the emulator ignores subscription filters)
    counter = f"enr:attempts:{only_source or message.attributes.get('source')}:{message.message_id}"
    attempts = max(message.delivery_attempt, ctx.redis.incr(counter, expire_at=int(time.time()) + 86400))
    try:
        process_task(ctx, message, only_source=only_source)
    except Exception as exc:
        source = ctx.settings.sources.get(str(message.attributes.get("source") or message.data.get("source")))
        limit = source.max_delivery_attempts if source else 5
        if isinstance(exc, PermanentError) or attempts >= limit:
            dead_letter(ctx, message, source, exc, attempts)
            return
        raise


def dead_letter(ctx: Enrichment, message: events.Message, source: SourceConfig | None, exc: Exception, attempts: int) -> None:
    """The last attempt failed (or the task can never work): park it on the source's dead-letter topic with its error."""
    error = exc.message if isinstance(exc, PermanentError) else f"{exc.__class__.__name__}: {exc}"
    topic = source.dead_letter_topic if source else "ioc-enrichment-requested-dead-letter"
    attributes = {
        "source": source.name if source else "",
        "error": error[:1000],
        "attempts": str(attempts),
        "original_message_id": message.message_id,
    }
    ctx.publish(topic, dict(message.data), **attributes)
    tf_logging.log(log, logging.ERROR, f"dead-lettered after {attempts} attempts: {error}", topic=topic)


def process_task(ctx: Enrichment, message: events.Message, *, only_source: str | None = None) -> None:
    release_parked(ctx)
    task = Task.from_json(message.data)
    if only_source and task.source != only_source:
        # The subscription filter normally keeps other sources' tasks away (the Pub/Sub
        # emulator ignores filters): not this function's task, so ack it untouched.
        return
    source = ctx.settings.sources.get(task.source)
    if source is None:
        raise ValidationError(f"unknown source {task.source!r}", field="source")
    if task.not_before is not None:
        wait = task.not_before - time.time()
        if wait > 0:
            time.sleep(min(wait, HOLD_SECONDS))
            if task.not_before - time.time() > 0.01:
                defer(ctx, Task(**{**task.to_json(), "deferrals": task.deferrals - 1}), task.not_before - time.time(), "not due yet")
                return
    with unit_of_work(ctx.runtime.engine) as conn:
        if not repository.ioc_exists(conn, task.ioc_id):
            raise LookupError(f"IoC {task.ioc_id} does not exist")
        if any(r["source"] == task.source for r in repository.run_results(conn, task.run_id)):
            ctx.publish(TOPIC_COMPLETED, {"run_id": task.run_id, "source": task.source}, source=task.source)
            return  # a redelivery: the result is stored already
    outcome = run_task(ctx, source, task, charge=None)
    if outcome.defer_seconds is not None:
        defer(ctx, task, outcome.defer_seconds, outcome.reason)
        return
    result = outcome.result
    assert result is not None
    if result.status is ResultStatus.AUTH_ERROR:
        ctx.redis.set(f"enr:health:{source.name}", b"auth_error", ttl_seconds=HEALTH_TTL_SECONDS)
    elif not outcome.cached and result.status in (ResultStatus.OK, ResultStatus.NOT_FOUND):
        ctx.redis.delete(f"enr:health:{source.name}")
    with unit_of_work(ctx.runtime.engine) as conn:
        repository.insert_results(conn, [result_row(task.run_id, task.ioc_id, result, cached=outcome.cached)])
    ctx.publish(TOPIC_COMPLETED, {"run_id": task.run_id, "source": task.source, "status": result.status.value}, source=task.source)


def result_row(run_id: str, ioc_id: int, result: SourceResult, *, cached: bool) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "ioc_id": ioc_id,
        "source": result.source,
        "status": result.status.value,
        "verdict": result.verdict.value,
        "score": result.score,
        "evidence": result.evidence.to_dict(),
        "detail": result.detail[:500],
        "cached": cached,
        "fetched_at": result.fetched_at.isoformat(),
    }


# -- enrich-aggregate ---------------------------------------------------------------


def handle_completed(message: events.Message, *, runtime: Runtime) -> None:
    run_id = message.data.get("run_id")
    if not isinstance(run_id, str):
        raise ValidationError("run_id must be a string", field="run_id")
    finalize(context(runtime), run_id)


def finalize(ctx: Enrichment, run_id: str, *, lock_wait_ms: int = repository.LOCK_WAIT_MS) -> dict[str, Any] | None:
    """Close the run if every expected source answered (or the deadline passed):
    merge the verdict, store evidence, update the IoC, correlate threats. Idempotent;
    the one close (closing.close), shared with the close-overdue-enrichment-runs job."""
    return closing.close(
        run_id,
        documents=ctx.runtime.documents,
        engine=ctx.runtime.engine,
        now=ctx.now,
        reliability=ctx.reliability(),
        apply_verdict=intel_enrichment.apply_verdict,
        lock_wait_ms=lock_wait_ms,
    ).run
