"""Cloud Scheduler, locally: fires the manifest's schedules on their cron times.

A schedule publishes to its topic with its attributes (as a Pub/Sub target
does) or POSTs to its function (as an HTTP target does). `fire` is also what
`threatflow jobs run NAME` calls to run one now.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from threatflow.platform import events
from threatflow.platform.manifest import Manifest, Schedule

log = logging.getLogger("threatflow.scheduler")


@dataclass(frozen=True)
class Fired:
    """What firing a schedule gave: the Pub/Sub message id (or the HTTP status of a function call), and for a
    topic schedule the run id its record is kept under (GET /api/v1/admin/runs/{run_id})."""

    ident: str
    run_id: str | None = None


def fire(schedule: Schedule, *, publisher: Any, gateway_url: str, manual: bool = False) -> Fired:
    """Run a schedule once.

    `manual` (`threatflow jobs run NAME`): an operator asked for this run, so the body's
    `params.enabled` (which switches the schedule's ticks off, e.g. retrain-flows ships with
    false) is left out; the schedule's other params still apply."""
    from threatflow.devstack.gateway import SCHEDULE_PREFIX

    body = manual_body(schedule.body) if manual else schedule.body
    if schedule.topic:
        run_id = uuid.uuid4().hex
        attributes = {"run_id": run_id, **schedule.attributes}
        return Fired(str(publisher.publish(schedule.topic, events.encode(body), attributes)), run_id)
    request = urllib.request.Request(  # noqa: S310 - the gateway URL is ours, http on loopback
        f"{gateway_url}{SCHEDULE_PREFIX}{schedule.function}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-CloudScheduler-JobName": schedule.name},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - the gateway URL is ours, http on loopback
        return Fired(str(response.status))


def manual_body(body: dict[str, Any]) -> dict[str, Any]:
    """A schedule's body for a run an operator asked for: without `params.enabled`, the switch of its ticks."""
    params = body.get("params")
    if not isinstance(params, dict) or "enabled" not in params:
        return body
    return {**body, "params": {k: v for k, v in params.items() if k != "enabled"}}


class LocalScheduler:
    def __init__(self, manifest: Manifest, *, publisher: Any, gateway_url: str) -> None:
        from croniter import croniter

        self._publisher = publisher
        self._gateway_url = gateway_url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="local-scheduler", daemon=True)
        now = datetime.now(UTC)
        self._iters = {s.name: (s, croniter(s.schedule, now.astimezone(ZoneInfo(s.time_zone)))) for s in manifest.schedules.values()}
        self._next = {name: it.get_next(datetime) for name, (_, it) in self._iters.items()}

    def next_runs(self) -> dict[str, datetime]:
        return dict(self._next)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            now = datetime.now(UTC)
            for name, (schedule, it) in self._iters.items():
                if self._next[name] <= now:
                    self._next[name] = it.get_next(datetime)
                    try:
                        fired = fire(schedule, publisher=self._publisher, gateway_url=self._gateway_url)
                        log.info(f"schedule {name} fired", extra={"fields": {"schedule": name, "id": fired.ident, "run_id": fired.run_id}})
                    except Exception as exc:  # one failing job must not stop the others
                        log.error(f"schedule {name} failed: {exc}", extra={"fields": {"schedule": name}})
