"""ccusage 20.0.24 as a test oracle: installed once with npm into a cache dir, run on a fake HOME
with `<kind> daily --json --offline -z <tz>`, its rows keyed by day.

    binary = ccusage_binary()          # None (and ccusage_unavailable_reason()) without npm
    days = ccusage_daily("claude", home)
    days["2025-09-01"]["inputTokens"]

Rows are normalized to Claude's shape: inputTokens, outputTokens, cacheCreationTokens,
cacheReadTokens, totalTokens, totalCost, modelsUsed, modelBreakdowns (codex: one per model with
its own fields; codex writes costUSD, copied to totalCost); other fields are kept as written.

What 20.0.24 does, measured on tests/agentlogs.py fixtures (`claude daily` etc.):
claude  - dedupe is global over ~/.claude and ~/.config/claude: key (message.id, requestId); with
          no requestId, (message.id, timestamp instant, sessionId or the file's session); a
          second pass matches message.id alone when either line is sidechain. Winner: the
          non-sidechain line, else the larger in+out+cacheCreate+cacheRead, else the larger cost.
          No message.id: never deduped. type:progress lines (data.message) count and dedupe with
          the direct subagent line. <synthetic>: tokens count, cost 0, not in modelsUsed.
          Skipped: no output_tokens, timestamps other than ...SS[.mmm](Z|+HH:MM), version not
          d.d.d*, empty requestId/sessionId/id/model, `"cwd":null` (etc.) anywhere in the line.
          cacheCreation = 5m + 1h; 1h priced 2x input. Sonnet 4/4.5 >200k: marginal per bucket
          per line (first 200k of each bucket at base).
codex   - per file: last_token_usage when total_token_usage advanced (or is absent), else
          nothing; totals-only -> delta. input = input - cached (cached clamped to input),
          cacheRead = cached, output incl. reasoning, total = last.total_tokens (else in+out).
          Global dedupe of (timestamp, model, tokens) events. Forks/subagents (forked_from_id or
          thread_spawn parent): leading events equal to the parent's are skipped; without the
          parent, a leading burst of >= 2 events each <= 1000 ms apart is skipped. Reads
          archived_sessions (sessions/ wins on the same relative path). An unparseable event
          timestamp fails the whole report. Cached input billed at the cache-read price.
gemini  - every *.json/*.jsonl under ~/.gemini/tmp; type "gemini" with tokens and a model (or an
          earlier one); same id in one file: the later record replaces the earlier (also its
          timestamp); no dedupe across files. input = input - cached + tool when total ==
          in+out+thoughts+tool, else input + tool with cached added; total = max(total,
          input+output+cacheRead) (no total: that sum + thoughts); thoughts billed as output.
          >200k prompt (input incl. cached and tool): the whole request at long-context rates.
opencode- opencode.db (else the first opencode-*.db) `message.data`, plus storage/message/**
          JSON; day from data.time.created; dedupe by id (DB beats JSON, later JSON path beats
          earlier); needs modelID and providerID; a stored cost > 0 wins; reasoning (and any
          total above the sum) counts in total and is billed as output.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

CCUSAGE_VERSION = "20.0.24"
KINDS = ("claude", "codex", "gemini", "opencode")
_reason: str | None = None


def cache_dir() -> Path:
    """`$TALLY_TEST_CACHE`, else ~/.cache/tally-tests/ccusage-<version>."""
    env = os.environ.get("TALLY_TEST_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "tally-tests" / f"ccusage-{CCUSAGE_VERSION}"


def _launcher(root: Path) -> Path:
    return root / "node_modules" / ".bin" / "ccusage"


def _installed_version(root: Path) -> str | None:
    try:
        manifest = root / "node_modules" / "ccusage" / "package.json"
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def ccusage_binary() -> Path | None:
    """The ccusage launcher of version CCUSAGE_VERSION, installed with `npm install --prefix`
    into cache_dir() on first use; None if npm is missing or the install fails (see
    ccusage_unavailable_reason())."""
    global _reason
    root = cache_dir()
    if _installed_version(root) == CCUSAGE_VERSION and _launcher(root).exists():
        return _launcher(root)
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        _reason = "npm or node is not on PATH"
        return None
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers install once
        if _installed_version(root) == CCUSAGE_VERSION and _launcher(root).exists():
            return _launcher(root)
        return _install(npm, root)


def _install(npm: str, root: Path) -> Path | None:
    global _reason
    try:
        done = subprocess.run(
            [npm, "install", "--prefix", str(root), "--no-audit", "--no-fund",
             "--loglevel=error", f"ccusage@{CCUSAGE_VERSION}"],
            capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _reason = f"npm install failed: {exc}"
        return None
    if done.returncode != 0 or _installed_version(root) != CCUSAGE_VERSION:
        _reason = f"npm install ccusage@{CCUSAGE_VERSION} failed: {done.stderr.strip()[-2000:]}"
        return None
    _reason = None
    return _launcher(root)


def ccusage_unavailable_reason() -> str | None:
    """Why the last ccusage_binary() returned None."""
    return _reason


def ccusage_env(home: Path) -> dict[str, str]:
    """A clean environment: HOME=home and nothing that redirects a source (CLAUDE_CONFIG_DIR,
    CODEX_HOME, GEMINI_DATA_DIR, OPENCODE_DATA_DIR, XDG_*, TZ...) is passed on."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "LANG": "C.UTF-8", "NO_COLOR": "1"}


def ccusage_json(kind: str, home: Path, report: str = "daily", tz: str = "UTC",
                 *extra: str) -> Any:
    """The parsed `--json` output of `ccusage <kind> <report> --json --offline -z tz`, run in
    `home` with ccusage_env(home). Raises RuntimeError when ccusage is unavailable or fails."""
    binary = ccusage_binary()
    if binary is None:
        raise RuntimeError(f"ccusage unavailable: {_reason}")
    args = [str(binary), kind, report, "--json", "--offline", "-z", tz, *extra]
    done = subprocess.run(args, cwd=home, env=ccusage_env(home), capture_output=True,
                          text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[1:])} exited {done.returncode}: {done.stderr}")
    return json.loads(done.stdout)


def _codex_row(row: dict[str, Any]) -> dict[str, Any]:
    """A codex daily row in Claude's shape: the report's inputTokens already exclude cached
    input; cacheReadTokens are the cached ones; there is no cache creation."""
    out = dict(row)
    out["cacheCreationTokens"] = row.get("cacheCreationTokens", 0)
    out["cacheReadTokens"] = row.get("cacheReadTokens", row.get("cachedInputTokens", 0))
    out["totalCost"] = row.get("totalCost", row.get("costUSD", 0.0))
    models = row.get("models", {})
    if isinstance(models, dict):
        out["modelsUsed"] = sorted(models)
        out["modelBreakdowns"] = [{"modelName": name, **vals} for name, vals in models.items()]
    return out


def ccusage_daily(kind: str, home: Path, tz: str = "UTC") -> dict[str, dict[str, Any]]:
    """`ccusage <kind> daily` on `home`, as {date: row} (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    data = ccusage_json(kind, home, "daily", tz)
    rows = data.get("daily", []) if isinstance(data, dict) else data
    if kind == "codex":
        rows = [_codex_row(row) for row in rows]
    return {row["date"]: row for row in rows}


TOKEN_KEYS = ("inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens",
              "totalTokens")


def token_totals(days: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Only the token counts of each day (what tally must match exactly)."""
    return {day: {k: int(row.get(k, 0)) for k in TOKEN_KEYS} for day, row in days.items()}
