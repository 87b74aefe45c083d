"""The agent-log fixture writers (tests/agentlogs.py): files land where the CLIs (and ccusage)
put them, lines are the JSON the CLIs write except the deliberately broken ones, the stateful
builders keep their running totals, output is deterministic; and (slow, needs npm) ccusage
20.0.24 reads every scenario to the per-day token counts pinned in EXPECTED."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from agentlogs import (
    CASES,
    CLAUDE_CASES,
    CODEX_CASES,
    GEMINI_CASES,
    OPENCODE_CASES,
    claude_projects_dir,
    opencode_data_dir,
    scenario,
)
from ccusage_oracle import ccusage_binary, ccusage_daily, ccusage_unavailable_reason, token_totals

BROKEN = {"claude": 2, "codex": 2, "gemini": 2}  # garbage + truncated line in each broken case


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _parsed(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _lines(path)]


@pytest.mark.parametrize("kind", ["claude", "codex", "gemini"])
def test_lines_parse_except_the_broken_ones(tmp_path: Path, kind: str) -> None:
    broken = {p.relative_to(tmp_path / "b") for p in CASES[kind]["broken"](tmp_path / "b")}
    paths = scenario(kind, tmp_path / "a")
    assert paths and all(p.is_file() for p in paths)
    bad = 0
    for path in paths:
        if path.suffix != ".jsonl":
            continue
        is_broken = path.relative_to(tmp_path / "a") in broken
        for line in _lines(path):
            try:
                assert isinstance(json.loads(line), dict)
            except json.JSONDecodeError:
                assert is_broken, f"{path}: {line[:80]}"
                bad += 1
        assert path.read_bytes().endswith(b"\n") != is_broken  # broken: no final newline
    assert bad == BROKEN[kind]


def test_claude_layout_and_lines(tmp_path: Path) -> None:
    paths = scenario("claude", tmp_path)
    projects = claude_projects_dir(tmp_path)
    for path in paths:
        rel = path.relative_to(projects).parts
        assert rel[0].startswith("-home-dev-")
        assert len(rel) == 2 or (len(rel) == 4 and rel[2] == "subagents"
                                 and rel[3].startswith("agent-"))
    subagent = next(p for p in paths if "subagents" in p.parts)
    assert all(line["isSidechain"] and line["agentId"] for line in _parsed(subagent))
    for path in paths:
        for raw in _lines(path):
            line = json.loads(raw) if raw.startswith("{") and raw.endswith("}") else {}
            if line.get("type") == "assistant":
                assert '"usage":{' in raw  # ccusage's byte prefilter sees it
                assert line["sessionId"] == path.relative_to(projects).parts[1].removesuffix(
                    ".jsonl")
                assert line["message"]["role"] == "assistant"


def test_claude_streamed_message_grows_its_output(tmp_path: Path) -> None:
    [path] = CLAUDE_CASES["streamed"](tmp_path)
    lines = [x for x in _parsed(path) if x.get("message", {}).get("id") == "msg_01Stream"]
    assert len(lines) == 3 and len({x["requestId"] for x in lines}) == 1
    outs = [x["message"]["usage"]["output_tokens"] for x in lines]
    assert outs == sorted(outs) and outs[-1] == 412
    blocks = [x["message"]["content"][0]["type"] for x in lines]
    assert blocks == ["text", "tool_use", "tool_use"]
    assert [x["parentUuid"] for x in lines[1:]] == [x["uuid"] for x in lines[:-1]]


def test_claude_progress_lines_carry_the_subagent_message(tmp_path: Path) -> None:
    main, sub = CLAUDE_CASES["subagent"](tmp_path)
    progress = [x for x in _parsed(main) if x["type"] == "progress"]
    direct = {x["message"]["id"] for x in _parsed(sub) if x["type"] == "assistant"}
    carried = {x["data"]["message"]["message"]["id"] for x in progress}
    assert direct == {"msg_01Sub0", "msg_01Sub1"} and carried == direct | {"msg_01SubOnly"}


def test_codex_rollouts(tmp_path: Path) -> None:
    [path] = CODEX_CASES["reemit"](tmp_path)
    rel = path.relative_to(tmp_path / ".codex" / "sessions")
    assert rel.parts[:3] == ("2025", "09", "02")
    assert rel.name.startswith("rollout-2025-09-02T09-00-00-") and rel.suffix == ".jsonl"
    lines = _parsed(path)
    meta = lines[0]
    assert meta["type"] == "session_meta" and meta["payload"]["git"]["branch"] == "main"
    assert meta["payload"]["cwd"] == "/home/dev/reemit" and rel.stem.endswith(
        meta["payload"]["id"])
    counts = [x["payload"] for x in lines if x["type"] == "event_msg"
              and x["payload"]["type"] == "token_count"]
    assert [c["info"] is None for c in counts] == [False, True, False, False, False]
    infos = [c["info"] for c in counts if c["info"]]
    assert infos[0]["total_token_usage"] == infos[1]["total_token_usage"] == infos[2][
        "total_token_usage"]  # the re-emits
    last = infos[-1]["last_token_usage"]
    assert infos[-1]["total_token_usage"]["input_tokens"] == 2000 + last["input_tokens"]
    assert all(u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
               for i in infos for u in (i["total_token_usage"], i["last_token_usage"]))


def test_codex_tool_calls_model_switch_and_archive(tmp_path: Path) -> None:
    [turns] = CODEX_CASES["turns"](tmp_path)
    items = [x["payload"] for x in _parsed(turns) if x["type"] == "response_item"]
    calls = [i for i in items if i["type"] == "function_call"]
    outputs = {i["call_id"] for i in items if i["type"] == "function_call_output"}
    assert [c["name"] for c in calls] == ["shell", "apply_patch"]
    assert {c["call_id"] for c in calls} == outputs
    [switch] = CODEX_CASES["model_switch"](tmp_path)
    models = [x["payload"]["model"] for x in _parsed(switch) if x["type"] == "turn_context"]
    assert models == ["gpt-5-codex", "gpt-5", "gpt-5.1-codex"]
    archived, both, both_archived = CODEX_CASES["archived"](tmp_path)
    codex = tmp_path / ".codex"
    assert archived.is_relative_to(codex / "archived_sessions")
    assert both.relative_to(codex / "sessions") == both_archived.relative_to(
        codex / "archived_sessions")


def test_gemini_chats(tmp_path: Path) -> None:
    [path] = GEMINI_CASES["reappend"](tmp_path)
    project_hash = hashlib.sha256(b"/home/dev/reappend").hexdigest()
    assert path.parent == tmp_path / ".gemini" / "tmp" / project_hash / "chats"
    lines = _parsed(path)
    assert lines[0]["projectHash"] == project_hash
    assert path.name == f"session-2025-09-02T09-00-{lines[0]['sessionId'][:8]}.jsonl"
    replies = [x for x in lines if x.get("type") == "gemini"]
    ids = [x["id"] for x in replies]
    assert len(ids) == 4 and len(set(ids)) == 2 and ids[:2] == ids[2:]
    assert replies[0]["tokens"] is None and replies[2]["tokens"]["input"] == 1000
    [legacy] = GEMINI_CASES["legacy_json"](tmp_path)
    record = json.loads(legacy.read_text())
    assert legacy.suffix == ".json" and len(record["messages"]) == 3
    main, sub = GEMINI_CASES["subagent"](tmp_path)
    assert sub.parent.name == _parsed(main)[0]["sessionId"]
    set_rewind = _parsed(GEMINI_CASES["set_rewind"](tmp_path)[0])
    assert any("$rewindTo" in x for x in set_rewind) and any("$set" in x for x in set_rewind)


def test_opencode_db_and_legacy_files(tmp_path: Path) -> None:
    [db_path] = OPENCODE_CASES["db"](tmp_path)
    assert db_path == opencode_data_dir(tmp_path) / "opencode.db"
    with sqlite3.connect(db_path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(message)")]
        rows = db.execute("SELECT id, session_id, time_created, data FROM message").fetchall()
    assert columns == ["id", "session_id", "time_created", "time_updated", "data"]
    assert len(rows) == 4
    for msg_id, session_id, created, data in rows:
        info = json.loads(data)
        assert msg_id.startswith("msg_") and session_id.startswith("ses_")
        assert "id" not in info and "sessionID" not in info and info["time"]["created"] == created
    [legacy] = OPENCODE_CASES["legacy"](tmp_path)
    info = json.loads(legacy.read_text())
    assert legacy.relative_to(opencode_data_dir(tmp_path)).parts == (
        "storage", "message", info["sessionID"], f"{info['id']}.json")


@pytest.mark.parametrize("kind", sorted(CASES))
def test_scenarios_are_deterministic(tmp_path: Path, kind: str) -> None:
    a = scenario(kind, tmp_path / "a")
    b = scenario(kind, tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b")
                                                         for p in b]
    for pa, pb in zip(a, b, strict=True):
        if pa.suffix == ".db":
            query = "SELECT * FROM message ORDER BY id"
            with sqlite3.connect(pa) as da, sqlite3.connect(pb) as db:
                assert da.execute(query).fetchall() == db.execute(query).fetchall()
        else:
            assert pa.read_bytes() == pb.read_bytes()


# (input, output, cacheCreation, cacheRead, total) per day of `scenario(kind, home)`, as
# `ccusage <kind> daily --json --offline -z UTC` 20.0.24 counts them. One case per day (see
# the case tables in agentlogs.py); multi-day cases span the last days.
EXPECTED: dict[str, dict[str, tuple[int, int, int, int, int]]] = {
    "claude": {
        "2025-09-01": (15, 508, 2400, 38400, 41323),
        "2025-09-02": (150, 300, 0, 2000, 2450),
        "2025-09-03": (40, 230, 0, 0, 270),
        "2025-09-04": (14, 22, 0, 200, 236),
        "2025-09-05": (20, 40, 3500, 0, 3560),
        "2025-09-06": (40, 60, 0, 0, 100),
        "2025-09-07": (11, 22, 0, 0, 33),
        "2025-09-08": (600, 150, 0, 3000, 3750),
        "2025-09-09": (250000, 1000, 0, 10000, 261000),
        "2025-09-10": (221, 23584, 32278, 340010, 396093),
        "2025-09-11": (117, 9702, 9000, 224133, 242952),
        "2025-09-12": (151, 11397, 20129, 487845, 519522),
        "2025-09-13": (34, 960, 0, 4600, 5594),
        "2025-09-14": (1, 1, 0, 0, 2),
        "2025-09-15": (243000, 1200, 6400, 20000, 270600),
    },
    "codex": {
        "2025-09-01": (1500, 850, 0, 6700, 9050),
        "2025-09-02": (1500, 150, 0, 1000, 2650),
        "2025-09-03": (3000, 300, 0, 0, 3300),
        "2025-09-04": (1400, 30, 0, 1600, 3030),
        "2025-09-05": (2030, 203, 0, 0, 2233),
        "2025-09-06": (400, 40, 0, 0, 440),
        "2025-09-07": (600, 70, 0, 100, 770),
        "2025-09-08": (116271, 23549, 0, 253080, 392900),
        "2025-09-09": (29036, 4897, 0, 15010, 48943),
        "2025-09-10": (101, 11, 0, 0, 112),
    },
    "gemini": {
        "2025-09-01": (4808, 423, 0, 26526, 32676),
        "2025-09-02": (1800, 180, 0, 0, 1980),
        "2025-09-03": (12000, 200, 0, 16000, 28250),
        "2025-09-04": (800, 80, 0, 0, 880),
        "2025-09-05": (2000, 30, 0, 1000, 3030),
        "2025-09-06": (3000, 300, 0, 0, 3300),
        "2025-09-07": (500, 50, 0, 0, 550),
        "2025-09-08": (101, 11, 0, 0, 112),
        "2025-09-09": (70753, 5029, 0, 151442, 229931),
        "2025-09-10": (74170, 4768, 0, 170597, 251316),
    },
    "opencode": {
        "2025-09-01": (3000, 300, 20, 1010, 4330),
        "2025-09-02": (300, 30, 0, 0, 330),
        "2025-09-03": (400, 40, 0, 0, 440),
        "2025-09-04": (2000, 200, 0, 0, 3200),
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_ccusage_reads_the_scenarios(tmp_path: Path, kind: str) -> None:
    if ccusage_binary() is None:
        pytest.skip(f"ccusage unavailable: {ccusage_unavailable_reason()}")
    scenario(kind, tmp_path)
    got = {day: tuple(v.values()) for day, v in token_totals(ccusage_daily(kind, tmp_path)).items()}
    assert got == EXPECTED[kind]
