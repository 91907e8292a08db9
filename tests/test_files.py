"""spknet.files (digests, shortened lists) and spknet.atomic's path for tools that write a file themselves."""

import hashlib
import io
import os
import stat

import pytest

from spknet import atomic
from spknet.files import BLOCK, concatenate, file_digest, files_digest, shortened


@pytest.fixture
def parts(tmp_path):
    """Two files, the first longer than a read block."""
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(os.urandom(BLOCK + 12345))
    second.write_bytes(b"tail")
    return [str(first), str(second)]


def test_digests_are_hashlib_s_of_the_bytes(parts):
    data = [open(path, "rb").read() for path in parts]
    assert file_digest(parts[0]) == hashlib.sha256(data[0]).hexdigest()
    assert file_digest(parts[0], "md5") == hashlib.md5(data[0]).hexdigest()
    assert files_digest(parts, "md5") == hashlib.md5(data[0] + data[1]).hexdigest()
    assert files_digest(parts, named=True) == hashlib.sha256(b"a.bin\0" + data[0] + b"b.bin\0" + data[1]).hexdigest()
    out = io.BytesIO()
    assert concatenate(parts, out, "md5") == files_digest(parts, "md5") and out.getvalue() == data[0] + data[1]


def test_shortened_names_the_first_and_counts_the_rest():
    assert shortened(["a", "b"]) == "a, b"
    assert shortened([f"x{i}" for i in range(5)]) == "x0, x1, x2, x3, x4"
    assert shortened([f"x{i}" for i in range(7)]) == "x0, x1, x2, x3, x4, ... and 2 more"
    assert shortened(["p", "q", "r"], shown=1, separator="\n  ") == "p\n  ... and 2 more"


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_path_replaces_the_file_only_when_the_tool_succeeded(tmp_path, durable):
    target = tmp_path / "out.wav"
    target.write_text("before")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(str(target), durable) as temporary:
            assert os.path.dirname(temporary) == str(tmp_path) and os.path.getsize(temporary) == 0
            with open(temporary, "w") as handle:
                handle.write("half")
            raise RuntimeError("the tool failed")
    assert target.read_text() == "before" and os.listdir(tmp_path) == ["out.wav"]
    previous = os.umask(0o022)
    try:
        with atomic.atomic_path(str(target), durable) as temporary:
            with open(temporary, "w") as handle:
                handle.write("after")
    finally:
        os.umask(previous)
    assert target.read_text() == "after" and os.listdir(tmp_path) == ["out.wav"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644          # as a plain open() under this umask


def test_leftovers_of_a_killed_write_are_those_of_its_file_only(tmp_path):
    for name in (".out.zip.ab12_x9.tmp", ".out.zip.other.ab12.tmp", ".out.zip.tmp", "out.zip.ab12.tmp"):
        (tmp_path / name).write_text("x")
    assert atomic.remove_leftovers(str(tmp_path / "out.zip")) == [str(tmp_path / ".out.zip.ab12_x9.tmp")]
    assert sorted(os.listdir(tmp_path)) == [".out.zip.other.ab12.tmp", ".out.zip.tmp", "out.zip.ab12.tmp"]
