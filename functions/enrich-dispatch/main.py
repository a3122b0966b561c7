"""enrich-dispatch: picks the sources that apply to a requested IoC and publishes one task per source."""

import functools

import functions_framework

from threatflow.enrichment.handlers import handle_request
from threatflow.platform import events
from threatflow.runtime import Runtime

runtime = Runtime.from_env()
events.protect_push_endpoint(verifier=lambda: runtime.push_verifier, function="enrich-dispatch")


@functions_framework.cloud_event
def enrich_dispatch(cloud_event):  # type: ignore[no-untyped-def]
    events.handle(
        cloud_event,
        functools.partial(handle_request, runtime=runtime),
        function="enrich-dispatch",
        max_age_seconds=runtime.settings.max_event_age_seconds,
    )
