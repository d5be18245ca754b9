"""What the CLI commands do, as functions a test can call directly. The CLI only parses and prints."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import re
import shlex
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity

from config import defaults
from config.text import count, escaped_byte, is_text, shown
from connector.crm import Crm
from connector.errors import ConnectorError, TransientError
from connector.platform import Platform
from jobs.kinds import request_from_raw
from jobs.model import InvalidJob, JobRequest, Origin, Target, TargetKind, iso
from jobs.scoring.history import HistoryEntry, history_of
from jobs.store import Batch, JobStore, ReaderStore, batches

if TYPE_CHECKING:
    import _csv

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
IMPORT_COLUMNS = {"operation", "tag", "tags", "score", "contact", "lead", "account", "target_kind", "target_id",
                  "request_id"}
# A request id is a caller's key, kept in a Dataverse text column of this size.
REQUEST_ID_MAX = 100

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageProblem(ValueError):
    """The user's input to a command is wrong; the message says what would be right."""


def parse_duration(text: str) -> float:
    """`30m`, `2h`, `7d` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise UsageProblem(f"--since is {shown(text)}; give a number and a unit, such as 30m, 2h or 7d.")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


TARGET_KINDS = tuple(kind.value for kind in TargetKind)
# Fields given as text; a record id may also be a whole number (a JSON file of numeric CRM ids).
TEXT_FIELDS = ("operation", "target_kind", "request_id")
ID_FIELDS = ("contact", "lead", "account", "target_id")
_RECORD_FIELDS = (*TARGET_KINDS, "target_id")


def _types_problems(fields: dict[str, Any]) -> list[str]:
    """What JSON can give that no column means: a table for a record id, a number in a list of tags, and so on."""
    values = fields.values()
    if all(isinstance(value, str) for value in values) and is_text("".join(values)):
        # Text only, as every CSV row and most JSON: no field is of the wrong type. Checked at once, since this
        # runs for every row of an import (a string joined to others is text exactly when each of them is).
        return _text_problems(fields)
    problems = [f"{name} is {shown(value)}, which is not text: it holds a lone surrogate (such as \\ud800)."
                for name, value in fields.items() if not is_text(value)]
    if problems:
        return problems
    for name in (*TEXT_FIELDS, *ID_FIELDS):
        value = fields.get(name)
        whole = isinstance(value, int) and not isinstance(value, bool) and name in ID_FIELDS
        if value is not None and not isinstance(value, str) and not whole:
            what = "text or a whole number" if name in ID_FIELDS else "text"
            problems.append(f"{name} is {shown(value)}; it must be {what}.")
    tags = fields.get("tags", fields.get("tag"))
    if isinstance(tags, list):
        problems += [f"tags has {shown(tag)}; every tag is a name (text)." for tag in tags if not isinstance(tag, str)]
    elif tags is not None and not isinstance(tags, str):
        problems.append(f"tags is {shown(tags)}; give a tag name, or a list of names.")
    score = fields.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float | str | None):
        problems.append(f"score is {shown(score)}; give a whole number.")
    return problems + _text_problems(fields)


def _text_problems(fields: dict[str, Any]) -> list[str]:
    """What is wrong with fields of the right types: tag and tags both, a request id too long or unprintable."""
    problems = []
    if "tag" in fields and "tags" in fields:
        problems.append("Both tag and tags are given; they are the same field, so give one of them.")
    request_id = fields.get("request_id")
    if isinstance(request_id, str) and (len(request_id) > REQUEST_ID_MAX or not request_id.isprintable()):
        problems.append(f"request_id is {shown(request_id)}; give at most {REQUEST_ID_MAX} printable characters, "
                        "such as the id of the row in the system the job comes from.")
    return problems


def request_from_fields(fields: dict[str, Any]) -> JobRequest:
    """A JobRequest from a form, a CSV row or a JSON object: `contact`/`lead`/`account` or `target_kind`+`target_id`."""
    if problems := _types_problems(fields):
        raise InvalidJob(problems)
    for kind in _RECORD_FIELDS:
        value = fields.get(kind)
        if value is not None and not str(value).strip():
            # A blank record id is a mistake (an empty script variable), not a wish for a tag-only job.
            name = "The record id" if kind == "target_id" else kind.capitalize()
            raise InvalidJob([f"{name} is empty; give the CRM id of the record, or leave it out entirely for a "
                              f"tag-only Add Tag."])
    kinds = [kind for kind in TARGET_KINDS if fields.get(kind) is not None]
    target_kind, target_id = fields.get("target_kind"), fields.get("target_id")
    if len(kinds) > 1:
        raise InvalidJob([f"The job names more than one record ({', '.join(kinds)}); a job is about one contact, "
                          f"lead or account."])
    if target_kind not in (None, "") and target_id is None:
        raise InvalidJob([f"Record type is {shown(target_kind)} but no record id is given; give target_id too."])
    if kinds:
        if target_id:
            raise InvalidJob(["Give either target_kind and target_id, or contact / lead / account, not both."])
        target_kind, target_id = kinds[0], str(fields[kinds[0]])
    # JobRequest.from_input's input, built here at once: this runs for every row of an import.
    return request_from_raw({
        "operation": fields.get("operation"), "target_kind": target_kind,
        "target_id": None if target_id is None else str(target_id), "tags": fields.get("tags", fields.get("tag")),
        "score": fields.get("score"), "request_id": fields.get("request_id"),
    })


@dataclass
class RowProblem:
    line: int
    message: str


@dataclass
class ImportResult:
    """What an import did: the batch it queued (None when nothing was), and every bad row with its line."""

    file: Path
    batch: Batch | None = None
    problems: list[RowProblem] = field(default_factory=list)
    rows: int = 0


class ImportRefused(Exception):
    """Bad rows and no --skip-invalid: raised after the last row, so that the store undoes the batch."""


def read_rows(path: Path, columns: set[str] = IMPORT_COLUMNS,
              required: tuple[str, str] = ("operation", "every job needs one")) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, fields) for each row of a CSV file with a header naming some of `columns` (and the
    `required` one, with the reason), or of a JSON Lines file."""
    if not path.is_file():
        raise UsageProblem(f"{path} is not a file.")
    yield from _rows(path, columns, required)


