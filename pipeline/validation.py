"""Checking whole files line by line, for `tally validate`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import SourceError
from pipeline.events import Rejection, Validator


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


def validate_file(path: Path, validator: Validator, max_errors: int = 1000) -> FileReport:
    """Validate every line of a file; a partial last line is reported as such."""
    report = FileReport(path)
    try:
        with open(path, "rb") as handle:
            _validate_lines(handle, validator, max_errors, report)
    except OSError as exc:
        raise SourceError(exc.strerror or str(exc), path=path) from exc
    return report


def _validate_lines(handle: Iterable[bytes], validator: Validator, max_errors: int,
                    report: FileReport) -> None:
    for number, raw in enumerate(handle, start=1):
        report.lines += 1
        if not raw.endswith(b"\n"):
            result: object = Rejection("truncated_tail", "the last line has no newline",
                                       hint="producers must end every line with \\n")
        else:
            result = validator.validate(raw[:-1])
        if isinstance(result, Rejection):
            report.invalid += 1
            if len(report.findings) < max_errors:
                report.findings.append(Finding(number, result))


def validate_files(paths: Iterable[Path], validator: Validator,
                   max_errors: int = 1000) -> list[FileReport]:
    """Validate several files; `max_errors` caps the findings kept per file."""
    return [validate_file(path, validator, max_errors) for path in paths]
