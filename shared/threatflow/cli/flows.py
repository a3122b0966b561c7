"""`threatflow flows load FILE…`: stream UNSW-NB15 CSVs into flow events over the API.

Raw (49 columns, no header) or partitioned (header) layout, plain or gzip. Rows are
posted as read, in batches, to POST /api/v1/flows/batch with skip_invalid: the API
validates each flow once, stores the valid ones and lists the bad ones, which are
reported on stderr. A few batches are in flight at once while the next is read, with
a progress bar on stderr.

Resumable: a progress file (default ~/.cache/threatflow/flows-load.json) records,
per file sha256, the rows acknowledged by the API. A re-run skips those rows; each
event's key is the file hash plus its row number, and its time is the flow's stime or
when the API first saw the file (its source), so anything re-sent after an
interruption, or the file loaded again elsewhere, is stored once. `--upload` instead puts the file in the uploads
bucket and lets the flow-ingest worker do the work, polling its job.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from threatflow.platform.errors import DependencyError, ValidationError

if TYPE_CHECKING:
    from threatflow.flows.ingest import CsvRow

DEFAULT_BATCH = 5000
IN_FLIGHT = 2
PROGRESS_FILE = Path(os.environ.get("THREATFLOW_FLOWS_PROGRESS") or Path.home() / ".cache" / "threatflow" / "flows-load.json")
PROBLEMS_SHOWN = 20
# What to do when the API refuses a batch for the caller rather than for the batch.
REFUSAL_ADVICE = {
    401: "log in (threatflow login NAME), then run the same command again (rows acknowledged so far are saved)",
    403: "loading flows needs the analyst or admin role",
}
UPLOAD_POLL_SECONDS = 1.0  # between two reads of an upload's job
UPLOAD_UNREACHABLE_SECONDS = 300.0  # how long `--upload` waits out an unreachable or busy API before it stops following
# What reading a file that is not a UNSW CSV raises: no UNSW layout (ValueError), a cell over csv's field
# limit (csv.Error), not or no longer gzip (BadGzipFile, zlib.error), a gzip cut short (EOFError).
UNREADABLE = (ValueError, csv.Error, gzip.BadGzipFile, zlib.error, EOFError)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Progress:
    """The resume ledger: {sha256: {"file", "rows_done", "stored", "duplicates", "invalid", "done"}}.

    One file serves every load (loading UNSW-NB15_1..4 at once, one terminal each): a save merges this load's
    entries into the ledger as it is on disk, under an exclusive lock, through a temporary file of its own.
    Each load wrote back the whole ledger as it had read it, dropping the others' progress, and all wrote
    through one `.tmp` name, so one could move another's half-written ledger into place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.doc: dict[str, dict[str, Any]] = self._read()
        self.mine: set[str] = set()  # the entries this load writes; the others are the other loads'

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.path.read_text()) if self.path.exists() else {}  # type: ignore[no-any-return]
        except ValueError:
            raise ValidationError(
                f"{self.path}: not a progress file (JSON); remove it or pass --progress-file", field="progress-file"
            ) from None

    def entry(self, sha: str, file: Path) -> dict[str, Any]:
        self.mine.add(sha)
        return self.doc.setdefault(sha, {"file": str(file), "rows_done": 0, "stored": 0, "duplicates": 0, "invalid": 0})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path.with_name(self.path.name + ".lock")):
            merged = self._read()  # the other loads' entries as they last saved them
            merged.update({sha: self.doc[sha] for sha in self.mine})
            self.doc = merged
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as handle:
                    json.dump(self.doc, handle, indent=1)
                os.replace(tmp, self.path)  # atomic: an interruption never leaves half a ledger
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` while the block runs (none where fcntl is missing: Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


ACKNOWLEDGED = ("stored", "duplicates", "invalid")  # what the API answered for each row of a batch


class Bar:
    """A one-line progress bar on stderr: the file's rows the API acknowledged (stored, duplicates, invalid: the
    figures of the per-file line and the summary, resumed runs included), flows/s, and how much of the file was read.
    It counted rows as they were sent, before the API answered, and ended on this run's rows alone."""

    def __init__(self, name: str, total_bytes: int, *, enabled: bool, acknowledged: int = 0) -> None:
        self.name, self.total, self.enabled = name, max(1, total_bytes), enabled
        self.started = time.perf_counter()
        self.at_start = acknowledged  # rows an earlier run of this load acknowledged: not this run's rate
        self.last = 0.0
        self.line_open = False  # a bar printed without its newline: a message after it needs one first

    def show(self, counts: Mapping[str, Any], read_bytes: int, *, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.last < 0.2):
            return
        self.last = now
        stored, duplicates, invalid = (int(counts.get(key) or 0) for key in ACKNOWLEDGED)
        rows = stored + duplicates + invalid
        fraction = min(1.0, read_bytes / self.total)
        filled = int(fraction * 30)
        rate = (rows - self.at_start) / max(1e-9, now - self.started)
        line = (
            f"\r{self.name}: [{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:5.1f}%  {rows:,} rows"
            f" ({stored:,} stored, {duplicates:,} duplicates, {invalid:,} invalid)  {rate:,.0f} flows/s"
        )
        print(line, end="\n" if final else "", file=sys.stderr, flush=True)
        self.line_open = not final

    def end_line(self) -> None:
        """Ends the bar's line, so that what is printed next (an error) starts on its own."""
        if self.line_open:
            print(file=sys.stderr, flush=True)
            self.line_open = False


Misshapen = list["CsvRow"]


@dataclass
class Batch:
    """Up to `size` rows read together: the flows' row numbers (event positions, rows_done), their lines in the file (a
    problem is named by its line, as the upload worker names one) and the rows of another width read with them."""

    positions: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    flows: list[dict[str, Any]] = field(default_factory=list)
    misshapen: Misshapen = field(default_factory=list)


def batches(rows: Iterator[CsvRow], size: int) -> Iterator[Batch]:
    """Batches of up to `size` rows, flows and rows of another width together; a batch may hold only rows of another
    width (they are counted as invalid and named, never posted)."""
    batch = Batch()
    for row in rows:
        if not isinstance(row.flow, dict):
            batch.misshapen.append(row)
        else:
            batch.positions.append(row.number)
            batch.lines.append(row.line)
            batch.flows.append(row.flow)
        if len(batch.flows) + len(batch.misshapen) >= size:  # rows of another width count: a file of them was held whole
            yield batch
            batch = Batch()
    if batch.flows or batch.misshapen:
        yield batch


def _answered(answer: tuple[int, Any]) -> Future[tuple[int, Any]]:
    done: Future[tuple[int, Any]] = Future()
    done.set_result(answer)
    return done


Post = Callable[[dict[str, Any]], tuple[int, Any]]

# --shift-times puts the file's newest flow this long before the load starts: the API refuses a time more than a day
# ahead, and every flow older than the retention window (FLOWS_RETENTION_DAYS, 90 by default).
SHIFT_MARGIN_SECONDS = 60
EPOCH_LIMIT = 32_503_680_000  # year 3000: the API's range of epoch-second times
TIME_FIELDS = ("stime", "ltime", "Stime", "Ltime")  # the partitioned names, and the raw files' (NUSW-NB15_features.csv)


def _time(value: Any) -> tuple[float, bool] | None:
    """A cell as (epoch seconds, whether it was written in ISO 8601): the UNSW layout's stime/ltime, or ISO 8601 with
    a zone (as the API takes them); None for a blank, a time without a zone or anything else."""
    from threatflow.flows.features import decimal_text

    number: float | None
    if isinstance(value, str) and (number := decimal_text(value)) is not None:
        written_iso = False  # ASCII decimal only, as the API reads it: float() took "١٤٢١٩٢٧٤١٤" and posted it as ASCII digits
    elif type(value) in (int, float):
        number, written_iso = float(value), False
    else:
        number, written_iso = _iso(value), True
    return (number, written_iso) if number is not None and math.isfinite(number) and number >= 0 else None


def _epoch(value: Any) -> float | None:
    time_of = _time(value)
    return None if time_of is None else time_of[0]


def _iso(value: Any) -> float | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def newest_time(path: Path, *, now: float | None = None) -> float | None:
    """The newest stime/ltime in the file (epoch seconds); None when it has none (the partitioned layout).

    A time the API refuses as in the future (more than MAX_AHEAD past `now`) is no observation but a corrupt row: one
    such row dated 2100 set the newest time, moving every real flow decades back (all refused as older than the
    retention window), and one of 1e300 made an offset whose source name broke the API's length limit. Such times
    count only when the file has no other (a capture wholly ahead of the clock), and then only below the API's range
    of epoch seconds (year 3000), so the offset stays a few digits."""
    from threatflow.flows import ingest

    ahead = (time.time() if now is None else now) + ingest.MAX_AHEAD.total_seconds()
    newest: float | None = None
    newest_ahead: float | None = None
    with path.open("rb") as raw:
        for _number, flow in ingest.read_csv(ingest.lines_within(ingest.open_text(raw)), typed=False):
            if not isinstance(flow, dict):  # a row of another width: never loaded
                continue
            for name in TIME_FIELDS:
                at = _epoch(flow.get(name))
                if at is None:
                    continue
                if at <= ahead:
                    if newest is None or at > newest:
                        newest = at
                elif at < EPOCH_LIMIT and (newest_ahead is None or at > newest_ahead):
                    newest_ahead = at
    return newest if newest is not None else newest_ahead


def shift_times(flow: dict[str, Any], seconds: int) -> dict[str, Any]:
    """The flow with its stime/ltime moved by `seconds`, each in its own form (epoch seconds, or ISO 8601 in UTC);
    other cells, and a time that cannot be moved (out of datetime's range), as they are, for the API to judge."""
    for name in TIME_FIELDS:
        time_of = _time(flow.get(name))
        if time_of is None:
            continue
        moved = time_of[0] + seconds
        if not time_of[1]:
            flow[name] = str(int(moved)) if moved.is_integer() else repr(moved)
            continue
        with contextlib.suppress(OverflowError, ValueError, OSError):
            flow[name] = datetime.fromtimestamp(moved, UTC).isoformat()
    return flow


def load_file(
    path: Path,
    *,
    post: Post,
    progress: Progress,
    batch_size: int,
    show_bar: bool,
    in_flight: int = IN_FLIGHT,
    shift: bool = False,
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """`shift`: move every stime/ltime by one offset, so the file's newest flow lands a minute before the load
    began (a capture from 2015 is older than the retention window: every flow was refused). The offset is
    kept in the ledger, so a resumed load uses the same one; a shifted load is its own source, stored apart
    from the file loaded as it is."""
    from threatflow.flows import ingest

    sha = file_sha256(path)
    entry = progress.entry(f"{sha}+shifted" if shift else sha, path)
    if entry.get("done"):
        print(f"{path}: already loaded ({entry['stored']:,} stored); nothing to do", file=sys.stderr)
        return entry
    source = ingest.FILE_SOURCE + sha[:32]  # the flow-ingest worker's name for the same file: loaded both ways, stored once
    offset = 0
    if shift:
        if "time_shift" not in entry:
            print(f"{path}: finding its newest flow time (--shift-times)", file=sys.stderr)
            started = now()
            newest = newest_time(path, now=started)
            entry["time_shift"] = 0 if newest is None else int(started - SHIFT_MARGIN_SECONDS - newest)
            progress.save()  # before the first batch: every run of this load moves the times by the same offset
            if newest is None:
                print(f"{path}: no epoch-second stime or ltime to shift; loading the times as they are", file=sys.stderr)
        offset = int(entry["time_shift"])
        source = f"{ingest.FILE_SOURCE}{sha[:24]}:shift{offset}"
        print(f"{path}: times moved by {offset:+,} s ({offset / 86400:+,.1f} days)", file=sys.stderr)
    skip = int(entry["rows_done"])
    if skip:
        print(f"{path}: resuming after its first {skip:,} rows (data rows, as the ledger counts them)", file=sys.stderr)
    bar = Bar(path.name, path.stat().st_size, enabled=show_bar, acknowledged=sum(int(entry.get(k) or 0) for k in ACKNOWLEDGED))
    shown = 0
    too_old = 0  # rows refused as older than the retention window (of those the API listed)
    with path.open("rb") as raw:
        # Cells go as text: the API parses and validates each flow once, skips the invalid ones
        # (skip_invalid) and lists them, so the client does no second validation.
        rows = ingest.read_csv_rows(ingest.lines_within(ingest.open_text(raw)), skip_rows=skip, typed=False)
        pending: deque[tuple[Batch, Future[tuple[int, Any]]]] = deque()

        def read_bytes() -> int:
            return path.stat().st_size if raw.closed else raw.tell()

        pool = ThreadPoolExecutor(max_workers=in_flight)

        def settle(batch: Batch, future: Future[tuple[int, Any]]) -> None:
            nonlocal shown, too_old
            status, payload = future.result()
            if status != 200:
                error = payload.get("error", payload) if isinstance(payload, dict) else payload
                # Re-running as it was fails the same way when the refusal is the caller's token or role.
                then = REFUSAL_ADVICE.get(status, "progress is saved, re-run to resume")
                raise DependencyError(f"the API refused a batch (HTTP {status}): {json.dumps(error)[:2000]}; {then}")
            for row in batch.misshapen:  # counted with the batch read after them: a resume neither skips nor recounts them
                if shown < PROBLEMS_SHOWN and isinstance(row.flow, ingest.MisshapenRow):
                    bar.end_line()
                    print(f"  skipped line {row.line:,}: {row.flow.reason}", file=sys.stderr)
                shown += 1
            entry["invalid"] += len(batch.misshapen)
            problems = payload.get("problems") or []
            for problem in problems:
                if shown < PROBLEMS_SHOWN:
                    bar.end_line()
                    line = batch.lines[int(problem["index"])]  # the API's index is the flow's in the batch posted
                    print(f"  skipped line {line:,}: {problem['field']}: {problem['reason']}", file=sys.stderr)
                shown += 1
                if str(problem.get("reason", "")).startswith(ingest.RETENTION_REASON):
                    too_old += 1
            shown += int(payload.get("problems_total") or 0) - len(problems)
            entry["stored"] += int(payload.get("stored", 0))
            entry["duplicates"] += int(payload.get("duplicates", 0))
            entry["invalid"] += int(payload.get("invalid", 0))  # counted once the batch is acknowledged: a resume never counts it twice
            # Batches are settled in the order they were read, so the ledger only ever
            # moves past rows the API has acknowledged, even with several in flight.
            entry["rows_done"] = max(batch.positions[-1:] + [row.number for row in batch.misshapen[-1:]]) + 1
            progress.save()
            bar.show(entry, read_bytes())

        interrupted = False
        try:
            for batch in batches(rows, batch_size):
                if not batch.flows:  # only rows of another width, after the last flow: nothing to post
                    pending.append((batch, _answered((200, {}))))
                    continue
                # No observed_at: the API dates undated flows (no stime) by when this source was first observed,
                # whichever run, machine or ledger sends them. The time this loader once chose was saved only with
                # the first acknowledged batch, so a run killed before it, or another ledger, stored them again.
                sent = [shift_times(flow, offset) for flow in batch.flows] if offset else batch.flows
                body = {"flows": sent, "positions": batch.positions, "source": source, "skip_invalid": True}
                if "observed_at" in entry:  # a load an earlier version started keeps the time it sent
                    body["observed_at"] = entry["observed_at"]
                pending.append((batch, pool.submit(post, body)))
                while len(pending) > in_flight:  # reading the next batch overlaps the requests in flight
                    settle(*pending.popleft())
            while pending:
                settle(*pending.popleft())
        except KeyboardInterrupt:
            interrupted = True
            bar.end_line()
            print(
                f"{path}: interrupted; the {int(entry['rows_done']):,} rows the API acknowledged are saved in {progress.path}:"
                " run the same command again to resume",
                file=sys.stderr,
            )
            raise
        except BaseException:
            bar.end_line()  # the error is printed on a line of its own, not after the bar's last figures
            raise
        finally:
            # Ctrl-C does not wait for the batches in flight (up to their 300 s timeout): whatever the API stores of
            # them, a resumed load finds as duplicates.
            pool.shutdown(wait=not interrupted, cancel_futures=True)
    entry["done"] = True
    progress.save()
    bar.show(entry, path.stat().st_size, final=True)
    if shown > PROBLEMS_SHOWN:
        print(f"  ... {shown - PROBLEMS_SHOWN} more problems", file=sys.stderr)
    if too_old and not shift:
        print(
            f"{path}: {too_old:,} rows are older than the retention window; a capture this old (such as the official UNSW-NB15"
            f" files, from 2015) loads with its times moved to now: threatflow flows load --shift-times {path}",
            file=sys.stderr,
        )
    return entry


def cmd_load(args: argparse.Namespace, *, base: str, token: str | None) -> int:
    import msgspec
    import requests

    session = requests.Session()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}

    def post(body: dict[str, Any]) -> tuple[int, Any]:
        try:
            response = session.post(f"{base}/api/v1/flows/batch", data=msgspec.json.encode(body), headers=headers, timeout=300)
        except requests.ConnectionError as exc:
            raise DependencyError(f"cannot reach the API at {base}: is the stack up? ({exc.__class__.__name__})") from None
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    if not 1 <= args.batch_size <= 10_000:
        raise ValidationError("--batch-size is 1 to 10000", field="batch-size")
    progress = Progress(Path(args.progress_file) if args.progress_file else PROGRESS_FILE)
    try:
        return _load_all(args, progress, post=post, base=base, token=token, session=session)
    except KeyboardInterrupt:
        # What to do next is printed; the ledger is saved after every batch. Requests still in flight hold their
        # threads, which the interpreter's exit would wait for: leave at once, with Ctrl-C's status.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + 2)


def _load_all(args: argparse.Namespace, progress: Progress, *, post: Post, base: str, token: str | None, session: Any) -> int:
    totals = {"stored": 0, "duplicates": 0, "invalid": 0}
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise ValidationError(f"{path}: no such file", field="file")
        if args.upload:
            if args.shift_times:
                raise ValidationError("--shift-times moves times as the CLI posts the flows; it cannot with --upload", field="shift-times")
            entry = upload_file(path, base=base, token=token, session=session)
        else:
            try:
                entry = load_file(
                    path, post=post, progress=progress, batch_size=args.batch_size, show_bar=not args.quiet, shift=args.shift_times
                )
            except UNREADABLE as exc:  # a file that is not a UNSW CSV, or a corrupt gzip: a message, not a traceback
                raise ValidationError(
                    f"{path}: cannot be read as a UNSW-NB15 CSV: {exc}; rows the API acknowledged are saved in the progress file",
                    field="file",
                ) from None
        for key in totals:
            totals[key] += int(entry.get(key) or 0)
        print(json.dumps({"file": str(path), **{k: entry.get(k) for k in ("rows_done", "stored", "duplicates", "invalid")}}))
    print(f"stored {totals['stored']:,}, duplicates {totals['duplicates']:,}, invalid {totals['invalid']:,}", file=sys.stderr)
    return 0


def _get_json(session: Any, url: str, headers: dict[str, str]) -> tuple[int, Any]:
    """(HTTP status, the answer's JSON or text); status 0 when the API could not be reached."""
    import requests

    try:
        response = session.get(url, headers=headers, timeout=60)
    except requests.RequestException as exc:
        return 0, f"the API cannot be reached ({exc.__class__.__name__})"
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def _answer_text(status: int, answer: Any) -> str:
    if status == 0:
        return str(answer)
    error = answer.get("error", answer) if isinstance(answer, dict) else answer
    message = error.get("message", error) if isinstance(error, dict) else error
    return f"HTTP {status}: {str(message)[:300]}"


def _refused_unless(response: Any, expected: int) -> None:
    if response.status_code == expected:
        return
    try:
        answer: Any = response.json()
    except ValueError:
        answer = response.text
    then = REFUSAL_ADVICE.get(response.status_code)
    raise DependencyError(f"the API refused the upload job ({_answer_text(response.status_code, answer)})" + (f"; {then}" if then else ""))


def upload_file(path: Path, *, base: str, token: str | None, session: Any) -> dict[str, Any]:
    """Put the file in the uploads bucket, queue a flow-ingest job and follow it to the end."""
    from threatflow.adapters.storage import GcsBlobs
    from threatflow.platform.config import Settings

    settings = Settings.from_env()
    sha = file_sha256(path)
    name = f"flows/{sha}/{path.name}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # Asked first (role, bucket, a served model): a reader's 403 or a 503 came after the whole file was copied.
    _refused_unless(session.post(f"{base}/api/v1/flows/uploads", json={"object": name, "dry_run": True}, headers=headers, timeout=60), 200)
    GcsBlobs(settings.project).put_file(settings.bucket_uploads, name, str(path))  # streamed: a file of any size
    response = session.post(f"{base}/api/v1/flows/uploads", json={"object": name}, headers=headers, timeout=60)
    _refused_unless(response, 202)
    job = response.json()
    job_id = str(job["job_id"])
    follow = f"threatflow api GET /api/v1/flows/uploads/{job_id}"
    # The job runs in the stack whatever happens to this command: its id is what finds it again.
    print(f"{path.name}: queued flow-ingest job {job_id}; {follow} shows it", file=sys.stderr)
    status_url = f"{base}{job.get('status_url') or '/api/v1/flows/uploads/' + job_id}"
    try:
        job = _follow(job, path=path, session=session, status_url=status_url, headers=headers, job_id=job_id, follow=follow)
    except KeyboardInterrupt:
        print(f"\n{path.name}: stopped following flow-ingest job {job_id}; it goes on in the stack: {follow} shows it", file=sys.stderr)
        raise
    print(file=sys.stderr)
    if job["state"] == "failed":
        raise ValidationError(f"{path}: the flow-ingest job failed: {job.get('error')}", field="file")
    return dict(job)


def _follow(
    job: dict[str, Any], *, path: Path, session: Any, status_url: str, headers: dict[str, str], job_id: str, follow: str
) -> dict[str, Any]:
    """The job's record polled until it finishes, its progress on stderr."""
    failing_since: float | None = None
    while job.get("state") not in ("succeeded", "failed"):
        time.sleep(UPLOAD_POLL_SECONDS)
        status, answer = _get_json(session, status_url, headers)
        if status == 200 and isinstance(answer, dict):
            job, failing_since = answer, None
        elif status in (0, 429) or status >= 500:  # unreachable or busy: the job goes on; wait, within a bound
            failing_since = failing_since if failing_since is not None else time.monotonic()
            if time.monotonic() - failing_since < UPLOAD_UNREACHABLE_SECONDS:
                continue
            print(file=sys.stderr)
            waited = f"{UPLOAD_UNREACHABLE_SECONDS:.0f} s"
            raise DependencyError(f"cannot follow flow-ingest job {job_id}: {_answer_text(status, answer)} for {waited}; {follow} shows it")
        else:  # refused (an expired token, a user disabled meanwhile): the job goes on, unfollowed
            print(file=sys.stderr)
            raise DependencyError(
                f"cannot follow flow-ingest job {job_id}: {_answer_text(status, answer)}; the job goes on in the stack: {follow}"
                " shows it (threatflow login first if the token expired)"
            )
        print(f"\r{path.name}: {job.get('state')} {int(job.get('rows_done') or 0):,} rows", end="", file=sys.stderr, flush=True)
    return job


def add_parser(sub: Any, run: Callable[[argparse.Namespace], int]) -> None:
    flows = sub.add_parser("flows", help="load network flows (UNSW-NB15 CSV) as scored events")
    flows.add_argument("--url", help="API base URL (default: THREATFLOW_URL, the stored login or the local stack)")
    actions = flows.add_subparsers(dest="action", required=True)
    load = actions.add_parser("load", help="stream raw or partitioned UNSW-NB15 CSVs (gzip too) into flow events; resumable")
    load.add_argument("files", nargs="+", metavar="FILE")
    load.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"flows per request (default {DEFAULT_BATCH}, at most 10000)")
    load.add_argument("--progress-file", help=f"resume ledger (default {PROGRESS_FILE})")
    load.add_argument("--upload", action="store_true", help="upload to Cloud Storage and let the flow-ingest worker load it")
    load.add_argument(
        "--shift-times",
        action="store_true",
        help="move every stime/ltime by one offset so the newest flow is a minute old (a capture older than the retention window"
        " is refused otherwise); kept for a resumed load",
    )
    load.add_argument("--quiet", action="store_true", help="no progress bar")
    flows.set_defaults(run=run)
