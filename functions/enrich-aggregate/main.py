"""enrich-aggregate: merges source results into the IoC's verdict, closes runs, correlates threats."""

import functools

import functions_framework

from threatflow.enrichment.handlers import handle_completed
from threatflow.platform import events
from threatflow.runtime import Runtime

runtime = Runtime.from_env()
events.protect_push_endpoint(verifier=lambda: runtime.push_verifier, function="enrich-aggregate")


@functions_framework.cloud_event
def enrich_aggregate(cloud_event):  # type: ignore[no-untyped-def]
    events.handle(
        cloud_event,
        functools.partial(handle_completed, runtime=runtime),
        function="enrich-aggregate",
        max_age_seconds=runtime.settings.max_event_age_seconds,
    )
