"""Event handlers of the intel package: the ioc-import function's one call."""

from __future__ import annotations

from typing import Any

from threatflow.intel.importer import run_job
from threatflow.platform.errors import ValidationError
from threatflow.platform.events import Message
from threatflow.runtime import Runtime


def handle_import(message: Message, *, runtime: Runtime) -> dict[str, Any]:
    """The ioc-import function's one service call: a decoded `ioc-import` message to a job run."""
    job_id = message.attributes.get("job_id") or message.data.get("job_id")
    if not job_id:
        raise ValidationError("ioc-import message names no job (attribute 'job_id')", field="job_id")

    return run_job(
        str(job_id),
        engine=runtime.engine,
        documents=runtime.documents,
        blobs=runtime.blobs,
        bucket=runtime.settings.bucket_uploads,
        clock=runtime.clock,
        catalog=runtime.attack().get,
        warninglists=runtime.warninglist_matcher,
        policies=runtime.decay_policies().get,
    )
