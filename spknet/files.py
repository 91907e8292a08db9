"""Small helpers about files and the messages that name them: content digests and shortened lists.

One place for each, so that a digest recorded by one part of the code (a run's identity, a shard index, a
calibration) is computed the way every other part computes it.
"""

import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import BinaryIO

BLOCK = 1 << 20     # read a file in 1-MiB blocks: a multi-GB archive is never held in memory at once


def file_digest(path: str, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``sha256`` unless named: VoxCeleb publishes ``md5`` sums)."""
    digest = hashlib.new(algorithm)
    _update_from_file(digest, path)
    return digest.hexdigest()


def files_digest(paths: Iterable[str], algorithm: str = "sha256", named: bool = False) -> str:
    """One digest of several files' bytes in the order given. ``named`` puts each file's base name (and a NUL)
    before its bytes, so that the same bytes under other names give another digest."""
    digest = hashlib.new(algorithm)
    for path in paths:
        if named:
            digest.update(os.path.basename(path).encode() + b"\0")
        _update_from_file(digest, path)
    return digest.hexdigest()


def concatenate(paths: Iterable[str], out: BinaryIO, algorithm: str = "sha256") -> str:
    """Write the files' bytes, in the order given, to the binary handle ``out``; returns the digest of what was
    written (``files_digest`` of ``paths``), so that a joined multi-GB archive is checked without reading it
    again."""
    digest = hashlib.new(algorithm)
    for path in paths:
        _update_from_file(digest, path, out)
    return digest.hexdigest()


def _update_from_file(digest, path: str, out: BinaryIO | None = None) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
            if out is not None:
                out.write(block)


def shortened(items: Sequence[str], shown: int = 5, separator: str = ", ") -> str:
    """The first ``shown`` items joined by ``separator``, then ``... and N more`` when there are more: an error
    about thousands of files names a few, and says how many it left out."""
    head = separator.join(str(item) for item in items[:shown])
    if len(items) <= shown:
        return head
    return f"{head}{separator}... and {len(items) - shown} more"
