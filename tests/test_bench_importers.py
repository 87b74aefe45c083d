"""bench.importers' Claude Code corpus, generated tiny: the shape of agent-logs.md §2, the cache
and the appends (nothing is timed)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from bench.importers import (
    ClaudeCorpus,
    append_turn,
    cached_corpus,
    transcripts,
    work_copy,
    write_corpus,
)

USAGE = b'"usage":{'
STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("corpus")
    write_corpus(home, seed=1, size_mb=2)
    return home


def lines_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


def every_line(home: Path) -> list[tuple[Path, bytes, Any]]:
    return [(path, raw, json.loads(raw))
            for path in sorted((home / ".claude" / "projects").rglob("*.jsonl"))
            for raw in lines_of(path)]


def test_files_land_under_projects_in_claude_codes_layout(corpus: Path) -> None:
    projects = corpus / ".claude" / "projects"
    files = sorted(p.relative_to(projects) for p in projects.rglob("*"))
    found = [p for p in files if p.suffix == ".jsonl"]
    assert found and all(len(p.parts) in (2, 4) for p in found)
    sessions = [p for p in found if len(p.parts) == 2]
    subagents = [p for p in found if len(p.parts) == 4]
    assert len(sessions) > 3 and subagents
    for path in subagents:
        assert path.parts[2] == "subagents" and path.name.startswith("agent-")
        assert projects / path.parts[0] / f"{path.parts[1]}.jsonl" in {projects / s
                                                                       for s in sessions}
    assert all(not p.parts[0].startswith("/") and "/" not in p.parts[0] for p in found)


def test_lines_are_compact_json_and_only_usage_lines_carry_usage(corpus: Path) -> None:
    kinds: dict[str, int] = defaultdict(int)
    for path, raw, line in every_line(corpus):
        assert json.dumps(line, separators=(",", ":")).encode() == raw  # compact, as written
        kind = line["type"]
        kinds[kind] += 1
        if kind == "assistant" or (kind == "progress" and "message" in line["data"]):
            assert USAGE in raw
            assert STAMP.fullmatch(line["timestamp"])
        else:
            assert USAGE not in raw, (path, raw[:200])
        if "sessionId" in line:
            assert line["isSidechain"] is ("subagents" in path.parts)
    assert {"assistant", "user", "summary", "file-history-snapshot", "progress"} <= set(kinds)


def test_a_response_is_one_line_per_content_block_with_growing_output(corpus: Path) -> None:
    responses: dict[str, list[dict[str, Any]]] = defaultdict(list)
    models, days = set(), set()
    for _, _, line in every_line(corpus):
        if line["type"] == "assistant":
            responses[line["message"]["id"]].append(line)
            models.add(line["message"]["model"])
            days.add(line["timestamp"][:10])
    assert len(models) >= 3 and models <= set(ClaudeCorpus.MODELS) and len(days) >= 3
    repeated = [lines for lines in responses.values() if len(lines) > 1]
    assert len(repeated) > len(responses) // 3
    for lines in responses.values():
        assert len({line["requestId"] for line in lines}) == 1
        assert all(len(line["message"]["content"]) == 1 for line in lines)
        outputs = [line["message"]["usage"]["output_tokens"] for line in lines]
        assert outputs == sorted(outputs)
        fixed = [{k: v for k, v in line["message"]["usage"].items() if k != "output_tokens"}
                 for line in lines]
        assert all(f == fixed[0] for f in fixed)
    blocks = {line["message"]["content"][0]["type"] for lines in responses.values()
              for line in lines}
    assert {"text", "tool_use"} <= blocks


def test_tool_results_are_user_lines_of_varied_size(corpus: Path) -> None:
    sizes = [len(raw) for _, raw, line in every_line(corpus)
             if line["type"] == "user" and isinstance(line["message"]["content"], list)
             and line["message"]["content"][0]["type"] == "tool_result"]
    assert len(sizes) > 20 and max(sizes) > 10 * min(sizes)


def test_the_same_seed_gives_the_same_corpus(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_corpus(tmp_path / name, seed=7, size_mb=0.3)
    a, b = (sorted((tmp_path / n).rglob("*.jsonl")) for n in ("a", "b"))
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))


def test_small_files_mode_stops_at_the_file_count(tmp_path: Path) -> None:
    done = write_corpus(tmp_path, seed=1, files=40, small=True)
    assert 40 <= done["files"] == len(list(tmp_path.rglob("*.jsonl"))) < 45


def test_the_cache_is_reused_and_appends_go_to_private_copies(tmp_path: Path) -> None:
    spec = {"size_mb": 0.3, "seed": 3, "small": False, "generator": "test"}
    home, first = cached_corpus(spec, tmp_path / "cache")
    again, second = cached_corpus(spec, tmp_path / "cache")
    assert home == again and not first["reused"] and second["reused"]
    target = transcripts(home)[0]
    before = target.read_bytes()
    work = work_copy(home, tmp_path / "work", [target])
    copy = work / target.relative_to(home)
    session = json.loads(lines_of(copy)[-1])["sessionId"]
    assert append_turn(copy, 1) > 0
    assert target.read_bytes() == before  # the cached corpus is untouched
    added = lines_of(copy)[len(before.split(b"\n")) - 1:]
    parsed = [json.loads(raw) for raw in added]
    assert any(USAGE in raw for raw in added)
    assert {line["sessionId"] for line in parsed if "sessionId" in line} == {session}
