"""ioc-import: runs a queued large IoC import (job id in the message) in one transaction."""

import functools

import functions_framework

from threatflow.intel.handlers import handle_import
from threatflow.platform import events
from threatflow.runtime import Runtime

runtime = Runtime.from_env()
events.protect_push_endpoint(verifier=lambda: runtime.push_verifier, function="ioc-import")


@functions_framework.cloud_event
def ioc_import(cloud_event):  # type: ignore[no-untyped-def]
    events.handle(
        cloud_event,
        functools.partial(handle_import, runtime=runtime),
        function="ioc-import",
        max_age_seconds=runtime.settings.max_event_age_seconds,
    )
