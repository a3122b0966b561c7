"""The compiled index: one lookup plan per IoC type, so `match` costs a few dict lookups whatever the list count."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from threatflow.iocs.warninglists.compiling import Plan, compile_plans, host_type, url_host
from threatflow.iocs.warninglists.lists import DOMAIN, EMAIL, URL, ListProblem, Warninglist

SNAPSHOT_FORMAT = "threatflow.warninglists/1"

Matcher = Callable[[str, str], list[str]]


class WarninglistIndex:
    """All lists compiled for lookups; immutable once built (a refresh builds a new one)."""

    def __init__(
        self,
        lists: Iterable[Warninglist],
        *,
        problems: Sequence[ListProblem] = (),
        source: str = "",
        generated_at: datetime | None = None,
        origin: str = "",
        loaded_at: datetime | None = None,
        accelerated: bool = True,
    ) -> None:
        self.lists: dict[str, Warninglist] = {wl.key: wl for wl in sorted(lists, key=lambda wl: wl.key)}
        self.problems: tuple[ListProblem, ...] = tuple(problems)
        self.source = source  # where the lists came from (WARNINGLISTS_SOURCE at sync time)
        self.origin = origin or source  # where this instance loaded them from (the snapshot or the source)
        self.generated_at = generated_at or datetime.now(UTC)
        self.loaded_at = loaded_at or datetime.now(UTC)
        self._plans: dict[str, Plan] = compile_plans(list(self.lists.values()), accelerated=accelerated)

    # -- lookups --------------------------------------------------------------------

    def match(self, ioc_type: str, value: str) -> list[str]:
        """Keys of the lists flagging this normalised value, sorted; [] for an unknown type."""
        plan = self._plans.get(ioc_type)
        if plan is None or not value:
            return []
        hits: list[str] = []
        if ioc_type == EMAIL:
            value = value.lower()
            plan.run(value, hits)
            domain = value.rpartition("@")[2]
            if domain:
                self._plans[DOMAIN].run(domain, hits)
        elif ioc_type == URL:
            plan.run(value, hits)
            host = url_host(value)
            if host:
                self._plans[host_type(host)].run(host, hits)
        else:
            plan.run(value, hits)
        if not hits:
            return hits
        return sorted(set(hits)) if len(hits) > 1 else hits

    def describe(self) -> list[dict[str, Any]]:
        """The loaded lists, for the API: no entries, just what they are."""
        loaded_at = self.loaded_at.isoformat()
        return [
            {
                "key": wl.key,
                "name": wl.name,
                "description": wl.description,
                "type": wl.type.value,
                "entries": len(wl.entries),
                "version": wl.version,
                "matching_attributes": list(wl.matching_attributes),
                "ioc_types": sorted(wl.ioc_types),
                "loaded_at": loaded_at,
            }
            for wl in self.lists.values()
        ]

    def snapshot(self) -> bytes:
        """One compact JSON blob of every list, in key order (deterministic for equal lists)."""
        doc = {
            "format": SNAPSHOT_FORMAT,
            "source": self.source,
            "generated_at": self.generated_at.isoformat(),
            "lists": [wl.to_json() for wl in self.lists.values()],
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
