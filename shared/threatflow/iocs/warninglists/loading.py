"""Loading lists (a directory, a bucket, the synced snapshot), the sync job, and the runtime snapshot loader."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from threatflow.iocs.warninglists.lists import ListProblem, Warninglist, parse_list
from threatflow.iocs.warninglists.matching import SNAPSHOT_FORMAT, WarninglistIndex
from threatflow.platform.errors import ConfigError, DependencyError, NotFoundError, ValidationError
from threatflow.platform.snapshots import Load, Loaded

if TYPE_CHECKING:
    from threatflow.platform.ports import BlobStore, Clock

log = logging.getLogger("threatflow.iocs.warninglists")

SNAPSHOT_NAME = "warninglists/snapshot.json"


def index_from_sources(
    documents: Iterable[tuple[str, bytes | Mapping[str, Any]]],
    *,
    source: str,
    origin: str = "",
    now: datetime | None = None,
    trusted: bool = False,
) -> WarninglistIndex:
    """Validate (key, list.json) pairs into an index; problems are kept on `index.problems`."""
    lists: list[Warninglist] = []
    problems: list[ListProblem] = []
    seen: set[str] = set()
    for key, raw in documents:
        if key in seen:
            problems.append(ListProblem(key, f"a second list with key {key!r}; the first one is kept", rejected=True))
            continue
        wl, found = parse_list(key, raw, trusted=trusted)
        problems.extend(found)
        if wl is not None:
            seen.add(key)
            lists.append(wl)
    for problem in problems:
        log.warning("warninglist %s: %s", problem.key, problem.error)
    return WarninglistIndex(lists, problems=problems, source=source, origin=origin or source, generated_at=now, loaded_at=now)


def load_directory(path: str | Path, *, now: datetime | None = None) -> WarninglistIndex:
    """Folders holding list.json under `path` (or under `path`/lists, the MISP repository layout)."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"WARNINGLISTS_SOURCE={str(path)!r}: no such directory")
    if not any(root.glob("*/list.json")) and (root / "lists").is_dir():
        root = root / "lists"
    files = sorted(root.glob("*/list.json"))
    return index_from_sources(((f.parent.name, f.read_bytes()) for f in files), source=str(path), now=now)


def parse_gs_url(source: str) -> tuple[str, str]:
    bucket, _, prefix = source.removeprefix("gs://").partition("/")
    if not bucket:
        raise ConfigError(f"WARNINGLISTS_SOURCE={source!r}: expected gs://bucket/prefix")
    return bucket, prefix.strip("/")


def load_bucket(source: str, *, blobs: BlobStore, now: datetime | None = None) -> WarninglistIndex:
    """Folders of list.json objects under gs://bucket/prefix."""
    bucket, prefix = parse_gs_url(source)
    names = sorted(n for n in blobs.list(bucket, prefix=f"{prefix}/" if prefix else "", limit=100_000) if n.endswith("/list.json"))
    return index_from_sources(((name.rsplit("/", 2)[-2], blobs.get(bucket, name)) for name in names), source=source, now=now)


def load_source(source: str, *, blobs: BlobStore | None = None, now: datetime | None = None) -> WarninglistIndex:
    if source.startswith("gs://"):
        if blobs is None:
            raise ConfigError(f"WARNINGLISTS_SOURCE={source!r} is a bucket, but no blob store was given")
        return load_bucket(source, blobs=blobs, now=now)
    return load_directory(source, now=now)


def load_snapshot(data: bytes, *, origin: str = "snapshot", now: datetime | None = None) -> WarninglistIndex:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"warninglist snapshot {origin} is not valid JSON: {exc}", field="snapshot") from None
    if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT or not isinstance(doc.get("lists"), list):
        raise ValidationError(f"warninglist snapshot {origin} is not in format {SNAPSHOT_FORMAT}", field="snapshot")
    try:
        generated_at = datetime.fromisoformat(doc["generated_at"])
    except (KeyError, TypeError, ValueError):
        raise ValidationError(f"warninglist snapshot {origin} has no valid generated_at", field="generated_at") from None
    pairs = [(str(item.get("key", "")), {**item, "list": item.get("entries")}) for item in doc["lists"] if isinstance(item, dict)]
    index = index_from_sources(pairs, source=str(doc.get("source", "")), origin=origin, now=now, trusted=True)
    index.generated_at = generated_at
    return index


# -- the maintenance job ------------------------------------------------------------------


def sync(*, source: str | None, blobs: BlobStore, bucket: str, clock: Clock) -> dict[str, Any]:
    """Read the source, validate every list, write the snapshot; the result names each list and each problem."""
    if not source:
        log.warning("sync-warninglists skipped: WARNINGLISTS_SOURCE is not set")
        return {"skipped": True, "reason": "WARNINGLISTS_SOURCE is not set"}
    started = time.perf_counter()
    index = load_source(source, blobs=blobs, now=clock.now())
    rejected = [p.to_json() for p in index.problems if p.rejected]
    if not index.lists:
        raise ValidationError(
            f"WARNINGLISTS_SOURCE={source!r} holds no valid warninglist ({len(rejected)} rejected); the snapshot was not replaced",
            field="WARNINGLISTS_SOURCE",
            details={"rejected": rejected},
        )
    data = index.snapshot()
    blobs.put(bucket, SNAPSHOT_NAME, data, content_type="application/json")
    dropped = {p.key: p for p in index.problems if not p.rejected}
    return {
        "snapshot": f"gs://{bucket}/{SNAPSHOT_NAME}",
        "bytes": len(data),
        "loaded": len(index.lists),
        "lists": [
            {
                "key": wl.key,
                "type": wl.type.value,
                "entries": len(wl.entries),
                "version": wl.version,
                "dropped_entries": dropped[wl.key].dropped_entries if wl.key in dropped else 0,
            }
            for wl in index.lists.values()
        ],
        "rejected": rejected,
        "dropped": [p.to_json() for p in dropped.values()],
        "seconds": round(time.perf_counter() - started, 3),
    }


# -- the runtime snapshot ------------------------------------------------------------------


def snapshot_loader(*, source: str, bucket: str, blobs: Callable[[], BlobStore], clock: Clock) -> Load[WarninglistIndex]:
    """The loader of the runtime's "warninglists" snapshot (see threatflow.platform.snapshots).

    It reads gs://<bucket>/warninglists/snapshot.json, the blob the sync job writes, and recompiles
    only when its digest changed. Without a snapshot a local `source` directory is compiled
    directly (the dev stack before its first sync); a bucket source waits for the sync job.
    """
    origin = f"gs://{bucket}/{SNAPSHOT_NAME}"

    def load(version: str | None) -> Loaded[WarninglistIndex] | None:
        now = clock.now()
        try:
            data = blobs().get(bucket, SNAPSHOT_NAME)
        except NotFoundError:
            if source.startswith("gs://"):
                raise DependencyError(f"no snapshot at {origin} yet; run the sync-warninglists job") from None
            index = load_directory(source, now=now)
            log.info("warninglists compiled from %s (no snapshot at %s): %d lists", source, origin, len(index.lists))
            return Loaded(index)
        except (DependencyError, ConfigError) as exc:
            raise exc.__class__(f"loading {origin} failed: {exc.message}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest == version:
            return None
        index = load_snapshot(data, origin=origin, now=now)
        log.info("warninglists loaded from %s: %d lists", origin, len(index.lists))
        return Loaded(index, digest)

    return load
