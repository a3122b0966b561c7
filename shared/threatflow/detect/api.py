"""Routes of the detect function (/api/v1/detect): score flows with the promoted model.

The model is the runtime's "flow-model" snapshot (`model_snapshot`, `flows.model.serving_snapshot`): loaded lazily, once per
instance, from the models bucket; the serving pointer is re-read every DETECT_MODEL_REFRESH_SECONDS
so a promotion is picked up without a redeploy. No model promoted: a 503 naming the training command.
Input is strict: every missing feature, unknown field and non-numeric value is listed with
the flow's index in one 400; nothing is filled in.
"""

from __future__ import annotations

from typing import Any

from threatflow.auth.api import authenticator
from threatflow.auth.model import Role
from threatflow.enrichment.api import add_detect_intel_routes
from threatflow.flows.features import FEATURE_COLUMNS, Blanks, validated_batch
from threatflow.flows.model import ServingModel, serving_snapshot
from threatflow.platform.errors import ValidationError
from threatflow.platform.snapshots import Snapshot
from threatflow.platform.web import Request, Router, decode_json
from threatflow.runtime import Runtime

MAX_BATCH = 10_000
MAX_EXPLAIN_BATCH = 1_000
MAX_TOP = len(FEATURE_COLUMNS)  # features listed per flow with explain=true  # explanations cost ~41 extra scorings per flow


def _flows_field(body: Any, key: str) -> Any:
    if not isinstance(body, dict):
        raise ValidationError("request body must be a JSON object", field="body")
    unknown = sorted(set(body) - {key})
    if unknown:
        raise ValidationError(f"unknown field(s) {unknown}; the body is {{{key!r}: ...}}", field=unknown[0])
    if key not in body:
        raise ValidationError(f"{key} is required", field=key)
    return body[key]


def model_snapshot(runtime: Runtime) -> Snapshot[ServingModel]:
    """The promoted flow model of this instance (one snapshot, shared by every route that scores)."""
    return serving_snapshot(
        runtime.snapshots,
        blobs=lambda: runtime.blobs,
        bucket=runtime.settings.bucket_models,
        refresh_seconds=runtime.settings.detect_model_refresh_seconds,
    )


def build_router(runtime: Runtime) -> Router:
    router = Router("detect", runtime=runtime, authenticator=authenticator(runtime))

    def explain_wanted(request: Request) -> bool:
        value = (request.query.get("explain") or "false").lower()
        if value not in ("true", "false", "1", "0"):
            raise ValidationError("query parameter 'explain' must be true or false", field="explain")
        return value in ("true", "1")

    def score(request: Request, flows: list[Any]) -> list[dict[str, Any]]:
        request.only("explain", "top")
        explain = explain_wanted(request)
        if explain and len(flows) > MAX_EXPLAIN_BATCH:
            raise ValidationError(f"explain=true takes at most {MAX_EXPLAIN_BATCH} flows per request", field="explain")
        top = request.query_int("top", 5, minimum=1, maximum=MAX_TOP)
        # By column, no dict per flow; the per-field checker only runs to list the errors.
        batch = validated_batch(flows, blanks=Blanks.REFUSED)  # strict: a blank feature is a 400, as any missing one
        model = model_snapshot(runtime).get()
        return model.results(batch.matrix(vocabulary=model.vocabulary), explain=explain, top=top)

    @router.route("POST", "/api/v1/detect", role=Role.READER)
    def detect_one(request: Request) -> dict[str, Any]:
        flow = _flows_field(_decode(request), "flow")
        if not isinstance(flow, dict):
            raise ValidationError("flow must be a JSON object", field="flow")
        return {"result": score(request, [flow])[0]}

    @router.route("POST", "/api/v1/detect/batch", role=Role.READER)
    def detect_batch(request: Request) -> dict[str, Any]:
        flows = _flows_field(_decode(request), "flows")
        if not isinstance(flows, list):
            raise ValidationError("flows must be a JSON array", field="flows")
        if not flows:
            raise ValidationError("flows is empty", field="flows")
        if len(flows) > MAX_BATCH:
            raise ValidationError(f"at most {MAX_BATCH} flows per request; got {len(flows)}", field="flows")
        return {"results": score(request, flows)}

    @router.route("GET", "/api/v1/detect/model", role=Role.READER)
    def model_info(request: Request) -> dict[str, Any]:
        request.only()  # it reads none
        model = model_snapshot(runtime).get()
        info = model.info()
        info["load_seconds"] = model.load_seconds
        return info

    # GET /api/v1/detect/intel/{ip}: the IP's reputation through the enrichment cache and sources.
    add_detect_intel_routes(router, runtime)
    return router


def _decode(request: Request) -> Any:
    if not request.body:
        raise ValidationError("request body is required (JSON)", field="body")
    return decode_json(request.body)
