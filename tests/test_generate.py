"""bench.generate is deterministic and valid; sample_logs/ holds what its README promises."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.generate import append_in_slices, generate_chunks, generate_lines, write_log
from pipeline.events import Event, Rejection, Validator

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_logs"
INVALID_SAMPLE = SAMPLES / "invalid" / "bad_lines.jsonl"
SAMPLE_FILES = sorted(SAMPLES.rglob("*.jsonl"))


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator()


def split_lines(data: bytes) -> list[bytes]:
    """Complete lines of a JSONL file, without newlines; the file must end with one."""
    assert not data or data.endswith(b"\n"), "the last line has no newline"
    return data.split(b"\n")[:-1] if data else []


# --------------------------------------------------------------------------------------------
# bench.generate
# --------------------------------------------------------------------------------------------

def test_same_seed_gives_the_same_bytes() -> None:
    assert b"".join(generate_chunks(3000, 5)) == b"".join(generate_chunks(3000, 5))


def test_different_seeds_give_different_logs() -> None:
    assert b"".join(generate_chunks(500, 5)) != b"".join(generate_chunks(500, 6))


@pytest.mark.parametrize("n", [0, 1, 17, 5000])
def test_line_count(n: int) -> None:
    assert sum(1 for _ in generate_lines(n, 1)) == n


def test_every_generated_line_is_valid(validator: Validator) -> None:
    for seed in (1, 2):
        lines = list(generate_lines(4000, seed))
        rejected = [(line, r) for line in lines
                    if isinstance(r := validator.validate(line), Rejection)]
        assert rejected == []


def test_a_realistic_mix() -> None:
    events = [orjson.loads(line) for line in generate_lines(10_000, 3)]
    types = Counter(e["event_type"] for e in events)
    assert 0.80 < types["agent_token_usage"] / len(events) < 0.90
    assert {"task_progress", "tool_call", "context_compiled", "metric"} <= set(types)
    assert 8 <= len({e["agent"] for e in events}) <= 20
    without_id = sum("event_id" not in e for e in events)
    assert 0.002 < without_id / len(events) < 0.02
    assert len({e["model"] for e in events if "model" in e}) >= 3
    assert any(isinstance(e.get("phase"), str) for e in events)


def test_timestamps_ascend_and_span_about_a_month() -> None:
    stamps = [orjson.loads(line)["ts"] for line in generate_lines(5000, 4)]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    span = _parse_ts(stamps[-1]) - _parse_ts(stamps[0])
    assert 25 <= span.days <= 35


def test_invalid_ratio_injects_rejected_lines(validator: Validator) -> None:
    lines = list(generate_lines(4000, 8, invalid_ratio=0.1))
    rejected = [r for r in map(validator.validate, lines) if isinstance(r, Rejection)]
    assert 0.06 < len(rejected) / len(lines) < 0.14
    assert len({r.reason for r in rejected}) >= 4


def test_every_corrupted_line_is_rejected(validator: Validator) -> None:
    lines = list(generate_lines(300, 9, invalid_ratio=1.0))
    assert not any(isinstance(validator.validate(line), Event) for line in lines)


def test_write_log_splits_over_files(tmp_path: Path) -> None:
    paths = write_log(tmp_path / "logs", 1001, 2, files=3)
    assert [p.name for p in paths] == ["agent-00.jsonl", "agent-01.jsonl", "agent-02.jsonl"]
    counts = [len(split_lines(p.read_bytes())) for p in paths]
    assert sum(counts) == 1001 and max(counts) - min(counts) <= 1
    agents = [{orjson.loads(line)["agent"] for line in split_lines(p.read_bytes())}
              for p in paths]
    assert not agents[0] & agents[1]  # each file is its own producers' log


def test_one_agent_per_file_over_a_year(tmp_path: Path) -> None:
    paths = write_log(tmp_path / "logs", 24_000, 7, files=24, agents=24, days=365)
    events = [[orjson.loads(line) for line in split_lines(p.read_bytes())] for p in paths]
    assert [len({e["agent"] for e in file}) for file in events] == [1] * 24
    assert len({file[0]["agent"] for file in events}) == 24
    for file in events:
        stamps = [e["ts"] for e in file]
        assert stamps == sorted(stamps)
        assert 355 <= (_parse_ts(stamps[-1]) - _parse_ts(stamps[0])).days <= 375


def test_slices_add_up_to_the_whole_log(tmp_path: Path) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    whole = write_log(tmp_path / "whole", 6000, 4, files=3, agents=5, days=20, start=start)
    boundaries = [start + timedelta(days=d, hours=5) for d in (0, 3, 3, 11, 19)]
    sliced = tmp_path / "sliced"
    seen = []
    for boundary in append_in_slices(sliced, 6000, 4, boundaries, files=3, agents=5, days=20,
                                     start=start):
        seen.append(boundary)
        for path in whole:
            lines = split_lines(path.read_bytes())
            before = [line for line in lines if boundary is None
                      or _parse_ts(orjson.loads(line)["ts"]) < boundary]
            assert split_lines((sliced / path.name).read_bytes()) == before
    assert seen == [*boundaries, None]
    assert sorted(p.name for p in sliced.iterdir()) == [p.name for p in whole]


def test_cli_writes_what_write_log_writes(tmp_path: Path) -> None:
    out = tmp_path / "cli.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "bench.generate", "--lines", "300", "--seed", "3", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    expected = write_log(tmp_path / "api.jsonl", 300, 3)[0]
    assert out.read_bytes() == expected.read_bytes()
    assert len(split_lines(out.read_bytes())) == 300


# --------------------------------------------------------------------------------------------
# sample_logs/
# --------------------------------------------------------------------------------------------

def test_sample_logs_exist() -> None:
    assert INVALID_SAMPLE in SAMPLE_FILES
    assert len(SAMPLE_FILES) >= 4 * 7


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: str(p.relative_to(SAMPLES)))
def test_sample_file(path: Path, validator: Validator) -> None:
    results = [validator.validate(line) for line in split_lines(path.read_bytes())]
    assert results
    if path == INVALID_SAMPLE:
        assert all(isinstance(r, Rejection) for r in results)
        reasons = [r.describe() for r in results if isinstance(r, Rejection)]
        assert len(set(reasons)) == len(reasons) >= 12
    else:
        assert [r for r in results if isinstance(r, Rejection)] == []


def _sample_events() -> list[dict[str, Any]]:
    files = (p for p in SAMPLE_FILES if p != INVALID_SAMPLE)
    return [orjson.loads(line) for path in files for line in split_lines(path.read_bytes())]


def _parse_ts(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _utc_day(ts: str) -> str:
    return _parse_ts(ts).astimezone(UTC).date().isoformat()


def _daily_tokens(events: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Tokens per (agent, UTC day) by the rules of DESIGN.md "Counting tokens"."""
    totals: dict[tuple[str, str], int] = defaultdict(int)
    usage = {e.get("event_id") or id(e): e for e in events
             if e["event_type"] == "agent_token_usage"}
    for e in usage.values():
        totals[e["agent"], _utc_day(e["ts"])] += sum(
            e.get(k, 0) for k in ("input_tokens", "output_tokens", "cache_read_tokens",
                                  "cache_write_tokens"))
    with_usage = {(e["agent"], e.get("task")) for e in usage.values()}
    snapshots = sorted((e for e in events if e["event_type"] == "task_progress"
                        and "tokens_used" in e and (e["agent"], e["task"]) not in with_usage),
                       key=lambda e: _parse_ts(e["ts"]))
    previous: dict[tuple[str, str], int] = defaultdict(int)
    for e in snapshots:
        total = e["tokens_used"]["total"]
        totals[e["agent"], _utc_day(e["ts"])] += total - previous[e["agent"], e["task"]]
        previous[e["agent"], e["task"]] = total
    return totals


