"""Warninglist routes of the iocs function: which lists are loaded, and which flag given values.

    GET  /api/v1/iocs/warninglists         the loaded lists (key, name, description, type, entries, version)
    POST /api/v1/iocs/warninglists/check   {"values": [...]} -> per value its normalised form and list keys

The iocs router calls `register(router, runtime)`; the lists come from
`runtime.warninglist_index()`, the same per-instance snapshot the batch upsert and imports use.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from threatflow.auth.model import Role
from threatflow.iocs import warninglists
from threatflow.iocs.normalise import normalise
from threatflow.iocs.types import IocType
from threatflow.platform.errors import DependencyError, ValidationError
from threatflow.platform.web import Request, Router
from threatflow.runtime import Runtime

MAX_CHECK_VALUES = 1000


class CheckItem(msgspec.Struct, forbid_unknown_fields=True):
    value: Annotated[str, msgspec.Meta(max_length=8192)]
    type: IocType | None = None


class CheckRequest(msgspec.Struct, forbid_unknown_fields=True):
    # A bare string is normalised with its type inferred; {"value", "type"} pins the type.
    values: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=8192)] | CheckItem], msgspec.Meta(min_length=1, max_length=MAX_CHECK_VALUES)
    ]


def register(router: Router, runtime: Runtime) -> None:
    @router.route("GET", "/api/v1/iocs/warninglists", role=Role.READER)
    def list_warninglists(request: Request) -> dict[str, Any]:
        index = runtime.warninglist_index()
        if index is None:
            return {"enabled": False, "reason": runtime.warninglists_reason(), "lists": []}
        return {
            "enabled": True,
            "origin": index.origin,
            "generated_at": index.generated_at.isoformat(),
            "loaded_at": index.loaded_at.isoformat(),
            "lists": index.describe(),
        }

    @router.route("POST", "/api/v1/iocs/warninglists/check", role=Role.READER, body=CheckRequest)
    def check(request: Request, body: CheckRequest) -> dict[str, Any]:
        index = runtime.warninglist_index()
        if index is None:
            # Answering [] would read as "not on any list"; say plainly that nothing was checked.
            raise DependencyError(f"warninglists are not loaded: {runtime.warninglists_reason()}")
        results = [check_value(item, index=index) for item in body.values]
        keys = sorted({key for result in results for key in result["warninglists"]})
        return {"results": results, "lists": {key: index.lists[key].name for key in keys}}


def check_value(item: str | CheckItem, *, index: warninglists.WarninglistIndex) -> dict[str, Any]:
    value, wanted = (item, None) if isinstance(item, str) else (item.value, item.type)
    try:
        indicator = normalise(value, type=wanted)
    except ValidationError as exc:
        return {
            "value": value,
            "type": wanted.value if wanted else None,
            "normalised": None,
            "warninglists": [],
            "reason": exc.message,
        }
    return {
        "value": value,
        "type": indicator.type.value,
        "normalised": indicator.value,
        "warninglists": index.match(indicator.type.value, indicator.value),
    }
