"""Parity with ccusage 20.0.24: `tally import` then `tally report --by day` gives ccusage's
token totals day by day for each CLI, and its cost within 1 %, over the fixtures of
tests/agentlogs.py. ccusage is installed from npm into a cache directory; without npm the
test is skipped with the reason.

A few fixture days are counted otherwise on purpose; for those the test pins what tally
counts instead, and why (DIFFERENT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from agentlogs import scenario
from ccusage_oracle import ccusage_binary, ccusage_daily, ccusage_unavailable_reason
from click.testing import CliRunner

from pipeline.cli import main

KINDS = {"claude": "claude-code", "codex": "codex", "gemini": "gemini", "opencode": "opencode"}
ENVS = ("CLAUDE_CONFIG_DIR", "CODEX_HOME", "GEMINI_DATA_DIR", "OPENCODE_DATA_DIR",
        "XDG_CONFIG_HOME", "TALLY_HOME")
# (kind, day) -> what tally counts beside ccusage's figures (input, output, cache write,
# cache read), and why.
DIFFERENT: dict[tuple[str, str], tuple[tuple[int, int, int, int], str]] = {
    ("claude", "2025-09-04"): ((-14, -22, 0, -200),
                               "usage lines without message.id go to the quarantine"),
    ("claude", "2025-09-07"): ((-1, -2, 0, 0), "an unterminated last line waits for its newline"),
    ("claude", "2025-09-14"): ((11_100, 1_100, 0, 0),
                               "lines ccusage skips count: a microsecond timestamp, "
                               '"cwd":null, an empty requestId'),
    ("codex", "2025-09-10"): ((-1, -1, 0, 0), "an unterminated last line waits for its newline"),
    ("gemini", "2025-09-05"): ((-2000, -30, 0, -1000),
                               "legacy session-*.json files are not read"),
    ("gemini", "2025-09-08"): ((-1, -1, 0, 0), "an unterminated last line waits for its newline"),
}
# Claude Sonnet over 200k: Anthropic bills the whole request at the long-context rates;
# ccusage prices each bucket's tokens past 200k alone. tally follows Anthropic.
WHOLE_REQUEST_COST = {("claude", "2025-09-09"): 250_000 * 6e-6 + 10_000 * 0.6e-6 + 1000 * 22.5e-6}


@pytest.fixture(scope="module")
def ccusage() -> Path:
    binary = ccusage_binary()
    if binary is None:
        pytest.skip(f"ccusage 20.0.24 cannot be installed: {ccusage_unavailable_reason()}")
    return binary


def _tally_days(kind: str, fake_home: Path, tally_home: Path) -> dict[str, dict[str, Any]]:
    runner = CliRunner()
    imported = runner.invoke(main, ["import", KINDS[kind], "--home", str(tally_home), "-q"])
    assert imported.exit_code == 0, imported.output
    report = runner.invoke(main, ["report", "--by", "day", "--format", "json",
                                  "--home", str(tally_home)])
    assert report.exit_code == 0, report.output
    return {row["day"]: row for row in orjson.loads(report.stdout)}


@pytest.mark.parametrize("kind", list(KINDS))
def test_daily_totals_equal_ccusage(ccusage: Path, tmp_path: Path, kind: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake_home = tmp_path / "user"
    scenario(kind, fake_home)
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)
    oracle = ccusage_daily(kind, fake_home)
    monkeypatch.setenv("HOME", str(fake_home))
    tally = _tally_days(kind, fake_home, tmp_path / "tally")
    assert oracle, "ccusage counted nothing: the fixtures are not where it looks"
    for day, theirs in oracle.items():
        shift, why = DIFFERENT.get((kind, day), ((0, 0, 0, 0), ""))
        ours = tally.get(day, {})
        in_, out, write, read = (theirs["inputTokens"], theirs["outputTokens"],
                                 theirs["cacheCreationTokens"], theirs["cacheReadTokens"])
        # ccusage's total holds what it bills as output beyond outputTokens (Gemini's thoughts,
        # opencode's reasoning); tally counts those in output_tokens.
        out += theirs["totalTokens"] - (in_ + out + write + read)
        expected = (in_ + shift[0], out + shift[1], write + shift[2], read + shift[3])
        found = tuple(ours.get(k, 0) for k in ("input_tokens", "output_tokens",
                                               "cache_write_tokens", "cache_read_tokens"))
        assert found == expected, f"{kind} {day}: {why or 'should equal ccusage'}"
        if shift == (0, 0, 0, 0):
            assert ours["total_tokens"] == theirs["totalTokens"], f"{kind} {day}"
            _assert_cost(kind, day, ours, theirs)
    assert set(tally) <= set(oracle)


def _assert_cost(kind: str, day: str, ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    cost = theirs["totalCost"]
    if (kind, day) in WHOLE_REQUEST_COST:
        cost = WHOLE_REQUEST_COST[(kind, day)]
    assert ours["unpriced_events"] == 0, f"{kind} {day}: a model without a price"
    assert ours["cost_usd"] == pytest.approx(cost, rel=0.01, abs=1e-9), f"{kind} {day}"


def test_a_second_import_reads_nothing_again(ccusage: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fake_home = tmp_path / "user"
    scenario("claude", fake_home)
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(fake_home))
    first = _tally_days("claude", fake_home, tmp_path / "tally")
    again = _tally_days("claude", fake_home, tmp_path / "tally")
    assert again == first
    assert len(first) >= 12