def _not_utf8(byte: int) -> dict[str, Any]:
    """Bytes that are not UTF-8 arrive as lone surrogates (surrogateescape): that row is bad, not the file."""
    return {"__error__": f"not UTF-8 text (the byte 0x{byte:02x}); save the file as 'CSV UTF-8' or JSON Lines"}


def _rows(path: Path, columns: set[str], required: tuple[str, str]) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        first = handle.readline()
        handle.seek(0)
        if byte := escaped_byte(first):
            raise UsageProblem(f"{path} is not UTF-8 text (the byte 0x{byte:02x} on its first line); save it as "
                               "'CSV UTF-8' or JSON Lines.")
        suffix = path.suffix.lower()
        if first.lstrip().startswith("[") and suffix not in JSON_LINES_SUFFIXES:
            # Read whole, an array would hold a large file in memory; one object per line streams.
            raise UsageProblem(f"{path} is a JSON array; give one JSON object per line (JSON Lines) instead, "
                               f"such as the output of: jq -c '.[]' {shlex.quote(str(path))}")
        # The name says which format, where it can: a JSON Lines file whose first line is bad is still JSON Lines.
        if suffix in (*JSON_LINES_SUFFIXES, ".json") or (suffix != ".csv" and first.lstrip().startswith("{")):
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, {"__error__": f"not valid JSON ({exc.msg})"}
                    continue
                except ValueError:  # Python refuses to read an integer of more than 4,300 digits
                    yield number, {"__error__": "not usable JSON (a number of thousands of digits)"}
                    continue
                except RecursionError:
                    yield number, {"__error__": "not usable JSON (nested thousands of levels deep)"}
                    continue
                if not isinstance(value, dict):
                    yield number, {"__error__": "not a JSON object"}
                elif byte := escaped_byte(value):
                    yield number, _not_utf8(byte)
                else:
                    yield number, value
            return
        # Excel in many European locales saves CSV with `;` between fields.
        delimiter = ";" if ";" in first and "," not in first else ","
        # Strict: a quote that is never closed is an error to report, not the rest of the file read as one cell.
        reader = csv.reader(handle, delimiter=delimiter, strict=True)
        header = [h.strip().lower() for h in next(reader, [])]
        unknown = [h for h in header if h not in columns]
        if not header or unknown:
            found = (f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(shown(u) for u in unknown)}"
                     if unknown else "no header row")
            raise UsageProblem(f"{path}: {found}; use {', '.join(sorted(columns))}.")
        if required[0] not in header:
            raise UsageProblem(f"{path}: the header has no {required[0]!r} column; {required[1]}.")
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice or {"tag", "tags"} <= set(header):
            named = f"names {', '.join(repr(h) for h in twice)} more than once" if twice else \
                "has both 'tag' and 'tags', which are the same column"
            raise UsageProblem(f"{path}: the header {named}; keep one column for each.")
        width = len(header)
        for at, row in _csv_rows(reader):
            if isinstance(row, csv.Error):
                why = "a quote opened in it is never closed, so the rest of the file is inside it" \
                    if "unexpected end of data" in str(row) else f"not readable as CSV ({row})"
                yield at, {"__error__": why}
            elif len(row) > width:
                yield at, {"__error__": f"longer than the header ({width} columns)"}
            elif len(row) < width:  # the row ended before the header did: its cells may be in the wrong columns
                yield at, {"__error__": f"shorter than the header ({len(row)} of {width} columns)"}
            # The header's names are known columns: only the cells can hold such a byte, and ASCII holds none.
            elif not (text := "".join(row)).isascii() and (byte := escaped_byte(text)):
                yield at, _not_utf8(byte)
            else:
                # A blank cell is an empty field of the sheet: the same as leaving the column out for this row.
                yield at, {name: cell for name, cell in zip(header, row, strict=True) if cell.strip()}


