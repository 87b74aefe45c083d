"""The S3 emulator the lake-on-S3 tests run against (tests/s3.py): what they rely on holds."""

from __future__ import annotations

import datetime as dt
import time

import polars as pl
import pyarrow as pa
import pytest
from botocore.exceptions import ClientError
from deltalake import DeltaTable, write_deltalake

from tests.s3 import MotoServer


def test_the_server_is_a_child_process_on_loopback(moto_server: MotoServer) -> None:
    assert moto_server.process is not None and moto_server.process.poll() is None
    assert moto_server.endpoint.startswith("http://127.0.0.1:")
    assert moto_server.env() == {
        "AWS_ENDPOINT_URL": moto_server.endpoint, "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    assert moto_server.options == moto_server.env()


def test_each_test_gets_a_fresh_empty_bucket(moto_server: MotoServer, s3_bucket: str) -> None:
    name = s3_bucket.removeprefix("s3://")
    assert s3_bucket.startswith("s3://") and name
    assert moto_server.client().list_objects_v2(Bucket=name)["KeyCount"] == 0
    assert moto_server.bucket() != s3_bucket


def test_a_conditional_put_is_refused_the_second_time(moto_server: MotoServer,
                                                      s3_bucket: str) -> None:
    """delta-rs commits with put-if-absent: two writers of one log entry, only one wins."""
    client, name = moto_server.client(), s3_bucket.removeprefix("s3://")
    client.put_object(Bucket=name, Key="_delta_log/0.json", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=name, Key="_delta_log/0.json", Body=b"second", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    body = client.get_object(Bucket=name, Key="_delta_log/0.json")["Body"].read()
    assert body == b"first"


def rows(first: int, count: int, day: dt.date) -> pa.Table:
    return pa.table({"event_id": [f"e{i}" for i in range(first, first + count)],
                     "input_tokens": pa.array(range(first, first + count), pa.int64()),
                     "date": pa.array([day] * count, pa.date32())})


def test_a_delta_table_round_trips_through_the_options(moto_server: MotoServer,
                                                       s3_bucket: str) -> None:
    uri = f"{s3_bucket}/lake/t"
    options = moto_server.options
    write_deltalake(uri, rows(0, 10, dt.date(2025, 3, 1)), partition_by=["date"],
                    storage_options=options)
    write_deltalake(uri, rows(10, 5, dt.date(2025, 3, 2)), mode="append",
                    partition_by=["date"], storage_options=options)
    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 1
    assert all(u.startswith(f"{uri}/date=") for u in table.file_uris())
    read = pl.scan_delta(uri, storage_options=options).sort("event_id").collect()
    assert read.height == 15
    assert read["input_tokens"].sum() == sum(range(15))
    assert read.group_by("date").len().sort("date")["len"].to_list() == [10, 5]


def test_history_answers_promptly(moto_server: MotoServer, s3_bucket: str) -> None:
    """history() holds the GIL while it waits: against moto in a thread of this process it
    never got an answer (minutes, then a timeout). With moto in a child process it answers."""
    uri = f"{s3_bucket}/lake/t"
    for day in (1, 2, 3):
        write_deltalake(uri, rows(10 * day, 10, dt.date(2025, 3, day)), mode="append",
                        partition_by=["date"], storage_options=moto_server.options)
    started = time.monotonic()
    # No watchdog thread: while history() holds the GIL, no Python thread could time it out.
    history = DeltaTable(uri, storage_options=moto_server.options).history()
    assert time.monotonic() - started < 5
    assert [entry["version"] for entry in history] == [2, 1, 0]
