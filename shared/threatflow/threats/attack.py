"""ATT&CK Enterprise techniques, for validating and naming TTP ids.

The data is never bundled with the code: ATTACK_DATA_PATH names a synced file,
either a local path or `gs://bucket/object`. Two formats are read: the compact
technique list (`{"techniques": [{"external_id", "name", "tactics",
"is_subtechnique", "revoked", "deprecated", "url", ...}]}`) and a STIX bundle
of `attack-pattern` objects (enterprise-attack.json).

Validation rules:
- ids are normalised (trimmed, upper-cased) and must look like T1234 or T1234.001;
- unknown ids and revoked ids are refused, every one named in one error (a
  revoked technique has been replaced, so storing it would hide the new id);
- deprecated ids are accepted (ATT&CK keeps them without a replacement and they
  still describe what a threat did) and reported by `deprecated()`, so callers
  can warn.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threatflow.platform.errors import ConfigError, ValidationError

ENV_VAR = "ATTACK_DATA_PATH"
_ID = re.compile(r"^T\d{4}(?:\.\d{3})?$")


@dataclass(frozen=True, slots=True)
class Technique:
    id: str
    name: str
    tactics: tuple[str, ...]
    is_subtechnique: bool
    revoked: bool
    deprecated: bool
    url: str | None = None
    stix_id: str | None = None

    @property
    def parent_id(self) -> str | None:
        return self.id.split(".", 1)[0] if self.is_subtechnique or "." in self.id else None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "tactics": list(self.tactics),
            "is_subtechnique": self.is_subtechnique,
            "deprecated": self.deprecated,
            "revoked": self.revoked,
            "url": self.url,
        }


def normalise_id(technique_id: str) -> str:
    return technique_id.strip().upper()


def check_id_format(technique_id: str) -> str:
    """The normalised id, or a ValidationError naming it (no catalog needed)."""
    tid = normalise_id(technique_id)
    if not _ID.match(tid):
        raise ValidationError(f"{technique_id!r}: not an ATT&CK technique id (expected T1234 or T1234.001)", field="ttps")
    return tid


class AttackCatalog:
    def __init__(self, techniques: Iterable[Technique], *, source: str) -> None:
        self._by_id: dict[str, Technique] = {}
        for technique in techniques:
            # A bundle can hold an old revoked object and a live one with the same
            # id; the live one is the truth.
            current = self._by_id.get(technique.id)
            if current is None or (current.revoked and not technique.revoked):
                self._by_id[technique.id] = technique
        self._children: dict[str, list[str]] = {}
        for tid in sorted(self._by_id):
            if "." in tid:
                self._children.setdefault(tid.split(".", 1)[0], []).append(tid)
        self.source = source

    def __len__(self) -> int:
        return len(self._by_id)

    @classmethod
    def load(cls, path: Path) -> AttackCatalog:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{ENV_VAR}={str(path)!r}: cannot read the ATT&CK data: {exc.strerror or exc}") from None
        return cls.from_bytes(data, source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str) -> AttackCatalog:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{ENV_VAR}={source!r}: the ATT&CK data is not valid JSON: {exc}") from None
        techniques = _parse(doc, source)
        if not techniques:
            raise ConfigError(f"{ENV_VAR}={source!r}: the ATT&CK data holds no technique")
        return cls(techniques, source=source)

    def get(self, technique_id: str) -> Technique | None:
        return self._by_id.get(normalise_id(technique_id))

    def validate(self, ids: Iterable[str]) -> list[str]:
        """Normalised ids, in order, once each; one ValidationError(field="ttps") names
        every malformed, unknown or revoked id (a revoked one with its name)."""
        out: list[str] = []
        problems: list[str] = []
        for raw in ids:
            tid = normalise_id(raw)
            technique = self._by_id.get(tid)
            if not _ID.match(tid):
                problems.append(f"{raw!r}: not an ATT&CK technique id (expected T1234 or T1234.001)")
            elif technique is None:
                problems.append(f"{tid}: unknown ATT&CK technique")
            elif technique.revoked:
                problems.append(f"{tid}: revoked ATT&CK technique ({technique.name})")
            elif tid not in out:
                out.append(tid)
        if problems:
            raise ValidationError("; ".join(problems), field="ttps")
        return out

    def deprecated(self, ids: Iterable[str]) -> list[Technique]:
        """The deprecated techniques among ids (accepted, but worth a warning)."""
        found = (self.get(i) for i in ids)
        return [t for t in found if t is not None and t.deprecated]

    def subtechniques(self, technique_id: str) -> list[str]:
        """Sub-technique ids of a parent technique (T1059 -> T1059.001, ...)."""
        return list(self._children.get(normalise_id(technique_id), []))

    def name(self, technique_id: str) -> str | None:
        technique = self.get(technique_id)
        return technique.name if technique else None

    def describe(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Each id with its name, tactics and flags; an id the catalog lacks keeps name None."""
        out = []
        for tid in ids:
            technique = self.get(tid)
            out.append(technique.to_json() if technique else {"id": tid, "name": None, "unknown": True})
        return out