def test_sample_seed_day_matches_the_seed_report() -> None:
    events = _sample_events()
    totals = _daily_tokens(events)
    assert {a: totals[a, "2025-08-29"] for a in ("claude", "gemini", "codex")} == {
        "claude": 45_000, "gemini": 32_000, "codex": 28_000}
    completed = Counter(e["agent"] for e in {(e["agent"], e["task"]): e for e in events
                                             if e["event_type"] == "task_progress"
                                             and e.get("status") == "completed"
                                             and _utc_day(e["ts"]) == "2025-08-29"}.values())
    assert [completed[a] for a in ("claude", "gemini", "codex")] == [6, 5, 4]
    assert totals["claude", "2025-08-28"] == 29_750  # the retried line counts once


def test_sample_covers_the_contract() -> None:
    events = _sample_events()
    assert {e["event_type"] for e in events} == {
        "agent_token_usage", "task_progress", "context_compiled", "tool_call", "budget_alert",
        "metric"}
    assert len({_utc_day(e["ts"]) for e in events}) == 7
    assert {"claude", "gemini", "codex", "cursor", "yolo"} <= {e["agent"] for e in events}
    ids = Counter(e["event_id"] for e in events if "event_id" in e)
    assert [i for i, n in ids.items() if n > 1] == ["01K3RB8RR61W91RA8WWYBKJBEA"]
    assert any("event_id" not in e for e in events)
    yolo_example = {"agent": "yolo", "role": "dev", "phase": 1, "input_tokens": 5000,
                    "output_tokens": 1200, "cache_read_tokens": 3000, "cache_write_tokens": 800}
    assert any(yolo_example.items() <= e.items() for e in events)
