"""Write files so that a crash never leaves a half-written one: temp file in the same folder, fsync, rename."""

import os
import re
import tempfile
import threading
from contextlib import contextmanager

_UMASK_LOCK = threading.Lock()
RANDOM = re.compile(r"[a-z0-9_]+")     # the middle of tempfile's names


@contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = None):
    """Yield a handle to a temporary file that replaces ``path`` only when the block completes."""
    folder, descriptor, temporary = _temporary(path)
    try:
        with os.fdopen(descriptor, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    _fsync_folder(folder)


@contextmanager
def atomic_path(path: str, durable: bool = True):
    """Yield the path of a temporary file beside ``path``, for a tool that writes a file itself (``ffmpeg``,
    ``soundfile``): it replaces ``path`` when the block completes, and is removed when the block raises. The
    temporary file exists, empty, when the block starts; the tool overwrites it.

    ``durable=False`` leaves out the fsyncs, for steps that write thousands of small files they can make again
    (converted utterances, MUSAN segments): a killed process still never leaves a partial file under ``path``,
    and the step does not wait for the disk twice a file."""
    folder, descriptor, temporary = _temporary(path)
    try:
        os.close(descriptor)
        yield temporary
        if durable:
            _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    if durable:
        _fsync_folder(folder)


def remove_leftovers(path: str) -> list[str]:
    """Remove the temporary files of ``path`` that a killed process left beside it (``atomic_open`` and
    ``atomic_path`` name theirs ``.NAME.RANDOM.tmp``); returns them. Only for a file that one process writes
    at a time."""
    folder, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}."
    stale = [os.path.join(folder, entry) for entry in os.listdir(folder)    # not those of NAME.other's
             if entry.startswith(prefix) and entry.endswith(".tmp") and RANDOM.fullmatch(entry[len(prefix):-4])]
    for leftover in stale:
        os.unlink(leftover)
    return stale


def _temporary(path: str) -> tuple[str, int, str]:
    """``(folder, descriptor, temporary)``: a new empty file beside ``path``, with the mode a plain ``open()``
    would give it (mkstemp makes 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, 0o666 & ~_umask())
    except BaseException:
        os.close(descriptor)
        _remove(temporary)
        raise
    return folder, descriptor, temporary


def _remove(temporary: str) -> None:
    if os.path.exists(temporary):
        os.unlink(temporary)


def _umask() -> int:
    with _UMASK_LOCK:       # read by setting it: two threads in between would leave the process's umask at 0
        mask = os.umask(0)
        os.umask(mask)
    return mask


def _fsync_file(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_text(path: str, text: str, encoding: str | None = None) -> None:
    with atomic_open(path, "w", encoding) as handle:
        handle.write(text)


def save_torch(obj, path: str) -> None:
    import torch
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)
