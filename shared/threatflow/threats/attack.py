"""ATT&CK Enterprise techniques, for validating and naming TTP ids.

The data is never bundled with the code. The `sync-attack` maintenance job
fetches ATTACK_SOURCE (MITRE's enterprise-attack.json by default: an https URL,
a path or a gs:// object), validates it and writes a compact snapshot to
gs://<BUCKET_MODELS>/attack/techniques.json, which every function reads and
re-reads every ATTACK_REFRESH_SECONDS (the runtime's "attack" snapshot, `catalog_loader`).
ATTACK_DATA_PATH (a path or gs:// object, read by Settings) overrides the snapshot,
e.g. to pin a release. Two formats are read: the compact technique list
(`{"techniques": [{"external_id", "name", "tactics", "is_subtechnique", "revoked",
"deprecated", "url", ...}]}`) and a STIX bundle
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

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from threatflow.platform.errors import ConfigError, DependencyError, NotFoundError, ValidationError
from threatflow.platform.snapshots import Load, Loaded

if TYPE_CHECKING:
    from threatflow.platform.ports import BlobStore

ENV_VAR = "ATTACK_DATA_PATH"
SNAPSHOT_NAME = "attack/techniques.json"
SNAPSHOT_FORMAT = 1
MAX_SOURCE_BYTES = 200 * 1024 * 1024  # enterprise-attack.json is ~45 MB and grows each release
# A new release never drops most techniques; a source that would is truncated or the wrong file.
MIN_KEPT_FRACTION = 0.5
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

    def ids(self) -> list[str]:
        return sorted(self._by_id)

    def techniques(self) -> list[Technique]:
        return [self._by_id[tid] for tid in self.ids()]

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
    """The techniques of a document in either format. An entry of the wrong shape (a field of another
    type, a list that is null, a reference or phase that is not an object) is skipped like one without
    an id: this is input from outside, and an AttributeError here was a 500 that Pub/Sub retried
    (sync-attack fetched the source four more times) and, at request time, a 500 per TTP route."""
    if isinstance(doc, dict) and isinstance(doc.get("techniques"), list):
        return [t for t in map(_compact_technique, doc["techniques"]) if t is not None]
    if isinstance(doc, dict) and doc.get("type") == "bundle" and isinstance(doc.get("objects"), list):
        return [t for t in map(_stix_technique, doc["objects"]) if t is not None]
    raise ConfigError(f"{ENV_VAR}={source!r}: expected {{'techniques': [...]}} or a STIX bundle of attack-pattern objects")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _flag(entry: dict[str, Any], key: str, default: bool = False) -> bool | None:
    """A boolean field, its default when absent; None (the entry is skipped) for any other value:
    bool("false") is True, which would mark a live technique revoked."""
    value = entry.get(key, default)
    return value if isinstance(value, bool) else None


def _compact_technique(t: Any) -> Technique | None:
    if not isinstance(t, dict):
        return None
    external_id, name, tactics = _text(t.get("external_id")), _text(t.get("name")), t.get("tactics") or []
    url, stix_id = t.get("url"), t.get("stix_id")
    if external_id is None or name is None or not isinstance(tactics, list) or not all(isinstance(x, str) for x in tactics):
        return None
    if not (url is None or isinstance(url, str)) or not (stix_id is None or isinstance(stix_id, str)):
        return None
    tid = normalise_id(external_id)
    is_sub, revoked, deprecated = _flag(t, "is_subtechnique", "." in tid), _flag(t, "revoked"), _flag(t, "deprecated")
    if is_sub is None or revoked is None or deprecated is None:
        return None
    return Technique(
        id=tid, name=name, tactics=tuple(tactics), is_subtechnique=is_sub, revoked=revoked, deprecated=deprecated, url=url, stix_id=stix_id
    )


def _stix_technique(obj: Any) -> Technique | None:
    if not isinstance(obj, dict) or obj.get("type") != "attack-pattern":
        return None
    refs, phases, name = obj.get("external_references", []), obj.get("kill_chain_phases", []), obj.get("name", "")
    if not isinstance(refs, list) or not isinstance(phases, list) or not isinstance(name, str):
        return None
    ref = next((r for r in refs if isinstance(r, dict) and r.get("source_name") == "mitre-attack"), None)
    external_id = _text(ref.get("external_id")) if ref else None
    if ref is None or external_id is None:
        return None
    url, stix_id = ref.get("url"), obj.get("id")
    if not all(isinstance(p, dict) and isinstance(p.get("phase_name", ""), str) for p in phases):
        return None
    if not (url is None or isinstance(url, str)) or not (stix_id is None or isinstance(stix_id, str)):
        return None
    tid = normalise_id(external_id)
    is_sub = _flag(obj, "x_mitre_is_subtechnique", "." in tid)
    revoked, deprecated = _flag(obj, "revoked"), _flag(obj, "x_mitre_deprecated")
    if is_sub is None or revoked is None or deprecated is None:
        return None
    return Technique(
        id=tid,
        name=name,
        tactics=tuple(str(p.get("phase_name", "")) for p in phases),
        is_subtechnique=is_sub,
        revoked=revoked,
        deprecated=deprecated,
        url=url,
        stix_id=stix_id,
    )


def _gs_path(location: str) -> tuple[str, str]:
    """(bucket, object) of gs://bucket/object; either is empty when missing."""
    bucket, _, name = location.removeprefix("gs://").partition("/")
    return bucket, name