def _parse(doc: Any, source: str) -> list[Technique]:
    if isinstance(doc, dict) and isinstance(doc.get("techniques"), list):
        out = []
        for t in doc["techniques"]:
            if not isinstance(t, dict) or not t.get("external_id") or not t.get("name"):
                continue
            tid = normalise_id(str(t["external_id"]))
            out.append(
                Technique(
                    id=tid,
                    name=str(t["name"]),
                    tactics=tuple(str(x) for x in t.get("tactics") or ()),
                    is_subtechnique=bool(t.get("is_subtechnique", "." in tid)),
                    revoked=bool(t.get("revoked")),
                    deprecated=bool(t.get("deprecated")),
                    url=t.get("url"),
                    stix_id=t.get("stix_id"),
                )
            )
        return out
    if isinstance(doc, dict) and doc.get("type") == "bundle" and isinstance(doc.get("objects"), list):
        out = []
        for obj in doc["objects"]:
            if not isinstance(obj, dict) or obj.get("type") != "attack-pattern":
                continue
            ref = next((r for r in obj.get("external_references", []) if r.get("source_name") == "mitre-attack"), None)
            if not ref or not ref.get("external_id"):
                continue
            tid = normalise_id(str(ref["external_id"]))
            out.append(
                Technique(
                    id=tid,
                    name=str(obj.get("name", "")),
                    tactics=tuple(str(p.get("phase_name", "")) for p in obj.get("kill_chain_phases", [])),
                    is_subtechnique=bool(obj.get("x_mitre_is_subtechnique", "." in tid)),
                    revoked=bool(obj.get("revoked")),
                    deprecated=bool(obj.get("x_mitre_deprecated")),
                    url=ref.get("url"),
                    stix_id=obj.get("id"),
                )
            )
        return out
    raise ConfigError(f"{ENV_VAR}={source!r}: expected {{'techniques': [...]}} or a STIX bundle of attack-pattern objects")


# Per instance: the parsed catalog by location; a local file is re-read when it changes.
_cache: dict[str, tuple[float | None, AttackCatalog]] = {}
_lock = threading.Lock()


def catalog_from_env(environ: Mapping[str, str] | None = None, *, blobs: Callable[[], Any] | None = None) -> AttackCatalog:
    """The catalog named by ATTACK_DATA_PATH (a path, or gs://bucket/object read with
    the blob store `blobs()` returns), loaded once per instance.

    Raises ConfigError naming ATTACK_DATA_PATH when it is unset or unreadable.
    """
    env = os.environ if environ is None else environ
    location = (env.get(ENV_VAR) or "").strip()
    if not location:
        raise ConfigError(f"{ENV_VAR} is not set; TTPs are validated against the ATT&CK techniques file it names")
    with _lock:
        if location.startswith("gs://"):
            cached = _cache.get(location)
            if cached is not None:
                return cached[1]
            bucket, _, name = location.removeprefix("gs://").partition("/")
            if not bucket or not name:
                raise ConfigError(f"{ENV_VAR}={location!r}: expected gs://bucket/object")
            if blobs is None:
                raise ConfigError(f"{ENV_VAR}={location!r} is in a bucket, but no blob store was given")
            catalog = AttackCatalog.from_bytes(blobs().get(bucket, name), source=location)
            _cache[location] = (None, catalog)
            return catalog
        try:
            mtime: float | None = Path(location).stat().st_mtime
        except OSError as exc:
            raise ConfigError(f"{ENV_VAR}={location!r}: cannot read the ATT&CK data: {exc.strerror or exc}") from None
        cached = _cache.get(location)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        catalog = AttackCatalog.load(Path(location))
        _cache[location] = (mtime, catalog)
        return catalog
