"""One training run per folder: an exclusive OS lock on ``FOLDER/.lock``, held for the whole run.

The lock is a POSIX record lock (``fcntl.lockf``), which belongs to the process that took it: the kernel drops it
when that process ends, however it ends, and a child it forks (a DataLoader worker) neither inherits it nor keeps it
alive after a SIGKILL, so the same command can resume the run at once. Record locks do not conflict inside one
process, so this process's own held folders are also kept in :data:`_HELD`. The file keeps the holder's PID for
the message a second run gets.
"""

import errno
import fcntl
import os

from spknet.errors import SpeakerNetError

LOCK_FILE = ".lock"
_HELD: set[str] = set()     # lock files this process holds


def _refusal(path: str, holder: str) -> SpeakerNetError:
    return SpeakerNetError(f"{os.path.dirname(path)}: another training run (PID {holder}) is using this folder; "
                           f"wait for it to end, or give this run a folder of its own")


class RunLock:
    """``with RunLock(folder):`` holds the folder's lock, or fails at once naming the holder."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, LOCK_FILE)
        self.handle = None

    def __enter__(self):
        key = os.path.realpath(self.path)
        if key in _HELD:
            # Checked before opening: closing a second descriptor of the file would drop this process's lock.
            raise _refusal(self.path, str(os.getpid()))
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):        # not held: the lock itself failed
                handle.close()
                raise SpeakerNetError(f"{self.path}: cannot be locked ({os.strerror(error.errno)})") from None
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise _refusal(self.path, holder) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle, self.key = handle, key
        _HELD.add(key)
        return self

    def __exit__(self, *exc):
        _HELD.discard(self.key)
        fcntl.lockf(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        self.handle = None
        return False
