"""Checking whole files line by line, for `tally validate`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import SourceError
from pipeline.events import Rejection, Validator
from pipeline.settings import TailerSettings

DEFAULT_MAX_LINE_BYTES = TailerSettings().max_line_bytes
READ_CHUNK = 1 << 20  # how much of an over-long line is read at a time, to find its end


@dataclass(frozen=True)
class Finding:
    """One invalid line: its 1-based number and why."""

    line: int
    rejection: Rejection


@dataclass
class FileReport:
    """What validating one file found."""

    path: Path
    lines: int = 0
    invalid: int = 0
    findings: list[Finding] = field(default_factory=list)


def validate_file(path: Path, validator: Validator, max_errors: int = 1000,
                  max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> FileReport:
    """Validate every line of a file; a partial last line is reported as such.

    A line longer than `max_line_bytes` (newline not counted, as the tailer counts) is
    `line_too_long`, the tailer's verdict too, and is never read whole.
    """
    report = FileReport(path)
    try:
        with open(path, "rb") as handle:
            _validate_lines(handle, validator, max_errors, max_line_bytes, report)
    except OSError as exc:
        raise SourceError(exc.strerror or str(exc), path=path) from exc
    return report


def _validate_lines(handle: BinaryIO, validator: Validator, max_errors: int, limit: int,
                    report: FileReport) -> None:
    for number, (line, length, ended) in enumerate(_lines(handle, limit), start=1):
        report.lines += 1
        if not ended:
            result: object = Rejection("truncated_tail", "the last line has no newline",
                                       hint="producers must end every line with \\n")
        elif length > limit:
            result = Rejection.line_too_long(length, limit)
        else:
            result = validator.validate(line)
        if isinstance(result, Rejection):
            report.invalid += 1
            if len(report.findings) < max_errors:
                report.findings.append(Finding(number, result))


def _lines(handle: BinaryIO, limit: int) -> Iterator[tuple[bytes, int, bool]]:
    """Each line without its newline (only its head past `limit`), its length, whether it ended."""
    while head := handle.readline(limit + 1):
        if head.endswith(b"\n"):
            yield head[:-1], len(head) - 1, True
            continue
        length, ended = len(head), False
        while length > limit and (more := handle.readline(READ_CHUNK)):
            ended = more.endswith(b"\n")
            length += len(more) - ended
            if ended:
                break
        yield head, length, ended


def validate_files(paths: Iterable[Path], validator: Validator, max_errors: int = 1000,
                   max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> list[FileReport]:
    """Validate several files; `max_errors` caps the findings kept per file."""
    return [validate_file(path, validator, max_errors, max_line_bytes) for path in paths]
