"""maintenance: runs the job named by a maintenance-topic message."""

import functools

import functions_framework

from threatflow.jobs.handlers import handle_maintenance
from threatflow.platform import events
from threatflow.runtime import Runtime

runtime = Runtime.from_env()
events.protect_push_endpoint(verifier=lambda: runtime.push_verifier, function="maintenance")


@functions_framework.cloud_event
def maintenance(cloud_event):  # type: ignore[no-untyped-def]
    events.handle(
        cloud_event,
        functools.partial(handle_maintenance, runtime=runtime),
        function="maintenance",
        max_age_seconds=runtime.settings.max_event_age_seconds,
    )
