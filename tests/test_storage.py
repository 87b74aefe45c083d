"""pipeline.storage and the [lake] and [host] settings: where the lake lives, how it is
reached, and what a host is called; an object store that does not answer is one line."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.config import init_home, load_home
from pipeline.errors import ConfigError
from pipeline.storage import (
    Location,
    check_lake_uri,
    default_host_id,
    env_options,
    is_unreachable,
    read_object,
)
from tests.conftest import assert_one_line_error, run_tally
from tests.s3 import MotoServer, free_port


def config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


def test_a_home_without_lake_settings_keeps_its_lake_on_local_disk(tmp_path: Path) -> None:
    home = load_home(tmp_path)
    assert home.lake_location == Location.local(tmp_path / "lake")
    assert home.lake_location.is_local and home.lake_location.storage_options is None
    assert home.host == default_host_id()


def test_an_s3_lake_takes_the_environment_then_the_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://ignored:1")
    config(tmp_path, '[lake]\nuri = "s3://team-bucket/tally/"\nendpoint = "http://127.0.0.1:9000"'
                     '\nallow_http = true\n[host]\nid = "build-01"\n')
    home = load_home(tmp_path)
    place = home.lake_location
    assert place.uri == "s3://team-bucket/tally" and not place.is_local
    assert place.storage_options == {"AWS_ACCESS_KEY_ID": "key", "AWS_REGION": "eu-west-1",
                                     "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
                                     "AWS_ALLOW_HTTP": "true"}
    assert (place / "agent_token_usage").uri == "s3://team-bucket/tally/agent_token_usage"
    assert (place / "_rollups" / "usage").name == "usage"
    assert home.host == "build-01"
    assert home.lake == tmp_path / "lake"  # this host's record of the shared lake


@pytest.mark.parametrize(("text", "field"), [
    ('[lake]\nuri = "/srv/lake"\n', "lake.uri"),
    ('[lake]\nuri = "gs://bucket/x"\n', "lake.uri"),
    ('[lake]\nuri = "s3://Upper/x"\n', "lake.uri"),
    ('[lake]\nuri = "s3://bucket//x"\n', "lake.uri"),
    ("[lake]\nuri = 3\n", "lake.uri"),
    ('[lake]\nuri = "s3://bucket"\nendpoint = "127.0.0.1:9000"\n', "lake.endpoint"),
    ('[lake]\nuri = "s3://bucket"\nregion = "eu west"\n', "lake.region"),
    ('[lake]\nuri = "s3://bucket"\nallow_http = "yes"\n', "lake.allow_http"),
    ('[lake]\nurl = "s3://bucket"\n', "lake.url"),
    ('[host]\nid = "my host"\n', "host.id"),
    ('[host]\nid = ""\n', "host.id"),
    ('[host]\nid = "-x"\n', "host.id"),
    ('[host]\nname = "x"\n', "host.name"),
])
def test_bad_lake_and_host_settings_name_their_field(tmp_path: Path, text: str,
                                                    field: str) -> None:
    config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_home(tmp_path)
    assert info.value.message.startswith(f"{tmp_path / 'config.toml'}: {field}")


@given(st.from_regex(r"s3://[a-z0-9][a-z0-9.-]{1,20}[a-z0-9](/[a-z0-9_-]{1,8}){0,3}/?",
                     fullmatch=True))
def test_s3_uris_are_accepted_and_joined_with_one_slash(uri: str) -> None:
    assert check_lake_uri(uri) is None
    joined = (Location(uri.rstrip("/")) / "t").uri
    assert joined.startswith("s3://") and "//" not in joined.removeprefix("s3://")


def test_a_hostname_becomes_a_valid_host_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "büro pc_1.local")
    assert default_host_id() == "b-ro-pc_1.local"
    monkeypatch.setattr("socket.gethostname", lambda: "###")
    assert default_host_id() == "localhost"


def test_only_the_s3_settings_of_the_environment_are_taken() -> None:
    environ = {"AWS_REGION": "r", "AWS_PROFILE": "p", "AWS_SECRET_ACCESS_KEY": "",
               "HOME": "/root"}
    assert env_options(environ) == {"AWS_REGION": "r"}  # Polars refuses keys it does not know


def test_local_locations_read_files_and_name_data_files(tmp_path: Path) -> None:
    place = Location.local(tmp_path)
    (tmp_path / "x").write_bytes(b"hello")
    assert read_object(place / "x") == b"hello" and read_object(place / "missing") is None
    assert place.file("date%3D2025-01-01/part-1.parquet") == str(
        tmp_path / "date=2025-01-01" / "part-1.parquet")
    assert str(place) == str(tmp_path)


def test_objects_of_an_s3_lake_are_read(moto_server: MotoServer) -> None:
    bucket = moto_server.bucket()
    moto_server.client().put_object(Bucket=bucket.removeprefix("s3://"), Key="t/_last",
                                    Body=b'{"version": 3}')
    place = Location(bucket, tuple(moto_server.options.items()))
    assert read_object(place / "t" / "_last") == b'{"version": 3}'
    assert read_object(place / "t" / "missing") is None
    assert place.file("date%3D2025/p.parquet") == f"{bucket}/date=2025/p.parquet"


def test_failures_of_an_object_store_are_told_apart() -> None:
    assert is_unreachable("Generic S3 error: error sending request for url (http://x)")
    assert not is_unreachable("Schema error: invalid data type for column x")


@pytest.mark.slow
def test_an_object_store_that_does_not_answer_is_one_line_and_nothing_is_lost(
        tmp_path: Path) -> None:
    home = tmp_path / "h"
    init_home(home)
    (home / "config.toml").write_text(
        f'[lake]\nuri = "s3://nowhere/tally"\nendpoint = "http://127.0.0.1:{free_port()}"\n'
        'allow_http = true\n')
    (home / "logs" / "a.jsonl").write_text(
        '{"event_type":"agent_token_usage","ts":"2025-01-01T00:00:00Z","agent":"a"}\n')
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    tailed = run_tally("tail", "--once", "--home", str(home), env=env)
    assert tailed.returncode == 0, tailed.stderr  # staging needs no lake
    for command in (["compact"], ["report"], ["status"]):
        run = run_tally(*command, "--home", str(home), env=env)
        assert_one_line_error(run, 5, "s3://nowhere/tally")
    assert list((home / "stage").rglob("*.arrow")), "the staged events are kept"


def test_status_names_the_lake_and_the_host(tmp_path: Path) -> None:
    home = tmp_path / "h"
    init_home(home)
    (home / "config.toml").write_text('[lake]\nuri = "s3://team-bucket/tally"\n'
                                      '[host]\nid = "build-01"\n')
    shown = CliRunner().invoke(main, ["status", "--home", str(home), "--format", "json"])
    assert shown.exit_code == 0, shown.output
    status = orjson.loads(shown.stdout)
    assert (status["lake"], status["host"]) == ("s3://team-bucket/tally", "build-01")
    text = CliRunner().invoke(main, ["status", "--home", str(home)])
    assert "lake: s3://team-bucket/tally (host build-01)" in text.stdout