def snapshot_location(bucket_models: str) -> str:
    return f"gs://{bucket_models or 'threatflow-models'}/{SNAPSHOT_NAME}"


def catalog_location(*, data_path: str | None, bucket_models: str) -> str:
    """ATTACK_DATA_PATH when set, else the sync-attack snapshot in the models bucket."""
    return (data_path or "").strip() or snapshot_location(bucket_models)


def catalog_loader(*, data_path: str | None, bucket_models: str, blobs: Callable[[], BlobStore] | None) -> Load[AttackCatalog]:
    """The loader of the runtime's "attack" snapshot (see threatflow.platform.snapshots).

    Reads the file named by ATTACK_DATA_PATH (a path, or gs://bucket/object read with the blob
    store `blobs()` returns), else the sync-attack snapshot in the models bucket. A local file is
    re-parsed only when its mtime changes, a bucket object only when its digest does.
    Raises ConfigError naming what to do when there is no data to read.
    """
    location = (data_path or "").strip()
    if not location and blobs is None:
        raise ConfigError(f"{ENV_VAR} is not set; TTPs are validated against the ATT&CK techniques file it names")
    location = location or snapshot_location(bucket_models)

    def load_object(version: str | None) -> Loaded[AttackCatalog] | None:
        bucket, name = _gs_path(location)
        if not bucket or not name:
            raise ConfigError(f"{ENV_VAR}={location!r}: expected gs://bucket/object")
        if blobs is None:
            raise ConfigError(f"{ENV_VAR}={location!r} is in a bucket, but no blob store was given")
        try:
            data = blobs().get(bucket, name)
        except NotFoundError:
            raise ConfigError(
                f"no ATT&CK data at {location}: run the sync-attack job (threatflow jobs run sync-attack) or set {ENV_VAR}"
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        if digest == version:
            return None
        return Loaded(AttackCatalog.from_bytes(data, source=location), digest)

    def load_file(version: str | None) -> Loaded[AttackCatalog] | None:
        try:
            mtime = str(Path(location).stat().st_mtime_ns)
        except OSError as exc:
            raise ConfigError(f"{ENV_VAR}={location!r}: cannot read the ATT&CK data: {exc.strerror or exc}") from None
        if mtime == version:
            return None
        return Loaded(AttackCatalog.load(Path(location)), mtime)

    return load_object if location.startswith("gs://") else load_file


# -- the sync-attack maintenance job --------------------------------------------------------------


def read_source(source: str, *, blobs: Any, http_get: Callable[..., Any] | None = None) -> bytes:
    """The bytes at an https URL, a gs:// object or a local path. A wrong source is a
    ValidationError (retrying cannot fix it); an unreachable one a DependencyError."""
    if source.startswith(("https://", "http://")):
        import requests

        get = http_get or requests.get
        try:
            response = get(source, timeout=(10, 120), stream=True)
        except requests.RequestException as exc:
            raise DependencyError(f"ATTACK_SOURCE={source!r}: fetch failed: {exc}") from None
        with response:
            if response.status_code >= 500 or response.status_code == 429:
                raise DependencyError(f"ATTACK_SOURCE={source!r}: HTTP {response.status_code}")
            if response.status_code != 200:
                raise ValidationError(f"ATTACK_SOURCE={source!r}: HTTP {response.status_code}", field="ATTACK_SOURCE")
            chunks, size = [], 0
            for chunk in response.iter_content(1 << 20):
                size += len(chunk)
                if size > MAX_SOURCE_BYTES:
                    raise ValidationError(f"ATTACK_SOURCE={source!r}: larger than {MAX_SOURCE_BYTES} bytes", field="ATTACK_SOURCE")
                chunks.append(chunk)
            return b"".join(chunks)
    if source.startswith("gs://"):
        try:
            _check_source_size(source, blobs.stat(*_gs_path(source)).size)
            data: bytes = blobs.get(*_gs_path(source))
        except NotFoundError:
            raise ValidationError(f"ATTACK_SOURCE={source!r}: no such object", field="ATTACK_SOURCE") from None
        _check_source_size(source, len(data))  # replaced between the two calls
        return data
    try:
        with Path(source).open("rb") as handle:
            _check_source_size(source, os.fstat(handle.fileno()).st_size)
            return _read_at_most(handle, source)
    except OSError as exc:
        raise ValidationError(f"ATTACK_SOURCE={source!r}: cannot read it: {exc.strerror or exc}", field="ATTACK_SOURCE") from None


def _check_source_size(source: str, size: int) -> None:
    """The same bound for every kind of source (it was enforced on an https download only)."""
    if size > MAX_SOURCE_BYTES:
        raise ValidationError(f"ATTACK_SOURCE={source!r}: larger than {MAX_SOURCE_BYTES} bytes", field="ATTACK_SOURCE")


def _read_at_most(handle: Any, source: str) -> bytes:
    data: bytes = handle.read(MAX_SOURCE_BYTES + 1)  # a file growing (or a pipe) past the bound still stops there
    _check_source_size(source, len(data))
    return data


def snapshot_bytes(catalog: AttackCatalog, *, source: str, generated_at: str) -> bytes:
    techniques = [
        {
            "external_id": t.id,
            "name": t.name,
            "tactics": list(t.tactics),
            "is_subtechnique": t.is_subtechnique,
            "revoked": t.revoked,
            "deprecated": t.deprecated,
            "url": t.url,
            "stix_id": t.stix_id,
        }
        for t in catalog.techniques()
    ]
    doc = {"format": SNAPSHOT_FORMAT, "source": source, "generated_at": generated_at, "techniques": techniques}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def sync(
    *, source: str | None, blobs: Any, bucket: str, clock: Any, force: bool = False, http_get: Callable[..., Any] | None = None
) -> dict[str, Any]:
    """Fetch and validate ATTACK_SOURCE, then replace the snapshot; a source that would drop
    most known techniques is refused (a truncated download) unless forced."""
    if not source:
        return {"skipped": True, "reason": "ATTACK_SOURCE is not set"}
    started = time.perf_counter()
    data = read_source(source, blobs=blobs, http_get=http_get)
    try:
        catalog = AttackCatalog.from_bytes(data, source=source)
    except ConfigError as exc:
        raise ValidationError(f"ATTACK_SOURCE: {exc.message}; the snapshot was not replaced", field="ATTACK_SOURCE") from None
    previous: AttackCatalog | None = None
    try:
        previous = AttackCatalog.from_bytes(blobs.get(bucket, SNAPSHOT_NAME), source="previous snapshot")
    except (NotFoundError, ConfigError):
        previous = None
    added, removed = len(catalog), 0  # the first snapshot adds every technique
    if previous is not None:
        old, new = set(previous.ids()), set(catalog.ids())
        added, removed = len(new - old), len(old - new)
        if not force and len(new & old) < MIN_KEPT_FRACTION * len(old):
            raise ValidationError(
                f"ATTACK_SOURCE={source!r} keeps only {len(new & old)} of the {len(old)} techniques in the current snapshot;"
                ' refusing to replace it (run the job with {"force": true} if this is intended)',
                field="ATTACK_SOURCE",
            )
    body = snapshot_bytes(catalog, source=source, generated_at=clock.now().isoformat())
    blobs.put(bucket, SNAPSHOT_NAME, body, content_type="application/json")
    techniques = catalog.techniques()
    return {
        "snapshot": f"gs://{bucket}/{SNAPSHOT_NAME}",
        "source": source,
        "techniques": len(catalog),
        "revoked": sum(1 for t in techniques if t.revoked),
        "deprecated": sum(1 for t in techniques if t.deprecated),
        "added": added,
        "removed": removed,
        "bytes": len(body),
        "seconds": round(time.perf_counter() - started, 3),
    }
