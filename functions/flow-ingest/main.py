"""flow-ingest: streams an uploaded UNSW CSV (job id in the message) into scored flow events."""

import functions_framework

from threatflow.flows.handlers import build_handler
from threatflow.platform import events
from threatflow.runtime import Runtime

runtime = Runtime.from_env()
events.protect_push_endpoint(verifier=lambda: runtime.push_verifier, function="flow-ingest")
handler = build_handler(runtime)


@functions_framework.cloud_event
def flow_ingest(cloud_event):  # type: ignore[no-untyped-def]
    events.handle(cloud_event, handler, function="flow-ingest", max_age_seconds=runtime.settings.max_event_age_seconds)
