"""The maintenance function's one service call: a decoded message to a job run."""

from __future__ import annotations

from typing import Any

from threatflow.jobs import runs
from threatflow.platform.errors import ValidationError
from threatflow.platform.events import Message
from threatflow.runtime import Runtime


def handle_maintenance(message: Message, *, runtime: Runtime) -> dict[str, Any]:
    job = message.attributes.get("job") or message.data.get("job")
    if not job:
        raise ValidationError("maintenance message names no job (attribute 'job')", field="job")
    params = message.data.get("params") or {}
    if not isinstance(params, dict):
        raise ValidationError("maintenance message params must be an object", field="params")
    return runs.execute(
        job=str(job),
        run_id=str(message.attributes.get("run_id") or message.message_id),
        params=params,
        engine=runtime.engine,
        documents=runtime.documents,
        blobs=runtime.blobs,
        clock=runtime.clock,
        settings=runtime.settings,
        publisher=lambda: runtime.publisher,
    )
