"""Words every domain shares: the TLP marking and the severity bands of a score.

They sit in the platform so that IoCs, threats and the domains to come use one
definition without importing each other (`threatflow.iocs.model` re-exports them).
"""

from __future__ import annotations

from enum import StrEnum


class Tlp(StrEnum):
    CLEAR = "clear"
    GREEN = "green"
    AMBER = "amber"
    AMBER_STRICT = "amber+strict"
    RED = "red"

    @property
    def rank(self) -> int:
        return _TLP_ORDER.index(self)

    @classmethod
    def parse(cls, text: str) -> Tlp:
        """Accepts `TLP:AMBER`, `amber`, and TLP 1.0's `white` (= clear)."""
        value = text.strip().lower().removeprefix("tlp:")
        return cls("clear" if value == "white" else value)

    def at_most(self) -> list[str]:
        return [t.value for t in _TLP_ORDER[: self.rank + 1]]


_TLP_ORDER = [Tlp.CLEAR, Tlp.GREEN, Tlp.AMBER, Tlp.AMBER_STRICT, Tlp.RED]


class Severity(StrEnum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @classmethod
    def from_score(cls, score: int) -> Severity:
        for threshold, severity in _SEVERITY_BANDS:
            if score >= threshold:
                return severity
        return cls.INFO


_SEVERITY_BANDS = ((90, Severity.CRITICAL), (70, Severity.HIGH), (40, Severity.MEDIUM), (15, Severity.LOW))
