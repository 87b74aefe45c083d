"""pipeline.identity: birth times that tell a file written anew from the old one, CRCs of
ranges that continue each other, and derived-id prefixes of identities."""

from __future__ import annotations

import os
import tempfile
import time
import zlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.identity import base_fingerprint, birth_time, crc_of, derived_id_prefix


def test_birth_time_differs_for_a_file_written_anew(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    first = birth_time(fd)
    os.close(fd)
    if first == 0:  # the file system keeps none: identity then rests on the CRC
        return
    path.unlink()
    time.sleep(0.01)
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert birth_time(fd) > first
    finally:
        os.close(fd)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=5000), st.integers(0, 5000), st.integers(0, 5000))
def test_crc_of_a_range_continues_the_crc_before_it(data: bytes, cut: int, end: int) -> None:
    with tempfile.NamedTemporaryFile() as handle:
        handle.write(data)
        handle.flush()
        fd = handle.fileno()
        cut, end = min(cut, len(data)), min(end, len(data))
        cut = min(cut, end)
        head = crc_of(fd, cut)
        assert head is not None
        assert crc_of(fd, end, cut, head) == zlib.crc32(data[:end])
        assert crc_of(fd, len(data) + 1) is None  # the file is shorter


def test_identities_and_their_derived_ids() -> None:
    assert base_fingerprint("abc@1:2:3") == "abc"
    assert derived_id_prefix("0123456789abcdef0123") == "0123456789abcdef-"
    assert derived_id_prefix("abc@1:2") != derived_id_prefix("abc@1:3")
