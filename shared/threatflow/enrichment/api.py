"""Routes of the enrichment function (/api/v1/enrichment).

POST /enrich               one IoC -> 202 {run_id, ioc_id}
GET  /runs/{run_id}        status, merged verdict and score, each source's answer
POST /batch                up to 1,000 IoCs -> 202 {batch_id, runs}
GET  /batches/{batch_id}   progress
GET  /sources              types, health, key present, quota used/left today, cache hit rate (no quota spent)
POST /health               reachability of each source (no quota spent)
GET  /dead-letters         admin: dead-lettered tasks with their last error
POST /dead-letters/replay  admin: re-queue them

Also here, so the contracts treat them as routes: the enrichment routes the iocs
function serves (GET /api/v1/iocs/{id}/enrichment, `register_ioc_routes`, and the
summary GET /api/v1/iocs/{id} includes, `ioc_summary`), and the IP reputation
route the detect function mounts (`add_detect_intel_routes(router, runtime)`).

Every read path that exposes an IoC filters by the caller's TLP clearance: a run,
result or dead letter of an IoC above it does not exist for the caller (404 / left out).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import msgspec

from threatflow.adapters.postgres import unit_of_work
from threatflow.auth import clearance as tlp_clearance
from threatflow.auth.api import authenticator
from threatflow.auth.model import Role
from threatflow.enrichment import dispatch, handlers, repository, runs, verdict
from threatflow.enrichment.budget import LookupCharge, Plan, plan
from threatflow.enrichment.handlers import Enrichment, context, run_task
from threatflow.enrichment.model import ResultStatus
from threatflow.enrichment.tasks import TOPIC_TASKS, EnrichRequest, Task
from threatflow.intel import enrichment as intel_enrichment
from threatflow.platform import limits
from threatflow.platform.errors import DependencyError, NotFoundError, PayloadTooLargeError, RateLimitedError, ValidationError
from threatflow.platform.web import Request, Response, Router
from threatflow.runtime import Runtime

MAX_BATCH = 1000
# A reader does not wait for a run another closer holds: that one closes it, the reader sees it on a later read.
READ_LOCK_WAIT_MS = 50


class EnrichIn(msgspec.Struct, forbid_unknown_fields=True):
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    type: str | None = None
    force: bool = False
    sources: list[str] = []


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    iocs: list[EnrichIn | str]
    force: bool = False
    sources: list[str] = []


MAX_REPLAY = 500
"""Dead letters replayed by one call (the oldest first when no ids are named; call again for the next ones)."""


MAX_LIST_SCAN = 2_000  # dead letters one GET /dead-letters reads at most, those it leaves out included


class ReplayIn(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[str], msgspec.Meta(max_length=MAX_REPLAY)] = []
    # A replay of all: start after this dead_lettered_at (the previous answer's `after`), past the dead letters
    # above the caller's clearance, which stay pending and would fill every page read from the oldest.
    after: Annotated[float, msgspec.Meta(ge=0)] | None = None


def _resolve_ioc(
    runtime: Runtime, item: EnrichIn, *, clearance: str, admit: Callable[[dict[str, Any]], None], index: int | None = None
) -> dict[str, Any]:
    """The stored IoC for a value, stored first when new (cross-domain: intel.enrichment); 404 above the caller's
    clearance. `admit` (the budget's charge) sees it before the new IoC is committed: a refusal stores nothing."""
    where = "value" if index is None else f"iocs[{index}].value"
    # The snapshots first: loading one takes a connection, never while this request holds its own.
    policies, warninglists = runtime.decay_policies().get(), runtime.warninglist_matcher()
    with unit_of_work(runtime.engine) as conn:
        ioc = intel_enrichment.resolve_ioc(
            conn,
            item.value,
            item.type,
            where=where,
            now=runtime.clock.now(),
            warninglists=warninglists,
            policies=policies,
            clearance=clearance,
        )
        tlp_clearance.require(clearance, ioc["tlp"], what=f"indicator {item.value[:64]!r}")
        admit(ioc)
    return ioc


def _visible_ioc(runtime: Runtime, request: Request, ioc_id: Any, *, what: str) -> None:
    """404 when the IoC is gone or above the caller's TLP clearance."""
    allowed = tlp_clearance.allowed(tlp_clearance.of(request.principal))
    try:
        ident = int(ioc_id)
    except (TypeError, ValueError):
        raise NotFoundError(f"no {what}") from None
    with unit_of_work(runtime.engine) as conn:
        if not intel_enrichment.visible_ioc_ids(conn, [ident], visible_tlps=allowed):
            raise NotFoundError(f"no {what}")


def _check_sources(ctx: handlers.Enrichment, names: list[str], field: str) -> list[str]:
    """The sources named, each once in the order first named; a 400 naming `field` for an unknown one. Carried as
    given, a name repeated 30,000 times went into every run's record and request: a 380 KB batch body wrote 150 MB to
    Firestore (two minutes, then a 503, Firestore stalled for every other request meanwhile)."""
    unknown = sorted(set(names) - set(ctx.settings.sources))
    if unknown:
        raise ValidationError(
            f"{field}: unknown sources {', '.join(unknown)}; known: {', '.join(sorted(ctx.settings.sources))}", field=field
        )
    return list(dict.fromkeys(names))


def run_view(ctx: handlers.Enrichment, run_id: str) -> dict[str, Any]:
    run = runs.get_run(ctx.runtime.documents, run_id)
    if run is None:
        return _cached_run_view(ctx, run_id)
    if run.get("status") == "running" and time.time() > float(run.get("deadline_at") or 0):
        # the deadline passed: close with what answered; if another closer is at it, the run as it stands
        with contextlib.suppress(repository.RunBeingClosed):
            run = handlers.finalize(ctx, run_id, lock_wait_ms=READ_LOCK_WAIT_MS) or run
    with unit_of_work(ctx.runtime.engine) as conn:
        results = repository.run_results(conn, run_id)
    return {
        "run_id": run_id,
        "ioc_id": run.get("ioc_id"),
        "type": run.get("type"),
        "value": run.get("value"),
        "status": "done" if run.get("status") == "done" else "running",
        "verdict": run.get("verdict"),
        "score": run.get("score"),
        "expected": run.get("expected", []),
        "skipped": run.get("skipped", {}),
        "timed_out": run.get("timed_out", []),
        **({"reason": run["reason"]} if run.get("reason") else {}),  # closed as never dispatched
        "sources": {
            r["source"]: {k: r[k] for k in ("status", "verdict", "score", "evidence", "cached", "fetched_at", "detail")} for r in results
        },
    }


def _cached_run_view(ctx: handlers.Enrichment, run_id: str) -> dict[str, Any]:
    """A run the batch answered from the cache has result rows and no run document."""
    with unit_of_work(ctx.runtime.engine) as conn:
        results = repository.run_results(conn, run_id)
    if not results:
        raise NotFoundError(f"no enrichment run {run_id!r}")
    merged = verdict.merge(results, reliability=ctx.reliability(), now=ctx.now())
    return {
        "run_id": run_id,
        "ioc_id": results[0]["ioc_id"],
        "status": "done",
        "verdict": merged.verdict,
        "score": merged.score,
        "expected": [r["source"] for r in results],
        "skipped": {},
        "timed_out": [],
        "sources": {
            r["source"]: {k: r[k] for k in ("status", "verdict", "score", "evidence", "cached", "fetched_at", "detail")} for r in results
        },
    }


def _resolve_many(
    runtime: Runtime, items: list[EnrichIn], *, clearance: str, admit: Callable[[list[dict[str, Any] | str]], None]
) -> list[dict[str, Any] | str]:
    """Stored IoCs for many values in two statements (new ones are stored); an error string per bad item, and for an
    IoC above the caller's clearance. `admit` (the budget's charge) sees them before the new IoCs are committed."""
    policies, warninglists = runtime.decay_policies().get(), runtime.warninglist_matcher()  # before the request's connection
    with unit_of_work(runtime.engine) as conn:
        resolved = intel_enrichment.resolve_many(
            conn,
            [(item.value, item.type) for item in items],
            now=runtime.clock.now(),
            warninglists=warninglists,
            policies=policies,
            clearance=clearance,
        )
        resolved = [
            r if isinstance(r, str) or tlp_clearance.can_read(clearance, r.get("tlp")) else "no such indicator within your TLP clearance"
            for r in resolved
        ]
        admit(resolved)
    return resolved


def _cached_row(run_id: str, ioc_id: int, cached: dict[str, Any]) -> dict[str, Any]:
    """A result row from a cached SourceResult dict (what handlers.result_row builds from the record)."""
    return {
        "run_id": run_id,
        "ioc_id": ioc_id,
        "source": cached["source"],
        "status": cached["status"],
        "verdict": cached.get("verdict") or "unknown",
        "score": cached.get("score"),
        "evidence": cached.get("evidence") or {},
        "detail": str(cached.get("detail") or "")[:500],
        "cached": True,
        "fetched_at": cached["fetched_at"],
    }


def _request_of(
    ioc: dict[str, Any], *, run_id: str, force: bool, sources: list[str], origin: str = "api", batch_id: str | None = None
) -> EnrichRequest:
    """The run of a resolved IoC (_resolve_ioc, _resolve_many) as POST /enrich and /batch request it: sent at
    `sent_tlp`, stricter where a record covers the address (the clearance checked `tlp`)."""
    return EnrichRequest(
        run_id=run_id,
        ioc_id=int(ioc["id"]),
        ioc_type=str(ioc["type"]),
        value=str(ioc["value"]),
        tlp=str(ioc["sent_tlp"]),
        tlp_withheld=bool(ioc["tlp_withheld"]),
        warninglists=tuple(ioc.get("warninglists") or ()),
        force=force,
        sources=tuple(sources),
        origin=origin,
        batch_id=batch_id,
    )


def _by_instant(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Dead letters in dead_lettered_at order, grouped by equal dead_lettered_at."""
    return [list(group) for _, group in itertools.groupby(items, key=lambda item: item["dead_lettered_at"])]


def _whole_instant(runtime: Runtime, at: float) -> list[dict[str, Any]]:
    """Every dead letter of one dead_lettered_at (up to MAX_LIST_SCAN), which a chunk may have cut."""
    where = [("dead_lettered_at", "==", at)]
    return runtime.documents.query(runs.DEAD_LETTERS, where=where, order_by="dead_lettered_at", descending=True, limit=MAX_LIST_SCAN)


def build_router(runtime: Runtime) -> Router:
    router = Router("enrichment", runtime=runtime, authenticator=authenticator(runtime))
    ctx = handlers.context(runtime)

    def start(item: EnrichIn, *, clearance: str, force: bool, sources: list[str], username: str) -> dict[str, Any]:
        with ctx.budget.charging(username) as charge:  # given back if no run is made

            def admit(ioc: dict[str, Any]) -> None:
                charge(plan(ctx, [(ioc, sources, force)]).lookups, field="sources")

            ioc = _resolve_ioc(runtime, item, clearance=clearance, admit=admit)
            run_id = uuid.uuid4().hex
            req = _request_of(ioc, run_id=run_id, force=force, sources=sources)
            handlers.request(ctx, req)
        return {"run_id": run_id, "ioc_id": req.ioc_id, "type": req.ioc_type, "value": req.value}

    @router.route("POST", "/api/v1/enrichment/enrich", role=Role.ANALYST, body=EnrichIn)
    def enrich(request: Request, body: EnrichIn) -> Response:
        sources = _check_sources(ctx, body.sources, "sources")
        clearance = tlp_clearance.of(request.principal)
        username = _username(request)
        return Response(start(body, clearance=clearance, force=body.force, sources=sources, username=username), status=202)

    @router.route("GET", "/api/v1/enrichment/runs/{run_id}", role=Role.READER)
    def get_run(request: Request) -> dict[str, Any]:
        run_id = request.path_params["run_id"]
        view = run_view(ctx, run_id)
        _visible_ioc(runtime, request, view.get("ioc_id"), what=f"enrichment run {run_id!r}")
        return view

    @router.route("POST", "/api/v1/enrichment/batch", role=Role.ANALYST, body=BatchIn)
    def batch(request: Request, body: BatchIn) -> Response:
        if len(body.iocs) > MAX_BATCH:
            raise PayloadTooLargeError(f"iocs: at most {MAX_BATCH} per batch; got {len(body.iocs)}")
        if not body.iocs:
            raise ValidationError("iocs: give at least one IoC", field="iocs")
        body = msgspec.structs.replace(body, sources=_check_sources(ctx, body.sources, "sources"))
        items: list[EnrichIn] = []
        for index, raw in enumerate(body.iocs):  # an item's own sources, as POST /enrich checks them
            if isinstance(raw, str):
                items.append(EnrichIn(value=raw))
            else:
                items.append(msgspec.structs.replace(raw, sources=_check_sources(ctx, raw.sources, f"iocs[{index}].sources")))
        batch_id = uuid.uuid4().hex
        clearance = tlp_clearance.of(request.principal)
        planned: list[Plan] = []
        with ctx.budget.charging(_username(request)) as charge:  # given back if no run is made

            def admit(resolved: list[dict[str, Any] | str]) -> None:
                """The batch's cost, charged whole before any run (a refusal rolls back the IoCs it stored)."""
                wanted = [(ioc, item.sources or body.sources, body.force or item.force) for item, ioc in zip(items, resolved, strict=True)]
                planned.append(plan(ctx, [(ioc, sources, force) for ioc, sources, force in wanted if not isinstance(ioc, str)]))
                charge(planned[0].lookups, field="iocs")

            resolved = _resolve_many(runtime, items, clearance=clearance, admit=admit)
            cached = planned[0].cached
            out: list[dict[str, Any]] = []
            fast_rows: list[dict[str, Any]] = []
            requests: list[EnrichRequest] = []
            reliability = ctx.reliability()
            now = runtime.clock.now()
            for index, (item, ioc) in enumerate(zip(items, resolved, strict=True)):
                if isinstance(ioc, str):
                    out.append({"index": index, "value": item.value, "error": ioc})
                    continue
                force = body.force or item.force
                run_id = uuid.uuid4().hex
                base = {"run_id": run_id, "ioc_id": int(ioc["id"]), "type": ioc["type"], "value": ioc["value"]}
                answers = None if force else cached.get(int(ioc["id"]))
                if answers is not None:
                    # Every applicable source has a fresh answer: the run is done without a message.
                    rows = [_cached_row(run_id, int(ioc["id"]), r) for r in answers]
                    fast_rows += rows
                    merged = verdict.merge(rows, reliability=reliability, now=now)
                    out.append({**base, "status": "done", "cached": True, "verdict": merged.verdict, "score": merged.score})
                    continue
                sources = item.sources or body.sources
                requests.append(_request_of(ioc, run_id=run_id, force=force, sources=sources, origin="batch", batch_id=batch_id))
                out.append({**base, "status": "running"})
            with unit_of_work(runtime.engine) as conn:
                repository.insert_results(conn, fast_rows)
                repository.put_batch(conn, batch_id, out)
            handlers.request_many(ctx, requests, batch_id=batch_id)  # every run recorded queued, then published together
        return Response({"batch_id": batch_id, "runs": out}, status=202)

    @router.route("GET", "/api/v1/enrichment/batches/{batch_id}", role=Role.READER)
    def get_batch(request: Request) -> dict[str, Any]:
        allowed = tlp_clearance.allowed(tlp_clearance.of(request.principal))
        with unit_of_work(runtime.engine) as conn:
            doc = repository.get_batch(conn, request.path_params["batch_id"])
            ids = [int(i["ioc_id"]) for i in (doc or {}).get("runs", []) if "ioc_id" in i]
            visible = intel_enrichment.visible_ioc_ids(conn, ids, visible_tlps=allowed)
        if doc is None:
            raise NotFoundError(f"no enrichment batch {request.path_params['batch_id']!r}")
        out = []
        done = 0
        # Every open run's record in batched reads: one document at a time, 1,000 runs took 1,000 round trips a poll.
        pending = [i["run_id"] for i in doc.get("runs", []) if "run_id" in i and not i.get("cached") and int(i["ioc_id"]) in visible]
        records = runs.get_runs(runtime.documents, pending)
        for item in doc.get("runs", []):
            if "ioc_id" in item and int(item["ioc_id"]) not in visible:
                continue  # an IoC above the caller's clearance (or deleted since) is left out
            if "run_id" not in item:
                out.append({**item, "status": "rejected"})
                continue
            if item.get("cached"):
                done += 1
                out.append(item)
                continue
            run = records.get(item["run_id"]) or {}
            status = "done" if run.get("status") == "done" else "running"
            done += status == "done"
            # A run that asked no source says why (a warninglisted value, a type the named sources do not look up).
            unasked = {"skipped": run.get("skipped") or {}} if status == "done" and not run.get("expected") else {}
            if status == "done" and run.get("reason"):  # closed as never dispatched
                unasked["reason"] = run["reason"]
            out.append({**item, "status": status, "verdict": run.get("verdict"), "score": run.get("score"), **unasked})
        accepted = sum(1 for i in out if i["status"] != "rejected")
        return {
            "batch_id": doc["batch_id"],
            "total": len(out),
            "accepted": accepted,
            "done": done,
            "complete": done == accepted,
            "runs": out,
        }

    @router.route("GET", "/api/v1/enrichment/sources", role=Role.READER)
    def sources(request: Request) -> dict[str, Any]:
        now = runtime.clock.now()
        implemented = ctx.reliability()
        out = []
        for source in sorted(ctx.settings.sources.values(), key=lambda s: s.name):
            present = ctx.keys.present(source)
            health = ctx.redis.get(f"enr:health:{source.name}")
            if source.name not in implemented:
                state = "not_implemented"
            elif not present and not source.key_optional:
                state = "no_key"
            elif health:
                state = health.decode()
            else:
                state = "ok"
            used = ctx.quota.used_today(source, ctx.keys.fingerprint(source), now=now)
            out.append(
                {
                    "name": source.name,
                    "enabled": source.enabled,
                    "types": list(source.indicator_types),
                    "auto_enrich": list(source.auto_enrich),
                    "health": state,
                    "key_present": present if source.secret else None,
                    "keyless": source.keyless,
                    "quota": {
                        "per_minute": source.quota.per_minute,
                        "per_hour": source.quota.per_hour,
                        "per_day": source.quota.per_day,
                        "used_today": used,
                        "left_today": None if source.quota.per_day is None else max(0, source.quota.per_day - used),
                    },
                    "ttl_seconds": source.ttl_seconds,
                    "max_tlp": source.max_tlp,
                    "cache": ctx.cache.hit_rate(source.name),
                    "reliability": implemented.get(source.name),
                }
            )
        return {"sources": out}

    @router.route("POST", "/api/v1/enrichment/health", role=Role.ANALYST)
    def health(request: Request) -> dict[str, Any]:
        return source_health(ctx)

    @router.route("GET", "/api/v1/enrichment/dead-letters", role=Role.ADMIN)
    def dead_letters(request: Request) -> dict[str, Any]:
        drain_dead_letters(ctx)
        limit = request.query_int("limit", 100, minimum=1, maximum=500)
        before = request.query_number("before")
        # Newest first, read a page at a time until this one is full: those above the caller's clearance are left
        # out, and a page read once and filtered came back empty behind `limit` of them. At most MAX_LIST_SCAN
        # documents per call, then a short page with `before` to go on from. `before` is exclusive and several
        # dead letters can share one dead_lettered_at (a drain's batch), so a page takes the dead letters of one
        # instant all or none (a full chunk's last instant is read whole): a cut inside one lost the rest of it.
        page: list[dict[str, Any]] = []
        scanned, more = 0, False
        while not more:
            where = [("dead_lettered_at", "<", before)] if before is not None else []
            chunk = runtime.documents.query(runs.DEAD_LETTERS, where=where, order_by="dead_lettered_at", descending=True, limit=limit)
            scanned += len(chunk)
            instants = _by_instant(chunk)
            if len(chunk) == limit:
                last = instants.pop()
                instants.append(_whole_instant(runtime, last[0]["dead_lettered_at"]))
                scanned += len(instants[-1]) - len(last)
            pending = [i for items in instants for i in items if not i.get("replayed_at")]
            visible = {i["id"] for i in _within_clearance(runtime, request, pending)}
            for items in instants:
                shown = [i for i in items if i["id"] in visible]
                if len(page) == limit or (page and len(page) + len(shown) > limit):
                    more = True
                    break
                page += shown
                before = items[0]["dead_lettered_at"]
            if len(chunk) < limit:
                break
            if not more and scanned >= MAX_LIST_SCAN:
                more = True
        return {"dead_letters": page, "more": more, **({"before": before} if more else {})}

    @router.route("POST", "/api/v1/enrichment/dead-letters/replay", role=Role.ADMIN, body=ReplayIn)
    def replay(request: Request, body: ReplayIn) -> dict[str, Any]:
        drain_dead_letters(ctx)
        if body.ids and body.after is not None:
            raise ValidationError("after: pages a replay of all; give it without ids", field="after")
        read_count = 0
        if body.ids:  # each named one read by its id: a page of the collection may not hold it
            named = ((doc_id, runtime.documents.get(runs.DEAD_LETTERS, doc_id)) for doc_id in dict.fromkeys(body.ids))
            candidates = [{**doc, "id": doc_id} for doc_id, doc in named if doc is not None]
        else:
            where = [("dead_lettered_at", ">", body.after)] if body.after is not None else []
            candidates = runtime.documents.query(runs.DEAD_LETTERS, where=where, order_by="dead_lettered_at", limit=MAX_REPLAY)
            read_count = len(candidates)
            if len(candidates) >= MAX_REPLAY:
                # `after` is exclusive: the last instant, which may go on past this read, is left whole to the next
                # call (one that fills the read is taken whole; it lost the rest of it to `after`)
                instants = _by_instant(candidates)
                last = candidates[-1]["dead_lettered_at"]
                candidates = [i for group in instants[:-1] for i in group] if len(instants) > 1 else _whole_instant(runtime, last)
        for item in candidates:
            if item.get("replayed_at"):  # replayed before this change, when they were kept here
                _archive_replayed(runtime, item)
        pending = _within_clearance(runtime, request, [i for i in candidates if not i.get("replayed_at")])
        replayed = []
        for item in pending:
            data = json.loads(item["data"])
            attributes = {"source": item["source"]} if item.get("source") else {}
            topic = TOPIC_TASKS if item.get("source") else "ioc-enrichment-requested"
            ctx.publish(topic, data, replayed="1", **attributes)
            _archive_replayed(runtime, {**item, "replayed_at": time.time()})
            replayed.append(item["id"])
        more = not body.ids and read_count >= MAX_REPLAY
        # `after`: where the next call starts, so that dead letters left here (above the caller's clearance) are
        # read once, not by every call
        return {"replayed": replayed, "more": more, **({"after": candidates[-1]["dead_lettered_at"]} if more else {})}

    return router


def _username(request: Request) -> str:
    assert request.principal is not None  # every enrichment route but the probes authenticates
    return request.principal.username


HEALTH_CHECK_KEY = "enr:health-check"
HEALTH_CHECK_SECONDS = 60
HEALTH_PROBE_SECONDS = 5.0  # one source's probe at most; they run in parallel


def source_health(ctx: handlers.Enrichment) -> dict[str, Any]:
    """Every enabled source's reachability (a HEAD each, no quota), probed at most once every HEALTH_CHECK_SECONDS
    for every caller and instance: the answer is kept in Redis, and one caller probes under a lock while the others
    wait for its answer. Each call made ~9 requests to third parties, whoever called and however often."""
    kept = ctx.redis.get(HEALTH_CHECK_KEY)
    if kept is not None:
        return dict(msgspec.json.decode(kept))
    lock, token = f"{HEALTH_CHECK_KEY}:lock", uuid.uuid4().hex
    hold = HEALTH_PROBE_SECONDS * 2 + 1
    give_up = time.monotonic() + hold
    while not ctx.redis.acquire(lock, token, ttl_seconds=hold):  # another caller probes: wait for its answer
        time.sleep(0.05)
        kept = ctx.redis.get(HEALTH_CHECK_KEY)
        if kept is not None:
            return dict(msgspec.json.decode(kept))
        if time.monotonic() >= give_up:
            raise RateLimitedError("a source health check is running and has not answered yet; retry", retry_after=1)
    try:
        kept = ctx.redis.get(HEALTH_CHECK_KEY)  # the previous holder may have just answered
        if kept is not None:
            return dict(msgspec.json.decode(kept))
        answer = {"sources": _probe_sources(ctx), "checked_at": ctx.now().isoformat(), "max_age_seconds": HEALTH_CHECK_SECONDS}
        ctx.redis.set(HEALTH_CHECK_KEY, msgspec.json.encode(answer), ttl_seconds=HEALTH_CHECK_SECONDS)
        return answer
    finally:
        ctx.redis.release(lock, token)


def _probe_sources(ctx: handlers.Enrichment) -> list[dict[str, Any]]:
    from concurrent.futures import ThreadPoolExecutor

    from threatflow.enrichment.sources import REGISTRY, client

    targets = [s for s in ctx.settings.enabled() if s.name in REGISTRY]

    def check(source: Any) -> dict[str, Any]:
        result = client.health(
            source.name,
            session=ctx.session,
            api_key=None,
            timeout=min(source.timeout_seconds, HEALTH_PROBE_SECONDS),
            base_url=ctx.settings.base_urls.get(source.name),
        )
        return dict(result.to_dict())

    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        return list(pool.map(check, targets))


def _archive_replayed(runtime: Runtime, item: dict[str, Any]) -> None:
    """A replayed dead letter moves to DEAD_LETTERS_REPLAYED: the pending ones alone stay where the list and the
    replay read a page, so replayed ones never fill that page (they stayed, marked, and hid the pending ones)."""
    record = {k: v for k, v in item.items() if k != "id"}
    runtime.documents.set(runs.DEAD_LETTERS_REPLAYED, item["id"], record)
    runtime.documents.delete(runs.DEAD_LETTERS, item["id"])


def _dead_letter_message(item: dict[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(item.get("data") or "{}")
    except (ValueError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def _dead_letter_iocs(data: dict[str, Any]) -> list[int]:
    """The IoCs a dead-lettered message names: a request's or a task's `ioc_id`, an auto-enrichment's `ioc_ids`.
    A number past bigint's range names none (no IoC has such an id): asked for as bigint[], it failed the clearance
    filter's statement, and the list and replay of every dead letter beside it were a 500."""
    many = data.get("ioc_ids")
    named: list[Any] = [data.get("ioc_id"), *(many if isinstance(many, list) else [])]
    out: list[int] = []
    for value in named:
        with contextlib.suppress(ValueError, TypeError, OverflowError):
            number = int(value)
            if limits.INT64_MIN <= number <= limits.INT64_MAX:
                out.append(number)
    return out


def _within_clearance(runtime: Runtime, request: Request, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dead letters naming an IoC above the caller's clearance are left out, and so is one whose message is marked
    above it (a request carries its IoC's TLP, the stricter one for an address carrying a stored IPv4 one): the
    IoC deleted, what makes a task fail for good, its value was listed to everyone. One naming no stored IoC and
    no TLP is kept: a poison task is exactly what an admin must see."""
    clearance = tlp_clearance.of(request.principal)
    allowed = tlp_clearance.allowed(clearance)
    messages = [_dead_letter_message(item) for item in items]
    named = [_dead_letter_iocs(data) for data in messages]
    with unit_of_work(runtime.engine) as conn:
        hidden = intel_enrichment.hidden_ioc_ids(conn, sorted({i for ids in named for i in ids}), visible_tlps=allowed)

    def marked_above(data: dict[str, Any]) -> bool:
        if data.get("tlp") is None:
            return False
        try:
            tlp = tlp_clearance.parse(str(data["tlp"]))
        except ValidationError:
            tlp = tlp_clearance.SYSTEM  # a marking that is no TLP: for those cleared for everything
        return not tlp_clearance.can_read(clearance, tlp)

    return [item for item, data, ids in zip(items, messages, named, strict=True) if not hidden.intersection(ids) and not marked_above(data)]


def drain_dead_letters(ctx: handlers.Enrichment) -> int:
    """Move dead-lettered messages from their hold subscriptions into Firestore, where they are listed and replayed."""
    from threatflow.adapters.pubsub import PubSubPuller

    puller = PubSubPuller(ctx.runtime.settings.project)
    moved = 0
    try:
        subscriptions = [f"{s.dead_letter_topic}-hold" for s in ctx.settings.enabled()] + ["ioc-enrichment-requested-dead-letter-hold"]
        for subscription in subscriptions:
            received = puller.pull(subscription, max_messages=100, timeout=2.0)
            for message in received:
                try:
                    data = json.loads(message["data"])
                except ValueError:
                    data = {"raw": message["data"].decode(errors="replace")}
                attributes = message["attributes"]
                ctx.runtime.documents.set(
                    runs.DEAD_LETTERS,
                    message["message_id"],
                    {
                        "subscription": subscription,
                        "source": attributes.get("source", ""),
                        "error": attributes.get("error", "failed every delivery attempt"),
                        "attempts": int(attributes.get("attempts") or 0),
                        "data": json.dumps(data),
                        "run_id": data.get("run_id"),
                        "value": data.get("value"),
                        "dead_lettered_at": time.time(),
                        "published_at": message["published_at"],
                    },
                )
                moved += 1
            puller.ack(subscription, [m["ack_id"] for m in received])
    finally:
        puller.close()
    return moved


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


# -- served by the iocs function -----------------------------------------------------


def ioc_summary(runtime: Runtime, ioc_id: int) -> dict[str, Any] | None:
    """The merged verdict of the latest closed run with every contributing source and reason.
    The caller (GET /api/v1/iocs/{id}) has checked the IoC against the reader's clearance."""
    with unit_of_work(runtime.engine) as conn:
        return repository.get_verdict(conn, ioc_id)


def register_ioc_routes(router: Router, runtime: Runtime) -> None:
    """GET /api/v1/iocs/{id}/enrichment on the iocs router: 404 for an IoC above the caller's clearance."""

    @router.route("GET", "/api/v1/iocs/{ioc_id:int}/enrichment", role=Role.READER)
    def latest(request: Request) -> dict[str, Any]:
        try:
            ioc_id = int(request.path_params["ioc_id"])
        except ValueError:
            raise ValidationError("id must be an integer", field="id") from None
        allowed = tlp_clearance.allowed(tlp_clearance.of(request.principal))
        with unit_of_work(runtime.engine) as conn:
            if not intel_enrichment.visible_ioc_ids(conn, [ioc_id], visible_tlps=allowed):
                raise NotFoundError(f"no indicator with id {ioc_id}")
            results = repository.latest_results(conn, ioc_id)
            verdict_doc = repository.get_verdict(conn, ioc_id)
        return {"ioc_id": ioc_id, "verdict": verdict_doc, "sources": {r.pop("source"): r for r in results}}


# -- IP reputation for the detect function: GET /api/v1/detect/intel/{ip} --------------
# AbuseIPDB first, then the other IP sources in order, each through the same cache,
# single flight and quota as the pipeline, so a detection burst never spends more
# calls than enrichment would.

IP_SOURCE_ORDER = ("abuseipdb", "greynoise", "internetdb", "virustotal", "otx")


def ip_reputation(
    ip: str, *, enrichment: Enrichment, clearance: str, charge: LookupCharge | None, sources: tuple[str, ...] = IP_SOURCE_ORDER
) -> dict[str, Any]:
    """The first usable answer for an IP; raises RateLimitedError when every source is out of quota, or when
    `charge` (the caller's enrichment budget, spent by each call that leaves the cache) refused a source and no
    later source had the address cached (a cached answer is free: refused at the first source, one a later source
    had cached was a 429).
    An address stored as an IoC keeps its TLP: above `clearance` it is a 404 (as POST /enrich answers), and a
    source whose `max_tlp` is below it is not asked (as enrich-dispatch decides). A record covering the address
    (intel.enrichment.host_tlps: a CIDR IoC containing it, a 6to4 or Teredo IoC carrying it) leaves unasked the
    sources below its TLP too, but makes no 404, and above `clearance` its TLP is not named (dispatch.WITHHELD)."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        raise ValidationError(f"ip: {ip[:64]!r} is not an IPv4 or IPv6 address", field="ip") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        # ip_address takes "2606:4700:4700::1111%eth0": the zone reached the sources and keyed the cache, so
        # every new suffix spent another call of their quota. A zone names a local interface, not a host.
        raise ValidationError(f"ip: {ip[:64]!r} carries an IPv6 zone (%...); give the address alone", field="ip")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d is the IPv4 host (as flows and IoCs store it): asked as an IPv6 literal, the sources
        # answered "unknown" for an address they list as malicious, and it spent quota and a cache entry of its own.
        address = address.ipv4_mapped
    if address.is_multicast:
        raise ValidationError(f"ip: {address} is a multicast group, not a host; intel sources know nothing about it", field="ip")
    embedded = intel_enrichment.carried_ipv4(address)
    if embedded is not None and not embedded.is_global:  # 64:ff9b::a00:1 is 10.0.0.1, and went to third parties
        raise ValidationError(f"ip: {address} carries the non-public IPv4 address {embedded}; intel sources know nothing of it", field="ip")
    if not address.is_global:
        raise ValidationError(f"ip: {address} is not a public address; intel sources know nothing about it", field="ip")
    ioc_type = "ipv4" if address.version == 4 else "ipv6"
    value = str(address)
    with unit_of_work(enrichment.runtime.engine) as conn:
        host = intel_enrichment.host_tlp(conn, ioc_type, value)  # its spellings and the records covering it too
    stored = host.stored.value if host.stored is not None else None
    tlp_clearance.require(clearance, stored, what=f"intel for {value} within your TLP clearance")
    # A record covering the address (a range containing it, a 6to4 or Teredo IoC carrying it) above the reader's
    # clearance: not a 404, the address is the reader's own, but its TLP is not named (dispatch.WITHHELD).
    sent = host.sent.value if host.sent is not None else None
    named = not host.withheld or tlp_clearance.can_read(clearance, sent)
    waits: list[float] = []
    tried: dict[str, str] = {}
    left_for_tlp: set[str] = set()
    over_budget: RateLimitedError | None = None
    for name in sources:
        source = enrichment.settings.sources.get(name)
        if source is None or not source.enabled or ioc_type not in source.indicator_types or not enrichment.keys.usable(source):
            continue
        if sent is not None and not dispatch.tlp_allowed(sent, source.max_tlp):
            tried[name] = f"TLP {sent} is above this source's maximum ({source.max_tlp})" if named else dispatch.WITHHELD
            left_for_tlp.add(name)
            continue
        try:
            outcome = run_task(enrichment, source, Task("detect-intel", 0, ioc_type, value, name), charge=charge)
        except RateLimitedError as refused:  # only `charge` raises it: the next source may have the address cached
            over_budget = over_budget or refused
            tried[name] = "enrichment budget spent"
            continue
        if outcome.defer_seconds is not None:
            waits.append(outcome.defer_seconds)
            tried[name] = outcome.reason or "no quota"
            continue
        result = outcome.result
        assert result is not None
        if result.status in (ResultStatus.OK, ResultStatus.NOT_FOUND):
            return {
                "ip": value,
                "source": name,
                "status": result.status.value,
                "verdict": result.verdict.value,
                "score": result.score,
                "cached": outcome.cached,
                "fetched_at": result.fetched_at.isoformat(),
                "evidence": result.evidence.to_dict(),
                "tried": tried,
            }
        tried[name] = result.status.value
    if over_budget is not None:
        raise over_budget
    if waits:
        raise RateLimitedError(f"every IP source is out of quota ({tried})", retry_after=min(waits))
    if tried and set(tried) == left_for_tlp:
        # Not a failure: every source was left unasked on purpose.
        return {"ip": value, "source": None, "status": "skipped", "verdict": "unknown", "score": None, "cached": False,
                "fetched_at": None, "evidence": {}, "tried": tried}  # fmt: skip
    raise DependencyError(f"no IP intel source answered ({tried or 'none usable'})")


def add_detect_intel_routes(router: Router, runtime: Runtime) -> None:
    """Mount GET /api/v1/detect/intel/{ip} on a router (the detect function's)."""
    enrichment = context(runtime)

    @router.route("GET", "/api/v1/detect/intel/{ip}", role=Role.READER)
    def intel(request: Request) -> dict[str, Any]:
        request.only()  # it reads none: `?refresh=true` was ignored, and the sources asked
        username = _username(request)
        return ip_reputation(
            request.path_params["ip"],
            enrichment=enrichment,
            clearance=tlp_clearance.of(request.principal),
            charge=LookupCharge(budget=enrichment.budget, username=username, field="ip"),
        )