def _csv_rows(reader: _csv.Reader) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """(line, cells) for each row but blank lines, and in place of a row the reader cannot read (a cell of more
    than 131,072 characters, a quote never closed) its error, with the line the row starts on: the reader goes on
    after it. Cells, not `csv.DictReader`'s tables, which cost a call and a table per row; lines counted as
    `csv.DictReader` counts them, as the reports always have: the line a row ends on, not moved on by a row that
    cannot be read (so one of those right after another is given the same line)."""
    line = reader.line_num  # the header's last
    while True:
        start = line + 1
        try:
            row = next(reader)
            line = reader.line_num
            while not row:
                row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, exc
            continue
        line = reader.line_num
        yield line, row


def count_rows(path: Path) -> int:
    """Lines with content, for the progress bar (0 when the file cannot be read: the import itself says why)."""
    try:
        with path.open(encoding="utf-8-sig", errors="surrogateescape") as handle:
            return sum(1 for line in handle if line.strip())
    except (OSError, UnicodeDecodeError):
        return 0


def new_batch_id() -> str:
    """Short enough to type: eight hex digits, one in four billion to meet another."""
    return uuid.uuid4().hex[:8]


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def import_jobs(
    store: JobStore,
    path: Path,
    *,
    skip_invalid: bool = False,
    again: bool = False,
    who: str = "",
    batch_id: str | None = None,
    on_row: Callable[[], None] | None = None,
) -> ImportResult:
    """Queue a file's rows as one batch, streaming it: all or nothing unless `skip_invalid`. A file imported
    before (the same SHA-256) is refused unless `again`."""
    if not path.is_file():
        raise UsageProblem(f"{path} is not a file.")
    sha256 = file_sha256(path)
    earlier = batches(store, sha256)
    if earlier and not again:
        last = earlier[-1]
        raise UsageProblem(
            f"{path} was imported before, as batch {last.id} at {iso(last.at)} ({count(last.queued, 'job')} "
            f"queued); add --again to queue its rows once more, or see them with: connector jobs list --batch "
            f"{last.id}")
    rows = _ImportRows(path, Origin(source="import", batch=batch_id or new_batch_id()), skip_invalid, on_row)
    result = ImportResult(path, problems=rows.problems)
    with contextlib.suppress(ImportRefused):  # the store has undone the batch
        result.batch = store.add_batch(Batch(id=str(rows.origin.batch), file=path.name, sha256=sha256, who=who),
                                       rows)
    result.rows = rows.rows
    return result


