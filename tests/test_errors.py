"""pipeline.errors: messages that print whatever bytes a name holds, file system refusals
as one line with a hint, and what native code prints kept from the user on failure."""

from __future__ import annotations

import errno
import os

import pytest

from pipeline.errors import (
    StorageError,
    display_path,
    is_storage_failure,
    native_stderr_captured,
    safe_text,
    storage_error,
)

PANIC = "thread 'x' panicked at a.rs:1:1:\nNo space left on device (os error 28)\n"


def test_names_that_are_not_utf8_print_escaped() -> None:
    odd = os.fsdecode(b"logs/bad\xff.jsonl")
    assert safe_text(odd) == "logs/bad\\xff.jsonl"
    assert display_path(odd).encode("utf-8")
    assert safe_text("caf\u00e9") == "caf\u00e9"


@pytest.mark.parametrize(("code", "hint"), [(errno.ENOSPC, "free space"),
                                            (errno.EROFS, "read-only"),
                                            (errno.EACCES, "writable")])
def test_file_system_refusals_become_one_line_with_a_hint(code: int, hint: str) -> None:
    exc = OSError(code, os.strerror(code), "/home/x/stage/b1.arrow")
    assert is_storage_failure(exc)
    error = storage_error(exc, "write a batch")
    assert isinstance(error, StorageError) and error.exit_code == 74
    assert error.message == f"/home/x/stage/b1.arrow: cannot write a batch: {os.strerror(code)}"
    assert hint in (error.hint or "")
    assert not is_storage_failure(FileNotFoundError(errno.ENOENT, "gone"))


def test_what_native_code_writes_to_stderr_is_held_back_when_the_block_fails(
        capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), native_stderr_captured() as captured:
        os.write(2, PANIC.encode())
        raise RuntimeError("the write failed")
    assert capfd.readouterr().err == ""
    assert "".join(captured) == PANIC


def test_what_native_code_writes_is_passed_on_when_the_block_succeeds(
        capfd: pytest.CaptureFixture[str]) -> None:
    with native_stderr_captured() as captured:
        os.write(2, b"a warning\n")
    assert capfd.readouterr().err == "a warning\n"
    assert captured == []


