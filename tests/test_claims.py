"""pipeline.claims: each budget alert raised by one host of a fleet sharing a lake in an
object store (moto's S3 server on 127.0.0.1), whoever finds the crossing first."""

from __future__ import annotations

import os
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from pipeline import claims
from pipeline.config import load_home
from tests.conftest import tally_executable
from tests.s3 import MotoServer, shared_lake_home


@pytest.fixture
def lake(s3_lake: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(claims, "_owners", {})  # each test starts with nothing known
    return s3_lake


def test_hosts_racing_for_one_alert_agree_on_one_owner(tmp_path: Path, lake: str) -> None:
    homes = [load_home(shared_lake_home(tmp_path, f"h{n}", lake)) for n in range(4)]
    owners: dict[str, str] = {}
    start = threading.Barrier(len(homes))

    def race(home_index: int) -> None:
        home = homes[home_index]
        start.wait()
        # A process of its own would ask once: no answer is remembered between hosts.
        owners[home.host] = claims._claim(claims.claims_table(home), "alert-1", home.host)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(len(homes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(owners) == 4 and len(set(owners.values())) == 1
    assert next(iter(owners.values())) in owners  # one of them, and all say which
    # Asked again (a host killed after claiming, say), the claim stands.
    later = load_home(shared_lake_home(tmp_path, "h9", lake))
    assert claims._claim(claims.claims_table(later), "alert-1", later.host) == owners["h0"]
    assert claims._claim(claims.claims_table(later), "alert-2", later.host) == "h9"


def usage_line(event_id: str, tokens: int) -> bytes:
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return orjson.dumps({"event_type": "agent_token_usage", "event_id": event_id, "ts": now,
                         "agent": "claude", "input_tokens": tokens, "output_tokens": 0}) + b"\n"


@pytest.mark.slow
def test_a_budget_the_fleet_crosses_alerts_once_across_hosts(
        tmp_path: Path, lake: str, moto_server: MotoServer) -> None:
    budgets = "[budgets]\ndaily_tokens = 1000\nweekly_tokens = 0\ndaily_cost_usd = 0\n"
    homes = [shared_lake_home(tmp_path, f"host-{n}", lake, budgets) for n in range(3)]
    env = {**os.environ, **moto_server.env()}
    env.pop("TALLY_HOME", None)
    for number, home in enumerate(homes):  # 400 tokens each: no host alone reaches 80 %
        (home / "logs" / "a.jsonl").write_bytes(usage_line(f"e-{number}", 400))
        subprocess.run([tally_executable(), "tail", "--once", "--home", str(home)], env=env,
                       check=True, capture_output=True)
    runs = [subprocess.Popen([tally_executable(), "compact", "--home", str(home)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for home in homes]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    # Each home's compaction checked budgets; the last to commit counted 1,200 tokens.
    again = [subprocess.run([tally_executable(), "compact", "--optimize", "--home", str(home)],
                            env=env, capture_output=True, text=True) for home in homes]
    assert all(run.returncode == 0 for run in again), [run.stderr for run in again]
    assert "_alerts 0 files merged" in again[0].stdout  # the claims are kept like any table

    raised = [orjson.loads(line) for home in homes for line in alert_lines(home)]
    # One alert fleet-wide: past 100 % at once, the warning is not raised beside it. Without
    # claims each host would raise it once it counted the others' events ("again").
    assert [event["alert"] for event in raised] == ["TOKEN_BUDGET_EXCEEDED"], raised
    assert raised[0]["usage"] == 1200 and raised[0]["scope"] == "all"
    printed = "".join(err for _, err in outputs) + "".join(run.stderr for run in again)
    assert printed.count("ALERT TOKEN_BUDGET_EXCEEDED") == 1, printed


def alert_lines(home: Path) -> list[bytes]:
    log = home / "logs" / "tally" / "budget_alerts.jsonl"
    return log.read_bytes().splitlines() if log.exists() else []
