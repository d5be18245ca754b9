"""The OData `$batch` wire format: requests packed into `multipart/mixed`, answers unpacked from it.

Built and parsed by hand because the format is small and strict (CRLF line ends, `application/http` parts with
`Content-Transfer-Encoding: binary`, change sets as nested multiparts) and the stdlib `email` package rewrites
line ends and headers in ways Dataverse does not accept. The sandbox uses the same functions the other way
round (`parse_batch_request`, `build_batch_response`), so both sides agree on one reading of the format.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

CRLF = "\r\n"
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


@dataclass(frozen=True)
class BatchPart:
    """One request inside a batch. `path` is relative to the API root (`contacts(...)`) or a `$1` reference."""

    method: str
    path: str
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_id: str | None = None


@dataclass
class BatchResult:
    """One answer inside a batch response."""

    status: int
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status < 400

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


def build_batch(parts: Sequence[BatchPart], *, boundary: str, base_url: str, changeset: bool) -> bytes:
    """The body of a `$batch` POST. With `changeset`, every part goes into one atomic change set."""
    if changeset:
        return build_change_sets([parts], boundary=boundary, base_url=base_url)
    lines: list[str] = []
    for part in parts:
        lines += [f"--{boundary}", *_request_part(part, base_url, part.content_id)]
    lines += [f"--{boundary}--", ""]
    return CRLF.join(lines).encode()


def build_change_sets(sets: Sequence[Sequence[BatchPart]], *, boundary: str, base_url: str) -> bytes:
    """The body of a `$batch` POST holding each of `sets` as its own atomic change set."""
    lines: list[str] = []
    # Content-IDs are unique in the whole request, not only in their change set, as OData asks.
    numbers = itertools.count(1)
    for parts in sets:
        inner = f"changeset_{uuid.uuid4()}"
        lines += [f"--{boundary}", f"Content-Type: multipart/mixed; boundary={inner}", ""]
        for part in parts:
            lines += [f"--{inner}", *_request_part(part, base_url, part.content_id or str(next(numbers)))]
        lines += [f"--{inner}--", ""]
    lines += [f"--{boundary}--", ""]
    return CRLF.join(lines).encode()


def _request_part(part: BatchPart, base_url: str, content_id: str | None) -> list[str]:
    head = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        head.append(f"Content-ID: {content_id}")
    url = part.path if part.path.startswith(("$", "http://", "https://")) else base_url + part.path.lstrip("/")
    lines = [*head, "", f"{part.method} {url} HTTP/1.1"]
    headers = dict(part.headers)
    body = ""
    if part.body is not None:
        headers.setdefault("Content-Type", "application/json")
        body = json.dumps(part.body)
    if part.method == "GET":
        headers.setdefault("Accept", "application/json")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += ["", body]
    return lines


def boundary_of(content_type: str) -> str | None:
    match = _BOUNDARY.search(content_type)
    return match.group(1) if match else None


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body as (headers, content); tolerant of LF-only line ends."""
    text = body.decode("utf-8")
    delimiter = "--" + boundary
    pieces = text.split(delimiter)
    out: list[tuple[dict[str, str], bytes]] = []
    for piece in pieces[1:]:
        if piece.startswith("--"):
            break
        piece = piece.removeprefix("\r\n").removeprefix("\n")
        # The line break before the next delimiter belongs to the delimiter, not to the content.
        piece = piece.removesuffix("\r\n") if piece.endswith("\r\n") else piece.removesuffix("\n")
        head, content = _split_head(piece)
        out.append((_headers(head), content.encode("utf-8")))
    return out


def _split_head(text: str) -> tuple[str, str]:
    for separator in ("\r\n\r\n", "\n\n"):
        index = text.find(separator)
        if index >= 0:
            return text[:index], text[index + len(separator):]
    return text, ""