@dataclass
class _ImportRows:
    """A file's valid rows as requests of one batch, read as the store asks for them (see `BatchRows`)."""

    path: Path
    origin: Origin
    skip_invalid: bool
    on_row: Callable[[], None] | None
    rows: int = 0
    invalid: int = 0
    problems: list[RowProblem] = field(default_factory=list)

    def __iter__(self) -> Iterator[JobRequest]:
        for line, fields in read_rows(self.path):
            self.rows += 1
            if self.on_row:
                self.on_row()
            try:
                request = self._request(fields)
            except InvalidJob as exc:
                self.invalid += 1
                self.problems.append(RowProblem(line, str(exc)))
                continue
            if self.problems and not self.skip_invalid:
                continue  # nothing will be queued: the rest is read only for its problems
            yield dataclasses.replace(request, origin=self.origin)
        if self.problems and not self.skip_invalid:
            raise ImportRefused

    @staticmethod
    def _request(fields: dict[str, Any]) -> JobRequest:
        if "__error__" in fields:
            raise InvalidJob([f"The line is {fields['__error__']}."])
        unknown = sorted(set(fields) - IMPORT_COLUMNS)
        if unknown:
            raise InvalidJob([f"Unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}."])
        return request_from_fields(fields)


T = TypeVar("T")

VIEW_TRIES, VIEW_PAUSE = defaults.VIEW_TRIES, defaults.VIEW_PAUSE


def read_for_a_person(read: Callable[[], T], *, sleep: Callable[[float], Any] = time.sleep) -> T:
    """`read()`, tried again on a transient error (reads are safe to repeat); the last error is raised."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(VIEW_TRIES), wait=tenacity.wait_incrementing(VIEW_PAUSE, VIEW_PAUSE),
        retry=tenacity.retry_if_exception_type(TransientError), sleep=sleep, reraise=True,
    )
    return retrying(read)


def last_changes(entries: list[HistoryEntry], per_tag: int = 3) -> dict[str, list[dict[str, Any]]]:
    """The newest changes the connector applied to each tag, oldest first."""
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_tag.setdefault(entry.change.tag, []).append(entry.to_json())
    return {tag: changes[-per_tag:] for tag, changes in by_tag.items()}


def contact_view(
    platform: Platform, crm: Crm, kind: str, record_id: str, *, sleep: Callable[[float], Any] = time.sleep,
    store: ReaderStore | None = None,
) -> dict[str, Any]:
    """What the platform reports for a CRM record, its timeline, and (with the job store) the newest changes the
    connector applied to each tag: the `contact show` output."""
    contact = read_for_a_person(lambda: crm.identify(kind, record_id), sleep=sleep)
    tags: dict[str, int] | None = None
    error = None
    try:
        tags = read_for_a_person(lambda: platform.read_scores(contact), sleep=sleep)
    except ConnectorError as exc:
        error = f"{exc.result_code}: {exc.message}"
    posts = read_for_a_person(lambda: crm.timeline(kind, record_id), sleep=sleep)
    return {
        "kind": kind,
        "id": record_id,
        "platform": platform.name,
        "platform_id": str(contact),
        "tags": tags if tags is not None else {},
        "platform_error": error,
        "timeline": [{"text": p.text, "job_id": p.job_id, "created_at": p.created_at} for p in posts],
        "last_changes": last_changes(history_of(store, Target(kind=TargetKind(kind), id=record_id)))
        if store is not None else {},
    }
