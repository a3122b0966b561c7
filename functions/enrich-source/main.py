"""enrich-<source>: one code path deployed once per intel source (ENRICH_SOURCE names it in the cloud)."""

import functools
import os

import functions_framework

from threatflow.enrichment.handlers import handle_task
from threatflow.platform import events
from threatflow.runtime import Runtime

runtime = Runtime.from_env()
# Locally one instance serves every source's push path; the subscription filter picks the source.
SOURCE = os.environ.get("ENRICH_SOURCE") or None
events.protect_push_endpoint(verifier=lambda: runtime.push_verifier, function=f"enrich-{SOURCE or 'source'}")


@functions_framework.cloud_event
def enrich_source(cloud_event):  # type: ignore[no-untyped-def]
    events.handle(
        cloud_event,
        functools.partial(handle_task, runtime=runtime, only_source=SOURCE),
        function=f"enrich-{SOURCE or 'source'}",
        max_age_seconds=runtime.settings.max_event_age_seconds,
    )