def _headers(block: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return headers


def _lookup(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def parse_batch(body: bytes, content_type: str) -> list[BatchResult]:
    """The answers of a `$batch` response, change sets flattened, in order."""
    return [result for answer in parse_change_sets(body, content_type) for result in answer]


def parse_change_sets(body: bytes, content_type: str) -> list[list[BatchResult]]:
    """The answers of a `$batch` response, one list per top-level part: a change set's answers, or the one answer
    of a request outside any change set, or of the part that made a change set fail."""
    boundary = boundary_of(content_type)
    if not boundary:
        raise ValueError(f"a $batch response needs a multipart boundary, got Content-Type {content_type!r}")
    answers: list[list[BatchResult]] = []
    for headers, content in split_multipart(body, boundary):
        part_type = _lookup(headers, "Content-Type") or ""
        if part_type.lower().startswith("multipart/mixed"):
            answers.append(parse_batch(content, part_type))
            continue
        answers.append([_parse_http_response(content, _lookup(headers, "Content-ID"))])
    return answers


def _parse_http_response(content: bytes, content_id: str | None) -> BatchResult:
    head, body = _split_head(content.decode("utf-8"))
    status_line, _, header_block = head.partition("\n")
    fields = status_line.strip().split(" ", 2)
    if len(fields) < 2 or not fields[1].isdigit():
        raise ValueError(f"not an HTTP status line in a $batch response: {status_line[:80]!r}")
    return BatchResult(int(fields[1]), _headers(header_block), body.encode("utf-8"), content_id)


# -- the server side, for the sandbox ---------------------------------------------------------------------


@dataclass
class InnerRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None


def parse_batch_request(body: bytes, content_type: str) -> list[list[InnerRequest] | InnerRequest]:
    """The requests of a `$batch` POST; a change set is a list of requests."""
    boundary = boundary_of(content_type)
    if not boundary:
        raise ValueError("The $batch request has no multipart boundary in its Content-Type.")
    out: list[list[InnerRequest] | InnerRequest] = []
    for headers, content in split_multipart(body, boundary):
        part_type = _lookup(headers, "Content-Type") or ""
        if part_type.lower().startswith("multipart/mixed"):
            inner_boundary = boundary_of(part_type)
            if not inner_boundary:
                raise ValueError("A change set has no multipart boundary.")
            out.append([_inner(h, c) for h, c in split_multipart(content, inner_boundary)])
        else:
            out.append(_inner(headers, content))
    return out


def _inner(headers: Mapping[str, str], content: bytes) -> InnerRequest:
    if (_lookup(headers, "Content-Type") or "").lower() != "application/http":
        raise ValueError("Each $batch part must have Content-Type: application/http.")
    head, body = _split_head(content.decode("utf-8"))
    request_line, _, header_block = head.partition("\n")
    fields = request_line.strip().split(" ")
    if len(fields) != 3:
        raise ValueError(f"Not an HTTP request line: {request_line[:80]!r}.")
    return InnerRequest(fields[0], fields[1], _headers(header_block), body.encode("utf-8"),
                        _lookup(headers, "Content-ID"))


def build_batch_response(items: Sequence[list[BatchResult] | BatchResult], boundary: str) -> bytes:
    lines: list[str] = []
    for item in items:
        lines.append(f"--{boundary}")
        if isinstance(item, list):
            inner = f"changesetresponse_{uuid.uuid4()}"
            lines += [f"Content-Type: multipart/mixed; boundary={inner}", ""]
            for response in item:
                lines += [f"--{inner}", *_response_part(response)]
            lines += [f"--{inner}--", ""]
        else:
            lines += _response_part(item)
    lines += [f"--{boundary}--", ""]
    return CRLF.join(lines).encode()


def _response_part(response: BatchResult) -> list[str]:
    head = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if response.content_id:
        head.append(f"Content-ID: {response.content_id}")
    phrase = HTTPStatus(response.status).phrase
    lines = [*head, "", f"HTTP/1.1 {response.status} {phrase}"]
    lines += [f"{k}: {v}" for k, v in response.headers.items()]
    lines += ["", response.body.decode("utf-8")]
    return lines
