"""One explainable verdict from many sources.

Each usable source result (status ok, verdict not unknown) gets a weight

    weight = reliability(source) x confidence x recency

    reliability  the source declaration's 0..1 trust (sources/<name>.py)
    confidence   the source's own score / 100 when it gives one, else
                 0.8 for malicious or harmless, 0.5 for suspicious
    recency      0.5 ** (age_days / 30), age of the evidence's last_seen
                 (else of the lookup): a 30-day-old sighting counts half

and a position: its score when it gives one, else malicious 100, suspicious 60,
harmless 0. The IoC's score is the weighted mean of the positions; its verdict
is malicious at 70 or more, suspicious at 40 or more, harmless below 40 when at
least one source said harmless or something, unknown when no source said
anything usable. Every contribution is listed as a reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

DEFAULT_CONFIDENCE = {"malicious": 0.8, "harmless": 0.8, "suspicious": 0.5}
DEFAULT_POSITION = {"malicious": 100, "suspicious": 60, "harmless": 0}
HALF_LIFE_DAYS = 30.0
MALICIOUS_AT = 70
SUSPICIOUS_AT = 40


@dataclass(frozen=True)
class Merged:
    verdict: str
    score: int | None
    reasons: list[dict[str, Any]]


def _when(result: Mapping[str, Any]) -> datetime | None:
    evidence = result.get("evidence") or {}
    for value in (evidence.get("last_seen"), result.get("fetched_at")):
        if value:
            return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return None


def _significant(x: float) -> float:
    """4 significant digits: evidence seen years ago weighs 1e-10, and rounded to decimal places every weight
    showed 0.0 under the score they make."""
    return float(f"{x:.4g}")


def merge(results: Sequence[Mapping[str, Any]], *, reliability: Mapping[str, float], now: datetime) -> Merged:
    weighted: list[tuple[float, float, Mapping[str, Any]]] = []
    reasons: list[dict[str, Any]] = []
    for result in sorted(results, key=lambda r: str(r["source"])):
        verdict = str(result.get("verdict") or "unknown")
        source = str(result["source"])
        if result.get("status") != "ok" or verdict not in DEFAULT_POSITION:
            reasons.append(
                {"source": source, "status": result.get("status"), "verdict": verdict, "weight": 0.0, "reason": "no usable verdict"}
            )
            continue
        score = result.get("score")
        confidence = score / 100 if isinstance(score, int) and verdict != "harmless" else DEFAULT_CONFIDENCE[verdict]
        if isinstance(score, int) and verdict == "harmless":
            confidence = 1 - score / 100
        confidence = max(confidence, 0.05)
        when = _when(result)
        age_days = max(0.0, (now - when).total_seconds() / 86400) if when else 0.0
        recency = 0.5 ** (age_days / HALF_LIFE_DAYS)
        rel = float(reliability.get(source, 0.5))
        weight = rel * confidence * recency
        position = float(score) if isinstance(score, int) else float(DEFAULT_POSITION[verdict])
        weighted.append((weight, position, result))
        families = list((result.get("evidence") or {}).get("malware_families") or [])
        text = f"{source} says {verdict}" + (f" (score {score})" if score is not None else "")
        if families:
            text += f"; families: {', '.join(families[:5])}"
        reasons.append(
            {
                "source": source,
                "status": "ok",
                "verdict": verdict,
                "score": score,
                "weight": _significant(weight),
                "reliability": rel,
                "confidence": round(confidence, 3),
                "recency": _significant(recency),
                "reason": text,
            }
        )
    total = sum(w for w, _, _ in weighted)
    if total <= 0:
        return Merged("unknown", None, reasons)
    score = round(sum(w * p for w, p, _ in weighted) / total)
    if score >= MALICIOUS_AT:
        verdict = "malicious"
    elif score >= SUSPICIOUS_AT:
        verdict = "suspicious"
    else:
        verdict = "harmless"
    return Merged(verdict, score, reasons)


def evidence_rows(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(source, kind, value) rows for threat correlation: families, tags, ATT&CK ids."""
    rows: list[tuple[str, str, str]] = []
    for result in results:
        evidence = result.get("evidence") or {}
        for kind, key in (("malware_family", "malware_families"), ("tag", "tags"), ("attack_id", "attack_ids")):
            rows += [(str(result["source"]), kind, str(v)) for v in evidence.get(key) or [] if v]
    return rows
