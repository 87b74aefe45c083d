"""pipeline.validation: whole files line by line, with the tailer's line limit and verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import make_home, sized_event
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.validation as validation
from pipeline.events import Event, Rejection, Validator
from pipeline.stage import iter_quarantine
from pipeline.tailer import Tailer
from pipeline.validation import validate_file, validate_files

VALIDATOR = Validator()


def padded_line(length: int, ending: bytes = b"\n") -> bytes:
    """A valid event line of exactly `length` bytes as the tailer counts them (all but \\n)."""
    line = orjson.dumps(sized_event(length - (len(ending) - 1))) + ending
    assert len(line) - 1 == length
    assert isinstance(VALIDATOR.validate(line[:-1]), Event)
    return line


def verdicts(path: Path, limit: int) -> dict[int, tuple[str, str]]:
    """validate_file's findings: line number -> (reason, found)."""
    report = validate_file(path, VALIDATOR, max_line_bytes=limit)
    return {f.line: (f.rejection.reason, f.rejection.found) for f in report.findings}


# --------------------------------------------------------------------------------------------
# the line limit
# --------------------------------------------------------------------------------------------

def test_a_line_of_exactly_the_limit_is_valid_one_more_is_too_long(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(padded_line(1024) + padded_line(1025) + padded_line(300))
    report = validate_file(path, VALIDATOR, max_line_bytes=1024)
    assert (report.lines, report.invalid) == (3, 1)
    [finding] = report.findings
    assert finding.line == 2
    assert finding.rejection == Rejection.line_too_long(1025, 1024)
    assert finding.rejection.describe() == \
        "line_too_long: line of 1,025 bytes exceeds the 1,024-byte limit"
    assert "max_line_bytes" in finding.rejection.hint


def test_the_default_limit_is_the_tailers_one_mib(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(padded_line(1 << 20) + padded_line(2_000_000))
    assert verdicts(path, validation.DEFAULT_MAX_LINE_BYTES) == \
        {2: ("line_too_long", "2000000")}
    report = validate_file(path, VALIDATOR)
    assert [f.line for f in report.findings] == [2]


def test_a_line_longer_than_a_read_chunk_is_measured_whole(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    size = validation.READ_CHUNK * 3 + 17
    path.write_bytes(padded_line(200) + b"x" * size + b"\n" + padded_line(200))
    assert verdicts(path, 1024) == {2: ("line_too_long", str(size))}


def test_an_unterminated_last_line_is_a_truncated_tail_whatever_its_length(
        tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(padded_line(200) + padded_line(5000)[:-1])
    assert verdicts(path, 1024) == {2: ("truncated_tail", "")}


def test_validate_files_passes_the_limit_on(tmp_path: Path) -> None:
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for path in paths:
        path.write_bytes(padded_line(2000))
    reports = validate_files(paths, VALIDATOR, max_line_bytes=1999)
    assert [r.invalid for r in reports] == [1, 1]
    assert [r.invalid for r in validate_files(paths, VALIDATOR, max_line_bytes=2000)] == [0, 0]


@settings(max_examples=300, deadline=None)
@given(content=st.lists(st.sampled_from([b"a", b"\n", b"{}", b"\r", b"\xff", b" "]),
                        max_size=60).map(b"".join),
       limit=st.integers(min_value=0, max_value=12),
       chunk=st.integers(min_value=1, max_value=5))
def test_lines_and_verdicts_match_a_plain_split(tmp_path_factory: pytest.TempPathFactory,
                                                content: bytes, limit: int, chunk: int) -> None:
    path = tmp_path_factory.mktemp("split") / "a.jsonl"
    path.write_bytes(content)
    *complete, tail = content.split(b"\n")
    expected: dict[int, tuple[str, str]] = {}
    for number, line in enumerate(complete, start=1):
        if len(line) > limit:
            expected[number] = ("line_too_long", str(len(line)))
        elif isinstance(verdict := VALIDATOR.validate(line), Rejection):
            expected[number] = (verdict.reason, verdict.found)
    if tail:
        expected[len(complete) + 1] = ("truncated_tail", "")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validation, "READ_CHUNK", chunk)  # long lines read in many pieces
        report = validate_file(path, VALIDATOR, max_line_bytes=limit)
    assert report.lines == len(complete) + bool(tail)
    assert {f.line: (f.rejection.reason, f.rejection.found) for f in report.findings} == expected


# --------------------------------------------------------------------------------------------
# the same verdict as the tailer
# --------------------------------------------------------------------------------------------

def tailer_verdicts(home: Any, lines: list[bytes]) -> dict[int, tuple[str, str]]:
    """What the tailer made of each line: line number -> (reason, length) of its quarantine."""
    starts = [sum(map(len, lines[:i])) for i in range(len(lines))]
    with Tailer(home) as tailer:
        result = tailer.poll()
    records = list(iter_quarantine(home.quarantine))
    assert result.staged + result.quarantined == len(lines)
    return {starts.index(r["offset"]) + 1: (r["reason"], str(r["length"])) for r in records}


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_validate_and_the_tailer_agree_at_the_limit(tmp_path: Path, ending: bytes) -> None:
    limit = 1024
    home = make_home(tmp_path / "home", f"[tailer]\nmax_line_bytes = {limit}\n")
    lines = [padded_line(limit, ending), padded_line(limit + 1, ending),
             padded_line(limit - 1, ending), b"z" * (validation.READ_CHUNK + 5) + ending,
             padded_line(limit + 2, ending)]
    path = home.logs / "a.jsonl"
    path.write_bytes(b"".join(lines))
    from_validate = verdicts(path, home.tailer.max_line_bytes)
    assert from_validate == {2: ("line_too_long", str(limit + 1)),
                             4: ("line_too_long", str(validation.READ_CHUNK + 5 + len(ending) - 1)),
                             5: ("line_too_long", str(limit + 2))}
    assert tailer_verdicts(home, lines) == from_validate
    messages = {r["message"] for r in iter_quarantine(home.quarantine)}
    report = validate_file(path, VALIDATOR, max_line_bytes=limit)
    assert {f.rejection.message for f in report.findings} == messages
    assert isinstance(VALIDATOR.validate(lines[0][:-1]), Event)
